"""N worker processes of one service on one port (issue 9, "many processes on one port").

As grpc's examples/python/multiprocessing does: the parent holds the port with SO_REUSEPORT
(so port 0 picks one free port for all), and every worker binds it again with the grpc option
`grpc.so_reuseport` (`create_server(reuse_port=True)`); the kernel spreads connections among
the listening workers. The parent never initialises grpc (no channel, no server): each worker is
a fresh interpreter, `python -m services.<name> --worker <i> --port <port>`, started with
subprocess (fork + exec: nothing of the parent's state, threads or grpc is inherited).

Supervision, what the parent does:
- SIGTERM or SIGINT: forwards SIGTERM once to every worker, waits for them (their own grace
  period, then a margin), SIGKILLs what is left and exits non-zero if any worker did not exit
  with status 0. Workers ignore SIGINT (a Ctrl-C reaches the whole process group; the parent
  forwards it as SIGTERM, so each worker is told once) and stop by themselves if the parent
  disappears (a SIGKILLed parent leaves no worker behind).
- A worker that dies AFTER it served is restarted, with a backoff (0.5 s doubling, at most
  30 s), and logged: the other workers keep the port open meanwhile, so a crash costs only that
  worker's connections, and its replica and log come back from its own files. Why restart
  rather than stop everything: a display desk at a gate must keep answering, and a crash of one
  process (a fault in one request, the OOM killer) is not a reason to drop the others' calls.
- A worker that dies BEFORE it ever served (bad settings, a port it cannot bind, a broken file)
  would only die again: the parent stops everything and exits 1, as a single process would.
  So does a worker that crashes more than 5 times within 60 s (a crash loop).
- Readiness: a worker reports on an inherited pipe when it first serves (its health turns
  SERVING); the parent logs `<name> worker <i> (pid <p>) serving` and, once all have,
  `all <n> <name> workers serving on <host>:<port>`. Health is per worker: a client sees the
  health of the worker its connection reached, NOT_SERVING until that worker holds an index.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol, Self, TypeVar

from services._common.config import PlatformConfig
from services._common.logs import setup_logging

log = logging.getLogger(__name__)

READY_FD_ENV = "HEALTHCODE_WORKER_READY_FD"
MAX_PROCESSES = 64
RESTART_LIMIT = 5  # crashes within RESTART_WINDOW_S before the parent gives up
RESTART_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """What `python -m services.<name>` was told on its command line."""

    index: int | None  # None: not a worker (a single process, or the parent)
    port: int | None  # the port the parent holds (overrides the configured one)


def parse_worker_args(argv: Sequence[str] | None, description: str) -> WorkerArgs:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None and not 0 <= args.worker < MAX_PROCESSES:
        parser.error(f"--worker: 0-{MAX_PROCESSES - 1}")
    return WorkerArgs(args.worker, args.port)


class ServiceConfig(Protocol):
    """What `run_service` reads of a service's configuration."""

    @property
    def platform(self) -> PlatformConfig: ...
    @property
    def port(self) -> int: ...
    @property
    def processes(self) -> int: ...
    def for_worker(self, index: int, port: int | None) -> Self: ...


C = TypeVar("C", bound=ServiceConfig)


def run_service(
    name: str,
    config: C,
    serve: Callable[[C, WorkerRole | None], None],
    argv: Sequence[str] | None = None,
    before_workers: Callable[[C], None] = lambda _config: None,
) -> None:
    """`python -m services.<name>`: serve as the only process, as worker `--worker i`, or, with
    N > 1 processes configured, supervise N workers (`before_workers` first makes what they
    share, so that two starting together do not both create it)."""
    args = parse_worker_args(argv, f"the {name} service")
    if args.index is None and config.processes > 1:
        setup_logging(name, config.platform.log_level)
        before_workers(config)
        port = config.port if args.port is None else args.port
        sys.exit(supervise(name, f"services.{name}", config.processes, config.platform.host, port))
    worker: WorkerRole | None = None
    if args.index is not None:
        worker = WorkerRole(args.index)
        config = config.for_worker(args.index, args.port)
        setup_logging(f"{name}.{args.index}", config.platform.log_level)
    else:
        setup_logging(name, config.platform.log_level)
    serve(config, worker)


class WorkerRole:
    """Inside a worker: report readiness to the parent once, and notice the parent's end."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._parent = os.getppid()
        self._reported = False
        self._lock = threading.Lock()
        raw = os.environ.get(READY_FD_ENV, "")
        self._ready_fd = int(raw) if raw.isdigit() else None
        # A Ctrl-C reaches the whole process group; the parent forwards it as SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def ready(self) -> None:
        """This worker serves (its health said SERVING): tell the parent, once."""
        with self._lock:
            if self._reported or self._ready_fd is None:
                return
            self._reported = True
            try:
                os.write(self._ready_fd, f"{self.index} {os.getpid()}\n".encode())
            except OSError:
                pass

    def parent_gone(self) -> bool:
        return os.getppid() != self._parent


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold `port` (0: a free one) with SO_REUSEPORT while the workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Something already listening there (another copy of this service) would silently
        # share the port with us: refuse, as a single process would fail to bind.
        if port and probe.connect_ex((host, port)) == 0:
            raise OSError(f"{host}:{port} is already in use")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    served: bool = False
    restart_at: float | None = None
    crashes: deque[float] = field(default_factory=deque)


class Supervisor:
    """Start `count` workers of `module` on one port and look after them until a signal."""

    def __init__(
        self,
        name: str,
        module: str,
        count: int,
        host: str,
        port: int,
        *,
        grace_s: float = 20.0,
    ) -> None:
        self.name = name
        self.module = module
        self.count = count
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self._workers = [_Worker(i) for i in range(count)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failed = False
        self._bound = 0

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or a fatal worker failure; the exit status (0: clean)."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: stopping %d workers", signal.Signals(signum).name, self.count)
            self._stopping.set()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        read_fd, write_fd = os.pipe()
        reader = threading.Thread(
            target=self._read_ready, args=(read_fd,), name="worker-ready", daemon=True
        )
        reader.start()
        try:
            with reserve_port(self.host, self.port) as bound:
                self._bound = bound
                log.info("starting %d %s workers on %s:%d", self.count, self.name, self.host, bound)
                for worker in self._workers:
                    self._start(worker, write_fd)
                while not self._stopping.wait(0.2):
                    self._look_after(write_fd)
                self._stop_all()
        except OSError as exc:
            log.error("%s: %s", self.name, exc)
            self._failed = True
            self._stop_all()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            with contextlib.suppress(OSError):
                os.write(write_fd, b"stop\n")
            reader.join(timeout=2)
            os.close(write_fd)
            with contextlib.suppress(OSError):
                os.close(read_fd)
        log.info("stopped (%s)", "a worker failed" if self._failed else "clean")
        return 1 if self._failed else 0

    def _start(self, worker: _Worker, write_fd: int) -> None:
        env = dict(os.environ)
        env[READY_FD_ENV] = str(write_fd)
        worker.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--worker",
                str(worker.index),
                "--port",
                str(self._bound),
            ],
            env=env,
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
        )
        worker.restart_at = None
        log.info("%s worker %d started (pid %d)", self.name, worker.index, worker.proc.pid)

    def _look_after(self, write_fd: int) -> None:
        now = time.monotonic()
        for worker in self._workers:
            proc = worker.proc
            if proc is not None and (code := proc.poll()) is not None:
                worker.proc = None
                with self._lock:
                    served, worker.served = worker.served, False
                if not served:
                    log.error(
                        "%s worker %d (pid %d) exited with status %s before it served; "
                        "stopping every worker",
                        self.name,
                        worker.index,
                        proc.pid,
                        code,
                    )
                    self._fail()
                    return
                while worker.crashes and now - worker.crashes[0] > RESTART_WINDOW_S:
                    worker.crashes.popleft()
                worker.crashes.append(now)
                if len(worker.crashes) > RESTART_LIMIT:
                    log.error(
                        "%s worker %d exited with status %s, its %d crash within %.0f s; "
                        "stopping every worker",
                        self.name,
                        worker.index,
                        code,
                        len(worker.crashes),
                        RESTART_WINDOW_S,
                    )
                    self._fail()
                    return
                delay = min(30.0, 0.5 * 2 ** (len(worker.crashes) - 1))
                log.warning(
                    "%s worker %d (pid %d) exited with status %s; restarting it in %.1f s",
                    self.name,
                    worker.index,
                    proc.pid,
                    code,
                    delay,
                )
                worker.restart_at = now + delay
            if worker.proc is None and worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker, write_fd)

    def _fail(self) -> None:
        self._failed = True
        self._stopping.set()

    def _stop_all(self) -> None:
        running = [w.proc for w in self._workers if w.proc is not None and w.proc.poll() is None]
        for alive in running:
            with contextlib.suppress(ProcessLookupError):
                alive.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for worker in self._workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "%s worker %d (pid %d) did not stop: killed", self.name, worker.index, proc.pid
                )
                proc.kill()
                code = proc.wait()
            if code not in (0, -signal.SIGTERM):
                # -SIGTERM: a worker told to stop before it had set its handler (still starting).
                log.error(
                    "%s worker %d (pid %d) exited with status %s",
                    self.name,
                    worker.index,
                    proc.pid,
                    code,
                )
                self._failed = True
            else:
                log.info("%s worker %d (pid %d) stopped", self.name, worker.index, proc.pid)

    def _read_ready(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0, closefd=False) as pipe:
            buffer = b""
            while True:
                chunk = pipe.read(4096)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line == b"stop":
                        return
                    self._served(line.decode("ascii", "replace"))

    def _served(self, line: str) -> None:
        try:
            index, pid = (int(part) for part in line.split())
        except ValueError:
            return
        with self._lock:
            worker = self._workers[index] if 0 <= index < self.count else None
            if worker is None or worker.proc is None or worker.proc.pid != pid:
                return
            worker.served = True
            all_served = all(w.served for w in self._workers)
        log.info("%s worker %d (pid %d) serving", self.name, index, pid)
        if all_served:
            log.info(
                "all %d %s workers serving on %s:%d", self.count, self.name, self.host, self._bound
            )


def supervise(name: str, module: str, count: int, host: str, port: int) -> int:
    """Run `count` workers of `module` (`python -m <module> --worker i`) on one port until
    SIGTERM/SIGINT; the exit status to leave with."""
    return Supervisor(name, module, count, host, port).run()

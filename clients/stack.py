"""The four services as real processes on loopback: start, wait until healthy, stop.

Used by `make run` (clients.demo) and by the end-to-end tests, so both exercise exactly what a
deployment runs: `python -m services.<name>`, configured only through the environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from healthcode.v1 import colour_pb2, colour_pb2_grpc

from clients.channel import Peers, open_channel
from clients.credentials import ClientCredentials, register
from services._common.auth import create_issuer_keys
from services._common.config import Ports, load_secret
from services._common.pki import create_dev_credentials

REPO = Path(__file__).resolve().parent.parent
# Start order: the risk index first (colour follows it, declaration registers people in it).
SERVICES = ("risk_index", "declaration", "colour", "display")
# The browser gateway (services/gateway): HTTP, started after the four, health at /healthz.
GATEWAY = "gateway"
DEFAULT_PORTS = Ports().as_dict()


class StackError(RuntimeError):
    """A service did not start, died, or did not become healthy in time."""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS may hand it out again; good enough for
    loopback tests, which retry nothing on a clash but report it clearly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_env(ports: Mapping[str, int]) -> dict[str, str]:
    """The variables that turn on each service's Prometheus endpoint (worker i of several
    serves on the port + i; services/_common/metrics.py)."""
    return {f"HEALTHCODE_{name.upper()}_METRICS_PORT": str(port) for name, port in ports.items()}


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class Stack:
    """Four service processes sharing one data directory (and so one deployment secret)."""

    data_dir: Path
    ports: dict[str, int]
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # The gateway's HTTP port; None: no gateway.
    gateway_port: int | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, data_dir: Path, extra_env: Mapping[str, str] | None = None) -> Stack:
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(SERVICES):
            ports = {name: free_port() for name in SERVICES}
        gateway_port = free_port()
        while gateway_port in ports.values():
            gateway_port = free_port()
        return cls(data_dir, ports, dict(extra_env or {}), gateway_port)

    @property
    def gateway_url(self) -> str:
        """The gateway's address for a browser (http://127.0.0.1:<port>)."""
        if self.gateway_port is None:
            raise StackError("this stack runs no gateway (gateway_port is None)")
        return f"http://127.0.0.1:{self.gateway_port}"

    def metrics_url(self, name: str, worker: int = 0) -> str | None:
        """Where `name` (its worker `worker`) serves its metrics; None: metrics are off."""
        port = int(self.extra_env.get(f"HEALTHCODE_{name.upper()}_METRICS_PORT", "") or 0)
        return f"http://127.0.0.1:{port + worker}/metrics" if port else None

    @property
    def peers(self) -> Peers:
        return Peers.on_loopback(Ports(**self.ports))

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(REPO), str(REPO / "protos")]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["HEALTHCODE_DATA_DIR"] = str(self.data_dir)
        # Sign-in codes come back in the reply: a development stack has no SMS gateway.
        env["HEALTHCODE_SMS"] = "reply"
        env["HEALTHCODE_HOST"] = "127.0.0.1"
        for name, port in self.ports.items():
            env[f"HEALTHCODE_{name.upper()}_PORT"] = str(port)
            env[f"HEALTHCODE_{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
        if self.gateway_port is not None:
            env["HEALTHCODE_GATEWAY_PORT"] = str(self.gateway_port)
        env.update(self.extra_env)
        return env

    @property
    def credentials_dir(self) -> Path:
        return Path(
            self.extra_env.get("HEALTHCODE_CREDENTIALS", "") or self.data_dir / "credentials"
        )

    @property
    def insecure(self) -> bool:
        return self.extra_env.get("HEALTHCODE_INSECURE", "") in {"1", "true", "yes"}

    def prepare_credentials(self) -> ClientCredentials | None:
        """The development CA, a certificate for every identity, the token issuer's keys and
        the deployment secret, made once in the data directory (kept across restarts); this
        process then reaches the stack as the CLI does (clients/credentials.py)."""
        if self.insecure:
            creds = None
        else:
            create_dev_credentials(self.credentials_dir)
            create_issuer_keys(self.credentials_dir)
            secret = load_secret(self.data_dir, self.env())
            creds = ClientCredentials.load(self.credentials_dir, "cli", secret)
        register([addr for _name, addr in self.peers.items()], creds)
        return creds

    def start(self, names: tuple[str, ...] = SERVICES) -> None:
        env = self.env()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.prepare_credentials()
        if self.gateway_port is not None and GATEWAY not in self.processes:
            names = (*names, GATEWAY)  # after display: it relays to the others
        for name in names:
            log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed in stop()
            self._logs[name] = log
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: a Ctrl-C in the terminal reaches the demo only, which
                # then stops the services in order.
                start_new_session=True,
            )

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.log_path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                raise StackError(
                    f"{name} exited with status {code}; the end of {self.log_path(name)}:\n"
                    f"{self.log_tail(name)}"
                )

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Until every service answers gRPC health SERVING (the colour service turns SERVING
        only once it holds an index version; version 0, the empty index, counts). StackError
        naming the laggard otherwise."""
        deadline = time.monotonic() + timeout_s
        for name in self.processes:
            if name == GATEWAY:
                self._wait_gateway(deadline, timeout_s)
                continue
            addr = f"127.0.0.1:{self.ports[name]}"
            with open_channel(addr, timeout_s=2.0) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                last = "no answer"
                while True:
                    self.check_alive()
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                        last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    except grpc.RpcError as e:
                        last = e.code().name if isinstance(e, grpc.Call) else str(e)
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"{name} on {addr} not SERVING after {timeout_s:.0f} s (last: {last})"
                            f"; the end of its log:\n{self.log_tail(name)}"
                        )
                    time.sleep(0.1)

    def _wait_gateway(self, deadline: float, timeout_s: float) -> None:
        """Until the gateway's /healthz says 200 (every service behind it SERVING)."""
        last = "no answer"
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200]!r}"
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise StackError(
                    f"gateway on {self.gateway_url} not healthy after {timeout_s:.0f} s (last: "
                    f"{last}); the end of its log:\n{self.log_tail(GATEWAY)}"
                )
            time.sleep(0.1)

    def wait_colour_version(self, version: int, timeout_s: float = 30.0) -> int:
        """Until the colour service holds index version `version` or later; returns it."""
        deadline = time.monotonic() + timeout_s
        held = 0
        with open_channel(self.peers.colour, timeout_s=2.0) as channel:
            stub = colour_pb2_grpc.ColourServiceStub(channel)
            while True:
                self.check_alive()
                try:
                    held = stub.GetStatus(colour_pb2.GetStatusRequest()).index_version
                except grpc.RpcError:
                    held = 0
                if held >= version:
                    return held
                if time.monotonic() > deadline:
                    raise StackError(
                        f"colour holds index version {held}, not {version}, after {timeout_s:.0f}"
                        f" s; the end of its log:\n{self.log_tail('colour')}"
                    )
                time.sleep(0.05)

    def stop_one(self, name: str, grace_s: float = 10.0) -> int:
        """SIGTERM one service and wait for it (to test restarts); its exit status."""
        proc = self.processes.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=grace_s)
        finally:
            log = self._logs.pop(name, None)
            if log is not None:
                log.close()

    def stop(self, grace_s: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every service (display first, risk index last), wait, then SIGKILL what is
        left. Returns each exit status."""
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(timeout=5)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        return codes

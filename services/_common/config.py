"""Platform configuration, read once from the environment into frozen dataclasses.

Every service reads `PlatformConfig.from_env()` at start and fails fast (`ConfigError`, naming
the variable) on a value it cannot use; nothing re-reads the environment later.

| variable                        | default               |
|---------------------------------|-----------------------|
| HEALTHCODE_DATA_DIR             | ./data                |
| HEALTHCODE_HOST                 | 127.0.0.1 (bind host) |
| HEALTHCODE_DECLARATION_PORT     | 50051                 |
| HEALTHCODE_RISK_INDEX_PORT      | 50052                 |
| HEALTHCODE_COLOUR_PORT          | 50053                 |
| HEALTHCODE_DISPLAY_PORT         | 50054                 |
| HEALTHCODE_<SERVICE>_ADDR       | 127.0.0.1:<its port>  |
| HEALTHCODE_LOG_LEVEL            | INFO                  |
| HEALTHCODE_<SERVICE>_HEALTH_PORT | unset (health alone, plain text, for probes) |
| HEALTHCODE_<SERVICE>_METRICS_PORT | unset or 0: off (Prometheus, plain HTTP; worker i: +i) |
| HEALTHCODE_KEEPALIVE_TIME_MS    | 20000 (ping a quiet connection; services/_common/config.py) |
| HEALTHCODE_KEEPALIVE_TIMEOUT_MS | 10000 (no answer to a ping: the connection is dead) |
| HEALTHCODE_SECRET               | (hex, 32 bytes) else HEALTHCODE_SECRET_FILE |
| HEALTHCODE_SECRET_FILE          | (a path) else <data_dir>/secret.key   |
| HEALTHCODE_STORAGE              | sqlite, or postgresql (docs/storage.md) |
| HEALTHCODE_POSTGRES_DSN         | (with postgresql) libpq DSN of one database |
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services._common.places import PgPlace

SECRET_BYTES = 32
SECRET_FILE = "secret.key"
SECRET_ENV = "HEALTHCODE_SECRET"
SECRET_FILE_ENV = "HEALTHCODE_SECRET_FILE"

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value is missing or unusable; the message names the variable."""


# The four services, in the order Ports and Peers list them.
SERVICE_NAMES = ("declaration", "risk_index", "colour", "display")


@dataclass(frozen=True, slots=True)
class Ports:
    """The port each service listens on. The defaults are the one place they are written."""

    declaration: int = 50051
    risk_index: int = 50052
    colour: int = 50053
    display: int = 50054
    # The browser gateway (HTTP: gRPC-web and Connect; services/gateway/config.py reads it).
    gateway: int = 50080

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.declaration, self.risk_index, self.colour, self.display)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(SERVICE_NAMES, self.as_tuple(), strict=True))


DEFAULT_PORTS = Ports()


@dataclass(frozen=True, slots=True)
class Peers:
    """Where each service is reached by its peers and clients ("host:port")."""

    declaration: str = f"127.0.0.1:{DEFAULT_PORTS.declaration}"
    risk_index: str = f"127.0.0.1:{DEFAULT_PORTS.risk_index}"
    colour: str = f"127.0.0.1:{DEFAULT_PORTS.colour}"
    display: str = f"127.0.0.1:{DEFAULT_PORTS.display}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Peers:
        """HEALTHCODE_<SERVICE>_ADDR, else 127.0.0.1 and HEALTHCODE_<SERVICE>_PORT or the
        default port: what the services themselves read."""
        return PlatformConfig.from_env(env).peers

    @classmethod
    def on_loopback(cls, ports: Ports) -> Peers:
        return cls(*(f"127.0.0.1:{port}" for port in ports.as_tuple()))

    def items(self) -> list[tuple[str, str]]:
        """(service, address) in the order of `SERVICE_NAMES`."""
        return list(zip(SERVICE_NAMES, (getattr(self, n) for n in SERVICE_NAMES), strict=True))


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """What every service shares."""

    data_dir: Path
    host: str
    ports: Ports
    peers: Peers
    log_level: str
    # Unary calls a process works on at once before it sheds load (RESOURCE_EXHAUSTED with
    # RetryInfo; services/_common/shedding.py); 0: three quarters of its server threads.
    max_in_flight: int = 0
    # Per service, a plain-text port serving only gRPC health, for Kubernetes' probes
    # (HEALTHCODE_<SERVICE>_HEALTH_PORT; absent: none). The service port needs a certificate.
    health_ports: Mapping[str, int] = field(default_factory=dict)
    # Per service, the plain-HTTP port of its Prometheus endpoint
    # (HEALTHCODE_<SERVICE>_METRICS_PORT; absent or 0: none). services/_common/metrics.py.
    metrics_ports: Mapping[str, int] = field(default_factory=dict)

    def health_port(self, service: str) -> int | None:
        return self.health_ports.get(service)

    def metrics_port(self, service: str, worker: int | None = None) -> int | None:
        """The metrics port of `service` (None: off); worker i of several serves its own,
        the configured port + i, so each worker is one Prometheus target."""
        base = self.metrics_ports.get(service, 0)
        if not base:
            return None
        return base + (worker or 0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PlatformConfig:
        """Read the environment (or `env`, for tests) once."""
        env = os.environ if env is None else env
        ports = Ports(
            declaration=_port(env, "HEALTHCODE_DECLARATION_PORT", DEFAULT_PORTS.declaration),
            risk_index=_port(env, "HEALTHCODE_RISK_INDEX_PORT", DEFAULT_PORTS.risk_index),
            colour=_port(env, "HEALTHCODE_COLOUR_PORT", DEFAULT_PORTS.colour),
            display=_port(env, "HEALTHCODE_DISPLAY_PORT", DEFAULT_PORTS.display),
        )
        peers = Peers(
            declaration=_addr(env, "HEALTHCODE_DECLARATION_ADDR", ports.declaration),
            risk_index=_addr(env, "HEALTHCODE_RISK_INDEX_ADDR", ports.risk_index),
            colour=_addr(env, "HEALTHCODE_COLOUR_ADDR", ports.colour),
            display=_addr(env, "HEALTHCODE_DISPLAY_ADDR", ports.display),
        )
        level = env.get("HEALTHCODE_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"HEALTHCODE_LOG_LEVEL: {level!r} is not a logging level")
        return cls(
            data_dir=Path(env.get("HEALTHCODE_DATA_DIR", "./data")),
            host=env.get("HEALTHCODE_HOST", "127.0.0.1"),
            ports=ports,
            peers=peers,
            log_level=level,
            max_in_flight=env_int(env, "HEALTHCODE_MAX_IN_FLIGHT", 0, low=0, high=100_000),
            health_ports={
                name: _port(env, f"HEALTHCODE_{name.upper()}_HEALTH_PORT", 0)
                for name in SERVICE_NAMES
                if env.get(f"HEALTHCODE_{name.upper()}_HEALTH_PORT", "").strip()
            },
            metrics_ports={
                name: _port(env, f"HEALTHCODE_{name.upper()}_METRICS_PORT", 0)
                for name in SERVICE_NAMES
                if env.get(f"HEALTHCODE_{name.upper()}_METRICS_PORT", "").strip()
            },
        )


def env_int(
    env: Mapping[str, str], name: str, default: int, *, low: int = 0, high: int = 2**63 - 1
) -> int:
    """An integer variable within [low, high], or `default` when unset."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is outside {low}..{high}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, low: float = 0.0) -> float:
    """A float variable at least `low`, or `default` when unset."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if value < low:
        raise ConfigError(f"{name}: {value} is below {low}")
    return value


# -- storage (docs/storage.md) ----------------------------------------------------------------
# HEALTHCODE_STORAGE: sqlite (default: a file per service under the data directory) or
# postgresql (HEALTHCODE_POSTGRES_DSN: one database; each service its own schema, named after it).
STORAGE_BACKENDS = ("sqlite", "postgresql")


def storage_place(env: Mapping[str, str], service: str, sqlite_path: Path) -> Path | PgPlace:
    """Where `service` keeps its tables: its SQLite file, or its schema in PostgreSQL."""
    backend = env.get("HEALTHCODE_STORAGE", "").strip().lower() or "sqlite"
    if backend not in STORAGE_BACKENDS:
        raise ConfigError(f"HEALTHCODE_STORAGE: {backend!r} should be sqlite or postgresql")
    if backend == "sqlite":
        return sqlite_path
    dsn = env.get("HEALTHCODE_POSTGRES_DSN", "").strip()
    if not dsn:
        raise ConfigError(
            "HEALTHCODE_POSTGRES_DSN: needed with HEALTHCODE_STORAGE=postgresql, e.g. "
            "'host=127.0.0.1 port=5432 dbname=healthcode user=healthcode'"
        )
    return PgPlace(dsn, service)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    # 0 is allowed: the OS picks a free port (tests, several stacks on one machine).
    return env_int(env, name, default, low=0, high=65535)


def _addr(env: Mapping[str, str], name: str, port: int) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return f"127.0.0.1:{port}"
    if ":" not in raw:
        raise ConfigError(f"{name}: {raw!r} should be host:port")
    return raw


def load_secret(data_dir: Path | str, env: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte deployment secret that keys every identifier hash.

    In order, the first that is set:

    - `HEALTHCODE_SECRET`: 64 hexadecimal characters in the environment (a Kubernetes
      `secretKeyRef`, compose's `environment:`).
    - `HEALTHCODE_SECRET_FILE`: the path of a file holding 64 hexadecimal characters (surrounding
      whitespace and a final newline allowed: what `openssl rand -hex 32` prints), or exactly 32
      raw bytes (the form of `secret.key`): a Secret mounted as a volume. A file that other
      users may read is used, with one warning naming the path (a Kubernetes Secret volume is
      0644 unless `defaultMode: 0400` is set).
    - `<data_dir>/secret.key`: 32 raw bytes, created once with mode 0600.

    Setting both variables is refused. Every service of one deployment must use the same
    secret, or their keys for the same person differ; creating the file atomically lets services
    that start together agree. The value is never logged nor put in an error message.
    """
    env = os.environ if env is None else env
    raw = env.get(SECRET_ENV, "").strip()
    file_name = env.get(SECRET_FILE_ENV, "").strip()
    if raw and file_name:
        raise ConfigError(f"{SECRET_ENV} and {SECRET_FILE_ENV} are both set: set one")
    if raw:
        return _secret_from_hex(raw, SECRET_ENV)
    if file_name:
        return _secret_from_file(Path(file_name), SECRET_FILE_ENV)
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"{path}: {len(secret)} bytes, should be {SECRET_BYTES}")
    warn_if_readable_by_others(path, "the identifier secret")
    return secret


def _secret_from_hex(text: str, source: str) -> bytes:
    # The messages say what is wrong with the value, never any part of it.
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{source}: not hexadecimal") from None
    if len(secret) != SECRET_BYTES:
        raise ConfigError(
            f"{source}: {len(secret)} bytes, should be {SECRET_BYTES} "
            f"({2 * SECRET_BYTES} hex characters)"
        )
    return secret


def _secret_from_file(path: Path, variable: str) -> bytes:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{variable}: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{variable}: {path} is a directory, not a file") from None
    except OSError as error:
        raise ConfigError(f"{variable}: {path}: cannot read ({error.strerror})") from None
    warn_if_readable_by_others(path, variable)
    if len(content) == SECRET_BYTES:
        return content
    try:
        text = content.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"{variable}: {path} holds {len(content)} bytes: should be {2 * SECRET_BYTES} "
            f"hex characters or {SECRET_BYTES} raw bytes"
        ) from None
    return _secret_from_hex(text, f"{variable}: {path}")


_warned_readable: set[str] = set()


def warn_if_readable_by_others(path: Path, what: str) -> None:
    """Log once per file (its path and mode, nothing of its content) that users other than the
    owner and group may read it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & stat.S_IROTH and str(path) not in _warned_readable:
        _warned_readable.add(str(path))
        log.warning(
            "%s: %s is readable by every user (mode %04o); make it 0400 or 0600 "
            "(a Kubernetes Secret volume: defaultMode: 0400)",
            what,
            path,
            mode,
        )


def _create_secret(path: Path) -> None:
    # Write aside, then link into place: link fails if another process won the race, and a
    # reader never sees a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# A peer that was down is retried within a second of coming back. grpc's default reconnect
# backoff grows to 120 s (1 s, 1.6 s, ...): after an 8 s outage a Show kept failing for up to
# 7 s after its peer answered again (issue 9). A loopback or in-cluster peer is cheap to retry.
RECONNECT_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 pings on quiet connections, so a half-open one (a peer that vanished without a
    FIN: a crashed node, a NAT or load balancer that dropped the flow) is noticed within
    `time_ms + timeout_ms` and its calls end UNAVAILABLE. A WatchIndex can be silent for
    minutes; without pings its follower would wait on a dead stream forever, and the risk
    index would keep a thread for a watcher that is gone (docs/observability.md)."""

    time_ms: int = 20_000  # ping after this long without a frame received
    timeout_ms: int = 10_000  # no ping acknowledgement within this: the connection is dead

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Keepalive:
        env = os.environ if env is None else env
        return cls(
            time_ms=env_int(env, "HEALTHCODE_KEEPALIVE_TIME_MS", 20_000, low=500, high=86_400_000),
            timeout_ms=env_int(
                env, "HEALTHCODE_KEEPALIVE_TIMEOUT_MS", 10_000, low=500, high=3_600_000
            ),
        )

    def client_options(self) -> list[tuple[str, int | str]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            # A channel holding only a quiet stream still pings (a watch is one call, and
            # between two versions no frame may pass for minutes).
            ("grpc.keepalive_permit_without_calls", 1),
            # grpc stops pinging after 2 pings without data by default: unlimited.
            ("grpc.http2.max_pings_without_data", 0),
            # grpc 1.85 waits for a ping's acknowledgement up to this (default 60 s), whatever
            # keepalive_timeout_ms says: measured, a half-open stream ended after 61 s without it.
            ("grpc.http2.ping_timeout_ms", self.timeout_ms),
        ]

    def server_options(self) -> list[tuple[str, int | str]]:
        return [
            # The server pings too: a watcher that vanished frees its thread.
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", self.timeout_ms),
            # Accept clients' pings as often as ours are sent (and a little more often: peers
            # configured apart). grpc's default (5 minutes) answers faster pings with GOAWAY
            # "too_many_pings", which would end every watch.
            ("grpc.http2.min_ping_interval_without_data_ms", min(5_000, self.time_ms // 2)),
            ("grpc.http2.max_ping_strikes", 2),
        ]


# Read once, at import, like every other setting: every channel and server of the process
# uses the same pings.
KEEPALIVE = Keepalive.from_env()
# Channels to peers reconnect fast AND notice a dead connection (RECONNECT_OPTIONS is what every
# channel to a peer, the index follower's and the CLI's included, is made with).
RECONNECT_OPTIONS += KEEPALIVE.client_options()

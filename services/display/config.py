"""The display service's configuration, read once from the environment at start.

| variable                          | default                                      |
|-----------------------------------|----------------------------------------------|
| HEALTHCODE_DISPLAY_PORT           | 50054                                        |
| HEALTHCODE_COLOUR_ADDR            | 127.0.0.1:50053 (live colours)               |
| HEALTHCODE_DECLARATION_ADDR       | 127.0.0.1:50051 (masked names)               |
| HEALTHCODE_DISPLAY_TOKEN_TTL_S    | 60 (1-60: a code token's life)               |
| HEALTHCODE_DISPLAY_WORKERS        | 64 (server threads; each WatchCounters stream holds one, an eighth at most) |
| HEALTHCODE_DISPLAY_MAX_QUEUE_WAIT_MS | 250 (a Show that waited longer for a thread is refused, RetryInfo) |
| HEALTHCODE_DISPLAY_PEER_TIMEOUT_S | 2 (deadline of each colour/declaration call) |
| HEALTHCODE_DISPLAY_COLOUR         | replica: the verdicts held in this process   |
|                                   | service: ask the colour service each time    |
| HEALTHCODE_DISPLAY_PROCESSES      | 1 (worker processes on the one port, 1-64)   |
| HEALTHCODE_TOKEN_KEYS_DIR         | <data_dir>/display/token-keys (the key ring) |
| HEALTHCODE_DISPLAY_RETENTION_DAYS | 30 (1-3660: display and scan records kept)   |
| HEALTHCODE_DISPLAY_PURGE_S        | 3600 (s between purges of older records)     |
| HEALTHCODE_STORAGE, HEALTHCODE_POSTGRES_DSN | sqlite; postgresql: schema `display`, one log for every worker (docs/storage.md) |
| HEALTHCODE_COLOUR_RULE_SET, ...   | the replica's settings: services/colour/config.py |
| HEALTHCODE_DATA_DIR, ...          | see services/_common/config.py               |

Threads and overload (issue 9). grpc's synchronous server accepts every call on one thread,
which needs the GIL between calls. With many handler threads busy at a midnight peak it gets the
GIL too rarely: calls pile up unaccepted inside grpc's core, which drops them at random past
1,000 (CANCELLED, no retry advice). Fewer threads keep the accepting thread going: with 8
(`HEALTHCODE_DISPLAY_WORKERS=8`) a midnight profile lost far fewer calls (15,138 CANCELLED
against 77,952 with 64), but Show on PostgreSQL fell to 0.36x of Show on SQLite, and Show
through the colour service to 346 a second: their waits need threads. So the default stays 64;
a call that waited over HEALTHCODE_DISPLAY_MAX_QUEUE_WAIT_MS for a thread is refused with
RESOURCE_EXHAUSTED and RetryInfo. The lasting fix is a server that does not need a thread to
wait (grpc.aio). BENCHMARKS.md, "The midnight CANCELLED".

One hop per display (issue 9): by default the display process holds its own replica of the
verdicts, fed by the risk index exactly as the colour service's is, so a Show or a Scan makes no
call of its own to colour. `service` keeps the colour service as the source (a display on a
machine without the memory for an index).

Files under `<data_dir>/display/`: `display.db` (the display log, SQLite WAL),
`token-keys/` (the key ring of the Ed25519 token signing keys, one 0600 file per key:
services/display/keyring.py and docs/keys.md; its first key is created at first start and
kept, so that codes on screens survive a restart; `healthcode keys rotate` rotates it) and
`index.snapshot` (the replica's last index version). `signing.key`, the single key of earlier
versions, is imported as the ring's first key when the ring is empty, and read for nothing else.

Retention (R15): display and scan records older than HEALTHCODE_DISPLAY_RETENTION_DAYS are
deleted, with the per-person rows kept only for them (services/display/store.py), at start and
then every HEALTHCODE_DISPLAY_PURGE_S. Why 30 days by default: the seed names no period;
the longest window of the default rules is 28 days (confirmed cases, services/rules/
default.toml), so an investigation around anyone the rules still flag can read whom they met and
where, with two days of margin; past that a record only adds to what could leak.

With HEALTHCODE_DISPLAY_PROCESSES = N > 1 (services/_common/workers.py) worker i has its own
`display.<i>.db` and `index.<i>.snapshot`; all share the key ring (its first key created by
the parent before any worker starts; a rotation reaches every worker within 10 s, or at once
when a token names the new key) and `shared.db` (token claims and first displays:
services/display/ledger.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services._common.config import (
    ConfigError,
    PlatformConfig,
    env_float,
    env_int,
    storage_place,
)
from services._common.places import PgPlace
from services._common.workers import MAX_PROCESSES
from services.colour.config import ReplicaConfig
from services.display.keyring import KEYS_DIR_ENV, KeyRing, ensure_signing_key
from services.display.ledger import SHARED_FILE

COLOUR_SOURCES = ("replica", "service")
DEFAULT_RETENTION_DAYS = 30
DAY_MS = 86_400_000
KEYS_DIR = "token-keys"
LEGACY_SIGNING_KEY = "signing.key"


def token_keys_dir(env: Mapping[str, str], data_dir: Path) -> Path:
    """HEALTHCODE_TOKEN_KEYS_DIR, else `<data_dir>/display/token-keys`."""
    raw = env.get(KEYS_DIR_ENV, "").strip()
    return Path(raw) if raw else data_dir / "display" / KEYS_DIR


def legacy_signing_key(data_dir: Path) -> Path:
    """The single signing key of earlier versions, imported into an empty ring."""
    return data_dir / "display" / LEGACY_SIGNING_KEY


@dataclass(frozen=True, slots=True)
class DisplayConfig:
    platform: PlatformConfig
    port: int
    colour_addr: str
    declaration_addr: str
    db_path: Path
    # The single key of earlier versions: imported as the first key of an empty ring.
    signing_key_path: Path
    token_ttl_ms: int
    max_workers: int
    peer_timeout_s: float
    colour_source: str
    replica: ReplicaConfig
    processes: int = 1
    max_queue_wait_s: float = 0.25
    # The file the workers share (token claims, first displays); None with one process.
    shared_path: Path | None = None
    # The key ring (HEALTHCODE_TOKEN_KEYS_DIR); None: `<data_dir>/display/token-keys`.
    token_keys_path: Path | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS
    purge_interval_s: float = 3600.0
    # This process purges the shared file too (worker 0 of several).
    purges_shared: bool = False
    # HEALTHCODE_STORAGE=postgresql: the service's schema, one log for every worker and pod
    # (services/display/store_pg.py); then no file is used and `shared_path` stays None.
    pg: PgPlace | None = None

    @property
    def log_place(self) -> Path | PgPlace:
        """Where this process logs displays: its file, or the service's schema."""
        return self.pg if self.pg is not None else self.db_path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DisplayConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        directory = platform.data_dir / "display"
        colour_source = env.get("HEALTHCODE_DISPLAY_COLOUR", "") or "replica"
        if colour_source not in COLOUR_SOURCES:
            raise ConfigError(
                f"HEALTHCODE_DISPLAY_COLOUR: {colour_source!r}; use one of {COLOUR_SOURCES}"
            )
        return cls(
            platform=platform,
            port=platform.ports.display,
            colour_addr=platform.peers.colour,
            declaration_addr=platform.peers.declaration,
            db_path=directory / "display.db",
            signing_key_path=legacy_signing_key(platform.data_dir),
            token_keys_path=token_keys_dir(env, platform.data_dir),
            token_ttl_ms=1000 * env_int(env, "HEALTHCODE_DISPLAY_TOKEN_TTL_S", 60, low=1, high=60),
            max_workers=env_int(env, "HEALTHCODE_DISPLAY_WORKERS", 64, low=4, high=1024),
            max_queue_wait_s=env_int(
                env, "HEALTHCODE_DISPLAY_MAX_QUEUE_WAIT_MS", 250, low=1, high=60_000
            )
            / 1000,
            peer_timeout_s=env_float(env, "HEALTHCODE_DISPLAY_PEER_TIMEOUT_S", 2.0, low=0.05),
            colour_source=colour_source,
            replica=ReplicaConfig.from_env(env, platform, "display"),
            processes=env_int(env, "HEALTHCODE_DISPLAY_PROCESSES", 1, low=1, high=MAX_PROCESSES),
            retention_days=env_int(
                env, "HEALTHCODE_DISPLAY_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, low=1, high=3660
            ),
            purge_interval_s=env_float(env, "HEALTHCODE_DISPLAY_PURGE_S", 3600.0, low=1.0),
            pg=_pg(storage_place(env, "display", directory / "display.db")),
        )

    @property
    def directory(self) -> Path:
        return self.db_path.parent

    @property
    def retention_ms(self) -> int:
        return self.retention_days * DAY_MS

    @property
    def token_keys_dir(self) -> Path:
        if self.token_keys_path is not None:
            return self.token_keys_path
        return self.platform.data_dir / "display" / KEYS_DIR

    def ensure_signing_key(self) -> None:
        """Made once, before any worker starts: the ring's first key if none signs (importing
        `signing.key` into an empty ring)."""
        ensure_signing_key(self.token_keys_dir, legacy_key=self.signing_key_path)

    def key_ring(self) -> KeyRing:
        """The token key ring, its first key created if none signs."""
        return KeyRing.open(self.token_keys_dir, create=True, legacy_key=self.signing_key_path)

    def shared_file(self) -> Path:
        return self.directory / SHARED_FILE

    def for_worker(self, index: int, port: int | None) -> DisplayConfig:
        """Worker `index` of several processes: its own log (`display.<i>.db`) and replica
        snapshot (`index.<i>.snapshot`), the shared file, the port its parent holds."""
        return replace(
            self,
            port=self.port if port is None else port,
            db_path=self.directory / f"display.{index}.db",
            # On PostgreSQL the workers share the tables themselves.
            shared_path=self.shared_file() if self.pg is None else None,
            # On PostgreSQL one worker purges the one log.
            purges_shared=index == 0,
            replica=self.replica.for_worker(index),
        )


def _pg(place: Path | PgPlace) -> PgPlace | None:
    return place if isinstance(place, PgPlace) else None

"""The display service's configuration, read once from the environment at start.

| variable                          | default                                      |
|-----------------------------------|----------------------------------------------|
| HEALTHCODE_DISPLAY_PORT           | 50054                                        |
| HEALTHCODE_COLOUR_ADDR            | 127.0.0.1:50053 (live colours)               |
| HEALTHCODE_DECLARATION_ADDR       | 127.0.0.1:50051 (masked names)               |
| HEALTHCODE_DISPLAY_TOKEN_TTL_S    | 60 (1-60: a code token's life)               |
| HEALTHCODE_DISPLAY_WORKERS        | 64 (server threads; WatchCounters holds one) |
| HEALTHCODE_DISPLAY_PEER_TIMEOUT_S | 2 (deadline of each colour/declaration call) |
| HEALTHCODE_DISPLAY_COLOUR         | replica: the verdicts held in this process   |
|                                   | service: ask the colour service each time    |
| HEALTHCODE_DISPLAY_PROCESSES      | 1 (worker processes on the one port, 1-64)   |
| HEALTHCODE_COLOUR_RULE_SET, ...   | the replica's settings: services/colour/config.py |
| HEALTHCODE_DATA_DIR, ...          | see services/_common/config.py               |

One hop per display (issue 9): by default the display process holds its own replica of the
verdicts, fed by the risk index exactly as the colour service's is, so a Show or a Scan makes no
call of its own to colour. `service` keeps the colour service as the source (a display on a
machine without the memory for an index).

Files under `<data_dir>/display/`: `display.db` (the display log, SQLite WAL),
`signing.key` (the Ed25519 seed, 0600; created at first start and kept, so that codes on screens
survive a restart) and `index.snapshot` (the replica's last index version).

With HEALTHCODE_DISPLAY_PROCESSES = N > 1 (services/_common/workers.py) worker i has its own
`display.<i>.db` and `index.<i>.snapshot`; all share `signing.key` (created by the parent
before any worker starts) and `shared.db` (token claims and first displays:
services/display/ledger.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services._common.config import ConfigError, PlatformConfig, env_float, env_int
from services._common.workers import MAX_PROCESSES
from services.colour.config import ReplicaConfig
from services.display.ledger import SHARED_FILE

COLOUR_SOURCES = ("replica", "service")


@dataclass(frozen=True, slots=True)
class DisplayConfig:
    platform: PlatformConfig
    port: int
    colour_addr: str
    declaration_addr: str
    db_path: Path
    signing_key_path: Path
    token_ttl_ms: int
    max_workers: int
    peer_timeout_s: float
    colour_source: str
    replica: ReplicaConfig
    processes: int = 1
    # The file the workers share (token claims, first displays); None with one process.
    shared_path: Path | None = None

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
            signing_key_path=directory / "signing.key",
            token_ttl_ms=1000 * env_int(env, "HEALTHCODE_DISPLAY_TOKEN_TTL_S", 60, low=1, high=60),
            max_workers=env_int(env, "HEALTHCODE_DISPLAY_WORKERS", 64, low=4, high=1024),
            peer_timeout_s=env_float(env, "HEALTHCODE_DISPLAY_PEER_TIMEOUT_S", 2.0, low=0.05),
            colour_source=colour_source,
            replica=ReplicaConfig.from_env(env, platform, "display"),
            processes=env_int(env, "HEALTHCODE_DISPLAY_PROCESSES", 1, low=1, high=MAX_PROCESSES),
        )

    @property
    def directory(self) -> Path:
        return self.db_path.parent

    def shared_file(self) -> Path:
        return self.directory / SHARED_FILE

    def for_worker(self, index: int, port: int | None) -> DisplayConfig:
        """Worker `index` of several processes: its own log (`display.<i>.db`) and replica
        snapshot (`index.<i>.snapshot`), the shared file, the port its parent holds."""
        return replace(
            self,
            port=self.port if port is None else port,
            db_path=self.directory / f"display.{index}.db",
            shared_path=self.shared_file(),
            replica=self.replica.for_worker(index),
        )

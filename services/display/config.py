"""The display service's configuration, read once from the environment at start.

| variable                          | default                                      |
|-----------------------------------|----------------------------------------------|
| HEALTHCODE_DISPLAY_PORT           | 50054                                        |
| HEALTHCODE_COLOUR_ADDR            | 127.0.0.1:50053 (live colours)               |
| HEALTHCODE_DECLARATION_ADDR       | 127.0.0.1:50051 (masked names)               |
| HEALTHCODE_DISPLAY_TOKEN_TTL_S    | 60 (1-60: a code token's life)               |
| HEALTHCODE_DISPLAY_WORKERS        | 64 (server threads; WatchCounters holds one) |
| HEALTHCODE_DISPLAY_PEER_TIMEOUT_S | 2 (deadline of each colour/declaration call) |
| HEALTHCODE_DATA_DIR, ...          | see services/_common/config.py               |

Files under `<data_dir>/display/`: `display.db` (the display log, SQLite WAL) and
`signing.key` (the Ed25519 seed, 0600; created at first start and kept, so that codes on screens
survive a restart).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services._common.config import PlatformConfig, env_float, env_int


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DisplayConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        directory = platform.data_dir / "display"
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
        )

"""The risk-index service's configuration, read once from the environment at start.

| variable                          | default                                   |
|-----------------------------------|-------------------------------------------|
| HEALTHCODE_RISK_INDEX_PORT        | 50052                                     |
| HEALTHCODE_RISK_INDEX_DB          | <data_dir>/risk_index/risk_index.sqlite3  |
| HEALTHCODE_MAX_BATCH_ROWS         | 50000 (larger batches: RESOURCE_EXHAUSTED) |
| HEALTHCODE_RISK_INDEX_WORKERS     | 32 (server threads; each watcher holds one) |
| HEALTHCODE_RISK_INDEX_PUBLISH_INTERVAL_S | 1 (at most one index version per interval; 0: one per change) |
| HEALTHCODE_RISK_INDEX_SNAPSHOT_S  | 300 (write the index snapshot this often, and at stop; 0: never) |
| HEALTHCODE_SHARED_KEYS            | on: the loaded index's keys read from `<data_dir>/shared-keys/`, one copy with every replica of the machine (services/_common/shared_keys.py); off |
| HEALTHCODE_DATA_DIR, HEALTHCODE_SECRET, ... | see services/_common/config.py  |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services._common.config import (
    PlatformConfig,
    env_float,
    env_int,
    load_secret,
    storage_place,
)
from services._common.places import PgPlace
from services._common.shared_keys import shared_keys_dir


@dataclass(frozen=True, slots=True)
class RiskIndexConfig:
    platform: PlatformConfig
    port: int
    db_path: Path
    max_batch_rows: int
    workers: int
    secret: bytes
    publish_interval_s: float
    snapshot_path: Path
    snapshot_interval_s: float
    # The machine's shared key files (services/_common/shared_keys.py); None: keys in memory.
    shared_keys_dir: Path | None
    # HEALTHCODE_STORAGE=postgresql: the service's schema (then `db_path` is not used; the
    # index snapshot stays a local file, a cache a new pod rebuilds from the database).
    pg: PgPlace | None = None

    @property
    def storage(self) -> Path | PgPlace:
        """Where the repository keeps its tables."""
        return self.pg if self.pg is not None else self.db_path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RiskIndexConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        db = env.get("HEALTHCODE_RISK_INDEX_DB", "").strip()
        db_path = Path(db) if db else platform.data_dir / "risk_index" / "risk_index.sqlite3"
        place = storage_place(env, "risk_index", db_path)
        return cls(
            platform=platform,
            port=platform.ports.risk_index,
            db_path=db_path,
            max_batch_rows=env_int(env, "HEALTHCODE_MAX_BATCH_ROWS", 50_000, low=1),
            workers=env_int(env, "HEALTHCODE_RISK_INDEX_WORKERS", 32, low=2, high=1024),
            secret=load_secret(platform.data_dir, env),
            publish_interval_s=env_float(
                env, "HEALTHCODE_RISK_INDEX_PUBLISH_INTERVAL_S", 1.0, low=0.0
            ),
            snapshot_path=db_path.with_name("index.snapshot"),
            snapshot_interval_s=env_float(env, "HEALTHCODE_RISK_INDEX_SNAPSHOT_S", 300.0, low=0.0),
            shared_keys_dir=shared_keys_dir(env, platform),
            pg=place if isinstance(place, PgPlace) else None,
        )

"""The declaration service's configuration, read once from the environment at start.

| variable                              | default                                     |
|---------------------------------------|---------------------------------------------|
| HEALTHCODE_DECLARATION_PORT           | 50051                                       |
| HEALTHCODE_RISK_INDEX_ADDR            | 127.0.0.1:50052 (people, phones, rows go there) |
| HEALTHCODE_DECLARATION_DB             | <data_dir>/declaration/declaration.sqlite3  |
| HEALTHCODE_OUTBOX_RETRY_MAX_S         | 10 (backoff ceiling while the index is down) |
| HEALTHCODE_OUTBOX_DEADLINE_S          | 5 (per call to the risk index)              |
| HEALTHCODE_OUTBOX_BULK_DEADLINE_S     | 60 (per call carrying a bulk import's chunk) |
| HEALTHCODE_SMS                        | none (sign-in codes: `reply` for development) |
| HEALTHCODE_STORAGE, HEALTHCODE_POSTGRES_DSN | sqlite; postgresql: schema `declaration` (docs/storage.md) |
| HEALTHCODE_DATA_DIR, HEALTHCODE_SECRET, ... | see services/_common/config.py        |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services._common.config import (
    ConfigError,
    PlatformConfig,
    env_float,
    load_secret,
    storage_place,
)
from services._common.places import PgPlace


@dataclass(frozen=True, slots=True)
class DeclarationConfig:
    platform: PlatformConfig
    port: int
    risk_index_addr: str
    db_path: Path
    outbox_retry_max_s: float
    outbox_deadline_s: float
    outbox_bulk_deadline_s: float
    secret: bytes
    # Where sign-in codes go (services/declaration/signin.py): "none", or "reply" (development).
    sms: str = "none"
    # HEALTHCODE_STORAGE=postgresql: the service's schema (then `db_path` is not used).
    pg: PgPlace | None = None

    @property
    def storage(self) -> Path | PgPlace:
        """Where the repository keeps its tables."""
        return self.pg if self.pg is not None else self.db_path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeclarationConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        db = env.get("HEALTHCODE_DECLARATION_DB", "").strip()
        db_path = Path(db) if db else platform.data_dir / "declaration" / "declaration.sqlite3"
        place = storage_place(env, "declaration", db_path)
        return cls(
            platform=platform,
            port=platform.ports.declaration,
            risk_index_addr=platform.peers.risk_index,
            db_path=db_path,
            outbox_retry_max_s=env_float(env, "HEALTHCODE_OUTBOX_RETRY_MAX_S", 10.0, low=0.05),
            outbox_deadline_s=env_float(env, "HEALTHCODE_OUTBOX_DEADLINE_S", 5.0, low=0.1),
            outbox_bulk_deadline_s=env_float(
                env, "HEALTHCODE_OUTBOX_BULK_DEADLINE_S", 60.0, low=0.1
            ),
            secret=load_secret(platform.data_dir, env),
            sms=_sms(env),
            pg=place if isinstance(place, PgPlace) else None,
        )


def _sms(env: Mapping[str, str]) -> str:
    value = env.get("HEALTHCODE_SMS", "none").strip() or "none"
    if value not in {"none", "reply"}:
        raise ConfigError(f"HEALTHCODE_SMS: {value!r} should be none or reply")
    return value

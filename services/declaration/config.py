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
| HEALTHCODE_DATA_DIR, HEALTHCODE_SECRET, ... | see services/_common/config.py        |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services._common.config import ConfigError, PlatformConfig, env_float, load_secret


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeclarationConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        db = env.get("HEALTHCODE_DECLARATION_DB", "").strip()
        return cls(
            platform=platform,
            port=platform.ports.declaration,
            risk_index_addr=platform.peers.risk_index,
            db_path=Path(db) if db else platform.data_dir / "declaration" / "declaration.sqlite3",
            outbox_retry_max_s=env_float(env, "HEALTHCODE_OUTBOX_RETRY_MAX_S", 10.0, low=0.05),
            outbox_deadline_s=env_float(env, "HEALTHCODE_OUTBOX_DEADLINE_S", 5.0, low=0.1),
            outbox_bulk_deadline_s=env_float(
                env, "HEALTHCODE_OUTBOX_BULK_DEADLINE_S", 60.0, low=0.1
            ),
            secret=load_secret(platform.data_dir, env),
            sms=_sms(env),
        )


def _sms(env: Mapping[str, str]) -> str:
    value = env.get("HEALTHCODE_SMS", "none").strip() or "none"
    if value not in {"none", "reply"}:
        raise ConfigError(f"HEALTHCODE_SMS: {value!r} should be none or reply")
    return value

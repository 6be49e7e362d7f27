"""The browser gateway's configuration, read once from the environment at start.

| variable                          | default                                          |
|-----------------------------------|--------------------------------------------------|
| HEALTHCODE_GATEWAY_PORT           | 50080 (HTTP: pages, Connect, gRPC-web)            |
| HEALTHCODE_GATEWAY_ORIGINS        | http://127.0.0.1:<port>,http://localhost:<port>   |
|                                   | (origins allowed cross-origin calls: CORS; exact) |
| HEALTHCODE_GATEWAY_TIMEOUT_S      | 10 (deadline of a call whose caller sent none)    |
| HEALTHCODE_GATEWAY_MAX_TIMEOUT_S  | 30 (a longer deadline from a browser is cut here) |
| HEALTHCODE_GATEWAY_TLS_CERT / _KEY | unset: plain HTTP (behind a TLS ingress, or a     |
|                                   | laptop); both set: HTTPS with that certificate    |
| HEALTHCODE_DECLARATION_ADDR, ...  | where the services are: services/_common/config.py |
| HEALTHCODE_CREDENTIALS            | the gateway's certificate `gateway.pem/.key`      |
|                                   | (spiffe://healthcode/edge/gateway), services/_common/auth.py |
| HEALTHCODE_DATA_DIR, ...          | see services/_common/config.py                    |

The gateway holds no data and no role: it relays each browser call, with the caller's bearer
token, to the service that answers it, over mutual TLS with its own edge certificate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services._common.config import DEFAULT_PORTS, ConfigError, PlatformConfig, env_float, env_int


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    platform: PlatformConfig
    port: int
    # Origins (scheme://host[:port], exactly as a browser sends them) allowed cross-origin calls.
    allowed_origins: tuple[str, ...]
    default_timeout_s: float
    max_timeout_s: float
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def backends(self) -> dict[str, str]:
        """The address of each service the gateway relays to."""
        peers = self.platform.peers
        return {"declaration": peers.declaration, "colour": peers.colour, "display": peers.display}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        port = env_int(env, "HEALTHCODE_GATEWAY_PORT", DEFAULT_PORTS.gateway, low=0, high=65535)
        raw_origins = env.get("HEALTHCODE_GATEWAY_ORIGINS", "").strip()
        if raw_origins:
            origins = tuple(o.strip().rstrip("/") for o in raw_origins.split(",") if o.strip())
            for origin in origins:
                if origin != "*" and not origin.startswith(("http://", "https://")):
                    raise ConfigError(
                        f"HEALTHCODE_GATEWAY_ORIGINS: {origin!r} should be an origin such as "
                        "https://mini.example.cn (scheme, host and port, no path)"
                    )
        else:
            origins = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
        default_timeout = env_float(env, "HEALTHCODE_GATEWAY_TIMEOUT_S", 10.0, low=0.1)
        max_timeout = env_float(env, "HEALTHCODE_GATEWAY_MAX_TIMEOUT_S", 30.0, low=0.1)
        cert = env.get("HEALTHCODE_GATEWAY_TLS_CERT", "").strip()
        key = env.get("HEALTHCODE_GATEWAY_TLS_KEY", "").strip()
        if bool(cert) != bool(key):
            raise ConfigError(
                "HEALTHCODE_GATEWAY_TLS_CERT and HEALTHCODE_GATEWAY_TLS_KEY: set both (HTTPS) "
                "or neither (plain HTTP)"
            )
        return cls(
            platform=platform,
            port=port,
            allowed_origins=origins,
            default_timeout_s=min(default_timeout, max_timeout),
            max_timeout_s=max_timeout,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
        )

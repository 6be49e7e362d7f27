"""`python -m services.gateway`: the browser gateway (gRPC-web, Connect, the pages) on uvicorn,
until SIGTERM or SIGINT, which finish the calls in flight and then stop (exit status 0)."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from services._common.auth import Security
from services._common.logs import setup_logging
from services.gateway.app import build_app
from services.gateway.config import GatewayConfig
from services.gateway.relay import Backends

log = logging.getLogger("services.gateway")

# Seconds the calls in flight get to finish after SIGTERM.
GRACE_S = 5


def main() -> None:
    config = GatewayConfig.from_env()
    setup_logging("gateway", config.platform.log_level)
    logging.getLogger("uvicorn.error").addFilter(_plain_uvicorn_records)
    # The gateway's own certificate (an edge: it relays callers' tokens and has no role).
    security = Security.from_env(config.platform.data_dir, "gateway")
    if security is None:
        log.warning("HEALTHCODE_INSECURE=1: plain-text channels to the services (development only)")
    backends = Backends(config.backends, security)
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(config, backends),
            host=config.platform.host,
            port=config.port,
            lifespan="on",
            # uvicorn's own loggers go through the root logger (JSON, redacted); no access log,
            # since a URL may carry what a person typed.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACE_S,
            ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
            server_header=False,
        )
    )
    scheme = "https" if config.tls_cert else "http"
    log.info("gateway on %s://%s:%d", scheme, config.platform.host, config.port)
    _quiet_signals()
    server.run()
    log.info("stopped")


def _plain_uvicorn_records(record: logging.LogRecord) -> bool:
    # uvicorn adds a copy of some messages with terminal colour codes; the JSON line needs none.
    record.__dict__.pop("color_message", None)
    return True


def _quiet_signals() -> None:
    """uvicorn handles SIGTERM/SIGINT while it runs, then re-raises the signal to the handler that
    was there before it: with Python's defaults that would end the process by the signal
    (status -15) after a clean stop. A handler that only logs makes the exit status 0."""

    def stopped_by(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopped", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stopped_by)
    signal.signal(signal.SIGINT, stopped_by)


if __name__ == "__main__":
    main()

"""`python -m services.display`: wire the display service and wait for SIGTERM."""

from __future__ import annotations

import logging

from healthcode.v1 import display_pb2_grpc

from services._common.config import load_secret
from services._common.identifiers import Identifiers
from services._common.logs import setup_logging
from services._common.server import create_server, serve_forever
from services._common.telemetry import instrumented_channel, setup_tracing
from services.display.config import DisplayConfig
from services.display.logic import DisplayDesk
from services.display.peers import ColourPeer, DeclarationPeer
from services.display.servicer import SERVICE_NAME, DisplayServicer
from services.display.store import DisplayLog
from services.display.tokens import CodeTokens, load_or_create_signing_key

log = logging.getLogger("services.display")


def main() -> None:
    config = DisplayConfig.from_env()
    setup_logging("display", config.platform.log_level)
    setup_tracing("display")
    secret = load_secret(config.platform.data_dir)
    tokens = CodeTokens(load_or_create_signing_key(config.signing_key_path), config.token_ttl_ms)
    display_log = DisplayLog(config.db_path)
    colour_channel = instrumented_channel(config.colour_addr)
    declaration_channel = instrumented_channel(config.declaration_addr)
    desk = DisplayDesk(
        tokens,
        display_log,
        ColourPeer(colour_channel, config.peer_timeout_s).live_colour,
        DeclarationPeer(declaration_channel, config.peer_timeout_s).holder_of,
    )
    servicer = DisplayServicer(desk, display_log, tokens, Identifiers.from_secret(secret))
    server, port = create_server(
        lambda s: display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        max_workers=config.max_workers,
    )
    log.info("display on port %d (colour at %s)", port, config.colour_addr)

    def on_stop() -> None:
        display_log.close()
        colour_channel.close()
        declaration_channel.close()

    serve_forever(server, on_stop=on_stop)


if __name__ == "__main__":
    main()

"""`python -m services.display`: wire the display service and wait for SIGTERM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc
from healthcode.v1 import display_pb2_grpc

from services._common import changes
from services._common.config import load_secret
from services._common.identifiers import Identifiers
from services._common.logs import setup_logging
from services._common.server import create_server, serve_forever, set_serving
from services._common.telemetry import instrumented_channel, setup_tracing
from services.colour.replica import Replica
from services.display.config import DisplayConfig
from services.display.logic import DisplayDesk, LiveColour
from services.display.peers import ColourPeer, DeclarationPeer, ReplicaColour
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
    declaration_channel = instrumented_channel(config.declaration_addr)
    server: grpc.Server | None = None
    desk: DisplayDesk | None = None

    def installed(_version: int) -> None:
        if server is not None:
            set_serving(server, True)

    def registrations_changed(delta: Sequence[changes.Change]) -> None:
        if desk is not None:
            desk.forget_holders(changes.registrations(delta))

    replica: Replica | None = None
    colour_channel: grpc.Channel | None = None
    live_colour: Callable[[bytes, int], LiveColour]
    if config.colour_source == "replica":
        replica = Replica(
            config.replica,
            secret,
            keeps_rule_set=False,
            on_installed=installed,
            on_changes=registrations_changed,
        )
        live_colour = ReplicaColour(replica.engine).live_colour
    else:
        colour_channel = instrumented_channel(config.colour_addr)
        live_colour = ColourPeer(colour_channel, config.peer_timeout_s).live_colour
    desk = DisplayDesk(
        tokens,
        display_log,
        live_colour,
        DeclarationPeer(declaration_channel, config.peer_timeout_s).holder_of,
    )
    servicer = DisplayServicer(desk, display_log, tokens, Identifiers.from_secret(secret))
    server, port = create_server(
        lambda s: display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        max_in_flight=config.platform.max_in_flight,
        max_workers=config.max_workers,
        # With its own replica, NOT_SERVING until the first index version arrives.
        ready=replica is None,
    )
    if replica is not None:
        replica.start()
        log.info(
            "display on port %d, colours from its own replica following %s",
            port,
            config.replica.risk_index_addr,
        )
    else:
        log.info(
            "display on port %d, colours from the colour service at %s", port, config.colour_addr
        )

    def on_stop() -> None:
        if replica is not None:
            replica.stop()
        display_log.close()
        if colour_channel is not None:
            colour_channel.close()
        declaration_channel.close()

    serve_forever(server, on_stop=on_stop)


if __name__ == "__main__":
    main()

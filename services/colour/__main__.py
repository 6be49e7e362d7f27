"""`python -m services.colour`: wire the colour service and wait for SIGTERM."""

from __future__ import annotations

import logging

import grpc
from healthcode.v1 import colour_pb2_grpc

from services._common.config import load_secret
from services._common.identifiers import Identifiers
from services._common.logs import setup_logging
from services._common.server import create_server, serve_forever, set_serving
from services._common.telemetry import instrumented_channel, setup_tracing
from services.colour.config import ColourConfig
from services.colour.logic import ColourDesk
from services.colour.peers import RiskIndexPeer
from services.colour.replica import Replica
from services.colour.servicer import SERVICE_NAME, ColourServicer

log = logging.getLogger("services.colour")


def main() -> None:
    config = ColourConfig.from_env()
    setup_logging("colour", config.platform.log_level)
    setup_tracing("colour")
    secret = load_secret(config.platform.data_dir)
    server: grpc.Server | None = None

    def installed(_version: int) -> None:
        if server is not None:
            set_serving(server, True)

    replica = Replica(config.replica, secret, keeps_rule_set=True, on_installed=installed)
    engine = replica.engine
    risk_index_channel = instrumented_channel(config.replica.risk_index_addr)
    desk = ColourDesk(engine, publish=RiskIndexPeer(risk_index_channel).publish_rule_set)
    servicer = ColourServicer(desk, Identifiers.from_secret(secret))
    server, port = create_server(
        lambda s: colour_pb2_grpc.add_ColourServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        max_in_flight=config.platform.max_in_flight,
        # NOT_SERVING until the first index arrives: a replica without one can only answer
        # UNAVAILABLE, so load balancers and `make run` must not route to it yet
        ready=False,
    )
    replica.start()
    log.info(
        "colour on port %d, following the risk index at %s", port, config.replica.risk_index_addr
    )

    def on_stop() -> None:
        replica.stop()
        risk_index_channel.close()

    serve_forever(server, on_stop=on_stop)


if __name__ == "__main__":
    main()

"""`python -m services.colour`: wire the colour service and wait for SIGTERM.

With HEALTHCODE_COLOUR_PROCESSES = N > 1 this process supervises N workers on the one port
(`python -m services.colour --worker i --port P`, services/_common/workers.py), each with its
own replica of the verdicts following the risk index and its own snapshot.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence

import grpc
from healthcode.v1 import colour_pb2_grpc

from services._common.auth import setup_security
from services._common.config import load_secret
from services._common.identifiers import Identifiers
from services._common.mandates import MandatePeer
from services._common.metrics import start_metrics
from services._common.server import create_server, serve_forever, set_serving
from services._common.telemetry import instrumented_channel, setup_tracing
from services._common.workers import WorkerRole, run_service
from services.colour.config import ColourConfig
from services.colour.logic import ColourDesk
from services.colour.peers import RiskIndexPeer
from services.colour.replica import Replica
from services.colour.servicer import SERVICE_NAME, ColourServicer

log = logging.getLogger("services.colour")


def main(argv: Sequence[str] | None = None) -> None:
    run_service("colour", ColourConfig.from_env(), serve, argv, before_workers=_shared_files)


def _shared_files(config: ColourConfig) -> None:
    """The deployment secret, made once, before the workers read it."""
    load_secret(config.platform.data_dir)


def serve(config: ColourConfig, worker: WorkerRole | None) -> None:
    """One process serving the colour service: the only one, or worker `worker.index`."""
    setup_tracing("colour")
    metrics = start_metrics("colour", config.platform, None if worker is None else worker.index)
    setup_security("colour", config.platform.data_dir)
    secret = load_secret(config.platform.data_dir)
    server: grpc.Server | None = None

    def installed(_version: int) -> None:
        if server is not None:
            set_serving(server, True)
            if worker is not None:
                worker.ready()

    replica = Replica(config.replica, secret, keeps_rule_set=True, on_installed=installed)
    engine = replica.engine
    if metrics is not None:
        metrics.watch_replica(engine, config.replica.risk_index_addr)
    risk_index_channel = instrumented_channel(config.replica.risk_index_addr)
    # Mandates are checked as the display checks them (cached for at most a second).
    declaration_channel = instrumented_channel(config.replica.declaration_addr)
    mandates = MandatePeer(declaration_channel, timeout_s=2.0)
    desk = ColourDesk(
        engine,
        publish=RiskIndexPeer(risk_index_channel).publish_rule_set,
        mandate_of=mandates.check_mandate,
    )
    servicer = ColourServicer(desk, Identifiers.from_secret(secret))
    server, port = create_server(
        lambda s: colour_pb2_grpc.add_ColourServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        health_port=config.platform.health_port("colour"),
        max_in_flight=config.platform.max_in_flight,
        # NOT_SERVING until the first index arrives: a replica without one can only answer
        # UNAVAILABLE, so load balancers and `make run` must not route to it yet
        ready=False,
        reuse_port=worker is not None,
    )
    replica.start()
    if worker is not None:
        log.info(
            "colour worker %d (pid %d), its snapshot %s",
            worker.index,
            os.getpid(),
            config.replica.snapshot_path,
        )
    log.info(
        "colour on port %d, following the risk index at %s", port, config.replica.risk_index_addr
    )

    def on_stop() -> None:
        replica.stop()
        risk_index_channel.close()
        declaration_channel.close()

    if worker is None:
        serve_forever(server, on_stop=on_stop)
    else:
        serve_forever(
            server, on_stop=on_stop, signals=(signal.SIGTERM,), stop_when=worker.parent_gone
        )


if __name__ == "__main__":
    main()

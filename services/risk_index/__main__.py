"""`python -m services.risk_index`: wire the risk-index service and wait for SIGTERM."""

from __future__ import annotations

import grpc
from healthcode.v1 import risk_index_pb2_grpc

from services._common.auth import setup_security
from services._common.identifiers import Identifiers
from services._common.logs import setup_logging
from services._common.metrics import start_metrics
from services._common.server import create_server, serve_forever
from services._common.telemetry import setup_tracing
from services.risk_index.config import RiskIndexConfig
from services.risk_index.logic import RiskIndex
from services.risk_index.provinces import partner_exchange
from services.risk_index.repository import RiskIndexRepository
from services.risk_index.servicer import SERVICE_NAME, RiskIndexServicer


def main() -> None:
    config = RiskIndexConfig.from_env()
    setup_logging("risk_index", config.platform.log_level)
    setup_tracing("risk_index")
    metrics = start_metrics("risk_index", config.platform)  # before create_server
    setup_security("risk_index", config.platform.data_dir)
    repository = RiskIndexRepository(config.storage)
    identifiers = Identifiers.from_secret(config.secret)
    risk_index = RiskIndex(
        repository,
        identifiers,
        config.secret,
        max_batch_rows=config.max_batch_rows,
        publish_interval_s=config.publish_interval_s,
        snapshot_path=config.snapshot_path,
        snapshot_interval_s=config.snapshot_interval_s,
        shared_keys_dir=config.shared_keys_dir,
    )
    servicer = RiskIndexServicer(risk_index, identifiers)
    if metrics is not None:
        metrics.watch_risk_index(risk_index)
    # Partners' surfaces on the same process and database (issue 11, items 9 and 10).
    exchange = partner_exchange(config, risk_index, repository, identifiers)

    def add_servicers(server: grpc.Server) -> None:
        risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(servicer, server)
        exchange.add_to_server(server)

    server, _port = create_server(
        add_servicers,
        [SERVICE_NAME, *exchange.service_names],
        port=config.port,
        host=config.platform.host,
        health_port=config.platform.health_port("risk_index"),
        max_workers=config.workers,
    )

    # Watchers block in the server's threads: end them before the grace period starts.
    def on_stop() -> None:
        exchange.close()
        repository.close()

    serve_forever(server, before_stop=risk_index.close, on_stop=on_stop)


if __name__ == "__main__":
    main()

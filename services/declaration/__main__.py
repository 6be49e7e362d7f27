"""`python -m services.declaration`: wire the declaration service and wait for SIGTERM."""

from __future__ import annotations

import os

import grpc
from healthcode.v1 import (
    account_pb2_grpc,
    consent_pb2_grpc,
    declaration_pb2_grpc,
    risk_index_pb2_grpc,
)

from services._common.auth import process_security, setup_security
from services._common.exchange import ExchangeHasher, exchange_keys
from services._common.identifiers import Identifiers
from services._common.logs import setup_logging
from services._common.metrics import start_metrics
from services._common.server import create_server, serve_forever
from services._common.telemetry import instrumented_channel, setup_tracing
from services.declaration import consent
from services.declaration.cards import PrintedCards
from services.declaration.config import DeclarationConfig
from services.declaration.logic import Declarations
from services.declaration.outbox import OutboxWorker
from services.declaration.repository import DeclarationRepository
from services.declaration.servicer import SERVICE_NAME, DeclarationServicer
from services.declaration.signin import SERVICE_NAME as ACCOUNT_SERVICE_NAME
from services.declaration.signin import AccountServicer, SignInDesk, StaffDesk, sms_sender


def main() -> None:
    config = DeclarationConfig.from_env()
    setup_logging("declaration", config.platform.log_level)
    setup_tracing("declaration")
    metrics = start_metrics("declaration", config.platform)  # before create_server
    setup_security("declaration", config.platform.data_dir)
    repository = DeclarationRepository(config.storage)
    identifiers = Identifiers.from_secret(config.secret)
    channel = instrumented_channel(config.risk_index_addr)
    outbox = OutboxWorker(
        repository,
        risk_index_pb2_grpc.RiskIndexServiceStub(channel),
        deadline_s=config.outbox_deadline_s,
        bulk_deadline_s=config.outbox_bulk_deadline_s,
        retry_max_s=config.outbox_retry_max_s,
    )
    # Other provinces (R6): each new person's exchange hashes are computed here, where the ID
    # number passes (Register, ImportPeople), and reach the risk index with the registration
    # through the outbox. The keys: HEALTHCODE_PROVINCE_KEYS, or made for a development data
    # directory exactly as the risk index makes them (services/_common/exchange.py).
    exchange = ExchangeHasher(exchange_keys(config.platform.data_dir, os.environ))
    declarations = Declarations(repository, identifiers, on_outbox=outbox.wake, exchange=exchange)
    # Printed cards (R3): signed with the card key ring, made on first start (docs/cards.md).
    cards = PrintedCards.from_env(repository, config.platform.data_dir)
    servicer = DeclarationServicer(declarations, identifiers, cards)
    # Signing in: this service knows people and their phones (AccountService).
    security = process_security()
    issuer = security.issuer() if security is not None else None
    accounts = AccountServicer(
        SignInDesk(repository, identifiers, issuer, sms_sender(config.sms)),
        StaffDesk(repository, issuer),
    )

    # Consent for partner look-ups (issue 11, item 11): services/declaration/consent.py.
    consents = consent.ConsentServicer(consent.Consents(repository), identifiers)

    def add_servicers(server: grpc.Server) -> None:
        declaration_pb2_grpc.add_DeclarationServiceServicer_to_server(servicer, server)
        account_pb2_grpc.add_AccountServiceServicer_to_server(accounts, server)
        consent_pb2_grpc.add_ConsentServiceServicer_to_server(consents, server)

    server, _port = create_server(
        add_servicers,
        [SERVICE_NAME, ACCOUNT_SERVICE_NAME, consent.SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        health_port=config.platform.health_port("declaration"),
        max_in_flight=config.platform.max_in_flight,
    )
    if metrics is not None:
        metrics.watch_outbox(repository)
    # Messages left by an earlier run go out now, whether or not anyone declares.
    outbox.start()

    def on_stop() -> None:
        outbox.stop()
        channel.close()
        repository.close()

    serve_forever(server, on_stop=on_stop)


if __name__ == "__main__":
    main()

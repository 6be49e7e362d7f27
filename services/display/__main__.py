"""`python -m services.display`: wire the display service and wait for SIGTERM.

With HEALTHCODE_DISPLAY_PROCESSES = N > 1 this process creates what the workers share (the
signing key, the shared claims file) and then supervises N workers on the one port
(`python -m services.display --worker i --port P`, services/_common/workers.py).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence

import grpc
from healthcode.v1 import display_pb2_grpc, partners_pb2_grpc

from services._common import changes
from services._common.auth import setup_security
from services._common.config import load_secret
from services._common.identifiers import Identifiers
from services._common.metrics import start_metrics
from services._common.server import SHEDDERS, create_server, serve_forever, set_serving
from services._common.telemetry import instrumented_channel, setup_tracing
from services._common.workers import WorkerRole, run_service
from services.colour.replica import Replica
from services.display.cards import CardPeer, PrintedCards
from services.display.config import DisplayConfig
from services.display.counters import CounterSource, SummedCounters
from services.display.ledger import create_ledger
from services.display.logic import DisplayDesk, LiveColour
from services.display.partners import SERVICE_NAME as PARTNER_SERVICE_NAME
from services.display.partners import CardHolders, ConsentPeer, PartnerDesk, PartnerServicer
from services.display.peers import ColourPeer, DeclarationPeer, ReplicaColour
from services.display.servicer import SERVICE_NAME, DisplayServicer
from services.display.store import DisplayLog
from services.display.tokens import CodeTokens

log = logging.getLogger("services.display")


def main(argv: Sequence[str] | None = None) -> None:
    run_service("display", DisplayConfig.from_env(), serve, argv, before_workers=_shared_files)


def _shared_files(config: DisplayConfig) -> None:
    """Made once, before any worker starts: two workers starting together must not each create
    a first signing key (or race to create the shared file's tables)."""
    config.ensure_signing_key()
    load_secret(config.platform.data_dir)
    create_ledger(config.shared_file())


def serve(config: DisplayConfig, worker: WorkerRole | None) -> None:
    """One process serving the display service: the only one, or worker `worker.index`."""
    setup_tracing("display")
    metrics = start_metrics("display", config.platform, None if worker is None else worker.index)
    setup_security("display", config.platform.data_dir)
    secret = load_secret(config.platform.data_dir)
    tokens = CodeTokens(config.key_ring(), config.token_ttl_ms)
    display_log = DisplayLog(
        config.log_place,
        shared=config.shared_path,
        retention_ms=config.retention_ms,
        purge_interval_s=config.purge_interval_s,
        purges_shared=config.purges_shared,
    )
    counters: CounterSource = display_log
    summed: SummedCounters | None = None
    if config.shared_path is not None:
        # WatchCounters at any worker reports the sum over every worker's log.
        summed = SummedCounters(display_log, config.db_path, config.shared_path)
        counters = summed
    declaration_channel = instrumented_channel(config.declaration_addr)
    server: grpc.Server | None = None

    def shedding() -> bool:
        # Under overload a Show's reasons are shed before its colour (services/_common/shedding.py).
        shedder = None if server is None else SHEDDERS.get(id(server))
        return shedder is not None and shedder.busy()

    desk: DisplayDesk | None = None

    def installed(_version: int) -> None:
        if server is not None:
            set_serving(server, True)
            if worker is not None:
                worker.ready()

    # Transit cards' holders, from the replica's matcher (R11).
    card_holders = CardHolders(lambda: replica.engine.index if replica is not None else None)

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
            # Shows and scans use the full rules; other provinces ask the colour service.
            shared_verdicts=False,
            on_installed=installed,
            on_changes=registrations_changed,
        )
        live_colour = ReplicaColour(replica.engine, busy=shedding).live_colour
    else:
        colour_channel = instrumented_channel(config.colour_addr)
        live_colour = ColourPeer(colour_channel, config.peer_timeout_s).live_colour
    if metrics is not None:
        metrics.watch_display_log(display_log)
        if replica is not None:
            metrics.watch_replica(replica.engine, config.replica.risk_index_addr)
    declaration = DeclarationPeer(declaration_channel, config.peer_timeout_s)
    desk = DisplayDesk(
        tokens,
        display_log,
        live_colour,
        declaration.holder_of,
        # A proxy's Show asks the declaration service for their mandate (cached <= 1 s).
        mandate_of=declaration.check_mandate,
        # A printed card's scan asks the declaration service whether it is live (R3).
        cards=PrintedCards.over(CardPeer(declaration_channel, config.peer_timeout_s)),
    )
    identifiers = Identifiers.from_secret(secret)
    # Each WatchCounters stream holds a thread: dashboards get an eighth of them at most.
    servicer = DisplayServicer(
        desk, counters, tokens, identifiers, max_watchers=max(1, config.max_workers // 8)
    )
    # Bus scanners and hospital triage (R11, R13), beside DisplayService; a look-up by name asks
    # the declaration service for the holder's consent first, never cached (issue 11, item 11).
    consent = ConsentPeer(declaration_channel, config.peer_timeout_s)
    partners = PartnerServicer(PartnerDesk(desk, card_holders, identifiers, consent), identifiers)

    def add_servicers(s: grpc.Server) -> None:
        display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, s)
        partners_pb2_grpc.add_PartnerServiceServicer_to_server(partners, s)

    server, port = create_server(
        add_servicers,
        [SERVICE_NAME, PARTNER_SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        health_port=config.platform.health_port("display"),
        max_in_flight=config.platform.max_in_flight,
        max_workers=config.max_workers,
        # A call that waited too long for a thread is refused with RetryInfo (config.py).
        max_queue_wait_s=config.max_queue_wait_s,
        # With its own replica, NOT_SERVING until the first index version arrives.
        ready=replica is None,
        reuse_port=worker is not None,
    )
    if worker is not None and replica is None:
        worker.ready()
    if worker is not None:
        log.info(
            "display worker %d (pid %d), its log %s", worker.index, os.getpid(), config.db_path
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
        if summed is not None:
            summed.close()
        display_log.close()
        if colour_channel is not None:
            colour_channel.close()
        declaration_channel.close()

    if worker is None:
        serve_forever(server, on_stop=on_stop)
    else:
        serve_forever(
            server, on_stop=on_stop, signals=(signal.SIGTERM,), stop_when=worker.parent_gone
        )


if __name__ == "__main__":
    main()

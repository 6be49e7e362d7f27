"""`python -m services.colour`: wire the colour service and wait for SIGTERM."""

from __future__ import annotations

import logging
import threading

from healthcode.v1 import colour_pb2_grpc

from services._common.config import load_secret
from services._common.identifiers import Identifiers
from services._common.logs import setup_logging
from services._common.server import create_server, serve_forever, set_serving
from services._common.telemetry import instrumented_channel, setup_tracing
from services.colour.config import ColourConfig
from services.colour.engine import ColourEngine, run_clock
from services.colour.follower import IndexFollower
from services.colour.logic import ColourDesk
from services.colour.peers import DeclarationPeer
from services.colour.rulestore import compile_rules
from services.colour.servicer import SERVICE_NAME, ColourServicer
from services.rules import RuleSetError, load_rule_set

log = logging.getLogger("services.colour")


def main() -> None:
    config = ColourConfig.from_env()
    setup_logging("colour", config.platform.log_level)
    setup_tracing("colour")
    secret = load_secret(config.platform.data_dir)
    declaration_channel = instrumented_channel(config.declaration_addr)
    engine = ColourEngine(
        secret,
        compile_rules(load_rule_set(config.initial_rule_set)),
        people=DeclarationPeer(declaration_channel).person_card,
        rule_set_file=config.active_rule_set_file,
    )
    if config.active_rule_set_file.is_file():
        # The rule set an admin activated before the restart (or one waiting for its time).
        try:
            engine.set_rule_set(
                config.active_rule_set_file.read_text(encoding="utf-8"),
                str(config.active_rule_set_file),
                dry_run=False,
            )
        except (RuleSetError, ValueError) as exc:
            log.error("kept rule set unusable, starting with the initial one: %s", exc)
    servicer = ColourServicer(ColourDesk(engine), Identifiers.from_secret(secret))
    server, port = create_server(
        lambda s: colour_pb2_grpc.add_ColourServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        port=config.port,
        host=config.platform.host,
        # NOT_SERVING until the first index arrives: a replica without one can only answer
        # UNAVAILABLE, so load balancers and `make run` must not route to it yet
        ready=False,
    )
    follower = IndexFollower(
        engine,
        config.risk_index_addr,
        secret,
        initial_backoff_s=config.reconnect_initial_s,
        max_backoff_s=config.reconnect_max_s,
        freshness_interval_s=config.freshness_interval_s,
        on_installed=lambda _version: set_serving(server, True),
        snapshot_path=config.snapshot_path,
        snapshot_interval_s=config.snapshot_interval_s,
    )
    clock_stop = threading.Event()
    clock = threading.Thread(
        target=run_clock, args=(engine, clock_stop), name="verdict-clock", daemon=True
    )
    follower.start()
    clock.start()
    log.info("colour on port %d, following the risk index at %s", port, config.risk_index_addr)

    def on_stop() -> None:
        clock_stop.set()
        follower.stop()
        declaration_channel.close()

    serve_forever(server, on_stop=on_stop)


if __name__ == "__main__":
    main()

"""One replica of the verdicts, wired: the engine, the follower that keeps it on the risk
index's latest version, and the clock that moves its hour windows.

The colour service runs one; so does every display process (one hop per display: a Show takes
its colour from the replica in its own process, issue 9). Both are made here, from the same
settings, so both give the same colour at the same index version and rule set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from services._common import changes
from services._common.telemetry import instrumented_channel
from services.colour.config import ReplicaConfig
from services.colour.engine import ColourEngine, run_clock
from services.colour.follower import IndexFollower
from services.colour.peers import DeclarationPeer
from services.colour.rulestore import compile_rules
from services.rules import RuleSetError, load_rule_set

log = logging.getLogger(__name__)


class Replica:
    """A started replica: `engine` answers; `stop()` ends its threads and keeps its snapshot."""

    def __init__(
        self,
        config: ReplicaConfig,
        secret: bytes,
        *,
        keeps_rule_set: bool,
        shared_verdicts: bool = True,
        on_installed: Callable[[int], None] | None = None,
        on_changes: Callable[[Sequence[changes.Change]], None] | None = None,
    ) -> None:
        """`keeps_rule_set`: this replica writes the rule set activated through it to the kept
        file (the colour service); a display's replica only reads it. `shared_verdicts`: it
        also keeps the verdicts other provinces are answered from (the colour service; a
        display never answers them, so it saves the second evaluation of every version)."""
        self._declaration_channel = instrumented_channel(config.declaration_addr)
        self.engine = ColourEngine(
            secret,
            compile_rules(load_rule_set(config.initial_rule_set)),
            people=DeclarationPeer(self._declaration_channel).person_card,
            rule_set_file=config.active_rule_set_file if keeps_rule_set else None,
            shared_verdicts=shared_verdicts,
        )
        kept = config.active_rule_set_file
        if kept.is_file():
            # The rule set an admin activated before the restart (or one waiting for its time).
            try:
                self.engine.set_rule_set(kept.read_text(encoding="utf-8"), str(kept), dry_run=False)
            except (RuleSetError, ValueError) as exc:
                log.error("kept rule set unusable, starting with the initial one: %s", exc)
        self.follower = IndexFollower(
            self.engine,
            config.risk_index_addr,
            secret,
            initial_backoff_s=config.reconnect_initial_s,
            max_backoff_s=config.reconnect_max_s,
            freshness_interval_s=config.freshness_interval_s,
            on_installed=on_installed,
            on_changes=on_changes,
            snapshot_path=config.snapshot_path,
            snapshot_interval_s=config.snapshot_interval_s,
            shared_keys_dir=config.shared_keys_dir,
        )
        self._clock_stop = threading.Event()
        self._clock = threading.Thread(
            target=run_clock,
            args=(self.engine, self._clock_stop),
            name="verdict-clock",
            daemon=True,
        )

    def start(self) -> None:
        self.follower.start()
        self._clock.start()

    def stop(self) -> None:
        self._clock_stop.set()
        self.follower.stop()
        self._declaration_channel.close()

"""Freed heap pages go back to the system after bulk changes only, at most once a while."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from services._common import changes, days, memory
from services._common.identifiers import Identifiers
from services._common.memory import BULK_BYTES, FreedMemory
from services.colour.engine import ColourEngine
from services.colour.rulestore import compile_rules
from services.risk_index.logic import RiskIndex
from services.risk_index.repository import RiskIndexRepository
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, Clock


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_a_bulk_change_trims_and_at_most_once_an_interval() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    clock = Monotonic()
    freed = FreedMemory(trim=trim, clock=clock, min_interval_s=10)
    assert not freed.after_change(BULK_BYTES - 1)  # a registration or a feed batch: not bulk
    assert freed.after_change(BULK_BYTES)
    clock.now += 9.9
    assert not freed.after_change(5 * BULK_BYTES)  # too soon after the last
    clock.now += 0.2
    assert freed.after_change(BULK_BYTES)
    assert calls == [0, 0] and freed.trims == 2


def test_without_malloc_trim_nothing_is_done() -> None:
    assert not FreedMemory(trim=None).after_change(10 * BULK_BYTES)


def test_this_machine_s_c_library_trims() -> None:
    # The tests run on Debian (glibc): the real malloc_trim is found and can be called.
    assert memory._MALLOC_TRIM is not None
    assert FreedMemory().after_change(BULK_BYTES)


def test_a_replica_trims_after_a_whole_index_and_after_an_import_s_delta(tmp_path: Path) -> None:
    now = dt.datetime(2024, 5, 10, 10, 0, tzinfo=days.SHANGHAI)
    ri = RiskIndex(
        RiskIndexRepository(tmp_path / "ri.sqlite3"),
        Identifiers.from_secret(SECRET),
        SECRET,
        clock=lambda: now,
    )
    try:
        engine = ColourEngine(
            SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)), now=Clock(now)
        )
        engine.install_index(ri.current.index)  # every source, no one yet
        assert engine._freed.trims == 1  # a whole index replaced the one held
        engine.apply_changes([changes.Persons(os.urandom(16 * 10))], 1)
        assert engine._freed.trims == 1  # ten registrations: nothing to hand back
        # An import's chunk, 70,000 people (over 1 MiB of keys), once the interval has passed.
        engine._freed._last = None
        engine.apply_changes([changes.Persons(os.urandom(16 * 70_000))], 2)
        assert engine._freed.trims == 2 and engine.index_version == 2
    finally:
        ri.close()

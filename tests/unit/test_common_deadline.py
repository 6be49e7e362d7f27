"""A wait inside a handler ends with the caller's deadline (services/_common/deadline.py): the
fuzzing found `min_index_version` waits holding a server thread 5 s after the caller gave up."""

from __future__ import annotations

import pytest

from services._common.deadline import bounded, reset_deadline, set_deadline
from services._common.errors import Unavailable
from services._common.status import grpc_errors
from services.colour.engine import ColourEngine
from services.colour.rulestore import compile_rules
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET


def test_bounded_takes_the_sooner_of_the_wait_and_the_deadline() -> None:
    assert bounded(5.0) == 5.0  # outside a call: the wait stands
    token = set_deadline(0.25)
    try:
        assert 0.0 < bounded(5.0) <= 0.25
        assert bounded(0.1) == 0.1
    finally:
        reset_deadline(token)
    token = set_deadline(-1.0)  # already past
    try:
        assert bounded(5.0) == 0.0
    finally:
        reset_deadline(token)
    token = set_deadline(None)  # a call without a deadline
    try:
        assert bounded(5.0) == 5.0
    finally:
        reset_deadline(token)


def test_a_version_wait_ends_with_the_deadline_not_after() -> None:
    engine = ColourEngine(SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)))
    token = set_deadline(0.0)
    try:
        # An hour's wait for a version that will not come: bounded by the deadline, it gives up
        # at once (unbounded, this test would hang until pytest-timeout fails it).
        with pytest.raises(Unavailable):
            engine.wait_for_version(10**9, 3600.0)
    finally:
        reset_deadline(token)


def test_every_handler_runs_under_its_calls_deadline() -> None:
    class Context:
        def time_remaining(self) -> float:
            return 0.3

    class Servicer:
        @grpc_errors
        def Call(self, request: object, context: object) -> float:
            return bounded(100.0)

    assert 0.0 < Servicer().Call(None, Context()) <= 0.3
    assert bounded(100.0) == 100.0  # and only during the call

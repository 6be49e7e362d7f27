"""Rule sets published through the risk index (issue 12, part 2): one rule set for every
replica, carried by an index version, kept across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from services._common import changes
from services._common.actors import Actor, Role
from services._common.errors import InvalidArgument, PermissionDenied
from services.risk_index.logic import Delta
from services.rules import DEFAULT_RULE_SET_PATH
from tests.unit.test_risk_index_versions import open_index

COLOUR = Actor(Role.SERVICE, "colour")
POLICY = DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8").replace(
    'version = "', 'version = "published-', 1
)


def test_a_published_rule_set_travels_in_the_next_versions_delta(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    try:
        before = ri.current.version
        version, rule_set_version = ri.publish_rule_set(COLOUR, POLICY, "policy.toml")
        assert version == before + 1 and rule_set_version.startswith("published-")
        assert ri.accepted_version == version and ri.flush() == version
        delta = ri._publication.delta_since(before)
        assert isinstance(delta, Delta)
        assert delta.changes == (changes.RuleSet(POLICY, "policy.toml"),)
        # ... and on the wire, unchanged.
        assert changes.from_proto(delta.wire) == [changes.RuleSet(POLICY, "policy.toml")]
        assert ri.rule_set == changes.RuleSet(POLICY, "policy.toml")
        # The same text again is not a new change.
        assert ri.publish_rule_set(COLOUR, POLICY, "again.toml")[0] == version
        assert ri.accepted_version == version
    finally:
        ri.close()


def test_the_published_rule_set_survives_a_restart(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    try:
        assert ri.rule_set is None  # never published: replicas keep their configured one
        ri.publish_rule_set(COLOUR, POLICY, "policy.toml")
        ri.flush()
    finally:
        ri.close()
    again = open_index(tmp_path)
    try:
        assert again.rule_set == changes.RuleSet(POLICY, "policy.toml")
    finally:
        again.close()


def test_a_malformed_or_unauthorised_rule_set_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    ri = open_index(tmp_path)
    try:
        before = ri.accepted_version
        with pytest.raises(InvalidArgument) as bad:
            ri.publish_rule_set(COLOUR, 'version = "x"\n[[rules]]\nid = 3\n', "broken.toml")
        assert any(field.startswith("text") for field, _ in bad.value.violations)
        with pytest.raises(InvalidArgument):
            ri.publish_rule_set(COLOUR, "   ", "")
        with pytest.raises(PermissionDenied):
            ri.publish_rule_set(Actor(Role.FEED, "lab"), POLICY, "policy.toml")
        assert ri.accepted_version == before and ri.rule_set is None
    finally:
        ri.close()

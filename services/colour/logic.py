"""The colour service's domain: who may ask what of a replica's verdicts (R5, R6, R15, R16).

`ColourEngine` (engine.py) answers; this decides who may ask. The servicer converts protos and
calls these methods; nothing else in the service checks a role.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from services._common.actors import Actor, Role, no_mandate
from services._common.errors import InvalidArgument
from services._common.identifiers import Identified
from services.colour.engine import ColourEngine
from services.colour.model import (
    Assessment,
    Explanation,
    ReplicaStatus,
    RuleSetOutcome,
    WhatIfOutcome,
)

# Who may call what. Roles are asserted by the caller until credentials carry them (issue 10).
# A colour: the holder, their proxies, staff, partners and platform services.
EVALUATE_ROLES = frozenset(Role)
# The explanation names sources, days and phones: the person (or whoever acts for them) and
# staff. Partners (hospitals, exams, buses) and feeds need the colour, not the evidence.
EXPLAIN_ROLES = frozenset(
    {Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER, Role.SUPPORT, Role.ADMIN, Role.SERVICE}
)
# Policy: only the administrator changes or tries rule sets.
RULE_SET_ROLES = frozenset({Role.ADMIN})
# How long a reader waits for the index version it asked for (read your writes). Versions
# are published about once a second; a replica further behind than this is unhealthy.
VERSION_WAIT_S = 5.0


class ColourDesk:
    """The colour service's answers, each behind its role check."""

    def __init__(
        self,
        engine: ColourEngine,
        publish: Callable[[str, str], int] | None = None,
        mandate_of: Callable[[Actor, bytes], object | None] | None = None,
    ) -> None:
        """`publish(text, filename)` sends an activated rule set to every replica through the
        risk index and names the version that carries it; without it (a replica on its own,
        in tests) activation is local. `mandate_of(proxy, person key)` confirms a proxy's
        active mandate with the declaration service; without it a proxy sees no explanation."""
        self.engine = engine
        self._publish = publish
        self._mandate_of = mandate_of

    def evaluator(self, actor: Actor) -> Callable[..., Assessment]:
        """Check the actor once, then answer many: a 50,000-candidate exam list (R12) names
        its actor on the first entry only. Call as `evaluator(person_key, shared_only=...)`."""
        actor.require(EVALUATE_ROLES, "evaluate a colour")
        return self.engine.evaluate

    def evaluate(
        self, actor: Actor, person_key: bytes, *, shared_only: bool, min_version: int = 0
    ) -> Assessment:
        evaluate = self.evaluator(actor)
        self.engine.wait_for_version(min_version, VERSION_WAIT_S)
        return evaluate(person_key, shared_only=shared_only)

    def explain(
        self, actor: Actor, person: Identified, *, shared_only: bool, min_version: int = 0
    ) -> Explanation:
        actor.acts_for(person.key, EXPLAIN_ROLES, "see an explanation")
        # The reasons are the person's: a proxy sees them only under an active mandate.
        if actor.is_proxy and (
            self._mandate_of is None or self._mandate_of(actor, person.key) is None
        ):
            raise no_mandate(actor, "see an explanation")
        self.engine.wait_for_version(min_version, VERSION_WAIT_S)
        return self.engine.explain(
            person.key, shared_only=shared_only, masked_id_number=person.masked
        )

    def set_rule_set(
        self, actor: Actor, text: str, filename: str, *, dry_run: bool
    ) -> RuleSetOutcome:
        actor.require(RULE_SET_ROLES, "change the rule set")
        if not text.strip():
            raise InvalidArgument([("text", "the rule-set text (TOML) is required")])
        filename = filename.strip() or "rule_set.toml"
        if self._publish is None:
            return self.engine.set_rule_set(text, filename, dry_run=dry_run)
        # Validate and try it here (the counts before and after), then publish it: every
        # replica, this one included, runs it from the version that carries it.
        tried = self.engine.set_rule_set(text, filename, dry_run=True)
        if dry_run:
            return tried
        version = self._publish(text, filename)
        self.engine.wait_for_version(version, VERSION_WAIT_S)
        return replace(tried, activated=self.engine.rules.text == text)

    def what_if(
        self, actor: Actor, text: str, filename: str, *, shared_only: bool, district_source: str
    ) -> WhatIfOutcome:
        actor.require(RULE_SET_ROLES, "try a draft rule set")
        if not text.strip():
            raise InvalidArgument([("text", "the draft rule-set text (TOML) is required")])
        return self.engine.what_if(
            text,
            filename.strip() or "draft.toml",
            shared_only=shared_only,
            district_source=district_source,
        )

    def status(self) -> ReplicaStatus:
        # Counts and versions only: nothing personal, so any caller may read it.
        return self.engine.status()

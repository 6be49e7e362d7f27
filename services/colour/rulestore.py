"""The rule sets a replica knows: the active one, one waiting for its `valid_from`, every set it
has evaluated with (by version, so a reader finds the texts of the plan its verdicts came
from), and the file that brings the acknowledged set back after a restart.

Not thread-safe on its own: the engine changes it under its write lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import healthcode_matcher as hm

from services._common.errors import InvalidArgument
from services.rules import RuleSet, RuleSetError, parse_rule_set

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """A rule set with its two compiled plans (all rules, shared rules only)."""

    rule_set: RuleSet
    plan: hm.Plan
    shared: RuleSet
    shared_plan: hm.Plan
    text: str


def parse_rules(text: str, filename: str) -> RuleSet:
    """Parse rule-set TOML; InvalidArgument with every violation (file, rule id, field)."""
    try:
        return parse_rule_set(text, filename)
    except RuleSetError as exc:
        raise InvalidArgument(
            [(f"text: {path}" if path else "text", msg) for path, msg in exc.violations]
        ) from None


def compile_rules(rule_set: RuleSet, text: str = "") -> CompiledRules:
    """Compile both plans; InvalidArgument if the matcher refuses one (it names the rule)."""
    shared = rule_set.shared_only()
    try:
        plan = hm.Plan(rule_set.plan_rules(), rule_set.version)
        shared_plan = hm.Plan(shared.plan_rules(), shared.version)
    except hm.PlanError as exc:
        raise InvalidArgument([("text", str(exc))]) from None
    return CompiledRules(rule_set, plan, shared, shared_plan, text)


class RuleSetStore:
    """The active rule set, a pending one, and every set known by version."""

    def __init__(self, active: CompiledRules, file: Path | None = None) -> None:
        self.active = active
        self.pending: CompiledRules | None = None
        self._file = file
        self._by_version: dict[str, RuleSet] = {}
        self.remember(active)

    def by_version(self, version: str) -> RuleSet:
        """The rule set a plan version names (a plan's version is its rule set's)."""
        return self._by_version[version]

    def remember(self, rules: CompiledRules) -> None:
        self._by_version[rules.rule_set.version] = rules.rule_set
        self._by_version[rules.shared.version] = rules.shared

    def check_version(self, rule_set: RuleSet) -> None:
        """InvalidArgument if the version already names a different rule set: a version names
        one text, so a reader can always find the rules its verdicts came from."""
        known = self._by_version.get(rule_set.version)
        if known is not None and replace(known, filename="") != replace(rule_set, filename=""):
            why = (
                f"version {rule_set.version!r} already names a different rule set; "
                "give the changed rule set a new version"
            )
            raise InvalidArgument([("text: version", why)])

    def accept(self, compiled: CompiledRules, now: dt.datetime) -> bool:
        """Keep `compiled` on disk, then make it active (True) or, if its `valid_from` is still
        ahead, pending (False)."""
        self._persist(compiled.text)
        if not compiled.rule_set.is_active(now):
            self.pending = compiled
            log.info(
                "rule set %s accepted, valid from %s",
                compiled.rule_set.version,
                compiled.rule_set.valid_from,
            )
            return False
        self.pending = None
        self.active = compiled
        self.remember(compiled)
        return True

    def activate_due(self, now: dt.datetime) -> bool:
        """Activate the pending rule set if its time has come; True if it was."""
        pending = self.pending
        if pending is None or not pending.rule_set.is_active(now):
            return False
        self.pending = None
        self.active = pending
        self.remember(pending)
        log.info("rule set %s now valid: activated", pending.rule_set.version)
        return True

    def _persist(self, text: str) -> None:
        # A restarted replica comes back with the rule set it acknowledged, not the default.
        if self._file is None:
            return
        path = self._file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

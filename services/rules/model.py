"""The rule set as the rest of the platform sees it: frozen, validated, ready to compile.

Built only by `services.rules.parse_rule_set` (which validates); nothing here checks input again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

Colour = Literal["yellow", "red"]
Match = Literal["any", "all"]
Scope = Literal["local", "shared"]
WindowUnit = Literal["days", "hours"]

# The Rust plan keeps one bit per rule in a u64 mask.
MAX_RULES = 64
# The seed: "every application and every display runs up to 42 cross-checks" (碰撞和比对).
MAX_CHECKS_PER_DISPLAY = 42


@dataclass(frozen=True, slots=True)
class Window:
    """How far back a check looks: as written in the rule file, in days or in hours."""

    amount: int
    unit: WindowUnit

    @property
    def days(self) -> int:
        """Whole days, as the matcher applies the window to a daily source (rows bucketed by
        Asia/Shanghai date).

        A window of N hours on a daily source becomes ceil(N / 24) days ending today, so on day
        T it covers the days [T - d + 1, T]: between (d - 1) * 24 and d * 24 hours back
        depending on the time of day. On an hourly source the window is exact (`hours`).
        """
        if self.unit == "days":
            return self.amount
        return math.ceil(self.amount / 24)

    @property
    def hours(self) -> int:
        """The window in hours, exactly as written (N days are N * 24 hours)."""
        return self.amount if self.unit == "hours" else self.amount * 24

    def __str__(self) -> str:
        return f"{self.amount} {self.unit}"


@dataclass(frozen=True, slots=True)
class Check:
    """One condition of a rule tested against one source (one 碰撞比对).

    `window` is the effective window (the check's own, else its rule's); None for an undated
    source, whose rows are current list entries. `hourly` is the source's trait (its rows are
    bucketed by hour): there a window is exact to the hour, elsewhere it is whole days.
    """

    source: str
    window: Window | None = None
    min_level: int | None = None  # county sources only: 1 low, 2 medium, 3 high
    hourly: bool = False

    @property
    def days(self) -> int | None:
        """The window in whole days (hours rounded up): what a daily source is checked over,
        and a day count that an hourly window fits in."""
        return None if self.window is None else self.window.days

    @property
    def hours(self) -> int | None:
        """On an hourly source, the exact window in hours; None on a daily source or without a
        window."""
        return None if self.window is None or not self.hourly else self.window.hours

    def key(self) -> tuple[str, int | None, int | None]:
        """What the matcher evaluates: equal keys are one check on a display, whichever rule
        uses them. The window is in hours on an hourly source (48 hours and 2 days are the same
        check, 47 hours is another) and in whole days elsewhere (there 47 hours, 48 hours and 2
        days are all the same check)."""
        return (self.source, self.hours if self.hourly else self.days, self.min_level)

    def plan_dict(self) -> dict[str, Any]:
        """The check as `healthcode_matcher.Plan` takes it: {"hours": N} for an hour window on
        an hourly source (exact), else {"days": N} (an hour window on a daily source rounds up
        to whole days; days on an hourly source are N * 24 hours to the matcher)."""
        d: dict[str, Any] = {"source": self.source}
        if self.window is not None:
            if self.hourly and self.window.unit == "hours":
                d["hours"] = self.window.amount
            else:
                d["days"] = self.window.days
        if self.min_level is not None:
            d["min_level"] = self.min_level
        return d


@dataclass(frozen=True, slots=True)
class Rule:
    """One colour rule (赋码规则): when it fires, why, how far it reaches, and what clears it."""

    id: str
    colour: Colour
    match: Match
    scope: Scope
    text_zh: str
    text_en: str
    what_clears_zh: str
    what_clears_en: str
    checks: tuple[Check, ...]
    clears: tuple[Check, ...] = ()
    window: Window | None = None  # the rule's window as written; checks hold the effective one

    @property
    def shared(self) -> bool:
        return self.scope == "shared"

    def sources(self) -> frozenset[str]:
        return frozenset(c.source for c in (*self.checks, *self.clears))

    def plan_dict(self) -> dict[str, Any]:
        """The rule as `healthcode_matcher.Plan` takes it."""
        return {
            "id": self.id,
            "colour": self.colour,
            "match": self.match,
            "checks": [c.plan_dict() for c in self.checks],
            "clears": [c.plan_dict() for c in self.clears],
        }


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A versioned rule set. A set with a future `valid_from` waits; the previous one stays."""

    version: str
    rules: tuple[Rule, ...]
    valid_from: datetime | None = None  # timezone-aware; None: valid as soon as loaded
    filename: str = "<text>"
    title: str = ""

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(f"{self.filename}: no rule {rule_id!r} in rule set {self.version!r}")

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def plan_rules(self) -> list[dict[str, Any]]:
        """Rule dicts for `healthcode_matcher.Plan(rules, version)`, in file order (the order
        the matcher reports fired rules in)."""
        return [r.plan_dict() for r in self.rules]

    def shared_only(self) -> RuleSet:
        """The rules other provinces may see (R6): the status exported to the national platform
        is computed from these alone, so a Tianjin-only red never reaches a traveller's code
        elsewhere (the seed's Dalian case). The version gains "+shared" because its plan differs
        from the full set's and caches keyed by version must not mix them."""
        return replace(
            self,
            version=f"{self.version}+shared",
            rules=tuple(r for r in self.rules if r.shared),
        )

    def checks(self) -> tuple[Check, ...]:
        """The distinct checks a display runs: one per (source, days, min_level), raising or
        clearing, however many rules share it."""
        return tuple(_distinct(c for r in self.rules for c in (*r.checks, *r.clears)))

    @property
    def check_count(self) -> int:
        return len(self.checks())

    def sources(self) -> frozenset[str]:
        return frozenset(s for r in self.rules for s in r.sources())

    def is_active(self, now: datetime) -> bool:
        return self.valid_from is None or self.valid_from <= now


def _distinct(checks: Iterable[Check]) -> list[Check]:
    seen: dict[tuple[str, int | None, int | None], Check] = {}
    for c in checks:
        seen.setdefault(c.key(), c)
    return list(seen.values())


def select_active(rule_sets: Iterable[RuleSet], now: datetime) -> RuleSet | None:
    """The set in force at `now`: the latest `valid_from` not after `now` (a set without one
    counts as the oldest). A future-dated set thus takes over by itself at its time and the
    previous one stays until then. Among equal times the later-listed set wins."""
    best: RuleSet | None = None
    for rs in rule_sets:
        if not rs.is_active(now):
            continue
        if best is None or _start(rs) >= _start(best):
            best = rs
    return best


def _start(rs: RuleSet) -> float:
    return float("-inf") if rs.valid_from is None else rs.valid_from.timestamp()

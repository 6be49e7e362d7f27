"""How fresh each feed is, and which feeds a verdict rests on.

The follower tells a replica when each source's feed was last updated; staleness is judged at
answer time against the catalogue's `max_staleness_hours`, so a feed that stalls turns stale by
the clock even if no new index version ever arrives. A verdict depends on every risk-raising
source of the plan it was evaluated with (any of them could add risk: a green that rests on a
stalled feed is flagged) and on the clearing sources of the rules that fired (a stalled lab feed
can hold a person yellow). Until the risk index has told the replica anything, every source
counts as stale: not knowing is not fresh.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence

from services._common.sources import SOURCES
from services.colour.model import Freshness
from services.rules import RuleSet


def depends_on(rule_set: RuleSet, fired: Iterable[str]) -> frozenset[str]:
    """The sources a verdict depends on: every risk-raising source of the rule set (any of them
    could add risk, so even a green depends on them) and the clearing sources of the rules that
    fired and were not cleared (a stalled clearing feed can keep a person coloured)."""
    out = {c.source for r in rule_set.rules for c in r.checks}
    for rule_id in fired:
        out.update(c.source for c in rule_set.rule(rule_id).clears)
    return frozenset(out)


class FeedFreshness:
    """The last update of every feed, judged by the clock. Readers never lock: the cache is one
    tuple, swapped whole."""

    def __init__(self, now: Callable[[], dt.datetime]) -> None:
        self._now = now
        # Source -> when its latest batch was accepted (None: never). None until the risk index
        # has answered once: then every source counts as stale.
        self._feed_times: Mapping[str, dt.datetime | None] | None = None
        # The whole catalogue's freshness, recomputed at most once a second or on new feed
        # times: verdicts are the display hot path. Keyed by (second, feed-times generation).
        self._generation = 0
        self._cache: tuple[tuple[int, int], Mapping[str, Freshness]] | None = None
        # Raising sources by rule-set version (every verdict of that set depends on them).
        self._raising: dict[str, frozenset[str]] = {}
        # The stale feeds of a verdict that fired nothing, by rule-set version, for the
        # catalogue they were computed from (a new one each second or on new feed times).
        self._stale_memo: (
            tuple[Mapping[str, Freshness], dict[str, tuple[Freshness, ...]]] | None
        ) = None

    def set_feed_times(self, last_updated: Mapping[str, dt.datetime | None]) -> None:
        """When each source's latest batch was accepted (from RiskIndexService.ListSources). A
        source missing from the mapping counts as never fed."""
        self._feed_times = dict(last_updated)
        self._generation += 1

    def of(self, names: Iterable[str] | None = None) -> tuple[Freshness, ...]:
        """The freshness of the named sources (default: the whole catalogue), by name, now."""
        catalogue = self._catalogue()
        wanted = catalogue if names is None else set(names)
        return tuple(catalogue[n] for n in sorted(wanted) if n in catalogue)

    def stale(self, names: Iterable[str]) -> tuple[Freshness, ...]:
        return tuple(f for f in self.of(names) if f.stale)

    def stale_for(self, rule_set: RuleSet, fired: Sequence[str] = ()) -> tuple[Freshness, ...]:
        """The stale feeds a verdict of `rule_set` rests on, given the rules that fired."""
        raising = self._raising.get(rule_set.version)
        if raising is None:
            raising = self._raising[rule_set.version] = depends_on(rule_set, ())
        if fired:
            return self.stale(raising | depends_on(rule_set, fired))
        # Most verdicts fire no rule: their answer is the same for everyone within a second.
        catalogue = self._catalogue()
        memo = self._stale_memo
        if memo is None or memo[0] is not catalogue:
            memo = self._stale_memo = (catalogue, {})
        found = memo[1].get(rule_set.version)
        if found is None:
            found = memo[1][rule_set.version] = self.stale(raising)
        return found

    def _catalogue(self) -> Mapping[str, Freshness]:
        now = self._now()
        key = (int(now.timestamp()), self._generation)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        times = self._feed_times
        out: dict[str, Freshness] = {}
        for name, source in SOURCES.items():
            last = None if times is None else times.get(name)
            limit = dt.timedelta(hours=source.max_staleness_hours)
            stale = last is None or now - last > limit
            out[name] = Freshness(name, last, source.max_staleness_hours, stale, source.clearing)
        self._cache = (key, out)
        return out

"""What-if (R5): a draft rule set evaluated over the whole population beside the active one,
counting the transitions per colour pair, per rule and per district ("this change turns
230,000 people yellow"). Nothing is activated or remembered: the draft's plan is dropped when
the answer is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import healthcode_matcher as hm

from services._common.days import day_date
from services._common.errors import InvalidArgument
from services._common.sources import get_source
from services.colour.model import Freshness, RuleChange, WhatIfOutcome, changed_in
from services.rules import Check, Rule, RuleSet

log = logging.getLogger(__name__)

# The what-if districts come from this attribute source unless the request names another.
DEFAULT_DISTRICT_SOURCE = "residence"


def what_if(
    active: hm.Verdicts,
    active_set: RuleSet,
    draft_set: RuleSet,
    draft_plan: hm.Plan,
    *,
    index_version: int,
    district_source: str,
    freshness_of: Callable[[Iterable[str]], tuple[Freshness, ...]],
) -> WhatIfOutcome:
    """Evaluate `draft_plan` over the index of `active` at its day and hour, and compare."""
    index = active.index
    districts_from = district_source_of(index, district_source)
    start = time.perf_counter()
    try:
        draft = hm.Verdicts(index, draft_plan, active.today, active.hour)
    except (hm.InvalidOperation, hm.PlanError) as exc:
        raise InvalidArgument([("text", str(exc))]) from None
    counted = active.transitions(draft, districts_from or None)
    seconds = time.perf_counter() - start
    in_active = set(active_set.rule_ids)
    in_draft = set(draft_set.rule_ids)
    order = list(dict.fromkeys([*active_set.rule_ids, *draft_set.rule_ids]))
    per_rule = counted.rules
    rules = tuple(
        RuleChange(
            r,
            *per_rule.get(r, (0, 0)),
            r in in_active,
            r in in_draft,
            rule_differences(
                active_set.rule(r) if r in in_active else None,
                draft_set.rule(r) if r in in_draft else None,
            ),
        )
        for r in order
    )
    districts = sorted(
        counted.districts.items(),
        key=lambda d: (-changed_in(d[1]), d[0]),
    )
    colours = counted.colours
    log.info(
        "what-if %s -> %s over %d persons: %d change colour (%.2f s)",
        active_set.version,
        draft_set.version,
        index.person_count,
        changed_in(colours),
        seconds,
    )
    return WhatIfOutcome(
        active_version=active_set.version,
        draft=draft_set,
        draft_check_count=draft_set.check_count,
        index_version=index_version,
        day=day_date(active.today),
        person_count=index.person_count,
        colours=colours,
        rules=rules,
        district_source=districts_from,
        districts=tuple(districts),
        district_freshness=freshness_of([districts_from])[0] if districts_from else None,
        seconds=seconds,
    )


def district_source_of(index: hm.Index, requested: str) -> str:
    """The attribute source to count districts by; "" when the default one is missing."""
    name = requested.strip() or DEFAULT_DISTRICT_SOURCE
    source = get_source(name)
    if source is None or not source.attribute or not source.has_county:
        why = (
            f"{name!r} is not an attribute source with counties; districts come from one "
            f"such as {DEFAULT_DISTRICT_SOURCE!r}"
        )
        raise InvalidArgument([("district_source", why)])
    defined = {n: (keyed, county) for n, keyed, county in index.sources()}
    if defined.get(name) != ("person", True):
        if requested.strip():
            raise InvalidArgument(
                [("district_source", f"the index this replica holds has no {name!r} source")]
            )
        return ""
    return name


def rule_differences(active: Rule | None, draft: Rule | None) -> tuple[str, ...]:
    """What a draft changes in one rule, in words for the policy desk."""
    if active is None:
        return ("added",)
    if draft is None:
        return ("removed",)
    out = []
    for name in ("colour", "scope", "match", "window"):
        was, now = getattr(active, name), getattr(draft, name)
        if was != now:
            out.append(f"{name} {was or 'none'} -> {now or 'none'}")
    for name in ("checks", "clears"):
        was, now = _describe(getattr(active, name)), _describe(getattr(draft, name))
        if was != now:
            out.append(f"{name} {was or 'none'} -> {now or 'none'}")
    if (active.text_en, active.text_zh) != (draft.text_en, draft.text_zh):
        out.append("text")
    if (active.what_clears_en, active.what_clears_zh) != (
        draft.what_clears_en,
        draft.what_clears_zh,
    ):
        out.append("what clears it (text)")
    return tuple(out)


def _describe(checks: Iterable[Check]) -> str:
    parts = []
    for c in checks:
        part = c.source
        if c.window is not None:
            part += f" {c.window}"
        if c.min_level is not None:
            part += f" level>={c.min_level}"
        parts.append(part)
    return ", ".join(parts)

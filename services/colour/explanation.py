"""The reasons behind a colour (R5, R7, R16): the matcher's evidence turned into views a person
or the support desk can read: which rule, which source and day, through which (masked) phone,
in which county, and what clears it; and a manual override's reason, shown before them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import replace

import healthcode_matcher as hm

from services._common.days import SHANGHAI, day_date
from services._common.sources import get_source
from services.colour.model import (
    EvidenceView,
    OverrideView,
    PersonDirectory,
    ReasonView,
    RemedyView,
    RuleView,
)
from services.rules import Rule, RuleSet

log = logging.getLogger(__name__)


# The rule id of the reason a manual override adds (first, before the rules' reasons).
OVERRIDE_RULE_ID = "manual_override"


def override_reason(manual: OverrideView) -> ReasonView:
    """What a person reads about an override in force: by whom (masked), until when (Asia/
    Shanghai), and why."""
    until = manual.valid_until.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    return ReasonView(
        rule_id=OVERRIDE_RULE_ID,
        text_zh=f"客服人工改码（{manual.actor}），有效至 {until}（北京时间）：{manual.reason}",
        text_en=(
            f"manual override by the support desk ({manual.actor}) until {until} CST: "
            f"{manual.reason}"
        ),
        source="",
        day=None,
    )


def evidence_day(ev: hm.Evidence) -> dt.date | None:
    """The date of a row behind a rule: its day, or for an hourly source its hour's date."""
    if ev.hour is not None:
        return day_date(ev.hour // 24)
    return None if ev.day is None else day_date(ev.day)


def remedy(rule_set: RuleSet, rule_id: str) -> RemedyView:
    """What clears one fired rule."""
    rule = rule_set.rule(rule_id)
    sources = tuple(dict.fromkeys(c.source for c in rule.clears))
    return RemedyView(rule_id, sources, rule.what_clears_zh, rule.what_clears_en)


def phone_masks(
    person_key: bytes,
    index: hm.Index,
    evidence: list[hm.Evidence],
    phones: Mapping[bytes, str] | PersonDirectory | None,
) -> dict[int, str]:
    """Phone id -> masked phone for the person's phones, asked only when a row came through a
    phone. `phones` is the person's {phone key: masked phone}, or a directory to ask."""
    if phones is None or all(ev.phone_id is None for ev in evidence):
        return {}
    if callable(phones):
        try:
            phones = phones(person_key).phones
        except Exception:  # noqa: BLE001 - an explanation without the masked phone still helps
            log.warning("masked phones unavailable; reasons will not name the phone")
            return {}
    out: dict[int, str] = {}
    for key, masked in phones.items():
        phone_id = index.phone_id_by_key(key)
        if phone_id is not None:
            out[phone_id] = masked
    return out


def phone_clearer(rule: Rule) -> str:
    """The phone-keyed clearing source of a rule (the matcher reports only that a phone was
    cleared, not by which row)."""
    for c in rule.clears:
        source = get_source(c.source)
        if source is not None and source.keyed_by == "phone":
            return c.source
    return ""


def reasons(
    rule_set: RuleSet, verdict: hm.Verdict, evidence: list[hm.Evidence], masks: Mapping[int, str]
) -> tuple[ReasonView, ...]:
    """One view per row behind a rule that counts or was cleared; uncleared rules first."""
    fired = set(verdict.rules)
    cleared = set(verdict.cleared)
    cleared_by: dict[str, str] = {}
    for ev in evidence:
        if ev.role == "cleared" and ev.rule_id in cleared:
            cleared_by.setdefault(ev.rule_id, ev.source)
    for ev in evidence:
        if ev.role == "phone_cleared" and ev.rule_id in cleared:
            cleared_by.setdefault(ev.rule_id, phone_clearer(rule_set.rule(ev.rule_id)))
    out: list[ReasonView] = []
    for ev in evidence:
        if ev.rule_id not in fired and ev.rule_id not in cleared:
            continue
        # A rule cleared phone by phone has no "fired" rows left: its phone rows are the
        # reason it once fired, and the person must see which phone was cleared (R7).
        phone_row = ev.role == "phone_cleared" and ev.rule_id in cleared
        if ev.role != "fired" and not phone_row:
            continue
        rule = rule_set.rule(ev.rule_id)
        out.append(
            ReasonView(
                rule_id=ev.rule_id,
                text_zh=rule.text_zh,
                text_en=rule.text_en,
                source=ev.source,
                day=evidence_day(ev),
                masked_phone="" if ev.phone_id is None else masks.get(ev.phone_id, ""),
                county=ev.county or 0,
                cleared=ev.rule_id in cleared,
                cleared_by=cleared_by.get(ev.rule_id, ""),
            )
        )
    # Uncleared rules first: they are what the person needs to read.
    out.sort(key=lambda r: r.cleared)
    return tuple(out)


def rule_views(
    rule_set: RuleSet,
    verdict: hm.Verdict,
    evidence: list[hm.Evidence],
    masks: Mapping[int, str],
    levels: Mapping[int, int],
) -> tuple[RuleView, ...]:
    """Every rule that fired or was cleared, counting ones first, each in rule-set order."""
    rows: dict[str, list[EvidenceView]] = {}
    clears: dict[str, list[EvidenceView]] = {}
    for ev in evidence:
        rule = rule_set.rule(ev.rule_id)
        view = EvidenceView(
            source=ev.source,
            day=evidence_day(ev),
            masked_phone="" if ev.phone_id is None else masks.get(ev.phone_id, ""),
            county=ev.county or 0,
            county_level=0 if ev.county is None else levels.get(ev.county, 0),
            hour=ev.hour,
        )
        if ev.role == "fired":
            rows.setdefault(ev.rule_id, []).append(view)
        elif ev.role == "phone_cleared":
            view = replace(view, phone_cleared_by=phone_clearer(rule))
            rows.setdefault(ev.rule_id, []).append(view)
        else:
            clears.setdefault(ev.rule_id, []).append(view)
    counting = set(verdict.rules)
    shown = counting | set(verdict.cleared)
    out = [
        RuleView(
            rule=rule,
            cleared=rule.id not in counting,
            evidence=tuple(rows.get(rule.id, ())),
            cleared_by=tuple(clears.get(rule.id, ())),
        )
        for rule in rule_set.rules
        if rule.id in shown
    ]
    # What counts first, the most severe first; rule-set order otherwise (a stable sort).
    out.sort(key=lambda v: (v.cleared, v.rule.colour != "red"))
    return tuple(out)

"""ColourService: protos in, `ColourEngine` calls, protos out. No colour logic here."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator

import grpc
from healthcode.v1 import colour_pb2, colour_pb2_grpc, common_pb2

from services._common.actors import Role
from services._common.auth import current_caller
from services._common.convert import actor_from_proto, person_from_proto, timestamp
from services._common.days import day_date, format_hour
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers
from services._common.purposes import EXAM, check_purpose
from services._common.status import grpc_errors
from services.colour.logic import ColourDesk
from services.colour.model import (
    Assessment,
    EvidenceView,
    Explanation,
    Freshness,
    Matrix,
    WhatIfOutcome,
    changed_in,
    source_title,
)

SERVICE_NAME = colour_pb2.DESCRIPTOR.services_by_name["ColourService"].full_name

# healthcode_matcher.Colour (0 green, 1 yellow, 2 red) -> the proto enum (0 is UNSPECIFIED).
_COLOUR = {0: common_pb2.COLOUR_GREEN, 1: common_pb2.COLOUR_YELLOW, 2: common_pb2.COLOUR_RED}


# A rule's colour as written in its file -> the proto enum.
_COLOUR_OF_NAME = {"yellow": common_pb2.COLOUR_YELLOW, "red": common_pb2.COLOUR_RED}


def freshness_to_proto(f: Freshness) -> colour_pb2.SourceFreshness:
    zh, en = f.titles
    out = colour_pb2.SourceFreshness(
        source=f.source,
        title_zh=zh,
        title_en=en,
        max_staleness_hours=f.max_staleness_hours,
        stale=f.stale,
        clearing=f.clearing,
    )
    if f.last_updated is not None:
        out.last_updated.CopyFrom(timestamp(f.last_updated))
    return out


@functools.lru_cache(maxsize=256)
def _verdict_common(
    colour: int | None,
    rule_set_version: str,
    index_version: int,
    day: dt.date,
    registered: bool,
    stale_feeds: tuple[Freshness, ...],
    hour: int | None,
) -> colour_pb2.Verdict:
    """What every verdict of one colour, version and moment shares (most people's whole
    verdict): built once and copied, because the display path builds one per Show and the
    freshness of a dozen feeds costs more than the rest of the answer."""
    return colour_pb2.Verdict(
        colour=common_pb2.COLOUR_UNSPECIFIED if colour is None else _COLOUR[colour],
        rule_set_version=rule_set_version,
        index_version=index_version,
        day=day.isoformat(),
        registered=registered,
        stale_sources=[f.source for f in stale_feeds],
        stale=bool(stale_feeds),
        stale_feeds=[freshness_to_proto(f) for f in stale_feeds],
        hour="" if hour is None else format_hour(hour),
    )


def verdict_to_proto(a: Assessment) -> colour_pb2.Verdict:
    verdict = colour_pb2.Verdict()
    verdict.CopyFrom(
        _verdict_common(
            None if a.colour is None else int(a.colour),
            a.rule_set_version,
            a.index_version,
            a.day,
            a.registered,
            a.stale_feeds,
            a.hour,
        )
    )
    verdict.person_key = a.person_key
    verdict.reasons_shed = a.reasons_shed
    if a.manual is not None:
        o = a.manual
        verdict.manual_override.CopyFrom(
            colour_pb2.ManualOverride(
                colour=_COLOUR[int(o.colour)],
                computed_colour=_COLOUR[int(o.computed)],
                reason=o.reason,
                valid_until=timestamp(o.valid_until),
                set_at=timestamp(o.set_at),
                actor=o.actor,
                seq=o.seq,
            )
        )
    for r in a.reasons:
        verdict.reasons.add(
            rule_id=r.rule_id,
            text_zh=r.text_zh,
            text_en=r.text_en,
            source=r.source,
            day="" if r.day is None else r.day.isoformat(),
            masked_phone=r.masked_phone,
            county=r.county,
            cleared=r.cleared,
            cleared_by=r.cleared_by,
        )
    for m in a.remedies:
        verdict.remedies.add(
            rule_id=m.rule_id,
            clearing_sources=m.clearing_sources,
            text_zh=m.text_zh,
            text_en=m.text_en,
        )
    return verdict


def counts_to_proto(counts: tuple[int, int, int]) -> common_pb2.ColourCounts:
    return common_pb2.ColourCounts(green=counts[0], yellow=counts[1], red=counts[2])


def _evidence_to_proto(e: EvidenceView) -> colour_pb2.Evidence:
    zh, en = source_title(e.source)
    return colour_pb2.Evidence(
        source=e.source,
        source_title_zh=zh,
        source_title_en=en,
        day="" if e.day is None else e.day.isoformat(),
        masked_phone=e.masked_phone,
        county=e.county,
        # The matcher's grading (1 low, 2 medium, 3 high) is the proto's; 0 is "not graded".
        county_level=common_pb2.CountyRiskLevel.ValueType(e.county_level),
        phone_cleared_by=e.phone_cleared_by,
        hour="" if e.hour is None else format_hour(e.hour),
    )


def explanation_to_proto(x: Explanation) -> colour_pb2.ExplainResponse:
    response = colour_pb2.ExplainResponse(
        verdict=verdict_to_proto(x.assessment),
        masked_name=x.masked_name,
        masked_id_number=x.masked_id_number,
        sources=[freshness_to_proto(f) for f in x.sources],
        masked_phones=x.masked_phones,
    )
    for view in x.rules:
        rule = view.rule
        response.rules.add(
            rule_id=rule.id,
            colour=_COLOUR_OF_NAME[rule.colour],
            scope=rule.scope,
            outcome=(
                colour_pb2.RULE_OUTCOME_CLEARED if view.cleared else colour_pb2.RULE_OUTCOME_FIRED
            ),
            text_zh=rule.text_zh,
            text_en=rule.text_en,
            window="" if rule.window is None else str(rule.window),
            evidence=[_evidence_to_proto(e) for e in view.evidence],
            cleared_by=[_evidence_to_proto(e) for e in view.cleared_by],
            clearing_sources=list(dict.fromkeys(c.source for c in rule.clears)),
            what_clears_zh=rule.what_clears_zh,
            what_clears_en=rule.what_clears_en,
        )
    return response


def _transitions(m: Matrix, *, changed_only: bool) -> list[colour_pb2.ColourTransition]:
    return [
        colour_pb2.ColourTransition(from_colour=_COLOUR[a], to_colour=_COLOUR[b], persons=n)
        for a, row in enumerate(m)
        for b, n in enumerate(row)
        if not changed_only or (a != b and n)
    ]


def what_if_to_proto(w: WhatIfOutcome) -> colour_pb2.WhatIfResponse:
    response = colour_pb2.WhatIfResponse(
        active_version=w.active_version,
        draft_version=w.draft.version,
        index_version=w.index_version,
        day=w.day.isoformat(),
        person_count=w.person_count,
        active_counts=counts_to_proto(w.active_counts),
        draft_counts=counts_to_proto(w.draft_counts),
        transitions=_transitions(w.colours, changed_only=False),
        changed=w.changed,
        rules=[
            colour_pb2.RuleTransition(
                rule_id=r.rule_id,
                starts=r.starts,
                stops=r.stops,
                in_active=r.in_active,
                in_draft=r.in_draft,
                differences=r.differences,
            )
            for r in w.rules
        ],
        district_source=w.district_source,
        districts=[
            colour_pb2.DistrictTransitions(
                county=county,
                transitions=_transitions(m, changed_only=True),
                changed=changed_in(m),
            )
            for county, m in w.districts
        ],
        changed_without_district=w.changed_without_district,
        draft_check_count=w.draft_check_count,
        seconds=w.seconds,
    )
    if w.district_freshness is not None:
        response.district_freshness.CopyFrom(freshness_to_proto(w.district_freshness))
    if w.draft.valid_from is not None:
        response.draft_valid_from.CopyFrom(timestamp(w.draft.valid_from))
    return response


class ColourServicer(colour_pb2_grpc.ColourServiceServicer):
    def __init__(self, desk: ColourDesk, identifiers: Identifiers) -> None:
        self._desk = desk
        self._identifiers = identifiers

    @grpc_errors
    def Evaluate(
        self, request: colour_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> colour_pb2.EvaluateResponse:
        actor = actor_from_proto(request.actor, self._identifiers)
        key = person_from_proto(request.person, self._identifiers, "person").key
        assessment = self._desk.evaluate(
            actor, key, shared_only=request.shared_only, min_version=request.min_index_version
        )
        return colour_pb2.EvaluateResponse(verdict=verdict_to_proto(assessment))

    @grpc_errors
    def EvaluateStream(
        self,
        request_iterator: Iterator[colour_pb2.EvaluateStreamRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[colour_pb2.EvaluateStreamResponse]:
        # Purpose limitation (issue 11, item 11): of the partners, only an exam organiser checks
        # lists here; nothing is recorded per person (the organiser's CSV report is the record).
        caller = current_caller()
        if caller is not None and caller.role is Role.PARTNER:
            check_purpose(caller.context, EXAM, f"partner:{caller.principal}")
        evaluate = None
        for request in request_iterator:
            if evaluate is None:
                # The actor rides on the first entry; a 50,000-candidate list need not repeat it.
                # The role check here covers the batches of the stream too.
                evaluate = self._desk.evaluator(actor_from_proto(request.actor, self._identifiers))
            if request.id_numbers or request.person_keys:
                yield self._evaluate_batch(request)
                continue
            try:
                key = person_from_proto(request.person, self._identifiers, "person").key
            except InvalidArgument as bad:
                # One bad entry in an exam list must not cost the other 49,999 their answer.
                yield colour_pb2.EvaluateStreamResponse(
                    correlation_id=request.correlation_id,
                    problems=[
                        colour_pb2.FieldProblem(field=f, description=d) for f, d in bad.violations
                    ],
                )
                continue
            assessment = evaluate(key, shared_only=request.shared_only)
            yield colour_pb2.EvaluateStreamResponse(
                correlation_id=request.correlation_id, verdict=verdict_to_proto(assessment)
            )

    def _evaluate_batch(
        self, request: colour_pb2.EvaluateStreamRequest
    ) -> colour_pb2.EvaluateStreamResponse:
        """A batch message: packed colours from one `Verdicts`, the invalid entries named."""
        if request.HasField("person"):
            raise InvalidArgument(
                [("person", "a message is one person or a batch (id_numbers, person_keys)")]
            )
        has_ids = len(request.id_numbers) > 0
        field = "id_numbers" if has_ids else "person_keys"
        batch = self._desk.engine.colours(
            id_numbers=request.id_numbers if has_ids else None,
            person_keys=request.person_keys or None,
            shared_only=request.shared_only,
        )
        return colour_pb2.EvaluateStreamResponse(
            correlation_id=request.correlation_id,
            colours=batch.colours,
            entry_problems=[
                colour_pb2.EntryProblem(index=n, field=field, description=d)
                for n, d in batch.problems
            ],
            index_version=batch.index_version,
            rule_set_version=batch.rule_set_version,
            day=day_date(batch.today).isoformat(),
            hour=format_hour(batch.hour),
            stale_sources=batch.stale_sources,
            entry_count=len(batch.colours),
        )

    @grpc_errors
    def SetRuleSet(
        self, request: colour_pb2.SetRuleSetRequest, context: grpc.ServicerContext
    ) -> colour_pb2.SetRuleSetResponse:
        outcome = self._desk.set_rule_set(
            actor_from_proto(request.actor, self._identifiers),
            request.text,
            request.filename,
            dry_run=request.dry_run,
        )
        response = colour_pb2.SetRuleSetResponse(
            version=outcome.rule_set.version,
            rule_count=len(outcome.rule_set.rules),
            check_count=outcome.check_count,
            counts=counts_to_proto(outcome.counts),
            previous_counts=counts_to_proto(outcome.previous_counts),
            activated=outcome.activated,
        )
        if outcome.rule_set.valid_from is not None:
            response.valid_from.CopyFrom(timestamp(outcome.rule_set.valid_from))
        return response

    @grpc_errors
    def GetStatus(
        self, request: colour_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> colour_pb2.GetStatusResponse:
        status = self._desk.status()
        response = colour_pb2.GetStatusResponse(
            rule_set_version=status.rule_set_version,
            rule_ids=status.rule_ids,
            index_version=status.index_version,
            person_count=status.person_count,
            counts=counts_to_proto(status.counts),
            day=status.day.isoformat(),
            rule_counts=dict(status.rule_counts),
            stale_sources=status.stale_sources,
            hour="" if status.hour is None else format_hour(status.hour),
            deltas_applied=status.deltas_applied,
            delta_apply_ms_p50=status.delta_apply_ms[0],
            delta_apply_ms_p99=status.delta_apply_ms[1],
            delta_apply_ms_max=status.delta_apply_ms[2],
        )
        if status.index_received_at is not None:
            response.index_received_at.CopyFrom(timestamp(status.index_received_at))
        return response

    @grpc_errors
    def Explain(
        self, request: colour_pb2.ExplainRequest, context: grpc.ServicerContext
    ) -> colour_pb2.ExplainResponse:
        actor = actor_from_proto(request.actor, self._identifiers)
        person = person_from_proto(request.person, self._identifiers, "person")
        explanation = self._desk.explain(
            actor, person, shared_only=request.shared_only, min_version=request.min_index_version
        )
        return explanation_to_proto(explanation)

    @grpc_errors
    def WhatIf(
        self, request: colour_pb2.WhatIfRequest, context: grpc.ServicerContext
    ) -> colour_pb2.WhatIfResponse:
        outcome = self._desk.what_if(
            actor_from_proto(request.actor, self._identifiers),
            request.text,
            request.filename,
            shared_only=request.shared_only,
            district_source=request.district_source,
        )
        return what_if_to_proto(outcome)

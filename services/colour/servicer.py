"""ColourService: protos in, `ColourEngine` calls, protos out. No colour logic here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from healthcode.v1 import colour_pb2, colour_pb2_grpc, common_pb2

from services._common.actors import Role
from services._common.convert import actor_from_proto, person_from_proto, timestamp
from services._common.errors import InvalidArgument, grpc_errors
from services._common.identifiers import Identifiers
from services.colour.logic import Assessment, ColourEngine

SERVICE_NAME = colour_pb2.DESCRIPTOR.services_by_name["ColourService"].full_name

# healthcode_matcher.Colour (0 green, 1 yellow, 2 red) -> the proto enum (0 is UNSPECIFIED).
_COLOUR = {0: common_pb2.COLOUR_GREEN, 1: common_pb2.COLOUR_YELLOW, 2: common_pb2.COLOUR_RED}


def verdict_to_proto(a: Assessment) -> colour_pb2.Verdict:
    verdict = colour_pb2.Verdict(
        colour=common_pb2.COLOUR_UNSPECIFIED if a.colour is None else _COLOUR[int(a.colour)],
        rule_set_version=a.rule_set_version,
        index_version=a.index_version,
        day=a.day.isoformat(),
        registered=a.registered,
        stale_sources=a.stale_sources,
        person_key=a.person_key,
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


# Whoever may see a colour: the holder, their proxies, staff, partners and platform services.
# (Roles are asserted, not authenticated, until the gateway issues credentials.)
_EVALUATE_ROLES = frozenset(Role)


class ColourServicer(colour_pb2_grpc.ColourServiceServicer):
    def __init__(self, engine: ColourEngine, identifiers: Identifiers) -> None:
        self._engine = engine
        self._identifiers = identifiers

    @grpc_errors
    def Evaluate(
        self, request: colour_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> colour_pb2.EvaluateResponse:
        actor = actor_from_proto(request.actor, self._identifiers)
        actor.require(_EVALUATE_ROLES, "evaluate a colour")
        key = person_from_proto(request.person, self._identifiers, "person").key
        assessment = self._engine.evaluate(key, shared_only=request.shared_only)
        return colour_pb2.EvaluateResponse(verdict=verdict_to_proto(assessment))

    @grpc_errors
    def EvaluateStream(
        self,
        request_iterator: Iterator[colour_pb2.EvaluateStreamRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[colour_pb2.EvaluateStreamResponse]:
        first = True
        for request in request_iterator:
            if first:
                # The actor rides on the first entry; a 50,000-candidate list need not repeat it.
                actor = actor_from_proto(request.actor, self._identifiers)
                actor.require(_EVALUATE_ROLES, "evaluate colours")
                first = False
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
            assessment = self._engine.evaluate(key, shared_only=request.shared_only)
            yield colour_pb2.EvaluateStreamResponse(
                correlation_id=request.correlation_id, verdict=verdict_to_proto(assessment)
            )

    @grpc_errors
    def SetRuleSet(
        self, request: colour_pb2.SetRuleSetRequest, context: grpc.ServicerContext
    ) -> colour_pb2.SetRuleSetResponse:
        actor_from_proto(request.actor, self._identifiers).require(
            {Role.ADMIN}, "change the rule set"
        )
        if not request.text.strip():
            raise InvalidArgument([("text", "the rule-set text (TOML) is required")])
        filename = request.filename.strip() or "rule_set.toml"
        outcome = self._engine.set_rule_set(request.text, filename, dry_run=request.dry_run)
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
        status = self._engine.status()
        response = colour_pb2.GetStatusResponse(
            rule_set_version=status.rule_set_version,
            rule_ids=status.rule_ids,
            index_version=status.index_version,
            person_count=status.person_count,
            counts=counts_to_proto(status.counts),
            day=status.day.isoformat(),
            rule_counts=dict(status.rule_counts),
            stale_sources=status.stale_sources,
        )
        if status.index_received_at is not None:
            response.index_received_at.CopyFrom(timestamp(status.index_received_at))
        return response

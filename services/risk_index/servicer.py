"""RiskIndexService over gRPC: proto <-> domain only; the work is in `logic.RiskIndex`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
from healthcode.v1 import risk_index_pb2, risk_index_pb2_grpc

from services._common.convert import actor_from_proto, timestamp
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers
from services._common.status import grpc_errors
from services.risk_index.logic import Delta, RiskIndex
from services.risk_index.model import KeyedPerson, RawRow

SERVICE_NAME = risk_index_pb2.DESCRIPTOR.services_by_name["RiskIndexService"].full_name

# Each message stays well under gRPC's default 4 MiB limit, whatever the receiver's settings.
CHUNK_BYTES = 1024 * 1024

_SUBJECT_KIND = {
    "person": risk_index_pb2.SUBJECT_KIND_PERSON,
    "phone": risk_index_pb2.SUBJECT_KIND_PHONE,
}


def raw_row(row: risk_index_pb2.FeedRow, field: str = "row") -> RawRow:
    subject = row.WhichOneof("subject") or ""
    value: str | bytes = getattr(row, subject) if subject else ""
    return RawRow(
        subject=subject,
        value=value,
        masked=row.masked,
        day=row.day,
        county=row.county,
        attributes=dict(row.attributes) if row.attributes else {},  # most rows have none
        at=_instant(row, f"{field}.at") if row.HasField("at") else None,
    )


def _instant(row: risk_index_pb2.FeedRow, field: str) -> dt.datetime:
    try:
        return row.at.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument([(field, "not a valid time")]) from None


class RiskIndexServicer(risk_index_pb2_grpc.RiskIndexServiceServicer):
    def __init__(self, risk_index: RiskIndex, identifiers: Identifiers) -> None:
        self._index = risk_index
        self._ids = identifiers

    @grpc_errors
    def IngestBatch(
        self, request: risk_index_pb2.IngestBatchRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.IngestBatchResponse:
        actor = actor_from_proto(request.actor, self._ids)
        result = self._index.ingest_batch(
            actor,
            request.source,
            request.batch_id,
            [raw_row(r, f"rows[{i}]") for i, r in enumerate(request.rows)],
            request.replace,
        )
        return risk_index_pb2.IngestBatchResponse(
            batch_id=result.batch_id,
            index_version=result.version,
            row_count=result.row_count,
            replayed=result.replayed,
            received_at=timestamp(result.received_at),
        )

    @grpc_errors
    def SetCountyLevel(
        self, request: risk_index_pb2.SetCountyLevelRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.SetCountyLevelResponse:
        actor = actor_from_proto(request.actor, self._ids)
        # The proto's levels are the matcher's (1 low, 2 medium, 3 high); 0 is unspecified.
        version = self._index.set_county_level(actor, request.county, int(request.level))
        return risk_index_pb2.SetCountyLevelResponse(index_version=version)

    @grpc_errors
    def RegisterPerson(
        self, request: risk_index_pb2.RegisterPersonRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.RegisterPersonResponse:
        actor = actor_from_proto(request.actor, self._ids)
        version, created = self._index.register_person(
            actor, request.person_key, request.masked_id_number
        )
        return risk_index_pb2.RegisterPersonResponse(index_version=version, created=created)

    @grpc_errors
    def LinkPhone(
        self, request: risk_index_pb2.LinkPhoneRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.LinkPhoneResponse:
        actor = actor_from_proto(request.actor, self._ids)
        version = self._index.link_phone(
            actor,
            request.person_key,
            request.masked_id_number,
            request.phone_key,
            request.masked_phone,
        )
        return risk_index_pb2.LinkPhoneResponse(index_version=version)

    @grpc_errors
    def UnlinkPhone(
        self, request: risk_index_pb2.UnlinkPhoneRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.UnlinkPhoneResponse:
        actor = actor_from_proto(request.actor, self._ids)
        version, was_linked = self._index.unlink_phone(actor, request.phone_key)
        return risk_index_pb2.UnlinkPhoneResponse(index_version=version, was_linked=was_linked)

    @grpc_errors
    def LinkCard(
        self, request: risk_index_pb2.LinkCardRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.LinkCardResponse:
        actor = actor_from_proto(request.actor, self._ids)
        version = self._index.link_card(
            actor,
            request.person_key,
            request.masked_id_number,
            request.card_key,
            request.masked_card,
        )
        return risk_index_pb2.LinkCardResponse(index_version=version)

    @grpc_errors
    def RegisterPeople(
        self, request: risk_index_pb2.RegisterPeopleRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.RegisterPeopleResponse:
        done = self._index.register_people(
            actor_from_proto(request.actor, self._ids),
            [
                KeyedPerson(
                    p.person_key,
                    p.masked_id_number,
                    [(ph.phone_key, ph.masked_phone) for ph in p.phones],
                    [(c.card_key, c.masked_card) for c in p.cards],
                )
                for p in request.people
            ],
        )
        return risk_index_pb2.RegisterPeopleResponse(
            index_version=done.version, created=done.created, linked=done.linked
        )

    @grpc_errors
    def ListSources(
        self, request: risk_index_pb2.ListSourcesRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.ListSourcesResponse:
        response = risk_index_pb2.ListSourcesResponse()
        for view in self._index.list_sources():
            s = view.source
            info = response.sources.add(
                name=s.name,
                keyed_by=_SUBJECT_KIND[s.keyed_by],
                has_county=s.has_county,
                dated=s.dated,
                clearing=s.clearing,
                hourly=s.hourly,
                max_staleness_hours=s.max_staleness_hours,
                title_zh=s.title_zh,
                title_en=s.title_en,
                row_count=view.stats.row_count,
                batch_count=view.stats.batch_count,
                stale=view.stale,
            )
            if view.stats.last_updated is not None:
                info.last_updated.CopyFrom(timestamp(view.stats.last_updated))
        return response

    @grpc_errors
    def GetIndexVersion(
        self, request: risk_index_pb2.GetIndexVersionRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.GetIndexVersionResponse:
        current = self._index.current
        return risk_index_pb2.GetIndexVersionResponse(
            version=current.version,
            published_at=timestamp(current.published_at),
            person_count=current.index.person_count,
            phone_count=current.index.phone_count,
            card_count=current.index.card_count,
            accepted_version=self._index.accepted_version,
        )

    @grpc_errors
    def WatchIndex(
        self, request: risk_index_pb2.WatchIndexRequest, context: grpc.ServicerContext
    ) -> Iterator[risk_index_pb2.WatchIndexResponse]:
        first = True
        for step in self._index.watch(request.known_version, context.is_active):
            # The stream's first whole version names the rule set published last, so a replica
            # that connects, or reconnects after one was published, runs the same rules.
            rule_set = self._index.rule_set if first else None
            first = False
            if isinstance(step, Delta):
                message = risk_index_pb2.WatchIndexResponse(
                    version=step.version, published_at=timestamp(step.published_at), delta=step.wire
                )
                if rule_set is not None:
                    message.rule_set.text, message.rule_set.filename = (
                        rule_set.text,
                        rule_set.filename,
                    )
                yield message
                continue
            for chunk in snapshot_chunks(step.version, step.snapshot(), step.published_at):
                if chunk.last_chunk and rule_set is not None:
                    chunk.rule_set.text, chunk.rule_set.filename = rule_set.text, rule_set.filename
                yield chunk

    @grpc_errors
    def PublishRuleSet(
        self, request: risk_index_pb2.PublishRuleSetRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.PublishRuleSetResponse:
        actor = actor_from_proto(request.actor, self._ids)
        version, rule_set_version = self._index.publish_rule_set(
            actor, request.text, request.filename
        )
        return risk_index_pb2.PublishRuleSetResponse(
            index_version=version, rule_set_version=rule_set_version
        )


def snapshot_chunks(
    version: int, data: bytes, published_at_time: dt.datetime
) -> Iterator[risk_index_pb2.WatchIndexResponse]:
    """One version's snapshot as <= 1 MiB messages; an empty snapshot is still one message."""
    published_at = timestamp(published_at_time)
    total = len(data)
    view = memoryview(data)
    count = max(1, -(-total // CHUNK_BYTES))
    for i in range(count):
        yield risk_index_pb2.WatchIndexResponse(
            version=version,
            chunk_index=i,
            data=bytes(view[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]),
            last_chunk=i == count - 1,
            total_size=total,
            published_at=published_at,
        )

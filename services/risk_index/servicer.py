"""RiskIndexService over gRPC: proto <-> domain only; the work is in `logic.RiskIndex`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
from google.protobuf import timestamp_pb2
from healthcode.v1 import common_pb2, risk_index_pb2, risk_index_pb2_grpc

from services._common import changes
from services._common.actors import Role
from services._common.convert import actor_from_proto, person_from_proto, role_to_proto, timestamp
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers
from services._common.status import grpc_errors
from services.risk_index.logic import Delta, RiskIndex
from services.risk_index.model import KeyedPerson, OverrideRecord, RawRow

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


def _time(value: timestamp_pb2.Timestamp, field: str) -> dt.datetime:
    try:
        return value.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument([(field, "not a valid time")]) from None


# The proto's Colour (1 green, 2 yellow, 3 red) <-> the matcher's (0, 1, 2) and the log's names.
_COLOUR_PROTO = {
    "green": common_pb2.COLOUR_GREEN,
    "yellow": common_pb2.COLOUR_YELLOW,
    "red": common_pb2.COLOUR_RED,
}


def override_entry_to_proto(r: OverrideRecord) -> risk_index_pb2.OverrideEntry:
    out = risk_index_pb2.OverrideEntry(
        seq=r.seq,
        at=timestamp(r.at),
        action=(
            risk_index_pb2.OVERRIDE_ACTION_SET
            if r.action == "set"
            else risk_index_pb2.OVERRIDE_ACTION_CLEAR
        ),
        person_key=r.person_key,
        masked_id_number=r.masked_id_number,
        colour=_COLOUR_PROTO.get(r.colour or "", common_pb2.COLOUR_UNSPECIFIED),
        reason=r.reason,
        actor_principal=r.actor_principal,
        index_version=r.index_version,
        prev_hash=r.prev_hash.hex(),
        hash=r.hash.hex(),
    )
    try:
        out.actor_role = role_to_proto(Role(r.actor_role))
    except ValueError:
        pass  # a role this version does not know: left unspecified
    if r.valid_until is not None:
        out.valid_until.CopyFrom(timestamp(r.valid_until))
    return out


def active_overrides_to_proto(
    active: list[changes.Override], last_seq: int
) -> risk_index_pb2.ActiveOverrides:
    return risk_index_pb2.ActiveOverrides(
        overrides=[changes.override_to_proto(o) for o in active], last_seq=last_seq
    )


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
            actor,
            request.person_key,
            request.masked_id_number,
            [(h.province, h.hash) for h in request.exchange_hashes],
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
                    [(h.province, h.hash) for h in p.exchange_hashes],
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
            # The stream's first whole version names the rule set published last and every
            # override in force, so a replica that connects, or reconnects after one was
            # published, runs the same rules and shows the same overrides. A snapshot later in
            # the stream (a replica too far behind for a delta) replaces everything it held, and
            # the deltas it skipped may have carried a rule set or an override: it carries both
            # too. They are read after the version was chosen: they reflect at least what it
            # carries.
            whole = first or not isinstance(step, Delta)
            rule_set = self._index.rule_set if whole else None
            overrides = (
                active_overrides_to_proto(*self._index.active_overrides()) if whole else None
            )
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
                if overrides is not None:
                    message.active_overrides.CopyFrom(overrides)
                yield message
                continue
            for chunk in snapshot_chunks(step.version, step.snapshot(), step.published_at):
                if chunk.last_chunk and rule_set is not None:
                    chunk.rule_set.text, chunk.rule_set.filename = rule_set.text, rule_set.filename
                if chunk.last_chunk and overrides is not None:
                    chunk.active_overrides.CopyFrom(overrides)
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

    @grpc_errors
    def OverrideColour(
        self, request: risk_index_pb2.OverrideColourRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.OverrideColourResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        colour = (
            int(request.colour) - 1
            if common_pb2.COLOUR_GREEN <= request.colour <= common_pb2.COLOUR_RED
            else None
        )
        until = (
            _time(request.valid_until, "valid_until") if request.HasField("valid_until") else None
        )
        record = self._index.override_colour(actor, person.key, colour, request.reason, until)
        return risk_index_pb2.OverrideColourResponse(
            index_version=record.index_version, entry=override_entry_to_proto(record)
        )

    @grpc_errors
    def ClearOverride(
        self, request: risk_index_pb2.ClearOverrideRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.ClearOverrideResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        record = self._index.clear_override(actor, person.key, request.reason)
        return risk_index_pb2.ClearOverrideResponse(
            index_version=record.index_version, entry=override_entry_to_proto(record)
        )

    @grpc_errors
    def ListOverrides(
        self, request: risk_index_pb2.ListOverridesRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.ListOverridesResponse:
        actor = actor_from_proto(request.actor, self._ids)
        key = (
            person_from_proto(request.person, self._ids, "person").key
            if request.HasField("person")
            else None
        )
        page = self._index.list_overrides(actor, key, request.page_size, request.page_token)
        check = page.check
        return risk_index_pb2.ListOverridesResponse(
            entries=[override_entry_to_proto(e) for e in page.entries],
            next_page_token="" if page.next_before is None else str(page.next_before),
            verified=check.verified,
            entry_count=check.entry_count,
            head_hash=check.head_hash.hex(),
            broken_seq=check.broken_seq,
            problem=check.problem,
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

"""RiskIndexService in process on port 0 with a real channel: bad input, idempotency, watching,
a restart that loses nothing, health, reflection and trace propagation."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import healthcode_matcher
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from healthcode.v1 import common_pb2, risk_index_pb2, risk_index_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services._common import changes, days
from services._common.identifiers import Identifiers, mask_id_number
from services._common.status import details_of, field_violations
from services._common.telemetry import instrumented_channel, setup_tracing
from services.risk_index.logic import RiskIndex
from services.risk_index.repository import RiskIndexRepository
from services.risk_index.servicer import (
    CHUNK_BYTES,
    SERVICE_NAME,
    RiskIndexServicer,
    snapshot_chunks,
)
from tests.support import SECRET, Served

IDS = healthcode_matcher.synthetic_id_numbers(50, 5).decode().split()
PHONES = healthcode_matcher.synthetic_phones(5, 5).decode().split()
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="national-db")
TODAY = days.format_day(days.today())


@dataclass
class Running:
    served: Served
    index: RiskIndex
    repo: RiskIndexRepository
    stub: risk_index_pb2_grpc.RiskIndexServiceStub

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def channel(self) -> grpc.Channel:
        return self.served.channel

    def close(self) -> None:
        # The index first: it ends the WatchIndex streams the server is still serving.
        self.index.close()
        self.served.close()
        self.repo.close()


def start(data: Path, max_rows: int = 50_000, port: int = 0) -> Running:
    repo = RiskIndexRepository(data / "risk_index.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    index = RiskIndex(repo, ids, SECRET, max_batch_rows=max_rows)
    servicer = RiskIndexServicer(index, ids)
    served = Served.start(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        port=port,
    )
    return Running(served, index, repo, risk_index_pb2_grpc.RiskIndexServiceStub(served.channel))


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[Running]:
    r = start(tmp_path)
    yield r
    r.close()


def rows(ids: list[str], day: str = TODAY) -> list[risk_index_pb2.FeedRow]:
    return [risk_index_pb2.FeedRow(id_number=i, day=day) for i in ids]


def ingest(
    stub: risk_index_pb2_grpc.RiskIndexServiceStub,
    source: str,
    batch_id: str,
    feed_rows: list[risk_index_pb2.FeedRow],
) -> risk_index_pb2.IngestBatchResponse:
    return stub.IngestBatch(  # type: ignore[no-any-return]
        risk_index_pb2.IngestBatchRequest(
            actor=FEED, source=source, batch_id=batch_id, rows=feed_rows
        )
    )


def test_health_and_reflection(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for name in (SERVICE_NAME, ""):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    [answer] = list(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert SERVICE_NAME in names


def test_bad_rows_are_all_named_and_nothing_changes(running: Running) -> None:
    bad = IDS[1][:-1] + ("0" if IDS[1][-1] != "0" else "1")
    feed_rows = rows([IDS[0], bad]) + [
        risk_index_pb2.FeedRow(phone=PHONES[0], day=TODAY),
        risk_index_pb2.FeedRow(id_number=IDS[2], day="yesterday"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        ingest(running.stub, "close_contact", "b1", feed_rows)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert [f for f, _ in violations] == ["rows[1].id_number", "rows[2].phone", "rows[3].day"]
    assert f"should be {IDS[1][-1]}" in violations[0][1]
    assert bad not in caught.value.details()
    assert running.stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).version == 0


def test_unknown_source_missing_actor_and_oversized(tmp_path: Path) -> None:
    r = start(tmp_path, max_rows=3)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            ingest(r.stub, "gossip", "b1", rows(IDS[:1]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(caught.value)] == ["source"]

        with pytest.raises(grpc.RpcError) as caught:
            r.stub.IngestBatch(
                risk_index_pb2.IngestBatchRequest(
                    source="confirmed", batch_id="b", rows=rows(IDS[:1])
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(caught.value)] == ["actor.role"]

        with pytest.raises(grpc.RpcError) as caught:
            ingest(r.stub, "confirmed", "big", rows(IDS[:4]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details_of(caught.value)[0].violations[0].subject == "rows"
    finally:
        r.close()


def test_replayed_batch_changes_nothing(running: Running) -> None:
    first = ingest(running.stub, "confirmed", "nhc-2024-05-10-1", rows(IDS[:5]))
    assert (first.index_version, first.row_count, first.replayed) == (1, 5, False)
    again = ingest(running.stub, "confirmed", "nhc-2024-05-10-1", rows(IDS[:5]))
    assert again.replayed and again.index_version == 1
    assert again.received_at == first.received_at
    with pytest.raises(grpc.RpcError) as caught:
        ingest(running.stub, "confirmed", "nhc-2024-05-10-1", rows(IDS[:4]))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert running.stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).version == 1


def test_list_sources_counts_rows(running: Running) -> None:
    ingest(running.stub, "close_contact", "b1", rows(IDS[:3]))
    ingest(running.stub, "close_contact", "b2", rows(IDS[3:5]))
    listed = {
        s.name: s for s in running.stub.ListSources(risk_index_pb2.ListSourcesRequest()).sources
    }
    cc = listed["close_contact"]
    assert (cc.row_count, cc.batch_count, cc.stale) == (5, 2, False)
    assert cc.keyed_by == risk_index_pb2.SUBJECT_KIND_PERSON
    assert cc.last_updated.seconds > 0
    assert listed["telecom_roaming"].has_county
    assert listed["nat_negative"].clearing
    assert listed["confirmed"].row_count == 0 and listed["confirmed"].stale


def test_a_negative_test_carries_its_time_and_is_kept_in_its_hour(running: Running) -> None:
    now = dt.datetime.now(dt.UTC)  # taken once; the row's hour follows from `at`, not the clock
    timed = risk_index_pb2.FeedRow(id_number=IDS[0])
    timed.at.FromDatetime(now - dt.timedelta(hours=47))
    untimed = risk_index_pb2.FeedRow(id_number=IDS[1], day=TODAY)
    reply = ingest(running.stub, "nat_negative", "lab-1", [timed, untimed])
    assert reply.row_count == 2
    buckets = running.index.current.index.source_days("nat_negative")
    # A row with only a day counts from that day's 00:00.
    assert sorted(b for b in buckets if b is not None) == [
        days.hour_number(now - dt.timedelta(hours=47)),
        days.day_number(dt.date.fromisoformat(TODAY)) * 24,
    ]
    listed = {
        s.name: s for s in running.stub.ListSources(risk_index_pb2.ListSourcesRequest()).sources
    }
    assert listed["nat_negative"].hourly and not listed["close_contact"].hourly


def test_a_negative_test_without_a_time_or_in_the_future_is_refused(running: Running) -> None:
    future = risk_index_pb2.FeedRow(id_number=IDS[0])
    future.at.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    with pytest.raises(grpc.RpcError) as caught:
        ingest(
            running.stub,
            "nat_negative",
            "lab-1",
            [risk_index_pb2.FeedRow(id_number=IDS[1]), future],
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(caught.value)] == ["rows[0].at", "rows[1].at"]
    assert running.stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).version == 0


def assemble(stream: Iterator[risk_index_pb2.WatchIndexResponse]) -> tuple[int, bytes]:
    parts: list[bytes] = []
    for chunk in stream:
        assert chunk.chunk_index == len(parts)
        parts.append(chunk.data)
        if chunk.last_chunk:
            data = b"".join(parts)
            assert len(data) == chunk.total_size
            return chunk.version, data
    raise AssertionError("stream ended mid-version")


def test_watch_index_streams_a_snapshot_then_deltas(running: Running) -> None:
    ingest(running.stub, "confirmed", "b1", rows(IDS[:2]))
    call = running.stub.WatchIndex(risk_index_pb2.WatchIndexRequest())
    try:
        version, data = assemble(call)
        assert version == 1
        index = healthcode_matcher.Index.from_bytes(data, SECRET)
        assert index.source_len("confirmed") == 2
        running.stub.SetCountyLevel(
            risk_index_pb2.SetCountyLevelRequest(
                actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="ops"),
                county=120101,
                level=common_pb2.COUNTY_RISK_LEVEL_HIGH,
            )
        )
        ingest(running.stub, "confirmed", "b2", rows(IDS[2:3]))
        # Each new version comes as the changes since the one before, not a snapshot.
        for want in (2, 3):
            message = next(call)
            assert message.HasField("delta") and not message.data
            assert (message.delta.from_version, message.version) == (want - 1, want)
            builder = index.builder()
            changes.apply_all(builder, changes.from_proto(message.delta))
            index = builder.finish(version=message.version)
        assert index.county_levels() == {120101: 3} and index.source_len("confirmed") == 3
        # Applied to the replica's copy, the deltas give exactly the risk index's version 3.
        again = running.stub.WatchIndex(risk_index_pb2.WatchIndexRequest())
        try:
            version, data = assemble(again)
            assert version == 3 and data == index.to_bytes()
        finally:
            again.cancel()
        # A replica that says it holds version 1 is sent one delta to the current version.
        resumed = running.stub.WatchIndex(risk_index_pb2.WatchIndexRequest(known_version=1))
        try:
            message = next(resumed)
            assert (message.delta.from_version, message.version) == (1, 3)
        finally:
            resumed.cancel()
    finally:
        call.cancel()


def test_snapshots_are_chunked_to_one_mebibyte() -> None:
    import datetime as dt

    data = bytes(range(256)) * (CHUNK_BYTES * 5 // 2 // 256)
    chunks = list(snapshot_chunks(7, data, dt.datetime.now(dt.UTC)))
    assert [len(c.data) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, CHUNK_BYTES // 2]
    assert [c.last_chunk for c in chunks] == [False, False, True]
    assert b"".join(c.data for c in chunks) == data
    [empty] = list(snapshot_chunks(1, b"", dt.datetime.now(dt.UTC)))
    assert empty.last_chunk and empty.total_size == 0


def test_restart_loses_nothing(tmp_path: Path) -> None:
    r = start(tmp_path)
    ingest(r.stub, "close_contact", "b1", rows(IDS[:10]))
    ingest(
        r.stub,
        "telecom_roaming",
        "t1",
        [risk_index_pb2.FeedRow(phone=PHONES[0], day=TODAY, county=420106)],
    )
    before = r.stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
    sources_before = r.stub.ListSources(risk_index_pb2.ListSourcesRequest())
    r.close()

    r = start(tmp_path)
    try:
        after = r.stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
        assert (after.version, after.person_count, after.phone_count) == (
            before.version,
            before.person_count,
            before.phone_count,
        )
        assert after.published_at == before.published_at
        sources_after = r.stub.ListSources(risk_index_pb2.ListSourcesRequest())
        assert [(s.name, s.row_count) for s in sources_after.sources] == [
            (s.name, s.row_count) for s in sources_before.sources
        ]
        assert ingest(r.stub, "close_contact", "b1", rows(IDS[:10])).replayed
        assert ingest(r.stub, "close_contact", "b2", rows(IDS[10:11])).index_version == 3
    finally:
        r.close()


def test_database_holds_keys_and_masks_only(running: Running, tmp_path: Path) -> None:
    import sqlite3

    ingest(
        running.stub,
        "close_contact",
        "b1",
        [risk_index_pb2.FeedRow(id_number=IDS[0], day=TODAY, attributes={"lab": "TJ-3"})],
    )
    ingest(
        running.stub,
        "telecom_roaming",
        "t1",
        [risk_index_pb2.FeedRow(phone=PHONES[0], day=TODAY, county=420106)],
    )
    dump = "\n".join(sqlite3.connect(tmp_path / "risk_index.sqlite3").iterdump())
    assert IDS[0] not in dump and PHONES[0] not in dump
    assert mask_id_number(IDS[0]) in dump
    assert json.dumps({"lab": "TJ-3"}) in dump


def test_trace_context_crosses_the_call(running: Running) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", exporter)
    tracer = trace.get_tracer("test")
    channel = instrumented_channel(f"127.0.0.1:{running.port}")
    try:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        with tracer.start_as_current_span("caller") as parent:
            stub.ListSources(risk_index_pb2.ListSourcesRequest())
            ingest(stub, "confirmed", "b-trace", rows(IDS[:1]))
        trace_id = parent.get_span_context().trace_id
    finally:
        channel.close()
    spans = exporter.get_finished_spans()
    server_spans = [s for s in spans if s.kind == trace.SpanKind.SERVER]
    assert server_spans and all(s.context.trace_id == trace_id for s in server_spans)
    assert {(s.attributes or {}).get("rpc.method") for s in server_spans} >= {
        "ListSources",
        "IngestBatch",
    }
    text = repr([dict(s.attributes or {}) for s in spans])
    assert IDS[0] not in text


def test_watch_through_an_instrumented_channel_can_be_cancelled(running: Running) -> None:
    channel = instrumented_channel(f"127.0.0.1:{running.port}")
    try:
        call = risk_index_pb2_grpc.RiskIndexServiceStub(channel).WatchIndex(
            risk_index_pb2.WatchIndexRequest()
        )
        assert assemble(call)[0] == 0
        call.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        assert caught.value.code() == grpc.StatusCode.CANCELLED
    finally:
        channel.close()

"""ColourService in process on port 0 with a real channel, following a stand-in risk index that
speaks the WatchIndex contract (snapshots in small chunks, new versions, broken streams)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import grpc
import healthcode_matcher as hm
import pytest
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from services._common.days import today
from services._common.identifiers import Identifiers
from services._common.sources import SOURCES
from services._common.status import field_violations
from services.colour.engine import ColourEngine
from services.colour.follower import IndexFollower
from services.colour.logic import ColourDesk
from services.colour.model import PersonCard
from services.colour.rulestore import compile_rules
from services.colour.servicer import SERVICE_NAME, ColourServicer
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, Served, StartServer, wait_until

HASHER = hm.Hasher(SECRET)
IDS = hm.synthetic_id_numbers(5, 21).decode().split()
PHONES = hm.synthetic_phones(1, 21).decode().split()
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="test")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="ops-1")
# The stand-in numbers versions as the real risk index does: from its own durable counter,
# written into each index (`finish(version=...)`), so replies quote that number.
V = 1000

NAT_RULES = """
version = "svc-test-1"
[[rules]]
id = "close-contact"
colour = "red"
scope = "shared"
window_days = 14
checks = [{ source = "close_contact" }]
clears = [{ source = "nat_negative", window_hours = 48 }]
text_zh = "近14天内被判定为密切接触者。"
text_en = "A close contact within the last 14 days."
what_clears_zh = "48小时内核酸阴性。"
what_clears_en = "A verified negative test from the last 48 hours."
"""


class StandInRiskIndex(risk_index_pb2_grpc.RiskIndexServiceServicer):
    """Streams the latest published version (in tiny chunks, to exercise reassembly), then each
    new one; can break a stream after its next version to exercise reconnects."""

    def __init__(self, first: hm.Index, chunk_bytes: int = 97) -> None:
        self.latest = first
        self.chunk_bytes = chunk_bytes
        self.known_versions: list[int] = []  # what each WatchIndex call said it held
        self.break_next = False
        self._changed = threading.Condition()

    def publish(self, index: hm.Index) -> None:
        with self._changed:
            self.latest = index
            self._changed.notify_all()

    def _moved_from(self, version: int) -> bool:
        return self.latest.version != version

    def WatchIndex(
        self, request: risk_index_pb2.WatchIndexRequest, context: grpc.ServicerContext
    ) -> Iterator[risk_index_pb2.WatchIndexResponse]:
        self.known_versions.append(request.known_version)
        sent = request.known_version
        while context.is_active():
            with self._changed:
                self._changed.wait_for(partial(self._moved_from, sent), timeout=0.2)
                index = self.latest
            if index.version == sent:
                continue
            data = index.to_bytes()
            parts = [data[i : i + self.chunk_bytes] for i in range(0, len(data), self.chunk_bytes)]
            for n, part in enumerate(parts):
                yield risk_index_pb2.WatchIndexResponse(
                    version=index.version,
                    chunk_index=n,
                    data=part,
                    last_chunk=n == len(parts) - 1,
                    total_size=len(data),
                )
            sent = index.version
            if self.break_next:
                self.break_next = False
                context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in broke the stream")

    def ListSources(
        self, request: risk_index_pb2.ListSourcesRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.ListSourcesResponse:
        return risk_index_pb2.ListSourcesResponse(
            sources=[risk_index_pb2.SourceInfo(name="close_contact", stale=True)]
        )


def first_index() -> hm.Index:
    builder = hm.Index(SECRET).builder()
    for name, source in SOURCES.items():
        builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
    for id_number in IDS:
        builder.add_person(id_number)
    builder.add_phone(PHONES[0], builder.add_person(IDS[1]))
    builder.add_rows_by_identifier("close_contact", [IDS[0]], [today() - 1])
    return builder.finish(version=V + 1)


def next_version(base: hm.Index, source: str, id_number: str, day: int | None) -> hm.Index:
    builder = base.builder()
    builder.add_rows_by_identifier(source, [id_number], [day])
    return builder.finish()


class Replica:
    """One colour replica (engine, follower, server) and a channel to it."""

    def __init__(self, risk_index_addr: str) -> None:
        self.engine = ColourEngine(
            SECRET,
            compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)),
            people=lambda key: PersonCard("", "", {HASHER.phone_key(PHONES[0]): "139****9999"}),
        )
        servicer = ColourServicer(ColourDesk(self.engine), Identifiers.from_secret(SECRET))
        self.served = Served.start(
            lambda s: colour_pb2_grpc.add_ColourServiceServicer_to_server(servicer, s),
            [SERVICE_NAME],
        )
        self.follower = IndexFollower(
            self.engine, risk_index_addr, SECRET, initial_backoff_s=0.05, max_backoff_s=0.2
        )
        self.stub = colour_pb2_grpc.ColourServiceStub(self.served.channel)

    def close(self) -> None:
        self.follower.stop()
        self.served.close()

    def evaluate(self, id_number: str, **kw: Any) -> colour_pb2.Verdict:
        request = colour_pb2.EvaluateRequest(
            actor=SERVICE, person=common_pb2.PersonRef(id_number=id_number), **kw
        )
        return self.stub.Evaluate(request, timeout=5).verdict

    def index_version(self) -> int:
        return self.stub.GetStatus(colour_pb2.GetStatusRequest(), timeout=5).index_version


@pytest.fixture
def risk_index(start_server: StartServer) -> tuple[StandInRiskIndex, str]:
    stand_in = StandInRiskIndex(first_index())  # type: ignore[abstract]  # only the watch
    served = start_server(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(stand_in, s),
        ["healthcode.v1.RiskIndexService"],
    )
    return stand_in, served.address


@pytest.fixture
def replica(risk_index: tuple[StandInRiskIndex, str]) -> Iterator[Replica]:
    r = Replica(risk_index[1])
    yield r
    r.close()


def test_before_the_first_index_evaluate_is_unavailable(replica: Replica) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        replica.evaluate(IDS[0])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    replica.follower.start()
    wait_until("the replica holds version 1", lambda: replica.index_version() == V + 1)
    assert replica.evaluate(IDS[0]).colour == common_pb2.COLOUR_RED


def test_evaluate_gives_colour_reasons_and_versions(replica: Replica) -> None:
    replica.follower.start()
    wait_until("the replica holds version 1", lambda: replica.index_version() == V + 1)
    v = replica.evaluate(IDS[0])
    assert v.colour == common_pb2.COLOUR_RED and v.registered
    assert {r.rule_id for r in v.reasons} == {"close-contact", "close-contact-monitoring"}
    assert all(r.source == "close_contact" and r.day and r.text_zh and r.text_en for r in v.reasons)
    assert v.index_version == V + 1 and v.rule_set_version == "2020.12.16-tianjin"
    assert v.person_key == HASHER.person_key(IDS[0])
    assert "close_contact" in v.stale_sources  # the stand-in reports that feed as stale
    by_key = replica.stub.Evaluate(
        colour_pb2.EvaluateRequest(
            actor=SERVICE, person=common_pb2.PersonRef(person_key=HASHER.person_key(IDS[0]))
        ),
        timeout=5,
    ).verdict
    assert by_key == v
    green = replica.evaluate(IDS[2])
    assert green.colour == common_pb2.COLOUR_GREEN and list(green.reasons) == []


def test_bad_input_is_invalid_argument_naming_the_field(replica: Replica) -> None:
    replica.follower.start()
    wait_until("the replica holds version 1", lambda: replica.index_version() == V + 1)
    bad = IDS[0][:-1] + ("0" if IDS[0][-1] != "0" else "1")
    with pytest.raises(grpc.RpcError) as refused:
        replica.evaluate(bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(refused.value)] == ["person.id_number"]
    with pytest.raises(grpc.RpcError) as no_actor:
        replica.stub.Evaluate(
            colour_pb2.EvaluateRequest(person=common_pb2.PersonRef(id_number=IDS[0])), timeout=5
        )
    assert no_actor.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as short_key:
        replica.stub.Evaluate(
            colour_pb2.EvaluateRequest(actor=SERVICE, person=common_pb2.PersonRef(person_key=b"x")),
            timeout=5,
        )
    assert [f for f, _ in field_violations(short_key.value)] == ["person.person_key"]


def test_evaluate_stream_answers_every_entry_in_order(replica: Replica) -> None:
    replica.follower.start()
    wait_until("the replica holds version 1", lambda: replica.index_version() == V + 1)
    unknown = hm.synthetic_id_numbers(50, 77).decode().split()[-1]
    entries = [(IDS[0], "a"), ("12345", "b"), (IDS[2], "c"), (unknown, "d")]

    def requests() -> Iterator[colour_pb2.EvaluateStreamRequest]:
        for n, (id_number, ref) in enumerate(entries):
            yield colour_pb2.EvaluateStreamRequest(
                actor=SERVICE if n == 0 else None,
                correlation_id=ref,
                person=common_pb2.PersonRef(id_number=id_number),
            )

    answers = list(replica.stub.EvaluateStream(requests(), timeout=10))
    assert [a.correlation_id for a in answers] == ["a", "b", "c", "d"]
    assert answers[0].verdict.colour == common_pb2.COLOUR_RED
    assert not answers[1].HasField("verdict")
    assert [p.field for p in answers[1].problems] == ["person.id_number"]
    assert answers[2].verdict.colour == common_pb2.COLOUR_GREEN
    assert not answers[3].verdict.registered
    assert answers[3].verdict.colour == common_pb2.COLOUR_UNSPECIFIED


def test_the_replica_follows_new_versions_and_reconnects_after_a_break(
    replica: Replica, risk_index: tuple[StandInRiskIndex, str]
) -> None:
    stand_in, _ = risk_index
    replica.follower.start()
    wait_until("the replica holds version 1", lambda: replica.index_version() == V + 1)
    stand_in.break_next = True
    v2 = next_version(stand_in.latest, "suspected", IDS[3], today())
    stand_in.publish(v2)
    wait_until("the replica holds version 2", lambda: replica.index_version() == V + 2)
    assert replica.evaluate(IDS[3]).colour == common_pb2.COLOUR_RED
    # The stream broke after version 2: the follower reconnects saying it holds 2 ...
    wait_until("the follower reconnected", lambda: stand_in.known_versions[-1:] == [V + 2])
    # ... and still gets what is published next.
    stand_in.publish(next_version(v2, "secondary_contact", IDS[4], today()))
    wait_until("the replica holds version 3", lambda: replica.index_version() == V + 3)
    assert replica.evaluate(IDS[4]).colour == common_pb2.COLOUR_YELLOW


def test_a_restarted_replica_catches_up_to_the_latest_version(
    risk_index: tuple[StandInRiskIndex, str],
) -> None:
    stand_in, addr = risk_index
    v2 = next_version(stand_in.latest, "suspected", IDS[3], today())
    stand_in.publish(next_version(v2, "suspected", IDS[4], today()))
    fresh = Replica(addr)
    try:
        fresh.follower.start()
        wait_until("the new replica holds version 3", lambda: fresh.index_version() == V + 3)
        assert stand_in.known_versions[0] == 0
        assert fresh.evaluate(IDS[4]).colour == common_pb2.COLOUR_RED
    finally:
        fresh.close()


def test_risk_through_a_phone_shows_the_masked_phone(
    replica: Replica, risk_index: tuple[StandInRiskIndex, str]
) -> None:
    stand_in, _ = risk_index
    builder = stand_in.latest.builder()
    builder.set_county_level(210211, 3)
    builder.add_rows_by_identifier("telecom_roaming", [PHONES[0]], [today()], [210211])
    stand_in.publish(builder.finish())
    replica.follower.start()
    wait_until("the replica holds version 2", lambda: replica.index_version() == V + 2)
    v = replica.evaluate(IDS[1])
    assert v.colour == common_pb2.COLOUR_RED
    assert {r.masked_phone for r in v.reasons} == {"139****9999"}
    shared = replica.evaluate(IDS[1], shared_only=True)
    assert shared.colour == common_pb2.COLOUR_YELLOW  # the red roaming rule is Tianjin-only


def test_set_rule_set_refuses_an_invalid_one_and_keeps_the_old(replica: Replica) -> None:
    replica.follower.start()
    wait_until("the replica holds version 1", lambda: replica.index_version() == V + 1)
    broken = NAT_RULES.replace('colour = "red"', 'colour = "purple"')
    with pytest.raises(grpc.RpcError) as refused:
        replica.stub.SetRuleSet(
            colour_pb2.SetRuleSetRequest(actor=ADMIN, text=broken, filename="p.toml"), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    assert violations and any("colour" in f for f, _ in violations)
    status = replica.stub.GetStatus(colour_pb2.GetStatusRequest(), timeout=5)
    assert status.rule_set_version == "2020.12.16-tianjin"

    with pytest.raises(grpc.RpcError) as not_admin:
        replica.stub.SetRuleSet(
            colour_pb2.SetRuleSetRequest(actor=SERVICE, text=NAT_RULES), timeout=5
        )
    assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED

    dry = replica.stub.SetRuleSet(
        colour_pb2.SetRuleSetRequest(actor=ADMIN, text=NAT_RULES, dry_run=True), timeout=5
    )
    assert not dry.activated and dry.version == "svc-test-1" and dry.rule_count == 1
    assert dry.counts.red == 1 and dry.previous_counts.red == 1
    assert replica.evaluate(IDS[0]).rule_set_version == "2020.12.16-tianjin"

    live = replica.stub.SetRuleSet(
        colour_pb2.SetRuleSetRequest(actor=ADMIN, text=NAT_RULES), timeout=5
    )
    assert live.activated
    v = replica.evaluate(IDS[0])
    assert v.rule_set_version == "svc-test-1"
    assert [r.rule_id for r in v.reasons] == ["close-contact"]
    assert [list(m.clearing_sources) for m in v.remedies] == [["nat_negative"]]

"""ColourService.EvaluateStream's batch form (R12 at a million persons a second): a message of
`id_numbers` or `person_keys` is answered with one packed colour byte per entry, equal to what
Evaluate says of each person; invalid entries are named, not fatal; the cap is refused with
RESOURCE_EXHAUSTED. In process on port 0 with a real channel; no timing assertions."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import healthcode_matcher as hm
import pytest
from google.rpc import error_details_pb2
from healthcode.v1 import colour_pb2, colour_pb2_grpc, common_pb2

from services._common.days import today
from services._common.identifiers import Identifiers
from services._common.sources import SOURCES
from services._common.status import details_of, field_violations
from services.colour.engine import INVALID_ENTRY, MAX_BATCH_ENTRIES, NOT_REGISTERED, ColourEngine
from services.colour.logic import ColourDesk
from services.colour.rulestore import compile_rules
from services.colour.servicer import SERVICE_NAME, ColourServicer
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, StartServer

HASHER = hm.Hasher(SECRET)
IDS = hm.synthetic_id_numbers(6, 31).decode().split()
STRANGER = hm.synthetic_id_numbers(40, 32).decode().split()[-1]  # never registered
PARTNER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_PARTNER, principal="exam-office")
V = 77


def bad_check(id_number: str) -> str:
    """The same number with a wrong check character."""
    return id_number[:-1] + ("0" if id_number[-1] != "0" else "1")


def index() -> hm.Index:
    """IDS[0] a close contact (red, shared rule), IDS[1] under home quarantine (red, a rule
    local to this city: green in what other provinces see), the rest green."""
    builder = hm.Index(SECRET).builder()
    for name, source in SOURCES.items():
        builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
    for id_number in IDS:
        builder.add_person(id_number)
    builder.add_rows_by_identifier("close_contact", [IDS[0]], [today() - 1])
    builder.add_rows_by_identifier("home_quarantine", [IDS[1]], [None])
    return builder.finish(version=V)


@pytest.fixture
def stub(start_server: StartServer) -> colour_pb2_grpc.ColourServiceStub:
    engine = ColourEngine(SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)))
    engine.install_index(index())
    servicer = ColourServicer(ColourDesk(engine), Identifiers.from_secret(SECRET))
    served = start_server(
        lambda s: colour_pb2_grpc.add_ColourServiceServicer_to_server(servicer, s), [SERVICE_NAME]
    )
    return colour_pb2_grpc.ColourServiceStub(served.channel)


def stream(
    stub: colour_pb2_grpc.ColourServiceStub, *messages: colour_pb2.EvaluateStreamRequest
) -> list[colour_pb2.EvaluateStreamResponse]:
    def requests() -> Iterator[colour_pb2.EvaluateStreamRequest]:
        for n, m in enumerate(messages):
            if n == 0:
                m.actor.CopyFrom(PARTNER)
            yield m

    return list(stub.EvaluateStream(requests(), timeout=30))


def one_by_one(
    stub: colour_pb2_grpc.ColourServiceStub, id_number: str, *, shared_only: bool = False
) -> tuple[int, list[tuple[str, str]]]:
    """What Evaluate says of one entry, as a batch byte: (byte, problems)."""
    request = colour_pb2.EvaluateRequest(
        actor=PARTNER, person=common_pb2.PersonRef(id_number=id_number), shared_only=shared_only
    )
    try:
        verdict = stub.Evaluate(request, timeout=5).verdict
    except grpc.RpcError as refused:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        return INVALID_ENTRY, field_violations(refused)
    assert verdict.registered == (verdict.colour != common_pb2.COLOUR_UNSPECIFIED)
    return int(verdict.colour) if verdict.registered else NOT_REGISTERED, []


MIX = [
    IDS[0],  # red
    IDS[1],  # red here, green in the shared view
    IDS[2],  # green
    STRANGER,  # not registered
    bad_check(IDS[3]),  # bad check character
    "12345",  # too short
    "",  # blank
    " " + IDS[4].lower() + "\n",  # trimmed, as Evaluate trims it
    IDS[5][:8] + "\n" + IDS[5][9:],  # a line break inside
    IDS[2],  # repeats are answered again
]


@pytest.mark.parametrize("shared_only", [False, True])
def test_packed_colours_equal_evaluate_of_each_entry(
    stub: colour_pb2_grpc.ColourServiceStub, shared_only: bool
) -> None:
    [answer] = stream(
        stub,
        colour_pb2.EvaluateStreamRequest(
            correlation_id="exam-1", id_numbers=MIX, shared_only=shared_only
        ),
    )
    assert answer.correlation_id == "exam-1" and not answer.HasField("verdict")
    assert answer.entry_count == len(MIX) == len(answer.colours)
    expected = [one_by_one(stub, n, shared_only=shared_only) for n in MIX]
    assert list(answer.colours) == [byte for byte, _ in expected]
    problems = [(p.index, p.field, p.description) for p in answer.entry_problems]
    assert problems == [
        (n, "id_numbers", description)
        for n, (_, violations) in enumerate(expected)
        for field, description in violations
        if field == "person.id_number"
    ]
    assert [p.index for p in answer.entry_problems] == [4, 5, 6, 8]
    assert "check character" in answer.entry_problems[0].description
    assert answer.entry_problems[2].description == "an ID number is required"
    colour = common_pb2.COLOUR_GREEN if shared_only else common_pb2.COLOUR_RED
    assert answer.colours[:4] == bytes([common_pb2.COLOUR_RED, colour, 1, NOT_REGISTERED])
    verdict = stub.Evaluate(
        colour_pb2.EvaluateRequest(
            actor=PARTNER, person=common_pb2.PersonRef(id_number=IDS[0]), shared_only=shared_only
        ),
        timeout=5,
    ).verdict
    assert (answer.index_version, answer.rule_set_version, answer.day, answer.hour) == (
        verdict.index_version,
        verdict.rule_set_version,
        verdict.day,
        verdict.hour,
    )
    assert answer.index_version == V
    # the engine was never told the feeds' times: every source is stale, and says so
    assert "close_contact" in answer.stale_sources


@pytest.mark.parametrize("shared_only", [False, True])
def test_keys_give_the_same_colours_as_id_numbers(
    stub: colour_pb2_grpc.ColourServiceStub, shared_only: bool
) -> None:
    people = [*IDS, STRANGER]
    keys = b"".join(HASHER.person_key(n) for n in people)
    by_ids, by_keys = stream(
        stub,
        colour_pb2.EvaluateStreamRequest(id_numbers=people, shared_only=shared_only),
        colour_pb2.EvaluateStreamRequest(person_keys=keys, shared_only=shared_only),
    )
    assert by_keys.colours == by_ids.colours and len(by_keys.colours) == len(people)
    assert not by_keys.entry_problems and by_keys.colours[-1] == NOT_REGISTERED


def test_per_person_and_batch_messages_mix_in_order(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    answers = stream(
        stub,
        colour_pb2.EvaluateStreamRequest(
            correlation_id="a", person=common_pb2.PersonRef(id_number=IDS[0])
        ),
        colour_pb2.EvaluateStreamRequest(correlation_id="b", id_numbers=[IDS[2], "x"]),
        colour_pb2.EvaluateStreamRequest(
            correlation_id="c", person=common_pb2.PersonRef(id_number="x")
        ),
    )
    assert [a.correlation_id for a in answers] == ["a", "b", "c"]
    assert answers[0].verdict.colour == common_pb2.COLOUR_RED and not answers[0].colours
    assert answers[1].colours == bytes([common_pb2.COLOUR_GREEN, INVALID_ENTRY])
    assert [p.field for p in answers[2].problems] == ["person.id_number"]


def test_a_batch_over_the_cap_is_resource_exhausted_naming_the_limit(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    for message in (
        colour_pb2.EvaluateStreamRequest(id_numbers=[IDS[0]] * (MAX_BATCH_ENTRIES + 1)),
        colour_pb2.EvaluateStreamRequest(person_keys=bytes(16 * (MAX_BATCH_ENTRIES + 1))),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stream(stub, message)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "100,000" in (refused.value.details() or "")
        [quota] = [
            d for d in details_of(refused.value) if isinstance(d, error_details_pb2.QuotaFailure)
        ]
        assert quota.violations[0].subject in ("id_numbers", "person_keys")
    # exactly at the cap is answered
    [answer] = stream(
        stub, colour_pb2.EvaluateStreamRequest(person_keys=bytes(16 * MAX_BATCH_ENTRIES))
    )
    assert answer.colours == bytes(MAX_BATCH_ENTRIES)  # all NOT_REGISTERED


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (colour_pb2.EvaluateStreamRequest(person_keys=b"short"), "person_keys"),
        (
            colour_pb2.EvaluateStreamRequest(
                id_numbers=[IDS[0]], person_keys=HASHER.person_key(IDS[0])
            ),
            "person_keys",
        ),
        (
            colour_pb2.EvaluateStreamRequest(
                id_numbers=[IDS[0]], person=common_pb2.PersonRef(id_number=IDS[0])
            ),
            "person",
        ),
    ],
)
def test_a_malformed_batch_is_invalid_argument_naming_the_field(
    stub: colour_pb2_grpc.ColourServiceStub, message: colour_pb2.EvaluateStreamRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stream(stub, message)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(refused.value)] == [field]


def test_the_actor_is_checked_once_for_the_stream(stub: colour_pb2_grpc.ColourServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(
            stub.EvaluateStream(
                iter([colour_pb2.EvaluateStreamRequest(id_numbers=[IDS[0]])]), timeout=5
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

"""Exams (R12), cold chain (R14) and other provinces (R6) through the real processes and the CLI
(issue 11, items 7, 9 and 10)."""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from pathlib import Path

import grpc
import healthcode_matcher
import pytest
from healthcode.v1 import (
    cold_chain_pb2,
    cold_chain_pb2_grpc,
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    province_pb2,
    province_pb2_grpc,
)
from typer.testing import CliRunner

from clients import cli, feedgen, population
from clients.channel import open_channel
from clients.exams import partner_credentials
from clients.stack import Stack
from services._common.config import load_secret
from services._common.exchange import exchange_hash, read_exchange_key
from services._common.identifiers import Identifiers
from services._common.status import reason_of
from tests.e2e.waits import eventually, today

PEOPLE = feedgen.synthetic_id_numbers(16, 1111)
GREEN, YELLOW, RED = common_pb2.COLOUR_GREEN, common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_RED
PHONES = feedgen.synthetic_phones(4, 1111)


def invoke(stack: Stack, *args: str) -> tuple[int, str]:
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        [
            "--declaration", p.declaration,
            "--risk-index", p.risk_index,
            "--colour", p.colour,
            "--display", p.display,
            *args,
        ],
    )  # fmt: skip
    # Rich wraps long lines at the terminal's width: compare words, not line breaks.
    return result.exit_code, " ".join(result.output.split())


def register(stack: Stack, name: str, id_number: str, *phones: str) -> None:
    args = [a for p in phones for a in ("--phone", p)]
    code, out = invoke(stack, "register", name, id_number, *args)
    assert code == 0, out


def ingest(stack: Stack, tmp_path: Path, source: str, id_number: str, day: str = "") -> None:
    path = tmp_path / f"{source}-{id_number[-4:]}.csv"
    path.write_text(f"source,id_number,day\n{source},{id_number},{day}\n", encoding="utf-8")
    code, out = invoke(stack, "ingest", str(path))
    assert code == 0, out


def colour_of(stack: Stack, id_number: str, *, shared_only: bool = False) -> int:
    with open_channel(stack.peers.colour) as channel:
        verdict = (
            colour_pb2_grpc.ColourServiceStub(channel)
            .Evaluate(
                colour_pb2.EvaluateRequest(
                    actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e"),
                    person=common_pb2.PersonRef(id_number=id_number),
                    shared_only=shared_only,
                )
            )
            .verdict
        )
    return int(verdict.colour)


def wait_colour(stack: Stack, id_number: str, colour: int, *, shared_only: bool = False) -> None:
    eventually(
        f"colour {colour} (shared_only={shared_only})",
        lambda: colour_of(stack, id_number, shared_only=shared_only),
        lambda c: c == colour,
    )


@pytest.fixture(scope="module")
def stack(module_stack: Stack) -> Iterator[Stack]:
    yield module_stack


# --- exams ------------------------------------------------------------------------------------


def test_exam_list_gives_pass_refer_and_a_rejection_report(stack: Stack, tmp_path: Path) -> None:
    green, red, unregistered = PEOPLE[0], PEOPLE[1], PEOPLE[2]
    register(stack, "张三", green)
    register(stack, "李四", red)
    ingest(stack, tmp_path, "close_contact", red, today())
    wait_colour(stack, red, RED)
    wait_colour(stack, green, GREEN)
    bad_check = green[:-1] + ("1" if green[-1] != "1" else "2")
    candidates = tmp_path / "candidates.csv"
    candidates.write_text(
        "candidate_number,name,id_number\n"
        f"T001,张三,{green}\n"
        f"T002,李四,{red}\n"
        f"T003,王五,{unregistered}\n"
        f"T004,赵六,{bad_check}\n"
        f"T005,,{PEOPLE[3]}\n"
        f"T001,孙七,{PEOPLE[4]}\n",
        encoding="utf-8",
    )
    results = tmp_path / "results.csv"
    code, out = invoke(stack, "exam", "verify", str(candidates), "--out", str(results))
    assert code == 0, out
    assert "3 candidates checked" in out and "1 pass, 2 refer (1 not registered)" in out, out
    rows = list(csv.DictReader(results.read_text(encoding="utf-8").splitlines()))
    assert [(r["candidate_number"], r["masked_name"], r["decision"], r["note"]) for r in rows] == [
        ("T001", "张*", "pass", ""),
        ("T002", "李*", "refer", ""),
        ("T003", "王*", "refer", "not registered"),
    ]
    report = (tmp_path / "results.rejected.csv").read_text(encoding="utf-8")
    rejected = list(csv.DictReader(report.splitlines()))
    found = {(r["line"], r["field"]) for r in rejected}
    assert found == {("5", "id_number"), ("6", "name"), ("7", "candidate_number")}, rejected
    why = {r["line"]: r["reason"] for r in rejected}
    assert "check" in why["5"] and "line 2" in why["7"]
    for text in (results.read_text(encoding="utf-8"), out, str(rejected)):
        for id_number in (green, red, unregistered, bad_check):
            assert id_number not in text


def test_exam_list_over_the_limit_is_refused(stack: Stack, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    ids = feedgen.synthetic_id_numbers(100_001, 77)
    with big.open("w", encoding="utf-8") as f:
        f.write("candidate_number,name,id_number\n")
        f.writelines(f"C{n},考生,{i}\n" for n, i in enumerate(ids))
    code, out = invoke(stack, "exam", "verify", str(big), "--out", str(tmp_path / "r.csv"))
    assert code == 2 and "more than 100,000 candidates" in out, out
    assert not (tmp_path / "r.csv").exists()


# --- cold chain -------------------------------------------------------------------------------


def _cold_chain(stack: Stack, kind: str, name: str) -> cold_chain_pb2_grpc.ColdChainServiceStub:
    creds = partner_credentials(stack.peers.risk_index, kind, name)
    return cold_chain_pb2_grpc.ColdChainServiceStub(
        open_channel(stack.peers.risk_index, credentials=creds)
    )


def test_cold_chain_event_turns_handlers_yellow_and_lists_them_masked(stack: Stack) -> None:
    by_id, by_phone = PEOPLE[5], PEOPLE[6]
    register(stack, "周八", by_id)
    register(stack, "吴九", by_phone, PHONES[0])
    wait_colour(stack, by_phone, GREEN)
    code, out = invoke(
        stack, "cold-chain", "post", "FROZEN-2020-1107", "--stage", "transport",
        "--event-id", "ev-1", "--id-number", by_id, "--phone", PHONES[0], "--phone", PHONES[1],
    )  # fmt: skip
    assert code == 0, out
    assert "2 people linked" in out and "linked to no registered person" in out, out
    assert PHONES[1] not in out and PHONES[1][-4:] in out
    wait_colour(stack, by_id, YELLOW)
    wait_colour(stack, by_phone, YELLOW)
    # Cold-chain exposure is a shared rule: other provinces see it too.
    assert colour_of(stack, by_id, shared_only=True) == YELLOW

    code, out = invoke(stack, "cold-chain", "list", "FROZEN-2020-1107")
    assert code == 0, out
    assert "transport" in out and today() in out and "ev-1" in out
    assert by_id[:2] in out and by_id[-2:] in out
    for raw in (by_id, by_phone, PHONES[0]):
        assert raw not in out
    # A replay changes nothing.
    code, out = invoke(
        stack, "cold-chain", "post", "FROZEN-2020-1107", "--stage", "transport",
        "--event-id", "ev-1", "--id-number", by_id, "--phone", PHONES[0], "--phone", PHONES[1],
    )  # fmt: skip
    assert code == 0 and "already posted" in out, out


def test_cold_chain_refuses_a_partner_of_another_kind(stack: Stack) -> None:
    hospital = _cold_chain(stack, "hospital", "demo")
    for call, request in (
        (
            hospital.ListBatchPeople,
            cold_chain_pb2.ListBatchPeopleRequest(product_batch="FROZEN-2020-1107"),
        ),
        (
            hospital.PostExposure,
            cold_chain_pb2.PostExposureRequest(
                event_id="ev-h",
                product_batch="B",
                stage=cold_chain_pb2.COLD_CHAIN_STAGE_SALE,
                handlers=[cold_chain_pb2.Handler(id_number=PEOPLE[7])],
            ),
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(request)  # type: ignore[operator]
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(refused.value) == "PARTNER_KIND_NOT_ALLOWED"
        assert "cold_chain" in (refused.value.details() or "")


# --- other provinces --------------------------------------------------------------------------


def _province(stack: Stack, code: str) -> province_pb2_grpc.ProvinceExchangeServiceStub:
    creds = partner_credentials(stack.peers.risk_index, "other_province", code)
    return province_pb2_grpc.ProvinceExchangeServiceStub(
        open_channel(stack.peers.risk_index, credentials=creds)
    )


def _hash(stack: Stack, code: str, id_number: str) -> str:
    key = read_exchange_key(stack.data_dir / "province-keys" / f"{code}.key")
    return exchange_hash(key, healthcode_matcher.normalise_id_number(id_number)).hex()


def _export(stack: Stack, tmp_path: Path, code: str) -> tuple[dict[str, str], str]:
    path = tmp_path / f"export-{code}.csv"
    status, out = invoke(stack, "province", "export", "--province", code, "--out", str(path))
    assert status == 0, out
    text = path.read_text(encoding="utf-8")
    return {r["exchange_hash"]: r["status"] for r in csv.DictReader(text.splitlines())}, text


def test_province_export_is_shared_only_and_import_maps_states(
    stack: Stack, tmp_path: Path
) -> None:
    plain, shared_red, local_red, imported = PEOPLE[8], PEOPLE[9], PEOPLE[10], PEOPLE[11]
    people = [plain, shared_red, local_red, imported]
    for n, id_number in enumerate(people):
        register(stack, f"郑{n}", id_number)
    # Registration computes each new person's hashes; the outbox carries them to the index.
    eventually(
        "the registered people in Beijing's export",
        lambda: _export(stack, tmp_path, "beijing")[0],
        lambda got: all(_hash(stack, "beijing", i) in got for i in people),
    )
    # People registered before hashes travelled with registrations: an enrolment pass over the
    # people file (idempotent; for these people it changes nothing).
    people_file = tmp_path / "people.csv"
    people_file.write_text(
        "id_number,name\n" + "".join(f"{i},x\n" for i in people) + "12345,bad\n", encoding="utf-8"
    )
    code, out = invoke(stack, "province", "enrol", str(people_file))
    assert code == 0 and "4 people enrolled for beijing, hebei" in out and "line 6" in out, out
    assert "12345" not in out.replace("line 6", "")

    ingest(stack, tmp_path, "close_contact", shared_red, today())  # shared: red everywhere
    ingest(stack, tmp_path, "sealed_compound", local_red)  # local: red in this city only
    wait_colour(stack, shared_red, RED)
    wait_colour(stack, local_red, RED)
    wait_colour(stack, imported, GREEN)

    exported, text = _export(stack, tmp_path, "beijing")
    assert exported[_hash(stack, "beijing", plain)] == "green"
    assert exported[_hash(stack, "beijing", shared_red)] == "red"
    # The seed's Dalian case: a local rule's red never reaches another province.
    assert exported[_hash(stack, "beijing", local_red)] == "green"
    secret = load_secret(stack.data_dir)
    ids = Identifiers.from_secret(secret)
    for id_number in people:
        assert id_number not in text
        assert ids.person(id_number, "x").key.hex() not in text  # never our internal key
    # Hashes are per province: Hebei's export names nobody by Beijing's hash.
    hebei, _ = _export(stack, tmp_path, "hebei")
    assert not set(hebei) & set(exported)

    # Import Beijing's list: red and an unknown state (default: yellow), one not ours.
    statuses = tmp_path / "beijing.csv"
    statuses.write_text(
        "exchange_hash,state\n"
        f"{_hash(stack, 'beijing', imported)},红码\n"
        f"{_hash(stack, 'beijing', plain)},purple\n"
        f"{'00' * 16},red\n",
        encoding="utf-8",
    )
    code, out = invoke(
        stack, "province", "import", str(statuses), "--province", "beijing", "--batch-id", "bj-1"
    )
    assert code == 0, out
    assert "2 of our people (1 province_red, 1 province_yellow), 1 not ours" in out, out
    wait_colour(stack, imported, RED)
    wait_colour(stack, plain, YELLOW)
    # Imported status is local: it is not echoed back in the export.
    after, _ = _export(stack, tmp_path, "beijing")
    assert after[_hash(stack, "beijing", imported)] == "green"
    assert after[_hash(stack, "beijing", plain)] == "green"


def _exported_hashes(stack: Stack, tmp_path: Path, code: str) -> set[str]:
    return set(_export(stack, tmp_path, code)[0])


def test_registered_and_imported_people_reach_the_export_through_a_risk_index_restart(
    stack: Stack, tmp_path: Path
) -> None:
    """No `enrol` step: the hashes travel in the registrations' outbox messages, so people the
    declaration service took while the risk index was down are all exported once it is back."""
    before = {p: _exported_hashes(stack, tmp_path, p) for p in ("beijing", "hebei")}
    assert stack.stop_one("risk_index") == 0
    one_by_one = PEOPLE[12:14]
    for n, id_number in enumerate(one_by_one):
        register(stack, f"冯{n}", id_number)
    city = population.SyntheticCity(40, 1212)
    people_csv = tmp_path / "people.csv"
    population.write_people(people_csv, city, on_block=lambda _: None)
    imported = [p.id_number for block in city.blocks() for p in block]
    code, out = invoke(stack, "import", str(people_csv), "--batch", "16")
    assert code == 0 and "40 imported" in out, out
    # Everyone waits in the declaration service's outbox, on disk, while the index is down.
    stack.start(("risk_index",))
    stack.wait_healthy()
    everyone = [*one_by_one, *imported]
    for province in ("beijing", "hebei"):
        want = {_hash(stack, province, i) for i in everyone}
        exported = eventually(
            f"all {len(everyone)} people in {province}'s export",
            functools.partial(_exported_hashes, stack, tmp_path, province),
            want.issubset,
            timeout_s=60,
        )
        assert exported == want | before[province], sorted(exported - want - before[province])
    # No raw ID number crossed to the risk index for this (its log names none).
    log = stack.log_path("risk_index").read_text(encoding="utf-8", errors="replace")
    assert not [i for i in everyone if i in log]
    # Both services hash with the same keys (the development data directory's): same key ids.
    declaration_log = stack.log_path("declaration").read_text(encoding="utf-8", errors="replace")
    key_ids = [
        {line.split("show the same): ", 1)[1] for line in text.splitlines() if "key ids" in line}
        for text in (declaration_log, log)
    ]
    assert len(key_ids[0]) == 1 and key_ids[0] == key_ids[1], key_ids


def test_a_province_exchanges_only_its_own_status(stack: Stack) -> None:
    code, out = invoke(stack, "province", "list")
    assert code == 0 and "beijing" in out and "hebei" in out and "direct" in out, out
    assert "missing" not in out  # the development data directory made both keys
    hebei = _province(stack, "hebei")
    with pytest.raises(grpc.RpcError) as refused:
        list(hebei.ExportStatus(province_pb2.ExportStatusRequest(province="beijing")))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    other = province_pb2_grpc.ProvinceExchangeServiceStub(
        open_channel(
            stack.peers.risk_index,
            credentials=partner_credentials(stack.peers.risk_index, "cold_chain", "demo"),
        )
    )
    with pytest.raises(grpc.RpcError) as wrong_kind:
        list(other.ExportStatus(province_pb2.ExportStatusRequest(province="beijing")))
    assert wrong_kind.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(wrong_kind.value) == "PARTNER_KIND_NOT_ALLOWED"
    # A province no one configured: its partner is told so.
    with pytest.raises(grpc.RpcError) as unknown:
        list(_province(stack, "liaoning").ExportStatus(province_pb2.ExportStatusRequest()))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "beijing, hebei" in (unknown.value.details() or "")

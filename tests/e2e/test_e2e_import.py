"""`healthcode import` and `healthcode seed` against the four real processes: a file with bad
rows, a run killed with SIGKILL and resumed, a re-run that changes nothing, and the imported
people reaching the risk index and the colour replica (through RegisterPeople, one call per
chunk)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from clients import population
from clients.channel import open_channel
from clients.stack import REPO, Stack
from tests.e2e.cli_support import invoke
from tests.e2e.waits import eventually

ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e")


def colour_persons(stack: Stack) -> int:
    with open_channel(stack.peers.colour) as channel:
        try:
            status = colour_pb2_grpc.ColourServiceStub(channel).GetStatus(
                colour_pb2.GetStatusRequest()
            )
        except grpc.RpcError:
            return -1
    return int(status.person_count)


def source_rows(stack: Stack) -> dict[str, int]:
    with open_channel(stack.peers.risk_index) as channel:
        listed = risk_index_pb2_grpc.RiskIndexServiceStub(channel).ListSources(
            risk_index_pb2.ListSourcesRequest()
        )
    return {s.name: int(s.row_count) for s in listed.sources}


def write_city(path: Path, count: int, seed: int) -> list[population.SyntheticPerson]:
    city = population.SyntheticCity(count, seed)
    population.write_people(path, city, on_block=lambda _: None)
    return [p for block in city.blocks() for p in block]


def test_an_import_reports_bad_rows_reaches_every_service_and_is_idempotent(
    stack: Stack, tmp_path: Path
) -> None:
    people_csv = tmp_path / "people.csv"
    people = write_city(people_csv, 3000, 31)
    first = people[0]
    bad_id = first.id_number[:-1] + ("0" if first.id_number[-1] != "0" else "1")
    with people_csv.open("a", encoding="utf-8") as f:
        f.write(f"{bad_id},赵六,,,120101,self,\n")  # line 3002: check digit
        f.write(f"{people[1].id_number},别名,,,120101,self,\n")  # 3003: another name
        f.write(f"{people[2].id_number},{people[2].name},,,atlantis,self,\n")  # 3004
        f.write(f"{people[3].id_number},{people[3].name},,,120101,grid_worker,\n")  # 3005
    code, out = invoke(stack, "import", str(people_csv), "--batch", "500", "--per-call", "1000")
    assert code == 0, out
    assert "3,000 imported" in out and "4 rejected" in out, out
    report = population.read_report(population.default_report(people_csv))
    assert [(line, f) for line, f, _ in report] == [
        (3002, "id_number"),
        (3003, "name"),
        (3004, "district"),
        (3005, "registrar"),
    ]
    raw_numbers = (
        {p.id_number for p in people[:50]} | {bad_id} | {ph for p in people[:50] for ph in p.phones}
    )
    shown = out + population.default_report(people_csv).read_text(encoding="utf-8")
    assert not any(n in shown for n in raw_numbers)

    # The risk index hears of the people in one RegisterPeople per chunk; the colour replica
    # follows it. (Both need the risk index's RegisterPeople: before it, the outbox waits.)
    eventually(
        "the colour replica to hold 3,000 people",
        lambda: colour_persons(stack),
        lambda n: n == 3000,
        timeout_s=60,
    )
    eventually(
        "3,000 residence rows", lambda: source_rows(stack).get("residence", 0), lambda n: n == 3000
    )

    with open_channel(stack.peers.declaration) as channel:
        got = declaration_pb2_grpc.DeclarationServiceStub(channel).GetPerson(
            declaration_pb2.GetPersonRequest(
                actor=ADMIN, person=common_pb2.PersonRef(id_number=first.id_number)
            )
        )
    assert got.person.residence_county == first.district
    assert len(got.person.phones) == len(first.phones)

    code, out = invoke(stack, "import", str(people_csv))
    assert code == 0 and "imported already" in out, out
    code, out = invoke(stack, "import", str(people_csv), "--restart")
    assert code == 0 and "0 imported, 3,000 already present" in out, out


def test_an_import_killed_mid_way_resumes_after_the_acknowledged_line(
    stack: Stack, tmp_path: Path
) -> None:
    people_csv = tmp_path / "big.csv"
    count = 30_000
    write_city(people_csv, count, 32)
    checkpoint = population.default_checkpoint(people_csv)
    command = [
        sys.executable, "-m", "clients.cli", "--declaration", stack.peers.declaration,
        "import", str(people_csv), "--batch", "1000", "--per-call", "2000",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=stack.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def progress() -> int:
            if proc.poll() is not None:
                return -1
            try:
                return int(json.loads(checkpoint.read_text())["last_line"])
            except (OSError, ValueError, KeyError):
                return 0

        line = eventually("a first acknowledged call", progress, lambda n: n != 0, 60)
        os.kill(proc.pid, signal.SIGKILL)  # as a crash: no cleanup
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert line > 0, "the import finished before it could be killed"
    saved = population.Checkpoint.load(checkpoint)
    assert saved is not None and not saved.complete and saved.last_line >= line

    code, out = invoke(stack, "import", str(people_csv), "--batch", "1000")
    assert code == 0, out
    assert f"resumed after line {saved.last_line:,}" in out, out
    done = population.Checkpoint.load(checkpoint)
    assert done is not None and done.complete and done.rejected == 0
    # Rows of the killed call that were stored but never acknowledged come back as present.
    assert done.imported + done.already_present == count
    assert done.imported >= count - saved.last_line
    eventually(
        "every person in the colour replica",
        lambda: colour_persons(stack),
        lambda n: n == count,
        timeout_s=90,
    )


def test_seed_writes_a_city_and_loads_people_and_feeds(stack: Stack, tmp_path: Path) -> None:
    out_dir = tmp_path / "seed"
    code, out = invoke(stack, "seed", "--people", "2500", "--seed", "4", "--out", str(out_dir))
    assert code == 0, out
    assert "2,500 imported" in out and "graded" in out and "rows accepted" in out, out
    assert (out_dir / "people-2500-s4.csv").is_file()
    rows = source_rows(stack)
    assert all(rows.get(s, 0) > 0 for s in population.feed_sources()), rows
    eventually(
        "the seeded people in the colour replica",
        lambda: colour_persons(stack),
        lambda n: n == 2500,
        timeout_s=60,
    )
    # Again: the same files, nothing new.
    code, out = invoke(stack, "seed", "--people", "2500", "--seed", "4", "--out", str(out_dir))
    assert code == 0 and "imported already" in out and "0 rows accepted" in out, out

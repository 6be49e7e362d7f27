"""`healthcode import` without a server: reading people files, what the client refuses itself,
and the checkpoint that makes a run resumable (a stand-in stub answers ImportPeople)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from healthcode.v1 import common_pb2, declaration_pb2

from clients import population
from clients.population import Checkpoint, FileFormat, import_row, records

ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="ops")
ID = "120101199001011237"


def read(text: str, fmt: FileFormat) -> list[tuple[int, object]]:
    return list(records(io.StringIO(text), fmt))


def test_csv_rows_carry_their_line_even_across_a_quoted_newline() -> None:
    text = (
        "\ufeffID_Number,Name,Phone,County\n"
        f'{ID},"张\n三",13812345678;13987654321,120101\n'
        "\n"
        "too,few\n"
        f"{ID},李四,,和平区\n"
    )
    got = read(text.removeprefix("\ufeff"), FileFormat.csv)
    assert [n for n, _ in got] == [3, 5, 6]
    assert got[1][1] == ("row", "2 fields where the header has 4")
    first = got[0][1]
    assert isinstance(first, dict) and first["phones"] == "13812345678;13987654321"
    assert first["district"] == "120101"  # aliases: phone -> phones, county -> district


def test_a_csv_without_the_needed_columns_is_refused_whole() -> None:
    with pytest.raises(population.PeopleFileError):
        read("who,phones\nx,y\n", FileFormat.csv)


def test_jsonl_lines_that_are_not_objects_are_reported_not_fatal() -> None:
    text = f'{{"id_number": "{ID}", "name": "张三"}}\n\n[1, 2]\n{{"id_number": \n'
    got = read(text, FileFormat.jsonl)
    assert [n for n, _ in got] == [1, 3, 4]
    assert got[1][1] == ("row", "not a JSON object")
    assert got[2][1][0] == "row"  # type: ignore[index]
    assert ID not in str(got[1:])


def test_import_row_maps_columns_and_names_what_it_cannot_read() -> None:
    row = import_row(
        7,
        {
            "id_number": ID,
            "name": " 张三 ",
            "phones": ["13812345678", 13987654321],
            "district": "滨海新区",
            "registered_by": "grid-worker",
            "registrar": "grid-bh-001",
        },
    )
    assert isinstance(row, declaration_pb2.ImportRow)
    assert (row.line, row.name, list(row.phones)) == (7, "张三", ["13812345678", "13987654321"])
    assert row.residence_county == 120116
    assert (row.registered_by, row.registrar_principal) == (
        common_pb2.ACTOR_ROLE_GRID_WORKER,
        "grid-bh-001",
    )
    family = import_row(8, {"id_number": ID, "registered_by": "family", "registrar": ID})
    assert isinstance(family, declaration_pb2.ImportRow)
    assert family.registrar_id_number == ID and not family.registrar_principal
    assert import_row(9, {"id_number": ID}).registered_by == common_pb2.ACTOR_ROLE_CITIZEN  # type: ignore[union-attr]
    problems = import_row(
        10,
        {"id_number": ID, "district": "nowhere", "registered_by": "boss", "phones": {"a": 1}},
    )
    assert problems == [
        ("phones", "a list of numbers, or numbers separated by ;"),
        ("district", "a 6-digit county code or a Tianjin district name"),
        ("registered_by", "self, family_proxy or grid_worker"),
    ]
    assert import_row(11, {"id_number": ID, "registrar": "x"}) == [
        ("registrar", "only with family_proxy (their ID number) or grid_worker")
    ]


class Down(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class Unknown(Down):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "this person has not registered"


class StandIn:
    """Answers ImportPeople like the service: rows with an empty name are rejected. Fails the
    call numbered `fail_on` (after reading its rows) as a crash would. GetPerson finds the
    people it stored (a resumed import asks whether the service still holds the file)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.calls: list[list[declaration_pb2.ImportPeopleRequest]] = []
        self.stored: set[str] = set()

    def GetPerson(self, request: declaration_pb2.GetPersonRequest) -> object:
        if request.person.id_number not in self.stored:
            raise Unknown()
        return declaration_pb2.GetPersonResponse()

    def ImportPeople(
        self, requests: Iterator[declaration_pb2.ImportPeopleRequest], timeout: float
    ) -> declaration_pb2.ImportPeopleResponse:
        got = list(requests)
        self.calls.append(got)
        assert got[0].actor == ADMIN and not got[0].rows
        if self.fail_on == len(self.calls):
            raise Down()
        reply = declaration_pb2.ImportPeopleResponse()
        for message in got[1:]:
            reply.chunks += 1
            for row in message.rows:
                reply.last_line = max(reply.last_line, row.line)
                if not row.name:
                    reply.rejected += 1
                    reply.rejections.add(line=row.line, field="name", reason="a name is required")
                elif row.id_number in self.stored:
                    reply.already_present += 1
                else:
                    self.stored.add(row.id_number)
                    reply.imported += 1
        return reply


def people_file(tmp_path: Path, n: int = 25) -> Path:
    lines = ["id_number,name,phones,district,registered_by,registrar"]
    for i in range(n):
        name = "" if i == 7 else f"人{i}"
        district = "nowhere" if i == 12 else "120101"
        lines.append(f"id{i:04d},{name},,{district},self,")
    path = tmp_path / "people.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(stub: StandIn, path: Path, **kw: object) -> population.ImportResult:
    return population.import_file(
        stub,  # type: ignore[arg-type]
        path,
        actor=ADMIN,
        batch=4,
        per_call=8,
        **kw,  # type: ignore[arg-type]
    )


def test_an_import_sends_chunks_and_checkpoints_after_each_call(tmp_path: Path) -> None:
    path = people_file(tmp_path)
    stub = StandIn()
    progress: list[tuple[int, int]] = []
    result = run(stub, path, on_progress=lambda b, r: progress.append((b, r)))
    c = result.checkpoint
    assert (c.imported, c.rejected, c.last_line, c.complete) == (23, 2, 26, True)
    assert [len(m.rows) for call in stub.calls for m in call[1:]] == [4] * 6
    assert len(stub.calls) == 3  # 8 rows a call
    assert progress[-1] == (path.stat().st_size, 24)
    saved = Checkpoint.load(population.default_checkpoint(path))
    assert saved == c
    assert population.read_report(result.report) == [
        (9, "name", "a name is required"),
        (14, "district", "a 6-digit county code or a Tianjin district name"),
    ]
    # Done is done: a second run sends nothing.
    again = run(stub, path)
    assert again.already_complete and len(stub.calls) == 3


def test_a_crashed_import_resumes_after_the_last_acknowledged_line(tmp_path: Path) -> None:
    path = people_file(tmp_path)
    crashing = StandIn(fail_on=2)
    with pytest.raises(grpc.RpcError):
        run(crashing, path)
    saved = Checkpoint.load(population.default_checkpoint(path))
    assert saved is not None and (saved.last_line, saved.imported, saved.complete) == (9, 7, False)
    assert population.read_report(population.default_report(path)) == [
        (9, "name", "a name is required")
    ]

    resumed_stub = StandIn()  # the same service, back: it holds what it acknowledged
    resumed_stub.stored = set(crashing.stored)
    result = run(resumed_stub, path)
    assert result.resumed_after == 9 and not result.checkpoint_was_stale
    sent = [row.line for call in resumed_stub.calls for m in call[1:] for row in m.rows]
    assert sent[0] == 10 and 9 not in sent  # acknowledged lines are not read again
    c = result.checkpoint
    assert (c.imported, c.rejected, c.last_line, c.complete) == (23, 2, 26, True)
    # The report holds each rejection once, although the crashed call had read line 14.
    assert [line for line, _, _ in population.read_report(result.report)] == [9, 14]


def test_a_checkpoint_of_another_file_is_refused(tmp_path: Path) -> None:
    path = people_file(tmp_path)
    run(StandIn(), path)
    path.write_text("id_number,name\nother,file\n", encoding="utf-8")
    with pytest.raises(population.PeopleFileError, match="--restart"):
        run(StandIn(), path)
    result = run(StandIn(), path, restart=True)
    assert (result.checkpoint.imported, result.checkpoint.complete) == (1, True)
    assert json.loads(population.default_checkpoint(path).read_text())["last_line"] == 2


def test_rows_appended_after_a_finished_import_are_imported_by_the_next_run(
    tmp_path: Path,
) -> None:
    path = people_file(tmp_path, n=5)
    stub = StandIn()
    first = run(stub, path)
    assert first.checkpoint.complete and first.checkpoint.imported == 5
    assert population.is_complete(path)
    with path.open("a", encoding="utf-8") as f:
        f.write("id9000,后来,,120101,self,\nid9001,又来,,120101,self,\n")
    assert not population.is_complete(path)
    again = run(stub, path)
    assert not again.already_complete and again.resumed_after == 6
    assert (again.checkpoint.imported, again.checkpoint.last_line) == (7, 8)
    assert run(stub, path).already_complete


def test_a_checkpoint_for_a_service_without_the_people_imports_from_the_first_line(
    tmp_path: Path,
) -> None:
    path = people_file(tmp_path)
    assert run(StandIn(), path).checkpoint.complete
    # A new data directory behind the same address: the checkpoint says done, the service
    # holds nobody. Everything is sent again (what is there would be skipped).
    fresh = StandIn()
    result = run(fresh, path)
    assert result.checkpoint_was_stale and not result.already_complete
    assert result.resumed_after == 0
    c = result.checkpoint
    assert (c.imported, c.rejected, c.last_line, c.complete) == (23, 2, 26, True)
    assert len(fresh.stored) == 23
    # Against the service that holds them, a finished import stays finished.
    assert run(fresh, path).already_complete

"""The exam candidate list (R12): every row validated and reported by line; decisions."""

from __future__ import annotations

from pathlib import Path

import healthcode_matcher
import pytest
from healthcode.v1 import common_pb2

from clients import exams
from clients.exams import Decision

IDS = healthcode_matcher.synthetic_id_numbers(6, 31).decode().split()
HEADER = "candidate_number,name,id_number\n"


def read(text: str, max_rows: int = exams.MAX_CANDIDATES) -> tuple[list, list]:
    return exams.read_candidates(text.splitlines(keepends=True), max_rows)


def test_valid_rows_become_candidates_with_their_lines() -> None:
    valid, rejected = read(HEADER + f"A1,张三,{IDS[0]}\n\nA2, 李四 ,{IDS[1].lower()}\n")
    assert rejected == []
    assert [(c.line, c.number, c.name) for c in valid] == [(2, "A1", "张三"), (4, "A2", "李四")]
    assert valid[1].id_number == IDS[1].upper()  # normalised by the matcher


def test_each_bad_row_is_reported_by_line_field_and_why() -> None:
    wrong_check = IDS[2][:-1] + ("1" if IDS[2][-1] != "1" else "2")
    valid, rejected = read(
        HEADER
        + f"A1,张三,{IDS[0]}\n"
        + f"A2,李四,{wrong_check}\n"  # line 3: check character
        + f",王五,{IDS[3]}\n"  # line 4: no candidate number
        + "A4,赵六,\n"  # line 5: no ID number
        + f"A1,孙七,{IDS[4]}\n"  # line 6: candidate number again
        + f"A6,周八,{IDS[0]}\n"  # line 7: ID number again
        + f"A7,,{IDS[5]}\n"  # line 8: no name
    )
    assert [c.number for c in valid] == ["A1"]
    by_line = {(r.line, r.field): r.reason for r in rejected}
    assert set(by_line) == {
        (3, "id_number"),
        (4, "candidate_number"),
        (5, "id_number"),
        (6, "candidate_number"),
        (7, "id_number"),
        (8, "name"),
    }
    assert "check" in by_line[(3, "id_number")]
    assert wrong_check not in by_line[(3, "id_number")]  # never echoes the number
    assert by_line[(6, "candidate_number")] == "the same candidate number as line 2"
    assert by_line[(7, "id_number")] == "the same ID number as line 2"
    assert by_line[(5, "id_number")] == "id_number is missing"


def test_chinese_headers_are_understood() -> None:
    valid, rejected = read(f"准考证号,姓名,身份证号\nK9,张三,{IDS[0]}\n")
    assert rejected == [] and valid[0].number == "K9"


def test_a_header_without_the_columns_is_refused() -> None:
    with pytest.raises(exams.CandidateFileError, match="missing: id_number"):
        read(f"candidate_number,name\nA1,{IDS[0]}\n")


def test_more_rows_than_the_limit_are_refused_with_the_line() -> None:
    rows = "".join(f"A{i},张三,{IDS[i]}\n" for i in range(4))
    with pytest.raises(exams.CandidateFileError, match="more than 3 candidates \\(line 5\\)"):
        read(HEADER + rows, max_rows=3)
    valid, _ = read(HEADER + rows[: rows.rindex("A3")], max_rows=3)
    assert len(valid) == 3


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes((HEADER + f"A1,张三,{IDS[0]}\n").encode("gbk"))
    with pytest.raises(exams.CandidateFileError, match="UTF-8"):
        exams.read_candidate_file(path)


def test_only_green_passes() -> None:
    assert exams.decide(common_pb2.COLOUR_GREEN) == (Decision.PASS, "")
    assert exams.decide(common_pb2.COLOUR_YELLOW) == (Decision.REFER, "")
    assert exams.decide(common_pb2.COLOUR_RED) == (Decision.REFER, "")
    assert exams.decide(common_pb2.COLOUR_UNSPECIFIED) == (Decision.REFER, "not registered")
    assert exams.decide(exams.ENTRY_REFUSED)[0] is Decision.REFER


def test_batches_carry_the_organiser_once_and_every_id_number() -> None:
    valid, _ = read(HEADER + "".join(f"A{i},张三,{IDS[i]}\n" for i in range(5)))
    messages = list(exams.batch_requests(valid, "gaokao-2020", batch=2))
    assert [len(m.id_numbers) for m in messages] == [2, 2, 1]
    assert messages[0].actor.role == common_pb2.ACTOR_ROLE_PARTNER
    assert messages[0].actor.principal == "gaokao-2020"
    assert not messages[1].HasField("actor")
    assert [i for m in messages for i in m.id_numbers] == IDS[:5]


def test_the_result_file_has_masked_names_and_no_id_numbers(tmp_path: Path) -> None:
    valid, _ = read(HEADER + f"A1,张三丰,{IDS[0]}\n")
    path = tmp_path / "out.csv"
    exams.write_results(path, [exams.Result(valid[0], Decision.REFER, "not registered")])
    text = path.read_text(encoding="utf-8")
    assert text == "candidate_number,masked_name,decision,note\nA1,张**,refer,not registered\n"
    assert IDS[0] not in text

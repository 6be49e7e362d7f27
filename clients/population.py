"""Bulk population import (R1, R3): a people file -> DeclarationService.ImportPeople, resumable;
and a reproducible synthetic city to feed it (`healthcode import`, `healthcode seed`).

A people file is CSV with a header, or JSONL, one person a line::

    id_number,name,phones,transit_card,district,registered_by,registrar
    120101199001011234,张三,13812345678;13987654321,,120101,self,
    120104194503021236,李四,,TJ0000123456,南开区,family_proxy,120104197001011233
    120116193810100017,王五,,,120116,grid_worker,grid-bh-017

    {"id_number": "120101199001011234", "name": "张三", "phones": ["13812345678"],
     "district": 120101, "registered_by": "self"}

`phones` holds any number of mobile numbers separated by `;` (a list in JSONL); `district` is a
6-digit GB/T 2260 code or a Tianjin district name (和平区); `registered_by` is `self`
(default), `family_proxy` (`registrar`: the family member's ID number, optional) or
`grid_worker` (`registrar`: the grid worker's account id, required).

The file is read as a stream and sent in chunks (one transaction and one risk-index change
each); every call's reply is durable before it comes, and after each the checkpoint beside the
file records the last line acknowledged, so a run killed at any moment resumes after that line.
The service is idempotent by person, so the few rows resent after a crash are "already present".
Rows the client or the service refuses are written to a report (line, field, why), never a value.

The synthetic city is deterministic by (size, seed): person i is the same whatever the chunk
size, ID numbers are distinct by construction (a permutation of the ID-number space, not a
sample), and it is generated in blocks, so memory stays bounded at any size (18 M people).
"""

from __future__ import annotations

import bisect
import csv
import enum
import hashlib
import itertools
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import grpc
from healthcode.v1 import common_pb2, declaration_pb2, declaration_pb2_grpc

from clients import feedgen
from clients.feedgen import PHONE_PREFIXES, TIANJIN_DISTRICTS
from services._common.sources import SOURCES

# --- the people file ---------------------------------------------------------------------------

COLUMNS = ("id_number", "name", "phones", "transit_card", "district", "registered_by", "registrar")
# Column names accepted for the same thing.
_ALIASES = {"phone": "phones", "residence_county": "district", "county": "district"}
_REGISTERED_BY = {
    "": common_pb2.ACTOR_ROLE_CITIZEN,
    "self": common_pb2.ACTOR_ROLE_CITIZEN,
    "citizen": common_pb2.ACTOR_ROLE_CITIZEN,
    "family": common_pb2.ACTOR_ROLE_FAMILY_PROXY,
    "family_proxy": common_pb2.ACTOR_ROLE_FAMILY_PROXY,
    "family-proxy": common_pb2.ACTOR_ROLE_FAMILY_PROXY,
    "grid": common_pb2.ACTOR_ROLE_GRID_WORKER,
    "grid_worker": common_pb2.ACTOR_ROLE_GRID_WORKER,
    "grid-worker": common_pb2.ACTOR_ROLE_GRID_WORKER,
}
_DISTRICT_BY_NAME = {
    **{name: code for code, (name, _) in TIANJIN_DISTRICTS.items()},
    **{"天津市" + name: code for code, (name, _) in TIANJIN_DISTRICTS.items()},
}
_PHONE_SEPARATORS = re.compile(r"[;|\s]+")
# The service's field names, as the file's columns name them in the report.
_COLUMN_OF_FIELD = {
    "residence_county": "district",
    "registrar_principal": "registrar",
    "registrar_id_number": "registrar",
}

Problem = tuple[str, str]  # (column, why): never the value


class FileFormat(enum.StrEnum):
    auto = "auto"
    csv = "csv"
    jsonl = "jsonl"


class PeopleFileError(ValueError):
    """The file cannot be read as a people file at all (no header, wrong columns)."""


def file_format(path: Path, fmt: FileFormat) -> FileFormat:
    if fmt != FileFormat.auto:
        return fmt
    return FileFormat.csv if path.suffix.lower() == ".csv" else FileFormat.jsonl


class CountingLines:
    """A text file's lines, counting the bytes consumed (the progress bar's position)."""

    def __init__(self, binary: IO[bytes]) -> None:
        self._file = binary
        self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        first = True
        for raw in self._file:
            self.bytes += len(raw)
            text = raw.decode("utf-8", errors="replace")
            if first:
                text = text.removeprefix("\ufeff")
                first = False
            yield text


def records(
    lines: Iterable[str], fmt: FileFormat
) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    """(line number, record) of each row, or (line, problem) for a row that cannot be read.
    A CSV record's line is the line it ends on (a quoted field may span lines)."""
    if fmt == FileFormat.csv:
        reader = csv.reader(iter(lines))
        header = next(reader, None)
        if header is None:
            return
        names = [_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in header]
        if "id_number" not in names or "name" not in names:
            raise PeopleFileError("the CSV header needs at least the columns id_number and name")
        for values in reader:
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) != len(names):
                why = f"{len(values)} fields where the header has {len(names)}"
                yield reader.line_num, ("row", why)
                continue
            yield reader.line_num, {n: v.strip() for n, v in zip(names, values, strict=True)}
        return
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, ("row", f"not JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(rec, dict):
            yield n, ("row", "not a JSON object")
            continue
        yield n, {_ALIASES.get(str(k).lower(), str(k).lower()): v for k, v in rec.items()}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def import_row(line: int, rec: Mapping[str, Any]) -> declaration_pb2.ImportRow | list[Problem]:
    """A record -> ImportRow, or what the client can already tell is wrong with it (the service
    validates the identifiers and names)."""
    problems: list[Problem] = []
    row = declaration_pb2.ImportRow(
        line=line,
        id_number=_text(rec.get("id_number")),
        name=_text(rec.get("name")),
        transit_card=_text(rec.get("transit_card")),
    )
    phones = rec.get("phones")
    if isinstance(phones, list):
        row.phones.extend(_text(p) for p in phones if _text(p))
    elif isinstance(phones, str | int):
        row.phones.extend(p for p in _PHONE_SEPARATORS.split(str(phones)) if p)
    elif phones is not None:
        problems.append(("phones", "a list of numbers, or numbers separated by ;"))
    district = _text(rec.get("district"))
    if district:
        if district.isdigit() and len(district) == 6:
            row.residence_county = int(district)
        elif district in _DISTRICT_BY_NAME:
            row.residence_county = _DISTRICT_BY_NAME[district]
        else:
            problems.append(("district", "a 6-digit county code or a Tianjin district name"))
    by = _text(rec.get("registered_by")).lower()
    role = _REGISTERED_BY.get(by)
    registrar = _text(rec.get("registrar"))
    if role is None:
        problems.append(("registered_by", "self, family_proxy or grid_worker"))
    else:
        row.registered_by = role
        if role == common_pb2.ACTOR_ROLE_GRID_WORKER:
            row.registrar_principal = registrar
        elif role == common_pb2.ACTOR_ROLE_FAMILY_PROXY:
            row.registrar_id_number = registrar
        elif registrar:
            problems.append(
                ("registrar", "only with family_proxy (their ID number) or grid_worker")
            )
    return problems or row


def column_of(service_field: str) -> str:
    """The file's column for a field the service names (`registrar_principal` -> registrar)."""
    return _COLUMN_OF_FIELD.get(service_field, service_field)


# --- checkpoint and report ---------------------------------------------------------------------


FINGERPRINT_BYTES = 64 * 1024


def fingerprint(path: Path, size: int = FINGERPRINT_BYTES) -> str:
    """What ties a checkpoint to its file: the digest of its first `size` bytes (rows appended
    later keep it, an edited beginning does not)."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


@dataclass
class Checkpoint:
    """How far an import got: every line up to `last_line` is acknowledged (stored or
    reported), and the report holds `report_bytes` bytes of it."""

    file: str
    fingerprint: str
    fingerprint_bytes: int = FINGERPRINT_BYTES
    last_line: int = 0
    imported: int = 0
    already_present: int = 0
    updated: int = 0
    rejected: int = 0
    report_bytes: int = 0
    complete: bool = False  # read to the end, when the file had `size` bytes
    size: int = 0

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            raise PeopleFileError(
                f"{path} is not a checkpoint ({e}); remove it or --restart"
            ) from e

    def save(self, path: Path) -> None:
        """Atomically and durably: a crash leaves the old checkpoint or the new one."""
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


REPORT_HEADER = "line,field,reason\n"


def default_checkpoint(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoint.json")


def default_report(path: Path) -> Path:
    return path.with_name(path.name + ".rejected.csv")


def is_complete(path: Path, checkpoint_path: Path | None = None) -> bool:
    """Whether the checkpoint says this file was imported to its end (and it has not grown)."""
    try:
        saved = Checkpoint.load(checkpoint_path or default_checkpoint(path))
    except PeopleFileError:
        return False
    return (
        saved is not None
        and saved.complete
        and saved.size == path.stat().st_size
        and saved.fingerprint == fingerprint(path, saved.fingerprint_bytes)
    )


def read_report(path: Path) -> list[tuple[int, str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [(int(r["line"] or 0), r["field"], r["reason"]) for r in csv.DictReader(f)]


# --- the import --------------------------------------------------------------------------------


@dataclass
class ImportResult:
    checkpoint: Checkpoint
    checkpoint_path: Path
    report: Path
    resumed_after: int  # the checkpoint's line when this run started (0: from the top)
    rows_sent: int = 0  # rows this run sent
    already_complete: bool = False
    # The checkpoint was for a service that does not hold the file's people: sent again.
    checkpoint_was_stale: bool = False


@dataclass
class _Segment:
    """What one call covers: filled in by the request generator as grpc pulls it."""

    last_line: int = 0
    rows: int = 0
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    rejected: int = 0
    eof: bool = False


Progress = Callable[[int, int], None]  # (bytes read, rows sent this run)


# How many of a file's first people a resumed import asks the service about.
CHECKPOINT_PROBES = 5


def _service_has_file(
    stub: declaration_pb2_grpc.DeclarationServiceStub,
    path: Path,
    kind: FileFormat,
    actor: common_pb2.Actor,
) -> bool:
    """Whether the service holds any of the file's first people: a checkpoint only holds for
    the service it was written against."""
    asked = 0
    with path.open("rb") as binary:
        for _line, rec in records(CountingLines(binary), kind):
            id_number = _text(rec.get("id_number")) if isinstance(rec, dict) else ""
            if not id_number:
                continue
            request = declaration_pb2.GetPersonRequest(
                actor=actor, person=common_pb2.PersonRef(id_number=id_number)
            )
            try:
                stub.GetPerson(request)
                return True
            except grpc.RpcError as e:
                # NOT_FOUND: not there; INVALID_ARGUMENT: a row the import rejected. Anything
                # else (the service is down) is the caller's to report.
                if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise
            asked += 1
            if asked >= CHECKPOINT_PROBES:
                break
    return False


def import_file(
    stub: declaration_pb2_grpc.DeclarationServiceStub,
    path: Path,
    *,
    actor: common_pb2.Actor,
    fmt: FileFormat = FileFormat.auto,
    batch: int = 10_000,
    per_call: int = 100_000,
    checkpoint_path: Path | None = None,
    report_path: Path | None = None,
    restart: bool = False,
    timeout_s: float = 10.0,
    on_progress: Progress = lambda _b, _r: None,
) -> ImportResult:
    """Stream `path` to ImportPeople, `batch` rows a message and `per_call` rows a call,
    checkpointing after each call. Raises grpc.RpcError (the checkpoint stays at the last
    acknowledged call) or PeopleFileError."""
    kind = file_format(path, fmt)
    checkpoint_path = checkpoint_path or default_checkpoint(path)
    report_path = report_path or default_report(path)
    saved = None if restart else Checkpoint.load(checkpoint_path)
    if saved is not None and saved.fingerprint != fingerprint(path, saved.fingerprint_bytes):
        raise PeopleFileError(
            f"{checkpoint_path} belongs to another file (or this one was edited at the top); "
            "pass --restart to import from the first line"
        )
    stale = (
        saved is not None and saved.last_line > 0 and not _service_has_file(stub, path, kind, actor)
    )
    if stale:
        # The checkpoint is for a service that no longer holds these people (a new data
        # directory, another deployment): send everything again; what is there is skipped.
        saved = None
    head = min(path.stat().st_size, FINGERPRINT_BYTES)
    checkpoint = saved or Checkpoint(str(path.resolve()), fingerprint(path, head), head)
    result = ImportResult(checkpoint, checkpoint_path, report_path, checkpoint.last_line)
    result.checkpoint_was_stale = stale
    if checkpoint.complete and checkpoint.size == path.stat().st_size:
        result.already_complete = True
        return result
    checkpoint.complete = False  # rows appended since: they are read after `last_line`
    if checkpoint.last_line == 0:
        report_path.write_text(REPORT_HEADER, encoding="utf-8")
        checkpoint.report_bytes = report_path.stat().st_size
    else:
        # Lines after the checkpoint are sent again: drop what an interrupted run reported.
        with report_path.open("ab") as f:
            f.truncate(checkpoint.report_bytes)
    # Enough time for a slow disk at 200 rows/s, plus the usual deadline.
    deadline = timeout_s + per_call / 200
    with path.open("rb") as binary:
        lines = CountingLines(binary)
        rows = ((n, r) for n, r in records(lines, kind) if n > checkpoint.last_line)
        pending = _Peekable(rows)
        while True:
            if pending.empty():
                checkpoint.complete, checkpoint.size = True, lines.bytes
                checkpoint.save(checkpoint_path)
                break
            segment = _Segment()

            def requests(
                seg: _Segment = segment,
            ) -> Iterator[declaration_pb2.ImportPeopleRequest]:
                yield declaration_pb2.ImportPeopleRequest(actor=actor)
                chunk: list[declaration_pb2.ImportRow] = []
                for line, rec in pending:
                    seg.last_line = line
                    parsed = rec if isinstance(rec, tuple) else import_row(line, rec)
                    if isinstance(parsed, declaration_pb2.ImportRow):
                        chunk.append(parsed)
                    else:
                        problems = [parsed] if isinstance(parsed, tuple) else parsed
                        seg.rejected += 1
                        seg.problems.extend((line, f, why) for f, why in problems)
                    if len(chunk) >= batch:
                        yield declaration_pb2.ImportPeopleRequest(rows=chunk)
                        seg.rows += len(chunk)
                        chunk = []
                        on_progress(lines.bytes, result.rows_sent + seg.rows)
                        if seg.rows >= per_call:
                            break
                else:
                    seg.eof = True
                if chunk:
                    yield declaration_pb2.ImportPeopleRequest(rows=chunk)
                    seg.rows += len(chunk)
                on_progress(lines.bytes, result.rows_sent + seg.rows)

            reply = stub.ImportPeople(requests(), timeout=deadline)
            result.rows_sent += segment.rows
            found = [
                (r.line, column_of(r.field), r.reason) for r in reply.rejections
            ] + segment.problems
            found.sort(key=lambda r: r[0])
            if reply.rejections_not_listed:
                found.append(
                    (
                        reply.last_line,
                        "",
                        f"{reply.rejections_not_listed} more reasons up to this line were "
                        + "not listed by the service",
                    )
                )
            checkpoint.report_bytes = _append_report(report_path, found)
            checkpoint.imported += reply.imported
            checkpoint.already_present += reply.already_present
            checkpoint.updated += reply.updated
            checkpoint.rejected += reply.rejected + segment.rejected
            checkpoint.last_line = max(segment.last_line, reply.last_line)
            checkpoint.complete = segment.eof or pending.empty()
            checkpoint.size = lines.bytes if checkpoint.complete else 0
            checkpoint.save(checkpoint_path)
            if checkpoint.complete:
                break
    on_progress(lines.bytes, result.rows_sent)
    return result


def _append_report(path: Path, rows: Sequence[tuple[int, str, str]]) -> int:
    """Append and fsync (the checkpoint written next counts these bytes); the new size."""
    with path.open("a", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


class _Peekable:
    """An iterator that can tell whether anything is left without losing it."""

    def __init__(self, it: Iterator[tuple[int, Any]]) -> None:
        self._it = it
        self._head: list[tuple[int, Any]] = []

    def empty(self) -> bool:
        if not self._head:
            try:
                self._head.append(next(self._it))
            except StopIteration:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        if self._head:
            return self._head.pop()
        return next(self._it)


# --- the synthetic city ------------------------------------------------------------------------

# People are generated this many at a time, each block from its own random stream: person i is
# the same whatever the import's chunk size, and memory holds one block.
BLOCK = 10_000
# The age reference: a 1950 birth is 70 years old.
REFERENCE_YEAR = 2020
# Birth regions that GB/T 2260 lists for every birth year 1935-2015 (stdnum checks this).
_REGIONS: tuple[int, ...] = (110101, 110105, 120101, 120102, 120103, 120104, 120105)
_REGIONS += (120106, 120110, 120111, 120112, 120113)
_BIRTH_FIRST = date(1935, 1, 1)
_BIRTH_DAYS = (date(2015, 12, 31) - _BIRTH_FIRST).days + 1
_ID_SPACE = len(_REGIONS) * _BIRTH_DAYS * 1000
_PHONE_SPACE = len(PHONE_PREFIXES) * 10**8
_CARD_SPACE = 10**10
MAX_SYNTHETIC_PHONES = 3
_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]
_REGION_SUMS = [
    sum(int(d) * w for d, w in zip(str(r), _WEIGHTS[:6], strict=True)) for r in _REGIONS
]
_SEQ_SUMS = [
    sum(int(d) * w for d, w in zip(f"{s:03d}", _WEIGHTS[14:], strict=True)) for s in range(1000)
]


@dataclass(frozen=True, slots=True)
class _Births:
    texts: list[str]  # YYYYMMDD by day index
    years: list[int]
    sums: list[int]  # the date digits' part of the GB 11643 weighted sum


_BIRTHS: list[_Births] = []


def _births() -> _Births:
    if not _BIRTHS:
        days = [_BIRTH_FIRST + timedelta(days=d) for d in range(_BIRTH_DAYS)]
        texts = [f"{d:%Y%m%d}" for d in days]
        sums = [sum(int(c) * w for c, w in zip(t, _WEIGHTS[6:14], strict=True)) for t in texts]
        _BIRTHS.append(_Births(texts, [d.year for d in days], sums))
    return _BIRTHS[0]


# Phones a person holds: (0, 1, 2, 3) weights, for people under 70 and from 70: 1.40 a person.
_PHONES_YOUNGER = (2, 52, 36, 10)
_PHONES_ELDERLY = (30, 55, 15, 0)
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂英华建国文军红梅玉兰志强海燕云飞晓东佳怡子涵浩然欣怡宇轩"
_DISTRICT_CODES = list(TIANJIN_DISTRICTS)
_DISTRICT_CUMULATIVE = list(itertools.accumulate(w for _, w in TIANJIN_DISTRICTS.values()))


@dataclass(frozen=True, slots=True)
class SyntheticPerson:
    """One row of the synthetic people file."""

    id_number: str
    name: str
    phones: tuple[str, ...]
    transit_card: str
    district: int
    registered_by: str  # self | family_proxy | grid_worker
    registrar: str  # the family member's ID number, or the grid worker's account id

    def as_csv(self) -> list[str]:
        return [
            self.id_number,
            self.name,
            ";".join(self.phones),
            self.transit_card,
            str(self.district),
            self.registered_by,
            self.registrar,
        ]


@dataclass(frozen=True, slots=True)
class _Permutation:
    """i -> (a * i + b) mod n, a bijection of range(n) since gcd(a, n) = 1: distinct numbers
    without remembering which were drawn."""

    a: int
    b: int
    n: int

    @classmethod
    def of(cls, n: int, seed: int, salt: int) -> _Permutation:
        rng = random.Random(seed * 1_000_003 + salt)
        a = rng.randrange(n // 3, n) | 1
        while math.gcd(a, n) != 1:
            a += 2
        return cls(a, rng.randrange(n), n)

    def __call__(self, i: int) -> int:
        return (self.a * i + self.b) % self.n


class SyntheticCity:
    """`count` people, deterministic by `seed`; `blocks()` yields them BLOCK at a time."""

    def __init__(self, count: int, seed: int) -> None:
        if count > _ID_SPACE:
            raise ValueError(f"at most {_ID_SPACE} synthetic people")
        self.count = count
        self.seed = seed
        self._ids = _Permutation.of(_ID_SPACE, seed, 1)
        self._phones = _Permutation.of(_PHONE_SPACE, seed, 2)
        self._cards = _Permutation.of(_CARD_SPACE, seed, 3)

    def id_number(self, i: int) -> tuple[str, int]:
        """Person i's ID number and birth year."""
        p = self._ids(i)
        p, seq = divmod(p, 1000)
        region, day = divmod(p, _BIRTH_DAYS)
        births = _births()
        # The GB 11643 weighted sum, from the parts' precomputed sums (the same digit as
        # feedgen.id_check_digit, which is ten times slower).
        total = _REGION_SUMS[region] + births.sums[day] + _SEQ_SUMS[seq]
        value = (12 - total % 11) % 11
        check = "X" if value == 10 else str(value)
        return f"{_REGIONS[region]}{births.texts[day]}{seq:03d}{check}", births.years[day]

    def phone(self, i: int, k: int) -> str:
        """Person i's k-th phone (k < 3): distinct over the whole city."""
        prefix, rest = divmod(self._phones(i * MAX_SYNTHETIC_PHONES + k), 10**8)
        return f"{PHONE_PREFIXES[prefix]}{rest:08d}"

    def blocks(self, start_block: int = 0) -> Iterator[list[SyntheticPerson]]:
        for b in range(start_block, math.ceil(self.count / BLOCK)):
            yield self.block(b)

    def block(self, b: int) -> list[SyntheticPerson]:
        rng = random.Random(self.seed * 7_368_787 + b * 31 + 17)
        out = []
        for i in range(b * BLOCK, min((b + 1) * BLOCK, self.count)):
            id_number, year = self.id_number(i)
            age = REFERENCE_YEAR - year
            weights = _PHONES_ELDERLY if age >= 70 else _PHONES_YOUNGER
            phones = tuple(self.phone(i, k) for k in range(_draw(rng, weights)))
            card = ""
            if rng.random() < (0.6 if age >= 65 else 0.01):  # elderly, and the disabled
                card = f"TJ{self._cards(i):010d}"
            district = _DISTRICT_CODES[
                bisect.bisect_right(_DISTRICT_CUMULATIVE, rng.random() * _DISTRICT_CUMULATIVE[-1])
            ]
            given = rng.choice(_GIVEN) + (rng.choice(_GIVEN) if rng.random() < 0.7 else "")
            name = rng.choice(_SURNAMES) + given
            by, registrar = "self", ""
            helped = not phones or age >= 80
            if helped or rng.random() < 0.03:
                if rng.random() < (0.75 if helped else 0.6):
                    # A family member: a neighbour in the list stands in for a relative.
                    relative = i ^ 1 if (i ^ 1) < self.count else i - 1
                    by = "family_proxy"
                    registrar = self.id_number(relative)[0] if relative >= 0 else ""
                else:
                    by, registrar = "grid_worker", f"grid-{district}-{rng.randrange(1, 400):03d}"
            out.append(SyntheticPerson(id_number, name, phones, card, district, by, registrar))
        return out


def _draw(rng: random.Random, weights: Sequence[int]) -> int:
    r = rng.random() * sum(weights)
    for value, w in enumerate(weights):
        r -= w
        if r < 0:
            return value
    return len(weights) - 1


def write_people(path: Path, city: SyntheticCity, on_block: Callable[[int], None] = print) -> int:
    """The city's people file (CSV), written aside and renamed when whole: a file at `path`
    is always complete. Returns the rows written."""
    tmp = path.with_name(path.name + ".part")
    n = 0
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for block in city.blocks():
            writer.writerows(p.as_csv() for p in block)
            n += len(block)
            on_block(len(block))
    os.replace(tmp, path)
    return n


def feed_sources() -> list[str]:
    """Every source the default rule set checks or clears by (the declared_* ones too: a
    benchmark wants every check to have rows), in catalogue order; never an attribute source
    (residence comes with the import)."""
    from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set

    rules = load_rule_set(DEFAULT_RULE_SET_PATH).rules
    used = {c.source for r in rules for c in (*r.checks, *r.clears)}
    return [name for name, s in SOURCES.items() if name in used and not s.attribute]


def write_feeds(
    path: Path,
    city: SyntheticCity,
    today: date,
    now_hour: int,
    *,
    rate: float = 0.01,
    sources: Sequence[str] | None = None,
    on_block: Callable[[int], None] = print,
) -> int:
    """Feed rows for the city, block by block (`feedgen.generate_feed` over each block, so
    the rates hold per block and memory holds one block's rows), as JSONL written aside."""
    names = list(sources) if sources is not None else feed_sources()
    tmp = path.with_name(path.name + ".part")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for b, block in enumerate(city.blocks()):
            people = [feedgen.Person(p.id_number, p.phones) for p in block]
            rows = feedgen.generate_feed(
                people,
                today,
                city.seed * 1_000_003 + b,
                rate=rate,
                sources=names,
                now_hour=now_hour,
            )
            n += feedgen.write_rows(rows, f, "jsonl")
            on_block(len(block))
    os.replace(tmp, path)
    return n

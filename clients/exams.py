"""Batch verification of an exam's candidate list (R12, issue 11 item 7), behind
`healthcode exam verify`.

The organiser's CSV (candidate number, name, ID number; up to 100,000 rows) is validated row by
row first: a missing field, an ID number whose check character is wrong (the matcher's own
GB 11643 validation, the same the services apply), a candidate number or an ID number that
appears twice. Rejected rows are reported by line, field and why. The valid rows go to
ColourService.EvaluateStream in its batch form (many ID numbers a message, one packed colour
byte a person), and each candidate gets a decision: **pass** (green) or **refer** (yellow, red,
or not registered: no data is not green). The result CSV holds the candidate number, the masked
name and the decision: never an ID number, never a colour's reasons (an exam hall needs no more).

The organiser calls as a partner of kind `exam_organiser`
(`spiffe://healthcode/partner/exam_organiser/<name>`): `partner_credentials` loads that
certificate (the cold-chain and province commands use it too).
"""

from __future__ import annotations

import csv
import enum
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import healthcode_matcher
from healthcode.v1 import colour_pb2, colour_pb2_grpc, common_pb2

from clients.credentials import ClientCredentials, for_target
from services._common.auth import Security
from services._common.config import ConfigError
from services._common.identifiers import mask_name
from services._common.pki import CA_KEY, TRUST_DOMAIN, DevPki

MAX_CANDIDATES = 100_000
# ID numbers a stream message: a tenth of the service's limit keeps messages near 200 KB, and
# the progress bar moves ten times over a 100,000-row list.
DEFAULT_BATCH = 10_000
MAX_NAME_CHARS = 64

# Column headers accepted for each field (the organiser's export may be in Chinese).
COLUMNS: dict[str, tuple[str, ...]] = {
    "candidate_number": ("candidate_number", "candidate", "准考证号", "考生号"),
    "name": ("name", "姓名"),
    "id_number": ("id_number", "id", "身份证号", "身份证号码"),
}
RESULT_COLUMNS = ("candidate_number", "masked_name", "decision", "note")
REJECTION_COLUMNS = ("line", "field", "reason")


class CandidateFileError(ValueError):
    """The file as a whole cannot be read (too many rows, no header, not UTF-8)."""


class Decision(enum.StrEnum):
    PASS = "pass"
    REFER = "refer"


@dataclass(frozen=True, slots=True)
class Candidate:
    line: int  # in the file, 1-based, the header being line 1
    number: str
    name: str
    id_number: str  # normalised; never written anywhere


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Result:
    candidate: Candidate
    decision: Decision
    note: str  # "not registered" for a refer without data; "" otherwise

    def row(self) -> list[str]:
        return [self.candidate.number, mask_name(self.candidate.name), self.decision, self.note]


# --- reading and validating ----------------------------------------------------------------


def _header_map(header: Sequence[str]) -> dict[str, int]:
    seen = [h.strip().lstrip("\ufeff").lower() for h in header]
    out: dict[str, int] = {}
    for field, names in COLUMNS.items():
        for i, h in enumerate(seen):
            if h in names:
                out[field] = i
                break
    missing = [f for f in COLUMNS if f not in out]
    if missing:
        raise CandidateFileError(
            f"line 1: the header must name the columns candidate_number, name, id_number "
            f"(missing: {', '.join(missing)}; found: {', '.join(header) or 'nothing'})"
        )
    return out


def read_candidates(
    lines: Iterable[str], max_rows: int = MAX_CANDIDATES
) -> tuple[list[Candidate], list[Rejection]]:
    """Every row of a candidate CSV, validated: (valid candidates, rejected rows). Raises
    CandidateFileError when the file has no usable header or more than `max_rows` rows."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise CandidateFileError("the file is empty: a header and one row per candidate") from None
    columns = _header_map(header)
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    numbers: dict[str, int] = {}
    id_numbers: dict[str, int] = {}
    rows = 0
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue  # a blank line is no candidate
        rows += 1
        if rows > max_rows:
            raise CandidateFileError(
                f"more than {max_rows:,} candidates (line {line}): split the list into files "
                f"of at most {max_rows:,} rows and verify each"
            )
        cells = {f: (record[i].strip() if i < len(record) else "") for f, i in columns.items()}
        problems = _row_problems(cells)
        number = cells["candidate_number"]
        if number and "candidate_number" not in problems:
            first = numbers.setdefault(number, line)
            if first != line:
                problems["candidate_number"] = f"the same candidate number as line {first}"
        normalised = ""
        if "id_number" not in problems:
            normalised = healthcode_matcher.normalise_id_number(cells["id_number"])
            first = id_numbers.setdefault(normalised, line)
            if first != line:
                problems["id_number"] = f"the same ID number as line {first}"
        if problems:
            rejections.extend(Rejection(line, f, why) for f, why in problems.items())
            continue
        candidates.append(Candidate(line, number, cells["name"], normalised))
    return candidates, rejections


def _row_problems(cells: dict[str, str]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for field in COLUMNS:
        if not cells[field]:
            problems[field] = f"{field} is missing"
    name = cells["name"]
    if name and (len(name) > MAX_NAME_CHARS or not name.isprintable()):
        problems["name"] = f"a name is 1-{MAX_NAME_CHARS} printable characters"
    if len(cells["candidate_number"]) > 64:
        problems["candidate_number"] = "at most 64 characters"
    if cells["id_number"]:
        try:
            healthcode_matcher.normalise_id_number(cells["id_number"])
        except ValueError as e:
            problems["id_number"] = str(e)  # the matcher's message never repeats the number
    return problems


def read_candidate_file(
    path: Path, max_rows: int = MAX_CANDIDATES
) -> tuple[list[Candidate], list[Rejection]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return read_candidates(f, max_rows)
    except UnicodeDecodeError as e:
        raise CandidateFileError(
            f"{path}: not UTF-8 text ({e.reason}); save it as UTF-8 CSV"
        ) from None


# --- deciding ----------------------------------------------------------------------------------


# A batch's colour byte for an entry the service refused (its problem is in entry_problems).
ENTRY_REFUSED = 255


def decide(colour: int) -> tuple[Decision, str]:
    """Pass only on green; everything else is referred to the exam's health checkpoint."""
    if colour == common_pb2.COLOUR_GREEN:
        return Decision.PASS, ""
    if colour == common_pb2.COLOUR_UNSPECIFIED:
        return Decision.REFER, "not registered"
    if colour == ENTRY_REFUSED:
        return Decision.REFER, "ID number refused by the service"
    return Decision.REFER, ""


def batch_requests(
    candidates: Sequence[Candidate], organiser: str, batch: int = DEFAULT_BATCH
) -> Iterator[colour_pb2.EvaluateStreamRequest]:
    """The stream's messages: `batch` ID numbers each, the organiser's actor on the first."""
    for n, start in enumerate(range(0, len(candidates), batch)):
        request = colour_pb2.EvaluateStreamRequest(
            correlation_id=str(n),
            id_numbers=[c.id_number for c in candidates[start : start + batch]],
        )
        if n == 0:
            request.actor.role = common_pb2.ACTOR_ROLE_PARTNER
            request.actor.principal = organiser
        yield request


def verify(
    channel: grpc.Channel,
    candidates: Sequence[Candidate],
    organiser: str,
    *,
    batch: int = DEFAULT_BATCH,
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[Result]:
    """Each candidate's decision, over one EvaluateStream (answers keep the order sent)."""
    stub = colour_pb2_grpc.ColourServiceStub(channel)
    results: list[Result] = []
    answers = stub.EvaluateStream(batch_requests(candidates, organiser, batch))
    for answer in answers:
        start = len(results)
        chunk = candidates[start : start + len(answer.colours)]
        for candidate, colour in zip(chunk, answer.colours, strict=True):
            decision, note = decide(colour)
            results.append(Result(candidate, decision, note))
        on_batch(len(chunk))
    if len(results) != len(candidates):
        raise RuntimeError(
            f"the colour service answered {len(results):,} of {len(candidates):,} candidates"
        )
    return results


def write_results(path: Path, results: Iterable[Result]) -> None:
    """The result CSV (candidate number, masked name, decision, note), written aside and
    renamed when whole."""
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(RESULT_COLUMNS)
        writer.writerows(r.row() for r in results)
    tmp.replace(path)


def rejections_csv(rejections: Iterable[Rejection]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REJECTION_COLUMNS)
    writer.writerows([r.line, r.field, r.reason] for r in rejections)
    return buf.getvalue()


# --- partner credentials -------------------------------------------------------------------------


def partner_identity(kind: str, name: str) -> str:
    """The certificate file name of a partner (partner-exam-organiser-demo)."""
    return f"partner-{kind.replace('_', '-')}-{name}"


def partner_credentials(
    target: str, kind: str, name: str, identity: str | None = None
) -> ClientCredentials | None:
    """Reach `target` as the partner `spiffe://healthcode/partner/<kind>/<name>`: its own
    certificate and no bearer token (a partner is known by its certificate). None for an
    insecure development stack. Where the credentials directory holds the development CA's key
    (`make run`, the tests), a missing certificate is issued; elsewhere ConfigError says which
    file to install."""
    base = for_target(target)
    if base is None:
        return None
    directory = base.security.directory
    identity = identity or partner_identity(kind, name)
    if not (directory / f"{identity}.pem").exists():
        if not (directory / CA_KEY).exists():
            raise ConfigError(
                f"no partner certificate {identity}.pem in {directory}: install the one the "
                f"platform issued for spiffe://{TRUST_DOMAIN}/partner/{kind}/{name}"
            )
        DevPki.create(directory).issue(f"spiffe://{TRUST_DOMAIN}/partner/{kind}/{name}", identity)
    return ClientCredentials(Security.load(directory, identity), None, base.secret)

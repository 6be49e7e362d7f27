"""Typed stubs of the Rust core. Checked against the runtime with `mypy.stubtest`.

Days are whole days since 1970-01-01 *in Asia/Shanghai local time* (the caller converts); hours
are whole hours since 1970-01-01 00:00 Asia/Shanghai (hour // 24 is the day). A source is daily
(rows bucketed by day) or hourly (rows bucketed by hour, for windows such as "a negative test
within 48 hours").
Colours are plain ints typed `Literal[0, 1, 2]`: 0 green, 1 yellow, 2 red, the values of the
IntEnum `healthcode_matcher.Colour` (so `Colour(verdict.colour)` names one and
`verdict.colour == Colour.RED` compares).
County risk levels are ints: 0 none, 1 low, 2 medium, 3 high. County code 0 is reserved (it marks
rows of sources without counties) and is refused.
Index versions: `Index(secret)` is the root, an empty version 0. A builder finishes as the next
number, or as a higher one of the caller's; a builder started from the root may also finish as
version 0, so the first published version can be the empty index with its sources defined.
"""

from collections.abc import Sequence
from typing import Any, Literal, Self, TypeAlias, final

# A colour as the runtime returns it: 0 green, 1 yellow, 2 red (`healthcode_matcher.Colour`).
_Colour: TypeAlias = Literal[0, 1, 2]
# Counts by [from colour][to colour]: rows the active plan's colour, columns the draft's.
_Matrix: TypeAlias = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]

__version__: str
__all__ = [
    "Evidence",
    "Hasher",
    "IdentifierError",
    "Index",
    "IndexBuilder",
    "InvalidIdNumber",
    "InvalidOperation",
    "InvalidPhone",
    "Matcher",
    "Plan",
    "PlanError",
    "SnapshotError",
    "TokenFormatError",
    "TokenSigner",
    "TokenVerifier",
    "Transitions",
    "Verdict",
    "Verdicts",
    "__version__",
    "decode_code_token",
    "normalise_id_number",
    "normalise_phone",
    "synthetic_id_numbers",
    "synthetic_phones",
]

class IdentifierError(ValueError):
    """A resident ID number, phone number or card number is not valid."""

class InvalidIdNumber(IdentifierError):
    """A resident ID number fails GB 11643 (length, digits, check digit, birth date)."""

class InvalidPhone(IdentifierError):
    """Not a mainland mobile number (11 digits 1[3-9]xxxxxxxxx; spaces, dashes and a leading
    +86, 0086 or 86 country code are accepted)."""

class PlanError(ValueError):
    """A rule plan is malformed; the message names the rule id and the field."""

class InvalidOperation(ValueError):
    """An operation names something that does not exist or does not fit (source, person id, day)."""

class SnapshotError(ValueError):
    """A snapshot file is corrupt, truncated or of another format; nothing was loaded."""

def normalise_id_number(raw: str) -> str:
    """Validate a resident ID number and return it normalised (trimmed, upper-case X)."""

def normalise_phone(raw: str) -> str:
    """Validate a mainland mobile number and return its 11 digits."""

def synthetic_id_numbers(count: int, seed: int) -> bytes:
    """`count` distinct valid ID numbers, newline-separated (for benchmarks and demos)."""

def synthetic_phones(count: int, seed: int) -> bytes:
    """`count` distinct valid mobile numbers, newline-separated."""

@final
class Hasher:
    """Keyed BLAKE3 (128-bit) of normalised identifiers, with a 32-byte deployment secret."""

    def __new__(cls, secret: bytes) -> Self: ...
    def person_key(self, id_number: str) -> bytes:
        """Validate, normalise and hash an ID number: 16 bytes."""
    def phone_key(self, phone: str) -> bytes:
        """Validate, normalise and hash a phone number: 16 bytes."""
    def card_key(self, card: str) -> bytes:
        """Hash a transit card number (trimmed, upper-cased, 1 to 64 printable ASCII): 16 bytes."""

@final
class Index:
    """One immutable, numbered index version: registry, sources and county levels."""

    def __new__(cls, secret: bytes) -> Self:
        """The root: an empty index, version 0, keyed with `secret` (32 bytes). Only a builder
        started from it may `finish(version=0)`."""
    @property
    def version(self) -> int: ...
    @property
    def person_count(self) -> int: ...
    @property
    def phone_count(self) -> int: ...
    @property
    def card_count(self) -> int: ...
    def hasher(self) -> Hasher: ...
    def builder(self) -> IndexBuilder:
        """Start the next version from this one (cheap: shares everything unchanged)."""
    def person_id(self, id_number: str) -> int | None:
        """Dense id of a registered person, or None. Raises InvalidIdNumber."""
    def person_id_by_key(self, key: bytes) -> int | None: ...
    def person_key(self, person_id: int) -> bytes | None:
        """The 16-byte person key behind a dense person id, or None past the registry."""
    def phone_id(self, phone: str) -> int | None: ...
    def phone_id_by_key(self, key: bytes) -> int | None: ...
    def card_holder(self, card: str) -> int | None:
        """Person id holding a real-name transit card, or None."""
    def card_holder_by_key(self, key: bytes) -> int | None: ...
    def holder_of_phone(self, phone_id: int) -> int | None: ...
    def holders_of_phones(self, phone_ids: bytes) -> bytes:
        """LE u32 phone ids -> the sorted, distinct LE u32 ids of their holders. Unheld phones
        and 4294967295 (an unknown phone, as `phone_ids_by_keys` gives it) are skipped; another
        id past the last phone raises InvalidOperation. GIL released."""
    def persons_with_rows_in_counties(self, counties: Sequence[int]) -> bytes:
        """Sorted, distinct LE u32 ids of the persons with a row in one of `counties`, on any day,
        in any county source: directly (person-keyed) or through a phone they hold now
        (phone-keyed). Whom a change of those counties' levels can touch. County 0 raises
        InvalidOperation. GIL released."""
    def person_ids_by_keys(self, keys: bytes) -> bytes:
        """Concatenated 16-byte keys (`Hasher.person_key`) -> one LE u32 person id per key,
        4294967295 for a key not registered. GIL released."""
    def phone_ids_by_keys(self, keys: bytes) -> bytes:
        """Concatenated 16-byte keys (`Hasher.phone_key`) -> one LE u32 phone id per key,
        4294967295 for a key not registered. GIL released."""
    def phones_of(self, person_id: int) -> list[int]: ...
    def county_levels(self) -> dict[int, int]: ...
    def sources(self) -> list[tuple[str, str, bool]]:
        """(name, "person" | "phone", has_county) for every defined source."""
    def source_days(self, name: str) -> list[int | None]:
        """Bucket times that hold rows: days, or hours for an hourly source (None: undated)."""
    def source_is_hourly(self, name: str) -> bool: ...
    def source_counties(self, name: str) -> list[int]: ...
    def source_bitmap(self, name: str, day: int | None = None, county: int | None = None) -> bytes:
        """One day's rows (an hour's for an hourly source; None: the undated bucket) in the portable roaring format (readable by
        pyroaring); for a county source one county's rows, or with `county=None` the union over
        every county."""
    def source_len(self, name: str) -> int:
        """Distinct members over all buckets."""
    def save(self, path: str) -> None:
        """Write a checksummed snapshot (portable roaring bitmaps + registry)."""
    @staticmethod
    def load(path: str, secret: bytes) -> Index:
        """Read a snapshot; SnapshotError if corrupt, truncated or keyed with another secret."""
    def share_keys(self, directory: str) -> tuple[Index, dict[str, str]]:
        """This index with its person and phone keys read from `persons.keys` and `phones.keys`
        in `directory`, files every worker of a machine maps read-only (one copy in the page
        cache for all), written first when missing, damaged, another registry's or holding under
        nine tenths of this index's keys; and what was
        done for each table: "mapped", "written" or "kept: <why>" (still in this process)."""
    @property
    def shared_person_count(self) -> int:
        """How many person ids are read from a shared key file (0 when none is)."""
    def to_bytes(self) -> bytes:
        """The same snapshot as `save`, in memory (to stream it to a replica)."""
    @staticmethod
    def from_bytes(data: bytes, secret: bytes) -> Index:
        """Inverse of `to_bytes`; SnapshotError as for `load`."""

@final
class IndexBuilder:
    """A private, mutable next version. `finish()` freezes it into an Index."""

    def add_person(self, id_number: str) -> int:
        """Register (or find) a person: dense id. Raises InvalidIdNumber."""
    def add_persons(self, id_numbers: bytes) -> bytes:
        """Bulk: newline-separated ID numbers -> little-endian u32 dense ids. Validates all first;
        raises InvalidIdNumber naming the first bad line (1-based) and changes nothing."""
    def add_phone(self, phone: str, holder: int | None = None) -> int:
        """Register (or find) a phone; link it to `holder` (moving it from any old holder)."""
    def add_phones(self, phones: bytes, holders: bytes | None = None) -> bytes:
        """Bulk: newline-separated phones, optional little-endian u32 holders -> u32 ids."""
    def add_person_key(self, key: bytes) -> int:
        """Register (or find) a person by its 16-byte keyed hash (from `Hasher.person_key`)."""
    def add_phone_key(self, key: bytes, holder: int | None = None) -> int:
        """Register (or find) a phone by its 16-byte keyed hash, optionally linking a holder."""
    def unlink_phone_key(self, key: bytes) -> bool: ...
    def add_rows_by_key(
        self,
        source: str,
        keys: bytes,
        days: Sequence[int | None] | None = None,
        counties: Sequence[int] | None = None,
        hours: Sequence[int | None] | None = None,
    ) -> int:
        """Like `add_rows_by_identifier`, with concatenated 16-byte keys instead of raw numbers."""
    def unlink_phone(self, phone: str) -> bool:
        """Remove the phone's link to its holder. True if it had one."""
    def add_card(self, card: str, holder: int) -> None:
        """Link a real-name transit card to a person."""
    def add_card_key(self, key: bytes, holder: int) -> None:
        """Link a card, by its 16-byte keyed hash (`Hasher.card_key`), to a person."""
    def define_source(
        self, name: str, keyed_by: str, has_county: bool = False, hourly: bool = False
    ) -> None:
        """Declare a source ("person" or "phone" keyed; daily, or hourly). Redefining it with
        other traits fails."""
    def add_rows(
        self,
        source: str,
        ids: bytes,
        day: int | None = None,
        counties: bytes | None = None,
        hour: int | None = None,
    ) -> None:
        """Add dense ids (LE u32) on `day` of a daily source, or at `hour` of an hourly one
        (neither: undated, always current). A county source needs `counties` (LE u32, one per
        id)."""
    def add_rows_by_identifier(
        self,
        source: str,
        identifiers: Sequence[str],
        days: Sequence[int | None] | None = None,
        counties: Sequence[int] | None = None,
        hours: Sequence[int | None] | None = None,
    ) -> int:
        """One day per row for a daily source, or one hour per row (`hours`) for an hourly one
        (None: undated). Feed rows keyed by raw ID number (person source) or phone (phone source); unknown
        ones are registered at first sight. Validates every row first; raises
        IdentifierError naming the first bad row (0-based) and changes nothing. Returns rows."""
    def remove_rows(self, source: str, ids: bytes) -> None:
        """Remove dense ids from every bucket of a source (e.g. released from a control list)."""
    def clear_source(self, name: str) -> None:
        """Drop every row of a source (it stays defined)."""
    def set_county_level(self, county: int, level: int) -> None: ...
    def finish(self, version: int | None = None) -> Index:
        """Freeze into the next version: the one built from plus one, or `version` (the
        caller's own durable numbering), which must be higher than the version built from, or
        0 when the builder was started from the root `Index(secret)` (version 0 is then the
        empty index with whatever this builder defined, e.g. its sources; no other version can
        have had that number). A refused number raises InvalidOperation and the builder stays
        usable."""

@final
class Plan:
    """A compiled rule plan (at most 64 rules).

    Each rule is a dict: {"id": str, "colour": "yellow" | "red", "match": "any" | "all",
    "checks": [check, ...], "clears": [check, ...]}, where a check is
    {"source": str, "days": int (optional; window ending today) or "hours": int (optional, hourly
    sources only; window ending at the current hour), "min_level": int (optional, county sources
    only: 1 low, 2 medium, 3 high)}. "days" on an hourly source means days * 24 hours.
    """

    def __new__(cls, rules: list[dict[str, Any]], version: str = ...) -> Self: ...
    @property
    def version(self) -> str: ...
    @property
    def rule_ids(self) -> list[str]: ...
    @property
    def check_count(self) -> int: ...
    def colour_of_mask(self, mask: int) -> _Colour:
        """The colour of a fired mask (bit i: rule i): its most severe rule's."""

@final
class Verdict:
    """The colour of one person with the rules behind it."""

    @property
    def person_id(self) -> int: ...
    @property
    def colour(self) -> _Colour: ...
    @property
    def fired_mask(self) -> int: ...
    @property
    def cleared_mask(self) -> int: ...
    @property
    def rules(self) -> list[str]:
        """Ids of the rules that fired and were not cleared, in plan order."""
    @property
    def cleared(self) -> list[str]:
        """Ids of rules whose checks matched but that a clearing source cleared."""

@final
class Evidence:
    """Why one check of one rule matched (or what cleared it)."""

    @property
    def rule_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def day(self) -> int | None:
        """The latest day in the window with a row (None: undated row)."""
    @property
    def hour(self) -> int | None:
        """For an hourly source, the latest hour in the window with a row."""
    @property
    def phone_id(self) -> int | None:
        """The linked phone the risk came through, for phone sources."""
    @property
    def county(self) -> int | None: ...
    @property
    def role(self) -> Literal["fired", "cleared", "phone_cleared"]:
        """ "fired" (a check matched), "cleared" (a clearing check matched) or "phone_cleared"
        (the check matched through a phone that a phone-keyed clearing source cleared)."""

@final
class Verdicts:
    """A plan evaluated over a whole index on one day: immutable, shareable across threads."""

    def __new__(cls, index: Index, plan: Plan, today: int, hour: int | None = None) -> Self:
        """Evaluate every person (parallel, GIL released) on `today` at `hour` (an hour of
        `today`; default its last, 23:00-24:00), which ends the windows of hourly sources."""
    def update(self, index: Index, persons: bytes) -> Verdicts:
        """The verdicts of `index`, a later version built from `self.index` through builders,
        at the same plan, day and hour, re-evaluating only `persons` (LE u32 ids) and every
        person new in `index`; everyone else keeps their verdict (shared, not copied). When
        `persons` holds every person whose inputs changed (a row of theirs or of a phone they
        hold, a phone linked to or from them, the level of a county they have a row in), the
        result equals `Verdicts(index, plan, today, hour)` in every respect. Time grows with the
        change, not the population (a very long list is evaluated in full instead). Raises
        InvalidOperation for an index keyed with another secret, an older version, fewer persons
        or phones, another registry, or an unknown person id. GIL released."""
    @property
    def index(self) -> Index: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def today(self) -> int: ...
    @property
    def hour(self) -> int: ...
    def evaluate(self, person_id: int) -> Verdict: ...
    def colour(self, person_id: int) -> _Colour:
        """Only the colour: the cheapest call."""
    def evaluate_id_number(self, id_number: str) -> Verdict | None:
        """Validate, hash, look up and evaluate. None if the person is not registered."""
    def colours_of_id_numbers(
        self, id_numbers: bytes, overrides: dict[bytes, int] | None = None
    ) -> tuple[bytes, list[tuple[int, str]]]:
        """A batch of raw ID numbers, newline-separated UTF-8 (one entry a line, blank lines
        included), each as `evaluate_id_number` would take it -> (one byte per entry: the proto's
        Colour number, 1 green, 2 yellow, 3 red; 0 not registered; 255 invalid, and the invalid
        entries as (position, what is wrong), in order; a blank one is "an ID number is
        required"). Validated, hashed and looked up with the GIL released, in parallel when
        large. `overrides` (16-byte person key -> Colour number 1-3: manual colours) replace the
        computed byte of the registered persons they name; None or empty costs nothing.
        InvalidOperation if the bytes are not UTF-8, or an override is not a 16-byte key and a
        number 1-3."""
    def colours_of_keys(
        self, person_keys: bytes, overrides: dict[bytes, int] | None = None
    ) -> bytes:
        """Concatenated 16-byte person keys -> one byte per key (1 green, 2 yellow, 3 red; 0
        not registered), `overrides` as in `colours_of_id_numbers`. GIL released.
        InvalidOperation if the length is not a multiple of 16."""
    def evaluate_many(self, person_ids: bytes) -> tuple[bytes, bytes]:
        """LE u32 ids -> (one colour byte per id, LE u64 fired mask per id). GIL released."""
    def explain(self, person_id: int) -> list[Evidence]: ...
    def colour_counts(self) -> tuple[int, int, int]:
        """(green, yellow, red) over every registered person."""
    def rule_counts(self) -> dict[str, int]:
        """Persons for whom each rule fired (after clearing)."""
    def transitions(self, draft: Verdicts, district_source: str | None = None) -> Transitions:
        """What-if: compare with a draft plan's verdicts over the same index version (these
        are the active ones). `district_source` names a person-keyed county source, such as a
        residence list, to count changes per district. GIL released."""
    def non_green(self) -> bytes:
        """Portable roaring bitmap of persons that are yellow or red."""

@final
class Transitions:
    """What a draft plan would change against the active one, from `Verdicts.transitions`.
    In each matrix rows are the active colour and columns the draft's (0 green, 1 yellow,
    2 red)."""

    @property
    def colours(self) -> _Matrix:
        """Persons by [active colour][draft colour], over every registered person."""
    @property
    def rules(self) -> dict[str, tuple[int, int]]:
        """Rule id (of either plan) -> (starts firing, stops firing), counted among persons
        whose colour changes."""
    @property
    def districts(self) -> dict[int, _Matrix]:
        """County -> the same matrix over the persons living there whose colour changes; only
        counties with a change, and none without a district source."""
    @property
    def changed(self) -> int:
        """Persons whose colour changes (off the diagonal of `colours`)."""

@final
class Matcher:
    """The live verdicts of a replica behind an atomic swap: readers never block."""

    def __new__(cls, verdicts: Verdicts) -> Self: ...
    @property
    def current(self) -> Verdicts: ...
    def swap(self, verdicts: Verdicts) -> Verdicts:
        """Install new verdicts atomically; returns the previous ones."""
    def evaluate(self, person_id: int) -> Verdict: ...
    def colour(self, person_id: int) -> _Colour: ...
    def evaluate_id_number(self, id_number: str) -> Verdict | None: ...

# Code tokens (services/display/tokens.py has the format): ``HCN1:`` + base45 of a COSE_Sign1.

class TokenFormatError(ValueError):
    """Not a code token; the message says what is wrong (the prefix, the length, base45, the
    COSE message, the kid, a claim)."""

@final
class TokenSigner:
    """Signs code tokens with one Ed25519 key (32-byte seed), naming it by its 8-byte key id.
    Build one per key and keep it: deriving the public key costs as much as a signature."""

    def __new__(cls, seed: bytes, key_id: bytes) -> Self: ...
    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
    @property
    def key_id(self) -> bytes: ...
    def encode(
        self, person_key: bytes, issued_at_ms: int, expires_at_ms: int, token_id: bytes
    ) -> str:
        """The signed token text (times sent as float seconds, ms / 1000). ValueError for a
        person key or token id that is not 16 bytes, or a time beyond 2**53 ms. Signs without
        the GIL."""

@final
class TokenVerifier:
    """Verifies Ed25519 signatures (`verify_strict`) of one raw 32-byte public key."""

    def __new__(cls, public_key: bytes) -> Self: ...
    def verify(self, signed: bytes, signature: bytes) -> bool:
        """Whether `signature` is the key's over `signed`. Verifies without the GIL."""

def decode_code_token(text: str) -> tuple[bytes, bytes, int, int, bytes, bytes, bytes, bytes]:
    """The parts of an ``HCN1:`` token, not verified: (kid, person key, issued at ms, expires
    at ms, token id, COSE message, Sig_structure, signature). `TokenFormatError` otherwise."""

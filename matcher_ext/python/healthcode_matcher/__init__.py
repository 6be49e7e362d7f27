"""The health-code matcher: a typed Python face over the Rust core (`_native`).

Raw identifiers stop at this boundary: they are validated and turned into keyed 128-bit hashes,
then into dense u32 ids that the roaring bitmaps hold.
"""

from __future__ import annotations

import datetime as _dt
import enum as _enum
from zoneinfo import ZoneInfo as _ZoneInfo

from ._native import (
    Evidence,
    Hasher,
    IdentifierError,
    Index,
    IndexBuilder,
    InvalidIdNumber,
    InvalidOperation,
    InvalidPhone,
    Matcher,
    Plan,
    PlanError,
    SnapshotError,
    Verdict,
    Verdicts,
    __version__,
    normalise_id_number,
    normalise_phone,
    synthetic_id_numbers,
    synthetic_phones,
)

__all__ = [
    "SHANGHAI",
    "Colour",
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
    "Verdict",
    "Verdicts",
    "__version__",
    "day_number",
    "mask_id_number",
    "mask_phone",
    "normalise_id_number",
    "normalise_phone",
    "synthetic_id_numbers",
    "synthetic_phones",
    "today",
]

# Declarations reset at local midnight: every "day" in the index is an Asia/Shanghai date.
SHANGHAI = _ZoneInfo("Asia/Shanghai")
_EPOCH = _dt.date(1970, 1, 1)


class Colour(_enum.IntEnum):
    """The code colour; the order is the severity."""

    GREEN = 0
    YELLOW = 1
    RED = 2


def day_number(value: _dt.date | _dt.datetime) -> int:
    """Days since 1970-01-01 of a date, or of an aware datetime's Asia/Shanghai date."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError("datetime must be timezone-aware")
        value = value.astimezone(SHANGHAI).date()
    return (value - _EPOCH).days


def today(now: _dt.datetime | None = None) -> int:
    """Today's day number in Asia/Shanghai."""
    return day_number(now or _dt.datetime.now(SHANGHAI))


def mask_id_number(id_number: str) -> str:
    """Show the first and last two characters only: 12**************3X."""
    s = id_number.strip()
    if len(s) <= 4:
        return "*" * len(s)
    return s[:2] + "*" * (len(s) - 4) + s[-2:]


def mask_phone(phone: str) -> str:
    """Show the operator prefix and the last four digits: 138****1234."""
    s = phone.strip()
    if len(s) < 8:
        return "*" * len(s)
    return s[:3] + "*" * (len(s) - 7) + s[-4:]

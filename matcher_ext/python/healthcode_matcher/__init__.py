"""The health-code matcher: a typed Python face over the Rust core (`_native`).

Raw identifiers stop at this boundary: they are validated and turned into keyed 128-bit hashes,
then into dense u32 ids that the roaring bitmaps hold. Days and hours are plain numbers here
(days, or hours, since 1970-01-01 Asia/Shanghai); the calendar arithmetic that makes them is
`services._common.days`, and masking for display is `services._common.identifiers`.
"""

from __future__ import annotations

import enum as _enum

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
    TokenFormatError,
    TokenSigner,
    TokenVerifier,
    Transitions,
    Verdict,
    Verdicts,
    __version__,
    decode_code_token,
    normalise_id_number,
    normalise_phone,
    synthetic_id_numbers,
    synthetic_phones,
)

__all__ = [
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


class Colour(_enum.IntEnum):
    """The code colour; the order is the severity."""

    GREEN = 0
    YELLOW = 1
    RED = 2

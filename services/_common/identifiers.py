"""Edge validation: raw ID numbers, phone numbers and transit cards become (16-byte key, masked
form) here, and only those travel further (database rows, index, logs, traces).

A bad identifier raises `InvalidArgument` naming the request field, with the matcher's message,
which says what is wrong and never repeats the number:

    >>> ids.person("110105194912310021", "id_number")
    InvalidArgument: id_number: the check character (18th) does not match the first 17 digits:
    it should be X

The rules themselves (GB 11643, mobile numbers, cards) and the keyed hash live in one place, the
Rust matcher, so the colour service and this edge can never disagree on what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services._common.errors import InvalidArgument

KEY_BYTES = 16
MAX_NAME_CHARS = 64


class KeyScheme(Protocol):
    """Validation, normalisation and keyed hashing of identifiers (the matcher's, or a test
    double). Validation failures raise ValueError with a message safe to show."""

    def normalise_id_number(self, raw: str) -> str: ...
    def normalise_phone(self, raw: str) -> str: ...
    def person_key(self, normalised_id_number: str) -> bytes: ...
    def phone_key(self, normalised_phone: str) -> bytes: ...
    def card_key(self, card: str) -> bytes: ...


class MatcherKeyScheme:
    """The production scheme: the Rust matcher's validation and keyed BLAKE3."""

    def __init__(self, secret: bytes) -> None:
        # Imported here so services that only need masking (and tests of them) do not load the
        # native extension.
        import healthcode_matcher

        self._m = healthcode_matcher
        self._hasher = healthcode_matcher.Hasher(secret)

    def normalise_id_number(self, raw: str) -> str:
        return self._m.normalise_id_number(raw)

    def normalise_phone(self, raw: str) -> str:
        return self._m.normalise_phone(raw)

    def person_key(self, normalised_id_number: str) -> bytes:
        return self._hasher.person_key(normalised_id_number)

    def phone_key(self, normalised_phone: str) -> bytes:
        return self._hasher.phone_key(normalised_phone)

    def card_key(self, card: str) -> bytes:
        return self._hasher.card_key(card)


@dataclass(frozen=True, slots=True)
class Identified:
    """A validated identifier: its keyed hash and how it may be shown."""

    key: bytes
    masked: str


class Identifiers:
    """The edge: every raw identifier a request carries goes through one of these methods."""

    def __init__(self, scheme: KeyScheme) -> None:
        self._scheme = scheme

    @classmethod
    def from_secret(cls, secret: bytes) -> Identifiers:
        return cls(MatcherKeyScheme(secret))

    def person(self, raw: str, field: str) -> Identified:
        """A resident ID number -> (person key, 12**************3X)."""
        if not raw.strip():
            raise InvalidArgument([(field, "an ID number is required")])
        try:
            normalised = self._scheme.normalise_id_number(raw)
        except ValueError as error:
            raise InvalidArgument([(field, str(error))]) from None
        return Identified(self._scheme.person_key(normalised), mask_id_number(normalised))

    def phone(self, raw: str, field: str) -> Identified:
        """A mobile number -> (phone key, 138****1234)."""
        if not raw.strip():
            raise InvalidArgument([(field, "a phone number is required")])
        try:
            normalised = self._scheme.normalise_phone(raw)
        except ValueError as error:
            raise InvalidArgument([(field, str(error))]) from None
        return Identified(self._scheme.phone_key(normalised), mask_phone(normalised))

    def card(self, raw: str, field: str) -> Identified:
        """A real-name transit card number -> (card key, ********1234)."""
        card = raw.strip()
        if not card:
            raise InvalidArgument([(field, "a card number is required")])
        try:
            key = self._scheme.card_key(card)
        except ValueError as error:
            raise InvalidArgument([(field, str(error))]) from None
        return Identified(key, mask_card(card.upper()))


def check_key(key: bytes, field: str) -> bytes:
    """A key handed over by a platform service: exactly 16 bytes."""
    if len(key) != KEY_BYTES:
        raise InvalidArgument([(field, f"a key is {KEY_BYTES} bytes, this one has {len(key)}")])
    return bytes(key)


def check_name(raw: str, field: str) -> str:
    """A person's real name: 1-64 printable characters, trimmed."""
    name = raw.strip()
    if not name:
        raise InvalidArgument([(field, "a name is required")])
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument([(field, f"at most {MAX_NAME_CHARS} characters")])
    if not name.isprintable():
        raise InvalidArgument([(field, "control characters are not allowed")])
    return name


def mask_id_number(id_number: str) -> str:
    """First and last two characters: 12**************3X (as healthcode_matcher does)."""
    s = id_number.strip()
    if len(s) <= 4:
        return "*" * len(s)
    return s[:2] + "*" * (len(s) - 4) + s[-2:]


def mask_phone(phone: str) -> str:
    """Operator prefix and last four digits: 138****1234 (as healthcode_matcher does)."""
    s = phone.strip()
    if len(s) < 8:
        return "*" * len(s)
    return s[:3] + "*" * (len(s) - 7) + s[-4:]


def mask_card(card: str) -> str:
    """Last four characters only."""
    s = card.strip()
    if len(s) <= 4:
        return "*" * len(s)
    return "*" * (len(s) - 4) + s[-4:]


def mask_name(name: str) -> str:
    """The family name (first character) only: 张**. A one-character name is fully masked."""
    s = name.strip()
    if len(s) <= 1:
        return "*" * len(s)
    return s[0] + "*" * (len(s) - 1)

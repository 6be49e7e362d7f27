"""Code tokens: genuine and fresh passes; forged, altered, expired and malformed are refused
with the right kind of error (which decides the status code a scanner sees)."""

from __future__ import annotations

import base64

import pytest
from nacl.signing import SigningKey

from services.display.tokens import (
    MAX_TTL_MS,
    PREFIX,
    CodeTokens,
    TokenExpired,
    TokenForged,
    TokenMalformed,
    load_or_create_signing_key,
)

KEY = bytes(range(16))
NOW = 1_608_000_000_000


@pytest.fixture
def tokens() -> CodeTokens:
    return CodeTokens(SigningKey(b"\x01" * 32))


def test_a_fresh_token_verifies_and_names_its_holder(tokens: CodeTokens) -> None:
    token, claims = tokens.issue(KEY, NOW)
    assert token.startswith(PREFIX)
    got = tokens.verify(token, NOW + 1000)
    assert got == claims
    assert got.person_key == KEY
    assert got.expires_at_ms - got.issued_at_ms == MAX_TTL_MS


def test_two_tokens_for_one_person_differ(tokens: CodeTokens) -> None:
    a, ca = tokens.issue(KEY, NOW)
    b, cb = tokens.issue(KEY, NOW)
    assert a != b and ca.token_id != cb.token_id


def test_an_expired_token_is_refused_as_expired_with_its_claims(tokens: CodeTokens) -> None:
    token, claims = tokens.issue(KEY, NOW)
    with pytest.raises(TokenExpired) as refused:
        tokens.verify(token, NOW + MAX_TTL_MS)
    assert refused.value.claims == claims


def test_a_token_from_another_key_is_forged(tokens: CodeTokens) -> None:
    other = CodeTokens(SigningKey(b"\x02" * 32))
    token, _ = other.issue(KEY, NOW)
    with pytest.raises(TokenForged):
        tokens.verify(token, NOW)


def test_an_altered_token_is_forged(tokens: CodeTokens) -> None:
    token, _ = tokens.issue(KEY, NOW)
    raw = bytearray(base64.urlsafe_b64decode(token[len(PREFIX) :] + "=="))
    raw[5] ^= 0x01  # another person's key
    altered = PREFIX + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TokenForged):
        tokens.verify(altered, NOW)


@pytest.mark.parametrize(
    "text",
    ["", "hello", "HC1.", "HC1.!!!!", PREFIX + "QUJD", "HC2." + "A" * 140, PREFIX + "A" * 10_000],
)
def test_malformed_tokens_are_refused_as_malformed(tokens: CodeTokens, text: str) -> None:
    with pytest.raises(TokenMalformed):
        tokens.verify(text, NOW)


def test_ttl_cannot_exceed_a_minute() -> None:
    with pytest.raises(ValueError):
        CodeTokens(SigningKey(b"\x01" * 32), ttl_ms=MAX_TTL_MS + 1)


def test_the_signing_key_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "display" / "signing.key"
    first = load_or_create_signing_key(path)
    again = load_or_create_signing_key(path)
    assert bytes(first) == bytes(again)
    assert path.stat().st_mode & 0o777 == 0o600
    token, _ = CodeTokens(first).issue(KEY, NOW)
    assert CodeTokens(again).verify(token, NOW).person_key == KEY

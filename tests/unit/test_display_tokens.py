"""Code tokens: genuine and fresh passes; forged, altered, expired and malformed are refused
with the right kind of error (which decides the status code a scanner sees). The key ring and
rotation: test_display_tokens_keyring.py."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from services.display.keyring import KeyRing, key_id_of
from services.display.tokens import (
    MAX_TTL_MS,
    PREFIX,
    TOKEN_BYTES,
    CodeTokens,
    TokenExpired,
    TokenForged,
    TokenMalformed,
    decode_token,
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


def _wire(raw: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "HC1.",
        "HC1.!!!!",
        PREFIX + "QUJD",
        "HC2." + "A" * 140,
        PREFIX + "A" * 10_000,
        _wire(b"\x02" + bytes(TOKEN_BYTES - 2)),  # version 2, a byte short
        _wire(b"\x03" + bytes(TOKEN_BYTES - 1)),  # a version we do not know
    ],
)
def test_malformed_tokens_are_refused_as_malformed(tokens: CodeTokens, text: str) -> None:
    with pytest.raises(TokenMalformed):
        tokens.verify(text, NOW)


def test_ttl_cannot_exceed_a_minute() -> None:
    with pytest.raises(ValueError):
        CodeTokens(SigningKey(b"\x01" * 32), ttl_ms=MAX_TTL_MS + 1)


def test_the_signing_key_survives_a_restart(tmp_path: Path) -> None:
    ring_dir = tmp_path / "display" / "token-keys"
    first = KeyRing.open(ring_dir, create=True)
    again = KeyRing.open(ring_dir, create=True)
    assert first.signer().key_id == again.signer().key_id
    assert [p.name for p in ring_dir.glob("*.json")] == [f"{first.signer().key_id_hex}.json"]
    token, _ = CodeTokens(first).issue(KEY, NOW)
    assert CodeTokens(again).verify(token, NOW).person_key == KEY


def test_a_token_carries_the_id_of_the_key_that_signed_it(tokens: CodeTokens) -> None:
    token, claims = tokens.issue(KEY, NOW)
    public = bytes(SigningKey(b"\x01" * 32).verify_key)
    assert claims.key_id == tokens.key_id == key_id_of(public) == decode_token(token).claims.key_id
    raw = base64.urlsafe_b64decode(token[len(PREFIX) :] + "==")
    assert len(raw) == TOKEN_BYTES == 121
    assert raw[0] == 2 and raw[1:9] == key_id_of(public)


def _version_1_token(key: SigningKey, person_key: bytes, issued_ms: int) -> str:
    """A token in the format from before key ids, as the previous version signed it."""
    body = struct.pack(">B16sQQ16s", 1, person_key, issued_ms, issued_ms + MAX_TTL_MS, b"t" * 16)
    return _wire(body + key.sign(body).signature)


def test_a_version_1_token_verifies_only_against_the_imported_legacy_key(tmp_path: Path) -> None:
    legacy = SigningKey(b"\x05" * 32)
    (tmp_path / "signing.key").write_bytes(bytes(legacy))
    old_token = _version_1_token(legacy, KEY, NOW)
    upgraded = CodeTokens(
        KeyRing.open(tmp_path / "keys", create=True, legacy_key=tmp_path / "signing.key")
    )
    claims = upgraded.verify(old_token, NOW + 1000)
    assert (claims.person_key, claims.key_id) == (KEY, None)
    # The same key, but not imported as the legacy key: a version-1 token names no key.
    with pytest.raises(TokenForged, match="before key ids"):
        CodeTokens(legacy).verify(old_token, NOW + 1000)

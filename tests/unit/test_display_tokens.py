"""Code tokens: genuine and fresh passes; forged, altered, expired and malformed are refused
with the right kind of error (which decides the status code a scanner sees). The key ring and
rotation: test_display_tokens_keyring.py."""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path
from typing import Any

import base45
import cbor2
import pytest
from cwt import COSE, COSEKey
from nacl.signing import SigningKey

from services.display.keyring import KeyRing, TokenKey, key_id_of
from services.display.tokens import (
    LEGACY_PREFIX,
    LEGACY_TOKEN_BYTES,
    MAX_TTL_MS,
    PREFIX,
    CodeTokens,
    TokenClaims,
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


def _raw(token: str) -> bytes:
    assert token.startswith(PREFIX)
    return base45.b45decode(token[len(PREFIX) :])


def _token(raw: bytes) -> str:
    return PREFIX + base45.b45encode(raw).decode()


def test_an_altered_token_is_forged(tokens: CodeTokens) -> None:
    token, _ = tokens.issue(KEY, NOW)
    raw = bytearray(_raw(token))
    at = raw.index(KEY)
    raw[at] ^= 0x01  # another person's key
    altered = _token(bytes(raw))
    assert decode_token(altered).claims.person_key != KEY
    with pytest.raises(TokenForged, match="signature does not verify"):
        tokens.verify(altered, NOW)


def test_a_token_is_in_the_qr_alphanumeric_set_and_not_the_eu_prefix(tokens: CodeTokens) -> None:
    token, _ = tokens.issue(KEY, NOW)
    alphanumeric = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    assert set(token) <= alphanumeric and set(PREFIX) <= alphanumeric
    assert not token.startswith("HC1:")
    # No zlib: the COSE message is 142 bytes (it would compress to more).
    assert len(_raw(token)) == 142 and len(token) == len(PREFIX) + 213


def test_a_genuine_token_with_anything_added_unsigned_is_malformed(tokens: CodeTokens) -> None:
    token, _ = tokens.issue(KEY, NOW)
    message = cbor2.loads(_raw(token))
    message.value[1] = {99: b"unsigned"}  # the unprotected header is outside the signature
    for altered in (_token(_raw(token) + b"\x00"), _token(cbor2.dumps(message))):
        with pytest.raises(TokenMalformed, match="encoded as we encode it"):
            tokens.verify(altered, NOW)


def test_whitespace_around_a_token_is_ignored(tokens: CodeTokens) -> None:
    # Line ends and tabs, not spaces: a space is a base45 digit.
    token, claims = tokens.issue(KEY, NOW)
    assert tokens.verify(f"\t{token}\r\n", NOW) == claims


def _legacy_wire(raw: bytes) -> str:
    return LEGACY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _cose(protected: dict[int, Any] | None = None, payload: Any = None, *, tag: int = 18) -> str:
    """A COSE message with a zero signature: well formed or not, it is never ours."""
    claims = {2: KEY, 6: NOW / 1000, 4: (NOW + 1000) / 1000, 7: b"t" * 16}
    header = {1: -8, 4: b"k" * 8} if protected is None else protected
    body = cbor2.dumps(claims if payload is None else payload)
    return _token(cbor2.dumps(cbor2.CBORTag(tag, [cbor2.dumps(header), {}, body, bytes(64)])))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        PREFIX,
        PREFIX + "!!!!",  # not base45
        PREFIX + "ABCD",  # base45 of bytes that are not CBOR
        "HC1:" + "A" * 140,  # the EU certificate's prefix
        "HC2." + "A" * 140,
        PREFIX + "A" * 10_000,
        _token(cbor2.dumps([1, 2, 3])),  # CBOR, not COSE
        _cose(tag=17),  # COSE_Mac0
        _cose({1: -7, 4: b"k" * 8}),  # ES256
        _cose({1: -8}),  # no kid
        _cose({1: -8, 4: b"k" * 7}),  # a kid that is not a key id
        _cose(payload=[1, 2]),  # not a claims set
        _cose(payload={6: NOW / 1000, 4: NOW / 1000, 7: b"t" * 16}),  # no sub
        _cose(payload={2: KEY, 6: NOW / 1000, 4: NOW / 1000, 7: b"t"}),  # short cti
        _cose(payload={2: KEY, 6: "yesterday", 4: NOW / 1000, 7: b"t" * 16}),
        _cose(payload={2: KEY, 6: NOW / 1000, 4: math.nan, 7: b"t" * 16}),
        LEGACY_PREFIX,
        LEGACY_PREFIX + "!!!!",
        LEGACY_PREFIX + "A" * 10_000,
        _legacy_wire(b"\x02" + bytes(LEGACY_TOKEN_BYTES - 2)),  # version 2, a byte short
        _legacy_wire(b"\x03" + bytes(LEGACY_TOKEN_BYTES - 1)),  # a version we do not know
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
    message = cbor2.loads(_raw(token))
    assert message.tag == 18  # COSE_Sign1
    assert cbor2.loads(message.value[0]) == {1: -8, 4: key_id_of(public)}  # alg EdDSA, kid


def test_a_stock_cose_library_verifies_a_token_with_the_published_key(
    tokens: CodeTokens,
) -> None:
    # What an offline verifier does with GetVerificationKey's key: nothing of ours.
    token, claims = tokens.issue(KEY, NOW + 123)
    published = tokens.verification_keys(NOW)[0]
    public = COSEKey.new(
        {1: 1, 2: published.key_id, 3: -8, -1: 6, -2: published.public_key}  # OKP Ed25519
    )
    payload = COSE.new().decode(_raw(token), public)
    assert cbor2.loads(payload) == {
        2: KEY,
        6: (NOW + 123) / 1000,
        4: (NOW + 123 + MAX_TTL_MS) / 1000,
        7: claims.token_id,
    }
    outsider = COSEKey.new({1: 1, 2: published.key_id, 3: -8, -1: 6, -2: bytes(32)})
    with pytest.raises(Exception):  # noqa: B017 - cwt's VerifyError or its key's ValueError
        COSE.new().decode(_raw(token), outsider)


def _version_2_token(key: SigningKey, person_key: bytes, issued_ms: int) -> str:
    """A token in the previous (``HC1.``) format, as the previous version signed it."""
    body = struct.pack(
        ">B8s16sQQ16s",
        2,
        key_id_of(bytes(key.verify_key)),
        person_key,
        issued_ms,
        issued_ms + MAX_TTL_MS,
        b"t" * 16,
    )
    return _legacy_wire(body + key.sign(body).signature)


def test_a_token_of_the_previous_format_still_verifies_until_it_expires(
    tokens: CodeTokens,
) -> None:
    key = SigningKey(b"\x01" * 32)
    old = _version_2_token(key, KEY, NOW)
    assert len(old) == 166
    claims = tokens.verify(old, NOW + 1000)
    assert claims == TokenClaims(
        KEY, NOW, NOW + MAX_TTL_MS, b"t" * 16, key_id_of(bytes(key.verify_key))
    )
    with pytest.raises(TokenExpired):
        tokens.verify(old, NOW + MAX_TTL_MS)
    with pytest.raises(TokenForged):
        CodeTokens(SigningKey(b"\x02" * 32)).verify(old, NOW + 1000)
    assert decode_token(old).verifies_with(TokenKey.from_seed(b"\x01" * 32, NOW))


def _version_1_token(key: SigningKey, person_key: bytes, issued_ms: int) -> str:
    """A token in the format from before key ids, as the version before that signed it."""
    body = struct.pack(">B16sQQ16s", 1, person_key, issued_ms, issued_ms + MAX_TTL_MS, b"t" * 16)
    return _legacy_wire(body + key.sign(body).signature)


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

"""Code tokens in the Rust extension against the Python reference they replaced
(token_reference.py: cwt, cbor2, base45): the same text for the same claims and key, the same
claims back, the same verdict on every tampered token and the same message on every malformed
one."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import base45
import cbor2
import pytest
from healthcode_matcher import TokenSigner, TokenVerifier, decode_code_token

from services.display.keyring import TokenKey
from services.display.tokens import (
    PREFIX,
    CodeTokens,
    DecodedToken,
    TokenClaims,
    TokenForged,
    TokenMalformed,
    decode_token,
    encode_token,
)
from tests.unit import token_reference as reference

NOW = 1_608_000_000_000
# Up to the year 2100: times a token really carries come back to the millisecond.
REAL_MS = 4_102_444_800_000

Outcome = tuple[Any, ...]


def _key(rng: random.Random) -> TokenKey:
    return TokenKey.from_seed(rng.randbytes(32), NOW)


def _claims(rng: random.Random, key: TokenKey) -> TokenClaims:
    def when() -> int:
        pick = rng.random()
        if pick < 0.1:
            return rng.choice([0, 1, 999, 1000, 2**40 * 1000 - 1, REAL_MS])
        if pick < 0.3:
            return rng.randrange(2**40 * 1000)  # any time a token may carry
        return NOW + rng.randrange(-(10**12), 10**12)

    return TokenClaims(rng.randbytes(16), when(), when(), rng.randbytes(16), key.key_id)


def _outcome(text: str, key: TokenKey, *, native: bool) -> Outcome:
    """What a decoder makes of a text: its message, or its claims and the verdict of `key`."""
    try:
        decoded = decode_token(text) if native else reference.decode(text)
    except TokenMalformed as refused:
        return ("malformed", str(refused))
    verified = decoded.verifies_with(key) if native else reference.verifies_with(decoded, key)
    return ("decoded", decoded.claims, verified)


def _same_outcome(text: str, key: TokenKey) -> Outcome:
    native = _outcome(text, key, native=True)
    assert native == _outcome(text, key, native=False), text
    return native


def _raw(token: str) -> bytes:
    return base45.b45decode(token[len(PREFIX) :])


def _token(raw: bytes) -> str:
    return PREFIX + base45.b45encode(raw).decode()


def test_the_extension_writes_the_references_text_and_both_read_it_back() -> None:
    rng = random.Random(9)
    keys = [_key(rng) for _ in range(50)]
    for _ in range(3000):
        key = rng.choice(keys)
        claims = _claims(rng, key)
        text = encode_token(claims, key)
        assert text == reference.encode(claims, key)
        native, python = decode_token(text), reference.decode(text)
        assert native.claims == python.claims and native.cose == python.cose
        if max(claims.issued_at_ms, claims.expires_at_ms) <= REAL_MS:
            assert native.claims == claims
        assert native.verifies_with(key) and reference.verifies_with(python, key)


def test_a_token_the_reference_signed_verifies_in_the_extension_with_its_key_only() -> None:
    rng = random.Random(10)
    key, other = _key(rng), _key(rng)
    text = reference.encode(_claims(rng, key), key)
    assert decode_token(text).verifies_with(key)
    assert not decode_token(text).verifies_with(other)
    assert _same_outcome(text, other)[2] is False


@pytest.mark.parametrize(
    "payload",
    [
        # Signed by us but not as we write them: a reader decides by content, as before.
        {7: b"t" * 16, 4: (NOW + 1000) / 1000, 6: NOW / 1000, 2: b"p" * 16},  # another order
        {2: b"p" * 16, 6: NOW // 1000, 4: NOW // 1000 + 60, 7: b"t" * 16},  # integer seconds
        {2: b"p" * 16, 6: NOW / 1000, 4: NOW / 1000, 7: b"t" * 16, 1: "us"},  # an extra claim
    ],
)
def test_genuine_claims_in_another_encoding_read_as_before(payload: dict[int, Any]) -> None:
    key = _key(random.Random(11))
    text = reference.sign(cbor2.dumps(payload), key)
    outcome = _same_outcome(text, key)
    assert outcome[0] == "decoded" and outcome[2] is True


def test_every_flipped_bit_is_refused_as_before() -> None:
    rng = random.Random(12)
    for _ in range(3):
        key = _key(rng)
        raw = _raw(encode_token(_claims(rng, key), key))
        kinds = set()
        for bit in range(len(raw) * 8):
            altered = bytearray(raw)
            altered[bit // 8] ^= 1 << (bit % 8)
            outcome = _same_outcome(_token(bytes(altered)), key)
            assert outcome[0] == "malformed" or outcome[2] is False
            kinds.add(outcome[0])
        assert kinds == {"malformed", "decoded"}


def test_random_edits_of_a_token_get_the_references_answer() -> None:
    rng = random.Random(13)
    key = _key(rng)
    raw = _raw(encode_token(_claims(rng, key), key))
    for _ in range(4000):
        altered = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(altered))
            edit = rng.random()
            if edit < 0.6:
                altered[at] = rng.randrange(256)
            elif edit < 0.8:
                del altered[at]
            else:
                altered.insert(at, rng.randrange(256))
        _same_outcome(_token(bytes(altered)), key)


def test_random_cbor_gets_the_references_answer() -> None:
    rng = random.Random(14)
    key = _key(rng)
    heads = [0x18, 0x40, 0x41, 0x50, 0x58, 0x5F, 0x60, 0x7F, 0x80, 0x84, 0x9F, 0xA0, 0xA1]
    heads += [0xA4, 0xBF, 0xC2, 0xD2, 0xF4, 0xF6, 0xF7, 0xF9, 0xFA, 0xFB, 0xFF, 0x01, 0x27]
    for _ in range(4000):
        raw = bytes(
            rng.choice(heads) if rng.random() < 0.7 else rng.randrange(256)
            for _ in range(rng.randrange(1, 40))
        )
        _same_outcome(_token(raw), key)


def test_random_headers_and_claims_in_a_cose_envelope_get_the_references_answer() -> None:
    rng = random.Random(17)
    key = _key(rng)
    heads = [0x02, 0x04, 0x06, 0x07, 0x0B, 0x20, 0x27, 0x48, 0x50, 0x80, 0xA0, 0xA1, 0xA2]
    heads += [0xA4, 0xBF, 0xC0, 0xC1, 0xC2, 0xC4, 0xD8, 0xF5, 0xF6, 0xF9, 0xFB, 0xFF]

    def cbor_ish(size: int) -> bytes:
        return bytes(
            rng.choice(heads) if rng.random() < 0.75 else rng.randrange(256) for _ in range(size)
        )

    ours = cbor2.dumps({1: -8, 4: key.key_id})
    for _ in range(3000):
        protected = ours if rng.random() < 0.5 else cbor_ish(rng.randrange(16))
        claims: dict[int, Any] = {2: rng.randbytes(16), 6: 1.5, 4: 2.5, 7: rng.randbytes(16)}
        for label in claims:
            if rng.random() < 0.3:
                claims[label] = rng.choice([1, -1, 2**40, 1.0, math.nan, True, None, "x", b"x"])
        payload = bytearray(cbor2.dumps(claims))
        at = rng.randrange(len(payload))
        payload[at : at + rng.randrange(2)] = cbor_ish(rng.randrange(3))
        unprotected = b"\xa0" if rng.random() < 0.8 else cbor_ish(rng.randrange(1, 6))
        raw = b"\xd2\x84" + cbor2.dumps(protected) + unprotected + cbor2.dumps(bytes(payload))
        _same_outcome(_token(raw + cbor2.dumps(rng.randbytes(64))), key)


def test_another_kid_trailing_bytes_and_unprotected_headers_are_refused_as_before() -> None:
    rng = random.Random(15)
    key = _key(rng)
    tokens = CodeTokens(key.signing_key)
    text, _ = tokens.issue(b"p" * 16, NOW)
    raw = _raw(text)
    other_kid = _token(raw.replace(key.key_id, b"k" * 8))
    assert _same_outcome(other_kid, key)[2] is False
    with pytest.raises(TokenForged, match="names signing key 6b6b6b6b6b6b6b6b"):
        tokens.verify(other_kid, NOW)
    message = cbor2.loads(raw)
    message.value[1] = {4: key.key_id}
    int_time = cbor2.loads(raw)
    int_time.value[2] = int_time.value[2].replace(cbor2.dumps(NOW / 1000), cbor2.dumps(NOW // 1000))
    int_time = _token(cbor2.dumps(int_time))
    for altered, refusal in [
        (_token(raw + b"\x00"), "encoded as we encode it"),
        (_token(cbor2.dumps(message)), "encoded as we encode it"),
        (PREFIX + " " * 401, "too long"),
        (PREFIX + "\ud800" * 401, "too long"),  # lone surrogates: a str that is no UTF-8
        (PREFIX + "\ud800AB", "not base45"),
        (text + "A" * (401 - len(text) + len(PREFIX)), "too long"),
    ]:
        outcome = _same_outcome(altered, key)
        assert outcome[0] == "malformed" and refusal in outcome[1]
    # An integer time where we write a float (outside our encoding, and unsigned): forged.
    assert _same_outcome(int_time, key)[1].issued_at_ms == NOW
    with pytest.raises(TokenForged, match="signature does not verify"):
        tokens.verify(int_time, NOW)


def test_the_binding_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="seed must be 32 bytes"):
        TokenSigner(b"short", b"k" * 8)
    with pytest.raises(ValueError, match="key_id must be 8 bytes"):
        TokenSigner(b"s" * 32, b"k")
    signer = TokenSigner(b"s" * 32, b"k" * 8)
    with pytest.raises(ValueError, match="person_key must be 16 bytes"):
        signer.encode(b"p", NOW, NOW, b"t" * 16)
    with pytest.raises(ValueError, match="2\\*\\*53"):
        signer.encode(b"p" * 16, NOW, 2**53, b"t" * 16)
    with pytest.raises(ValueError, match="public_key must be 32 bytes"):
        TokenVerifier(b"k")
    parts = decode_code_token(signer.encode(b"p" * 16, NOW, NOW + 1, b"t" * 16))
    assert parts[:5] == (b"k" * 8, b"p" * 16, NOW, NOW + 1, b"t" * 16)
    assert TokenVerifier(signer.public_key).verify(parts[6], parts[7])
    assert not TokenVerifier(bytes(32)).verify(parts[6], parts[7])  # a small-order key
    assert not TokenVerifier(signer.public_key).verify(parts[6], parts[7][:63])


def test_a_decoded_token_keeps_its_cose_message_for_a_stock_cose_library() -> None:
    key = _key(random.Random(16))
    text = encode_token(TokenClaims(b"p" * 16, NOW, NOW + 1, b"t" * 16, key.key_id), key)
    decoded = decode_token(text)
    assert isinstance(decoded, DecodedToken) and decoded.cose == _raw(text)
    assert reference.verifies_with(decoded, key)


def test_threads_signing_and_verifying_at_once_get_their_own_answers() -> None:
    # Signing and verifying run without the GIL: threads must not see each other's work.
    keys = [TokenKey.from_seed(bytes([n]) * 32, NOW) for n in range(1, 5)]

    def issue_and_scan(key: TokenKey) -> list[bool]:
        answers = []
        for n in range(200):
            claims = TokenClaims(n.to_bytes(16, "big"), NOW + n, NOW + n + 1, b"t" * 16, key.key_id)
            decoded = decode_token(encode_token(claims, key))
            answers.append(decoded.claims == claims and decoded.verifies_with(key))
            answers.append(not decoded.verifies_with(keys[0] if key is not keys[0] else keys[1]))
        return answers

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(issue_and_scan, keys, timeout=60))
    assert all(all(answers) for answers in results)

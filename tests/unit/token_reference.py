"""The code token's ``HCN1:`` wire form as the Python libraries wrote and read it before the
Rust extension did (`cwt` for COSE, `cbor2` for the claims, `base45` for the text): the
reference the extension is tested against, byte for byte and message for message. Not used
by the services.
"""

from __future__ import annotations

import math
from typing import Any

import base45
import cbor2
from cbor2 import CBORError, CBORTag
from cwt import COSE, COSEMessage, COSETypes, CWTError, VerifyError
from cwt.cose_key_interface import COSEKeyInterface
from nacl.exceptions import BadSignatureError

from services.display.keyring import KEY_ID_BYTES, TokenKey
from services.display.tokens import PREFIX, DecodedToken, TokenClaims, TokenMalformed

_COSE_SIGN1_TAG = 18
_ALG, _KID = 1, 4
_EDDSA = -8
_SUB, _EXP, _IAT, _CTI = 2, 4, 6, 7
_OKP, _ED25519 = 1, 6
_MAX_TOKEN_CHARS = 400

# What cbor2 and cwt raise on bytes that are not the COSE message they expect.
NOT_COSE = (CBORError, CWTError, ValueError, TypeError, LookupError, RecursionError)
_COSE = COSE.new(alg_auto_inclusion=False, kid_auto_inclusion=False)


class _RingCOSEKey(COSEKeyInterface):
    """A ring key as cwt's COSE key, signing and verifying with PyNaCl."""

    def __init__(self, key: TokenKey) -> None:
        super().__init__({1: _OKP, 2: key.key_id, 3: _EDDSA})
        self._ring_key = key

    @property
    def crv(self) -> int:
        return _ED25519

    def sign(self, msg: bytes) -> bytes:
        return self._ring_key.signing_key.sign(msg).signature

    def verify(self, msg: bytes, sig: bytes) -> None:
        try:
            self._ring_key.verify_key.verify(msg, sig)
        except (BadSignatureError, ValueError, TypeError):
            raise VerifyError("the signature does not verify") from None


# Each key's COSE form, built once, as the services did.
_COSE_KEYS: dict[bytes, _RingCOSEKey] = {}


def _cose_key(key: TokenKey) -> _RingCOSEKey:
    cose_key = _COSE_KEYS.get(key.public_key)
    if cose_key is None:
        cose_key = _COSE_KEYS[key.public_key] = _RingCOSEKey(key)
    return cose_key


def encode(claims: TokenClaims, key: TokenKey) -> str:
    """The wire form of `claims`, signed with `key` (whose id it carries)."""
    payload = cbor2.dumps(
        {
            _SUB: claims.person_key,
            _IAT: claims.issued_at_ms / 1000,
            _EXP: claims.expires_at_ms / 1000,
            _CTI: claims.token_id,
        }
    )
    return sign(payload, key)


def sign(payload: bytes, key: TokenKey, protected: dict[int, Any] | None = None) -> str:
    """A token of any payload (and protected header), genuinely signed with `key`."""
    header = {_ALG: _EDDSA, _KID: key.key_id} if protected is None else protected
    message = _COSE.encode_and_sign(payload, _cose_key(key), protected=header, unprotected={})
    assert isinstance(message, bytes)
    return PREFIX + base45.b45encode(message).decode("ascii")


def verifies_with(decoded: DecodedToken, key: TokenKey) -> bool:
    """Whether cwt verifies the token's COSE message with `key`."""
    assert decoded.cose is not None
    try:
        _COSE.decode(decoded.cose, _cose_key(key))
    except NOT_COSE:
        return False
    return True


def decode(token: str) -> DecodedToken:
    """The parts of an ``HCN1:`` token; `TokenMalformed` if it is not one."""
    text = token.strip("\t\r\n\v\f")
    if not text.startswith(PREFIX):
        raise TokenMalformed(f"a code token starts with {PREFIX!r}")
    payload = text[len(PREFIX) :]
    if len(payload) > _MAX_TOKEN_CHARS:
        raise TokenMalformed("the code token is too long")
    try:
        raw = base45.b45decode(payload)
    except ValueError:
        raise TokenMalformed("the code token is not base45") from None
    try:
        tagged = cbor2.loads(raw)
        if isinstance(tagged, CBORTag) and tagged.tag == _COSE_SIGN1_TAG:
            message = COSEMessage(COSETypes.SIGN1, tagged.value)
            protected = message.protected
            claims = cbor2.loads(message.payload) if isinstance(message.payload, bytes) else None
            canonical = message.unprotected == {} and cbor2.dumps(tagged) == raw
    except NOT_COSE:
        raise TokenMalformed("the code token is not a COSE message") from None
    if not (isinstance(tagged, CBORTag) and tagged.tag == _COSE_SIGN1_TAG and canonical):
        raise TokenMalformed("a code token is one COSE_Sign1 message, encoded as we encode it")
    if not isinstance(protected, dict) or protected.get(_ALG) != _EDDSA:
        raise TokenMalformed("a code token is signed with EdDSA")
    key_id = protected.get(_KID)
    if not isinstance(key_id, bytes) or len(key_id) != KEY_ID_BYTES:
        raise TokenMalformed(f"a code token names its signing key by a {KEY_ID_BYTES}-byte kid")
    if not isinstance(claims, dict):
        raise TokenMalformed("a code token's payload is a CWT claims set")
    person_key, token_id = claims.get(_SUB), claims.get(_CTI)
    if not (isinstance(person_key, bytes) and len(person_key) == 16):
        raise TokenMalformed("a code token's sub is a 16-byte person key")
    if not (isinstance(token_id, bytes) and len(token_id) == 16):
        raise TokenMalformed("a code token's cti is a 16-byte token id")
    issued, expires = _time_ms(claims.get(_IAT)), _time_ms(claims.get(_EXP))
    if issued is None or expires is None:
        raise TokenMalformed("a code token's iat and exp are times in seconds")
    return DecodedToken(TokenClaims(person_key, issued, expires, token_id, key_id), cose=raw)


def _time_ms(value: Any) -> int | None:
    """A CWT NumericDate (seconds, integer or floating point) in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0 <= value < 2**40:
        return None
    return round(value * 1000)

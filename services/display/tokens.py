"""Signed, short-lived code tokens (R9, R15): what the QR code on a holder's screen carries.

A token names the holder only by the 16-byte keyed hash of their ID number, so a token seen by a
verifier (or photographed) reveals no raw identifier. It is signed with one of the display
service's Ed25519 keys (the key ring, `keyring.py`) and expires within a minute, so a
screenshot of an old green code fails a scan; the colour itself is never in the token: a scan
always asks for the live colour.

Wire form: ``HCN1:`` + base45 (RFC 9285) of a COSE_Sign1 message (RFC 9052, CBOR tag 18)
whose payload is a CWT claims set (RFC 8392), the same layering as the EU digital COVID
certificate but behind a prefix of our own (theirs is ``HC1:``) and without its zlib step (it
makes these tokens longer, not shorter: a signature and two random ids do not compress).
Prefix and base45 alphabet are all in the QR code's alphanumeric set, so a QR code of a token
stays in alphanumeric mode (5.5 bits a character).

    protected header   {1 (alg): -8 (EdDSA), 4 (kid): the signing key's 8-byte id}
    unprotected header {}
    payload (claims)   {2 (sub): person key (16-byte string),
                        6 (iat): issued at, 4 (exp): expires at (seconds since the epoch,
                             floating point, exact to the millisecond),
                        7 (cti): token id (16 random bytes)}
    signature          Ed25519 over the COSE Sig_structure

The Rust extension (`healthcode_matcher`, `matcher_ext/src/tokens.rs`) writes, reads and
verifies this form: the bytes are those `cwt`, `cbor2` and `base45` wrote before it
(tests/unit/token_reference.py keeps that implementation as the reference), at a fraction of
the cost (docs/keys.md). A message must be encoded exactly as we encode it outside its
signature (no bytes after it, nothing in the unprotected header, no longer-than-needed CBOR):
nothing in a token can vary without breaking its signature. Note: sub is the 16-byte person
key as a byte string, where RFC 8392 has a text string. The kid (the first 8 bytes of SHA-256
of the signing key's public key) picks the key a scan verifies with: a kid the ring does not
publish is refused as forged.

Transition: the format before this one, ``HC1.`` + base64url of a fixed binary layout (version
2 with a key id; version 1 before key ids), is still accepted by `decode_token` so that codes
shown by a display not yet upgraded keep scanning for their minute; nothing issues it any
more. Version 1 verifies only against the key imported from the earlier `signing.key` (marked
legacy in the ring) while that key is published, and is refused as forged otherwise.
`encode_token` and `decode_token` (over the extension) are the only Python code that knows the
wire form.
"""

from __future__ import annotations

import base64
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from healthcode_matcher import (
    TokenFormatError,
    TokenSigner,
    TokenVerifier,
    decode_code_token,
)
from nacl.signing import SigningKey

from services._common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
)
from services.display.keyring import (
    CLOCK_SKEW_MS,
    KEY_ID_BYTES,
    MAX_TOKEN_TTL_MS,
    KeyRing,
    TokenKey,
)
from services.display.keyring import (
    now_ms as wall_clock_ms,
)

PREFIX = "HCN1:"
MAX_TTL_MS = MAX_TOKEN_TTL_MS
# A phone's clock and ours drift (CLOCK_SKEW_MS): a token "issued" slightly in the future is
# still ours.

# The format before this one, still verified during the transition (see the module doc).
LEGACY_PREFIX = "HC1."
_VERSION = 2
_LEGACY_VERSION = 1
_BODY = struct.Struct(f">B{KEY_ID_BYTES}s16sQQ16s")
_LEGACY_BODY = struct.Struct(">B16sQQ16s")
_SIGNATURE_LEN = 64
LEGACY_TOKEN_BYTES = _BODY.size + _SIGNATURE_LEN
_V1_TOKEN_BYTES = _LEGACY_BODY.size + _SIGNATURE_LEN


class TokenError(DomainError):
    """A token that must not be honoured. The subclass says why: its `reason` travels to the
    scanner as google.rpc.ErrorInfo and is the outcome logged; its base class sets the status
    code (so a scanner knows what to do from the code alone)."""

    reason = "TOKEN_INVALID"


class TokenMalformed(TokenError, InvalidArgument):
    """Not a code token at all (wrong prefix, encoding, length or version)."""

    reason = "TOKEN_MALFORMED"

    def __init__(self, message: str) -> None:
        super().__init__([("token", message)], f"not a health-code token: {message}")


class TokenForged(TokenError, Unauthenticated):
    """Well-formed, but the signature is not ours: forged or altered."""

    reason = "TOKEN_FORGED"

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}: the code is not genuine")


class TokenExpired(TokenError, FailedPrecondition):
    """Genuine, but older than its expiry (a screenshot or a stale screen). Being genuine, its
    claims can be trusted, so the refused scan is logged against the holder."""

    reason = "TOKEN_EXPIRED"

    def __init__(self, message: str, claims: TokenClaims) -> None:
        super().__init__(f"{message}: ask the holder to refresh their code")
        self.claims = claims


class TokenReplayed(TokenError, AlreadyExists):
    """Genuine and fresh, but scanned once already: a code is valid for one scan."""

    reason = "TOKEN_REPLAYED"

    def __init__(self) -> None:
        super().__init__(
            "this code was already scanned once: a code is valid for one scan; "
            "ask the holder to show a fresh one"
        )


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a genuine token says."""

    person_key: bytes
    issued_at_ms: int
    expires_at_ms: int
    token_id: bytes
    # The id of the key that signed it; None for a version-1 token (from before key ids).
    key_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class DecodedToken:
    """A token taken apart, not yet verified: nothing in it is to be trusted before
    `verifies_with` the key `claims.key_id` names says so."""

    claims: TokenClaims
    # The COSE_Sign1 message; None for a token of the previous (``HC1.``) format.
    cose: bytes | None = None
    # What the Ed25519 `signature` is over: the COSE Sig_structure, or the previous format's
    # fixed layout.
    signed: bytes = b""
    signature: bytes = b""

    def verifies_with(self, key: TokenKey) -> bool:
        """Whether the token's signature is `key`'s (and, for a COSE message, its kid names
        `key`, as a COSE library picks the key by kid)."""
        if self.cose is not None and self.claims.key_id != key.key_id:
            return False
        return verifier(key.public_key).verify(self.signed, self.signature)


# Each key's signer and verifier, built once (by public key: one seed gives one public key;
# a signer also by the key id it writes); building one costs about a signature.
_SIGNERS: dict[tuple[bytes, bytes], TokenSigner] = {}
_VERIFIERS: dict[bytes, TokenVerifier] = {}


def _signer(key: TokenKey) -> TokenSigner:
    signer = _SIGNERS.get((key.public_key, key.key_id))
    if signer is None:
        if len(_SIGNERS) >= 64:  # a rotation adds a key now and then: keep few
            _SIGNERS.clear()
        signer = TokenSigner(bytes(key.signing_key), key.key_id)
        _SIGNERS[key.public_key, key.key_id] = signer
    return signer


def verifier(public_key: bytes) -> TokenVerifier:
    """The verifier of one Ed25519 public key (a code token's ring key, a card key)."""
    held = _VERIFIERS.get(public_key)
    if held is None:
        if len(_VERIFIERS) >= 64:
            _VERIFIERS.clear()
        held = _VERIFIERS[public_key] = TokenVerifier(public_key)
    return held


def encode_token(claims: TokenClaims, key: TokenKey) -> str:
    """The wire form of `claims`, signed with `key` (whose id it carries)."""
    return _signer(key).encode(
        claims.person_key, claims.issued_at_ms, claims.expires_at_ms, claims.token_id
    )


def decode_token(token: str) -> DecodedToken:
    """The parts of a token's wire form; `TokenMalformed` if it is not one."""
    # Not str.strip(): a space is a base45 digit and may end a token.
    text = token.strip("\t\r\n\v\f")
    if text.startswith(LEGACY_PREFIX):
        return _decode_legacy(text.strip())
    try:
        key_id, person_key, issued, expires, token_id, cose, signed, signature = decode_code_token(
            text
        )
    except TokenFormatError as error:
        raise TokenMalformed(str(error)) from None
    claims = TokenClaims(person_key, issued, expires, token_id, key_id)
    return DecodedToken(claims, cose=cose, signed=signed, signature=signature)


def _decode_legacy(text: str) -> DecodedToken:
    """The previous format (``HC1.`` + base64url), still verified during the transition."""
    payload = text[len(LEGACY_PREFIX) :]
    if len(payload) > 4 * LEGACY_TOKEN_BYTES:
        raise TokenMalformed("the code token is too long")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (ValueError, TypeError):
        raise TokenMalformed("the code token is not base64url") from None
    version = raw[0] if raw else -1
    if version == _VERSION and len(raw) == LEGACY_TOKEN_BYTES:
        signed, signature = raw[: _BODY.size], raw[_BODY.size :]
        _, key_id, person_key, issued, expires, token_id = _BODY.unpack(signed)
        claims = TokenClaims(person_key, issued, expires, token_id, key_id)
        return DecodedToken(claims, signed=signed, signature=signature)
    if version == _LEGACY_VERSION and len(raw) == _V1_TOKEN_BYTES:
        signed, signature = raw[: _LEGACY_BODY.size], raw[_LEGACY_BODY.size :]
        _, person_key, issued, expires, token_id = _LEGACY_BODY.unpack(signed)
        claims = TokenClaims(person_key, issued, expires, token_id)
        return DecodedToken(claims, signed=signed, signature=signature)
    if len(raw) not in (LEGACY_TOKEN_BYTES, _V1_TOKEN_BYTES):
        raise TokenMalformed(f"a code token is {LEGACY_TOKEN_BYTES} bytes, this one {len(raw)}")
    raise TokenMalformed(f"unknown token version {version}")


class CodeTokens:
    """Issues tokens with the ring's signer and verifies them with the key each names."""

    def __init__(
        self,
        keys: KeyRing | SigningKey,
        ttl_ms: int = MAX_TTL_MS,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """`keys`: the key ring, or one fixed key (a ring of that key alone). `clock_ms` says
        which keys are still published (`verification_keys`); issue and verify take the time
        from their caller."""
        if not 1_000 <= ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"token ttl must be 1..60 s, got {ttl_ms} ms")
        self._ring = keys if isinstance(keys, KeyRing) else KeyRing.fixed(keys)
        self._clock_ms = clock_ms
        self.ttl_ms = ttl_ms

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def public_key(self) -> bytes:
        """For offline verifiers: the raw 32-byte Ed25519 public key of the current signer."""
        return self._ring.signer().public_key

    @property
    def key_id(self) -> bytes:
        """The current signer's 8-byte key id."""
        return self._ring.signer().key_id

    def verification_keys(self, at_ms: int | None = None) -> list[TokenKey]:
        """Every key a token may still verify with (the signer first)."""
        return self._ring.published(self._clock_ms() if at_ms is None else at_ms)

    def issue(self, person_key: bytes, now_ms: int) -> tuple[str, TokenClaims]:
        """A fresh token for `person_key`, valid from `now_ms` for the configured ttl."""
        if len(person_key) != 16:
            raise ValueError("person key must be 16 bytes")
        key = self._ring.signer()
        claims = TokenClaims(
            person_key, now_ms, now_ms + self.ttl_ms, secrets.token_bytes(16), key.key_id
        )
        return encode_token(claims, key), claims

    def verify(self, token: str, now_ms: int) -> TokenClaims:
        """The claims of a genuine, fresh token; raises a TokenError subclass otherwise.

        The key and the signature are checked before the times are read, so a forged token is
        reported as forged even if its (forged) times are also wrong.
        """
        decoded = decode_token(token)
        claims = decoded.claims
        key = self._ring.verifier(claims.key_id, now_ms)
        if key is None:
            if claims.key_id is None:
                raise TokenForged(
                    "the code is in the format from before key ids and no key that verifies it "
                    "is published"
                )
            raise TokenForged(f"the code names signing key {claims.key_id.hex()}, not published")
        if not decoded.verifies_with(key):
            raise TokenForged("the code's signature does not verify")
        if (
            claims.expires_at_ms - claims.issued_at_ms > MAX_TTL_MS
            or claims.issued_at_ms > now_ms + CLOCK_SKEW_MS
        ):
            # Only a holder of our private key could sign this, but never honour a token that
            # claims more life than we issue.
            raise TokenForged("the code claims an impossible validity period")
        if now_ms >= claims.expires_at_ms:
            raise TokenExpired(
                f"the code expired {(now_ms - claims.expires_at_ms) // 1000} s ago", claims
            )
        return claims

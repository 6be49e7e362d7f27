"""Signed, short-lived code tokens (R9, R15): what the QR code on a holder's screen carries.

A token names the holder only by the 16-byte keyed hash of their ID number, so a token seen by a
verifier (or photographed) reveals no raw identifier. It is signed with one of the display
service's Ed25519 keys (the key ring, `keyring.py`) and expires within a minute, so a
screenshot of an old green code fails a scan; the colour itself is never in the token: a scan
always asks for the live colour.

Wire form: ``HC1.`` + base64url (no padding) of

    version 2 (1 byte) | key id (8) | person key (16) | issued at ms (8, big-endian)
    | expires at ms (8) | token id (16, random) | Ed25519 signature over everything before it (64)

The key id (the first 8 bytes of SHA-256 of the signing key's public key) picks the key a scan
verifies with: a key id the ring does not publish is refused as forged. Version 1, from before
key ids, is the same without the key id; it verifies only against the key imported from the
earlier `signing.key` (marked legacy in the ring) while that key is published, and is refused
as forged otherwise. `encode_token` and `decode_token` are the only code that knows the
wire form.
"""

from __future__ import annotations

import base64
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
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

PREFIX = "HC1."
_VERSION = 2
_LEGACY_VERSION = 1
_BODY = struct.Struct(f">B{KEY_ID_BYTES}s16sQQ16s")
_LEGACY_BODY = struct.Struct(">B16sQQ16s")
_SIGNATURE_LEN = 64
TOKEN_BYTES = _BODY.size + _SIGNATURE_LEN
_LEGACY_TOKEN_BYTES = _LEGACY_BODY.size + _SIGNATURE_LEN
MAX_TTL_MS = MAX_TOKEN_TTL_MS
# A phone's clock and ours drift (CLOCK_SKEW_MS): a token "issued" slightly in the future is
# still ours.


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
    `signature` verifies over `signed` with the key `claims.key_id` names."""

    signed: bytes
    signature: bytes
    claims: TokenClaims


def encode_token(claims: TokenClaims, key: TokenKey) -> str:
    """The wire form of `claims`, signed with `key` (whose id it carries)."""
    body = _BODY.pack(
        _VERSION,
        key.key_id,
        claims.person_key,
        claims.issued_at_ms,
        claims.expires_at_ms,
        claims.token_id,
    )
    signature = key.signing_key.sign(body).signature
    return PREFIX + base64.urlsafe_b64encode(body + signature).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> DecodedToken:
    """The parts of a token's wire form; `TokenMalformed` if it is not one."""
    text = token.strip()
    if not text.startswith(PREFIX):
        raise TokenMalformed(f"a code token starts with {PREFIX!r}")
    payload = text[len(PREFIX) :]
    if len(payload) > 4 * TOKEN_BYTES:
        raise TokenMalformed("the code token is too long")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (ValueError, TypeError):
        raise TokenMalformed("the code token is not base64url") from None
    version = raw[0] if raw else -1
    if version == _VERSION and len(raw) == TOKEN_BYTES:
        signed, signature = raw[: _BODY.size], raw[_BODY.size :]
        _, key_id, person_key, issued, expires, token_id = _BODY.unpack(signed)
        claims = TokenClaims(person_key, issued, expires, token_id, key_id)
        return DecodedToken(signed, signature, claims)
    if version == _LEGACY_VERSION and len(raw) == _LEGACY_TOKEN_BYTES:
        signed, signature = raw[: _LEGACY_BODY.size], raw[_LEGACY_BODY.size :]
        _, person_key, issued, expires, token_id = _LEGACY_BODY.unpack(signed)
        return DecodedToken(signed, signature, TokenClaims(person_key, issued, expires, token_id))
    if len(raw) not in (TOKEN_BYTES, _LEGACY_TOKEN_BYTES):
        raise TokenMalformed(f"a code token is {TOKEN_BYTES} bytes, this one {len(raw)}")
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
        try:
            key.verify_key.verify(decoded.signed, decoded.signature)
        except BadSignatureError:
            raise TokenForged("the code's signature does not verify") from None
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

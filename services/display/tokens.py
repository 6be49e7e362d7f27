"""Signed, short-lived code tokens (R9, R15): what the QR code on a holder's screen carries.

A token names the holder only by the 16-byte keyed hash of their ID number, so a token seen by a
verifier (or photographed) reveals no raw identifier. It is signed with the display service's
Ed25519 key and expires within a minute, so a screenshot of an old green code fails a scan; the
colour itself is never in the token: a scan always asks for the live colour.

Wire form: ``HC1.`` + base64url (no padding) of

    version (1 byte) | person key (16) | issued at ms (8, big-endian) | expires at ms (8)
    | token id (16, random) | Ed25519 signature over everything before it (64)
"""

from __future__ import annotations

import base64
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from services._common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
)

PREFIX = "HC1."
_VERSION = 1
_BODY = struct.Struct(">B16sQQ16s")
_SIGNATURE_LEN = 64
TOKEN_BYTES = _BODY.size + _SIGNATURE_LEN
# A phone's clock and ours drift; a token "issued" slightly in the future is still ours.
CLOCK_SKEW_MS = 5_000
MAX_TTL_MS = 60_000


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


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The service's Ed25519 key, created on first start and kept (mode 0600) so that a restart
    does not invalidate codes already on screens."""
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"{path}: an Ed25519 seed is 32 bytes, found {len(seed)}")
        return SigningKey(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    # Write aside and rename so that two processes starting together never read half a key.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(key))
    try:
        os.link(tmp, path)
    except FileExistsError:
        tmp.unlink()
        return load_or_create_signing_key(path)
    tmp.unlink()
    return key


class CodeTokens:
    """Issues and verifies tokens with one key pair."""

    def __init__(self, signing_key: SigningKey, ttl_ms: int = MAX_TTL_MS) -> None:
        if not 1_000 <= ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"token ttl must be 1..60 s, got {ttl_ms} ms")
        self._signing_key = signing_key
        self._verify_key: VerifyKey = signing_key.verify_key
        self.ttl_ms = ttl_ms

    @property
    def public_key(self) -> bytes:
        """For offline verifiers: the raw 32-byte Ed25519 public key."""
        return bytes(self._verify_key)

    def issue(self, person_key: bytes, now_ms: int) -> tuple[str, TokenClaims]:
        """A fresh token for `person_key`, valid from `now_ms` for the configured ttl."""
        if len(person_key) != 16:
            raise ValueError("person key must be 16 bytes")
        claims = TokenClaims(person_key, now_ms, now_ms + self.ttl_ms, secrets.token_bytes(16))
        body = _BODY.pack(
            _VERSION, claims.person_key, claims.issued_at_ms, claims.expires_at_ms, claims.token_id
        )
        signed = self._signing_key.sign(body).signature
        text = base64.urlsafe_b64encode(body + signed).rstrip(b"=").decode("ascii")
        return PREFIX + text, claims

    def verify(self, token: str, now_ms: int) -> TokenClaims:
        """The claims of a genuine, fresh token; raises a TokenError subclass otherwise.

        The signature is checked before the times are read, so a forged token is reported as
        forged even if its (forged) times are also wrong.
        """
        raw = _decode(token)
        body, signature = raw[: _BODY.size], raw[_BODY.size :]
        try:
            self._verify_key.verify(body, signature)
        except BadSignatureError:
            raise TokenForged("the code's signature does not verify") from None
        version, person_key, issued, expires, token_id = _BODY.unpack(body)
        if version != _VERSION:
            raise TokenMalformed(f"unknown token version {version}")
        if expires - issued > MAX_TTL_MS or issued > now_ms + CLOCK_SKEW_MS:
            # Only a holder of our private key could sign this, but never honour a token that
            # claims more life than we issue.
            raise TokenForged("the code claims an impossible validity period")
        claims = TokenClaims(person_key, issued, expires, token_id)
        if now_ms >= expires:
            raise TokenExpired(f"the code expired {(now_ms - expires) // 1000} s ago", claims)
        return claims


def _decode(token: str) -> bytes:
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
    if len(raw) != TOKEN_BYTES:
        raise TokenMalformed(f"a code token is {TOKEN_BYTES} bytes, this one {len(raw)}")
    return raw

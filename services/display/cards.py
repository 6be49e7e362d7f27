"""Printed cards (R3, issue 11; docs/cards.md): the long-lived, revocable code of someone without
a smartphone, and how a scan of one is checked.

Wire form: ``HCC1:`` + base45 of a COSE_Sign1 whose payload is a CWT claims set, exactly the
layout of a phone's minute code (`tokens.py`, whose encoder and decoder this module reuses:
only the prefix differs), with

    sub (2)  the holder's 16-byte person key      cti (7)  the card's 16-byte id
    iat (6)  issued at                            exp (4)  expires at (a year on, a setting)
    kid      the card key that signed it

A card is signed by the declaration service (which records it) with a card key of its own, not
the display's minute keys: those rotate every few minutes and a card must outlive them. The card
keys' public halves are published (DeclarationService.ListCardKeys); a card signed by a display
key, or a phone code re-prefixed as a card, names a kid that is not a card key and is refused
as forged.

A scan (`PrintedCards.verify`): the prefix and the COSE message (TokenMalformed), the card key
and signature (TokenForged), then, every time, the declaration service's word on whether the
card is live (CheckPrintedCard): revoked, expired or unknown cards are refused with
FAILED_PRECONDITION and reasons CARD_REVOKED / CARD_EXPIRED / CARD_UNKNOWN, telling the holder
to have one reissued at the community office. FAILED_PRECONDITION, as for an expired phone code:
the card is genuine and the verifier may scan, but the card is no longer in a state that
answers; PERMISSION_DENIED would tell the verifier they lack a right, which is not the problem.
No answer is kept: a card scan is rare next to a phone code's, and a card reported lost must
fail at its very next scan, not a second later.

A card is not single-use: every scan answers the live colour. The display log records a card
scan like a phone code's, its token id being the card id's first 8 bytes (the short id printed
on the card is their first 4) followed by 8 random bytes of this scan: the log says which card
was scanned, and the one-scan claim of phone codes, keyed on that id, never refuses a card's
next scan.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from healthcode.v1 import common_pb2, declaration_pb2, declaration_pb2_grpc

from services._common.errors import FailedPrecondition, Unavailable
from services.display.keyring import CLOCK_SKEW_MS, TokenKey
from services.display.tokens import (
    PREFIX,
    DecodedToken,
    TokenClaims,
    TokenExpired,
    TokenForged,
    TokenMalformed,
    decode_token,
    encode_token,
    verifier,
)

CARD_PREFIX = "HCC1:"
CARD_ID_BYTES = 16
# A card's life: a year by default (HEALTHCODE_CARD_TTL_DAYS at the declaration service), never
# more than five.
DEFAULT_CARD_TTL_MS = 365 * 86_400_000
MAX_CARD_TTL_MS = 5 * 366 * 86_400_000
# How often an unknown card kid may make the display fetch the card keys again.
KEYS_REFRESH_S = 5.0
_REISSUE = "have a new card issued at the community office (or by a family member)"


def is_card(token: str) -> bool:
    """Whether a scanned text is a printed card (rather than a phone's minute code)."""
    return token.lstrip("\t\r\n\v\f").startswith(CARD_PREFIX)


def short_id(card_id: bytes) -> str:
    """The card id's short form, as printed and listed: "3F2A-9C0D"."""
    text = card_id[:4].hex().upper()
    return f"{text[:4]}-{text[4:]}"


def encode_card(
    card_id: bytes, person_key: bytes, issued_at_ms: int, expires_at_ms: int, key: TokenKey
) -> str:
    """A card's token: the code-token layout, signed with the card key, behind HCC1:."""
    claims = TokenClaims(person_key, issued_at_ms, expires_at_ms, card_id, key.key_id)
    return CARD_PREFIX + encode_token(claims, key)[len(PREFIX) :]


def decode_card(token: str) -> DecodedToken:
    """A card token taken apart (not verified); TokenMalformed if it is not one."""
    text = token.strip("\t\r\n\v\f")
    if not text.startswith(CARD_PREFIX):
        raise TokenMalformed(f"a printed card's code starts with {CARD_PREFIX!r}")
    try:
        return decode_token(PREFIX + text[len(CARD_PREFIX) :])
    except TokenMalformed as error:
        raise TokenMalformed(
            error.violations[0][1].replace("code token", "printed card's code")
        ) from None


def signed_by(decoded: DecodedToken, public_key: bytes) -> bool:
    """Whether the card's COSE signature is the Ed25519 key's (the extension verifies it)."""
    return decoded.cose is not None and verifier(public_key).verify(
        decoded.signed, decoded.signature
    )


class CardRefused(TokenExpired):
    """A genuine card that no longer answers (revoked, expired, not on record). Genuine, so the
    refused scan is logged against the holder, as an expired phone code is."""

    reason = "CARD_REFUSED"

    def __init__(self, message: str, claims: TokenClaims) -> None:
        FailedPrecondition.__init__(self, f"{message}: {_REISSUE}")
        self.claims = claims


class CardRevoked(CardRefused):
    reason = "CARD_REVOKED"


class CardExpired(CardRefused):
    reason = "CARD_EXPIRED"


class CardUnknown(CardRefused):
    reason = "CARD_UNKNOWN"


@dataclass(frozen=True, slots=True)
class CardAnswer:
    """The declaration service's word on a card."""

    state: int  # declaration_pb2.PrintedCardState
    short_id: str = ""
    revoked_at_ms: int = 0


class CardPeer:
    """CheckPrintedCard and ListCardKeys at the declaration service, each with a deadline."""

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        self._timeout = timeout_s
        self._actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="display")

    def check(self, card_id: bytes, person_key: bytes) -> CardAnswer:
        """The card's state now, asked every time (never cached)."""
        request = declaration_pb2.CheckPrintedCardRequest(
            actor=self._actor, card_id=card_id, person_key=person_key
        )
        try:
            answer = self._stub.CheckPrintedCard(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise _unavailable("check a printed card", error) from None
        return CardAnswer(
            answer.state,
            answer.short_id,
            answer.revoked_at.ToMilliseconds() if answer.HasField("revoked_at") else 0,
        )

    def card_keys(self) -> dict[bytes, bytes]:
        """The published card keys: key id -> Ed25519 public key."""
        request = declaration_pb2.ListCardKeysRequest()
        try:
            answer = self._stub.ListCardKeys(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise _unavailable("list the card keys", error) from None
        return {k.key_id: k.ed25519_public_key for k in answer.keys}


def _unavailable(what: str, error: grpc.RpcError) -> Unavailable:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    return Unavailable(f"the declaration service could not {what} ({code.name}); try again")


class PrintedCards:
    """Verifies scanned cards: signature with the published card keys, then live, online."""

    def __init__(
        self,
        check: Callable[[bytes, bytes], CardAnswer],
        card_keys: Callable[[], dict[bytes, bytes]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`check(card id, person key)`: CheckPrintedCard; `card_keys()`: ListCardKeys (public
        keys, kept; fetched again when a card names a kid not held, at most every 5 s)."""
        self._check = check
        self._fetch_keys = card_keys
        self._monotonic = monotonic
        self._keys: dict[bytes, bytes] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def over(cls, peer: CardPeer) -> PrintedCards:
        return cls(peer.check, peer.card_keys)

    def _public_key(self, key_id: bytes) -> bytes | None:
        with self._lock:
            key = self._keys.get(key_id)
            due = self._fetched_at is None or (
                self._monotonic() - self._fetched_at >= KEYS_REFRESH_S
            )
            if key is not None or not due:
                return key
            self._fetched_at = self._monotonic()
        fetched = self._fetch_keys()
        with self._lock:
            self._keys = fetched
        return fetched.get(key_id)

    def verify(self, token: str, now_ms: int) -> TokenClaims:
        """The claims of a genuine, live card, as the scan logs them (see the module doc);
        raises a TokenError subclass otherwise."""
        decoded = decode_card(token)
        claims = decoded.claims
        assert claims.key_id is not None  # a COSE token always names its key
        public_key = self._public_key(claims.key_id)
        if public_key is None:
            raise TokenForged(f"the card names signing key {claims.key_id.hex()}, not a card key")
        if not signed_by(decoded, public_key):
            raise TokenForged("the card's signature does not verify")
        if (
            claims.expires_at_ms - claims.issued_at_ms > MAX_CARD_TTL_MS
            or claims.issued_at_ms > now_ms + CLOCK_SKEW_MS
        ):
            raise TokenForged("the card claims an impossible validity period")
        card = short_id(claims.token_id)
        if now_ms >= claims.expires_at_ms:
            raise CardExpired(f"printed card {card} expired", claims)
        answer = self._check(claims.token_id, claims.person_key)
        if answer.state == declaration_pb2.PRINTED_CARD_STATE_REVOKED:
            raise CardRevoked(f"printed card {card} was revoked (lost or replaced)", claims)
        if answer.state == declaration_pb2.PRINTED_CARD_STATE_EXPIRED:
            raise CardExpired(f"printed card {card} expired", claims)
        if answer.state != declaration_pb2.PRINTED_CARD_STATE_LIVE:
            raise CardUnknown(f"printed card {card} is not on record", claims)
        return TokenClaims(
            claims.person_key,
            claims.issued_at_ms,
            now_ms,  # the per-scan claim lapses at once (a card is not single-use)
            claims.token_id[:8] + secrets.token_bytes(8),
            claims.key_id,
        )

"""Showing and scanning codes (R9, R10): the order of the checks and what is logged.

Show:  holder registered? -> live colour -> sign a short-lived token -> log durably -> reply.
Scan:  token genuine? fresh? -> live colour -> claim the token and log in one transaction
       (a second scan of the same token is refused) -> reply.
Look-up (代查): a verifier reads an ID card -> live colour -> log -> reply.

A colour is never taken from the token: every scan asks for the live one, so a person who
turned red after showing their code is red at the gate. Every attempt is logged, refused ones
with why, before the caller is answered.

No grpc here: the colour and declaration services are reached through the two callables the
servicer wires in.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services._common.days import SHANGHAI, day_number
from services._common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from services.display.store import (
    LOOKUP,
    OK,
    SCAN,
    SHOW,
    TOKEN_REPLAYED,
    DisplayEvent,
    DisplayLog,
)
from services.display.tokens import CodeTokens, TokenClaims, TokenError, TokenExpired

# At or above this (°C) a bus scanner raises an alert (R11).
FEVER_CELSIUS = 37.3


@dataclass(frozen=True, slots=True)
class LiveColour:
    """The colour service's answer. `detail` is its full verdict, passed through untouched."""

    colour: int | None  # 0 green, 1 yellow, 2 red; None when the person is not in the index
    index_version: int
    rule_set_version: str
    detail: Any = None


@dataclass(frozen=True, slots=True)
class Holder:
    """A person as the declaration service shows them: masked."""

    masked_name: str
    masked_id_number: str


@dataclass(frozen=True, slots=True)
class Place:
    """Where a display or scan happened."""

    device_id: str
    place: str
    county: int = 0


@dataclass(frozen=True, slots=True)
class Shown:
    live: LiveColour
    holder: Holder
    token: str
    claims: TokenClaims
    display_id: int


@dataclass(frozen=True, slots=True)
class Scanned:
    live: LiveColour
    holder: Holder
    temperature_alert: bool
    scan_id: int
    claims: TokenClaims | None  # None for a look-up by ID card


class TokenRefused(DomainError):
    """Mixin for token refusals: `reason` is the machine-readable cause (google.rpc.ErrorInfo)."""

    reason = "TOKEN_INVALID"


class TokenMalformedError(TokenRefused, InvalidArgument):
    reason = "TOKEN_MALFORMED"


class TokenForgedError(TokenRefused, Unauthenticated):
    reason = "TOKEN_FORGED"


class TokenExpiredError(TokenRefused, FailedPrecondition):
    reason = "TOKEN_EXPIRED"


class TokenReplayedError(TokenRefused, AlreadyExists):
    reason = "TOKEN_REPLAYED"


def _refusal(error: TokenError) -> TokenRefused:
    message = str(error)
    if error.reason == "TOKEN_MALFORMED":
        return TokenMalformedError([("token", message)], f"not a health-code token: {message}")
    if error.reason == "TOKEN_EXPIRED":
        return TokenExpiredError(f"{message}: ask the holder to refresh their code")
    return TokenForgedError(f"{message}: the code is not genuine")


class HolderCache:
    """Masked names change rarely and a gate scans thousands of codes: keep them briefly."""

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 60.0) -> None:
        self._entries: OrderedDict[bytes, tuple[float, Holder]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._lock = threading.Lock()

    def get(self, key: bytes, load: Callable[[bytes], Holder]) -> Holder:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] < self._ttl:
                self._entries.move_to_end(key)
                return hit[1]
        holder = load(key)
        with self._lock:
            self._entries[key] = (now, holder)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return holder


def _now_ms() -> int:
    return int(time.time() * 1000)


class DisplayDesk:
    """Show, Scan and look-up, in the order that makes each safe."""

    def __init__(
        self,
        tokens: CodeTokens,
        log: DisplayLog,
        live_colour: Callable[[bytes], LiveColour],
        holder_of: Callable[[bytes], Holder],
        *,
        clock_ms: Callable[[], int] = _now_ms,
        unknown_retry_s: float = 2.0,
    ) -> None:
        self._tokens = tokens
        self._log = log
        self._live_colour = live_colour
        self._holders = HolderCache()
        self._holder_of = holder_of
        self._clock_ms = clock_ms
        self._unknown_retry_s = unknown_retry_s

    def show(self, person_key: bytes, where: Place, actor: str) -> Shown:
        # Only people found registered are cached, so an unregistered person is always told
        # (NOT_FOUND from the declaration service) when they try to show a code.
        holder = self._holders.get(person_key, self._holder_of)
        live = self._colour_of(person_key)
        now = self._clock_ms()
        token, claims = self._tokens.issue(person_key, now)
        recorded = self._log.record(
            self._event(SHOW, OK, now, person_key, holder, where, actor, live, claims)
        )
        return Shown(live, holder, token, claims, recorded.event_id)

    def scan(
        self, token: str, where: Place, actor: str, temperature: float | None = None
    ) -> Scanned:
        now = self._clock_ms()
        try:
            claims = self._tokens.verify(token, now)
        except TokenError as error:
            # Only an expired token is genuine enough to name its holder in the log.
            key = error.claims.person_key if isinstance(error, TokenExpired) else None
            self._log.record(
                self._event(SCAN, error.reason, now, key, None, where, actor, None, None)
            )
            raise _refusal(error) from None
        holder = self._holders.get(claims.person_key, self._holder_of)
        live = self._colour_of(claims.person_key)
        recorded = self._log.record(
            self._event(SCAN, OK, now, claims.person_key, holder, where, actor, live, claims)
        )
        if not recorded.accepted:
            raise TokenReplayedError(
                "this code was already scanned once: a code is valid for one scan; "
                "ask the holder to show a fresh one"
            )
        return Scanned(live, holder, _fever(temperature), recorded.event_id, claims)

    def look_up(
        self, person_key: bytes, where: Place, actor: str, temperature: float | None = None
    ) -> Scanned:
        holder = self._holders.get(person_key, self._holder_of)
        live = self._colour_of(person_key)
        now = self._clock_ms()
        recorded = self._log.record(
            self._event(LOOKUP, OK, now, person_key, holder, where, actor, live, None)
        )
        return Scanned(live, holder, _fever(temperature), recorded.event_id, None)

    def _colour_of(self, person_key: bytes) -> LiveColour:
        # A person registered a moment ago may not be in the index version the colour replica
        # holds yet; a short bounded wait spares them a confusing error.
        deadline = time.monotonic() + self._unknown_retry_s
        while True:
            live = self._live_colour(person_key)
            if live.colour is not None:
                return live
            if time.monotonic() >= deadline:
                raise Unavailable(
                    "the colour service has no data for this person yet (index version "
                    f"{live.index_version}); try again in a moment"
                )
            time.sleep(0.05)

    def _event(
        self,
        kind: str,
        outcome: str,
        now_ms: int,
        person_key: bytes | None,
        holder: Holder | None,
        where: Place,
        actor: str,
        live: LiveColour | None,
        claims: TokenClaims | None,
    ) -> DisplayEvent:
        return DisplayEvent(
            kind=kind,
            outcome=outcome,
            at_ms=now_ms,
            day=day_number(dt.datetime.fromtimestamp(now_ms / 1000, SHANGHAI)),
            person_key=person_key,
            device=where.device_id,
            place=where.place,
            masked_id=holder.masked_id_number if holder else "",
            masked_name=holder.masked_name if holder else "",
            actor=actor,
            colour=None if live is None else live.colour,
            index_version=None if live is None else live.index_version,
            rule_set_version=None if live is None else live.rule_set_version,
            token_id=None if claims is None else claims.token_id,
            token_expires_at_ms=None if claims is None else claims.expires_at_ms,
        )


def _fever(temperature: float | None) -> bool:
    return temperature is not None and temperature >= FEVER_CELSIUS


__all__ = [
    "FEVER_CELSIUS",
    "TOKEN_REPLAYED",
    "DisplayDesk",
    "Holder",
    "HolderCache",
    "LiveColour",
    "Place",
    "Scanned",
    "Shown",
    "TokenExpiredError",
    "TokenForgedError",
    "TokenMalformedError",
    "TokenRefused",
    "TokenReplayedError",
]

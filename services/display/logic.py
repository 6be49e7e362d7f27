"""Showing and scanning codes (R9, R10): the order of the checks and what is logged.

Show:  a proxy's mandate? -> holder registered? -> live colour -> sign a short-lived token ->
       log durably -> reply.
Scan:  token genuine? fresh? -> live colour -> claim the token and log in one transaction
       (a second scan of the same token is refused) -> reply.
Look-up (代查): a verifier reads an ID card -> live colour -> log -> reply.

Every scan and look-up is logged with the verifier's context (bus, exam, hospital, venue,
staff_desk: services/display/contexts.py decides what each may see and do); a bus scan also
with its vehicle and route (services/display/partners.py).

A colour is never taken from the token: every scan asks for the live one, so a person who
turned red after showing their code is red at the gate. Every attempt is logged, refused ones
with why, before the caller is answered.

No grpc here: the colour and declaration services are reached through the two callables the
servicer wires in.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from services._common.actors import (
    Actor,
    Role,
    check_not_self,
    no_mandate,
    proxy_person_label,
)
from services._common.cache import cached_lookup
from services._common.days import SHANGHAI, check_county, day_number
from services._common.deadline import bounded
from services._common.errors import InvalidArgument, Unavailable
from services._common.logs import redact
from services._common.mandates import MandateHeld
from services._common.temperature import body_temperature, is_fever
from services.display.cards import PrintedCards, is_card
from services.display.store import LOOKUP, OK, SCAN, SHOW, DisplayEvent, DisplayLog
from services.display.tokens import CodeTokens, TokenClaims, TokenError, TokenExpired, TokenReplayed

logger = logging.getLogger(__name__)

# Who may do what (roles are asserted by the caller until credentials carry them, issue 10).
# The holder, or a proxy showing a code for someone without a smartphone (R3), under an active
# mandate the declaration service confirms (a citizen's own Show asks nothing more).
SHOW_ROLES = frozenset({Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER})
SCAN_ROLES = frozenset({Role.VERIFIER, Role.PARTNER})
# Reading someone's colour from their ID card is staff work (代查, R10).
LOOKUP_ROLES = frozenset({Role.VERIFIER})


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
class ScanSite:
    """Who scans where, beyond the device: the verifier's context, and a bus's vehicle and
    route (R11)."""

    context: str = ""
    vehicle: str = ""
    route: str = ""


NO_SITE = ScanSite()  # a Show, or a scan in a development run without a context


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
    context: str = ""  # where the verifier works, as logged


def place(device_id: str, where: str, county: int, field: str) -> Place:
    """Where a display or scan happened, validated; InvalidArgument names every bad field."""
    violations: list[tuple[str, str]] = []
    device_id = device_id.strip()
    if not device_id:
        violations.append((f"{field}.device_id", "the device id is required"))
    elif len(device_id) > 64 or not device_id.isprintable():
        violations.append((f"{field}.device_id", "1-64 printable characters"))
    where = where.strip()
    if len(where) > 200 or not where.isprintable():
        violations.append((f"{field}.place", "at most 200 printable characters"))
    if county:
        try:
            check_county(county, f"{field}.county")
        except InvalidArgument as bad:
            violations.extend(bad.violations)
    if violations:
        raise InvalidArgument(violations)
    # redact(): a place typed by staff must not smuggle a phone or ID number into the log.
    return Place(redact(device_id), redact(where), county)


def actor_label(actor: Actor, mandate: MandateHeld | None = None) -> str:
    """Who acted, as logged: the role and the opaque principal or the masked ID number. A
    proxy is named with the mandate they acted under (`family_proxy:11**...2X mandate:7`): a
    family proxy by their masked ID number (they are a person; the start of their person key
    when only that is known), a grid worker by account id."""
    if mandate is None:
        return f"{actor.role}:{actor.principal or actor.masked_id_number}"
    if actor.role is Role.FAMILY_PROXY:
        masked = actor.masked_id_number or mandate.proxy_masked_id_number
        who = proxy_person_label(masked, actor.person_key)
    else:
        who = actor.principal
    return f"{actor.role}:{who} mandate:{mandate.mandate_id}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class DisplayDesk:
    """Show, Scan and look-up, in the order that makes each safe."""

    def __init__(
        self,
        tokens: CodeTokens,
        log: DisplayLog,
        live_colour: Callable[[bytes, int], LiveColour],  # (person key, min index version)
        holder_of: Callable[[bytes], Holder],
        *,
        mandate_of: Callable[[Actor, bytes], MandateHeld | None] | None = None,
        cards: PrintedCards | None = None,  # printed cards (R3); None: refused as malformed
        clock_ms: Callable[[], int] = _now_ms,
        unknown_retry_s: float = 2.0,
    ) -> None:
        """`mandate_of(proxy, person key)`: the proxy's active mandate for the person, or None
        (asked for proxies only; without it no proxy may show a code)."""
        self._tokens = tokens
        self._log = log
        self._live_colour = live_colour
        # Only people found registered are kept, so an unregistered person is always told
        # (NOT_FOUND from the declaration service) when they try to show a code.
        self._holder_of = cached_lookup(holder_of)
        self._mandate_of = mandate_of
        self._cards = cards
        self._clock_ms = clock_ms
        self._unknown_retry_s = unknown_retry_s

    def forget_holders(self, person_keys: Iterable[bytes]) -> None:
        """Drop these people's cached masked records (their registration changed)."""
        self._holder_of.forget(person_keys)

    def show(self, actor: Actor, person_key: bytes, where: Place, min_version: int = 0) -> Shown:
        """Sign a short-lived token for the holder, after logging the display durably. With
        `min_version`, the colour is from that index version or a later one (read your
        writes: the candidate's cleared code right after the negative test's ingest)."""
        actor.acts_for(person_key, SHOW_ROLES, "show a code")
        # A proxy only under an active mandate, checked before anything about the person is
        # read; the holder's own Show (the hot path) asks nothing more.
        mandate = self._mandate(actor, person_key) if actor.is_proxy else None
        holder = self._holder_of(person_key)
        live = self._colour_of(person_key, min_version)
        now = self._clock_ms()
        token, claims = self._tokens.issue(person_key, now)
        recorded = self._log.record(
            self._event(SHOW, OK, now, person_key, holder, where, actor, live, claims, mandate)
        )
        return Shown(live, holder, token, claims, recorded.event_id)

    def _mandate(self, actor: Actor, person_key: bytes) -> MandateHeld:
        check_not_self(actor, person_key, "show a code")
        held = self._mandate_of(actor, person_key) if self._mandate_of is not None else None
        if held is None:
            logger.info("refused a show by %s: no active mandate", actor.proxy_name())
            raise no_mandate(actor, "show a code")
        return held

    def scan(
        self,
        actor: Actor,
        token: str,
        where: Place,
        temperature: float | None = None,
        site: ScanSite = NO_SITE,
    ) -> Scanned:
        """The live colour of a token's holder; a refused token is logged with why, then
        raised (its `reason` says why)."""
        actor.require(SCAN_ROLES, "scan codes")
        reading = _reading(temperature)
        now = self._clock_ms()
        try:
            # A printed card (HCC1:, R3) goes to services/display/cards.py: it verifies the card,
            # asks the declaration service whether it is live, and returns claims that are not
            # single-use; the rest of the scan is a phone code's.
            if is_card(token) and self._cards is not None:
                claims = self._cards.verify(token, now)
            else:
                claims = self._tokens.verify(token, now)
        except TokenError as error:
            # Only an expired token is genuine enough to name its holder in the log.
            key = error.claims.person_key if isinstance(error, TokenExpired) else None
            self._log.record(
                self._event(SCAN, error.reason, now, key, None, where, actor, None, None, site=site)
            )
            raise
        holder = self._holder_of(claims.person_key)
        live = self._colour_of(claims.person_key)
        recorded = self._log.record(
            self._event(
                SCAN, OK, now, claims.person_key, holder, where, actor, live, claims, site=site
            )
        )
        if not recorded.accepted:
            raise TokenReplayed()
        return Scanned(live, holder, is_fever(reading), recorded.event_id, claims, site.context)

    def look_up(
        self,
        actor: Actor,
        person_key: bytes,
        where: Place,
        temperature: float | None = None,
        site: ScanSite = NO_SITE,
        *,
        roles: frozenset[Role] = LOOKUP_ROLES,
        action: str = "look people up by ID card",
    ) -> Scanned:
        """A verifier reads a person's live colour from their ID card (代查, R10); a partner
        names a person another way (a bus's transit card, a hospital's patient) with its own
        `roles` and `action`."""
        actor.require(roles, action)
        reading = _reading(temperature)
        holder = self._holder_of(person_key)
        live = self._colour_of(person_key)
        now = self._clock_ms()
        recorded = self._log.record(
            self._event(LOOKUP, OK, now, person_key, holder, where, actor, live, None, site=site)
        )
        return Scanned(live, holder, is_fever(reading), recorded.event_id, None, site.context)

    def record_refusal(
        self, kind: str, reason: str, actor: Actor, where: Place, site: ScanSite = NO_SITE
    ) -> None:
        """Log a scan or look-up refused before anyone was named (a transit card linked to
        nobody): every attempt is logged, with why."""
        now = self._clock_ms()
        self._log.record(
            self._event(kind, reason, now, None, None, where, actor, None, None, site=site)
        )

    def _colour_of(self, person_key: bytes, min_version: int = 0) -> LiveColour:
        # A person registered a moment ago may not be in the index version the colour replica
        # holds yet; a short bounded wait spares them a confusing error.
        deadline = time.monotonic() + bounded(self._unknown_retry_s)  # not past the caller's
        while True:
            live = self._live_colour(person_key, min_version)
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
        actor: Actor,
        live: LiveColour | None,
        claims: TokenClaims | None,
        mandate: MandateHeld | None = None,
        site: ScanSite = NO_SITE,
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
            actor=actor_label(actor, mandate),
            colour=None if live is None else live.colour,
            index_version=None if live is None else live.index_version,
            rule_set_version=None if live is None else live.rule_set_version,
            token_id=None if claims is None else claims.token_id,
            token_expires_at_ms=None if claims is None else claims.expires_at_ms,
            context=site.context,
            vehicle=site.vehicle,
            route=site.route,
        )


def _reading(temperature: float | None) -> float | None:
    return None if temperature is None else body_temperature(temperature, "temperature_celsius")

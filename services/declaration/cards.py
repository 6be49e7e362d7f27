"""Printed cards (R3, issue 11; docs/cards.md): the declaration service records, signs, revokes
and answers for the cards of people without a smartphone. No gRPC here.

This service holds the people and the mandates, so whether the caller may issue or revoke a
card (the holder, a proxy under an active mandate, the support desk, an operator) is checked in
the same transaction as the write: a mandate revoked a moment before does not let a card out.
Issuing a card revokes the person's previous one in that transaction (a partial unique index
keeps at most one unrevoked card per person). Rows are never deleted.

Cards are signed with the card key ring (`<data_dir>/declaration/card-keys`, or
HEALTHCODE_CARD_KEYS_DIR; the display's key-ring format, `services/display/keyring.py`), whose
public keys ListCardKeys publishes; the token's wire form is `services/display/cards.py`'s.
A card lives HEALTHCODE_CARD_TTL_DAYS (365) days.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services._common.actors import Actor, Role, check_not_self, no_mandate
from services._common.config import env_int
from services._common.errors import NotFound
from services._common.identifiers import Identified, mask_name
from services.declaration.logic import check_reason, proxy_of, recorded
from services.declaration.model import RecordedActor
from services.declaration.repository import DeclarationRepository, _active
from services.display.cards import (
    CARD_ID_BYTES,
    DEFAULT_CARD_TTL_MS,
    MAX_CARD_TTL_MS,
    encode_card,
    short_id,
)
from services.display.keyring import KeyRing, TokenKey

logger = logging.getLogger(__name__)

CARD_KEYS_DIR_ENV = "HEALTHCODE_CARD_KEYS_DIR"
CARD_TTL_ENV = "HEALTHCODE_CARD_TTL_DAYS"
DAY_MS = 86_400_000
# Issue, revoke, list: for the holder, a proxy under an active mandate, and staff.
CARD_ROLES = (Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER, Role.SUPPORT, Role.ADMIN)
CHECK_ROLES = (Role.SERVICE,)
LIST_LIMIT = 100

LIVE, REVOKED, EXPIRED, UNKNOWN = "live", "revoked", "expired", "unknown"


def card_keys_dir(env: Mapping[str, str], data_dir: Path) -> Path:
    """HEALTHCODE_CARD_KEYS_DIR, else `<data_dir>/declaration/card-keys`."""
    raw = env.get(CARD_KEYS_DIR_ENV, "").strip()
    return Path(raw) if raw else data_dir / "declaration" / "card-keys"


def card_ttl_ms(env: Mapping[str, str]) -> int:
    """HEALTHCODE_CARD_TTL_DAYS (1-1825; 365 when unset), in ms."""
    default_days = DEFAULT_CARD_TTL_MS // DAY_MS
    return DAY_MS * env_int(env, CARD_TTL_ENV, default_days, low=1, high=MAX_CARD_TTL_MS // DAY_MS)


@dataclass(frozen=True, slots=True)
class PrintedCard:
    """A card as recorded, with its holder's name and masked ID number."""

    card_id: bytes
    person_key: bytes
    person_name: str
    masked_id_number: str
    issued_at_ms: int
    expires_at_ms: int
    key_id: bytes
    issued_by: RecordedActor
    mandate_id: int | None
    revoked_at_ms: int | None = None
    revoked_by: RecordedActor | None = None
    revoke_reason: str = ""

    @property
    def short_id(self) -> str:
        return short_id(self.card_id)

    @property
    def masked_name(self) -> str:
        return mask_name(self.person_name)

    def state(self, at_ms: int) -> str:
        if self.revoked_at_ms is not None and self.revoked_at_ms <= at_ms:
            return REVOKED
        if self.expires_at_ms <= at_ms:
            return EXPIRED
        return LIVE


@dataclass(frozen=True, slots=True)
class IssuedCard:
    card: PrintedCard
    token: str  # what the card's QR code carries
    replaced: PrintedCard | None  # the previous card, revoked by this issue


_SELECT = (
    "SELECT c.*, p.name AS person_name, p.masked_id_number AS person_masked "
    "FROM printed_cards c JOIN persons p ON p.person_key = c.person_key"
)


def _card_of(r: sqlite3.Row) -> PrintedCard:
    revoked_by = None
    if r["revoked_at_ms"] is not None:
        revoked_by = RecordedActor(
            Role(r["revoked_by_role"]), r["revoked_by"] or "", r["revoked_by_masked"] or ""
        )
    return PrintedCard(
        card_id=bytes(r["card_id"]),
        person_key=bytes(r["person_key"]),
        person_name=r["person_name"],
        masked_id_number=r["person_masked"],
        issued_at_ms=int(r["issued_at_ms"]),
        expires_at_ms=int(r["expires_at_ms"]),
        key_id=bytes(r["key_id"]),
        issued_by=RecordedActor(Role(r["issued_by_role"]), r["issued_by"], r["issued_by_masked"]),
        mandate_id=r["mandate_id"],
        revoked_at_ms=r["revoked_at_ms"],
        revoked_by=revoked_by,
        revoke_reason=r["revoke_reason"],
    )


def _card(conn: sqlite3.Connection, card_id: bytes) -> PrintedCard | None:
    row = conn.execute(f"{_SELECT} WHERE c.card_id = ?", (card_id,)).fetchone()
    return _card_of(row) if row is not None else None


def _unrevoked(conn: sqlite3.Connection, person_key: bytes) -> PrintedCard | None:
    row = conn.execute(
        f"{_SELECT} WHERE c.person_key = ? AND c.revoked_at_ms IS NULL", (person_key,)
    ).fetchone()
    return _card_of(row) if row is not None else None


def _revoke(
    conn: sqlite3.Connection, card_id: bytes, now_ms: int, by: RecordedActor, reason: str
) -> None:
    conn.execute(
        "UPDATE printed_cards SET revoked_at_ms = ?, revoked_by_role = ?, revoked_by = ?, "
        "revoked_by_masked = ?, revoke_reason = ? WHERE card_id = ? AND revoked_at_ms IS NULL",
        (now_ms, by.role.value, by.principal, by.masked_id_number, reason, card_id),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PrintedCards:
    """Issue, revoke, list and check printed cards."""

    def __init__(
        self,
        repository: DeclarationRepository,
        keys: KeyRing,
        ttl_ms: int = DEFAULT_CARD_TTL_MS,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        if not DAY_MS <= ttl_ms <= MAX_CARD_TTL_MS:
            raise ValueError(f"a card lives 1 day to 5 years, got {ttl_ms} ms")
        self._repo = repository
        self._keys = keys
        self._ttl_ms = ttl_ms
        self._clock_ms = clock_ms

    @classmethod
    def from_env(
        cls, repository: DeclarationRepository, data_dir: Path, env: Mapping[str, str] | None = None
    ) -> PrintedCards:
        """The service's cards: the key ring (its first key made if none signs) and lifetime
        from the environment."""
        env = os.environ if env is None else env
        ring = KeyRing.open(card_keys_dir(env, data_dir), create=True)
        return cls(repository, ring, card_ttl_ms(env))

    def now_ms(self) -> int:
        return self._clock_ms()

    def _may(
        self, conn: sqlite3.Connection, actor: Actor, person_key: bytes, action: str, now_ms: int
    ) -> int | None:
        """PermissionDenied unless the actor may `action` for the person now, read in the
        caller's transaction; the mandate id a proxy acts under."""
        actor.acts_for(person_key, CARD_ROLES, action)
        if not actor.is_proxy:
            return None
        check_not_self(actor, person_key, action)
        mandate = _active(conn, proxy_of(actor), person_key, now_ms)
        if mandate is None:
            logger.info("refused: %s may not %s without a mandate", actor.proxy_name(), action)
            raise no_mandate(actor, action)
        return mandate.mandate_id

    def issue(self, actor: Actor, person: Identified) -> IssuedCard:
        """A new card for the person; their previous card, if any, is revoked with it."""
        action = "issue a printed card"
        now = self._clock_ms()
        key = self._keys.signer()
        card_id = secrets.token_bytes(CARD_ID_BYTES)
        expires = now + self._ttl_ms
        with self._repo.transaction() as conn:
            mandate_id = self._may(conn, actor, person.key, action, now)
            if (
                conn.execute("SELECT 1 FROM persons WHERE person_key = ?", (person.key,)).fetchone()
                is None
            ):
                raise NotFound("no person is registered with that ID number; Register first")
            previous = _unrevoked(conn, person.key)
            if previous is not None:
                _revoke(
                    conn, previous.card_id, now, recorded(actor), f"replaced by {short_id(card_id)}"
                )
            by = recorded(actor)
            conn.execute(
                "INSERT INTO printed_cards (card_id, person_key, issued_at_ms, expires_at_ms, "
                "key_id, issued_by_role, issued_by, issued_by_masked, mandate_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    card_id,
                    person.key,
                    now,
                    expires,
                    key.key_id,
                    by.role.value,
                    by.principal,
                    by.masked_id_number,
                    mandate_id,
                ),
            )
            card = _card(conn, card_id)
            replaced = _card(conn, previous.card_id) if previous is not None else None
        assert card is not None
        token = encode_card(card_id, person.key, now, expires, key)
        logger.info(
            "printed card %s issued for %s by %s%s%s",
            card.short_id,
            card.masked_id_number,
            _who(actor),
            f" under mandate {mandate_id}" if mandate_id is not None else "",
            f", replacing {replaced.short_id}" if replaced is not None else "",
        )
        return IssuedCard(card, token, replaced)

    def revoke(
        self, actor: Actor, person: Identified, card_id: bytes = b"", reason: str = ""
    ) -> tuple[PrintedCard, bool]:
        """Revoke the person's card `card_id` (b"": their unrevoked one). (card, revoked):
        revoking one revoked before changes nothing."""
        action = "revoke a printed card"
        why = check_reason(reason, "reason") or "revoked"
        now = self._clock_ms()
        with self._repo.transaction() as conn:
            self._may(conn, actor, person.key, action, now)
            card = _card(conn, card_id) if card_id else _unrevoked(conn, person.key)
            if card is None or card.person_key != person.key:
                raise NotFound(
                    "that person has no such printed card; `healthcode card list` shows theirs"
                )
            if card.revoked_at_ms is not None:
                return card, False
            _revoke(conn, card.card_id, now, recorded(actor), why)
            stored = _card(conn, card.card_id)
        assert stored is not None
        logger.info(
            "printed card %s of %s revoked by %s",
            stored.short_id,
            stored.masked_id_number,
            _who(actor),
        )
        return stored, True

    def list_cards(self, actor: Actor, person: Identified) -> list[PrintedCard]:
        """The person's cards, newest first (revoked ones too)."""
        now = self._clock_ms()
        with self._repo.reading() as conn:
            self._may(conn, actor, person.key, "list printed cards", now)
            rows = conn.execute(
                f"{_SELECT} WHERE c.person_key = ? ORDER BY c.issued_at_ms DESC LIMIT ?",
                (person.key, LIST_LIMIT),
            ).fetchall()
        return [_card_of(r) for r in rows]

    def check(
        self, actor: Actor, card_id: bytes, person_key: bytes
    ) -> tuple[str, PrintedCard | None]:
        """A scanned card's state now (LIVE, REVOKED, EXPIRED, or UNKNOWN: no such card of that
        person): read from the store each time, so a revocation counts at once."""
        actor.require(CHECK_ROLES, "check printed cards")
        if len(card_id) != CARD_ID_BYTES:
            return UNKNOWN, None
        with self._repo.reading() as conn:
            card = _card(conn, card_id)
        if card is None or card.person_key != person_key:
            return UNKNOWN, None
        return card.state(self._clock_ms()), card

    def card_keys(self) -> list[TokenKey]:
        """The card keys a card may verify with, the signer first. Every key in the ring is
        published, retired ones too: a card outlives any key rotation's grace (docs/cards.md)."""
        ring = self._keys.keys
        return [ring.signer, *(k for k in ring.keys if k is not ring.signer)]


def _who(actor: Actor) -> str:
    return f"{actor.role} {actor.principal or actor.masked_id_number}".strip()

"""Printed cards (R3, issue 11, item 4) without a network: the card records in the declaration
service (issue, reissue revokes the old, revoke by the holder, a proxy under a mandate or the
support desk; a proxy without one refused; rows kept), and the card token as the display
verifies it (genuine, forged, tampered, wrong prefix, expired, revoked)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Iterator

import base45
import healthcode_matcher
import pytest
from healthcode.v1 import declaration_pb2
from nacl.signing import SigningKey

from services._common.actors import Actor, NoMandate, Role
from services._common.errors import NotFound, PermissionDenied
from services._common.identifiers import Identified, Identifiers
from services.declaration.cards import EXPIRED, LIVE, REVOKED, UNKNOWN, PrintedCards
from services.declaration.logic import Declarations
from services.declaration.repository import DeclarationRepository
from services.display import tokens
from services.display.cards import (
    CARD_PREFIX,
    CardAnswer,
    CardExpired,
    CardRevoked,
    CardUnknown,
    decode_card,
    encode_card,
    is_card,
    short_id,
)
from services.display.cards import PrintedCards as CardVerifier
from services.display.keyring import KeyRing, TokenKey
from services.display.tokens import CodeTokens, TokenForged, TokenMalformed
from tests.pg import Place
from tests.support import SECRET, Clock

IDS = healthcode_matcher.synthetic_id_numbers(6, 4242).decode().split()
GRANNY, DAUGHTER, SON, STRANGER = IDS[:4]
GRID = Actor(Role.GRID_WORKER, "grid-hp-007")
SUPPORT = Actor(Role.SUPPORT, "desk-2")
ADMIN = Actor(Role.ADMIN, "ops-1")
SERVICE = Actor(Role.SERVICE, "display")
VERIFIER = Actor(Role.VERIFIER, "gate-1")
START = dt.datetime(2024, 5, 10, 2, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture()
def clock() -> Clock:
    return Clock(START)


@pytest.fixture()
def ids() -> Identifiers:
    return Identifiers.from_secret(SECRET)


@pytest.fixture()
def repo(place: Place) -> Iterator[DeclarationRepository]:
    # Once per storage backend (tests/conftest.py `place`).
    repo = DeclarationRepository(place("d.sqlite3"))
    yield repo
    repo.close()


@pytest.fixture()
def service(repo: DeclarationRepository, ids: Identifiers, clock: Clock) -> Declarations:
    return Declarations(repo, ids, clock=clock)


@pytest.fixture()
def card_key() -> TokenKey:
    return TokenKey.generate(0)


@pytest.fixture()
def cards(repo: DeclarationRepository, clock: Clock, card_key: TokenKey) -> PrintedCards:
    ring = KeyRing([card_key])
    return PrintedCards(repo, ring, 365 * 86_400_000, clock_ms=clock.ms)


def person(ids: Identifiers, id_number: str) -> Identified:
    return ids.person(id_number, "person.id_number")


def family(ids: Identifiers, id_number: str) -> Actor:
    me = person(ids, id_number)
    return Actor(Role.FAMILY_PROXY, "", me.key, me.masked)


def citizen(ids: Identifiers, id_number: str) -> Actor:
    me = person(ids, id_number)
    return Actor(Role.CITIZEN, "", me.key, me.masked)


@pytest.fixture()
def granny(service: Declarations, ids: Identifiers) -> Identified:
    """An elderly person her daughter registered (so the daughter holds a mandate)."""
    service.register(family(ids, DAUGHTER), "王秀英", GRANNY, [])
    return person(ids, GRANNY)


def rows(repo: DeclarationRepository) -> list[sqlite3.Row]:
    with repo.reading() as conn:
        return conn.execute("SELECT * FROM printed_cards ORDER BY issued_at_ms").fetchall()


# -- the card records ------------------------------------------------------------------------


def test_a_proxy_issues_a_card_and_reissuing_revokes_the_old_in_one_go(
    cards: PrintedCards, granny: Identified, ids: Identifiers, clock: Clock
) -> None:
    daughter = family(ids, DAUGHTER)
    first = cards.issue(daughter, granny)
    assert first.replaced is None
    assert first.token.startswith(CARD_PREFIX)
    card = first.card
    assert card.person_key == granny.key and card.masked_name == "王**"
    assert card.masked_id_number == granny.masked
    assert card.issued_by.role is Role.FAMILY_PROXY and card.mandate_id is not None
    assert card.expires_at_ms - card.issued_at_ms == 365 * 86_400_000
    assert card.state(clock.ms()) == LIVE
    assert cards.check(SERVICE, card.card_id, granny.key) == (LIVE, card)

    clock.advance(DAY)
    second = cards.issue(SUPPORT, granny)
    assert second.replaced is not None and second.replaced.card_id == card.card_id
    assert second.replaced.revoked_by is not None
    assert second.replaced.revoked_by.role is Role.SUPPORT
    assert second.replaced.revoke_reason == f"replaced by {second.card.short_id}"
    assert cards.check(SERVICE, card.card_id, granny.key)[0] == REVOKED
    assert cards.check(SERVICE, second.card.card_id, granny.key)[0] == LIVE
    # Both rows kept; newest first in the listing.
    assert [r["card_id"] for r in rows(cards._repo)] == [card.card_id, second.card.card_id]
    listed = cards.list_cards(citizen(ids, GRANNY), granny)
    assert [c.card_id for c in listed] == [second.card.card_id, card.card_id]


@pytest.mark.parametrize("who", ["holder", "proxy", "support", "admin"])
def test_the_holder_a_proxy_with_a_mandate_and_staff_revoke(
    who: str, cards: PrintedCards, granny: Identified, ids: Identifiers, clock: Clock
) -> None:
    actor = {
        "holder": citizen(ids, GRANNY),
        "proxy": family(ids, DAUGHTER),
        "support": SUPPORT,
        "admin": ADMIN,
    }[who]
    issued = cards.issue(family(ids, DAUGHTER), granny).card
    clock.advance(dt.timedelta(minutes=5))
    revoked, changed = cards.revoke(actor, granny, b"", "card lost at the market")
    assert changed and revoked.card_id == issued.card_id
    assert (
        revoked.revoked_at_ms == clock.ms() and revoked.revoke_reason == "card lost at the market"
    )
    assert revoked.revoked_by is not None and revoked.revoked_by.role is actor.role
    assert cards.check(SERVICE, issued.card_id, granny.key)[0] == REVOKED
    # Again: nothing changes; by id, the same.
    again, changed = cards.revoke(actor, granny, issued.card_id)
    assert not changed and again.revoked_at_ms == revoked.revoked_at_ms
    assert len(rows(cards._repo)) == 1


def test_a_proxy_without_a_mandate_and_strangers_are_refused_and_nothing_changes(
    cards: PrintedCards, service: Declarations, granny: Identified, ids: Identifiers
) -> None:
    issued = cards.issue(citizen(ids, GRANNY), granny).card
    son = family(ids, SON)  # family, but no mandate links him to her
    with pytest.raises(NoMandate):
        cards.issue(son, granny)
    with pytest.raises(NoMandate):
        cards.revoke(son, granny)
    with pytest.raises(NoMandate):
        cards.list_cards(son, granny)
    with pytest.raises(NoMandate):
        cards.issue(GRID, granny)
    with pytest.raises(PermissionDenied):  # a citizen only for themself
        cards.revoke(citizen(ids, STRANGER), granny)
    with pytest.raises(PermissionDenied):
        cards.issue(VERIFIER, granny)
    with pytest.raises(PermissionDenied):  # only platform services check cards
        cards.check(VERIFIER, issued.card_id, granny.key)
    assert [r["revoked_at_ms"] for r in rows(cards._repo)] == [None]

    # Once the holder revokes the daughter's mandate, she is refused too.
    [mandate], _ = service.list_mandates(citizen(ids, GRANNY))
    service.revoke_mandate(citizen(ids, GRANNY), mandate.mandate_id)
    with pytest.raises(NoMandate):
        cards.revoke(family(ids, DAUGHTER), granny)
    assert cards.check(SERVICE, issued.card_id, granny.key)[0] == LIVE


def test_unknown_people_cards_and_mismatched_holders(
    cards: PrintedCards, granny: Identified, ids: Identifiers, clock: Clock
) -> None:
    with pytest.raises(NotFound):
        cards.issue(ADMIN, person(ids, STRANGER))
    issued = cards.issue(ADMIN, granny).card
    assert cards.check(SERVICE, b"\x00" * 16, granny.key) == (UNKNOWN, None)
    assert cards.check(SERVICE, issued.card_id, person(ids, STRANGER).key) == (UNKNOWN, None)
    assert cards.check(SERVICE, b"short", granny.key) == (UNKNOWN, None)
    with pytest.raises(NotFound):
        cards.revoke(ADMIN, person(ids, STRANGER), issued.card_id)  # not that person's card
    clock.advance(366 * DAY)
    assert cards.check(SERVICE, issued.card_id, granny.key)[0] == EXPIRED


# -- the card token ----------------------------------------------------------------------------


def _verifier(
    card_key: TokenKey, answer: int = declaration_pb2.PRINTED_CARD_STATE_LIVE
) -> tuple[CardVerifier, list[bytes]]:
    asked: list[bytes] = []

    def check(card_id: bytes, person_key: bytes) -> CardAnswer:
        asked.append(card_id)
        return CardAnswer(answer, short_id(card_id))

    return CardVerifier(check, lambda: {card_key.key_id: card_key.public_key}), asked


PERSON = bytes(range(16))
CARD = bytes(range(100, 116))
NOW = 1_715_306_400_000
YEAR = 365 * 86_400_000


def test_a_genuine_card_verifies_every_time_and_asks_each_time(card_key: TokenKey) -> None:
    token = encode_card(CARD, PERSON, NOW, NOW + YEAR, card_key)
    assert is_card(token) and token.startswith("HCC1:")
    assert all(c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:" for c in token)
    verifier, asked = _verifier(card_key)
    first = verifier.verify(token, NOW + 1000)
    second = verifier.verify(token, NOW + 2000)
    assert first.person_key == second.person_key == PERSON
    # Not single-use: each scan's logged id is the card's first 8 bytes and a fresh tail.
    assert first.token_id[:8] == second.token_id[:8] == CARD[:8]
    assert first.token_id != second.token_id
    assert asked == [CARD, CARD]


@pytest.mark.parametrize(
    ("state", "error", "reason"),
    [
        (declaration_pb2.PRINTED_CARD_STATE_REVOKED, CardRevoked, "CARD_REVOKED"),
        (declaration_pb2.PRINTED_CARD_STATE_EXPIRED, CardExpired, "CARD_EXPIRED"),
        (declaration_pb2.PRINTED_CARD_STATE_UNKNOWN, CardUnknown, "CARD_UNKNOWN"),
    ],
)
def test_a_revoked_card_is_refused_with_what_to_do(
    card_key: TokenKey, state: int, error: type[Exception], reason: str
) -> None:
    token = encode_card(CARD, PERSON, NOW, NOW + YEAR, card_key)
    verifier, _ = _verifier(card_key, state)
    with pytest.raises(error) as refused:
        verifier.verify(token, NOW + 1000)
    assert refused.value.reason == reason  # type: ignore[attr-defined]
    assert "community office" in str(refused.value)
    assert short_id(CARD) in str(refused.value)


def test_forged_tampered_and_wrong_prefix_cards_are_refused(card_key: TokenKey) -> None:
    verifier, asked = _verifier(card_key)
    # Signed by another key that claims the card key's id.
    impostor = dataclasses.replace(TokenKey.generate(0), key_id=card_key.key_id)
    forged = encode_card(CARD, PERSON, NOW, NOW + YEAR, impostor)
    with pytest.raises(TokenForged, match="signature"):
        verifier.verify(forged, NOW)
    # Signed by a key that is not a card key at all.
    stranger = encode_card(CARD, PERSON, NOW, NOW + YEAR, TokenKey.generate(0))
    with pytest.raises(TokenForged, match="not a card key"):
        verifier.verify(stranger, NOW)
    # Tampered: another person key in the same signed message.
    token = encode_card(CARD, PERSON, NOW, NOW + YEAR, card_key)
    raw = base45.b45decode(token[len(CARD_PREFIX) :])
    tampered = raw.replace(PERSON, bytes(reversed(PERSON)))
    assert tampered != raw
    with pytest.raises(TokenForged):
        verifier.verify(CARD_PREFIX + base45.b45encode(tampered).decode(), NOW)
    # A phone's minute code re-prefixed as a card names a display key, not a card key.
    phone = CodeTokens(SigningKey.generate()).issue(PERSON, NOW)[0]
    with pytest.raises(TokenForged):
        verifier.verify(CARD_PREFIX + phone[len(tokens.PREFIX) :], NOW)
    # And a card shown as a phone code is not one the display's ring verifies.
    as_phone = tokens.PREFIX + token[len(CARD_PREFIX) :]
    with pytest.raises(TokenForged):
        CodeTokens(SigningKey.generate()).verify(as_phone, NOW)
    for text in ("HC1:" + token[5:], "HCC2:" + token[5:], "HCC1:not base45!", ""):
        with pytest.raises(TokenMalformed):
            decode_card(text)
    assert asked == []  # nothing refused here reached the declaration service


def test_an_expired_card_is_refused_without_asking(card_key: TokenKey) -> None:
    token = encode_card(CARD, PERSON, NOW, NOW + YEAR, card_key)
    verifier, asked = _verifier(card_key)
    with pytest.raises(CardExpired) as refused:
        verifier.verify(token, NOW + YEAR)
    assert refused.value.reason == "CARD_EXPIRED"
    assert asked == []
    # A card claiming more life than any card gets is refused as forged.
    with pytest.raises(TokenForged):
        verifier.verify(encode_card(CARD, PERSON, NOW, NOW + 10 * YEAR, card_key), NOW)


def test_issued_tokens_verify_with_the_published_keys(
    cards: PrintedCards, granny: Identified, ids: Identifiers, clock: Clock
) -> None:
    issued = cards.issue(family(ids, DAUGHTER), granny)
    published = {k.key_id: k.public_key for k in cards.card_keys()}

    def check(card_id: bytes, person_key: bytes) -> CardAnswer:
        state, _ = cards.check(SERVICE, card_id, person_key)
        value = {LIVE: declaration_pb2.PRINTED_CARD_STATE_LIVE}.get(
            state, declaration_pb2.PRINTED_CARD_STATE_REVOKED
        )
        return CardAnswer(value)

    verifier = CardVerifier(check, lambda: published)
    assert verifier.verify(issued.token, clock.ms()).person_key == granny.key
    cards.revoke(citizen(ids, GRANNY), granny)
    with pytest.raises(CardRevoked):
        verifier.verify(issued.token, clock.ms())

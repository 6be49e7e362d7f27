"""Cold-chain exposure events (R14) in process: validation, phones counted for their holders,
idempotency by event id, the batch listing, partner kinds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import healthcode_matcher
import pytest

from services._common.actors import Actor, Role
from services._common.errors import AlreadyExists, InvalidArgument, PermissionDenied
from services._common.identifiers import Identifiers
from services.risk_index.cold_chain import ColdChain
from services.risk_index.logic import RiskIndex
from services.risk_index.repository import RiskIndexRepository
from tests.pg import Place
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(4, 51).decode().split()
PHONES = healthcode_matcher.synthetic_phones(2, 51).decode().split()
NOW = dt.datetime(2024, 5, 10, 4, 0, tzinfo=dt.UTC)
PLATFORM = Actor(Role.PARTNER, "tracing")
SERVICE = Actor(Role.SERVICE, "declaration")
TRANSPORT = 4


@pytest.fixture()
def chain(place: Place) -> Iterator[tuple[ColdChain, RiskIndex]]:
    # Once per storage backend (tests/conftest.py `place`).
    repo = RiskIndexRepository(place("ri.sqlite3"))
    ids = Identifiers.from_secret(SECRET)
    index = RiskIndex(repo, ids, SECRET, clock=lambda: NOW)
    holder = ids.person(IDS[1], "x")
    phone = ids.phone(PHONES[0], "x")
    index.link_phone(SERVICE, holder.key, holder.masked, phone.key, phone.masked)
    yield ColdChain(index, repo, ids, clock=lambda: NOW), index
    repo.close()


def test_handlers_become_exposure_rows_and_batch_links(chain: tuple[ColdChain, RiskIndex]) -> None:
    cc, index = chain
    handlers = [("id_number", IDS[0]), ("phone", PHONES[0]), ("phone", PHONES[1])]
    posted = cc.post(PLATFORM, "ev-1", "B-1", TRANSPORT, handlers, NOW - dt.timedelta(hours=3))
    assert posted.linked == 2 and not posted.replayed
    assert [(u.index, u.masked) for u in posted.unmatched] == [
        (2, PHONES[1][:3] + "****" + PHONES[1][-4:])
    ]
    assert index.current.index.source_len("cold_chain_exposure") == 2
    links = cc.list_people(PLATFORM, "B-1")
    assert sorted((link.masked_id_number, link.masked_phone) for link in links) == sorted(
        [
            (IDS[0][:2] + "*" * 14 + IDS[0][-2:], ""),
            (IDS[1][:2] + "*" * 14 + IDS[1][-2:], PHONES[0][:3] + "****" + PHONES[0][-4:]),
        ]
    )
    assert {(link.stage, link.day, link.event_id) for link in links} == {
        (TRANSPORT, "2024-05-10", "ev-1")
    }
    assert cc.list_people(PLATFORM, "B-unknown") == []


def test_a_replay_is_a_no_op_and_other_content_is_refused(
    chain: tuple[ColdChain, RiskIndex],
) -> None:
    cc, index = chain
    at = NOW - dt.timedelta(hours=1)
    first = cc.post(PLATFORM, "ev-2", "B-2", TRANSPORT, [("id_number", IDS[2])], at)
    version = index.current.version
    again = cc.post(PLATFORM, "ev-2", "B-2", TRANSPORT, [("id_number", IDS[2])], at)
    assert again.replayed and again.index_version == first.index_version
    assert index.current.version == version
    with pytest.raises(AlreadyExists, match="new event id"):
        cc.post(PLATFORM, "ev-2", "B-2", TRANSPORT, [("id_number", IDS[3])], at)


def test_every_bad_field_is_named(chain: tuple[ColdChain, RiskIndex]) -> None:
    cc, _ = chain
    bad_id = IDS[0][:-1] + ("1" if IDS[0][-1] != "1" else "2")
    with pytest.raises(InvalidArgument) as caught:
        cc.post(
            PLATFORM, "ev 3", "", 9, [("id_number", bad_id), ("phone", "123")],
            NOW - dt.timedelta(days=40),
        )  # fmt: skip
    fields = {f for f, _ in caught.value.violations}
    assert fields == {
        "event_id", "product_batch", "stage", "handled_at",
        "handlers[0].id_number", "handlers[1].phone",
    }  # fmt: skip
    assert bad_id not in caught.value.message


def test_roles_that_may_not_post(chain: tuple[ColdChain, RiskIndex]) -> None:
    cc, _ = chain
    for actor in (Actor(Role.FEED, "cdc"), Actor(Role.VERIFIER, "gate"), SERVICE):
        with pytest.raises(PermissionDenied):
            cc.post(actor, "ev-4", "B", TRANSPORT, [("id_number", IDS[0])], NOW)
    with pytest.raises(PermissionDenied):
        cc.list_people(Actor(Role.VERIFIER, "gate"), "B")

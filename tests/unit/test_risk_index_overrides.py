"""Manual colour overrides in the risk index (issue 10, item 4): only the support desk and
administrators set, clear and read them; each needs a reason and ends within 14 days; each is
an entry of an append-only, hash-chained log that the database itself refuses to change, and
whose verification names the first entry an attacker with the file changed; each is carried to
the replicas by the next index version, and the ones in force survive a restart."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from services._common import changes
from services._common.actors import Actor, Role
from services._common.errors import InvalidArgument, NotFound, PermissionDenied
from services._common.identifiers import Identifiers
from services.risk_index import overrides
from services.risk_index.logic import Delta, RiskIndex, mask_account
from services.risk_index.model import OverrideRecord
from services.risk_index.repository import RiskIndexRepository
from tests.support import SECRET
from tests.unit.test_risk_index_versions import HASHER, IDS, NOW, SERVICE, open_index, person

DESK = Actor(Role.SUPPORT, "desk-2")
ADMIN = Actor(Role.ADMIN, "root-ops")
REASON = "appeal 2024-117: a verified negative test at the hospital"
SOON = NOW + dt.timedelta(hours=6)
GREEN, YELLOW, RED = 0, 1, 2


def key(n: int) -> bytes:
    return HASHER.person_key(IDS[n])


def registered(tmp_path: Path, people: int = 4) -> RiskIndex:
    ri = open_index(tmp_path)
    ri.register_people(SERVICE, [person(n) for n in range(people)])
    ri.flush()
    return ri


def test_an_override_is_logged_and_carried_by_the_next_version(tmp_path: Path) -> None:
    ri = registered(tmp_path)
    try:
        before = ri.current.version
        record = ri.override_colour(DESK, key(0), GREEN, f"  {REASON} ", SOON)
        assert record.index_version == before + 1 == ri.accepted_version
        assert (record.seq, record.action, record.colour, record.reason) == (
            1,
            "set",
            "green",
            REASON,
        )
        assert (record.actor_role, record.actor_principal) == ("support", "desk-2")
        assert record.masked_id_number == person(0).masked
        assert record.prev_hash == overrides.GENESIS
        assert record.hash == overrides.entry_hash(record.prev_hash, record)
        assert ri.flush() == before + 1
        delta = ri._publication.delta_since(before)
        assert isinstance(delta, Delta)
        [change] = delta.changes
        assert change == changes.Override(key(0), GREEN, REASON, SOON, NOW, "support de***2", 1)
        # ... and on the wire, unchanged.
        assert changes.from_proto(delta.wire) == [change]
        assert ri.active_overrides() == ([change], 1)
        # An override changes no index entry.
        assert ri.current.index.person_count == 4
    finally:
        ri.close()


def test_a_clear_ends_it_and_the_log_chains_every_entry(tmp_path: Path) -> None:
    ri = registered(tmp_path)
    try:
        first = ri.override_colour(DESK, key(0), GREEN, REASON, SOON)
        second = ri.override_colour(ADMIN, key(1), RED, "a case the feed missed", SOON)
        third = ri.override_colour(DESK, key(0), YELLOW, "partly upheld on review", SOON)
        cleared = ri.clear_override(DESK, key(0), "the appeal was withdrawn")
        assert [e.seq for e in (first, second, third, cleared)] == [1, 2, 3, 4]
        assert cleared.action == "clear" and cleared.colour is None
        assert cleared.valid_until is None
        assert second.prev_hash == first.hash and cleared.prev_hash == third.hash
        active, last = ri.active_overrides()
        assert [(o.person_key, o.colour) for o in active] == [(key(1), RED)] and last == 4
        with pytest.raises(NotFound):
            ri.clear_override(DESK, key(0), "cleared twice by mistake")
        page = ri.list_overrides(DESK)
        assert [e.seq for e in page.entries] == [4, 3, 2, 1]
        assert page.check.verified and page.check.entry_count == 4
        assert page.check.head_hash == cleared.hash and page.next_before is None
        # Paged, newest first, and for one person.
        page = ri.list_overrides(ADMIN, page_size=3)
        assert [e.seq for e in page.entries] == [4, 3, 2] and page.next_before == 2
        rest = ri.list_overrides(ADMIN, page_size=3, page_token=str(page.next_before))
        assert [e.seq for e in rest.entries] == [1] and rest.next_before is None
        mine = ri.list_overrides(DESK, key(0))
        assert [e.seq for e in mine.entries] == [4, 3, 1]
    finally:
        ri.close()


def test_only_the_support_desk_and_admins_and_only_with_a_reason_and_an_end(
    tmp_path: Path,
) -> None:
    ri = registered(tmp_path)
    try:
        before = ri.accepted_version
        for role in (Role.CITIZEN, Role.VERIFIER, Role.FEED, Role.SERVICE, Role.GRID_WORKER):
            actor = Actor(role, "someone", key(1) if role is Role.CITIZEN else None)
            with pytest.raises(PermissionDenied):
                ri.override_colour(actor, key(0), GREEN, REASON, SOON)
            with pytest.raises(PermissionDenied):
                ri.list_overrides(actor)
        with pytest.raises(PermissionDenied):
            ri.clear_override(Actor(Role.VERIFIER, "gate-1"), key(0), REASON)

        def refused(**kwargs: object) -> set[str]:
            args: dict[str, object] = {
                "person_key": key(0),
                "colour": GREEN,
                "reason": REASON,
                "valid_until": SOON,
            }
            args.update(kwargs)
            with pytest.raises(InvalidArgument) as bad:
                ri.override_colour(DESK, **args)  # type: ignore[arg-type]
            return {field for field, _ in bad.value.violations}

        assert refused(reason="") == {"reason"}
        assert refused(reason="ok") == {"reason"}
        assert refused(reason="x" * 501) == {"reason"}
        assert refused(reason="two\nlines of reason") == {"reason"}
        assert refused(reason=f"the holder of {IDS[0]} appealed") == {"reason"}
        assert refused(reason="call back on 13812345678") == {"reason"}
        assert refused(valid_until=None) == {"valid_until"}
        assert refused(valid_until=NOW) == {"valid_until"}
        assert refused(valid_until=NOW + dt.timedelta(days=14, seconds=1)) == {"valid_until"}
        assert refused(valid_until=SOON.replace(tzinfo=None)) == {"valid_until"}
        assert refused(colour=None) == {"colour"}
        assert refused(colour=3) == {"colour"}
        assert refused(person_key=b"short", colour=None, reason="") == {
            "person.person_key",
            "colour",
            "reason",
        }
        with pytest.raises(NotFound):  # a person the registry does not hold
            ri.override_colour(DESK, HASHER.person_key(IDS[20]), GREEN, REASON, SOON)
        with pytest.raises(NotFound):  # nothing in force to clear
            ri.clear_override(DESK, key(0), REASON)
        with pytest.raises(InvalidArgument):
            ri.list_overrides(DESK, page_size=501)
        with pytest.raises(InvalidArgument):
            ri.list_overrides(DESK, page_token="abc")
        # Nothing was logged or published.
        assert ri.accepted_version == before
        assert ri.list_overrides(DESK).check.entry_count == 0
        # The longest allowed is taken.
        ri.override_colour(DESK, key(0), GREEN, REASON, NOW + dt.timedelta(days=14))
    finally:
        ri.close()


def test_an_expired_override_is_not_sent_and_cannot_be_cleared(tmp_path: Path) -> None:
    clock = [NOW]
    repo = RiskIndexRepository(tmp_path / "ri.sqlite3")
    ri = RiskIndex(
        repo, Identifiers.from_secret(SECRET), SECRET, clock=lambda: clock[0], publish_interval_s=0
    )
    try:
        ri.register_people(SERVICE, [person(0)])
        ri.override_colour(DESK, key(0), RED, REASON, SOON)
        clock[0] = SOON
        assert ri.active_overrides() == ([], 1)
        with pytest.raises(NotFound):
            ri.clear_override(DESK, key(0), REASON)
    finally:
        ri.close()


def test_overrides_in_force_survive_a_restart(tmp_path: Path) -> None:
    ri = registered(tmp_path)
    try:
        ri.override_colour(DESK, key(0), GREEN, REASON, SOON)
        ri.override_colour(DESK, key(1), RED, REASON, SOON)
        ri.clear_override(ADMIN, key(1), "entered for the wrong person")
        held = ri.active_overrides()
        ri.flush()
    finally:
        ri.close()
    again = open_index(tmp_path)
    try:
        assert again.active_overrides() == held
        assert [o.seq for o in held[0]] == [1] and held[1] == 3
        # The log goes on from where it was.
        assert again.override_colour(DESK, key(2), YELLOW, REASON, SOON).seq == 4
        assert again.list_overrides(DESK).check.verified
    finally:
        again.close()


def _log(tmp_path: Path) -> RiskIndexRepository:
    """A repository whose log holds three entries."""
    ri = registered(tmp_path)
    try:
        ri.override_colour(DESK, key(0), GREEN, REASON, SOON)
        ri.override_colour(DESK, key(1), RED, "a case the feed missed", SOON)
        ri.clear_override(DESK, key(0), "the appeal was withdrawn")
    finally:
        ri.close()
    return RiskIndexRepository(tmp_path / "ri.sqlite3")


def test_the_database_refuses_to_update_or_delete_the_log(tmp_path: Path) -> None:
    repo = _log(tmp_path)
    try:
        for statement in (
            "UPDATE override_log SET reason = 'nothing to see' WHERE seq = 2",
            "UPDATE override_log SET colour = 'green'",
            "DELETE FROM override_log WHERE seq = 3",
            "DELETE FROM override_log",
        ):
            with (
                pytest.raises(sqlite3.DatabaseError, match="append-only"),
                repo.transaction() as conn,
            ):
                conn.execute(statement)
        assert [e.seq for e in repo.override_entries()] == [3, 2, 1]
        assert repo.verify_overrides().verified
    finally:
        repo.close()


def _attacker(tmp_path: Path, *statements: str) -> None:
    """Someone with the database file: drops the triggers, then edits."""
    conn = sqlite3.connect(tmp_path / "ri.sqlite3")
    try:
        conn.execute("DROP TRIGGER IF EXISTS override_log_no_update")
        conn.execute("DROP TRIGGER IF EXISTS override_log_no_delete")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _rehash(tmp_path: Path, seq: int) -> None:
    """An attacker who knows the scheme recomputes the changed entry's own hash."""
    repo = RiskIndexRepository(tmp_path / "ri.sqlite3")
    try:
        [entry] = [e for e in repo.override_entries() if e.seq == seq]
    finally:
        repo.close()
    forged = overrides.entry_hash(entry.prev_hash, entry).hex()
    _attacker(tmp_path, f"UPDATE override_log SET hash = x'{forged}' WHERE seq = {seq}")


def _recolour_and_rehash(tmp_path: Path) -> None:
    _attacker(tmp_path, "UPDATE override_log SET colour = 'red' WHERE seq = 1")
    _rehash(tmp_path, 1)


@pytest.mark.parametrize(
    ("attack", "broken", "why"),
    [
        # The reason of entry 2 rewritten.
        (
            lambda p: _attacker(p, "UPDATE override_log SET reason = 'nothing' WHERE seq = 2"),
            2,
            "changed",
        ),
        # Entry 1's colour changed and its own hash recomputed: entry 2 no longer names it.
        (_recolour_and_rehash, 2, "before it"),
        # Entry 2 removed.
        (lambda p: _attacker(p, "DELETE FROM override_log WHERE seq = 2"), 3, "missing"),
        # Who did it rewritten.
        (
            lambda p: _attacker(
                p, "UPDATE override_log SET actor_principal = 'someone' WHERE seq = 3"
            ),
            3,
            "changed",
        ),
    ],
    ids=["reason", "rehashed", "deleted", "actor"],
)
def test_verification_names_the_first_entry_an_attacker_changed(
    tmp_path: Path, attack: Callable[[Path], None], broken: int, why: str
) -> None:
    _log(tmp_path).close()
    attack(tmp_path)
    ri = open_index(tmp_path)
    try:
        check = ri.list_overrides(ADMIN).check
        assert not check.verified
        assert check.broken_seq == broken and why in check.problem
        assert check.entry_count == (2 if why == "missing" else 3)
    finally:
        ri.close()


def test_the_canonical_encoding_is_fixed() -> None:
    entry = OverrideRecord(
        seq=1,
        at=dt.datetime(2024, 5, 10, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        action="set",
        person_key=bytes(range(16)),
        masked_id_number="11**************1X",
        colour="green",
        reason="复核：核酸阴性",
        valid_until=dt.datetime(2024, 5, 11, 4, 0, tzinfo=dt.UTC),
        actor_role="support",
        actor_principal="desk-2",
        index_version=7,
        prev_hash=overrides.GENESIS,
        hash=b"",
    )
    assert (
        overrides.canonical(entry)
        == (
            '{"action":"set","actor_principal":"desk-2","actor_role":"support",'
            '"at":"2024-05-10T04:00:00+00:00","colour":"green","index_version":7,'
            '"masked_id_number":"11**************1X","person_key":"000102030405060708090a0b0c0d0e0f",'
            '"reason":"复核：核酸阴性","seq":1,"valid_until":"2024-05-11T04:00:00+00:00"}'
        ).encode()
    )
    # The hash covers every field and the hash before.
    digest = overrides.entry_hash(overrides.GENESIS, entry)
    assert len(digest) == 32
    for change in ({"reason": "other"}, {"index_version": 8}, {"actor_role": "admin"}):
        assert overrides.entry_hash(overrides.GENESIS, dataclasses.replace(entry, **change)) != (
            digest
        )
    assert overrides.entry_hash(b"\x01" * 32, entry) != digest


def test_the_migration_adds_the_log_to_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "ri.sqlite3"

    class Before(RiskIndexRepository):
        MIGRATIONS = RiskIndexRepository.MIGRATIONS[:4]  # type: ignore[assignment]  # before the log

    old = Before(path)
    try:
        assert old.schema_version == 4
        old.register_person(key(0), person(0).masked, NOW, 1)
    finally:
        old.close()
    ri = open_index(tmp_path)
    try:
        assert ri._repository.schema_version == len(RiskIndexRepository.MIGRATIONS)
        assert ri.current.index.person_count == 1
        assert ri.active_overrides() == ([], 0)
        assert ri.override_colour(DESK, key(0), GREEN, REASON, SOON).seq == 1
        assert ri.list_overrides(DESK).check.verified
    finally:
        ri.close()


def test_a_staff_account_is_masked_for_the_person() -> None:
    assert mask_account("desk-2") == "de***2"
    assert mask_account("root-ops") == "ro***s"
    assert mask_account("ops") == "o**"
    assert mask_account("a") == "*"

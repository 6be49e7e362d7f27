"""The risk index restarts from its snapshot plus the changes committed after it (issue 8), and
loses no accepted change; a corrupt or foreign snapshot is refused and the slow path used."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import healthcode_matcher as hm
import pytest

from services._common import changes, days
from services._common.actors import Actor, Role
from services._common.identifiers import Identifiers, mask_id_number, mask_phone
from services.risk_index.logic import Delta, RiskIndex, build_index
from services.risk_index.model import KeyedPerson, RawRow
from services.risk_index.repository import RiskIndexRepository
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET

IDS = hm.synthetic_id_numbers(40, 909).decode().split()
PHONES = hm.synthetic_phones(12, 909).decode().split()
HASHER = hm.Hasher(SECRET)
FEED = Actor(Role.FEED, "cdc")
SERVICE = Actor(Role.SERVICE, "declaration")
ADMIN = Actor(Role.ADMIN, "ops")
NOW = dt.datetime(2024, 5, 10, 4, 0, tzinfo=dt.UTC)
TODAY = days.today(NOW)
WUHAN = 420106


def open_index(path: Path, secret: bytes = SECRET) -> RiskIndex:
    return RiskIndex(
        RiskIndexRepository(path / "ri.sqlite3"),
        Identifiers.from_secret(secret),
        secret,
        clock=lambda: NOW,
        snapshot_path=path / "index.snapshot",
    )


def person(n: int, phones: tuple[int, ...] = ()) -> KeyedPerson:
    return KeyedPerson(
        HASHER.person_key(IDS[n]),
        mask_id_number(IDS[n]),
        [(HASHER.phone_key(PHONES[p]), mask_phone(PHONES[p])) for p in phones],
    )


def day(offset: int = 0) -> str:
    return days.format_day(TODAY - offset)


def changes_before(ri: RiskIndex) -> None:
    ri.register_people(SERVICE, [person(n, (n,) if n < 6 else ()) for n in range(20)])
    ri.ingest_batch(FEED, "close_contact", "cc1", [RawRow("id_number", IDS[0], day=day(1))])
    ri.ingest_batch(
        FEED, "telecom_roaming", "tr1", [RawRow("phone", PHONES[1], day=day(2), county=WUHAN)]
    )
    ri.ingest_batch(FEED, "home_quarantine", "hq1", [RawRow("id_number", IDS[2])], replace=True)


def changes_after(ri: RiskIndex) -> None:
    # Every kind of change, including ones that undo or move what the snapshot holds.
    ri.register_people(SERVICE, [person(n) for n in range(20, 30)])
    ri.link_phone(
        SERVICE,
        HASHER.person_key(IDS[7]),
        "12**********7X",
        HASHER.phone_key(PHONES[1]),
        "138****0001",
    )
    ri.unlink_phone(SERVICE, HASHER.phone_key(PHONES[3]))
    ri.link_card(
        SERVICE, HASHER.person_key(IDS[8]), "12**********8X", HASHER.card_key("T-0008"), "****0008"
    )
    ri.set_county_level(ADMIN, WUHAN, 3)
    ri.ingest_batch(FEED, "close_contact", "cc2", [RawRow("id_number", IDS[21], day=day())])
    ri.ingest_batch(FEED, "home_quarantine", "hq2", [RawRow("id_number", IDS[4])], replace=True)
    ri.ingest_batch(
        FEED,
        "nat_negative",
        "lab1",
        [RawRow("id_number", IDS[0], at=NOW - dt.timedelta(hours=3))],
    )


def colours(index: hm.Index) -> dict[bytes, tuple[int, tuple[str, ...], tuple[str, ...]]]:
    """Each registered person's colour, fired and cleared rules under the default rule set, by
    key (dense ids may differ between two builds of the same facts)."""
    rules = load_rule_set(DEFAULT_RULE_SET_PATH)
    verdicts = hm.Verdicts(index, hm.Plan(rules.plan_rules(), rules.version), TODAY)
    out = {}
    for id_number in IDS:
        key = HASHER.person_key(id_number)
        pid = index.person_id_by_key(key)
        if pid is not None:
            v = verdicts.evaluate(pid)
            out[key] = (int(v.colour), tuple(v.rules), tuple(v.cleared))
    return out


def test_a_restart_loads_the_snapshot_and_replays_only_the_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ri = open_index(tmp_path)
    changes_before(ri)
    assert ri.write_snapshot()
    snapshot_version = ri.current.version
    changes_after(ri)
    latest = ri.current
    # Not close(): that would write a new snapshot. As after a crash.
    with caplog.at_level(logging.INFO, logger="services.risk_index.logic"):
        restarted = open_index(tmp_path)
    try:
        assert f"from its snapshot (version {snapshot_version}) and 8 changes" in caplog.text
        assert restarted.current.version == latest.version
        # The same facts as a rebuild from every row: nothing accepted is lost.
        rebuilt = build_index(SECRET, RiskIndexRepository(tmp_path / "ri.sqlite3").load_state())
        got, want = restarted.current.index, rebuilt
        assert (got.person_count, got.phone_count) == (want.person_count, want.phone_count)
        assert got.county_levels() == want.county_levels() == {WUHAN: 3}
        for name, _, _ in want.sources():
            assert got.source_len(name) == want.source_len(name), name
        assert colours(got) == colours(want) == colours(latest.index)
        assert colours(got)[HASHER.person_key(IDS[21])][0] == hm.Colour.RED
        assert snapshot_version < latest.version
        # A replica that holds the snapshot's version gets the tail as one delta, not a
        # whole index, and reaches the same verdicts.
        step = next(restarted.watch(snapshot_version, lambda: True))
        assert isinstance(step, Delta) and (step.from_version, step.version) == (
            snapshot_version,
            latest.version,
        )
        builder = hm.Index.load(str(tmp_path / "index.snapshot"), SECRET).builder()
        changes.apply_all(builder, step.changes)
        assert colours(builder.finish(version=step.version)) == colours(want)
    finally:
        restarted.close()


@pytest.mark.parametrize("damage", ["corrupt", "foreign", "ahead"])
def test_a_bad_snapshot_is_refused_and_the_slow_path_taken(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    ri = open_index(tmp_path)
    changes_before(ri)
    ri.write_snapshot()
    changes_after(ri)
    snapshot = tmp_path / "index.snapshot"
    if damage == "corrupt":
        data = bytearray(snapshot.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snapshot.write_bytes(bytes(data))
    elif damage == "foreign":
        other = open_index(tmp_path / "other", secret=bytes(32))
        other.write_snapshot()
        snapshot.write_bytes((tmp_path / "other" / "index.snapshot").read_bytes())
        other.close()
    else:
        builder = ri.current.index.builder()
        ahead = builder.finish(version=ri.current.version + 5)
        ahead.save(str(snapshot))
    with caplog.at_level(logging.WARNING, logger="services.risk_index.logic"):
        restarted = open_index(tmp_path)
    try:
        assert "rebuilding from the database" in caplog.text
        assert restarted.current.version == ri.current.version
        assert colours(restarted.current.index) == colours(ri.current.index)
    finally:
        restarted.close()


def test_close_writes_a_snapshot_so_the_next_start_replays_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ri = open_index(tmp_path)
    changes_before(ri)
    ri.close()
    with caplog.at_level(logging.INFO, logger="services.risk_index.logic"):
        restarted = open_index(tmp_path)
    try:
        assert "and 0 changes" in caplog.text
        assert colours(restarted.current.index) == colours(ri.current.index)
    finally:
        restarted.close()

"""Edge validation of identifiers, masking, days, and log redaction."""

from __future__ import annotations

import datetime as dt
import logging

import healthcode_matcher
import pytest

from services._common import days
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers, mask_card, mask_id_number, mask_name
from services._common.logs import RedactingFilter, redact
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(2, 7).decode().split()


def wrong_check_digit(id_number: str) -> tuple[str, str]:
    right = id_number[-1]
    wrong = "0" if right != "0" else "1"
    return id_number[:-1] + wrong, right


@pytest.fixture()
def ids() -> Identifiers:
    return Identifiers.from_secret(SECRET)


def test_person_key_is_the_matchers(ids: Identifiers) -> None:
    got = ids.person(" " + IDS[0].lower() + " ", "id_number")
    assert got.key == healthcode_matcher.Hasher(SECRET).person_key(IDS[0])
    assert got.masked == mask_id_number(IDS[0])
    assert IDS[0] not in got.masked


def test_bad_id_number_names_the_field_and_the_fix(ids: Identifiers) -> None:
    bad, right = wrong_check_digit(IDS[0])
    with pytest.raises(InvalidArgument) as caught:
        ids.person(bad, "rows[17].id_number")
    [(field, what)] = caught.value.violations
    assert field == "rows[17].id_number"
    assert f"should be {right}" in what
    assert bad not in what


def test_phone(ids: Identifiers) -> None:
    got = ids.phone("+86 138-0013-8000", "phone")
    assert got.masked == "138****8000"
    assert got.key == healthcode_matcher.Hasher(SECRET).phone_key("13800138000")
    with pytest.raises(InvalidArgument) as caught:
        ids.phone("12800138000", "phones[1]")
    assert caught.value.violations[0][0] == "phones[1]"
    with pytest.raises(InvalidArgument):
        ids.phone("  ", "phone")


def test_card_and_names_are_masked(ids: Identifiers) -> None:
    assert ids.card("tj-0001234", "transit_card").masked == "******1234"
    assert mask_card("12") == "**"
    assert mask_name("张三丰") == "张**"
    assert mask_name("李") == "*"


def test_redact_masks_numbers_but_not_counts() -> None:
    text = f"person {IDS[0]} phone 13800138000 took 12345678901234 ms at 2024-01-02"
    out = redact(text)
    assert IDS[0] not in out and "13800138000" not in out
    assert "138****8000" in out and "12345678901234" in out


def test_log_filter_redacts_arguments(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter("test"))
    with caplog.at_level(logging.INFO, logger="test.redaction"):
        logger.info("registered %s with %s", IDS[1], "13900139000")
    assert IDS[1] not in caplog.text and "13900139000" not in caplog.text


def test_days_are_shanghai_days() -> None:
    late = dt.datetime(2024, 3, 1, 16, 30, tzinfo=dt.UTC)  # 00:30 on 2 March in Shanghai
    assert days.format_day(days.today(late)) == "2024-03-02"
    assert days.today(late) == (dt.date(2024, 3, 2) - dt.date(1970, 1, 1)).days
    opens = days.next_midnight(late)
    assert opens.isoformat() == "2024-03-03T00:00:00+08:00"
    today = days.today(late)
    assert days.parse_day("2024-03-01", "d", today_day=today) == today - 1
    for text, what in [("2024-3-1", "YYYY-MM-DD"), ("2024-03-03", "future")]:
        with pytest.raises(InvalidArgument, match=what):
            days.parse_day(text, "d", today_day=today)
    with pytest.raises(InvalidArgument, match="30 days"):
        days.parse_day("2024-01-01", "d", today_day=today, max_age_days=30)
    with pytest.raises(InvalidArgument, match="GB/T 2260"):
        days.check_county(12010, "county")

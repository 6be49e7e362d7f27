"""Identifiers at the edge: ID numbers against python-stdnum, phone numbers, typed errors, and the
keyed hash contract (the same bytes from Rust and from Python's blake3)."""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterator

import blake3
import healthcode_matcher as hm
import pytest
from matcher_support import SECRET
from stdnum import numdb
from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from services._common.days import SHANGHAI

TODAY = dt.datetime.now(SHANGHAI).date()
FIRST_BIRTH_DATE = dt.date(1900, 1, 1)


def stdnum_verdict(raw: str) -> str | None:
    """stdnum's normalised number, or None if it refuses it."""
    try:
        return str(ric.validate(raw))
    except ValidationError:
        return None
    except KeyError:
        # python-stdnum 2.2 bug: a known province with an unknown county code (e.g. 123456)
        # raises KeyError('county') from get_birth_place instead of InvalidComponent.
        return None


def our_verdict(raw: str) -> str | None:
    try:
        return hm.normalise_id_number(raw)
    except hm.InvalidIdNumber:
        return None


def region_codes() -> list[str]:
    """Six-digit county codes from stdnum's own cn/loc database: a tree of two-digit province
    prefixes holding four-digit city + county prefixes (each a low..high range)."""
    codes: list[str] = []
    for _, low, high, _, counties in numdb.get("cn/loc").prefixes:
        for province in range(int(low), int(high) + 1):
            for _, c_low, c_high, _, _ in counties:
                codes.extend(
                    f"{province:02d}{county:04d}" for county in range(int(c_low), int(c_high) + 1)
                )
    assert len(codes) > 3000
    return codes


REGIONS = region_codes()


def region_valid_in(region: str, year: int) -> bool:
    """Whether stdnum knows the region code in that year (it checks codes against the year)."""
    try:
        ric.get_birth_place(with_check_digit(f"{region}{year}0101000"))
    except ValidationError:
        return False
    return True


def with_check_digit(first17: str) -> str:
    return first17 + ric.calc_check_digit(first17 + "0")


def random_valid(rng: random.Random) -> str:
    """A number stdnum accepts: a region valid in the birth year, a date in [1900-01-01, today]."""
    span = (TODAY - FIRST_BIRTH_DATE).days
    while True:
        birth = FIRST_BIRTH_DATE + dt.timedelta(days=rng.randrange(span + 1))
        number = with_check_digit(
            rng.choice(REGIONS) + birth.strftime("%Y%m%d") + f"{rng.randrange(1000):03d}"
        )
        if stdnum_verdict(number) is not None:  # the region existed in that year
            return number


def corruptions(number: str, rng: random.Random) -> Iterator[str]:
    """Invalid (or differently written) variants of a valid number; the birth year stays in
    1900..today so only stdnum's and our shared rules decide."""
    body, check = number[:17], number[17]
    yield body + rng.choice([c for c in "0123456789X" if c != check])  # wrong check digit
    year = number[6:10]
    for month_day in ["0230", "0231", "0431", "1301", "0001", "0100", "0132", "0000", "0229"]:
        # The date is the only fault: the check digit is recomputed.
        yield with_check_digit(number[:6] + year + month_day + number[14:17])
    yield number[:-1]  # 17 characters
    yield number + rng.choice("0123456789")  # 19 characters
    yield number[:3] + number[4:]
    position = rng.randrange(17)
    letter = rng.choice("ABXYZx")
    yield number[:position] + letter + number[position + 1 :]  # a letter among the digits
    yield number[:position] + letter + number[position + 1 : 17] + rng.choice("0123456789X")
    yield number[:9] + " " + number[9:]  # an inner space: not trimmed, so 19 characters
    yield number[:17] + check.lower()  # lower-case x: valid for both
    yield f"  {number}\t"  # surrounding whitespace: valid for both
    yield ""
    yield "1" * 18


def test_random_valid_and_invalid_numbers_agree_with_stdnum() -> None:
    rng = random.Random(20_200_212)
    checked = accepted = refused = 0
    for _ in range(2_500):
        number = random_valid(rng)
        for candidate in [number, *corruptions(number, rng)]:
            expected = stdnum_verdict(candidate)
            assert our_verdict(candidate) == expected, f"disagree on {candidate!r}"
            checked += 1
            accepted += expected is not None
            refused += expected is None
    assert checked > 40_000 and accepted > 5_000 and refused > 30_000


def test_random_digit_strings_agree_with_stdnum() -> None:
    """Random month, day and check character (most fail the check digit or the date), with a
    region stdnum knows in a birth year in 1900..last year, so only shared rules decide."""
    rng = random.Random(7)
    agreed = accepted = 0
    for _ in range(30_000):
        year = rng.randrange(1900, TODAY.year)
        region = rng.choice(REGIONS)
        if not region_valid_in(region, year):
            continue
        month_day = f"{rng.randrange(14):02d}{rng.randrange(33):02d}"
        candidate = f"{region}{year}{month_day}{rng.randrange(1000):03d}" + rng.choice(
            "0123456789X"
        )
        expected = stdnum_verdict(candidate)
        assert our_verdict(candidate) == expected, candidate
        agreed += 1
        accepted += expected is not None
    assert agreed > 10_000 and accepted > 300


# Our validator differs from stdnum on purpose in two ways, tested here on their own:
# it does not check the region code (a county code missing from a lookup table must not refuse
# a real resident), and it refuses birth dates in the future or before 1900, which stdnum accepts.


def test_region_codes_are_not_checked() -> None:
    for region in ["000000", "999999", "123456"]:
        number = with_check_digit(region + "19800101" + "123")
        assert stdnum_verdict(number) is None
        assert hm.normalise_id_number(number) == number


@pytest.mark.parametrize(
    "birth",
    [TODAY + dt.timedelta(days=2), dt.date(2999, 1, 1), dt.date(1899, 12, 31), dt.date(1850, 6, 1)],
)
def test_birth_dates_outside_1900_to_today_are_refused(birth: dt.date) -> None:
    number = with_check_digit("120101" + birth.strftime("%Y%m%d") + "123")
    assert stdnum_verdict(number) == number  # stdnum only asks for a real date
    with pytest.raises(hm.InvalidIdNumber, match="(?i)birth date"):
        hm.normalise_id_number(number)


def test_birth_date_bounds_are_accepted() -> None:
    for birth in [FIRST_BIRTH_DATE, TODAY - dt.timedelta(days=1)]:
        number = with_check_digit("120101" + birth.strftime("%Y%m%d") + "123")
        assert hm.normalise_id_number(number) == number


def test_normalisation() -> None:
    number = with_check_digit("12010119800101" + "123")
    lower = number[:17] + number[17].lower()
    assert hm.normalise_id_number(f" \t{lower}\n") == number
    x_number = next(
        n
        for n in (with_check_digit(f"12010119800101{i:03d}") for i in range(1000))
        if n.endswith("X")
    )
    assert hm.normalise_id_number(x_number.lower()) == x_number


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("12010119800101123", r"18 characters"),
        ("1201011980010112345", r"18 characters"),
        ("12010119800101A234", r"(?i)digit"),
        ("12010119800101123Y", r"(?i)digit or X|check"),
        ("120101198001011230", r"(?i)check"),
    ],
)
def test_id_number_errors_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(hm.InvalidIdNumber, match=message) as caught:
        hm.normalise_id_number(raw)
    assert isinstance(caught.value, hm.IdentifierError)
    assert isinstance(caught.value, ValueError)
    # A message may be logged: it must not repeat the number.
    assert raw not in str(caught.value)


def test_not_a_real_date_is_named() -> None:
    number = with_check_digit("120101" + "19800230" + "123")
    with pytest.raises(hm.InvalidIdNumber, match="(?i)date"):
        hm.normalise_id_number(number)


def test_error_hierarchy() -> None:
    for identifier_error in (hm.InvalidIdNumber, hm.InvalidPhone):
        assert issubclass(identifier_error, hm.IdentifierError)
    for error in (
        hm.IdentifierError,
        hm.PlanError,
        hm.InvalidOperation,
        hm.SnapshotError,
    ):
        assert issubclass(error, ValueError)


# -- phones ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "13812345678",
        "+8613812345678",
        "+86 138 1234 5678",
        "+86-138-1234-5678",
        "138-1234-5678",
        " 138 1234 5678 ",
    ],
)
def test_phone_forms_accepted(raw: str) -> None:
    assert hm.normalise_phone(raw) == "13812345678"


def test_every_mobile_prefix_13_to_19() -> None:
    for second in "3456789":
        assert hm.normalise_phone(f"1{second}012345678") == f"1{second}012345678"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("138123456789", r"11 digits"),  # 12 digits
        ("1381234567", r"11 digits"),  # 10 digits
        ("23812345678", r"13 to 19"),
        ("12812345678", r"13 to 19"),
        ("10012345678", r"13 to 19"),
        ("+1 212 555 0100", r"(?i)mainland|\+86"),
        ("138l2345678", r"(?i)digits"),
        ("", r"11 digits"),
    ],
)
def test_phone_refused(raw: str, message: str) -> None:
    with pytest.raises(hm.InvalidPhone, match=message) as caught:
        hm.normalise_phone(raw)
    assert isinstance(caught.value, hm.IdentifierError)
    assert isinstance(caught.value, ValueError)


def test_synthetic_phones_are_valid_and_distinct() -> None:
    phones = hm.synthetic_phones(5_000, 3).decode().split()
    assert len(phones) == len(set(phones)) == 5_000
    assert all(hm.normalise_phone(p) == p for p in phones)
    assert all(re.fullmatch(r"1[3-9]\d{9}", p) for p in phones)


def test_synthetic_id_numbers_are_valid_and_distinct() -> None:
    numbers = hm.synthetic_id_numbers(5_000, 3).decode().split()
    assert len(numbers) == len(set(numbers)) == 5_000
    for number in numbers:
        assert hm.normalise_id_number(number) == number
        assert ric.calc_check_digit(number) == number[17]
    assert hm.synthetic_id_numbers(100, 3).decode().split() == numbers[:100]


# -- the keyed hash ----------------------------------------------------------------------------


def keyed(prefix: bytes, normalised: str, secret: bytes = SECRET) -> bytes:
    return blake3.blake3(prefix + normalised.encode(), key=secret).digest()[:16]


def test_person_key_is_blake3_keyed_over_the_normalised_number() -> None:
    hasher = hm.Hasher(SECRET)
    for number in hm.synthetic_id_numbers(200, 11).decode().split():
        key = hasher.person_key(number)
        assert len(key) == 16
        assert key == keyed(b"person:", number)
        assert hasher.person_key(f" {number.lower()} ") == key


def test_phone_and_card_keys() -> None:
    hasher = hm.Hasher(SECRET)
    assert hasher.phone_key("+86 138-1234-5678") == keyed(b"phone:", "13812345678")
    assert hasher.card_key(" TJ-0001234 ") == keyed(b"card:", "TJ-0001234")
    # The domains never share a key, even for the same digits.
    assert hasher.phone_key("13812345678") != keyed(b"person:", "13812345678")


def test_keys_depend_on_the_secret() -> None:
    number = hm.synthetic_id_numbers(1, 1).decode().strip()
    other = bytes(32)
    assert hm.Hasher(other).person_key(number) == keyed(b"person:", number, other)
    assert hm.Hasher(other).person_key(number) != hm.Hasher(SECRET).person_key(number)
    assert hm.Index(SECRET).hasher().person_key(number) == hm.Hasher(SECRET).person_key(number)


def test_hasher_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        hm.Hasher(b"too short")
    hasher = hm.Hasher(SECRET)
    with pytest.raises(hm.InvalidIdNumber):
        hasher.person_key("not a number")
    with pytest.raises(hm.InvalidPhone):
        hasher.phone_key("12345")
    for card in ["", "   ", "x" * 65]:
        with pytest.raises(ValueError):
            hasher.card_key(card)

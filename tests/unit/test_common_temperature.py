"""Body temperatures: one range and one fever threshold for declarations and bus scanners."""

from __future__ import annotations

import struct

import pytest

from services._common.errors import InvalidArgument
from services._common.temperature import (
    FEVER_CELSIUS,
    MAX_CELSIUS,
    MIN_CELSIUS,
    body_temperature,
    is_fever,
)


def through_float32(value: float) -> float:
    """What a proto `float` field hands the server: 37.3 arrives as 37.29999923706055."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def test_exactly_the_threshold_through_a_float32_is_a_fever() -> None:
    wire = through_float32(FEVER_CELSIUS)
    assert wire < FEVER_CELSIUS  # the defect this module exists for
    reading = body_temperature(wire, "temperature_celsius")
    assert reading == FEVER_CELSIUS
    assert is_fever(reading)
    assert is_fever(wire)  # even a caller that forgot to round is judged on 0.1 °C


@pytest.mark.parametrize("value", [36.5, 37.2, through_float32(37.2)])
def test_below_the_threshold_is_no_fever(value: float) -> None:
    assert not is_fever(body_temperature(value, "t"))


def test_no_reading_is_no_fever() -> None:
    assert not is_fever(None)


@pytest.mark.parametrize("value", [MIN_CELSIUS - 0.1, MAX_CELSIUS + 0.1, 99.0, -1.0])
def test_outside_the_range_is_invalid_argument_naming_the_field(value: float) -> None:
    with pytest.raises(InvalidArgument) as refused:
        body_temperature(value, "temperature_celsius")
    assert [f for f, _ in refused.value.violations] == ["temperature_celsius"]


@pytest.mark.parametrize("value", [MIN_CELSIUS, MAX_CELSIUS])
def test_the_range_is_inclusive(value: float) -> None:
    assert body_temperature(value, "t") == value

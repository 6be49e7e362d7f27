"""Body temperatures, as a declaration or a bus scanner reports them (R2, R11).

The wire carries a float32, so 37.3 arrives as 37.29999923; every reading is rounded to the
0.1 °C a thermometer shows before it is judged, or a reading of exactly 37.3 would not count as
a fever.
"""

from __future__ import annotations

from services._common.errors import InvalidArgument

# A reading outside this range is a faulty thermometer or a typing slip, not a person.
MIN_CELSIUS, MAX_CELSIUS = 34.0, 43.0
# At or above this a reading is a fever: a declared fever, or an alert at a bus scanner.
FEVER_CELSIUS = 37.3


def body_temperature(value: float, field: str) -> float:
    """A reading rounded to 0.1 °C, or InvalidArgument naming the field."""
    reading = round(float(value), 1)
    if not MIN_CELSIUS <= reading <= MAX_CELSIUS:
        raise InvalidArgument(
            [(field, f"a body temperature is between {MIN_CELSIUS} and {MAX_CELSIUS} °C")]
        )
    return reading


def is_fever(reading: float | None) -> bool:
    """True for a (rounded) reading at or above FEVER_CELSIUS."""
    return reading is not None and round(reading, 1) >= FEVER_CELSIUS

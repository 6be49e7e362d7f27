"""The bounded look-up cache (services/_common/cache.py) and what a display forgets when a
delta names a person's registration."""

from __future__ import annotations

import pytest

from services._common import changes
from services._common.cache import cached_lookup
from services._common.errors import NotFound

A, B, C = (bytes([n]) * 16 for n in (1, 2, 3))


def test_answers_are_kept_until_forgotten_and_failures_are_never_kept() -> None:
    asked: list[bytes] = []
    names = {A: "张*", B: "李*"}

    def load(key: bytes) -> str:
        asked.append(key)
        if key not in names:
            raise NotFound("not registered")
        return names[key]

    lookup = cached_lookup(load)
    assert [lookup(A), lookup(A), lookup(B)] == ["张*", "张*", "李*"]
    assert asked == [A, B]
    names[A] = "王*"
    lookup.forget([A, C])  # C was never kept: forgetting it is harmless
    assert lookup(A) == "王*" and lookup(B) == "李*"
    assert asked == [A, B, A]
    with pytest.raises(NotFound):
        lookup(C)
    names[C] = "赵*"  # registered a moment later: found on the next look-up
    assert lookup(C) == "赵*"


def test_a_delta_names_the_people_registered_or_given_a_phone() -> None:
    phone = bytes([9]) * 16
    delta: list[changes.Change] = [
        changes.Persons(A + B),
        changes.Phones(phone, C),
        changes.Unlink(phone),
        changes.CountyLevel(120101, 3),
        changes.RuleSet("version = 'x'", "x.toml"),
    ]
    assert changes.registrations(delta) == {A, B, C}

"""The `residence` attribute source: in the catalogue, ingestible, never usable by a rule."""

from __future__ import annotations

import pytest

from services._common.sources import SOURCES
from services.rules import RuleSetError, parse_rule_set

RULE = """
version = "attr-test"
[[rules]]
id = "lives-in-binhai"
colour = "yellow"
scope = "local"
{body}
text_zh = "居住在滨海新区。"
text_en = "Lives in Binhai."
what_clears_zh = "无。"
what_clears_en = "Nothing."
"""
CLEARS_WITH_RESIDENCE = """window_days = 14
checks = [{ source = "close_contact" }]
clears = [{ source = "residence" }]"""


def test_residence_is_a_person_keyed_undated_county_attribute() -> None:
    residence = SOURCES["residence"]
    assert (residence.keyed_by, residence.has_county, residence.dated) == ("person", True, False)
    assert residence.attribute and not residence.clearing and not residence.raising
    assert all(s.raising for n, s in SOURCES.items() if n != "residence" and not s.clearing)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('checks = [{ source = "residence", min_level = 1 }]', "rules[lives-in-binhai].checks[0]"),
        (
            CLEARS_WITH_RESIDENCE,
            "rules[lives-in-binhai].clears[0]",
        ),
    ],
)
def test_a_rule_may_neither_check_nor_clear_with_an_attribute(body: str, field: str) -> None:
    with pytest.raises(RuleSetError) as refused:
        parse_rule_set(RULE.format(body=body), "draft.toml")
    paths = {path for path, _ in refused.value.violations}
    assert f"{field}.source" in paths, refused.value.violations
    assert "attribute" in str(refused.value) and "draft.toml" in str(refused.value)

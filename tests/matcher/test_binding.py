"""The binding's own surface: version 0 of a fresh index, the typed what-if `Transitions`, and
rule dicts read field by field with the rule id and the field's path in every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import healthcode_matcher as hm
import pytest
from matcher_support import SECRET, TODAY, u32

# -- version 0 is the empty index ----------------------------------------------------------------


def test_a_fresh_index_can_be_published_as_version_0_with_its_sources() -> None:
    root = hm.Index(SECRET)
    assert root.version == 0
    builder = root.builder()
    builder.define_source("confirmed", "person")
    builder.define_source("roaming", "phone", has_county=True)
    v0 = builder.finish(version=0)
    assert v0.version == 0
    assert [name for name, _, _ in v0.sources()] == ["confirmed", "roaming"]
    assert v0.person_count == 0

    # 0 is taken now: refused, and the builder stays usable for a proper number.
    builder = v0.builder()
    builder.add_rows_by_identifier("confirmed", [hm.synthetic_id_numbers(1, 1).decode()], [TODAY])
    with pytest.raises(hm.InvalidOperation, match="version 0 does not follow version 0"):
        builder.finish(version=0)
    v1 = builder.finish()
    assert v1.version == 1 and v1.source_len("confirmed") == 1
    assert v0.source_len("confirmed") == 0


def test_without_a_number_a_fresh_index_still_finishes_as_version_1() -> None:
    assert hm.Index(SECRET).builder().finish().version == 1
    v5 = hm.Index(SECRET).builder().finish(version=5)
    for taken in (0, 4, 5):
        with pytest.raises(hm.InvalidOperation):
            v5.builder().finish(version=taken)
    assert v5.builder().finish(version=6).version == 6


def test_a_version_0_read_back_from_disk_is_published_not_fresh(tmp_path: Path) -> None:
    builder = hm.Index(SECRET).builder()
    builder.define_source("confirmed", "person")
    path = tmp_path / "v0.idx"
    builder.finish(version=0).save(str(path))
    loaded = hm.Index.load(str(path), SECRET)
    assert loaded.version == 0
    with pytest.raises(hm.InvalidOperation):
        loaded.builder().finish(version=0)
    assert loaded.builder().finish().version == 1


# -- what-if transitions -------------------------------------------------------------------------

ACTIVE: list[dict[str, Any]] = [
    {"id": "contact", "colour": "red", "checks": [{"source": "contact", "days": 14}]},
    {"id": "fever", "colour": "yellow", "checks": [{"source": "fever", "days": 1}]},
]
DRAFT: list[dict[str, Any]] = [
    {"id": "contact", "colour": "yellow", "checks": [{"source": "contact", "days": 14}]},
    {"id": "travel", "colour": "yellow", "checks": [{"source": "travel"}]},
]
BINHAI, HEPING = 120116, 120101


def whatif_index() -> hm.Index:
    """Ten persons: 0-3 contacts, 4 fever, 5 travelled; even ones live in Binhai."""
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(10, 3))
    for source in ("contact", "fever", "travel"):
        builder.define_source(source, "person")
    builder.define_source("residence", "person", has_county=True)
    builder.add_rows("contact", u32(range(4)), TODAY)
    builder.add_rows("fever", u32([4]), TODAY)
    builder.add_rows("travel", u32([5]), None)
    counties = u32(BINHAI if p % 2 == 0 else HEPING for p in range(10))
    builder.add_rows("residence", u32(range(10)), None, counties)
    return builder.finish()


def test_transitions_are_typed_counts() -> None:
    index = whatif_index()
    active = hm.Verdicts(index, hm.Plan(ACTIVE), TODAY)
    draft = hm.Verdicts(index, hm.Plan(DRAFT), TODAY)
    t = active.transitions(draft, "residence")
    assert isinstance(t, hm.Transitions)
    g, y, r = hm.Colour.GREEN, hm.Colour.YELLOW, hm.Colour.RED
    assert t.colours == ((4, 1, 0), (1, 0, 0), (0, 4, 0))
    assert t.colours[r][y] == 4 and t.colours[y][g] == 1 and t.colours[g][y] == 1
    assert t.changed == 6
    assert t.rules == {"contact": (0, 0), "fever": (0, 1), "travel": (1, 0)}
    assert t.districts == {
        BINHAI: ((0, 0, 0), (1, 0, 0), (0, 2, 0)),
        HEPING: ((0, 1, 0), (0, 0, 0), (0, 2, 0)),
    }
    assert "changed=6" in repr(t)

    without = active.transitions(draft)
    assert without.districts == {} and without.colours == t.colours
    same = active.transitions(active, "residence")
    assert same.changed == 0 and same.districts == {}
    with pytest.raises(hm.InvalidOperation):
        active.transitions(draft, "contact")  # not a county source
    with pytest.raises(TypeError):
        hm.Transitions()  # type: ignore[call-arg]


# -- rule dicts ----------------------------------------------------------------------------------


def rule(**fields: Any) -> dict[str, Any]:
    return {"id": "a", "colour": "red", "checks": [{"source": "x"}], **fields}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["not a dict"], 'rule "#0" (rule): a rule is a dict'),
        ([{"colour": "red", "checks": [{"source": "x"}]}], 'rule "#0" (id): missing'),
        ([rule(id=5)], 'rule "#0" (id): a string'),
        ([rule(colur="red")], 'rule "a" (colur): unknown field'),
        ([rule(colour="blue")], 'rule "a" (colour): "yellow" or "red"'),
        ([{"id": "a", "checks": [{"source": "x"}]}], 'rule "a" (colour): "yellow" or "red"'),
        ([rule(match="most")], 'rule "a" (match): "any" or "all"'),
        ([rule(match=1)], 'rule "a" (match): "any" or "all"'),
        ([rule(match=None)], 'rule "a" (match): "any" or "all"'),
        ([rule(checks="x")], 'rule "a" (checks): a list'),
        ([rule(checks=({"source": "x"},))], 'rule "a" (checks): a list'),
        ([rule(checks=["x"])], 'rule "a" (checks[0]): a check is a dict'),
        (
            [rule(checks=[{"source": "x", "window": 3}])],
            'rule "a" (checks[0]): unknown field "window"',
        ),
        ([rule(checks=[{"days": 3}])], 'rule "a" (checks[0].source): missing'),
        ([rule(checks=[{"source": 3}])], 'rule "a" (checks[0]): source is a string'),
        (
            [rule(clears=[{"source": "y"}, {"source": "x", "days": -1}])],
            'rule "a" (clears[1].days): a whole number of days',
        ),
        (
            [rule(checks=[{"source": "x", "hours": "2"}])],
            'rule "a" (checks[0].hours): a whole number of hours',
        ),
        ([rule(checks=[{"source": "x", "min_level": 300}])], 'rule "a" (checks[0].min_level): 1'),
        ([rule(checks=[{"source": "x", "min_level": 0}])], 'rule "a" (checks[0].min_level)'),
        ([rule(), {**rule(), "checks": []}], 'rule "a" (id): the id is used twice'),
        ([rule(checks=[])], 'rule "a" (checks): a rule needs a check'),
    ],
)
def test_a_malformed_rule_is_refused_with_its_id_and_field(rules: list[Any], message: str) -> None:
    with pytest.raises(hm.PlanError) as caught:
        hm.Plan(rules)
    assert str(caught.value).startswith(message), str(caught.value)


def test_every_field_of_a_rule_is_read() -> None:
    plan = hm.Plan(
        [
            {
                "id": "contact",
                "colour": "red",
                "match": "all",
                "checks": [
                    {"source": "contact", "days": 14, "hours": None},
                    {"source": "roaming", "min_level": 3},
                ],
                "clears": [{"source": "nat", "hours": 48}],
            },
            {"id": "fever", "colour": "yellow", "match": "any", "checks": [{"source": "fever"}]},
        ],
        "v1",
    )
    assert plan.version == "v1" and plan.rule_ids == ["contact", "fever"]
    assert plan.check_count == 4
    assert (plan.colour_of_mask(0), plan.colour_of_mask(0b10), plan.colour_of_mask(0b11)) == (
        0,
        1,
        2,
    )


# -- batch overrides -----------------------------------------------------------------------------


def test_batch_overrides_replace_registered_colours_and_bad_ones_are_refused() -> None:
    ids = hm.synthetic_id_numbers(3, 77).decode().split()
    hasher = hm.Hasher(SECRET)
    builder = hm.Index(SECRET).builder()
    builder.define_source("confirmed", "person", False)
    for i in ids[:2]:
        builder.add_person(i)
    builder.add_rows_by_identifier("confirmed", [ids[0]], [TODAY])
    plan = hm.Plan([{"id": "c", "colour": "red", "checks": [{"source": "confirmed", "days": 14}]}])
    v = hm.Verdicts(builder.finish(), plan, TODAY)
    keys = b"".join(hasher.person_key(i) for i in ids)
    text = "\n".join(ids).encode()
    assert v.colours_of_keys(keys) == v.colours_of_keys(keys, {}) == bytes([3, 1, 0])
    manual = {hasher.person_key(ids[0]): 1, hasher.person_key(ids[2]): 3}
    assert v.colours_of_keys(keys, manual) == bytes([1, 1, 0])  # ids[2] is not registered
    assert v.colours_of_id_numbers(text, manual) == (bytes([1, 1, 0]), [])
    for bad in ({b"short": 1}, {hasher.person_key(ids[1]): 0}, {hasher.person_key(ids[1]): 4}):
        with pytest.raises(hm.InvalidOperation):
            v.colours_of_keys(keys, bad)
        with pytest.raises(hm.InvalidOperation):
            v.colours_of_id_numbers(text, bad)

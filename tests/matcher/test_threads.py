"""Many readers while versions are swapped in: every read is a verdict of some published
version, never half of one, and nothing blocks or raises."""

from __future__ import annotations

import threading
import time
from typing import Any

import healthcode_matcher as hm
from matcher_support import SECRET, TODAY, lines, u32

PERSONS = 64
VERSIONS = 300
READERS = 8
TIMEOUT_S = 120.0

RULES: list[dict[str, Any]] = [
    {"id": "confirmed", "colour": "red", "checks": [{"source": "confirmed"}]},
    {"id": "contact", "colour": "yellow", "checks": [{"source": "contact"}]},
]


def expected_of(version: int, person: int) -> tuple[int, int]:
    """Version k marks person k % PERSONS red and person (k + 1) % PERSONS yellow."""
    if person == version % PERSONS:
        return hm.Colour.RED, 0b01
    if person == (version + 1) % PERSONS:
        return hm.Colour.YELLOW, 0b10
    return hm.Colour.GREEN, 0


def test_readers_see_whole_versions_during_swaps() -> None:
    builder = hm.Index(SECRET).builder()
    numbers = lines(hm.synthetic_id_numbers(PERSONS, 9))
    builder.add_persons("\n".join(numbers).encode())
    builder.define_source("confirmed", "person")
    builder.define_source("contact", "person")
    plan = hm.Plan(RULES)

    def version(k: int, base: hm.Index) -> hm.Verdicts:
        b = base.builder()
        b.clear_source("confirmed")
        b.clear_source("contact")
        b.add_rows("confirmed", u32([k % PERSONS]), TODAY)
        b.add_rows("contact", u32([(k + 1) % PERSONS]), None)
        return hm.Verdicts(b.finish(), plan, TODAY)

    first = version(0, builder.finish())
    matcher = hm.Matcher(first)
    published = {0}  # the k of every version ever installed
    version_of_index = {first.index.version: 0}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0] * READERS

    def check(verdict: hm.Verdict, person: int) -> None:
        seen = (verdict.colour, verdict.fired_mask)
        with lock:
            candidates = set(published)
        assert any(expected_of(k, person) == seen for k in candidates), (person, seen)
        # The parts of one verdict agree with each other (no torn read).
        assert verdict.rules == [r["id"] for i, r in enumerate(RULES) if seen[1] >> i & 1]

    def reader(slot: int) -> None:
        try:
            person = slot
            while not stop.is_set():
                person = (person + 7) % PERSONS
                check(matcher.evaluate(person), person)
                colour = matcher.colour(person)
                with lock:
                    candidates = set(published)
                assert any(expected_of(k, person)[0] == colour for k in candidates)
                by_number = matcher.evaluate_id_number(numbers[person])
                assert by_number is not None
                check(by_number, person)
                # A whole Verdicts object is one version: exactly one red, one yellow person.
                current = matcher.current
                with lock:
                    k = version_of_index.get(current.index.version)
                assert k is not None, "a version that was never published"
                assert current.colour_counts() == (PERSONS - 2, 1, 1)
                assert current.colour(k % PERSONS) == hm.Colour.RED
                reads[slot] += 1
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    previous = first
    try:
        for k in range(1, VERSIONS + 1):
            # every version is published however slow the machine: the deadline only bounds
            # the wait for readers, so a loaded CI machine cannot fail the count below
            if stop.is_set():
                break
            nxt = version(k, previous.index)
            with lock:
                published.add(k)
                version_of_index[nxt.index.version] = k
            old = matcher.swap(nxt)
            assert old.index.version == previous.index.version
            previous = nxt
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], "a reader is stuck"
    assert not errors, errors[:3]
    assert previous.index.version == first.index.version + VERSIONS
    assert matcher.current.index.version == previous.index.version
    assert all(count > 0 for count in reads), reads

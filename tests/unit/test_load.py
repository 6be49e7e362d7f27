"""The load generator's statistics and open-loop scheduling (clients/load.py), without a network."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from pathlib import Path

import pytest
from healthcode.v1 import colour_pb2, display_pb2

from clients import load, population
from clients.load import (
    Call,
    Histogram,
    LoadPlan,
    Midnight,
    Profile,
    Recorder,
    Target,
    Window,
    WorkerResult,
)

PEOPLE = ("120101199001011234",)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def plan(**changes: object) -> LoadPlan:
    base = LoadPlan(Target.echo, "127.0.0.1:1", Call.show, PEOPLE)
    return LoadPlan(**{**base.__dict__, **changes})  # type: ignore[arg-type]


# --- the histogram ---------------------------------------------------------------------------


@pytest.mark.parametrize("spread", ["uniform", "lognormal", "bimodal"])
def test_percentiles_are_within_one_percent_above_the_exact_ones(spread: str) -> None:
    rng = random.Random(spread)
    if spread == "uniform":
        values = [rng.uniform(0.0001, 0.05) for _ in range(20_000)]
    elif spread == "lognormal":
        values = [rng.lognormvariate(-6, 1.5) for _ in range(20_000)]
    else:
        values = [rng.choice((0.001, 0.250)) * rng.uniform(0.9, 1.1) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.count == len(values)
    assert h.max_s == max(values)
    assert h.mean_s == pytest.approx(sum(values) / len(values))
    for q in (0.01, 0.5, 0.9, 0.99, 0.999, 1.0):
        exact = nearest_rank(values, q)
        got = h.percentile(q)
        assert exact * 0.999 <= got <= exact * 1.0101, (q, exact, got)


def test_merged_histograms_equal_one_that_saw_everything() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(200) for _ in range(5_000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    for n, v in enumerate(values):
        whole.record(v)
        (a if n % 3 else b).record(v)
    a.merge(b)
    assert a.counts == whole.counts
    assert (a.count, a.max_s) == (whole.count, whole.max_s)
    assert a.total_s == pytest.approx(whole.total_s)


def test_an_empty_histogram_and_tiny_latencies() -> None:
    h = Histogram()
    assert h.percentile(0.99) == 0.0 and h.mean_s == 0.0
    h.record(0.0)
    h.record(1e-7)
    assert h.percentile(1.0) == pytest.approx(1e-7)  # never above the maximum


def test_recorder_counts_by_second_of_completion_and_status() -> None:
    rec = Recorder(start=100.0)
    rec.success(100.2, 0.010)
    rec.success(101.5, 0.020, items=30)
    rec.failure(101.9, "UNAVAILABLE", "connect to 120101199001011234 failed")
    rec.failure(103.0, "RESOURCE_EXHAUSTED")
    assert rec.done == 4
    assert (rec.total.ok, rec.total.items) == (2, 31)
    assert rec.total.errors == {"UNAVAILABLE": 1, "RESOURCE_EXHAUSTED": 1}
    assert sorted(rec.windows) == [0, 1, 3]
    assert rec.windows[1].ok == 1 and rec.windows[1].errors == {"UNAVAILABLE": 1}
    # An ID number in an error's text is masked before it is kept.
    assert "120101199001011234" not in rec.first_error and rec.first_error.startswith("UNAV")
    # One example message per status, masked too; a later message of a status is not kept.
    rec.failure(104.0, "UNAVAILABLE", "another")
    assert set(rec.error_examples) == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert rec.error_examples["UNAVAILABLE"].startswith("connect to ")
    assert "120101199001011234" not in rec.error_examples["UNAVAILABLE"]


# --- the schedule ----------------------------------------------------------------------------


def test_a_flat_schedule_sends_rate_times_duration_evenly() -> None:
    times = list(load.schedule(lambda t: 500.0, 3.0))
    assert len(times) == 1500
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {0.002}
    assert len(list(load.schedule(lambda t: 500.0, 3.0, limit=7))) == 7


def test_processes_interleave_and_add_up_to_the_whole_rate() -> None:
    whole = plan(rate=300.0, duration_s=2.0, procs=3)
    parts = [list(load.process_schedule(whole.share(i))) for i in range(3)]
    assert [len(p) for p in parts] == [200, 200, 200]
    merged = sorted(t for p in parts for t in p)
    gaps = [b - a for a, b in itertools.pairwise(merged)]
    assert min(gaps) == pytest.approx(1 / 300) and max(gaps) == pytest.approx(1 / 300)
    assert load.expected_calls(whole) == 600


def test_the_midnight_profile_ramps_to_ten_times_holds_and_comes_back() -> None:
    m = Midnight(base_s=2, ramp_s=4, hold_s=3, factor=10)
    assert m.total_s == 15
    assert [p[0] for p in m.phases()] == ["before", "ramp up", "peak", "ramp down", "after"]
    assert [m.multiplier(t) for t in (0, 1.9, 4, 6, 8.9, 11, 13, 14.9)] == [
        1,
        1,
        5.5,
        10,
        10,
        5.5,
        1,
        1,
    ]
    p = plan(rate=100.0, profile=Profile.midnight, midnight=m)
    times = list(load.process_schedule(p))
    # The schedule's count is the integral of the rate: 100/s x (2 + 2 + 3 x 10 + 4 x 5.5 x 2).
    integral = 100 * (2 + 2 + 30 + 2 * 4 * 5.5)
    assert abs(len(times) - integral) <= 0.01 * integral
    assert times == sorted(times) and times[-1] < 15
    peak = [t for t in times if 6 <= t < 9]
    before = [t for t in times if t < 2]
    assert len(peak) == pytest.approx(10 * len(before) * 3 / 2, rel=0.02)


def test_the_plan_shares_and_refuses_what_cannot_run() -> None:
    p = plan(concurrency=10, calls=101, tokens=7, procs=3)
    shares = [p.share(i) for i in range(3)]
    assert sum(s.concurrency for s in shares) == 10
    assert sum(s.calls or 0 for s in shares) == 101
    assert [s.index for s in shares] == [0, 1, 2]
    p.check()
    with pytest.raises(load.LoadError, match="answers show, scan"):
        plan(call=Call.evaluate_stream).check()
    with pytest.raises(load.LoadError, match="needs a base --rate"):
        plan(profile=Profile.midnight).check()
    with pytest.raises(load.LoadError, match="no people"):
        plan(people=()).check()
    assert plan(profile=Profile.midnight, rate=1.0).planned_s == Midnight().total_s


# --- the open loop: a stall cannot hide ------------------------------------------------------


class SlowCaller:
    """Answers every call after `seconds`; a shared lock lets one call run at a time (a server
    with one thread)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ran_out = False
        self.lock = asyncio.Lock()
        self.calls = 0

    async def __call__(self) -> int:
        async with self.lock:
            self.calls += 1
            await asyncio.sleep(self.seconds)
            return 1


def test_open_loop_latency_counts_from_the_scheduled_send() -> None:
    """100 calls a second against a server that answers 20: the k-th call cannot answer before
    (k + 1) x 50 ms, while it was due at k x 10 ms, so the last of 20 waited at least 0.8 s.
    A closed loop over the same server would report 50 ms for every call."""
    p = plan(rate=100.0, duration_s=0.2)
    caller = SlowCaller(0.05)

    async def run() -> Recorder:
        rec = Recorder(time.perf_counter())
        await load._open_loop(p, caller, rec)
        return rec

    rec = asyncio.run(run())
    assert caller.calls == 20 and rec.total.ok == 20
    assert rec.total.latency.max_s >= 0.8
    assert rec.total.latency.percentile(0.5) >= 0.4


def test_closed_loop_stops_after_the_call_budget() -> None:
    p = plan(concurrency=4, calls=9, duration_s=30.0)
    caller = SlowCaller(0.0)

    async def run() -> Recorder:
        rec = Recorder(time.perf_counter())
        await load._closed_loop(p, caller, rec)
        return rec

    rec = asyncio.run(run())
    assert caller.calls == 9 and rec.total.ok == 9


# --- the summary -----------------------------------------------------------------------------


def worker(
    index: int, seconds: dict[int, tuple[int, float]], errors: dict[str, int]
) -> WorkerResult:
    total, windows = Window(), {}
    for second, (n, latency) in seconds.items():
        w = Window()
        for _ in range(n):
            w.ok += 1
            w.items += 1
            w.latency.record(latency)
        windows[second] = w
        total.merge(w)
    total.errors = dict(errors)
    return WorkerResult(index, total, windows, float(len(seconds)), "", 0.001)


def test_summary_merges_processes_and_splits_midnight_phases() -> None:
    m = Midnight(base_s=1, ramp_s=1, hold_s=1, factor=4)
    p = plan(rate=10.0, profile=Profile.midnight, midnight=m, procs=2)
    a = worker(0, {s: (5, 0.001 * (s + 1)) for s in range(5)}, {"RESOURCE_EXHAUSTED": 2})
    b = worker(1, {s: (5, 0.002) for s in range(5)}, {"UNAVAILABLE": 1})
    s = load.summarize(p, [a, b], "2021-01-15T00:00:00+0800")
    assert (s.ok, s.calls, s.error_count, s.shed, s.failed) == (50, 53, 3, 2, 1)
    assert s.errors == {"RESOURCE_EXHAUSTED": 2, "UNAVAILABLE": 1}
    assert [w["ok"] for w in s.windows] == [10] * 5
    assert [w["offered_per_s"] for w in s.windows] == [10, 25, 40, 25, 10]
    assert [ph["phase"] for ph in s.phases] == ["before", "ramp up", "peak", "ramp down", "after"]
    assert [ph["ok"] for ph in s.phases] == [10] * 5
    assert s.latency_ms["max"] == 5.0 and s.throughput_per_s == 10.0
    json.dumps(s.to_json())  # the --json file


# --- people and the h2load body --------------------------------------------------------------


def test_people_come_from_the_seeded_city_or_its_file(tmp_path: Path) -> None:
    city = population.SyntheticCity(50, 4)
    everyone = {p.id_number for block in city.blocks() for p in block}
    chosen = load.people_from_city(20, 50, 4)
    assert len(set(chosen)) == 20 and set(chosen) <= everyone
    people_file = tmp_path / "people.csv"
    population.write_people(people_file, city)
    from_file = load.people_from_file(people_file, 20, 4)
    assert len(set(from_file)) == 20 and set(from_file) <= everyone
    assert set(load.people_from_file(people_file, 1000, 4)) == everyone


def test_the_h2load_body_is_one_length_prefixed_show_request() -> None:
    assert load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    body = load.h2load_body(Call.show, PEOPLE)
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    request = display_pb2.ShowRequest.FromString(body[5:])
    assert request.person.id_number == PEOPLE[0] and request.actor.person.id_number == PEOPLE[0]
    stream = load.h2load_body(Call.evaluate_stream, PEOPLE * 3, batch=1, messages=3)
    assert stream.count(b"\x00\x00\x00\x00") >= 3
    packed = load.h2load_body(Call.evaluate_stream, PEOPLE * 4, batch=2, messages=2)
    first = colour_pb2.EvaluateStreamRequest.FromString(
        packed[5 : 5 + int.from_bytes(packed[1:5], "big")]
    )
    assert list(first.id_numbers) == list(PEOPLE * 4)[:2] and first.actor.principal == "h2load"
    with pytest.raises(load.LoadError):
        load.h2load_body(Call.scan, PEOPLE)

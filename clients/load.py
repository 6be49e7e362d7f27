"""The load generator behind `healthcode load` (issue 9, part 3): Show, Scan and EvaluateStream
over many channels, at a fixed rate or flat out, with latency percentiles, errors by status, a
JSON summary and a plot over time.

    plan = LoadPlan(Target.display, "127.0.0.1:50054", Call.show, people, rate=500, duration_s=30)
    summary = run_load(plan)
    print(summary.throughput_per_s, summary.latency_ms["p99"])

Two ways to drive a service:

- **open loop** (`rate` set): calls are sent on a schedule, whatever the service does, and each
  call's latency is measured from its SCHEDULED send time, so a stall (in the service or in this
  generator) shows up as latency instead of quietly lowering the rate ("coordinated omission").
  The rate follows a profile: `flat`, or `midnight` (base rate, a ramp to `factor` times it,
  held, a ramp back, the base again: the seed's midnight re-declaration peak).
- **closed loop** (`rate` None): `concurrency` callers, each sending its next call as soon as
  the last one answered; latency from the actual send.

One process runs an asyncio loop over `channels` grpc.aio channels (each its own TCP
connection); `procs` > 1 starts that many such processes so that the generator's own CPU is not
the ceiling. Latencies go into log buckets 1% wide (`Histogram`), overall and per second of
completion (`Window`), so the processes' figures merge exactly and memory stays bounded.

A call is one RPC; for EvaluateStream one stream of `messages` messages of `batch` persons each
(its `items`: persons): `batch` 1 is the per-person form (a PersonRef a message, a Verdict an
answer), more packs the persons' ID numbers into one message answered with packed colours (R12
at speed; at most 100,000 a message). Tokens for
Scan come from Shows made before the measured part (each token scanned once, as a verifier
would). RESOURCE_EXHAUSTED is a service shedding load on purpose: it is counted with the errors
by status and also as `shed`; `failed` is every other error.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import enum
import math
import multiprocessing as mp
import os
import queue as queue_module
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import grpc
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    display_pb2,
    display_pb2_grpc,
)

from clients.credentials import ClientCredentials
from services._common.logs import redact

ECHO_PORT = 50059
DEFAULT_ECHO_ADDR = f"127.0.0.1:{ECHO_PORT}"
# A token is not scanned when older than its lifetime less this (it could expire in flight).
TOKEN_MARGIN_S = 5.0
WARMUP_CALLS = 10
PROGRESS_EVERY_S = 0.25
# Beyond this many calls in flight an open-loop process waits before sending more (memory);
# latency still counts from the scheduled time, so the wait is not hidden.
MAX_IN_FLIGHT = 20_000
# How long a preparing call waits after being shed before it tries again (with jitter).
SHED_PAUSE_S = 0.2
# ColourService.EvaluateStream takes at most this many persons in one batch message.
MAX_STREAM_BATCH = 100_000

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # gRPC shares one connection between channels with the same arguments; a pool per channel
    # gives every channel its own TCP connection, which is the point of having several.
    ("grpc.use_local_subchannel_pool", 1),
]


class LoadError(RuntimeError):
    """The load cannot run (no service there, people not registered, a bad plan)."""


class Target(enum.StrEnum):
    display = "display"
    colour = "colour"
    echo = "echo"


class Call(enum.StrEnum):
    show = "show"
    scan = "scan"
    evaluate_stream = "evaluate-stream"


class Profile(enum.StrEnum):
    flat = "flat"
    midnight = "midnight"


# Which calls each target answers; the first is its default.
CALLS: dict[Target, tuple[Call, ...]] = {
    Target.display: (Call.show, Call.scan),
    Target.colour: (Call.evaluate_stream,),
    Target.echo: (Call.show, Call.scan),
}

RPC_NAME = {
    Call.show: "DisplayService.Show",
    Call.scan: "DisplayService.Scan",
    Call.evaluate_stream: "ColourService.EvaluateStream",
}


# --- latency histogram and per-second windows ------------------------------------------------


_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)


@dataclass
class Histogram:
    """Latencies in logarithmic buckets 1% wide, keyed by index (HdrHistogram's idea in a dict).

    A percentile is the upper edge of the bucket holding the nearest-rank value, so it is at
    most 1% above the exact one (and never above the maximum, kept exactly). Histograms merge
    by adding counts, so per-process and per-second figures add up exactly.

    >>> h = Histogram()
    >>> for ms in (1, 2, 3, 4, 100):
    ...     h.record(ms / 1000)
    >>> round(h.percentile(0.5) * 1000, 1), h.max_s
    (3.0, 0.1)
    """

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    def record(self, seconds: float) -> None:
        micros = seconds * 1e6
        index = 0 if micros <= 1.0 else math.ceil(math.log(micros) / _LOG_GROWTH)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: Histogram) -> None:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float:
        """The nearest-rank `q` quantile (0 < q <= 1) in seconds; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(_GROWTH**index / 1e6, self.max_s)
        return self.max_s

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0

    def summary_ms(self) -> dict[str, float]:
        return {
            "p50": round(self.percentile(0.50) * 1000, 3),
            "p90": round(self.percentile(0.90) * 1000, 3),
            "p99": round(self.percentile(0.99) * 1000, 3),
            "max": round(self.max_s * 1000, 3),
            "mean": round(self.mean_s * 1000, 3),
        }


@dataclass
class Window:
    """What completed in one second of the run: answered calls, their items and latencies, and
    errors by status."""

    ok: int = 0
    items: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)

    def merge(self, other: Window) -> None:
        self.ok += other.ok
        self.items += other.items
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.latency.merge(other.latency)


class Recorder:
    """Counts one process's calls: overall and per second of completion since `start`."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.total = Window()
        self.windows: dict[int, Window] = {}
        self.first_error = ""
        # The first message of each status (masked): what a CANCELLED or a shed call said.
        self.error_examples: dict[str, str] = {}
        self.max_send_lag_s = 0.0
        self.last_done = start

    def _window(self, done: float) -> Window:
        second = max(0, int(done - self.start))
        window = self.windows.get(second)
        if window is None:
            window = self.windows[second] = Window()
        return window

    def success(self, done: float, latency_s: float, items: int = 1) -> None:
        self.last_done = max(self.last_done, done)
        for w in (self.total, self._window(done)):
            w.ok += 1
            w.items += items
            w.latency.record(latency_s)

    def failure(self, done: float, code: str, detail: str = "") -> None:
        self.last_done = max(self.last_done, done)
        for w in (self.total, self._window(done)):
            w.errors[code] = w.errors.get(code, 0) + 1
        if code not in self.error_examples:
            self.error_examples[code] = redact(detail)[:300]
            if not self.first_error:
                self.first_error = f"{code}: {redact(detail)}"[:300]

    def lag(self, seconds: float) -> None:
        self.max_send_lag_s = max(self.max_send_lag_s, seconds)

    @property
    def done(self) -> int:
        return self.total.ok + sum(self.total.errors.values())


# --- the plan: profiles and the open-loop schedule -------------------------------------------


@dataclass(frozen=True)
class Midnight:
    """The midnight peak: `base_s` at the base rate, a ramp to `factor` times it over
    `ramp_s`, held for `hold_s`, a ramp back over `ramp_s`, then `base_s` at the base again."""

    base_s: float = 60.0
    ramp_s: float = 60.0
    hold_s: float = 60.0
    factor: float = 10.0

    @property
    def total_s(self) -> float:
        return 2 * self.base_s + 2 * self.ramp_s + self.hold_s

    def phases(self) -> list[tuple[str, float, float]]:
        """(name, start s, end s) of each part."""
        edges = [0.0]
        for length in (self.base_s, self.ramp_s, self.hold_s, self.ramp_s, self.base_s):
            edges.append(edges[-1] + length)
        names = ("before", "ramp up", "peak", "ramp down", "after")
        return [(n, edges[i], edges[i + 1]) for i, n in enumerate(names)]

    def multiplier(self, t: float) -> float:
        """How many times the base rate at `t` seconds into the run."""
        up = self.base_s
        peak = up + self.ramp_s
        down = peak + self.hold_s
        after = down + self.ramp_s
        if t < up or t >= after:
            return 1.0
        if t < peak:
            return 1.0 + (self.factor - 1.0) * (t - up) / self.ramp_s
        if t < down:
            return self.factor
        return self.factor - (self.factor - 1.0) * (t - down) / self.ramp_s


@dataclass(frozen=True)
class LoadAuth:
    """What a generator process presents: the load generator's certificate, and a token per
    person shown (minted before the run, so signing costs the measurement nothing) plus one
    for the scanning verifier and one for the exam organiser's stream. Picklable, for spawned
    processes; never printed."""

    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    person_tokens: dict[str, str] = field(repr=False, default_factory=dict)
    verifier_token: str = field(repr=False, default="")
    partner_token: str = field(repr=False, default="")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def load_auth(creds: ClientCredentials, people: Sequence[str], verifier: str) -> LoadAuth:
    """Tokens for a run, minted by the operator's issuer (clients/credentials.py)."""
    person_tokens: dict[str, str] = {}
    for id_number in people:
        actor = common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
        )
        token = creds.token_for(actor)
        if token is not None:
            person_tokens[id_number] = token
    verifier_actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal=verifier)
    partner_actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_PARTNER, principal=verifier)
    # EvaluateStream is an exam organiser's batch check (its purpose; services/declaration/
    # consent.py): the load generator's partner token says so.
    creds.partner_context = "exam_organiser"
    security = creds.security
    return LoadAuth(
        security.ca,
        security.cert,
        security.key,
        person_tokens,
        creds.token_for(verifier_actor) or "",
        creds.token_for(partner_actor) or "",
    )


@dataclass(frozen=True)
class LoadPlan:
    """What to drive, how hard and for how long. `rate` None: closed loop (flat out)."""

    target: Target
    address: str
    call: Call
    people: tuple[str, ...]
    rate: float | None = None
    concurrency: int = 64
    duration_s: float = 10.0
    calls: int | None = None
    channels: int = 8
    procs: int = 1
    profile: Profile = Profile.flat
    midnight: Midnight = field(default_factory=Midnight)
    timeout_s: float = 10.0
    # EvaluateStream: persons per message (1: the per-person form) and messages per stream.
    batch: int = 10_000
    messages: int = 1
    tokens: int = 10_000
    seed: int = 1
    # Which of `procs` processes this plan is for (set by `share`); its schedule is offset by
    # index/procs of an interval so that the processes' calls interleave.
    index: int = 0
    # Mutual TLS and bearer tokens for a platform that checks credentials (`load_auth`); None:
    # plain text (the echo server, an insecure development stack).
    auth: LoadAuth | None = None

    def check(self) -> None:
        """Raise LoadError naming what is wrong with the plan."""
        if self.call not in CALLS[self.target]:
            allowed = ", ".join(c.value for c in CALLS[self.target])
            raise LoadError(f"target {self.target} answers {allowed}, not {self.call}")
        if not self.people:
            raise LoadError("no people to show: give --people-file or --sample")
        if self.rate is not None and self.rate <= 0:
            raise LoadError("the rate must be above 0 calls a second")
        if self.profile == Profile.midnight and self.rate is None:
            raise LoadError("the midnight profile needs a base --rate (it is an open loop)")
        if self.profile == Profile.midnight and self.midnight.ramp_s <= 0:
            raise LoadError("the midnight ramp must last more than 0 s")
        if self.calls is not None and self.calls < 1:
            raise LoadError("--calls must be at least 1")
        for name in ("concurrency", "channels", "procs", "batch", "messages", "tokens"):
            if getattr(self, name) < 1:
                raise LoadError(f"--{name} must be at least 1")
        if self.duration_s <= 0:
            raise LoadError("the duration must be above 0 s")
        if self.batch > MAX_STREAM_BATCH:
            raise LoadError(f"--batch is at most {MAX_STREAM_BATCH:,} persons a message")

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def planned_s(self) -> float:
        """How long calls are sent (a midnight run's length is its phases')."""
        if self.profile == Profile.midnight:
            return self.midnight.total_s
        return self.duration_s

    def rate_at(self, t: float) -> float:
        """The whole run's target rate (all processes) at `t` s; 0 for a closed loop."""
        if self.rate is None:
            return 0.0
        if self.profile == Profile.midnight:
            return self.rate * self.midnight.multiplier(t)
        return self.rate

    def share(self, index: int) -> LoadPlan:
        """Process `index`'s part of the plan: its share of the rate, concurrency, calls and
        tokens (the first processes take the remainders)."""

        def part(total: int) -> int:
            return total // self.procs + (1 if index < total % self.procs else 0)

        return replace(
            self,
            index=index,
            concurrency=max(1, part(self.concurrency)),
            calls=None if self.calls is None else part(self.calls),
            tokens=max(1, part(self.tokens)),
        )


def schedule(
    rate_at: Callable[[float], float],
    duration_s: float,
    limit: int | None = None,
    offset: float = 0.0,
) -> Iterator[float]:
    """Send times in seconds from the start for a rate (calls a second) that may change over
    time: each call 1/rate after the one before. `offset` (0-1) delays the first call by that
    share of an interval, so that several processes at the same rate interleave."""
    t = offset / rate_at(0.0)
    n = 0
    # The epsilon keeps float sums (0.002 * 1500 = 2.9999...) from adding one call at the end.
    while t < duration_s - 1e-9 and (limit is None or n < limit):
        yield t
        n += 1
        t += 1.0 / rate_at(t)


def process_schedule(plan: LoadPlan) -> Iterator[float]:
    """This process's send times: the whole run's rate divided among the processes."""
    procs = plan.procs

    def my_rate(t: float) -> float:
        return plan.rate_at(t) / procs

    return schedule(my_rate, plan.planned_s, plan.calls, offset=plan.index / procs)


# --- people ----------------------------------------------------------------------------------


def people_from_file(path: Path, sample: int, seed: int) -> list[str]:
    """Up to `sample` ID numbers from a people file (CSV with an id_number column, as
    `healthcode seed` writes, or JSONL), chosen uniformly (reservoir sampling: the file is
    read once as a stream, at any size)."""
    rng = random.Random(seed)
    chosen: list[str] = []

    def ids() -> Iterator[str]:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() == ".csv":
                for row in csv.DictReader(f):
                    yield (row.get("id_number") or "").strip()
            else:
                import json

                for line in f:
                    if line.strip():
                        yield str(json.loads(line).get("id_number", "")).strip()

    for n, id_number in enumerate(i for i in ids() if i):
        if n < sample:
            chosen.append(id_number)
        else:
            j = rng.randrange(n + 1)
            if j < sample:
                chosen[j] = id_number
    if not chosen:
        raise LoadError(f"{path}: no id_number values found")
    return chosen


def people_from_city(sample: int, city: int, seed: int) -> list[str]:
    """`sample` distinct people of the synthetic city that `healthcode seed --people CITY
    --seed SEED` registers (person i is the same whatever the city's size)."""
    from clients.population import SyntheticCity

    city = max(city, sample)
    synthetic = SyntheticCity(city, seed)
    picked = random.Random(seed).sample(range(city), sample)
    return [synthetic.id_number(i)[0] for i in picked]


# --- requests --------------------------------------------------------------------------------


def show_request(id_number: str, device: display_pb2.Device) -> display_pb2.ShowRequest:
    """The holder shows their own code (the mini-program's call)."""
    ref = common_pb2.PersonRef(id_number=id_number)
    actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ref)
    return display_pb2.ShowRequest(actor=actor, person=ref, device=device)


def evaluate_stream_batch(
    people: Sequence[str], principal: str, batch: int = 1
) -> list[colour_pb2.EvaluateStreamRequest]:
    """One stream's messages, as an exam's batch check sends them (the actor on the first):
    `batch` 1, one person a message (a Verdict each); more, `batch` ID numbers a message
    (answered with packed colours)."""
    actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_PARTNER, principal=principal)
    if batch == 1:
        entries = [
            colour_pb2.EvaluateStreamRequest(
                correlation_id=str(n), person=common_pb2.PersonRef(id_number=id_number)
            )
            for n, id_number in enumerate(people)
        ]
    else:
        entries = [
            colour_pb2.EvaluateStreamRequest(
                correlation_id=str(n), id_numbers=people[start : start + batch]
            )
            for n, start in enumerate(range(0, len(people), batch))
        ]
    if entries:
        entries[0].actor.CopyFrom(actor)
    return entries


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: not compressed (0), 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load_body(call: Call, people: Sequence[str], batch: int = 1, messages: int = 1) -> bytes:
    """A request body h2load can post: one Show of the first person, or an EvaluateStream of
    `messages` messages of `batch` people (several messages in one body are a client stream;
    `batch` 1 is the per-person form)."""
    if call == Call.show:
        device = display_pb2.Device(device_id="h2load", place="load test")
        return grpc_frame(show_request(people[0], device).SerializeToString())
    if call == Call.evaluate_stream:
        entries = evaluate_stream_batch(list(people[: batch * messages]), "h2load", batch)
        return b"".join(grpc_frame(e.SerializeToString()) for e in entries)
    raise LoadError("h2load replays one body: Show or EvaluateStream (a Scan token is used once)")


H2LOAD_PATH = {
    Call.show: "/healthcode.v1.DisplayService/Show",
    Call.evaluate_stream: "/healthcode.v1.ColourService/EvaluateStream",
}


def h2load_command(address: str, call: Call, body: Path) -> str:
    return (
        f"h2load -n 20000 -c 8 -m 32 --data {body} "
        "-H 'content-type: application/grpc' -H 'te: trailers' "
        f"http://{address}{H2LOAD_PATH[call]}"
    )


# --- one process: channels, callers, the loops -----------------------------------------------


class _OutOfTokens(Exception):
    """Every token prepared for Scan was used (or grew too old)."""


class _EntryProblems(Exception):
    """An EvaluateStream answer carried problems with an entry."""


@dataclass
class WorkerResult:
    """What one process measured (picklable, merged by `summarize`)."""

    index: int
    total: Window
    windows: dict[int, Window]
    elapsed_s: float
    first_error: str
    max_send_lag_s: float
    error_examples: dict[str, str] = field(default_factory=dict)
    prepared_tokens: int = 0
    skipped_tokens: int = 0
    ran_out_of_tokens: bool = False


Report = Callable[[int, int, int, int], None]  # (process, calls done, errors, items)


class Caller(Protocol):
    """One measured call (awaited: the items it covered), and whether the calls ran out."""

    ran_out: bool

    def __call__(self) -> Awaitable[int]: ...


class _Caller:
    """Makes one kind of call over a set of channels. Display and echo go through exactly the
    same code (the echo server answers the same RPCs)."""

    def __init__(self, plan: LoadPlan, channels: Sequence[grpc.aio.Channel]) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed * 1009 + plan.index)
        self.display = [display_pb2_grpc.DisplayServiceStub(c) for c in channels]
        self.colour = [colour_pb2_grpc.ColourServiceStub(c) for c in channels]
        device = display_pb2.Device(device_id=f"load-{plan.index}", place="load test")
        self.scan_device = display_pb2.Device(device_id=f"load-gate-{plan.index}", place="load")
        self.verifier = common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_VERIFIER, principal=f"load-gate-{plan.index}"
        )
        people = list(plan.people)
        self.show_requests = [show_request(p, device) for p in people]
        # With credentials every call carries its bearer token; the actor is left to it.
        auth = plan.auth
        self.show_metadata: list[tuple[tuple[str, str], ...] | None] = [None] * len(people)
        self.scan_metadata: tuple[tuple[str, str], ...] | None = None
        self.stream_metadata: tuple[tuple[str, str], ...] | None = None
        if auth is not None:
            self.show_metadata = [
                (("authorization", f"Bearer {auth.person_tokens[p]}"),)
                if p in auth.person_tokens
                else None
                for p in people
            ]
            self.scan_metadata = (("authorization", f"Bearer {auth.verifier_token}"),)
            self.stream_metadata = (("authorization", f"Bearer {auth.partner_token}"),)
            self.verifier = common_pb2.Actor()
        # A few distinct streams, each a different slice of the people (rotated).
        per_stream = plan.batch * plan.messages if plan.call == Call.evaluate_stream else 1
        batches = []
        for b in range(min(8, max(1, len(people) // per_stream))):
            start = b * per_stream
            chunk = [people[(start + k) % len(people)] for k in range(per_stream)]
            batches.append(evaluate_stream_batch(chunk, f"load-batch-{plan.index}", plan.batch))
        if auth is not None:
            for batch in batches:
                batch[0].ClearField("actor")
        self.batches = batches
        self.tokens: collections.deque[tuple[float, str]] = collections.deque()
        self.token_max_age_s = 60.0 - TOKEN_MARGIN_S
        self.skipped_tokens = 0
        self.ran_out = False
        self.turn = 0

    def _next(self) -> int:
        self.turn += 1
        return self.turn % len(self.display)

    async def show(self) -> str:
        which = self.rng.randrange(len(self.show_requests))
        reply = await self.display[self._next()].Show(
            self.show_requests[which],
            timeout=self.plan.timeout_s,
            metadata=self.show_metadata[which],
        )
        return reply.token

    async def scan(self) -> None:
        now = time.monotonic()
        while self.tokens and now - self.tokens[0][0] > self.token_max_age_s:
            self.tokens.popleft()
            self.skipped_tokens += 1
        if not self.tokens:
            self.ran_out = True
            raise _OutOfTokens
        _, token = self.tokens.popleft()
        request = display_pb2.ScanRequest(actor=self.verifier, token=token, device=self.scan_device)
        await self.display[self._next()].Scan(
            request, timeout=self.plan.timeout_s, metadata=self.scan_metadata
        )

    async def evaluate_stream(self) -> int:
        entries = self.batches[self.rng.randrange(len(self.batches))]
        stream = self.colour[self._next()].EvaluateStream(
            iter(entries), timeout=self.plan.timeout_s, metadata=self.stream_metadata
        )
        answered = problems = 0
        async for answer in stream:
            if answer.colours:  # a batch: one byte a person
                answered += len(answer.colours)
                problems += len(answer.entry_problems)
            else:
                answered += 1
                problems += bool(answer.problems)
        if problems:
            raise _EntryProblems(f"{problems} of {answered} persons had problems")
        return answered

    async def __call__(self) -> int:
        """One measured call; the items it covered."""
        if self.plan.call == Call.show:
            await self.show()
            return 1
        if self.plan.call == Call.scan:
            await self.scan()
            return 1
        return await self.evaluate_stream()

    async def prepare_tokens(self, count: int) -> None:
        """Show `count` codes (unmeasured, 32 at a time) and keep their tokens for Scan."""
        try:
            key = await self.display[0].GetVerificationKey(
                display_pb2.GetVerificationKeyRequest(),
                timeout=self.plan.timeout_s,
                metadata=self.scan_metadata,
            )
            if key.token_ttl_ms:
                self.token_max_age_s = max(1.0, key.token_ttl_ms / 1000 - TOKEN_MARGIN_S)
        except grpc.aio.AioRpcError:
            pass  # the echo server answers only Show and Scan; assume the longest lifetime
        left = count

        async def issue() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                issued = time.monotonic()
                self.tokens.append((issued, await self._show_when_admitted()))

        await asyncio.gather(*(issue() for _ in range(min(32, count))))

    async def _show_when_admitted(self) -> str:
        """A Show outside the measurement: one the display sheds (RESOURCE_EXHAUSTED) is made
        again after a pause, as a client told to retry would, for up to the call timeout."""
        give_up = time.monotonic() + self.plan.timeout_s
        while True:
            try:
                return await self.show()
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > give_up:
                    raise
            await asyncio.sleep(SHED_PAUSE_S * random.uniform(1.0, 2.0))


def _code_of(error: grpc.aio.AioRpcError) -> str:
    return str(error.code().name)


async def _warm_up(plan: LoadPlan, caller: _Caller, channels: Sequence[grpc.aio.Channel]) -> None:
    """Connect every channel and make a few calls outside the measurement; fail saying why."""
    try:
        await asyncio.wait_for(
            asyncio.gather(*(c.channel_ready() for c in channels)), timeout=plan.timeout_s
        )
    except TimeoutError:
        raise LoadError(f"no {plan.target} service answers at {plan.address}") from None
    try:
        if plan.call == Call.evaluate_stream:
            await caller.evaluate_stream()
        else:
            for _ in range(WARMUP_CALLS):
                await caller.show()
    except grpc.aio.AioRpcError as e:
        hint = ""
        if e.code() == grpc.StatusCode.NOT_FOUND:
            hint = (
                " (are these people registered? give the --people-file the city was loaded "
                "from, or --sample with the --seed and --city of `healthcode seed`)"
            )
        detail = redact(e.details() or "")
        raise LoadError(f"warm-up {RPC_NAME[Call.show]} failed: {_code_of(e)}: {detail}{hint}")
    except _EntryProblems as e:
        raise LoadError(f"warm-up {RPC_NAME[Call.evaluate_stream]}: {e}") from None


async def _open_loop(plan: LoadPlan, caller: Caller, rec: Recorder) -> None:
    in_flight: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(due: float) -> None:
        try:
            items = await caller()
            done = time.perf_counter()
            rec.success(done, done - due, items)
        except grpc.aio.AioRpcError as e:
            rec.failure(time.perf_counter(), _code_of(e), e.details() or "")
        except _EntryProblems as e:
            rec.failure(time.perf_counter(), "ENTRY_PROBLEMS", str(e))
        except _OutOfTokens:
            pass
        finally:
            room.release()

    for t in process_schedule(plan):
        if caller.ran_out:
            break
        due = rec.start + t
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await room.acquire()
        rec.lag(time.perf_counter() - due)
        task = asyncio.create_task(one(due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


async def _closed_loop(plan: LoadPlan, caller: Caller, rec: Recorder) -> None:
    deadline = rec.start + plan.duration_s
    budget = [plan.calls]

    async def worker() -> None:
        while time.perf_counter() < deadline and not caller.ran_out:
            if budget[0] is not None:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            sent = time.perf_counter()
            try:
                items = await caller()
                done = time.perf_counter()
                rec.success(done, done - sent, items)
            except grpc.aio.AioRpcError as e:
                rec.failure(time.perf_counter(), _code_of(e), e.details() or "")
            except _EntryProblems as e:
                rec.failure(time.perf_counter(), "ENTRY_PROBLEMS", str(e))
            except _OutOfTokens:
                return

    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))


def _scan_tokens_needed(plan: LoadPlan) -> int:
    # Capped by --tokens: every token must be scanned within its life (a minute at most).
    if plan.open_loop:
        return min(plan.tokens, sum(1 for _ in process_schedule(plan)))
    return plan.tokens if plan.calls is None else min(plan.calls, plan.tokens)


async def run_process(
    plan: LoadPlan, ready: Callable[[], None] | None = None, report: Report | None = None
) -> WorkerResult:
    """One process's part of the load: connect, warm up (and prepare Scan tokens), call
    `ready` (the processes' barrier), run the loop, return what was measured."""
    if plan.auth is not None:
        tls = plan.auth.channel_credentials()
        channels = [
            grpc.aio.secure_channel(plan.address, tls, options=_CHANNEL_OPTIONS)
            for _ in range(plan.channels)
        ]
    else:
        channels = [
            grpc.aio.insecure_channel(plan.address, options=_CHANNEL_OPTIONS)
            for _ in range(plan.channels)
        ]
    try:
        caller = _Caller(plan, channels)
        await _warm_up(plan, caller, channels)
        prepared = 0
        if plan.call == Call.scan:
            prepared = _scan_tokens_needed(plan)
            try:
                await caller.prepare_tokens(prepared)
            except grpc.aio.AioRpcError as e:
                raise LoadError(
                    f"preparing tokens for Scan: {_code_of(e)}: {redact(e.details() or '')}"
                ) from None
        if ready is not None:
            await asyncio.get_running_loop().run_in_executor(None, ready)
        rec = Recorder(time.perf_counter())

        async def progress() -> None:
            while True:
                if report is not None:
                    report(plan.index, rec.done, rec.done - rec.total.ok, rec.total.items)
                await asyncio.sleep(PROGRESS_EVERY_S)

        reporter = asyncio.create_task(progress())
        try:
            if plan.open_loop:
                await _open_loop(plan, caller, rec)
            else:
                await _closed_loop(plan, caller, rec)
        finally:
            reporter.cancel()
        if report is not None:
            report(plan.index, rec.done, rec.done - rec.total.ok, rec.total.items)
        return WorkerResult(
            index=plan.index,
            total=rec.total,
            windows=rec.windows,
            elapsed_s=max(rec.last_done - rec.start, 1e-9),
            first_error=rec.first_error,
            error_examples=rec.error_examples,
            max_send_lag_s=rec.max_send_lag_s,
            prepared_tokens=prepared,
            skipped_tokens=caller.skipped_tokens,
            ran_out_of_tokens=caller.ran_out,
        )
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def _child(plan: LoadPlan, barrier: Any, messages: Any) -> None:
    """A spawned generator process: its share of the load, results back through `messages`."""

    def report(index: int, done: int, errors: int, items: int) -> None:
        messages.put(("progress", index, done, errors, items))

    try:
        result = asyncio.run(run_process(plan, lambda: barrier.wait(timeout=600), report))
        messages.put(("result", plan.index, result))
    except LoadError as e:
        # Said to the parent in words; a crash instead shows as the process's exit status.
        messages.put(("error", plan.index, str(e)))
        barrier.abort()


def _run_processes(plan: LoadPlan, report: Report | None) -> list[WorkerResult]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(plan.procs)
    messages = ctx.Queue()
    children = [
        ctx.Process(target=_child, args=(plan.share(i), barrier, messages), daemon=True)
        for i in range(plan.procs)
    ]
    results: dict[int, WorkerResult] = {}
    try:
        for c in children:
            c.start()
        # Bounded: start-up and warm-up (tokens too), the run, the last calls' deadlines.
        deadline = time.monotonic() + 600 + plan.planned_s + plan.timeout_s + 30
        while len(results) < plan.procs:
            try:
                kind, index, *rest = messages.get(timeout=0.5)
            except queue_module.Empty:
                dead = [c for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise LoadError(f"a generator process exited with status {dead[0].exitcode}")
                if time.monotonic() > deadline:
                    raise LoadError("the generator processes did not finish in time") from None
                continue
            if kind == "progress" and report is not None:
                report(index, *rest)
            elif kind == "result":
                results[index] = rest[0]
            elif kind == "error":
                raise LoadError(rest[0])
        for c in children:
            c.join(timeout=30)
    finally:
        for c in children:
            if c.is_alive():
                c.terminate()
                c.join(timeout=5)
    return [results[i] for i in sorted(results)]


# --- the summary -----------------------------------------------------------------------------


@dataclass
class Summary:
    """The JSON summary (`to_json`); latencies in milliseconds."""

    target: str
    address: str
    call: str
    rpc: str
    mode: str  # "open loop (fixed rate)" or "closed loop (flat out)"
    profile: str
    rate_per_s: float | None
    concurrency: int | None
    channels: int
    procs: int
    planned_s: float
    elapsed_s: float
    calls: int  # answered plus failed
    ok: int
    items: int  # Show/Scan: calls; EvaluateStream: persons
    errors: dict[str, int]
    error_count: int
    shed: int
    failed: int
    throughput_per_s: float  # answered calls a second
    items_per_s: float
    latency_ms: dict[str, float]
    latency_from: str  # "scheduled send" or "actual send"
    max_send_lag_ms: float
    first_error: str
    error_examples: dict[str, str]  # by status: the first message a call got with it
    windows: list[dict[str, Any]]
    phases: list[dict[str, Any]]
    started_at: str
    people: int
    batch: int | None = None  # EvaluateStream: persons a message (1: the per-person form)
    messages: int | None = None  # EvaluateStream: messages a stream
    prepared_tokens: int = 0
    skipped_tokens: int = 0
    ran_out_of_tokens: bool = False
    midnight: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _window_row(second: int, width_s: float, w: Window, offered: float | None) -> dict[str, Any]:
    """One second of the run; the last may be shorter (`width_s`), rates are per its width."""
    return {
        "second": second,
        "width_s": round(width_s, 3),
        "ok": w.ok,
        "items": w.items,
        "ok_per_s": round(w.ok / width_s, 3),
        "items_per_s": round(w.items / width_s, 3),
        "errors": sum(w.errors.values()),
        "errors_by_status": dict(sorted(w.errors.items())),
        "offered_per_s": None if offered is None else round(offered, 3),
        **{f"{k}_ms": v for k, v in w.latency.summary_ms().items()},
    }


def _phase_row(name: str, start: float, end: float, windows: dict[int, Window]) -> dict[str, Any]:
    merged = Window()
    for second, w in windows.items():
        if start <= second < end:
            merged.merge(w)
    span = max(end - start, 1e-9)
    return {
        "phase": name,
        "start_s": start,
        "end_s": end,
        "ok": merged.ok,
        "errors": sum(merged.errors.values()),
        "errors_by_status": dict(sorted(merged.errors.items())),
        "throughput_per_s": round(merged.ok / span, 3),
        **{f"{k}_ms": v for k, v in merged.latency.summary_ms().items()},
    }


def summarize(plan: LoadPlan, results: Sequence[WorkerResult], started_at: str) -> Summary:
    total = Window()
    windows: dict[int, Window] = {}
    for r in results:
        total.merge(r.total)
        for second, w in r.windows.items():
            windows.setdefault(second, Window()).merge(w)
    elapsed = max(r.elapsed_s for r in results)
    last = max(windows) if windows else -1
    rows = []
    for second in range(last + 1):
        width = min(1.0, max(elapsed - second, 1e-3))
        offered = None
        if plan.open_loop:
            # The schedule's mean rate over the window (nothing is sent after it ends).
            ticks = [second + (k + 0.5) / 10 for k in range(10)]
            offered = sum(plan.rate_at(t) for t in ticks if t < plan.planned_s) / 10
        rows.append(_window_row(second, width, windows.get(second, Window()), offered))
    if plan.profile == Profile.midnight:
        parts = plan.midnight.phases()
        # The tail of calls answered after the schedule ended counts with "after".
        parts[-1] = (parts[-1][0], parts[-1][1], max(elapsed, parts[-1][2]))
    else:
        parts = [("run", 0.0, elapsed)]
    error_count = sum(total.errors.values())
    shed = total.errors.get("RESOURCE_EXHAUSTED", 0)
    return Summary(
        target=str(plan.target),
        address=plan.address,
        call=str(plan.call),
        rpc=RPC_NAME[plan.call],
        mode="open loop (fixed rate)" if plan.open_loop else "closed loop (flat out)",
        profile=str(plan.profile),
        rate_per_s=plan.rate,
        concurrency=None if plan.open_loop else plan.concurrency,
        channels=plan.channels,
        procs=plan.procs,
        planned_s=plan.planned_s,
        elapsed_s=round(elapsed, 3),
        calls=total.ok + error_count,
        ok=total.ok,
        items=total.items,
        errors=dict(sorted(total.errors.items())),
        error_count=error_count,
        shed=shed,
        failed=error_count - shed,
        throughput_per_s=round(total.ok / elapsed, 3),
        items_per_s=round(total.items / elapsed, 3),
        latency_ms=total.latency.summary_ms(),
        latency_from="scheduled send" if plan.open_loop else "actual send",
        max_send_lag_ms=round(max(r.max_send_lag_s for r in results) * 1000, 3),
        first_error=next((r.first_error for r in results if r.first_error), ""),
        error_examples={
            code: example
            for r in reversed(results)  # the first process's example wins
            for code, example in r.error_examples.items()
        },
        windows=rows,
        phases=[_phase_row(n, s, e, windows) for n, s, e in parts],
        started_at=started_at,
        people=len(plan.people),
        batch=plan.batch if plan.call == Call.evaluate_stream else None,
        messages=plan.messages if plan.call == Call.evaluate_stream else None,
        prepared_tokens=sum(r.prepared_tokens for r in results),
        skipped_tokens=sum(r.skipped_tokens for r in results),
        ran_out_of_tokens=any(r.ran_out_of_tokens for r in results),
        midnight=asdict(plan.midnight) if plan.profile == Profile.midnight else None,
    )


def run_load(plan: LoadPlan, report: Report | None = None) -> Summary:
    """Run the plan (in this process, or in `plan.procs` spawned ones) and summarize it.
    `report(process, calls done, errors, items)` is called a few times a second."""
    plan.check()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if plan.procs == 1:
        results = [asyncio.run(run_process(plan, None, report))]
    else:
        results = _run_processes(plan, report)
    return summarize(plan, results, started_at)


def expected_calls(plan: LoadPlan) -> int | None:
    """How many calls an open-loop plan sends (for a progress bar); None when unknown."""
    if plan.open_loop:
        return sum(sum(1 for _ in process_schedule(plan.share(i))) for i in range(plan.procs))
    return plan.calls


def default_address(target: Target, display: str, colour: str) -> str:
    if target == Target.display:
        return display
    if target == Target.colour:
        return colour
    return os.environ.get("HEALTHCODE_ECHO_ADDR", DEFAULT_ECHO_ADDR)

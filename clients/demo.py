"""`make run` / `python -m clients.demo`: the whole platform on loopback with a demo population.

Starts the four services as separate processes, waits until each is healthy, registers a
synthetic population (some by family proxies and grid workers), makes everyone's daily
declaration (mostly healthy; a few report a fever, symptoms, a case contact or travel, which is
what feeds the declared_* sources), grades a few counties, ingests synthetic feeds for every
other risk source, prints the addresses and commands to try, and stops everything cleanly on
Ctrl-C or SIGTERM.

    python -m clients.demo                  # default ports 50051-50054, a fresh temp data dir
    python -m clients.demo --data-dir data  # keep the data between runs
    python -m clients.demo --once           # start, load, smoke-test through the CLI, stop

Every ID and phone number printed here is synthetic (valid check digits, nobody's).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)
from rich.console import Console
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.channel import Peers, describe_error, open_channel
from clients.stack import (
    DEFAULT_PORTS,
    REPO,
    SERVICES,
    Stack,
    StackError,
    free_port,
    metrics_env,
    port_in_use,
)
from services._common.config import Ports
from services._common.days import hour_of_date
from services.rules import DEFAULT_RULE_SET_PATH

console = Console()
GATEWAY_PORT = Ports().gateway
SHANGHAI = dt.timezone(dt.timedelta(hours=8))

_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰"
_FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="demo-feeds")
_ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="demo-admin")
# Declarations feed these (through the declaration service's outbox); the demo declares for its
# people rather than inventing rows for them.
_DECLARED = ("declared_fever", "declared_symptoms", "declared_case_contact", "declared_travel")
_SYMPTOMS = (
    declaration_pb2.SYMPTOM_COUGH,
    declaration_pb2.SYMPTOM_FATIGUE,
    declaration_pb2.SYMPTOM_SORE_THROAT,
)
_TRIP_PLACES = ("出差", "探亲", "旅游", "开会")
_REPORTED = {
    "declared_fever": "a fever",
    "declared_symptoms": "symptoms",
    "declared_case_contact": "a case contact",
    "declared_travel": "travel",
}


def demo_name(i: int) -> str:
    rng = random.Random(i)
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))


@dataclass
class DemoPeople:
    """What the demo loaded, to suggest commands with real (synthetic) people."""

    population: list[feedgen.Person]
    green: str | None = None
    red: str | None = None
    yellow: str | None = None
    phone_red: str | None = None


def load_demo(peers: Peers, persons: int, seed: int, say: Callable[[str], None]) -> DemoPeople:
    """Register the population, grade counties, ingest feeds, and make a few displays."""
    now = dt.datetime.now(SHANGHAI)
    today = now.date()
    # Negative tests are timed up to this hour: the risk index refuses a time in the future.
    now_hour = hour_of_date(today, now.hour)
    population = feedgen.make_population(persons, seed)
    with open_channel(peers.declaration) as channel:
        stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        for i, person in enumerate(population):
            stub.Register(_registration(i, person, population))
    say(
        f"registered {len(population)} people (every 10th by a family proxy, every 25th by a "
        "grid worker)"
    )
    say(declare_for_everyone(peers, population, today, seed))
    with open_channel(peers.risk_index) as channel:
        stub_ri = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        graded = 0
        for county, level in feedgen.COUNTY_LEVELS.items():
            if level:
                request = risk_index_pb2.SetCountyLevelRequest(actor=_ADMIN, county=county)
                # feedgen's levels are the proto's (1 low, 2 medium, 3 high).
                request.level = common_pb2.CountyRiskLevel.ValueType(level)
                stub_ri.SetCountyLevel(request)
                graded += 1
        sources = [s for s in feedgen.SOURCES if s not in _DECLARED]
        by_source: dict[str, list[risk_index_pb2.FeedRow]] = {}
        rows = feedgen.generate_feed(
            population, today, seed, rate=0.03, sources=sources, now_hour=now_hour
        )
        for row in rows:
            by_source.setdefault(row["source"], []).append(cli.feed_row(row))
        total = 0
        for source, feed_rows in by_source.items():
            # A rerun on the same data dir replays the day's batches; timed rows depend on the
            # hour they were drawn up to, so theirs is a batch of that hour.
            batch_id = f"demo:{seed}:{today}:{source}"
            if feedgen.SOURCES[source].hourly:
                batch_id += f":{now.hour:02d}"
            stub_ri.IngestBatch(
                risk_index_pb2.IngestBatchRequest(
                    actor=_FEED, source=source, batch_id=batch_id, rows=feed_rows
                )
            )
            total += len(feed_rows)
        version = stub_ri.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).accepted_version
    say(
        f"graded {graded} counties; ingested {total} rows into {len(by_source)} sources "
        f"(index version {version})"
    )
    return _pick_examples(peers, population, version)


def _acting_for(
    i: int, person: feedgen.Person, population: Sequence[feedgen.Person]
) -> common_pb2.Actor:
    """Who registers person i and makes their daily declaration."""
    if i % 10 == 9:
        # 家人代办: the person before them in the list applies for them.
        return common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_FAMILY_PROXY,
            person=common_pb2.PersonRef(id_number=population[i - 1].id_number),
        )
    if i % 25 == 24:
        return common_pb2.Actor(role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-007")
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN,
        person=common_pb2.PersonRef(id_number=person.id_number),
    )


def _registration(
    i: int, person: feedgen.Person, population: Sequence[feedgen.Person]
) -> declaration_pb2.RegisterRequest:
    return declaration_pb2.RegisterRequest(
        actor=_acting_for(i, person, population),
        name=demo_name(i),
        id_number=person.id_number,
        phones=list(person.phones),
    )


def declarations(
    population: Sequence[feedgen.Person], today: dt.date, seed: int
) -> list[declaration_pb2.DeclareRequest]:
    """Today's declaration for everyone, each by whoever registered them. Most are healthy; a
    few (at least one each) report a fever, symptoms, a case contact, a trip to a medium- or
    high-risk county, or a trip to an ungraded or low-risk one, so that every declared_* source
    is fed today and its rules fire for someone."""
    rng = random.Random(seed * 7919 + 8)
    n = len(population)
    order = rng.sample(range(n), n)
    kinds = ["fever"] * max(1, n // 100) + ["symptoms"] * max(1, n // 50)
    kinds += ["contact"] * max(1, n // 100) + ["risky_trip"] * max(1, n // 100)
    kinds += ["trip"] * max(1, n // 25)
    kind_of = dict(zip(order, kinds, strict=False))  # everyone else: healthy
    risky = feedgen.counties_at_level(2) + feedgen.counties_at_level(3)
    harmless = feedgen.counties_at_level(0) + feedgen.counties_at_level(1)
    out = []
    for i, person in enumerate(population):
        request = declaration_pb2.DeclareRequest(
            actor=_acting_for(i, person, population),
            person=common_pb2.PersonRef(id_number=person.id_number),
        )
        kind = kind_of.get(i, "healthy")
        if kind == "fever":
            request.temperature_celsius = rng.choice((37.4, 37.6, 37.9, 38.3))
        elif rng.random() < 0.8:  # the rest measured a normal temperature, or did not measure
            request.temperature_celsius = rng.choice((36.1, 36.3, 36.5, 36.6, 36.8, 37.0))
        if kind == "symptoms":
            request.symptoms.extend(rng.sample(_SYMPTOMS, rng.choice((1, 2))))
        elif kind == "contact":
            request.case_contact = True
            request.case_contact_day = (today - dt.timedelta(days=rng.randint(0, 5))).isoformat()
        elif kind in ("risky_trip", "trip"):
            request.visits.add(
                county=rng.choice(risky if kind == "risky_trip" else harmless),
                day=(today - dt.timedelta(days=rng.randint(1, 10))).isoformat(),
                place=rng.choice(_TRIP_PLACES),
            )
        out.append(request)
    return out


def declare_for_everyone(
    peers: Peers, population: Sequence[feedgen.Person], today: dt.date, seed: int
) -> str:
    """Make today's declarations, wait until the risk index has every batch they derived, and
    say how many declared and what they reported."""
    with open_channel(peers.risk_index) as channel:
        before = _declared_batches(risk_index_pb2_grpc.RiskIndexServiceStub(channel))
    expected = dict.fromkeys(_DECLARED, 0)
    reported = already = 0
    with open_channel(peers.declaration) as channel:
        stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        for request in declarations(population, today, seed):
            try:
                derived = stub.Declare(request).declaration.derived_sources
            except grpc.RpcError as e:
                # A rerun on the same data dir the same day: one declaration a day.
                if not (
                    isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.FAILED_PRECONDITION
                ):
                    raise
                already += 1
                continue
            reported += bool(derived)
            for source in derived:
                expected[source] += 1
    _wait_declared_batches(peers, {s: before[s] + n for s, n in expected.items()})
    declared = len(population) - already
    if not declared:
        return f"all {already} people had already declared today (a rerun on this data dir)"
    text = (
        f"declared today for {declared} people (by themselves, a family proxy or a grid "
        f"worker): {declared - reported} reported nothing, {reported} something ("
        + ", ".join(f"{n} {_REPORTED[s]}" for s, n in expected.items())
        + ")"
    )
    if already:
        text += f"; {already} had already declared today"
    return text


def _declared_batches(stub: risk_index_pb2_grpc.RiskIndexServiceStub) -> dict[str, int]:
    sources = stub.ListSources(risk_index_pb2.ListSourcesRequest()).sources
    counts = {s.name: s.batch_count for s in sources}
    return {s: counts.get(s, 0) for s in _DECLARED}


def _wait_declared_batches(peers: Peers, want: dict[str, int], timeout_s: float = 60.0) -> None:
    """The declaration service hands its derived rows to the risk index through an outbox, in
    the background: wait until every batch has arrived there."""
    deadline = time.monotonic() + timeout_s
    with open_channel(peers.risk_index) as channel:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        while True:
            have = _declared_batches(stub)
            missing = {s: n - have[s] for s, n in want.items() if have[s] < n}
            if not missing:
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"the risk index has not received every declaration batch in {timeout_s:.0f} "
                    f"s; missing: {missing}"
                )
            time.sleep(0.05)


def _pick_examples(peers: Peers, population: list[feedgen.Person], version: int) -> DemoPeople:
    out = DemoPeople(population)
    _wait_colour(peers, version)
    with open_channel(peers.colour) as channel:
        stub = colour_pb2_grpc.ColourServiceStub(channel)
        actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="demo")
        for person in population:
            v = stub.Evaluate(
                colour_pb2.EvaluateRequest(
                    actor=actor, person=common_pb2.PersonRef(id_number=person.id_number)
                )
            ).verdict
            if v.colour == common_pb2.COLOUR_GREEN and out.green is None:
                out.green = person.id_number
            elif v.colour == common_pb2.COLOUR_YELLOW and out.yellow is None:
                out.yellow = person.id_number
            elif v.colour == common_pb2.COLOUR_RED:
                via_phone = any(r.masked_phone and not r.cleared for r in v.reasons)
                if via_phone and out.phone_red is None:
                    out.phone_red = person.id_number
                elif out.red is None:
                    out.red = person.id_number
    return out


def _wait_colour(peers: Peers, version: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with open_channel(peers.colour) as channel:
        stub = colour_pb2_grpc.ColourServiceStub(channel)
        while stub.GetStatus(colour_pb2.GetStatusRequest()).index_version < version:
            if time.monotonic() > deadline:
                raise StackError(f"colour did not reach index version {version}")
            time.sleep(0.05)


def warm_counters(peers: Peers, people: DemoPeople, shows: int = 20) -> None:
    """A few displays and scans, so `healthcode counters` has something to show."""
    with open_channel(peers.display) as channel:
        stub = display_pb2_grpc.DisplayServiceStub(channel)
        verifier = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-1")
        for person in people.population[:shows]:
            ref = common_pb2.PersonRef(id_number=person.id_number)
            shown = stub.Show(
                display_pb2.ShowRequest(
                    actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ref),
                    person=ref,
                    device=display_pb2.Device(device_id="demo-phone", place="天津站"),
                )
            )
            stub.Scan(
                display_pb2.ScanRequest(
                    actor=verifier,
                    token=shown.token,
                    device=display_pb2.Device(device_id="demo-gate-1", place="天津站 gate 1"),
                )
            )


def _cli_setup(stack: Stack) -> tuple[str, list[str]]:
    """The command to call the CLI, and the shell lines that make it find this stack."""
    setup: list[str] = []
    # `make setup` installs the `healthcode` console script (and `buf`) into the venv that runs
    # this demo; a shell that has not activated it does not find them.
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "healthcode").exists():
        venv_bin = REPO / ".venv" / "bin"
    script = venv_bin / "healthcode"
    found = shutil.which("healthcode")
    if found is None or Path(found).resolve() != script.resolve():
        if not script.exists():
            setup.append(f"make -C {shlex.quote(str(REPO))} setup     # installs healthcode")
        setup.append(f"source {shlex.quote(str(venv_bin / 'activate'))}")
    if stack.ports != DEFAULT_PORTS:
        for name, addr in stack.peers.items():
            setup.append(f"export HEALTHCODE_{name.upper()}_ADDR={addr}")
    # The CLI's certificate and the operator's token issuer (clients/credentials.py).
    setup.append(f"export HEALTHCODE_DATA_DIR={shlex.quote(str(stack.data_dir))}")
    return "healthcode", setup


def _sign_in_line(hc: str, signer: feedgen.Person) -> str:
    # A development stack has no SMS gateway: the code comes back in the reply.
    return f"{hc} sign-in {signer.id_number} --phone {signer.phones[0]}     # a token of one's own"


def print_welcome(stack: Stack, people: DemoPeople, sample_feed: Path) -> None:
    hc, setup = _cli_setup(stack)
    console.rule("[bold]health-code platform: running")
    for name in SERVICES:
        console.print(f"  {name:<12} 127.0.0.1:{stack.ports[name]:<6} log {stack.log_path(name)}")
    console.print(f"  data dir     {stack.data_dir}")
    if stack.gateway_port is not None:
        url = stack.gateway_url
        shown = {"gateway": f"{url}  log {stack.log_path('gateway')}"}
        shown |= {"person page": f"{url}/person", "verifier": f"{url}/verifier"}
        for what, where in shown.items():
            console.print(f"  {what:<12} {where}", highlight=False, soft_wrap=True)
    console.print("Prometheus metrics (docs/observability.md):")
    for name in SERVICES:
        console.print(f"  {name:<12} {stack.metrics_url(name)}", highlight=False)
    if setup:
        console.print("\nIn another shell, first:")
        for line in setup:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    console.print("\nTry (all numbers are synthetic):")
    lines = [f"{hc} status"]
    if people.green:
        lines.append(f"{hc} show {people.green}")
    if people.red:
        lines.append(f"{hc} explain {people.red}")
    if people.phone_red:
        lines.append(f"{hc} explain {people.phone_red}     # red through a linked phone (R7)")
    who = people.green or people.population[0].id_number
    signer = next((p for p in people.population if p.phones), None)
    creds = shlex.quote(str(stack.credentials_dir))
    draft = write_sample_draft(sample_feed.with_name("draft_rules.toml"))
    lines += [
        f'TOKEN=$({hc} show {who} --token-only) && {hc} scan "$TOKEN"',
        f'{hc} scan "$TOKEN"     # again: refused, already scanned',
        f"{hc} ingest {sample_feed}     # makes {_mask(who)} a close contact",
        f"{hc} explain {who}",
        f"{hc} what-if {draft}     # secondary contacts red: who would change, per district",
        f"{hc} counters --follow",
        *([_sign_in_line(hc, signer)] if signer is not None else []),
        f"{hc} --help",
        (
            f"buf curl --protocol grpc --cacert {creds}/ca.pem --cert {creds}/cli.pem "
            f"--key {creds}/cli.key --list-methods https://127.0.0.1:{stack.ports['display']}"
        ),
    ]
    for line in lines:
        # soft_wrap: a command must stay one line to be copied from the terminal.
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    console.print("\nCtrl-C stops everything.")


def _mask(id_number: str) -> str:
    return id_number[:2] + "*" * 14 + id_number[-2:]


def write_sample_draft(path: Path) -> Path:
    """The default rule set with secondary contacts turned red: a draft to try with what-if."""
    text = DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8")
    text = text.replace('version = "2020.12.16-tianjin"', 'version = "demo-secondary-red"', 1)
    text = text.replace(
        'id = "secondary-contact"\ncolour = "yellow"', 'id = "secondary-contact"\ncolour = "red"', 1
    )
    path.write_text(text, encoding="utf-8")
    return path


def write_sample_feed(path: Path, id_number: str) -> Path:
    today = dt.datetime.now(SHANGHAI).date()
    row = {"source": "close_contact", "id_number": id_number, "day": today.isoformat()}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


# --- the smoke check (--once) ------------------------------------------------------------------


def smoke_check(stack: Stack, people: DemoPeople) -> list[tuple[str, bool, str]]:
    """Drive the CLI (in process) through a person's day; every step must succeed."""
    p = stack.peers
    base = [
        "--declaration",
        p.declaration,
        "--risk-index",
        p.risk_index,
        "--colour",
        p.colour,
        "--display",
        p.display,
    ]
    runner = CliRunner()
    results: list[tuple[str, bool, str]] = []

    def run(title: str, args: list[str], *, expect_exit: int = 0, expect: str = "") -> str:
        r = runner.invoke(cli.app, base + args)
        text = r.output  # stdout and stderr, interleaved
        # Rich wraps long lines at the terminal's width: look for `expect` across the wraps.
        ok = r.exit_code == expect_exit and (expect in " ".join(text.split()))
        results.append((title, ok, text.strip().splitlines()[-1] if text.strip() else ""))
        return r.stdout

    newcomer = feedgen.synthetic_id_numbers(len(people.population) + 1, 4242)[-1]
    run("status: all four SERVING", ["status"])
    run(
        "register a newcomer",
        ["register", "测试", newcomer, "--phone", "13900001111"],
        expect="registered",
    )
    run("declare today", ["declare", newcomer, "--temperature", "36.5"], expect="accepted")
    run("show: green", ["show", newcomer], expect="GREEN")
    token = run("show --token-only", ["show", newcomer, "--token-only"]).strip()
    run("scan the token: live colour", ["scan", token], expect="GREEN")
    run("scan it again: refused", ["scan", token], expect_exit=1, expect="ALREADY_EXISTS")
    run(
        "scan a forged token",
        ["scan", token[:-4] + "AAAA"],
        expect_exit=1,
        expect="UNAUTHENTICATED",
    )
    feed = write_sample_feed(stack.data_dir / "smoke_close_contact.jsonl", newcomer)
    run("ingest a close-contact row", ["ingest", str(feed)], expect="1 rows accepted")
    _wait_red(stack, newcomer)
    run("explain: red, with the reason", ["explain", newcomer], expect="close_contact")
    run("counters", ["counters"], expect="displays")
    draft = write_sample_draft(stack.data_dir / "smoke_draft_rules.toml")
    run("what-if: a draft over everyone", ["what-if", str(draft)], expect="Nothing was activated")
    if people.red:
        run("explain a demo red person", ["explain", people.red], expect="RED")
    return results


def _wait_red(stack: Stack, id_number: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    with open_channel(stack.peers.colour) as channel:
        stub = colour_pb2_grpc.ColourServiceStub(channel)
        actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="demo")
        request = colour_pb2.EvaluateRequest(
            actor=actor, person=common_pb2.PersonRef(id_number=id_number)
        )
        while stub.Evaluate(request).verdict.colour != common_pb2.COLOUR_RED:
            if time.monotonic() > deadline:
                return  # the explain step then fails with what it sees
            time.sleep(0.05)


# --- main --------------------------------------------------------------------------------------


def _ports(free_ports: bool) -> dict[str, int]:
    if not free_ports:
        busy = [f"{n} ({p})" for n, p in DEFAULT_PORTS.items() if port_in_use(p)]
        if not busy:
            return dict(DEFAULT_PORTS)
        console.print(f"[yellow]default ports busy: {', '.join(busy)}; using free ports[/]")
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(SERVICES):
        ports = {name: free_port() for name in SERVICES}
    return ports


# Where `make run` serves each service's metrics, when free (9464: OpenTelemetry's Prometheus
# port; display last, so that its workers, on the port + i, find free ports above it).
DEMO_METRICS_PORTS = {"declaration": 9461, "risk_index": 9462, "colour": 9463, "display": 9464}


def _metrics_ports(free_ports: bool) -> dict[str, int]:
    if not free_ports and not any(port_in_use(p) for p in DEMO_METRICS_PORTS.values()):
        return dict(DEMO_METRICS_PORTS)
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(SERVICES):
        ports = {name: free_port() for name in SERVICES}
    return ports


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep data here (default: a fresh temporary directory).", show_default=False
        ),
    ] = None,
    persons: Annotated[int, typer.Option(min=10, max=100_000, help="Demo population.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic population and feeds.")] = 7,
    once: Annotated[
        bool, typer.Option("--once", help="Start, load, smoke-test through the CLI, stop.")
    ] = False,
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Pick free ports instead of 50051-50054.")
    ] = False,
) -> None:
    """Run the four services with a demo population until Ctrl-C."""
    temp = None
    if data_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="healthcode-demo-")
        data_dir = Path(temp.name)
    stack = Stack(data_dir.resolve(), _ports(free_ports), metrics_env(_metrics_ports(free_ports)))
    # The browser gateway: 50080 when free (pages at /person and /verifier).
    stack.gateway_port = (
        GATEWAY_PORT if not free_ports and not port_in_use(GATEWAY_PORT) else free_port()
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        console.print(f"starting {', '.join(SERVICES)} ...")
        stack.start()
        # Colour gets its first index version once something changed (the load below).
        stack.wait_healthy(timeout_s=90)
        console.print("all four SERVING")
        people = load_demo(stack.peers, persons, seed, console.print)
        warm_counters(stack.peers, people)
        sample = write_sample_feed(
            stack.data_dir / "sample_close_contact.jsonl",
            people.green or people.population[0].id_number,
        )
        if once:
            results = smoke_check(stack, people)
            for title, ok, last in results:
                mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
                console.print(f"  {mark} {title}  [dim]{last[:90]}[/]")
            failed = [t for t, ok, _ in results if not ok]
            status = 1 if failed else 0
            console.print(f"smoke check: {len(results) - len(failed)}/{len(results)} steps passed")
            return
        print_welcome(stack, people, sample)
        while not stopping.wait(0.5):
            stack.check_alive()
    except StackError as e:
        console.print(f"[red]{e}[/]", highlight=False)
        status = 1
    except grpc.RpcError as e:
        console.print("[red]loading the demo failed:[/]")
        console.print(describe_error(e), markup=False)
        status = 1
    finally:
        console.print("stopping ...")
        codes = stack.stop()
        console.print("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
        if temp is not None:
            temp.cleanup()
    raise typer.Exit(status)


def main() -> None:
    typer.run(demo)


if __name__ == "__main__":
    main()

"""Metrics (issue 12, item 3): the four real processes with their Prometheus endpoints on, two
display workers (each on its own endpoint: the configured port + its index).

After a registration, a feed batch and a Show, every endpoint is scraped over plain HTTP and
checked: per-method call counts with their status, the index version each replica holds equal
to the risk index's, the lag gauges, feed staleness, the outbox depth, the shed counter, the
display log's group commits; and the whole text holds no ID number or phone number: neither one
of those used (in the privacy scan's encodings) nor anything shaped like one.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from healthcode.v1 import declaration_pb2, risk_index_pb2
from prometheus_client.parser import text_string_to_metric_families

from clients import feedgen
from clients.stack import Stack, free_port, metrics_env, port_in_use
from tests.e2e.rules_support import Stubs, citizen, stubs
from tests.e2e.test_e2e_privacy import _needles
from tests.e2e.waits import SHANGHAI, eventually
from tests.support import running_stack

PEOPLE = feedgen.make_population(3, 1212, no_phone_rate=0.0)
# The right shape, a wrong check digit: refused at the edge (INVALID_ARGUMENT).
_FIRST = PEOPLE[0].id_number
MISTYPED = _FIRST[:17] + ("0" if _FIRST[17] != "0" else "1")
DISPLAY_WORKERS = 2
# Anything shaped like an ID number (17 digits and a digit or X) or a mainland mobile number,
# not inside a longer number nor a float (1.3e10 bytes of memory prints as 13000000000.0).
ID_LIKE = re.compile(r"(?<![\d.])\d{17}[\dXx](?![\d.])")
PHONE_LIKE = re.compile(r"(?<![\d.])1[3-9]\d{9}(?![\d.])")
# Every label a scrape may carry: ours (bounded: names, statuses, sources, colours) and the
# standard process and Python collectors'.
LABELS = {"service", "method", "code", "source", "kind", "colour", "worker", "le"}
STANDARD_LABELS = {"implementation", "major", "minor", "patchlevel", "version", "generation"}
OK = "OK"


@dataclass
class Scrape:
    text: str
    samples: list[tuple[str, dict[str, str], float]]

    def values(self, name: str, **labels: str) -> list[float]:
        return [
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.values(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def calls(self, service: str, method: str, code: str = OK) -> float:
        return sum(
            self.values(
                "healthcode_rpc_server_duration_seconds_count",
                service=f"healthcode.v1.{service}",
                method=method,
                code=code,
            )
        )


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode("utf-8")
    samples = [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    return Scrape(text, samples)


def _free_run(length: int) -> int:
    """The first of `length` consecutive free loopback ports."""
    while True:
        first = free_port()
        if first + length <= 65535 and not any(port_in_use(first + i) for i in range(length)):
            return first


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("metrics") / "data"
    ports = {name: free_port() for name in ("declaration", "risk_index", "colour")}
    ports["display"] = _free_run(DISPLAY_WORKERS)
    env = {"HEALTHCODE_DISPLAY_PROCESSES": str(DISPLAY_WORKERS), **metrics_env(ports)}
    yield from running_stack(data_dir, env)


def _urls(stack: Stack) -> dict[str, str]:
    urls = {name: stack.metrics_url(name) for name in ("declaration", "risk_index", "colour")}
    for worker in range(DISPLAY_WORKERS):
        urls[f"display.{worker}"] = stack.metrics_url("display", worker)
    assert all(urls.values())
    return {name: url for name, url in urls.items() if url}


@pytest.fixture(scope="module")
def exercised(metrics_stack: Stack) -> Iterator[Stubs]:
    """A registration, a feed batch naming one person, a Show by each person."""
    with stubs(metrics_stack) as s:
        s.register(PEOPLE)
        s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
        day = dt.datetime.now(SHANGHAI).date()
        s.ingest([feedgen.row("close_contact", id_number=PEOPLE[0].id_number, day=day)], "m")
        version = s.wait_colour()
        for person in PEOPLE:
            s.show(person.id_number, min_index_version=version)
        with pytest.raises(grpc.RpcError) as refused:
            s.declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=citizen(MISTYPED), name="错号", id_number=MISTYPED
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        yield s


def test_every_endpoint_counts_calls_by_method_and_status(
    metrics_stack: Stack, exercised: Stubs
) -> None:
    urls = _urls(metrics_stack)
    declaration = scrape(urls["declaration"])
    assert declaration.calls("DeclarationService", "Register") >= len(PEOPLE)
    assert declaration.value("healthcode_service_info", service="declaration", worker="") == 1
    risk_index = scrape(urls["risk_index"])
    assert risk_index.calls("RiskIndexService", "IngestBatch") >= 1
    # The outbox registers people in the risk index (one call per run of registrations).
    assert (
        sum(
            risk_index.calls("RiskIndexService", m)
            for m in ("RegisterPeople", "RegisterPerson", "LinkPhone")
        )
        >= 1
    )
    # Every replica (the colour service, each display worker) holds a WatchIndex open.
    assert (
        risk_index.value(
            "healthcode_rpc_server_streams_open",
            service="healthcode.v1.RiskIndexService",
            method="WatchIndex",
        )
        >= 1 + DISPLAY_WORKERS
    )
    displays = [scrape(urls[f"display.{w}"]) for w in range(DISPLAY_WORKERS)]
    assert sum(d.calls("DisplayService", "Show") for d in displays) == len(PEOPLE)
    for worker, d in enumerate(displays):
        assert d.value("healthcode_service_info", service="display", worker=str(worker)) == 1
    # A refused call is counted with its status.
    assert declaration.calls("DeclarationService", "Register", "INVALID_ARGUMENT") == 1
    latency = risk_index.values(
        "healthcode_rpc_server_duration_seconds_bucket",
        service="healthcode.v1.RiskIndexService",
        method="IngestBatch",
        code=OK,
    )
    assert latency and max(latency) >= 1  # the +Inf bucket holds every call


def test_index_version_gauges_match_the_risk_index(metrics_stack: Stack, exercised: Stubs) -> None:
    urls = _urls(metrics_stack)
    latest = exercised.risk_index.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
    assert scrape(urls["risk_index"]).value("healthcode_index_version") == latest.version
    for name in ("colour", *(f"display.{w}" for w in range(DISPLAY_WORKERS))):
        url = urls[name]
        held = eventually(
            f"{name} to report index version {latest.version}",
            lambda url=url: scrape(url),  # type: ignore[misc]
            lambda got: got.value("healthcode_index_version") == latest.version,
        )
        # The lag probe asks the risk index every 5 s: it has seen the latest version, and
        # the replica holds it.
        lagged = eventually(
            f"{name}'s lag probe to see version {latest.version}",
            lambda url=url: scrape(url),  # type: ignore[misc]
            lambda got: got.values("healthcode_index_latest_seen_version") == [latest.version],
        )
        assert lagged.value("healthcode_index_lag_versions") == 0
        assert lagged.value("healthcode_index_lag_seconds") == 0
        # The feed just sent is fresh; staleness is reported for every source.
        assert held.value("healthcode_feed_stale", source="close_contact") == 0
        assert held.values("healthcode_feed_age_seconds", source="close_contact")
        assert len(held.values("healthcode_feed_stale")) >= 10


def test_outbox_shedding_and_display_log_gauges(metrics_stack: Stack, exercised: Stubs) -> None:
    urls = _urls(metrics_stack)
    declaration = scrape(urls["declaration"])
    # Delivered: the risk index holds everyone, so nothing waits.
    assert declaration.value("healthcode_outbox_depth") == 0
    for name, url in urls.items():
        got = scrape(url)
        assert got.value("healthcode_shed_calls_total") == 0, name
        assert got.value("healthcode_calls_in_flight_limit") > 0, name
    displays = [scrape(urls[f"display.{w}"]) for w in range(DISPLAY_WORKERS)]
    commits = sum(d.value("healthcode_display_log_commit_size_count") for d in displays)
    logged = sum(d.value("healthcode_display_log_commit_size_sum") for d in displays)
    assert commits >= 1
    assert logged == len(PEOPLE)  # every Show made durable by some group commit
    assert sum(d.value("healthcode_display_shows_total") for d in displays) == len(PEOPLE)
    shown_today = sum(sum(d.values("healthcode_display_today", kind="show")) for d in displays)
    assert shown_today == len(PEOPLE)


def test_no_identifier_and_bounded_labels_in_any_scrape(
    metrics_stack: Stack, exercised: Stubs
) -> None:
    needles = [
        n
        for number in (MISTYPED, *(x for p in PEOPLE for x in (p.id_number, *p.phones)))
        for n in _needles(number)
    ]
    for name, url in _urls(metrics_stack).items():
        got = scrape(url)
        for needle in needles:
            assert needle.data.decode("latin-1") not in got.text, f"{name}: {needle.label}"
        assert not ID_LIKE.search(got.text), f"{name}: something shaped like an ID number"
        assert not PHONE_LIKE.search(got.text), f"{name}: something shaped like a phone number"
        for sample, labels, _value in got.samples:
            unknown = set(labels) - LABELS - STANDARD_LABELS
            assert not unknown, f"{name}: {sample} has labels {unknown}"
            assert re.fullmatch(r"[A-Za-z]*", labels.get("method", "")), (name, sample)

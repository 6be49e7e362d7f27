"""Driving the rule sources through the real services: people are registered at the declaration
service, feed rows go to the risk index (or, for the declared_* sources, are declared at the
declaration service, as a person would), and every wait is a bounded poll on what the services
report (row counts, index versions), never on the colour being checked."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

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

from clients import feedgen
from clients.channel import open_channel
from clients.cli import feed_row
from clients.stack import Stack
from services._common.days import SHANGHAI, hour_number
from tests.e2e.waits import eventually

FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="e2e-feeds")
# Rows a declaration would have produced on an earlier day (a fever yesterday) can no longer be
# declared today: they arrive as the declaration service's outbox sent them then.
# What the declaration outbox does, done by an operator (a token cannot claim a service).
OUTBOX = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="declaration")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="policy-desk")
SUPPORT = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="support-desk-3")
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="exam-gate-2")
DEVICE = display_pb2.Device(device_id="e2e-phone", place="天津市第一中学考点")
DECLARED = ("declared_fever", "declared_symptoms", "declared_case_contact", "declared_travel")


def citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


def ref(id_number: str) -> common_pb2.PersonRef:
    return common_pb2.PersonRef(id_number=id_number)


@dataclass
class Stubs:
    declaration: declaration_pb2_grpc.DeclarationServiceStub
    risk_index: risk_index_pb2_grpc.RiskIndexServiceStub
    colour: colour_pb2_grpc.ColourServiceStub
    display: display_pb2_grpc.DisplayServiceStub

    # -- people -------------------------------------------------------------------------------

    def register(self, people: Iterable[feedgen.Person]) -> None:
        for n, person in enumerate(people):
            self.declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=citizen(person.id_number),
                    name=f"测试{n}",
                    id_number=person.id_number,
                    phones=list(person.phones),
                )
            )

    def wait_registered(self, persons: int, phones: int) -> int:
        """Until the risk index holds the people and phones the declaration outbox sent."""
        reply = eventually(
            f"the risk index to hold {persons} persons and {phones} phones",
            lambda: self.risk_index.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()),
            lambda v: v.person_count >= persons and v.phone_count >= phones,
        )
        return int(reply.version)

    # -- feeds --------------------------------------------------------------------------------

    def grade_counties(self, levels: dict[int, int]) -> int:
        version = 0
        for county, level in levels.items():
            if level:
                request = risk_index_pb2.SetCountyLevelRequest(actor=ADMIN, county=county)
                request.level = common_pb2.CountyRiskLevel.ValueType(level)
                version = max(version, self.risk_index.SetCountyLevel(request).index_version)
        return version

    def ingest(
        self,
        rows: Sequence[feedgen.Row],
        batch_prefix: str,
        actor: common_pb2.Actor = FEED,
        *,
        replace: bool = False,
    ) -> int:
        """One batch per source; the index version of the last one."""
        by_source: dict[str, list[risk_index_pb2.FeedRow]] = defaultdict(list)
        for r in rows:
            by_source[r["source"]].append(feed_row(r))
        version = 0
        for source, feed_rows in by_source.items():
            reply = self.risk_index.IngestBatch(
                risk_index_pb2.IngestBatchRequest(
                    actor=actor,
                    source=source,
                    batch_id=f"{batch_prefix}:{source}",
                    rows=feed_rows,
                    replace=replace,
                )
            )
            version = max(version, reply.index_version)
        return version

    def declare(self, id_number: str, rows: Sequence[feedgen.Row]) -> list[str]:
        """Today's declaration carrying the person's declared_* rows; its derived sources."""
        request = declaration_pb2.DeclareRequest(actor=citizen(id_number), person=ref(id_number))
        contacts = [r for r in rows if r["source"] == "declared_case_contact"]
        assert len(contacts) <= 1, "one declaration holds one case contact"
        for r in rows:
            if r["source"] == "declared_fever":
                request.temperature_celsius = 38.2
            elif r["source"] == "declared_symptoms":
                request.symptoms.append(declaration_pb2.SYMPTOM_COUGH)
            elif r["source"] == "declared_case_contact":
                request.case_contact = True
                request.case_contact_day = r["day"]
            elif r["source"] == "declared_travel":
                request.visits.add(county=r["county"], day=r["day"], place="e2e")
        reply = self.declaration.Declare(request)
        return list(reply.declaration.derived_sources)

    def wait_rows(self, expected: Mapping[str, int]) -> None:
        """Until every source holds (at least) the expected rows: the declaration outbox
        delivers asynchronously."""

        def counts() -> dict[str, int]:
            sources = self.risk_index.ListSources(risk_index_pb2.ListSourcesRequest()).sources
            return {s.name: s.row_count for s in sources if s.name in expected}

        eventually(
            f"the risk index to hold the rows of {len(expected)} sources",
            counts,
            lambda got: all(got.get(name, 0) >= n for name, n in expected.items()),
        )

    def wait_colour(self, version: int | None = None) -> int:
        """Until the colour replica holds `version` (default: the one carrying everything the
        risk index has accepted)."""
        if version is None:
            version = self.risk_index.GetIndexVersion(
                risk_index_pb2.GetIndexVersionRequest()
            ).accepted_version
        eventually(
            f"the colour replica to hold index version {version}",
            lambda: self.colour.GetStatus(colour_pb2.GetStatusRequest()).index_version,
            lambda held: held >= version,
        )
        return version

    # -- reading ------------------------------------------------------------------------------

    def show(self, id_number: str, min_index_version: int = 0) -> display_pb2.ShowResponse:
        return self.display.Show(
            display_pb2.ShowRequest(
                actor=citizen(id_number),
                person=ref(id_number),
                device=DEVICE,
                min_index_version=min_index_version,
            )
        )

    def scan(self, token: str) -> display_pb2.ScanResponse:
        return self.display.Scan(
            display_pb2.ScanRequest(actor=VERIFIER, token=token, device=DEVICE)
        )

    def evaluate(self, id_number: str, *, shared_only: bool = False) -> colour_pb2.Verdict:
        return self.colour.Evaluate(
            colour_pb2.EvaluateRequest(
                actor=SUPPORT, person=ref(id_number), shared_only=shared_only
            )
        ).verdict

    def explain(self, id_number: str, *, shared_only: bool = False) -> colour_pb2.ExplainResponse:
        return self.colour.Explain(
            colour_pb2.ExplainRequest(actor=SUPPORT, person=ref(id_number), shared_only=shared_only)
        )


@contextmanager
def stubs(stack: Stack) -> Iterator[Stubs]:
    p = stack.peers
    with ExitStack() as channels:
        yield Stubs(
            declaration_pb2_grpc.DeclarationServiceStub(
                channels.enter_context(open_channel(p.declaration))
            ),
            risk_index_pb2_grpc.RiskIndexServiceStub(
                channels.enter_context(open_channel(p.risk_index))
            ),
            colour_pb2_grpc.ColourServiceStub(channels.enter_context(open_channel(p.colour))),
            display_pb2_grpc.DisplayServiceStub(channels.enter_context(open_channel(p.display))),
        )


def declarable(r: feedgen.Row, today: dt.date) -> bool:
    """A declared_* row today's declaration can carry: fever and symptoms only today; travel
    and case contact within the declaration's 30-day history."""
    if r["source"] not in DECLARED:
        return False
    if r["source"] in ("declared_fever", "declared_symptoms"):
        return bool(r["day"] == today.isoformat())
    return (today - dt.date.fromisoformat(r["day"])).days <= 30


def verdict_hour(verdict: colour_pb2.Verdict) -> int:
    """The hour number a verdict was evaluated at (its `hour`, "YYYY-MM-DD HH:00" Asia/Shanghai):
    what an expectation about a timed row must be computed against, whatever the test's clock
    said when it made the row."""
    when = dt.datetime.strptime(verdict.hour, "%Y-%m-%d %H:%M").replace(tzinfo=SHANGHAI)
    return hour_number(when)


def colour_name(colour: int) -> str:
    return {
        common_pb2.COLOUR_GREEN: "green",
        common_pb2.COLOUR_YELLOW: "yellow",
        common_pb2.COLOUR_RED: "red",
    }.get(colour, "unknown")  # type: ignore[call-overload]


_CLOSE_CONTACT_UNTIL_NEGATIVE = """
version = "%s"
[[rules]]
id = "close-contact"
colour = "red"
scope = "shared"
window_days = 14
checks = [{ source = "close_contact" }]
clears = [{ source = "nat_negative", window_hours = 48 }]
text_zh = "近14天内被判定为密切接触者。"
text_en = "Identified as a close contact within the last 14 days."
what_clears_zh = "48小时内核酸检测阴性(经核验)后自动转绿。"
what_clears_en = "Turns green on a verified negative test from the last 48 hours."
"""


def close_contact_until_negative(version: str) -> str:
    """A policy for the journey tests: a close contact is red until a verified negative test
    from the last 48 hours (the default rule set clears close contacts only on release from
    quarantine)."""
    return _CLOSE_CONTACT_UNTIL_NEGATIVE % version

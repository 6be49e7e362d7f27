"""New index versions are published while displays run: no display fails, and every display
sees one whole version (never half of one).

Each published batch marks a pair of people as close contacts in one version v. Whatever
version a display reports, the colour of the person it showed must be exactly what that version
says: red if their pair's batch is at or before it, green otherwise. A display that saw part of
a version (one of a pair red, the rows not yet in the bitmaps, or reasons from another version)
breaks that rule.
"""

from __future__ import annotations

import random
import threading

import grpc
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
from clients.stack import Stack
from tests.e2e.waits import eventually, today

PEOPLE = feedgen.synthetic_id_numbers(24, 6160)
PAIRS = [PEOPLE[i : i + 2] for i in range(0, len(PEOPLE), 2)]
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="cdc")
# Operators act as admin: a platform service is known by its certificate, not a token.
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e")
DISPLAY_THREADS = 6


def citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


def test_displays_never_fail_or_see_half_a_version(stack: Stack) -> None:
    peers = stack.peers
    with open_channel(peers.declaration) as ch:
        declaration = declaration_pb2_grpc.DeclarationServiceStub(ch)
        for n, id_number in enumerate(PEOPLE):
            declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=citizen(id_number), name=f"测试{n}", id_number=id_number
                )
            )
    with open_channel(peers.colour) as ch:
        colour = colour_pb2_grpc.ColourServiceStub(ch)

        def known() -> int:
            return sum(
                colour.Evaluate(
                    colour_pb2.EvaluateRequest(
                        actor=SERVICE, person=common_pb2.PersonRef(id_number=p)
                    )
                ).verdict.registered
                for p in PEOPLE
            )

        eventually("every person to reach the colour replica", known, lambda n: n == len(PEOPLE))

    seen: list[tuple[str, int, int, tuple[str, ...]]] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def display_loop(seed: int) -> None:
        rng = random.Random(seed)
        # One channel per thread, as separate phones would have.
        with open_channel(peers.display) as ch:
            stub = display_pb2_grpc.DisplayServiceStub(ch)
            while not stop.is_set():
                person = rng.choice(PEOPLE)
                try:
                    shown = stub.Show(
                        display_pb2.ShowRequest(
                            actor=citizen(person),
                            person=common_pb2.PersonRef(id_number=person),
                            device=display_pb2.Device(device_id=f"phone-{seed}"),
                        )
                    )
                except grpc.RpcError as e:
                    with lock:
                        failures.append(f"{e.code()}: {e.details()}")  # type: ignore[attr-defined]
                    continue
                v = shown.verdict
                rules = tuple(sorted(r.rule_id for r in v.reasons if not r.cleared))
                with lock:
                    seen.append((person, v.index_version, v.colour, rules))

    threads = [threading.Thread(target=display_loop, args=(n,)) for n in range(DISPLAY_THREADS)]
    for t in threads:
        t.start()
    flagged_at: dict[str, int] = {}
    try:
        with open_channel(peers.risk_index) as ch:
            risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(ch)
            for n, pair in enumerate(PAIRS):
                before = len(seen)
                response = risk_index.IngestBatch(
                    risk_index_pb2.IngestBatchRequest(
                        actor=FEED,
                        source="close_contact",
                        batch_id=f"swap-{n}",
                        rows=[risk_index_pb2.FeedRow(id_number=p, day=today()) for p in pair],
                    )
                )
                for p in pair:
                    flagged_at[p] = response.index_version
                # Let some displays happen on this version before the next batch: versions are
                # coalesced (one per publish interval), and each batch should make its own.
                version = response.index_version

                def displays_on_it(b: int = before, v: int = version) -> int:
                    return sum(1 for _, shown, _, _ in seen[b:] if shown >= v)

                eventually(
                    f"displays on version {version}",
                    displays_on_it,
                    lambda k: k >= 5 or bool(failures),
                )
        with open_channel(peers.colour) as ch:
            last = max(flagged_at.values())
            eventually(
                f"the colour replica to hold version {last}",
                lambda: (
                    colour_pb2_grpc.ColourServiceStub(ch)
                    .GetStatus(colour_pb2.GetStatusRequest())
                    .index_version
                ),
                lambda held: held >= last,
            )
        settled = len(seen)
        eventually("displays on the last version", lambda: len(seen) - settled, lambda k: k >= 20)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    assert not failures, f"{len(failures)} displays failed, e.g. {failures[:3]}"
    versions = {v for _, v, _, _ in seen}
    print(f"{len(seen)} displays over {len(versions)} index versions")  # shown with -s
    assert len(versions) > len(PAIRS) // 2, f"displays saw too few versions: {sorted(versions)}"
    wrong = []
    for person, version, shown_colour, rules in seen:
        red = version >= flagged_at[person]
        want = (common_pb2.COLOUR_RED, ("close-contact", "close-contact-monitoring"))
        expected = want if red else (common_pb2.COLOUR_GREEN, ())
        if (shown_colour, rules) != expected:
            wrong.append((person[-4:], version, flagged_at[person], shown_colour, rules))
    assert not wrong, f"{len(wrong)} of {len(seen)} displays saw a partial version: {wrong[:5]}"

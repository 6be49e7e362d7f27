"""Where a display's colours and holders come from, behind the plain callables `DisplayDesk`
takes.

Colours come from the replica of the verdicts this process holds (`ReplicaColour`: no call at
all), or from the colour service (`ColourPeer`). Masked holders come from the declaration
service, cached by the desk; so do proxies' mandates, kept for at most a second (a revocation
counts at once). Each call to a peer has a deadline: the display path must fail fast
(UNAVAILABLE, with which peer) rather than hold a gate's queue when a peer is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
)

from services._common.actors import Actor
from services._common.errors import DomainError, NotFound, Unavailable
from services._common.mandates import MANDATE_CACHE_S, MandatePeer
from services._common.status import retry_after_s
from services.colour.engine import ColourEngine
from services.colour.logic import VERSION_WAIT_S
from services.colour.servicer import verdict_to_proto
from services.display.logic import Holder, LiveColour, MandateHeld

_ACTOR = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="display")
# How long a Show may wait, in all, on a declaration service that sheds its holder look-ups.
HOLDER_RETRY_BUDGET_S = 1.0


def _peer_error(peer: str, error: grpc.RpcError) -> DomainError:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = error.details() if isinstance(error, grpc.Call) else str(error)
    return Unavailable(f"the {peer} service could not answer ({code.name}): {detail}")


class ColourPeer:
    """Live colours from the colour service."""

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = colour_pb2_grpc.ColourServiceStub(channel)
        self._timeout = timeout_s

    def live_colour(self, person_key: bytes, min_version: int = 0) -> LiveColour:
        request = colour_pb2.EvaluateRequest(
            actor=_ACTOR,
            person=common_pb2.PersonRef(person_key=person_key),
            min_index_version=min_version,
        )
        try:
            verdict = self._stub.Evaluate(request, timeout=self._timeout).verdict
        except grpc.RpcError as error:
            raise _peer_error("colour", error) from None
        colour = verdict.colour - 1 if verdict.registered else None  # proto enum: 0 unspecified
        return LiveColour(colour, verdict.index_version, verdict.rule_set_version, verdict)


class ReplicaColour:
    """Live colours from the replica of the verdicts held in this process (one hop per
    display): the colour service's engine and answer, without the call."""

    def __init__(self, engine: ColourEngine, busy: Callable[[], bool] = lambda: False) -> None:
        """`busy()`: the server is shedding secondary content; the reasons are left out (the
        verdict says so) and the colour is answered whole."""
        self._engine = engine
        self._busy = busy

    def live_colour(self, person_key: bytes, min_version: int = 0) -> LiveColour:
        self._engine.wait_for_version(min_version, VERSION_WAIT_S)
        assessment = self._engine.evaluate(person_key, reasons=not self._busy())
        colour = None if assessment.colour is None else int(assessment.colour)
        return LiveColour(
            colour,
            assessment.index_version,
            assessment.rule_set_version,
            verdict_to_proto(assessment),
        )


class DeclarationPeer:
    """Masked names and ID numbers from the declaration service."""

    def __init__(
        self, channel: grpc.Channel, timeout_s: float, mandate_cache_s: float = MANDATE_CACHE_S
    ) -> None:
        self._stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        self._timeout = timeout_s
        self._mandate_peer = MandatePeer(channel, timeout_s, mandate_cache_s)

    def check_mandate(self, actor: Actor, person_key: bytes) -> MandateHeld | None:
        """The proxy's active mandate for the person (services/_common/mandates.py)."""
        return self._mandate_peer.check_mandate(actor, person_key)

    def holder_of(self, person_key: bytes) -> Holder:
        """The masked holder. A look-up the declaration service sheds (a display's cold cache
        asks for many holders at once) is tried again after the delay it asks for, while the
        retries fit in HOLDER_RETRY_BUDGET_S; past that the Show fails UNAVAILABLE."""
        request = declaration_pb2.GetPersonRequest(
            actor=_ACTOR, person=common_pb2.PersonRef(person_key=person_key)
        )
        waited = 0.0
        while True:
            try:
                person = self._stub.GetPerson(request, timeout=self._timeout).person
                return Holder(person.masked_name, person.masked_id_number)
            except grpc.RpcError as error:
                if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
                    raise NotFound(
                        "this person has not registered for a health code; register first"
                    ) from None
                delay = retry_after_s(error)
                if delay is None or waited + delay > HOLDER_RETRY_BUDGET_S:
                    raise _peer_error("declaration", error) from None
            time.sleep(delay)
            waited += delay

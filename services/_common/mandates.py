"""A proxy's mandate as the declaration service confirms it (CheckMandate), for the services
that let a proxy act: the display (a proxy's Show) and the colour service (a proxy's Explain).

A confirmed mandate is kept at most MANDATE_CACHE_S (a gate scanning a printed code twice asks
once; a revocation counts within a second) and never past its end; a refusal is asked again.
A citizen acting for themself never comes here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cachetools
import grpc
from healthcode.v1 import common_pb2, declaration_pb2, declaration_pb2_grpc

from services._common.actors import Actor, Role
from services._common.errors import Unavailable

MANDATE_CACHE_S = 1.0
_ACTOR = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="mandates")
_PROXY_ROLE = {
    Role.FAMILY_PROXY: common_pb2.ACTOR_ROLE_FAMILY_PROXY,
    Role.GRID_WORKER: common_pb2.ACTOR_ROLE_GRID_WORKER,
}


@dataclass(frozen=True, slots=True)
class MandateHeld:
    """A proxy's active mandate for a person, as the declaration service confirmed it."""

    mandate_id: int
    proxy_masked_id_number: str = ""  # a family proxy's, as recorded with the mandate
    valid_until_ms: int | None = None  # None: until revoked


class MandatePeer:
    """CheckMandate at the declaration service, each call with a deadline."""

    def __init__(
        self, channel: grpc.Channel, timeout_s: float, cache_s: float = MANDATE_CACHE_S
    ) -> None:
        self._stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        self._timeout = timeout_s
        self._mandates: cachetools.TTLCache[tuple[object, ...], MandateHeld] = cachetools.TTLCache(
            100_000, cache_s
        )
        self._lock = threading.Lock()

    def check_mandate(self, actor: Actor, person_key: bytes) -> MandateHeld | None:
        """The proxy's active mandate for the person (CheckMandate), or None."""
        who = actor.person_key if actor.role is Role.FAMILY_PROXY else actor.principal
        key = (actor.role, who, person_key)
        with self._lock:
            held = self._mandates.get(key)
        if held is not None and (
            held.valid_until_ms is None or held.valid_until_ms > time.time() * 1000
        ):
            return held
        proxy = declaration_pb2.MandateProxy(role=_PROXY_ROLE[actor.role])
        if actor.role is Role.FAMILY_PROXY:
            proxy.person.person_key = actor.person_key or b""
        else:
            proxy.principal = actor.principal
        request = declaration_pb2.CheckMandateRequest(
            actor=_ACTOR, proxy=proxy, person=common_pb2.PersonRef(person_key=person_key)
        )
        try:
            answer = self._stub.CheckMandate(request, timeout=self._timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            raise Unavailable(
                f"the declaration service could not confirm a mandate ({code.name})"
            ) from None
        if not answer.active:
            return None
        m = answer.mandate
        held = MandateHeld(
            m.mandate_id,
            m.proxy.masked_id_number,
            m.valid_until.ToMilliseconds() if m.HasField("valid_until") else None,
        )
        with self._lock:
            self._mandates[key] = held
        return held

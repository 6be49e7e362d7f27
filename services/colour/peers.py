"""The colour service's peers: the declaration service, for a person's masked record, and the
risk index, to publish a rule set to every replica.

The declaration service is asked only when a rule fired through a phone (R7: which phone) and by
Explain (R16: the masked name). Answers are cached briefly, so a Show whose colour has a fired
rule, or a support desk reading the same person twice, does not ask again.
"""

from __future__ import annotations

import grpc
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from services._common.cache import cached_lookup
from services._common.errors import Unavailable
from services.colour.model import PersonCard, PersonDirectory

_ACTOR = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="colour")


class DeclarationPeer:
    """Masked person records from the declaration service, each call with a deadline."""

    def __init__(self, channel: grpc.Channel, timeout_s: float = 2.0) -> None:
        self._stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        self._timeout = timeout_s
        self.person_card: PersonDirectory = cached_lookup(self._person_card)

    def _person_card(self, person_key: bytes) -> PersonCard:
        request = declaration_pb2.GetPersonRequest(
            actor=_ACTOR, person=common_pb2.PersonRef(person_key=person_key)
        )
        p = self._stub.GetPerson(request, timeout=self._timeout).person
        return PersonCard(
            p.masked_name, p.masked_id_number, {ph.phone_key: ph.masked_phone for ph in p.phones}
        )


class RiskIndexPeer:
    """Publishing rule sets through the risk index, so every replica runs them."""

    def __init__(self, channel: grpc.Channel, timeout_s: float = 10.0) -> None:
        self._stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        self._timeout = timeout_s

    def publish_rule_set(self, text: str, filename: str) -> int:
        """The index version that carries the rule set to every replica."""
        request = risk_index_pb2.PublishRuleSetRequest(actor=_ACTOR, text=text, filename=filename)
        try:
            return int(self._stub.PublishRuleSet(request, timeout=self._timeout).index_version)
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"
            detail = error.details() if isinstance(error, grpc.Call) else str(error)
            raise Unavailable(
                f"the risk index could not publish the rule set ({code}): {detail}; "
                "nothing was activated, try again"
            ) from None

"""Delivers the outbox to the risk index: in order, retried with backoff while it is down.

Each message is acknowledged (deleted) only after the risk index answered OK, and every call is
idempotent there (registering a known key, linking an already linked phone, replaying a batch
id change nothing), so a crash between "sent" and "deleted" just sends it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from healthcode.v1 import common_pb2, risk_index_pb2, risk_index_pb2_grpc

from services.declaration.model import PendingMessage
from services.declaration.repository import DeclarationRepository
from services.declaration.wire import Request, request, request_from

logger = logging.getLogger(__name__)

# Refusals that a retry cannot fix: the message is set aside (kept, marked dead) so it does not
# block the ones behind it. Anything else (UNAVAILABLE, DEADLINE_EXCEEDED, ...) is retried.
# UNIMPLEMENTED is retried too: in a rolling upgrade this service may run before the risk index
# that knows a new RPC (RegisterPeople), and the message must wait for it, not be dropped.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)
# Messages read from the table at a time: a bulk import's message holds up to 50,000 people,
# so few at once; a registration's holds one person (consecutive ones go as one call).
PENDING_BATCH = 16
# A message with more people or rows than this gets the bulk deadline.
BULK_ENTRIES = 1000

ACTOR = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="declaration")


def _key(payload: Mapping[str, Any], name: str) -> bytes:
    return bytes.fromhex(str(payload[name]))


def _exchange_hashes(payload: Mapping[str, Any]) -> list[risk_index_pb2.ExchangeHash]:
    """A registration's exchange hashes (none in a message stored by an older version)."""
    return [
        risk_index_pb2.ExchangeHash(province=str(province), hash=bytes.fromhex(str(hash_)))
        for province, hash_ in payload.get("exchange_hashes", ())
    ]


def is_bulk(message: PendingMessage) -> bool:
    """A bulk import's chunk (people or residence rows), which may take the risk index longer."""
    if message.body is not None:
        return True  # only an import's messages are stored as requests
    entries = message.payload.get("people") or message.payload.get("rows") or ()
    return message.kind == "register_people" or len(entries) > BULK_ENTRIES


def send(stub: risk_index_pb2_grpc.RiskIndexServiceStub, message: PendingMessage, timeout: float):
    """Deliver one message; raises grpc.RpcError on failure."""
    if message.body is not None:
        return _send_request(stub, request_from(message.kind, message.body), timeout)
    # A JSON payload: every other message, and an import's stored by an older version.
    p = message.payload
    if message.kind == "register_person":
        return stub.RegisterPerson(
            risk_index_pb2.RegisterPersonRequest(
                actor=ACTOR,
                person_key=_key(p, "person_key"),
                masked_id_number=p["masked_id_number"],
                exchange_hashes=_exchange_hashes(p),
            ),
            timeout=timeout,
        )
    if message.kind == "link_phone":
        return stub.LinkPhone(
            risk_index_pb2.LinkPhoneRequest(
                actor=ACTOR,
                person_key=_key(p, "person_key"),
                masked_id_number=p["masked_id_number"],
                phone_key=_key(p, "phone_key"),
                masked_phone=p["masked_phone"],
            ),
            timeout=timeout,
        )
    if message.kind == "unlink_phone":
        return stub.UnlinkPhone(
            risk_index_pb2.UnlinkPhoneRequest(actor=ACTOR, phone_key=_key(p, "phone_key")),
            timeout=timeout,
        )
    if message.kind == "link_card":
        return stub.LinkCard(
            risk_index_pb2.LinkCardRequest(
                actor=ACTOR,
                person_key=_key(p, "person_key"),
                masked_id_number=p["masked_id_number"],
                card_key=_key(p, "card_key"),
                masked_card=p["masked_card"],
            ),
            timeout=timeout,
        )
    if message.kind in ("register_people", "ingest_batch"):
        return _send_request(stub, request(message.kind, p), timeout)
    raise ValueError(f"unknown outbox message kind {message.kind!r}")


def _send_request(
    stub: risk_index_pb2_grpc.RiskIndexServiceStub, built: Request, timeout: float
) -> Any:
    built.actor.CopyFrom(ACTOR)
    if isinstance(built, risk_index_pb2.RegisterPeopleRequest):
        return stub.RegisterPeople(built, timeout=timeout)
    return stub.IngestBatch(built, timeout=timeout)


# Registry messages (one per registration, phone or card) that go to the risk index together:
# consecutive ones are sent as one RegisterPeople call, in order, so a city registering
# hundreds of people a second costs a few calls a second, not hundreds.
REGISTRY_KINDS = frozenset({"register_person", "link_phone", "link_card"})


def as_keyed_person(message: PendingMessage) -> risk_index_pb2.KeyedPerson:
    """A registry message as one entry of RegisterPeople (the same change at the risk index:
    the person registered, and a phone or card linked to them, moved from any other holder)."""
    p = message.payload
    person = risk_index_pb2.KeyedPerson(
        person_key=_key(p, "person_key"),
        masked_id_number=p["masked_id_number"],
        exchange_hashes=_exchange_hashes(p),
    )
    if message.kind == "link_phone":
        person.phones.add(phone_key=_key(p, "phone_key"), masked_phone=p["masked_phone"])
    elif message.kind == "link_card":
        person.cards.add(card_key=_key(p, "card_key"), masked_card=p["masked_card"])
    return person


def runs(batch: list[PendingMessage]) -> list[list[PendingMessage]]:
    """The batch in delivery order, consecutive registry messages grouped together."""
    out: list[list[PendingMessage]] = []
    for message in batch:
        if out and message.kind in REGISTRY_KINDS and out[-1][-1].kind in REGISTRY_KINDS:
            out[-1].append(message)
        else:
            out.append([message])
    return out


class OutboxWorker:
    """A background thread draining the outbox; `wake()` after each enqueue."""

    def __init__(
        self,
        repository: DeclarationRepository,
        stub: risk_index_pb2_grpc.RiskIndexServiceStub,
        *,
        deadline_s: float = 5.0,
        bulk_deadline_s: float = 60.0,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 10.0,
        poll_s: float = 5.0,
        sender: Callable[..., Any] = send,
    ) -> None:
        self._repo = repository
        self._stub = stub
        self._deadline = deadline_s
        self._bulk_deadline = max(deadline_s, bulk_deadline_s)
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._poll = poll_s
        self._send = sender
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._delivered = 0

    @property
    def delivered(self) -> int:
        """Messages delivered since start (for status and tests)."""
        return self._delivered

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def drain(self) -> bool:
        """Deliver pending messages in order until done (True) or a retryable failure (False)."""
        while not self._stop.is_set():
            batch = self._repo.pending(PENDING_BATCH)
            if not batch:
                return True
            for run in runs(batch):
                if len(run) > 1 and self._send_together(run):
                    continue
                for message in run:
                    if not self._deliver(message):
                        return False
        return False

    def _send_together(self, run: list[PendingMessage]) -> bool:
        """Send a run of registry messages as one RegisterPeople; True if delivered (and
        acknowledged). On any failure the caller sends them one by one, which retries or
        sets aside exactly the message at fault."""
        if self._stop.is_set():
            return False
        try:
            request = risk_index_pb2.RegisterPeopleRequest(
                actor=ACTOR, people=[as_keyed_person(m) for m in run]
            )
            self._stub.RegisterPeople(request, timeout=self._deadline)
        except (grpc.RpcError, KeyError, ValueError) as error:
            logger.info("outbox: %d registry messages sent one by one (%s)", len(run), error)
            return False
        self._repo.acknowledge(*(message.id for message in run))
        self._delivered += len(run)
        return True

    def _deliver(self, message: PendingMessage) -> bool:
        """Deliver one message and acknowledge it, or set it aside if it can never be
        delivered; False on a retryable failure (stop draining for now)."""
        if self._stop.is_set():
            return False
        try:
            deadline = self._bulk_deadline if is_bulk(message) else self._deadline
            self._send(self._stub, message, deadline)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            detail = error.details() if isinstance(error, grpc.Call) else str(error)
            text = f"{code.name if code else 'ERROR'}: {detail}"
            if code in PERMANENT:
                logger.error("outbox %d (%s) refused for good: %s", message.id, message.kind, text)
                self._repo.record_failure(message.id, text, dead=True)
                return True
            self._repo.record_failure(message.id, text, dead=False)
            logger.warning(
                "outbox %d (%s) not delivered, will retry: %s", message.id, message.kind, text
            )
            return False
        except (KeyError, ValueError, DecodeError) as error:
            logger.error("outbox %d (%s) malformed: %s", message.id, message.kind, error)
            self._repo.record_failure(message.id, f"malformed: {error}", dead=True)
            return True
        self._repo.acknowledge(message.id)
        self._delivered += 1
        return True

    def _run(self) -> None:
        backoff = self._retry_initial
        while not self._stop.is_set():
            try:
                done = self.drain()
            except Exception:  # a database error must not kill the worker for good
                logger.exception("outbox drain failed")
                done = False
            if done:
                backoff = self._retry_initial
                self._wake.wait(self._poll)
                self._wake.clear()
            else:
                # While the risk index is down, wake-ups do not shorten the backoff.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._retry_max)

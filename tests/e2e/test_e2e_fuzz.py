"""Every RPC of every service fuzzed against the real four-process stack (issue 10, item 5).

The RPCs are read from the generated descriptors (`DESCRIPTOR.services_by_name`), so a new RPC
is fuzzed without touching this file. Each gets:

- bodies that are not its message, or barely are: random bytes, and its own messages truncated,
  with a byte flipped or a byte inserted (hypothesis);
- messages built from its descriptor over hostile field values: text empty, huge, unicode,
  control characters, raw-looking identifiers; integers at their type's bounds; enum values
  known and unknown; bytes of every wrong length; repeated fields; nested messages and oneofs.

Streaming requests get a short stream of such messages; of a streaming answer the first message
is read, then the call is cancelled. Every call has a deadline. What must hold:

- no call ends INTERNAL or UNKNOWN, and every process stays alive;
- a body that does not parse gets INVALID_ARGUMENT naming the message type; any
  INVALID_ARGUMENT carries a google.rpc.BadRequest with at least one field violation;
- a refused call changes nothing: the risk index's versions and counts (the declaration
  service's people reach it through its outbox), the colour replica's and the display's
  counters read the same before and after each RPC's fuzzing (a call hypothesis happens to
  make valid, accepted with OK, may change them: the state is then read afresh);
- afterwards every service answers health SERVING, and no service log holds a traceback.

Inputs a search found once (rule-set TOML nested past the parser's recursion, ...) are kept in
KNOWN_HOSTILE and tried on every run. Oversized messages (past the servers' MAX_MESSAGE_BYTES)
get RESOURCE_EXHAUSTED from grpc, and oversized batches the documented RESOURCE_EXHAUSTED naming
the limit.

Most fields get a plausible value and some a hostile one, and the caller, the person and the
device are mostly well formed, so the fuzzing reaches past the first check of each request.
The examples are derandomized (the same on every run) and bounded so the module runs in well
under a minute on two cores; HEALTHCODE_FUZZ_SCALE=10 searches ten times as long.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import base45
import grpc
import pytest
from google.protobuf import message, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.channel import open_channel
from clients.credentials import BearerTokens, for_target
from clients.stack import Stack
from services._common.server import MAX_MESSAGE_BYTES
from services._common.sources import SOURCES
from services._common.status import field_violations
from services.display.tokens import PREFIX
from tests.e2e.waits import SHANGHAI, today

PROTO_MODULES = (colour_pb2, declaration_pb2, display_pb2, risk_index_pb2)

# A fuzz call's deadline. Some valid-looking requests wait by design (a min_index_version in
# the future waits up to 5 s, a Show of a person the replica does not know yet up to 2 s): the
# fuzzing does not wait for them, and a deadline is not a failure.
DEADLINE_S = 1.5
# Examples per RPC and kind; 28 RPCs x 2 kinds x these stay under a minute with the stack.
# HEALTHCODE_FUZZ_SCALE=10 runs ten times as many (a longer search, e.g. nightly).
_SCALE = float(os.environ.get("HEALTHCODE_FUZZ_SCALE", "1"))
BODY_EXAMPLES = max(1, round(30 * _SCALE))
MESSAGE_EXAMPLES = max(1, round(60 * _SCALE))

FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- the RPCs, from the descriptors ---------------------------------------------------------------


def _stack_name(service: str) -> str:
    """The service's name in clients.stack: RiskIndexService -> risk_index."""
    words = re.findall(r"[A-Z][a-z0-9]*", service.removesuffix("Service"))
    return "_".join(w.lower() for w in words)


@dataclass(frozen=True)
class Rpc:
    process: str  # the stack's name for the serving process
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request(self) -> type[message.Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    def __str__(self) -> str:
        return f"{self.method.containing_service.name}.{self.method.name}"


RPCS = [
    Rpc(_stack_name(service.name), method)
    for module in PROTO_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]

# RPCs that only read: even when a fuzzed call is accepted, the state must not move. By name
# (Get..., List..., Watch..., Check...), and these:
READ_ONLY = frozenset({"Evaluate", "EvaluateStream", "Explain", "WhatIf"})
_READING = ("Get", "List", "Watch", "Check")


def reads_only(rpc: Rpc) -> bool:
    name = rpc.method.name
    return name in READ_ONLY or name.startswith(_READING)


# -- strategies over a message descriptor ---------------------------------------------------------

_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
HUGE = 100_000
# A resident ID number with the right check digit (the standard's own example).
VALID_ID_NUMBER = "11010519491231002X"
_TODAY = today()
_YESTERDAY = (dt.datetime.now(SHANGHAI).date() - dt.timedelta(days=1)).isoformat()
_HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "\n\r\t\x7f",
    "x" * 129,
    "x" * HUGE,
    "健" * HUGE,
    "\u202etxt.exe",
    "😷" * 50,
    "Ω≈ç√∫˜µ≤≥÷",
    "12**************3X",
    "110105194912310021",  # a check digit wrong
    "+8613800138000",
    "2024-02-30",
    "9999-12-31",
    "0000-00-00",
    "../../etc/passwd",
    "%s%n{0}${x}",
    "' OR 1=1 --",
    '[[rules]]\nid = "x"',
]
# Values a field of its kind may well accept: most fields of a message get one, so the hostile
# ones among them are what the service's validation meets (and not always the first check).
_PLAUSIBLE_TEXT = [
    "fuzz-1",
    "张三",
    "Bus 632",
    VALID_ID_NUMBER,
    "13800138000",
    _TODAY,
    _YESTERDAY,
    *sorted(SOURCES)[:6],
    # A code token of the right shape whose signature does not verify.
    PREFIX + base45.b45encode(bytes(142)).decode(),
]
_HOSTILE_BYTES = [b"", b"\x00", b"\x00" * 15, b"\xff" * 16, b"\x00" * 17, b"\xee" * HUGE]


def _enum_numbers(fd: FieldDescriptor) -> list[int]:
    assert fd.enum_type is not None
    return [v.number for v in fd.enum_type.values]


def _message_type(fd: FieldDescriptor) -> Descriptor:
    assert fd.message_type is not None
    return fd.message_type


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = {low, low + 1, 0, 1, high - 1, high} | ({-1} if low < 0 else set())
    return st.one_of(
        st.sampled_from(sorted(edges)), st.integers(low, high), st.integers(0, 1_000_000)
    )


def _hostile(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Values at and beyond the edges of what the field's type holds."""
    t = fd.type
    if t in _INT_RANGES:
        return _ints(*_INT_RANGES[t])
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t == _T.TYPE_FLOAT:
        return st.floats(width=32)
    if t == _T.TYPE_DOUBLE:
        return st.floats()
    if t == _T.TYPE_STRING:
        return st.one_of(st.sampled_from(_HOSTILE_TEXT), st.text(max_size=40))
    if t == _T.TYPE_BYTES:
        return st.one_of(st.sampled_from(_HOSTILE_BYTES), st.binary(max_size=40))
    if t == _T.TYPE_ENUM:
        known = _enum_numbers(fd)
        return st.sampled_from([*known, max(known) + 1, -1, 2**31 - 1, -(2**31)])
    raise AssertionError(f"no strategy for {fd.full_name} (type {t})")


def _plausible(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = fd.type
    if t in _INT_RANGES:
        return st.sampled_from([0, 1, 2, 7, 120101])  # counties are 110000-829999
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
        return st.sampled_from([36.6, 38.5])
    if t == _T.TYPE_STRING:
        return st.sampled_from(_PLAUSIBLE_TEXT)
    if t == _T.TYPE_BYTES:
        return st.binary(min_size=16, max_size=16)  # the size of every key
    if t == _T.TYPE_ENUM:
        return st.sampled_from([n for n in _enum_numbers(fd) if n] or [0])
    raise AssertionError(f"no strategy for {fd.full_name} (type {t})")


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    """One value in four hostile, three plausible."""
    return st.integers(0, 3).flatmap(lambda i: _hostile(fd) if i == 0 else _plausible(fd))


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == _T.TYPE_MESSAGE and _message_type(fd).GetOptions().map_entry


# Fields whose valid values wait by design: a min_index_version ahead of the replica waits up
# to 5 s for that version (then UNAVAILABLE). Mostly 0 here, or each such call would cost the
# fuzzing a deadline and hold a server thread for 5 s (the shedder then refuses the calls
# after it); one in sixteen is still drawn from the type's bounds.
_WAITING_FIELDS = frozenset({"min_index_version"})


def _field_values(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if fd.name in _WAITING_FIELDS:
        return st.integers(0, 15).flatmap(lambda i: _hostile(fd) if i == 0 else st.just(0))
    if _is_map(fd):
        entry = _message_type(fd).fields_by_name
        key, value = entry["key"], entry["value"]
        return st.dictionaries(_scalar(key), _value(value, depth + 1), max_size=20)
    one = _value(fd, depth)
    if fd.is_repeated:
        return st.lists(one, max_size=5)
    return one


def _value(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if fd.type != _T.TYPE_MESSAGE:
        return _scalar(fd)
    plausible = _PLAUSIBLE.get(_message_type(fd).full_name)
    hostile = messages(_message_type(fd), depth + 1)
    if plausible is None:
        return hostile
    # Mostly well formed: a request refused for its caller every time tests nothing else.
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else plausible())


def _plausible_person() -> st.SearchStrategy[message.Message]:
    return st.one_of(
        st.just(common_pb2.PersonRef(id_number=VALID_ID_NUMBER)),
        st.builds(common_pb2.PersonRef, person_key=st.binary(min_size=16, max_size=16)),
    )


def _plausible_actor() -> st.SearchStrategy[message.Message]:
    """A caller of any known role, well formed, so the fuzzing reaches past the actor check."""
    role_field = common_pb2.Actor.DESCRIPTOR.fields_by_name["role"]
    roles = [n for n in _enum_numbers(role_field) if n]
    return st.builds(
        common_pb2.Actor,
        role=st.sampled_from(roles),
        principal=st.just("fuzzer"),
        person=_plausible_person(),
    )


def _plausible_device() -> st.SearchStrategy[message.Message]:
    return st.builds(
        display_pb2.Device,
        device_id=st.just("fuzz-device-1"),
        place=st.sampled_from(["", "Bus 632"]),
        county=st.sampled_from([0, 120101]),
    )


# Message types drawn mostly well formed, and set in every message that has them: the caller,
# the person a request is about and the device it comes from.
_PLAUSIBLE: dict[str, Callable[[], st.SearchStrategy[message.Message]]] = {
    "healthcode.v1.Actor": _plausible_actor,
    "healthcode.v1.PersonRef": _plausible_person,
    "healthcode.v1.Device": _plausible_device,
}


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[message.Message]:
    """Messages of `desc`: any subset of its fields set, each value hostile or plausible
    (nested messages to a depth of 3; a oneof ends with any one of its members, or none)."""
    cls = message_factory.GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    values = {fd.name: _field_values(fd, depth) for fd in desc.fields}
    always = {
        name: values.pop(name)
        for name, fd in desc.fields_by_name.items()
        if fd.type == _T.TYPE_MESSAGE
        and not fd.is_repeated
        and fd.containing_oneof is None
        and _message_type(fd).full_name in _PLAUSIBLE
    }

    def build(values: dict[str, Any]) -> message.Message:
        msg = cls()
        for name, value in values.items():
            _set(msg, desc.fields_by_name[name], value)
        return msg

    return st.fixed_dictionaries(always, optional=values).map(build)


def _set(msg: message.Message, fd: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, fd.name)
    if _is_map(fd):
        for k, v in value.items():
            if isinstance(v, message.Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif fd.is_repeated:
        if fd.type == _T.TYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif fd.type == _T.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


@st.composite
def _mutated(draw: st.DrawFn, desc: Descriptor) -> bytes:
    """A message of `desc`, serialized, then truncated, with a byte flipped or one inserted."""
    body = draw(messages(desc)).SerializeToString()
    if not body:
        return draw(st.binary(min_size=1, max_size=64))
    at = draw(st.integers(0, len(body) - 1))
    how = draw(st.sampled_from(["truncate", "flip", "insert"]))
    if how == "truncate":
        return body[:at]
    byte = draw(st.integers(0, 255))
    if how == "flip":
        return body[:at] + bytes([body[at] ^ (byte or 0x80)]) + body[at + 1 :]
    return body[:at] + bytes([byte]) + body[at:]


def bodies(desc: Descriptor) -> st.SearchStrategy[Body]:
    return st.one_of(st.binary(max_size=512), _mutated(desc))


# -- calling and judging ------------------------------------------------------------------------


# What a fuzz call sends: bytes as they are, or a message (serialized; a client under mutual TLS
# then mints the bearer token for the actor it names, clients/credentials.py).
Body = bytes | message.Message


def _wire(body: Body) -> bytes:
    return body if isinstance(body, bytes) else body.SerializeToString()


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    violations: list[tuple[str, str]] = field(default_factory=list)


def _call(channel: grpc.Channel, rpc: Rpc, stream: list[Body]) -> Outcome:
    """Send the bodies (the answers are not parsed: bytes) and read the outcome."""
    m = rpc.method
    kind = (
        ("stream" if m.client_streaming else "unary")
        + "_"
        + ("stream" if m.server_streaming else "unary")
    )
    callable_ = getattr(channel, kind)(rpc.path, request_serializer=_wire)
    request: Any = iter(stream) if m.client_streaming else stream[0]
    try:
        if not m.server_streaming:
            callable_(request, timeout=DEADLINE_S)
            return Outcome(grpc.StatusCode.OK)
        # A streaming answer: the first message (or the end) says whether the call was
        # accepted; a watch would go on until its deadline.
        answers = callable_(request, timeout=DEADLINE_S)
        try:
            next(answers, None)
        finally:
            answers.cancel()
        return Outcome(grpc.StatusCode.OK)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return Outcome(error.code(), error.details() or "", field_violations(error))


def _parses(cls: type[message.Message], body: bytes) -> bool:
    try:
        cls.FromString(body)
    except message.DecodeError:
        return False
    return True


@dataclass
class Fuzzer:
    """The stack, a channel to each process, what each RPC's fuzz calls ended with, and the
    state refused calls must leave alone."""

    stack: Stack
    channels: dict[str, grpc.Channel]
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def send(self, rpc: Rpc, stream: list[Body]) -> None:
        outcome = _call(self.channels[rpc.process], rpc, stream)
        self.codes.setdefault(str(rpc), Counter())[outcome.code.name] += 1
        wire = [_wire(body) for body in stream]
        shown = f"{rpc.path} -> {outcome.code.name} {outcome.details!r}; bodies {wire!r:.600}"
        assert outcome.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), shown
        if not _parses(rpc.request, wire[0]):
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, shown
            assert f"not a valid {rpc.method.input_type.full_name}" in outcome.details, shown
        if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert outcome.violations, f"INVALID_ARGUMENT without a field violation: {shown}"

    def accepted(self, rpc: Rpc) -> int:
        return self.codes.get(str(rpc), Counter())["OK"]

    def read_state(self, timeout_s: float = 15.0) -> dict[str, Any]:
        """What refused calls must not change, read through the services' own read RPCs (again
        while a service sheds them: fuzz calls that wait by design may still hold its threads).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._read_state()
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                busy = error.code() in (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.UNAVAILABLE,
                )
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _read_state(self) -> dict[str, Any]:
        index = risk_index_pb2_grpc.RiskIndexServiceStub(self.channels["risk_index"])
        v = index.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest(), timeout=10)
        colour = colour_pb2_grpc.ColourServiceStub(self.channels["colour"])
        c = colour.GetStatus(colour_pb2.GetStatusRequest(), timeout=10)
        display = display_pb2_grpc.DisplayServiceStub(self.channels["display"])
        watch = display.WatchCounters(display_pb2.WatchCountersRequest(), timeout=10)
        try:
            d = next(watch)
        finally:
            watch.cancel()
        return {
            "risk_index": (
                v.version,
                v.accepted_version,
                v.person_count,
                v.phone_count,
                v.card_count,
            ),
            "colour": (c.rule_set_version, c.index_version, c.person_count, c.counts),
            # A refused scan is logged and counted on purpose (R9): refused_scans may move.
            "display": (d.total_displays, d.total_scans, d.total_applicants),
        }

    def settled_state(self, timeout_s: float = 15.0) -> dict[str, Any]:
        """The state once accepted changes have travelled (outbox, publication, replicas):
        the same twice in a row, a publication interval apart, with the replica current."""
        deadline = time.monotonic() + timeout_s
        last = self.read_state()
        while True:
            time.sleep(1.2)
            now = self.read_state()
            index = now["risk_index"]
            if now == last and index[0] == index[1] and now["colour"][1] == index[0]:
                return now
            if time.monotonic() > deadline:
                pytest.fail(f"the stack did not settle in {timeout_s:.0f} s: {last} -> {now}")
            last = now


@pytest.fixture(scope="module")
def fuzzer(module_stack: Stack) -> Iterator[Fuzzer]:
    # The channels every client uses (clients/channel.py), as a client of this stack would.
    channels = {
        name: open_channel(f"127.0.0.1:{port}") for name, port in module_stack.ports.items()
    }
    try:
        f = Fuzzer(module_stack, channels)
        f.state = f.settled_state()
        yield f
    finally:
        for channel in channels.values():
            channel.close()


def _after_fuzzing(fuzzer: Fuzzer, rpc: Rpc) -> None:
    fuzzer.stack.check_alive()
    if fuzzer.accepted(rpc) and not reads_only(rpc):
        # A call hypothesis happened to make valid was accepted: read the state afresh.
        fuzzer.state = fuzzer.settled_state()
        return
    assert fuzzer.read_state() == fuzzer.state, (
        f"{rpc} changed the state with calls that were refused: {fuzzer.codes.get(str(rpc))}"
    )


def _stream_of(rpc: Rpc, one: st.SearchStrategy[Body]) -> st.SearchStrategy[list[Body]]:
    if rpc.method.client_streaming:
        return st.lists(one, min_size=1, max_size=3)
    return one.map(lambda body: [body])


# -- the tests ----------------------------------------------------------------------------------


def test_every_rpc_of_every_service_is_fuzzed() -> None:
    """The enumeration finds each service's RPCs, and each process of the stack serves one."""
    by_process = Counter(rpc.process for rpc in RPCS)
    assert set(by_process) == {"colour", "declaration", "display", "risk_index"}
    assert {str(rpc) for rpc in RPCS} >= {
        "DeclarationService.ImportPeople",
        "ColourService.EvaluateStream",
        "DisplayService.WatchCounters",
        "RiskIndexService.WatchIndex",
    }


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_bodies_that_are_not_the_message_are_invalid_argument(fuzzer: Fuzzer, rpc: Rpc) -> None:
    @settings(FUZZ_SETTINGS, max_examples=BODY_EXAMPLES)
    @given(stream=_stream_of(rpc, bodies(rpc.method.input_type)))
    def fuzz(stream: list[Body]) -> None:
        fuzzer.send(rpc, stream)

    fuzz()
    _after_fuzzing(fuzzer, rpc)


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_messages_with_hostile_fields_are_refused_cleanly(fuzzer: Fuzzer, rpc: Rpc) -> None:
    strategy: st.SearchStrategy[Body] = messages(rpc.method.input_type)

    @settings(FUZZ_SETTINGS, max_examples=MESSAGE_EXAMPLES)
    @given(stream=_stream_of(rpc, strategy))
    def fuzz(stream: list[Body]) -> None:
        fuzzer.send(rpc, stream)

    fuzz()
    _after_fuzzing(fuzzer, rpc)


def _actor(role: common_pb2.ActorRole.ValueType, principal: str = "fuzzer") -> common_pb2.Actor:
    return common_pb2.Actor(role=role, principal=principal)


_ADMIN = common_pb2.ACTOR_ROLE_ADMIN
# Rule-set TOML nested deeper than a recursive parser goes.
_DEEP_TOML = "rules = " + "[" * 100_000
_DEEP_TABLES = "version = 'x'\n[[rules]]\nid = 'a'\nchecks = " + "{a=" * 600 + "1" + "}" * 600

# Inputs found by hand or by a longer search, kept so every run tries them (rpc, request).
KNOWN_HOSTILE: list[tuple[str, message.Message]] = [
    (
        "ColourService.SetRuleSet",
        colour_pb2.SetRuleSetRequest(actor=_actor(_ADMIN), text=_DEEP_TOML),
    ),
    (
        "ColourService.SetRuleSet",
        colour_pb2.SetRuleSetRequest(actor=_actor(_ADMIN), text=_DEEP_TABLES, dry_run=True),
    ),
    ("ColourService.WhatIf", colour_pb2.WhatIfRequest(actor=_actor(_ADMIN), text=_DEEP_TOML)),
    ("ColourService.WhatIf", colour_pb2.WhatIfRequest(actor=_actor(_ADMIN), text=_DEEP_TABLES)),
    (
        "RiskIndexService.PublishRuleSet",
        risk_index_pb2.PublishRuleSetRequest(actor=_actor(_ADMIN), text=_DEEP_TOML),
    ),
    (
        "RiskIndexService.PublishRuleSet",
        risk_index_pb2.PublishRuleSetRequest(actor=_actor(_ADMIN), text=_DEEP_TABLES),
    ),
    (
        "ColourService.EvaluateStream",
        colour_pb2.EvaluateStreamRequest(
            actor=_actor(common_pb2.ACTOR_ROLE_PARTNER), person_keys=bytes(17)
        ),
    ),
    (
        "RiskIndexService.IngestBatch",
        risk_index_pb2.IngestBatchRequest(
            actor=_actor(common_pb2.ACTOR_ROLE_FEED),
            source="nat_negative",
            batch_id="fuzz-far-future",
            rows=[
                risk_index_pb2.FeedRow(
                    id_number=VALID_ID_NUMBER, at=timestamp_pb2.Timestamp(seconds=2**62)
                )
            ],
        ),
    ),
    (
        "DeclarationService.Declare",
        declaration_pb2.DeclareRequest(
            actor=_actor(common_pb2.ACTOR_ROLE_GRID_WORKER),
            person=common_pb2.PersonRef(id_number=VALID_ID_NUMBER),
            temperature_celsius=float("nan"),
            visits=[declaration_pb2.Visit(county=2**32 - 1, day="9999-12-31")],
        ),
    ),
]


@pytest.mark.parametrize(("name", "request_"), KNOWN_HOSTILE, ids=[n for n, _ in KNOWN_HOSTILE])
def test_known_hostile_inputs_are_refused_cleanly(
    fuzzer: Fuzzer, name: str, request_: message.Message
) -> None:
    rpc = next(r for r in RPCS if str(r) == name)
    accepted = fuzzer.accepted(rpc)
    fuzzer.send(rpc, [request_])
    assert fuzzer.accepted(rpc) == accepted, f"{name} accepted {request_}"
    fuzzer.stack.check_alive()


def _channel_without_send_limit(target: str) -> grpc.Channel:
    """clients/channel.py's channel (mutual TLS and a bearer token where the stack wants them)
    that sends any size: its own stops at the servers' limit, before the server sees it."""
    options = [("grpc.max_send_message_length", -1)]
    credentials = for_target(target)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    channel = grpc.secure_channel(target, credentials.channel_credentials(), options=options)
    return grpc.intercept_channel(channel, BearerTokens(credentials))


def test_a_message_past_the_size_limit_is_resource_exhausted(fuzzer: Fuzzer) -> None:
    """The server refuses it (grpc's own check, before any parsing): a client that sends it
    gets RESOURCE_EXHAUSTED saying the server received too much, and nothing changes."""
    before = fuzzer.read_state()
    body = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    for process, port in fuzzer.stack.ports.items():
        rpc = next(r for r in RPCS if r.process == process and not r.method.client_streaming)
        with _channel_without_send_limit(f"127.0.0.1:{port}") as channel:
            outcome = _call(channel, rpc, [body])
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (rpc.path, outcome)
        assert "Received message larger than max" in outcome.details, outcome
    fuzzer.stack.check_alive()
    assert fuzzer.read_state() == before


def _limit_outcome(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_batches_past_their_documented_limit_are_refused_naming_the_limit(fuzzer: Fuzzer) -> None:
    """IngestBatch and RegisterPeople (50,000 rows), an ImportPeople chunk (50,000 rows) and an
    EvaluateStream batch (100,000 entries): RESOURCE_EXHAUSTED, as their protos say, with the
    limit in the message; nothing changes. A registration's phones (at most 10) are a field
    of one request: INVALID_ARGUMENT naming it."""
    before = fuzzer.read_state()
    index = risk_index_pb2_grpc.RiskIndexServiceStub(fuzzer.channels["risk_index"])
    declaration = declaration_pb2_grpc.DeclarationServiceStub(fuzzer.channels["declaration"])
    colour = colour_pb2_grpc.ColourServiceStub(fuzzer.channels["colour"])

    def actor(role: common_pb2.ActorRole.ValueType) -> common_pb2.Actor:
        return common_pb2.Actor(role=role, principal="fuzz-limits")

    rows = 50_001
    cases: list[tuple[str, Callable[[], object], str]] = [
        (
            "IngestBatch",
            lambda: index.IngestBatch(
                risk_index_pb2.IngestBatchRequest(
                    actor=actor(common_pb2.ACTOR_ROLE_FEED),
                    source="close_contact",
                    batch_id="fuzz-oversized",
                    rows=[risk_index_pb2.FeedRow(id_number="x")] * rows,
                ),
                timeout=30,
            ),
            "50000",
        ),
        (
            "RegisterPeople",
            lambda: index.RegisterPeople(
                risk_index_pb2.RegisterPeopleRequest(
                    actor=actor(common_pb2.ACTOR_ROLE_ADMIN),
                    people=[risk_index_pb2.KeyedPerson(person_key=b"\x01" * 16)] * rows,
                ),
                timeout=30,
            ),
            "50000",
        ),
        (
            "ImportPeople",
            lambda: declaration.ImportPeople(
                iter(
                    [
                        declaration_pb2.ImportPeopleRequest(
                            actor=actor(common_pb2.ACTOR_ROLE_ADMIN),
                            rows=[declaration_pb2.ImportRow(line=1)] * rows,
                        )
                    ]
                ),
                timeout=30,
            ),
            "50000",
        ),
        (
            "EvaluateStream",
            lambda: list(
                colour.EvaluateStream(
                    iter(
                        [
                            colour_pb2.EvaluateStreamRequest(
                                actor=actor(common_pb2.ACTOR_ROLE_PARTNER),
                                id_numbers=["x"] * 100_001,
                            )
                        ]
                    ),
                    timeout=30,
                )
            ),
            "100,000",
        ),
    ]
    # EvaluateStream is an exam organiser's door (purpose limitation): the partner's token
    # names that kind, so the call gets as far as its batch limit.
    credentials = for_target(f"127.0.0.1:{fuzzer.stack.ports['colour']}")
    assert credentials is not None
    credentials.partner_context = "exam_organiser"
    try:
        for name, call, limit in cases:
            error = _limit_outcome(call)
            assert isinstance(error, grpc.Call)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (name, error)
            assert limit in (error.details() or ""), (name, error.details())
    finally:
        credentials.partner_context = ""
    error = _limit_outcome(
        lambda: declaration.Register(
            declaration_pb2.RegisterRequest(
                actor=actor(common_pb2.ACTOR_ROLE_GRID_WORKER),
                name="张三",
                id_number="11010519491231002X",
                phones=[f"1380013{i:04d}" for i in range(11)],
            ),
            timeout=10,
        )
    )
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert ("phones", "at most 10 phone numbers") in field_violations(error)
    fuzzer.stack.check_alive()
    assert fuzzer.read_state() == before


def test_after_the_fuzzing_every_service_serves_and_no_log_holds_a_traceback(
    fuzzer: Fuzzer,
) -> None:
    for name, channel in fuzzer.channels.items():
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    fuzzer.stack.check_alive()
    # Whatever refused calls might still have set moving has arrived by now.
    assert fuzzer.settled_state() == fuzzer.state
    for name in fuzzer.channels:
        log = fuzzer.stack.log_path(name).read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in log, f"{name}:\n{fuzzer.stack.log_tail(name, 60)}"
        assert "Exception deserializing" not in log, name
        assert "Exception calling application" not in log, name

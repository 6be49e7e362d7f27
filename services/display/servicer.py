"""DisplayService: protos in, `DisplayDesk` calls, protos out."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from healthcode.v1 import colour_pb2, common_pb2, display_pb2, display_pb2_grpc

from services._common.actors import Actor, Role
from services._common.convert import actor_from_proto, person_from_proto
from services._common.days import check_county, format_day, parse_day, today
from services._common.errors import (
    InvalidArgument,
    PermissionDenied,
    grpc_errors,
    status_code_of,
)
from services._common.identifiers import Identifiers
from services._common.logs import redact
from services.display.logic import DisplayDesk, Place, TokenRefused
from services.display.store import DayCounters, DisplayLog
from services.display.tokens import CodeTokens

SERVICE_NAME = display_pb2.DESCRIPTOR.services_by_name["DisplayService"].full_name
ERROR_DOMAIN = "display.healthcode.v1"

# The holder, or a proxy showing a code for someone without a smartphone (R3).
_SHOW_ROLES = {Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER}
_SCAN_ROLES = {Role.VERIFIER, Role.PARTNER}
# WatchCounters sends at least this often, so a dashboard sees `as_of` move on a quiet night.
_HEARTBEAT_S = 15.0


def place_of(device: display_pb2.Device, field: str) -> Place:
    violations: list[tuple[str, str]] = []
    device_id = device.device_id.strip()
    if not device_id:
        violations.append((f"{field}.device_id", "the device id is required"))
    elif len(device_id) > 64 or not device_id.isprintable():
        violations.append((f"{field}.device_id", "1-64 printable characters"))
    place = device.place.strip()
    if len(place) > 200 or not place.isprintable():
        violations.append((f"{field}.place", "at most 200 printable characters"))
    if device.county:
        try:
            check_county(device.county, f"{field}.county")
        except InvalidArgument as bad:
            violations.extend(bad.violations)
    if violations:
        raise InvalidArgument(violations)
    # redact(): a place typed by staff must not smuggle a phone or ID number into the log.
    return Place(redact(device_id), redact(place), device.county)


def actor_label(actor: Actor) -> str:
    """Who acted, as logged: the role and the opaque principal or the masked ID number."""
    return f"{actor.role}:{actor.principal or actor.masked_id_number}"


def _temperature(request: display_pb2.ScanRequest) -> float | None:
    if not request.HasField("temperature_celsius"):
        return None
    t = request.temperature_celsius
    if not 30.0 <= t <= 45.0:
        raise InvalidArgument([("temperature_celsius", "a body temperature is 30.0-45.0 °C")])
    return float(t)


def counters_to_proto(c: DayCounters) -> display_pb2.WatchCountersResponse:
    response = display_pb2.WatchCountersResponse(
        day=format_day(c.day),
        displays=c.displays,
        scans=c.scans,
        applicants=c.applicants,
        displays_by_colour=common_pb2.ColourCounts(
            green=c.displays_by_colour[0],
            yellow=c.displays_by_colour[1],
            red=c.displays_by_colour[2],
        ),
        scans_by_colour=common_pb2.ColourCounts(
            green=c.scans_by_colour[0], yellow=c.scans_by_colour[1], red=c.scans_by_colour[2]
        ),
        total_displays=c.total_displays,
        total_applicants=c.total_applicants,
        total_scans=c.total_scans,
        refused_scans=c.refused_scans,
    )
    response.as_of.GetCurrentTime()
    return response


def _pause(context: grpc.ServicerContext, seconds: float) -> None:
    # Rate-limit updates without holding a cancelled stream's thread for a whole interval.
    end = time.monotonic() + seconds
    while context.is_active() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def _abort_refused(context: grpc.ServicerContext, error: TokenRefused) -> None:
    # The status code alone tells a scanner what to do; ErrorInfo.reason names the cause for
    # scanner software that shows its own message.
    code = status_code_of(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    status.details.append(info)
    if isinstance(error, InvalidArgument):
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in error.violations
                ]
            )
        )
        status.details.append(bad)
    assert status.code != code_pb2.OK
    context.abort_with_status(rpc_status.to_status(status))


class DisplayServicer(display_pb2_grpc.DisplayServiceServicer):
    def __init__(
        self,
        desk: DisplayDesk,
        log: DisplayLog,
        tokens: CodeTokens,
        identifiers: Identifiers,
    ) -> None:
        self._desk = desk
        self._log = log
        self._tokens = tokens
        self._identifiers = identifiers

    @grpc_errors
    def Show(
        self, request: display_pb2.ShowRequest, context: grpc.ServicerContext
    ) -> display_pb2.ShowResponse:
        actor = actor_from_proto(request.actor, self._identifiers)
        actor.require(_SHOW_ROLES, "show a code")
        key = person_from_proto(request.person, self._identifiers, "person").key
        if actor.role == Role.CITIZEN and actor.person_key != key:
            raise PermissionDenied("a citizen shows their own code; a proxy acts for others")
        where = place_of(request.device, "device")
        shown = self._desk.show(key, where, actor_label(actor))
        response = display_pb2.ShowResponse(
            verdict=shown.live.detail if shown.live.detail is not None else colour_pb2.Verdict(),
            masked_name=shown.holder.masked_name,
            masked_id_number=shown.holder.masked_id_number,
            token=shown.token,
            display_id=shown.display_id,
        )
        response.issued_at.FromMilliseconds(shown.claims.issued_at_ms)
        response.expires_at.FromMilliseconds(shown.claims.expires_at_ms)
        return response

    @grpc_errors
    def Scan(
        self, request: display_pb2.ScanRequest, context: grpc.ServicerContext
    ) -> display_pb2.ScanResponse:
        caller = actor_from_proto(request.actor, self._identifiers)
        caller.require(_SCAN_ROLES, "scan codes")
        where = place_of(request.device, "device")
        temperature = _temperature(request)
        actor = actor_label(caller)
        which = request.WhichOneof("credential")
        if which == "token":
            try:
                scanned = self._desk.scan(request.token, where, actor, temperature)
            except TokenRefused as error:
                _abort_refused(context, error)
                raise  # unreachable: abort raises
        elif which == "person":
            # Reading someone's colour from their ID card is staff work (代查, R10).
            caller.require({Role.VERIFIER}, "look people up by ID card")
            key = person_from_proto(request.person, self._identifiers, "person").key
            scanned = self._desk.look_up(key, where, actor, temperature)
        else:
            raise InvalidArgument([("credential", "give the scanned token or an ID card")])
        response = display_pb2.ScanResponse(
            verdict=scanned.live.detail
            if scanned.live.detail is not None
            else colour_pb2.Verdict(),
            masked_name=scanned.holder.masked_name,
            masked_id_number=scanned.holder.masked_id_number,
            temperature_alert=scanned.temperature_alert,
            scan_id=scanned.scan_id,
        )
        if scanned.claims is not None:
            response.token_issued_at.FromMilliseconds(scanned.claims.issued_at_ms)
        return response

    @grpc_errors
    def WatchCounters(
        self, request: display_pb2.WatchCountersRequest, context: grpc.ServicerContext
    ) -> Iterator[display_pb2.WatchCountersResponse]:
        fixed_day = parse_day(request.day, "day") if request.day else None
        interval_ms = request.min_interval_ms or 1000
        if not 100 <= interval_ms <= 60_000:
            raise InvalidArgument([("min_interval_ms", "100-60000, or 0 for 1000")])
        sequence = -1
        sent_day = None
        last_sent = 0.0
        while context.is_active():
            day = fixed_day if fixed_day is not None else today()
            # Short waits: a cancelled watcher frees its server thread within a second.
            counters = self._log.wait_for_change(day, sequence, timeout=1.0)
            now = time.monotonic()
            if counters.sequence != sequence or day != sent_day or now - last_sent >= _HEARTBEAT_S:
                yield counters_to_proto(counters)
                sequence, sent_day, last_sent = counters.sequence, day, now
                _pause(context, interval_ms / 1000)

    @grpc_errors
    def GetVerificationKey(
        self, request: display_pb2.GetVerificationKeyRequest, context: grpc.ServicerContext
    ) -> display_pb2.GetVerificationKeyResponse:
        return display_pb2.GetVerificationKeyResponse(
            ed25519_public_key=self._tokens.public_key, token_ttl_ms=self._tokens.ttl_ms
        )

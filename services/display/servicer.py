"""DisplayService: protos in, `DisplayDesk` calls, protos out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
from healthcode.v1 import colour_pb2, common_pb2, display_pb2, display_pb2_grpc

from services._common.auth import current_caller
from services._common.convert import actor_from_proto, person_from_proto
from services._common.days import format_day, parse_day, today
from services._common.errors import InvalidArgument, Overloaded
from services._common.identifiers import Identifiers
from services._common.status import grpc_errors
from services.display.contexts import context_of, decide, instruction
from services.display.counters import CounterSource
from services.display.logic import DisplayDesk, Place, Scanned, ScanSite, place
from services.display.store import DayCounters
from services.display.tokens import CodeTokens

SERVICE_NAME = display_pb2.DESCRIPTOR.services_by_name["DisplayService"].full_name

# WatchCounters sends at least this often, so a dashboard sees `as_of` move on a quiet night.
_HEARTBEAT_S = 15.0
# A WatchCounters stream holds a server thread while it lives: at most this many at once by
# default, so dashboards cannot take the threads Shows need (a display passes an eighth of them).
DEFAULT_MAX_WATCHERS = 8
# What a refused dashboard is told to wait before it tries again.
_WATCHER_RETRY_S = 5.0


def place_of(device: display_pb2.Device, field: str) -> Place:
    return place(device.device_id, device.place, device.county, field)


def verifier_verdict(full: colour_pb2.Verdict | None) -> colour_pb2.Verdict:
    """A verdict as a verifier may see it: the colour, its versions and the staleness of the
    feeds (never silent); no reasons, remedies, override or person key."""
    verdict = colour_pb2.Verdict()
    if full is not None:
        verdict.CopyFrom(full)
        # Only the holder, their proxies and the support desk see why (Show, Explain).
        verdict.ClearField("reasons")
        verdict.ClearField("remedies")
        verdict.ClearField("manual_override")
        verdict.ClearField("person_key")
        verdict.ClearField("reasons_shed")
    return verdict


def scan_to_proto(scanned: Scanned, context: str) -> display_pb2.ScanResponse:
    """The answer to a scan in `context`: the decision there, the colour and the masked name
    (the masked ID number only at a staff desk, which holds the ID card)."""
    colour = scanned.live.colour if scanned.live.colour is not None else 2
    decision = decide(context, colour, scanned.temperature_alert)
    response = display_pb2.ScanResponse(
        verdict=verifier_verdict(scanned.live.detail),
        masked_name=scanned.holder.masked_name,
        masked_id_number=scanned.holder.masked_id_number if context == "staff_desk" else "",
        temperature_alert=scanned.temperature_alert,
        scan_id=scanned.scan_id,
        decision=int(decision),  # type: ignore[arg-type]  # Decision numbers are the enum's
        context=context,
        instruction=instruction(context, decision),
    )
    if scanned.claims is not None:
        response.token_issued_at.FromMilliseconds(scanned.claims.issued_at_ms)
    return response


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


class DisplayServicer(display_pb2_grpc.DisplayServiceServicer):
    def __init__(
        self,
        desk: DisplayDesk,
        counters: CounterSource,
        tokens: CodeTokens,
        identifiers: Identifiers,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
    ) -> None:
        """`counters`: the display log itself (one process) or the sum over every worker's.
        `max_watchers`: WatchCounters streams at once; past it one is refused with RetryInfo."""
        self._desk = desk
        self._counters = counters
        self._tokens = tokens
        self._identifiers = identifiers
        self.max_watchers = max_watchers
        self._watchers = threading.BoundedSemaphore(max_watchers)

    @grpc_errors
    def Show(
        self, request: display_pb2.ShowRequest, context: grpc.ServicerContext
    ) -> display_pb2.ShowResponse:
        actor = actor_from_proto(request.actor, self._identifiers)
        key = person_from_proto(request.person, self._identifiers, "person").key
        shown = self._desk.show(
            actor, key, place_of(request.device, "device"), request.min_index_version
        )
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
        actor = actor_from_proto(request.actor, self._identifiers)
        where = place_of(request.device, "device")
        temperature = (
            request.temperature_celsius if request.HasField("temperature_celsius") else None
        )
        # The verifier's context decides what the answer holds; it is logged with the scan.
        context = context_of(current_caller())
        site = ScanSite(context)
        which = request.WhichOneof("credential")
        if which == "token":
            scanned = self._desk.scan(actor, request.token, where, temperature, site)
        elif which == "person":
            key = person_from_proto(request.person, self._identifiers, "person").key
            scanned = self._desk.look_up(actor, key, where, temperature, site)
        else:
            raise InvalidArgument([("credential", "give the scanned token or an ID card")])
        return scan_to_proto(scanned, context)

    @grpc_errors
    def WatchCounters(
        self, request: display_pb2.WatchCountersRequest, context: grpc.ServicerContext
    ) -> Iterator[display_pb2.WatchCountersResponse]:
        fixed_day = parse_day(request.day, "day") if request.day else None
        interval_ms = request.min_interval_ms or 1000
        if not 100 <= interval_ms <= 60_000:
            raise InvalidArgument([("min_interval_ms", "100-60000, or 0 for 1000")])
        if not self._watchers.acquire(blocking=False):
            raise Overloaded(
                f"{self.max_watchers} WatchCounters streams are open, the most this display "
                f"serves at once; close one or retry in {_WATCHER_RETRY_S:.0f} s",
                _WATCHER_RETRY_S,
            )
        # Freed when the call ends, a cancel included, as grpc learns of it: the handler itself
        # notices a cancel only at its next wake-up, up to a second later, and a dashboard that
        # reconnects at once must not find its own old stream still counted.
        if not context.add_callback(self._watchers.release):
            self._watchers.release()  # ended already
            return
        yield from self._watch_counters(fixed_day, interval_ms, context)

    def _watch_counters(
        self, fixed_day: int | None, interval_ms: int, context: grpc.ServicerContext
    ) -> Iterator[display_pb2.WatchCountersResponse]:
        sequence = -1
        sent_day = None
        last_sent = 0.0
        while context.is_active():
            day = fixed_day if fixed_day is not None else today()
            # Short waits: a cancelled watcher frees its server thread within a second.
            counters = self._counters.wait_for_change(day, sequence, timeout=1.0)
            now = time.monotonic()
            if counters.sequence != sequence or day != sent_day or now - last_sent >= _HEARTBEAT_S:
                yield counters_to_proto(counters)
                sequence, sent_day, last_sent = counters.sequence, day, now
                _pause(context, interval_ms / 1000)

    @grpc_errors
    def GetVerificationKey(
        self, request: display_pb2.GetVerificationKeyRequest, context: grpc.ServicerContext
    ) -> display_pb2.GetVerificationKeyResponse:
        keys = self._tokens.verification_keys()
        signer = keys[0]
        response = display_pb2.GetVerificationKeyResponse(
            ed25519_public_key=signer.public_key,
            token_ttl_ms=self._tokens.ttl_ms,
            key_id=signer.key_id,
        )
        for key in keys:
            published = response.keys.add(
                key_id=key.key_id, ed25519_public_key=key.public_key, signing=key is signer
            )
            published.not_before.FromMilliseconds(key.created_at_ms)
            if key.not_after_ms is not None:
                published.not_after.FromMilliseconds(key.not_after_ms)
        return response

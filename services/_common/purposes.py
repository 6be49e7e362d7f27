"""Purpose limitation for partners (issue 11, item 11; GB/T 38962): each partner kind looks people
up for one purpose only, and a holder may withdraw a partner's access. Shared by the services
that serve partner look-ups (the display's PartnerService, the colour service's EvaluateStream)
and the declaration service, which records the look-ups and the holders' decisions
(services/declaration/consent.py)."""

from __future__ import annotations

from services._common.errors import PermissionDenied

TRIAGE, BUS, EXAM = "triage", "bus", "exam"
# Each partner kind's one purpose; kinds not named here look no one up (cold chain and other
# provinces have their own doors, ColdChainService and ProvinceExchangeService).
PURPOSE_OF_KIND: dict[str, str] = {
    "hospital": TRIAGE,
    "bus_operator": BUS,
    "exam_organiser": EXAM,
}
# The kind a verifier's workplace stands for when a verifier looks someone up as a partner does.
KIND_OF_WORKPLACE: dict[str, str] = {
    "hospital": "hospital",
    "bus": "bus_operator",
    "exam": "exam_organiser",
}


class ConsentRevoked(PermissionDenied):
    """The holder withdrew this partner's access to them."""

    reason = "CONSENT_REVOKED"


class PurposeNotAllowed(PermissionDenied):
    """A partner looked someone up for a purpose that is not its kind's own."""

    reason = "PURPOSE_NOT_ALLOWED"


def check_purpose(kind: str, purpose: str, who: str = "this partner") -> None:
    """PurposeNotAllowed unless `purpose` is the partner kind's own."""
    own = PURPOSE_OF_KIND.get(kind)
    if own == purpose:
        return
    does = f"may look people up only for {own}" if own else "looks no one up by name"
    raise PurposeNotAllowed(
        f"{who} is a {kind or 'partner of no known kind'}, which {does}, not for {purpose} "
        "(purpose limitation, GB/T 38962): each partner kind uses its own door"
    )

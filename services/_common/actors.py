"""Who acts: the caller's role and identity as the domain records it (never a raw number)."""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from services._common.errors import PermissionDenied


class Role(enum.StrEnum):
    """The roles of MISSION.md's privacy section, plus platform services calling each other."""

    CITIZEN = "citizen"
    FAMILY_PROXY = "family_proxy"
    GRID_WORKER = "grid_worker"
    VERIFIER = "verifier"
    FEED = "feed"
    PARTNER = "partner"
    ADMIN = "admin"
    SERVICE = "service"
    SUPPORT = "support"


# Who acts for someone else: only for the people an active mandate links them to (R3).
PROXY_ROLES = frozenset({Role.FAMILY_PROXY, Role.GRID_WORKER})


class NoMandate(PermissionDenied):
    """A family proxy or grid worker acted for someone no active mandate links them to."""

    reason = "NO_MANDATE"


@dataclass(frozen=True, slots=True)
class Actor:
    """A validated caller. `person_key`/`masked_id_number` are set for citizens and family
    proxies (who they are); `principal` is an opaque account id for everyone else."""

    role: Role
    principal: str = ""
    person_key: bytes | None = None
    masked_id_number: str = ""

    def require(self, allowed: Collection[Role], action: str) -> None:
        """PermissionDenied unless the role may perform `action`."""
        if self.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDenied(
                f"{action} needs one of the roles {names}; caller is {self.role}"
            )

    def acts_for(self, person_key: bytes, allowed: Collection[Role], action: str) -> None:
        """PermissionDenied unless the role may perform `action` for this person: a citizen
        only for themself (a family member acts as family_proxy, staff in a staff role)."""
        self.require(allowed, action)
        if self.role is Role.CITIZEN and self.person_key != person_key:
            raise PermissionDenied(
                f"a citizen may {action} only for themself; a family member acts as family_proxy"
            )

    @property
    def is_proxy(self) -> bool:
        """A family proxy or grid worker: acts for others, through mandates only."""
        return self.role in PROXY_ROLES

    def proxy_name(self) -> str:
        """Who the proxy is, as logged and told: a family proxy by their masked ID number (a
        person; by the start of their person key when only that is known), a grid worker by
        their account id."""
        if self.role is Role.FAMILY_PROXY:
            return f"{self.role} {proxy_person_label(self.masked_id_number, self.person_key)}"
        return f"{self.role} {self.principal}"


def proxy_person_label(masked_id_number: str, person_key: bytes | None) -> str:
    """A family proxy as logged: the masked ID number, else `key:` and the person key's first
    8 hex digits (a keyed hash: no number can be read back from it)."""
    if masked_id_number:
        return masked_id_number
    return f"key:{person_key.hex()[:8]}" if person_key else "(unnamed)"


def check_not_self(actor: Actor, person_key: bytes, action: str) -> None:
    """PermissionDenied when a family proxy names themself as the person: a person acts for
    themself as citizen (no mandate links anyone to themself)."""
    if actor.role is Role.FAMILY_PROXY and actor.person_key == person_key:
        raise PermissionDenied(f"to {action} for yourself, act as citizen, not as family_proxy")


def no_mandate(actor: Actor, action: str) -> NoMandate:
    """The refusal of a proxy's act for someone no active mandate links them to, saying how to
    get one."""
    return NoMandate(
        f"{actor.proxy_name()} may not {action}: no active mandate links them to that person. "
        "A proxy acts only for the people linked to them: a mandate is recorded when the proxy "
        "registers the person, or granted by the person themself or an administrator "
        "(`healthcode mandate grant`); `healthcode mandate list` shows whether one was revoked "
        "or has expired"
    )


# The platform's own services act as SERVICE; tests and tools may reuse this.
SYSTEM = Actor(Role.SERVICE, "healthcode")

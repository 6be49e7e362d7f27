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


# The platform's own services act as SERVICE; tests and tools may reuse this.
SYSTEM = Actor(Role.SERVICE, "healthcode")

"""Signing in (AccountService): an ID number, a one-time code sent to a phone registered to that
person, and a bearer token in return (services/_common/auth.py issues it).

Codes live in memory: they last five minutes, and a restart merely means asking for a new one.
Only the code's SHA-256 is kept, compared in constant time; five wrong tries end a code, and a
person may ask for a new code once every 30 seconds. The reply to a code request is the same
whether or not the phone belongs to the person, so it tells no one whose phone is whose.

The SMS gateway is the deployment's (an operator's SMS API). HEALTHCODE_SMS=reply, for
development and tests only, puts the code in the reply instead; without a gateway, code requests
fail with FAILED_PRECONDITION saying so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2
from healthcode.v1 import account_pb2, account_pb2_grpc

from services._common.actors import Actor, Role
from services._common.auth import (
    PERSON_TOKEN_TTL,
    STAFF_TOKEN_TTL,
    VERIFIER_CONTEXTS,
    TokenIssuer,
)
from services._common.convert import actor_from_proto
from services._common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from services._common.identifiers import Identifiers
from services._common.status import grpc_errors
from services.declaration.repository import DeclarationRepository

logger = logging.getLogger(__name__)

SERVICE_NAME = "healthcode.v1.AccountService"
CODE_TTL_S = 300
RESEND_AFTER_S = 30
MAX_TRIES = 5
CODE_DIGITS = 6


class SignInRefused(InvalidArgument):
    """A wrong, expired or used code (one message for all: it tells an attacker nothing)."""

    reason = "SIGN_IN_REFUSED"

    def __init__(self) -> None:
        super().__init__(
            [("code", "this code is wrong, expired or used up: ask for a new one")],
        )


@dataclass
class _Code:
    digest: bytes
    expires: float
    sent: float
    tries: int = 0


class SignInDesk:
    """One-time codes and the tokens they are exchanged for."""

    def __init__(
        self,
        repository: DeclarationRepository,
        identifiers: Identifiers,
        issuer: TokenIssuer | None,
        send_sms: Callable[[str, str], None] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repository
        self._ids = identifiers
        self._issuer = issuer
        self._send = send_sms  # (masked phone, code); None: development reply
        self._clock = clock
        self._codes: dict[bytes, _Code] = {}
        self._lock = threading.Lock()

    def request_code(self, id_number: str, phone: str) -> tuple[str, str]:
        """(masked phone, the code for a development reply or "")."""
        person = self._ids.person(id_number, "id_number")
        mobile = self._ids.phone(phone, "phone")
        if self._send is _no_gateway:  # before anything about the phone is looked at
            _no_gateway(mobile.masked, "")
        now = self._clock()
        with self._lock:
            earlier = self._codes.get(person.key)
            if earlier is not None and now - earlier.sent < RESEND_AFTER_S:
                wait = RESEND_AFTER_S - (now - earlier.sent)
                raise ResourceExhausted(f"a code was sent just now: ask again in {wait:.0f} s")
        # Whose phone this is decides whether a code goes out; the answer does not say.
        if self._repo.phone_holder(mobile.key) != person.key:
            logger.info("sign-in code asked for a phone not registered to %s", person.masked)
            return mobile.masked, ""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        with self._lock:
            self._codes[person.key] = _Code(_digest(code), now + CODE_TTL_S, now)
            if len(self._codes) > 1_000_000:  # a flood of requests: drop the expired
                self._codes = {k: c for k, c in self._codes.items() if c.expires > now}
        if self._send is None:
            return mobile.masked, code
        self._send(mobile.masked, code)
        return mobile.masked, ""

    def sign_in(self, id_number: str, code: str) -> tuple[str, dt.datetime, str]:
        """(token, when it expires, masked ID number) for a right code."""
        person = self._ids.person(id_number, "id_number")
        if not (len(code) == CODE_DIGITS and code.isdigit()):
            raise InvalidArgument([("code", f"the {CODE_DIGITS} digits from the SMS")])
        if self._issuer is None:
            raise FailedPrecondition("this service holds no token issuer key (issuer.key)")
        now = self._clock()
        with self._lock:
            held = self._codes.get(person.key)
            # A spent code stays until replaced, so the wait before a new one still holds.
            if held is None or held.expires <= now or held.tries >= MAX_TRIES:
                raise SignInRefused
            if not hmac.compare_digest(held.digest, _digest(code)):
                held.tries += 1
                raise SignInRefused
            del self._codes[person.key]  # used once
        token = self._issuer.person(person.key, person.masked, PERSON_TOKEN_TTL)
        expires = dt.datetime.now(dt.UTC) + PERSON_TOKEN_TTL
        logger.info("signed in: %s", person.masked)
        return token, expires, person.masked


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode("ascii")).digest()


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, desk: SignInDesk, staff: StaffDesk) -> None:
        self._desk = desk
        self._staff = staff

    @grpc_errors
    def SignInStaff(
        self, request: account_pb2.SignInStaffRequest, context: grpc.ServicerContext
    ) -> account_pb2.SignInStaffResponse:
        token, expires, role, where = self._staff.sign_in(request.principal, request.password)
        at = timestamp_pb2.Timestamp()
        at.FromDatetime(expires)
        return account_pb2.SignInStaffResponse(
            token=token, expires_at=at, role=staff_role_to_proto(role), context=where
        )

    @grpc_errors
    def CreateStaffAccount(
        self, request: account_pb2.CreateStaffAccountRequest, context: grpc.ServicerContext
    ) -> account_pb2.CreateStaffAccountResponse:
        created = self._staff.create(
            actor_from_proto(request.actor, None),
            request.principal.strip(),
            staff_role_from_proto(request.role),
            request.context.strip(),
            request.password,
        )
        return account_pb2.CreateStaffAccountResponse(created=created)

    @grpc_errors
    def DisableStaffAccount(
        self, request: account_pb2.DisableStaffAccountRequest, context: grpc.ServicerContext
    ) -> account_pb2.DisableStaffAccountResponse:
        disabled = self._staff.disable(
            actor_from_proto(request.actor, None), request.principal.strip(), request.reason
        )
        return account_pb2.DisableStaffAccountResponse(disabled=disabled)

    @grpc_errors
    def RequestSignInCode(
        self, request: account_pb2.RequestSignInCodeRequest, context: grpc.ServicerContext
    ) -> account_pb2.RequestSignInCodeResponse:
        masked, code = self._desk.request_code(request.id_number, request.phone)
        return account_pb2.RequestSignInCodeResponse(
            expires_in_s=CODE_TTL_S, masked_phone=masked, development_code=code
        )

    @grpc_errors
    def SignIn(
        self, request: account_pb2.SignInRequest, context: grpc.ServicerContext
    ) -> account_pb2.SignInResponse:
        token, expires, masked = self._desk.sign_in(request.id_number, request.code.strip())
        at = timestamp_pb2.Timestamp()
        at.FromDatetime(expires)
        return account_pb2.SignInResponse(token=token, expires_at=at, masked_id_number=masked)


def sms_sender(setting: str) -> Callable[[str, str], None] | None:
    """The SMS gateway HEALTHCODE_SMS names: `reply` (development: the code goes back in the
    reply, so None here), or `none` (no gateway: code requests are refused)."""
    if setting == "reply":
        logger.warning("HEALTHCODE_SMS=reply: sign-in codes are returned in replies (development)")
        return None

    if setting == "none":
        return _no_gateway
    raise ValueError(f"HEALTHCODE_SMS: {setting!r} is not a gateway this build knows (reply, none)")


def _no_gateway(_masked_phone: str, _code: str) -> None:
    raise FailedPrecondition("no SMS gateway is configured (HEALTHCODE_SMS); codes cannot be sent")


# --- staff accounts -------------------------------------------------------------------------

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 256
# Failed staff sign-ins per account before it must wait (in memory: a restart forgives).
MAX_STAFF_FAILURES = 10
STAFF_LOCKOUT_S = 900.0
# scrypt's cost: about 50 ms a try here, and 16 MiB of memory.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
_STAFF_ROLES = {
    account_pb2.STAFF_ROLE_GRID_WORKER: Role.GRID_WORKER,
    account_pb2.STAFF_ROLE_VERIFIER: Role.VERIFIER,
    account_pb2.STAFF_ROLE_SUPPORT: Role.SUPPORT,
    account_pb2.STAFF_ROLE_ADMIN: Role.ADMIN,
}
_STAFF_ROLE_PROTO = {role: value for value, role in _STAFF_ROLES.items()}


class StaffSignInRefused(Unauthenticated):
    """A wrong account or password (one message for both)."""

    reason = "SIGN_IN_REFUSED"

    def __init__(self) -> None:
        super().__init__("no such account, or a wrong password")


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)  # type: ignore[arg-type]


class StaffDesk:
    """Staff accounts (the administrator's) and their sign-in."""

    def __init__(
        self,
        repository: DeclarationRepository,
        issuer: TokenIssuer | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repository
        self._issuer = issuer
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def create(self, actor: Actor, principal: str, role: Role, context: str, password: str) -> bool:
        actor.require((Role.ADMIN,), "create staff accounts")
        problems = _account_problems(principal, role, context)
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            problems.append(
                ("password", f"{MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
            )
        if problems:
            raise InvalidArgument(problems)
        salt = secrets.token_bytes(16)
        created = self._repo.save_staff_account(
            principal,
            role.value,
            context,
            _hash_password(password, salt),
            salt,
            int(time.time() * 1000),
            actor.principal,
        )
        logger.info(
            "staff account %s %s as %s by %s",
            principal,
            "created" if created else "reset",
            role.value,
            actor.principal,
        )
        return created

    def disable(self, actor: Actor, principal: str, reason: str) -> bool:
        actor.require((Role.ADMIN,), "disable staff accounts")
        done = self._repo.disable_staff_account(principal, int(time.time() * 1000), reason[:500])
        if done is None:
            raise NotFound(f"no staff account {principal!r}")
        logger.info("staff account %s disabled by %s", principal, actor.principal)
        return done

    def sign_in(self, principal: str, password: str) -> tuple[str, dt.datetime, Role, str]:
        """(token, when it expires, role, context) for the right password."""
        if self._issuer is None:
            raise FailedPrecondition("this service holds no token issuer key (issuer.key)")
        now = self._clock()
        with self._lock:
            recent = [t for t in self._failures.get(principal, []) if now - t < STAFF_LOCKOUT_S]
            self._failures[principal] = recent
            if len(recent) >= MAX_STAFF_FAILURES:
                raise ResourceExhausted(
                    f"too many failed sign-ins for this account: try again in "
                    f"{STAFF_LOCKOUT_S - (now - recent[0]):.0f} s"
                )
        account = self._repo.staff_account(principal) if principal else None
        # Hash even for an unknown account, so the time taken does not say which exist.
        salt = account.salt if account is not None else b"\0" * 16
        tried = _hash_password(password, salt)
        if (
            account is None
            or account.disabled
            or not hmac.compare_digest(tried, account.password_hash)
        ):
            with self._lock:
                self._failures.setdefault(principal, []).append(now)
            logger.info("staff sign-in refused for %r", principal[:64])
            raise StaffSignInRefused
        with self._lock:
            self._failures.pop(principal, None)
        role = Role(account.role)
        token = self._issuer.staff(role, principal, account.context, STAFF_TOKEN_TTL)
        logger.info("staff signed in: %s as %s", principal, role.value)
        return token, dt.datetime.now(dt.UTC) + STAFF_TOKEN_TTL, role, account.context


def _account_problems(principal: str, role: Role, context: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not (1 <= len(principal) <= 64) or not all(c.isalnum() or c in "-_." for c in principal):
        problems.append(("principal", "1 to 64 letters, digits, '-', '_' or '.'"))
    elif principal.isdigit() and len(principal) >= 11:
        problems.append(("principal", "an account id, not an ID or phone number"))
    if role is Role.VERIFIER and context not in VERIFIER_CONTEXTS:
        problems.append(
            ("context", f"a verifier works at one of {', '.join(sorted(VERIFIER_CONTEXTS))}")
        )
    if role is not Role.VERIFIER and context:
        problems.append(("context", "only a verifier's account names a workplace"))
    return problems


def staff_role_from_proto(value: int) -> Role:
    role = _STAFF_ROLES.get(value)  # type: ignore[call-overload]
    if role is None:
        raise InvalidArgument([("role", "grid_worker, verifier, support or admin")])
    return role


def staff_role_to_proto(role: Role) -> account_pb2.StaffRole.ValueType:
    return _STAFF_ROLE_PROTO[role]

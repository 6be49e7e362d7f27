"""How the CLI, the demo, the load generator and the tests prove who they are to the platform.

Every connection is mutual TLS with the client's certificate (an *edge* identity: it relays the
calls of people and staff), and every call carries a bearer token naming who acts:

- `HEALTHCODE_TOKEN`: a token from the platform's sign-in (a person, or a staff account); or
- the operator's own issuer: where the client can read the issuer key (`make run`'s development
  credentials, or an operator's workstation holding the deployment's key), it signs itself a
  short-lived token for exactly the actor each request names. This is how the CLI keeps working
  out of the box; a client without the key cannot claim anyone.

Settings: HEALTHCODE_CREDENTIALS (the directory with ca.pem, <identity>.pem/.key and, for an
operator, issuer.key), default <HEALTHCODE_DATA_DIR>/credentials; HEALTHCODE_TLS_IDENTITY (default
`cli`); HEALTHCODE_INSECURE=1 for a development stack started without TLS.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from healthcode.v1 import common_pb2

from services._common.actors import Role
from services._common.auth import (
    PERSON_TOKEN_TTL,
    Security,
    TokenIssuer,
)
from services._common.config import SECRET_BYTES, SECRET_FILE, ConfigError
from services._common.convert import role_from_proto

# A staff token minted for a request lives this long (then a new one is minted).
_MINTED_TTL = dt.timedelta(minutes=10)
# The account an operator's own calls without an actor act as (status pages, counters).
OPERATOR = "operator"
# The person key of a token minted for an ID number that does not validate.
NOBODY = bytes(16)
# A verifier's workplace when the request does not say (tokens need one).
DEFAULT_VERIFIER_CONTEXT = "venue"


@dataclass
class ClientCredentials:
    """A client's certificate and where its bearer tokens come from."""

    security: Security
    issuer: TokenIssuer | None = None
    secret: bytes | None = field(default=None, repr=False)  # keys a person's ID number
    token: str | None = field(default=None, repr=False)
    verifier_context: str = DEFAULT_VERIFIER_CONTEXT
    # The kind a partner token minted here names (exam_organiser, hospital, ...): a partner
    # relayed by token is held to its kind's purpose like one known by its certificate.
    partner_context: str = ""
    _minted: dict[bytes, tuple[str, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _identifiers: Any = field(default=None, repr=False)

    @classmethod
    def load(
        cls, directory: Path, identity: str = "cli", secret: bytes | None = None
    ) -> ClientCredentials:
        security = Security.load(directory, identity)
        return cls(security, security.issuer(), secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientCredentials | None:
        """From the environment; None for an insecure development stack."""
        env = os.environ if env is None else env
        if env.get("HEALTHCODE_INSECURE", "").strip() in {"1", "true", "yes"}:
            return None
        data_dir = Path(env.get("HEALTHCODE_DATA_DIR", "./data"))
        directory = Path(env.get("HEALTHCODE_CREDENTIALS", "") or data_dir / "credentials")
        if not (directory / "ca.pem").exists():
            raise ConfigError(
                f"no platform credentials at {directory}: set HEALTHCODE_DATA_DIR to the data "
                "directory `make run` printed, or HEALTHCODE_CREDENTIALS to a credentials "
                "directory (ca.pem, cli.pem, cli.key)"
            )
        creds = cls.load(directory, env.get("HEALTHCODE_TLS_IDENTITY", "") or "cli")
        creds.token = env.get("HEALTHCODE_TOKEN", "").strip() or None
        creds.secret = _read_secret(env, data_dir)
        return creds

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return self.security.channel_credentials()

    def token_for(self, actor: common_pb2.Actor | None) -> str | None:
        """The bearer token for a request acting as `actor` (None: the client's own)."""
        if self.token is not None or self.issuer is None:
            return self.token
        role = role_from_proto(actor.role) if actor is not None else None
        if actor is None or role is None or role is Role.SERVICE:
            # No actor: the operator's own call. A service is a certificate, never a token;
            # an unknown role: the server says what is wrong.
            return self._mint(b"operator", lambda i: i.staff(Role.ADMIN, OPERATOR))
        if role in (Role.CITIZEN, Role.FAMILY_PROXY):
            person_key, masked = self._person(actor.person)
            if person_key is None:
                # An ID number that does not validate: a token for nobody (all zeros) gets the
                # request past the door, and the service then names the bad field.
                person_key = NOBODY
            key = person_key
            return self._mint(b"p" + key, lambda i: i.person(key, masked, PERSON_TOKEN_TTL))
        principal = actor.principal.strip()
        if not principal:
            return self._mint(b"operator", lambda i: i.staff(Role.ADMIN, OPERATOR))
        context = {Role.VERIFIER: self.verifier_context, Role.PARTNER: self.partner_context}.get(
            role, ""
        )
        key = f"{role.value}\0{principal}\0{context}".encode()
        return self._mint(key, lambda i: i.staff(role, principal, context, _MINTED_TTL))

    def _mint(self, key: bytes, make: Callable[[TokenIssuer], str]) -> str:
        now = time.monotonic()
        hit = self._minted.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        assert self.issuer is not None
        try:
            token = make(self.issuer)
        except ValueError:
            token = self.issuer.staff(Role.ADMIN, OPERATOR)
        with self._lock:
            if len(self._minted) > 100_000:
                self._minted.clear()
            # Renewed well before it expires (the shortest lifetime minted is 10 minutes).
            self._minted[key] = (token, now + 300)
        return token

    def _person(self, ref: common_pb2.PersonRef) -> tuple[bytes | None, str]:
        """The person key and masked ID number a reference names (None: it names none)."""
        which = ref.WhichOneof("ref")
        if which == "person_key":
            return (bytes(ref.person_key) if len(ref.person_key) == 16 else None), ""
        if which != "id_number" or self.secret is None:
            return None, ""
        if self._identifiers is None:
            from services._common.identifiers import Identifiers  # the native matcher

            self._identifiers = Identifiers.from_secret(self.secret)
        try:
            who = self._identifiers.person(ref.id_number, "actor.person")
        except Exception:  # noqa: BLE001 - an invalid number: the server names the field
            return None, ""
        return bytes(who.key), str(who.masked)


def _read_secret(env: Mapping[str, str], data_dir: Path) -> bytes | None:
    """The deployment secret, where an operator's client may read it (never created here)."""
    raw = env.get("HEALTHCODE_SECRET", "").strip()
    if raw:
        try:
            return bytes.fromhex(raw)
        except ValueError:
            raise ConfigError("HEALTHCODE_SECRET: not hexadecimal") from None
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_bytes()
    except OSError:
        return None
    return secret if len(secret) == SECRET_BYTES else None


# --- the stacks this process started, by address --------------------------------------------

_BY_TARGET: dict[str, ClientCredentials | None] = {}


def register(targets: list[str], credentials: ClientCredentials | None) -> None:
    """Reach `targets` with `credentials` (None: plain text) from this process: a stack started
    here (the demo, a test) registers its services, so every channel to them just works."""
    for target in targets:
        _BY_TARGET[target] = credentials


def forget(targets: list[str]) -> None:
    for target in targets:
        _BY_TARGET.pop(target, None)


def for_target(target: str) -> ClientCredentials | None:
    """The credentials for `target`: a registered stack's, else the environment's. The
    environment's are read once per setting and then kept, so what a command sets on them (a
    verifier's workplace, a partner's kind) holds for every channel it opens."""
    if target in _BY_TARGET:
        return _BY_TARGET[target]
    settings = tuple(os.environ.get(name, "") for name in _CREDENTIAL_SETTINGS)
    if settings not in _FROM_ENV:
        _FROM_ENV[settings] = ClientCredentials.from_env()
    return _FROM_ENV[settings]


# What the environment's credentials are read from (ClientCredentials.from_env).
_CREDENTIAL_SETTINGS = (
    "HEALTHCODE_INSECURE",
    "HEALTHCODE_DATA_DIR",
    "HEALTHCODE_CREDENTIALS",
    "HEALTHCODE_TLS_IDENTITY",
    "HEALTHCODE_TOKEN",
    "HEALTHCODE_SECRET",
    "HEALTHCODE_SECRET_FILE",
)
_FROM_ENV: dict[tuple[str, ...], ClientCredentials | None] = {}


# --- the interceptor ------------------------------------------------------------------------


class CallDetails(NamedTuple):
    """A client call's details with one field changed (grpc's own type is abstract); the
    deadline interceptor in clients/channel.py uses it too."""

    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any

    @classmethod
    def of(cls, details: grpc.ClientCallDetails, **changes: Any) -> grpc.ClientCallDetails:
        fields = {
            "method": details.method,
            "timeout": details.timeout,
            "metadata": details.metadata,
            "credentials": details.credentials,
            "wait_for_ready": getattr(details, "wait_for_ready", None),
            "compression": getattr(details, "compression", None),
        }
        return cls(**{**fields, **changes})  # type: ignore[return-value]


def _with_token(details: grpc.ClientCallDetails, token: str | None) -> grpc.ClientCallDetails:
    if token is None:
        return details
    metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
    return CallDetails.of(details, metadata=metadata)


def _actor_of(request: Any) -> common_pb2.Actor | None:
    actor = getattr(request, "actor", None)
    return actor if isinstance(actor, common_pb2.Actor) else None


class BearerTokens(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Attach the bearer token for the actor each request names (a stream: its first message)."""

    def __init__(self, credentials: ClientCredentials) -> None:
        self._creds = credentials

    def _unary(self, details: Any, request: Any) -> Any:
        return _with_token(details, self._creds.token_for(_actor_of(request)))

    def _stream(self, details: Any, requests: Iterator[Any]) -> tuple[Any, Iterator[Any]]:
        iterator = iter(requests)
        try:
            first = next(iterator)
        except StopIteration:
            return _with_token(details, self._creds.token_for(None)), iter(())
        return _with_token(details, self._creds.token_for(_actor_of(first))), chain(
            [first], iterator
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._unary(details, request), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._unary(details, request), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        details, requests = self._stream(details, requests)
        return continuation(details, requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        details, requests = self._stream(details, requests)
        return continuation(details, requests)

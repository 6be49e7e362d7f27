"""Who is calling: the caller comes from its credential, never from the request body (issue 10).

Two credentials, checked by `AuthInterceptor` before any handler runs:

- **Mutual TLS** for processes. Every connection presents a certificate from the deployment's CA
  (services/_common/pki.py); its SPIFFE ID names a platform service, a feed, a partner, or an
  edge (the gateway, the CLI, a load generator) that relays people's and staff's calls.
- **Bearer tokens** for people and staff: a short-lived JWT (EdDSA, PyJWT) in the `authorization`
  metadata, signed by the platform's issuer and checked against its published keys (a JWKS file,
  so keys rotate: every key that may still verify is listed, each by its `kid`). A token names a
  person (by person key and masked ID number: a citizen, who may also act as a family proxy) or a
  staff account with its role (grid worker, verifier with its context, support desk, admin).

The interceptor then applies the one table of who may call what (services/_common/access.py):
a role not listed gets PERMISSION_DENIED before the handler runs, so a refused call changes
nothing. The handler reads the caller with `current_caller()`; `convert.actor_from_proto` refuses a
body whose actor claims anyone else.

A server built without `Security` (in-process unit tests) has no interceptor; the services
themselves refuse to start without credentials unless HEALTHCODE_INSECURE=1 says otherwise.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services._common.access import ACCESS, ANY_CALLER, SIGN_IN
from services._common.actors import Actor, Role
from services._common.config import ConfigError
from services._common.errors import DomainError, PermissionDenied, Unauthenticated
from services._common.pki import CA_CERT, TRUST_DOMAIN
from services._common.status import to_status

logger = logging.getLogger(__name__)

ISSUER = "healthcode"
AUDIENCE = "healthcode"
ISSUER_KEY = "issuer.key"  # the signing key: only where tokens are issued
ISSUER_KEYS = "issuer-keys.json"  # the published verification keys (JWKS): every process
# Short-lived: a stolen token is worth a quarter of an hour; apps fetch a new one before then.
PERSON_TOKEN_TTL = dt.timedelta(minutes=15)
STAFF_TOKEN_TTL = dt.timedelta(hours=8)  # a verifier's shift
MAX_TOKEN_TTL = STAFF_TOKEN_TTL
# Where a verifier works: what their scans may show is decided by it (issue 11).
VERIFIER_CONTEXTS = frozenset({"bus", "exam", "hospital", "venue", "staff_desk"})
PARTNER_KINDS = frozenset(
    {"hospital", "cold_chain", "other_province", "exam_organiser", "bus_operator"}
)
# The roles a token may carry. Platform services are certificates only; a token for a feed or
# partner serves one behind a relay (the gateway).
TOKEN_ROLES = frozenset(Role) - {Role.SERVICE, Role.FAMILY_PROXY}


class ReasonedUnauthenticated(Unauthenticated):
    reason = "UNAUTHENTICATED"


class RoleNotAllowed(PermissionDenied):
    """The credential's role is not in the access table for this method."""

    reason = "ROLE_NOT_ALLOWED"


class ActorMismatch(PermissionDenied):
    """The request body claims an actor other than the credential's."""

    reason = "ACTOR_NOT_CREDENTIAL"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller. `role` is the credential's: CITIZEN for a person's token (who may
    also act as family proxy), SERVICE / FEED / PARTNER for a certificate."""

    role: Role
    principal: str = ""
    person_key: bytes | None = None
    masked_id_number: str = ""
    context: str = ""  # a verifier's workplace, a partner's kind
    peer: str = ""  # the SPIFFE ID of the connection it came over

    @property
    def roles(self) -> frozenset[Role]:
        """The roles this caller may act in."""
        if self.role is Role.CITIZEN:
            return frozenset({Role.CITIZEN, Role.FAMILY_PROXY})
        return frozenset({self.role})

    def actor(self) -> Actor:
        return Actor(self.role, self.principal, self.person_key, self.masked_id_number)

    def describe(self) -> str:
        if self.person_key is not None:
            return f"person {self.masked_id_number or self.person_key.hex()[:8]}"
        where = f" ({self.context})" if self.context else ""
        return f"{self.role.value} {self.principal!r}{where}"


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the call this thread is handling; None where no credentials are checked."""
    return _CALLER.get()


def caller_from_spiffe(spiffe_id: str) -> Caller | None:
    """The caller a certificate names on its own; None for an edge (it relays tokens)."""
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    if not spiffe_id.startswith(prefix):
        raise ReasonedUnauthenticated(f"certificate identity {spiffe_id!r} is not of this platform")
    parts = spiffe_id[len(prefix) :].split("/")
    kind, rest = parts[0], parts[1:]
    if kind == "service" and len(rest) == 1 and rest[0]:
        return Caller(Role.SERVICE, rest[0], peer=spiffe_id)
    if kind == "feed" and len(rest) == 1 and rest[0]:
        return Caller(Role.FEED, rest[0], peer=spiffe_id)
    if kind == "partner" and len(rest) == 2 and rest[0] in PARTNER_KINDS and rest[1]:
        return Caller(Role.PARTNER, rest[1], context=rest[0], peer=spiffe_id)
    if kind == "edge" and len(rest) == 1 and rest[0]:
        return None
    raise ReasonedUnauthenticated(f"certificate identity {spiffe_id!r} is not understood")


# --- signing keys -------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    jwk: dict[str, str] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public_key))
    jwk.update(kid=key_id(public_key), use="sig", alg="EdDSA")
    return jwk


def create_issuer_keys(directory: Path) -> str:
    """An issuer signing key in `directory` (issuer.key, mode 0600) and its public key in
    issuer-keys.json, unless they exist. Returns the signing key's kid."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / ISSUER_KEY
    if key_path.exists():
        return key_id(_load_private(key_path).public_key())
    return rotate_issuer_key(directory)


def rotate_issuer_key(directory: Path) -> str:
    """A new signing key; the previous public keys stay published (tokens they signed stay
    valid until they expire, MAX_TOKEN_TTL at most) and are dropped after that. Returns the new
    key's kid."""
    key = Ed25519PrivateKey.generate()
    published = _read_jwks(directory / ISSUER_KEYS)
    now = int(time.time())
    kept = [k for k in published if int(k.get("retired_at", now)) + _max_ttl_s() > now]
    for k in kept:
        k.setdefault("retired_at", now)
    kept.append(_jwk(key.public_key()))
    tmp = directory / f".{ISSUER_KEYS}.tmp"
    tmp.write_text(json.dumps({"keys": kept}, indent=2) + "\n", encoding="utf-8")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_tmp = directory / f".{ISSUER_KEY}.tmp"
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    # Publish the new public key first: a token signed by the new key must never meet a
    # verifier that does not know it yet.
    tmp.replace(directory / ISSUER_KEYS)
    key_tmp.replace(directory / ISSUER_KEY)
    return key_id(key.public_key())


def _max_ttl_s() -> int:
    return int(MAX_TOKEN_TTL.total_seconds())


def _read_jwks(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable key set ({e})") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ConfigError(f"{path}: no 'keys' list")
    return [k for k in keys if isinstance(k, dict)]


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable private key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


class TokenIssuer:
    """Signs bearer tokens with the issuer key (the login service, and operators' tools)."""

    def __init__(self, directory: Path) -> None:
        self._key = _load_private(directory / ISSUER_KEY)
        self.kid = key_id(self._key.public_key())

    def _sign(self, claims: dict[str, Any], ttl: dt.timedelta) -> str:
        now = int(time.time())
        claims.update(
            iss=ISSUER, aud=AUDIENCE, iat=now, exp=now + int(ttl.total_seconds()),
            jti=secrets.token_hex(8),
        )  # fmt: skip
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})

    def person(
        self, person_key: bytes, masked_id_number: str, ttl: dt.timedelta = PERSON_TOKEN_TTL
    ) -> str:
        """A person's token: they act as themself (citizen) or for those they hold a mandate
        for (family proxy)."""
        claims = {"sub": person_key.hex(), "role": Role.CITIZEN.value, "masked": masked_id_number}
        return self._sign(claims, ttl)

    def staff(
        self, role: Role, principal: str, context: str = "", ttl: dt.timedelta = STAFF_TOKEN_TTL
    ) -> str:
        """A staff account's (or a relayed feed's or partner's) token."""
        if role not in TOKEN_ROLES or role is Role.CITIZEN:
            raise ValueError(f"no staff token for role {role}")
        if not principal:
            raise ValueError("a staff token names its account")
        if role is Role.VERIFIER and context not in VERIFIER_CONTEXTS:
            raise ValueError(f"a verifier works in one of {sorted(VERIFIER_CONTEXTS)}")
        claims = {"sub": principal, "role": role.value}
        if context:
            claims["ctx"] = context
        return self._sign(claims, ttl)


class TokenVerifier:
    """Checks bearer tokens against the published keys (re-read when a token names a kid not
    seen yet, so a rotation needs no restart). Verified tokens are remembered until they
    expire: a person's app shows its code many times with one token."""

    CACHE_MAX = 200_000

    def __init__(self, keys_path: Path) -> None:
        self._path = keys_path
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._loaded_mtime = -1.0
        self._cache: dict[str, tuple[Caller, float]] = {}
        self._reload()
        if not self._keys:
            raise ConfigError(f"{keys_path}: no token verification keys")

    def _reload(self) -> None:
        try:
            mtime = self._path.stat().st_mtime
        except FileNotFoundError:
            raise ConfigError(f"{self._path}: the issuer's published keys are missing") from None
        if mtime == self._loaded_mtime:
            return
        keys: dict[str, Any] = {}
        for jwk in _read_jwks(self._path):
            kid = jwk.get("kid")
            if isinstance(kid, str):
                keys[kid] = jwt.PyJWK.from_dict(jwk, algorithm="EdDSA")
        self._keys, self._loaded_mtime = keys, mtime

    def verify(self, token: str, peer: str) -> Caller:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0] if hit[0].peer == peer else _with_peer(hit[0], peer)
        caller, exp = self._verify(token, peer)
        with self._lock:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache = {t: v for t, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= self.CACHE_MAX:
                    self._cache.clear()
            self._cache[token] = (caller, exp)
        return caller

    def _verify(self, token: str, peer: str) -> tuple[Caller, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise ReasonedUnauthenticated("the bearer token is not a JWT") from None
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            with self._lock:
                self._reload()
            key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise ReasonedUnauthenticated(
                "the bearer token is signed by a key this platform does not publish"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError:
            raise ReasonedUnauthenticated("the bearer token has expired: sign in again") from None
        except jwt.PyJWTError as e:
            raise ReasonedUnauthenticated(f"the bearer token is not valid ({e})") from None
        return _caller_from_claims(claims, peer), float(claims["exp"])


def _with_peer(caller: Caller, peer: str) -> Caller:
    return Caller(
        caller.role, caller.principal, caller.person_key, caller.masked_id_number,
        caller.context, peer,
    )  # fmt: skip


def _caller_from_claims(claims: Mapping[str, Any], peer: str) -> Caller:
    try:
        role = Role(claims["role"])
    except ValueError:
        raise ReasonedUnauthenticated("the bearer token names an unknown role") from None
    if role not in TOKEN_ROLES:
        raise ReasonedUnauthenticated(f"a bearer token cannot carry the role {role}")
    sub = str(claims["sub"])
    if role is Role.CITIZEN:
        try:
            person_key = bytes.fromhex(sub)
        except ValueError:
            raise ReasonedUnauthenticated("the bearer token names no person") from None
        if len(person_key) != 16:
            raise ReasonedUnauthenticated("the bearer token names no person")
        return Caller(role, "", person_key, str(claims.get("masked", "")), peer=peer)
    return Caller(role, sub, context=str(claims.get("ctx", "")), peer=peer)


# --- the server side ----------------------------------------------------------------------


def _metadata_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("ascii", "replace")
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise ReasonedUnauthenticated("authorization metadata should be 'Bearer <token>'")
            return token.strip()
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticate every call, apply the access table, and set `current_caller()` for the
    handler. Refusals happen before the handler, so they change nothing."""

    def __init__(
        self, verifier: TokenVerifier, access: Mapping[str, frozenset[Role]] = ACCESS
    ) -> None:
        self._verifier = verifier
        self._access = access

    def authenticate(self, context: grpc.ServicerContext) -> Caller | None:
        """The caller, or None for an edge connection without a token (health checks only)."""
        ids = context.auth_context().get("peer_spiffe_id")
        if not ids:
            raise ReasonedUnauthenticated("the connection presents no platform certificate")
        peer = ids[0].decode("ascii", "replace")
        token = _metadata_token(context)
        if token is not None:
            return self._verifier.verify(token, peer)
        return caller_from_spiffe(peer)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        allowed = self._access.get(method)
        if allowed is None:
            if method.startswith(ANY_CALLER):
                allowed = frozenset(Role)
            else:
                # Not in the table: nobody may call it (the matrix test keeps the table whole).
                allowed = frozenset()
        return _wrap(handler, self, method, allowed)

    def admit(
        self, context: grpc.ServicerContext, method: str, allowed: frozenset[Role]
    ) -> Caller | None:
        try:
            caller = self.authenticate(context)
            if caller is None:
                if method.startswith(ANY_CALLER) or method in SIGN_IN:
                    return None
                raise ReasonedUnauthenticated(
                    "this connection relays people's and staff's calls: send "
                    "'authorization: Bearer <token>' (sign in first)"
                )
            if not (caller.roles & allowed):
                names = ", ".join(sorted(r.value for r in allowed)) or "nobody"
                raise RoleNotAllowed(
                    f"{method.rsplit('/', 1)[-1]} may be called by {names}; "
                    f"the credential is {caller.describe()}"
                )
        except DomainError as error:
            context.abort_with_status(to_status(error))
        return caller


def _wrap(
    handler: grpc.RpcMethodHandler,
    auth: AuthInterceptor,
    method: str,
    allowed: frozenset[Role],
) -> grpc.RpcMethodHandler:
    def unary(behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            token = _CALLER.set(auth.admit(context, method, allowed))
            try:
                return behaviour(request, context)
            finally:
                _CALLER.reset(token)

        return call

    def streaming(behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            caller = auth.admit(context, method, allowed)
            # The response iterator runs after this returns: set the caller around each step.
            responses = iter(behaviour(request, context))
            while True:
                token = _CALLER.set(caller)
                try:
                    item = next(responses)
                except StopIteration:
                    return
                finally:
                    _CALLER.reset(token)
                yield item

        return call

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Security:
    """A process's credentials: the CA it trusts, its own certificate, and the token keys.

    HEALTHCODE_CREDENTIALS names a directory (a mounted Kubernetes Secret, or the development
    one `make run` creates in its data directory) holding ca.pem, <identity>.pem/.key, and
    issuer-keys.json (plus issuer.key where tokens are issued). HEALTHCODE_TLS_IDENTITY picks
    the certificate (default: the service's own name). HEALTHCODE_INSECURE=1 runs without TLS
    and takes the role from the request body: for development only, and said so in the log."""

    directory: Path
    identity: str
    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)

    @classmethod
    def load(cls, directory: Path, identity: str) -> Security:
        files = {
            "CA": directory / CA_CERT,
            "certificate": directory / f"{identity}.pem",
            "key": directory / f"{identity}.key",
        }
        data: dict[str, bytes] = {}
        for what, path in files.items():
            try:
                data[what] = path.read_bytes()
            except OSError:
                raise ConfigError(
                    f"HEALTHCODE_CREDENTIALS: no {what} at {path} (make one with "
                    f"`python deploy/make_credentials.py {directory}`, mount the deployment's, or "
                    "set HEALTHCODE_INSECURE=1 for a development run without TLS)"
                ) from None
        return cls(directory, identity, data["CA"], data["certificate"], data["key"])

    @classmethod
    def from_env(
        cls, data_dir: Path, identity: str, env: Mapping[str, str] | None = None
    ) -> Security | None:
        """The process's credentials, or None when HEALTHCODE_INSECURE=1."""
        env = os.environ if env is None else env
        if env.get("HEALTHCODE_INSECURE", "").strip() in {"1", "true", "yes"}:
            return None
        directory = Path(env.get("HEALTHCODE_CREDENTIALS", "") or data_dir / "credentials")
        return cls.load(directory, env.get("HEALTHCODE_TLS_IDENTITY", "") or identity)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.directory / ISSUER_KEYS)

    def interceptor(self) -> AuthInterceptor:
        return AuthInterceptor(self.verifier())

    def issuer(self) -> TokenIssuer | None:
        """The token issuer, where this process holds the signing key."""
        if not (self.directory / ISSUER_KEY).exists():
            return None
        return TokenIssuer(self.directory)


def balanced(target: str, options: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """The channel options for `target`: a target that names several replicas (`dns:///` of a
    headless Service, or an `ipv4:` list) spreads calls over all of them (round robin) instead
    of sending every call to the first (gRPC's default, pick_first)."""
    options = [*(options or [])]
    several = target.startswith(("dns:", "ipv4:", "ipv6:"))
    if several and not any(k == "grpc.lb_policy_name" for k, _ in options):
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options


def secure_channel(
    target: str, security: Security | None, options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A channel to a peer: mutual TLS with this process's certificate, or plain text in an
    insecure development run (options: `balanced`)."""
    options = balanced(target, options)
    if security is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, security.channel_credentials(), options=options)


# --- this process ------------------------------------------------------------------------

_PROCESS_SECURITY: Security | None = None


def setup_security(identity: str, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
    """Load this service process's credentials once, at start (ConfigError naming what is
    missing). Its server and every channel it opens to a peer use them."""
    global _PROCESS_SECURITY
    _PROCESS_SECURITY = Security.from_env(data_dir, identity, env)
    if _PROCESS_SECURITY is None:
        logger.warning(
            "HEALTHCODE_INSECURE=1: plain-text ports, and callers' roles are taken from request "
            "bodies: a development run only"
        )
    else:
        logger.info("mutual TLS as %s, credentials from %s", identity, _PROCESS_SECURITY.directory)


def process_security() -> Security | None:
    """The credentials `setup_security` loaded (None: none loaded, or an insecure run)."""
    return _PROCESS_SECURITY

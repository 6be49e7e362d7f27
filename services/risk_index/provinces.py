"""Cross-province status exchange (R6, issue 11 item 10): Beijing and Hebei as in the seed.

**The agreed hash** and the province table are shared with the declaration service:
services/_common/exchange.py (`exchange_hash`, the keys in `<data_dir>/province-keys`).

**Where our side gets it.** A keyed hash of the raw number cannot be computed from what the
platform keeps (person keys, masked forms), so it is computed where an ID number passes: the
declaration service computes every configured province's hash at Register and for every row
of a bulk import, and they reach the risk index with the registration itself, through its
durable outbox (RegisterPerson / RegisterPeople `exchange_hashes`), stored in
`exchange_hashes` (province, hash, person key, masked ID) in the same transaction.
`EnrolExchangeHashes` (`healthcode province enrol PEOPLE.csv`, the same file `healthcode
import` reads) stays for people registered before that, or before a province was configured:
it takes ID numbers, computes the hashes here and drops the numbers at once.

**Export** evaluates every enrolled person with `shared_only` (the colour service's
EvaluateStream over person keys): only rules of scope shared, so a rule local to this city (the
seed's Dalian case, and the `province-*` rules fed by imports) never reaches another province.

**Import** maps the other province's states through its table (provinces.toml) to
`province_red` / `province_yellow` rows for the people it names, through `RiskIndex.ingest_batch`
(the feed path, reused); unknown states take the province's default.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import healthcode_matcher
from healthcode.v1 import (
    cold_chain_pb2_grpc,
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    province_pb2,
    province_pb2_grpc,
)

from services._common import days
from services._common.actors import Actor, Role
from services._common.config import Peers
from services._common.convert import actor_from_proto
from services._common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services._common.exchange import (  # the shared part, re-exported for the risk index
    DEFAULT_PROVINCES,
    EXCHANGE_CONTEXT,
    EXCHANGE_KEY_BYTES,
    HASH_BYTES,
    PROVINCE_SOURCES,
    Province,
    exchange_hash,
    keys_dir,
    load_exchange_keys,
    load_provinces,
    log_key_ids,
    provinces_path,
    read_exchange_key,
)
from services._common.identifiers import Identifiers
from services._common.status import grpc_errors
from services._common.telemetry import instrumented_channel
from services.risk_index.cold_chain import SERVICE_NAME as COLD_CHAIN_SERVICE
from services.risk_index.cold_chain import (
    ColdChain,
    ColdChainServicer,
    partner_kind,
    require_partner_kind,
)
from services.risk_index.config import RiskIndexConfig
from services.risk_index.logic import RiskIndex, utc_now
from services.risk_index.model import RawRow
from services.risk_index.repository import RiskIndexRepository, keep_exchange_hashes

logger = logging.getLogger(__name__)

SERVICE_NAME = province_pb2.DESCRIPTOR.services_by_name["ProvinceExchangeService"].full_name
PARTNER_KIND = "other_province"
MAX_ENTRIES = 50_000
EXPORT_CHUNK = 10_000
# A list older than the rules' window (48 hours) colours nobody; a week refuses typos.
MAX_IMPORT_AGE_DAYS = 7
_BATCH_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
MAX_STATE_CHARS = 32

ENROL_ROLES = (Role.SERVICE, Role.ADMIN)
EXCHANGE_ROLES = (Role.PARTNER, Role.ADMIN)
LIST_ROLES = (Role.PARTNER, Role.ADMIN, Role.SUPPORT, Role.SERVICE)

__all__ = [
    "DEFAULT_PROVINCES",
    "EXCHANGE_CONTEXT",
    "EXCHANGE_KEY_BYTES",
    "HASH_BYTES",
    "PROVINCE_SOURCES",
    "Province",
    "ProvinceExchange",
    "ProvinceExchangeServicer",
    "exchange_hash",
    "load_exchange_keys",
    "load_provinces",
    "partner_exchange",
    "read_exchange_key",
]


# --- the colour service, for the export --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyedColours:
    colours: bytes  # one Colour number per key; 0 unknown to the colour service
    index_version: int
    rule_set_version: str
    day: str


class SharedColours(Protocol):
    """Colours of person keys under the shared rules only."""

    def __call__(self, person_keys: bytes) -> KeyedColours: ...


class ColourServiceColours:
    """SharedColours from the colour service's EvaluateStream (the batch form, person keys)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = colour_pb2_grpc.ColourServiceStub(channel)

    def __call__(self, person_keys: bytes) -> KeyedColours:
        request = colour_pb2.EvaluateStreamRequest(
            actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="risk_index"),
            correlation_id="export",
            shared_only=True,
            person_keys=person_keys,
        )
        try:
            answers = list(self._stub.EvaluateStream(iter([request]), timeout=60))
        except grpc.RpcError as e:
            code = e.code().name if isinstance(e, grpc.Call) else "failed"
            raise Unavailable(f"the colour service did not answer the export ({code})") from None
        answer = answers[0]
        return KeyedColours(
            bytes(answer.colours), answer.index_version, answer.rule_set_version, answer.day
        )


# --- the exchange -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportChunk:
    province: str
    hashes: bytes
    colours: bytes
    index_version: int
    rule_set_version: str
    day: str
    last: bool


@dataclass(slots=True)
class Imported:
    province: str
    index_version: int = 0
    matched: int = 0
    unmatched: int = 0
    ingested: dict[str, int] = field(default_factory=dict)
    unknown_states: int = 0
    replayed: bool = False


class ProvinceExchange:
    def __init__(
        self,
        risk_index: RiskIndex,
        repository: RiskIndexRepository,
        identifiers: Identifiers,
        provinces: Mapping[str, Province],
        keys: Mapping[str, bytes],
        colours: SharedColours,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._index = risk_index
        self._repo = repository
        self._ids = identifiers
        self.provinces = dict(provinces)
        self._keys = {c: k for c, k in keys.items() if c in provinces}
        self._colours = colours
        self._clock = clock

    def has_key(self, code: str) -> bool:
        return code in self._keys

    # -- enrolment -----------------------------------------------------------------------------

    def enrol(self, actor: Actor, id_numbers: Sequence[str]) -> tuple[int, list[tuple[int, str]]]:
        """Keep each valid ID number's hash for every province with a key (the number is not
        kept): (how many were enrolled, [(index, problem)])."""
        actor.require(ENROL_ROLES, "EnrolExchangeHashes")
        if len(id_numbers) > MAX_ENTRIES:
            raise InvalidArgument([("id_numbers", f"at most {MAX_ENTRIES:,} a call")])
        rows: list[tuple[str, bytes, bytes, str]] = []
        problems: list[tuple[int, str]] = []
        enrolled = 0
        for i, raw in enumerate(id_numbers):
            try:
                normalised = healthcode_matcher.normalise_id_number(raw)
            except ValueError as e:
                problems.append((i, str(e)))
                continue
            person = self._ids.person(normalised, f"id_numbers[{i}]")
            enrolled += 1
            for code, key in self._keys.items():
                rows.append((code, exchange_hash(key, normalised), person.key, person.masked))
        with self._repo.transaction() as conn:
            keep_exchange_hashes(conn, rows)
        return enrolled, problems

    # -- export --------------------------------------------------------------------------------

    def export(self, actor: Actor, requested: str) -> Iterator[ExportChunk]:
        """Every enrolled person's status for `province` under the shared rules, in chunks."""
        province = self._province(actor, requested, "ExportStatus")
        after = b""
        while True:
            with self._repo.reading() as conn:
                page = conn.execute(
                    "SELECT exchange_hash, person_key FROM exchange_hashes "
                    "WHERE province = ? AND exchange_hash > ? ORDER BY exchange_hash LIMIT ?",
                    (province.code, after, EXPORT_CHUNK),
                ).fetchall()
            last = len(page) < EXPORT_CHUNK
            if not page:
                yield ExportChunk(province.code, b"", b"", 0, "", "", True)
                return
            after = bytes(page[-1][0])
            answer = self._colours(b"".join(bytes(r[1]) for r in page))
            hashes = bytearray()
            colours = bytearray()
            for (hash_, _key), colour in zip(page, answer.colours, strict=True):
                # 0: unknown to the colour service (not in its index yet); no data is no status.
                if common_pb2.COLOUR_GREEN <= colour <= common_pb2.COLOUR_RED:
                    hashes += bytes(hash_)
                    colours.append(colour)
            yield ExportChunk(
                province.code,
                bytes(hashes),
                bytes(colours),
                answer.index_version,
                answer.rule_set_version,
                answer.day,
                last,
            )
            if last:
                return

    # -- import --------------------------------------------------------------------------------

    def import_status(
        self,
        actor: Actor,
        requested: str,
        batch_id: str,
        day_text: str,
        statuses: Sequence[tuple[bytes, str]],
    ) -> Imported:
        province = self._province(actor, requested, "ImportStatus")
        now = self._clock()
        today = days.today(now)
        violations: list[tuple[str, str]] = []
        if not _BATCH_ID.fullmatch(batch_id):
            violations.append(("batch_id", "1-64 characters: letters, digits, - _ . :"))
        day = today
        if day_text.strip():
            try:
                day = days.parse_day(
                    day_text, "day", today_day=today, max_age_days=MAX_IMPORT_AGE_DAYS
                )
            except InvalidArgument as bad:
                violations.extend(bad.violations)
        if len(statuses) > MAX_ENTRIES:
            violations.append(("statuses", f"at most {MAX_ENTRIES:,} a call; send several"))
        for i, (hash_, state) in enumerate(statuses[:MAX_ENTRIES]):
            if len(hash_) != HASH_BYTES:
                violations.append(
                    (f"statuses[{i}].exchange_hash", f"{HASH_BYTES} bytes, not {len(hash_)}")
                )
            if not state.strip() or len(state) > MAX_STATE_CHARS:
                violations.append(
                    (f"statuses[{i}].state", f"the state, 1-{MAX_STATE_CHARS} characters")
                )
        if violations:
            raise InvalidArgument(violations)
        digest = hashlib.sha256(f"{province.code}\0{day}\0".encode())
        for hash_, state in statuses:
            digest.update(hash_ + state.strip().lower().encode() + b"\0")
        with self._repo.reading() as conn:
            known = conn.execute(
                "SELECT province, digest, response FROM province_imports WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
        if known is not None:
            if known[0] != province.code or bytes(known[1]) != digest.digest():
                raise AlreadyExists(
                    f"list {batch_id!r} was imported before with other content; use a new id"
                )
            answer = province_pb2.ImportStatusResponse.FromString(bytes(known[2]))
            return Imported(
                answer.province,
                answer.index_version,
                answer.matched,
                answer.unmatched,
                dict(answer.ingested),
                answer.unknown_states,
                True,
            )

        people = self._people(province.code, [h for h, _ in statuses])
        result = Imported(province.code)
        rows: dict[str, list[RawRow]] = {}
        day_str = days.format_day(day)
        for hash_, state in statuses:
            source, named = province.source_for(state)
            result.unknown_states += not named
            person = people.get(bytes(hash_))
            if person is None:
                result.unmatched += 1
                continue
            result.matched += 1
            if source:
                rows.setdefault(source, []).append(
                    RawRow(subject="person_key", value=person[0], masked=person[1], day=day_str)
                )
        feed = Actor(Role.SERVICE, f"other_province/{province.code}")
        for source, source_rows in sorted(rows.items()):
            done = self._index.ingest_batch(
                feed, source, f"province:{province.code}:{batch_id}:{source}", source_rows
            )
            result.ingested[source] = done.row_count
            result.index_version = max(result.index_version, done.version)
        response = province_pb2.ImportStatusResponse(
            province=result.province,
            index_version=result.index_version,
            matched=result.matched,
            unmatched=result.unmatched,
            ingested=result.ingested,
            unknown_states=result.unknown_states,
        )
        with self._repo.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO province_imports (batch_id, province, digest, response) "
                "VALUES (?, ?, ?, ?)",
                (batch_id, province.code, digest.digest(), response.SerializeToString()),
            )
        logger.info(
            "province %s list %s: %d matched, %d not ours, %s -> version %d",
            province.code,
            batch_id,
            result.matched,
            result.unmatched,
            result.ingested,
            result.index_version,
        )
        return result

    def list_provinces(self, actor: Actor) -> list[Province]:
        require_partner_kind(actor, LIST_ROLES, {PARTNER_KIND}, "ListProvinces")
        return list(self.provinces.values())

    # -- internals -----------------------------------------------------------------------------

    def _province(self, actor: Actor, requested: str, action: str) -> Province:
        """The province a call is for: a province's partner acts for its own only."""
        require_partner_kind(actor, EXCHANGE_ROLES, {PARTNER_KIND}, action)
        code = requested.strip()
        if actor.role is Role.PARTNER:
            own = actor.principal
            if code and code != own:
                raise PermissionDenied(
                    f"the partner {own!r} exchanges its own province's status only, not {code!r}"
                )
            code = own
            if partner_kind(actor) is None and not code:
                raise InvalidArgument([("province", "name the province")])
        if not code:
            raise InvalidArgument([("province", "name the province (e.g. beijing, hebei)")])
        province = self.provinces.get(code)
        if province is None:
            known = ", ".join(sorted(self.provinces)) or "none"
            raise NotFound(f"province {code!r} is not configured (configured: {known})")
        if code not in self._keys:
            raise NotFound(
                f"no exchange key for {code!r}: install the key agreed with that province"
            )
        return province

    def _people(self, code: str, hashes: Sequence[bytes]) -> dict[bytes, tuple[bytes, str]]:
        out: dict[bytes, tuple[bytes, str]] = {}
        unique = list({bytes(h) for h in hashes})
        with self._repo.reading() as conn:
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                marks = ",".join("?" * len(part))
                for h, key, masked in conn.execute(
                    "SELECT exchange_hash, person_key, masked_id_number FROM exchange_hashes "
                    f"WHERE province = ? AND exchange_hash IN ({marks})",
                    (code, *part),
                ):
                    out[bytes(h)] = (bytes(key), str(masked))
        return out


# --- gRPC --------------------------------------------------------------------------------------


class ProvinceExchangeServicer(province_pb2_grpc.ProvinceExchangeServiceServicer):
    def __init__(self, exchange: ProvinceExchange, identifiers: Identifiers) -> None:
        self._x = exchange
        self._ids = identifiers

    @grpc_errors
    def EnrolExchangeHashes(
        self, request: province_pb2.EnrolExchangeHashesRequest, context: grpc.ServicerContext
    ) -> province_pb2.EnrolExchangeHashesResponse:
        actor = actor_from_proto(request.actor, self._ids)
        enrolled, problems = self._x.enrol(actor, list(request.id_numbers))
        return province_pb2.EnrolExchangeHashesResponse(
            enrolled=enrolled,
            provinces=sorted(c for c in self._x.provinces if self._x.has_key(c)),
            problems=[
                province_pb2.ExchangeEntryProblem(index=i, description=d) for i, d in problems
            ],
        )

    @grpc_errors
    def ExportStatus(
        self, request: province_pb2.ExportStatusRequest, context: grpc.ServicerContext
    ) -> Iterator[province_pb2.ExportStatusResponse]:
        actor = actor_from_proto(request.actor, self._ids)
        for chunk in self._x.export(actor, request.province):
            yield province_pb2.ExportStatusResponse(
                province=chunk.province,
                exchange_hashes=chunk.hashes,
                colours=chunk.colours,
                entry_count=len(chunk.colours),
                index_version=chunk.index_version,
                rule_set_version=chunk.rule_set_version,
                day=chunk.day,
                last_chunk=chunk.last,
            )

    @grpc_errors
    def ImportStatus(
        self, request: province_pb2.ImportStatusRequest, context: grpc.ServicerContext
    ) -> province_pb2.ImportStatusResponse:
        actor = actor_from_proto(request.actor, self._ids)
        done = self._x.import_status(
            actor,
            request.province,
            request.batch_id,
            request.day,
            [(bytes(s.exchange_hash), s.state) for s in request.statuses],
        )
        return province_pb2.ImportStatusResponse(
            province=done.province,
            index_version=done.index_version,
            matched=done.matched,
            unmatched=done.unmatched,
            ingested=done.ingested,
            unknown_states=done.unknown_states,
            replayed=done.replayed,
        )

    @grpc_errors
    def ListProvinces(
        self, request: province_pb2.ListProvincesRequest, context: grpc.ServicerContext
    ) -> province_pb2.ListProvincesResponse:
        actor = actor_from_proto(request.actor, self._ids)
        provinces = self._x.list_provinces(actor)
        return province_pb2.ListProvincesResponse(
            provinces=[
                province_pb2.ProvinceInfo(
                    code=p.code,
                    region=p.region,
                    name_zh=p.name_zh,
                    name_en=p.name_en,
                    recognition=p.recognition,
                    states=dict(p.states),
                    default_source=p.default_source,
                    has_key=self._x.has_key(p.code),
                )
                for p in provinces
            ]
        )


# --- wiring ------------------------------------------------------------------------------------


@dataclass
class PartnerExchange:
    """The risk index process's partner surfaces: cold chain and the province exchange."""

    cold_chain: ColdChainServicer
    provinces: ProvinceExchangeServicer
    channel: grpc.Channel
    service_names: tuple[str, ...] = (COLD_CHAIN_SERVICE, SERVICE_NAME)

    def add_to_server(self, server: grpc.Server) -> None:
        cold_chain_pb2_grpc.add_ColdChainServiceServicer_to_server(self.cold_chain, server)
        province_pb2_grpc.add_ProvinceExchangeServiceServicer_to_server(self.provinces, server)

    def close(self) -> None:
        self.channel.close()


def partner_exchange(
    config: RiskIndexConfig,
    risk_index: RiskIndex,
    repository: RiskIndexRepository,
    identifiers: Identifiers,
    env: Mapping[str, str] | None = None,
) -> PartnerExchange:
    """Build both services from the environment: the province table (HEALTHCODE_PROVINCES),
    the exchange keys (HEALTHCODE_PROVINCE_KEYS; made for a development data directory, i.e.
    unless HEALTHCODE_PROVINCE_KEYS names a directory), and a channel to the colour service for
    the export."""
    env = os.environ if env is None else env
    provinces = load_provinces(provinces_path(env))
    directory = keys_dir(config.platform.data_dir, env)
    keys = load_exchange_keys(
        directory, list(provinces), create=not env.get("HEALTHCODE_PROVINCE_KEYS", "").strip()
    )
    log_key_ids(keys)
    channel = instrumented_channel(Peers.from_env(env).colour)
    exchange = ProvinceExchange(
        risk_index, repository, identifiers, provinces, keys, ColourServiceColours(channel)
    )
    return PartnerExchange(
        ColdChainServicer(ColdChain(risk_index, repository, identifiers), identifiers),
        ProvinceExchangeServicer(exchange, identifiers),
        channel,
    )

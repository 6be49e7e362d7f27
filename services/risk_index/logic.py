"""The risk index: accepts changes (feed batches, county levels, the person/phone/card registry,
rule sets, the support desk's manual colour overrides), stores each durably under the number of
the version that will carry it, then builds and publishes that version of the matcher `Index`
for replicas to follow. No gRPC here.

Coalesced versions: with a publish interval (HEALTHCODE_RISK_INDEX_PUBLISH_INTERVAL_S, 1 s by
default), every change accepted within one interval is carried by the same next version, built
and published at most once per interval: a city registering hundreds of people a second makes
one version a second, not hundreds. With no interval each change publishes its own version at
once (as the unit tests use it). A write's answer names the version that carries it, so a reader
can ask for "at least version N" (read your writes).

Ordering: one writer lock covers "commit to the database" and "stage the change", and the
publisher takes it to build and publish, so version N's index is exactly version N-1's plus the
changes committed under N, in commit order. If building fails, the index is rebuilt from the
database, which already holds every staged change.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from healthcode.v1 import risk_index_pb2
from healthcode_matcher import Index, IndexBuilder, SnapshotError

from services._common import changes, days
from services._common.actors import Actor, Role
from services._common.days import check_county
from services._common.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from services._common.exchange import CODE as PROVINCE_CODE
from services._common.exchange import HASH_BYTES, MAX_HASHES_PER_PERSON, check_exchange_hashes
from services._common.identifiers import Identifiers, check_key
from services._common.memory import FreedMemory
from services._common.shared_keys import share_keys
from services._common.sources import SOURCES, Source
from services.risk_index.model import (
    IngestResult,
    KeyedPerson,
    OverridePage,
    OverrideRecord,
    RawRow,
    RegisteredPeople,
    SourceStats,
    State,
    bucket_hour,
)
from services.risk_index.repository import RiskIndexRepository
from services.risk_index.validation import (
    check_masked,
    check_people,
    check_reason,
    validate_batch,
)
from services.rules import RuleSetError, parse_rule_set

logger = logging.getLogger(__name__)

INGEST_ROLES = (Role.FEED, Role.SERVICE, Role.ADMIN)
COUNTY_ROLES = (Role.ADMIN, Role.FEED)
REGISTRY_ROLES = (Role.SERVICE, Role.ADMIN)
# The colour service publishes the rule sets an admin activates through it (it validates and
# tries them first); an admin may publish directly.
RULE_SET_ROLES = (Role.SERVICE, Role.ADMIN)

# Manual colour overrides (the support desk's correction after an appeal, issue 10): the
# support desk and administrators set, clear and read them; the credential's account is
# recorded in the override log.
OVERRIDE_ROLES = (Role.SUPPORT, Role.ADMIN)
# The longest an override may hold: an appeal's correction is looked at again within two weeks
# (the longest rule windows are 14 days). A longer one is set anew when it ends.
MAX_OVERRIDE = dt.timedelta(days=14)
# An override's reason is shown to the person with their colour.
OVERRIDE_REASON_CHARS = (5, 500)
# The matcher's colours (0 green, 1 yellow, 2 red) as the override log names them.
COLOUR_NAMES = ("green", "yellow", "red")
# ListOverrides pages.
DEFAULT_PAGE = 50
MAX_PAGE = 500

# Matcher county levels: 1 low, 2 medium, 3 high (0, "never graded", is not settable).
COUNTY_LEVELS = {1: "low", 2: "medium", 3: "high"}


def mask_account(principal: str) -> str:
    """A staff account as a person may see it: `desk-2` -> `de***2` (short ones starred)."""
    p = principal.strip()
    if len(p) <= 2:
        return "*" * max(1, len(p))
    if len(p) <= 4:
        return p[0] + "*" * (len(p) - 1)
    return p[:2] + "***" + p[-1]


def override_change(record: OverrideRecord) -> changes.Override:
    """A log entry as the replicas apply it: the actor masked, the colour as the matcher's."""
    colour = None if record.colour is None else COLOUR_NAMES.index(record.colour)
    actor = f"{record.actor_role} {mask_account(record.actor_principal)}"
    return changes.Override(
        record.person_key,
        colour,
        record.reason,
        record.valid_until,
        record.at,
        actor,
        record.seq,
    )


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class Published:
    """One published version: its number, when, and the immutable index."""

    version: int
    published_at: dt.datetime
    index: Index
    # The changes from the version before, in order; None for a version rebuilt from the
    # database (a replica then needs the snapshot).
    delta: tuple[changes.Change, ...] | None = None
    _snapshot: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> bytes:
        """`Index.to_bytes()`, computed once however many replicas watch."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = self.index.to_bytes()
            return self._snapshot


@dataclass(frozen=True)
class Delta:
    """The changes that make `version` from `from_version` (one or more versions' worth)."""

    from_version: int
    version: int
    published_at: dt.datetime
    changes: tuple[changes.Change, ...]

    @functools.cached_property
    def wire(self) -> risk_index_pb2.IndexDelta:
        """The delta as WatchIndex sends it (built once)."""
        return changes.to_proto(self.from_version, self.changes)


# A delta larger than this goes as the whole version instead (a replica's receive limit is
# 64 MiB): a replica far behind a busy feed. A bulk import's version (50,000 people with their
# phones and residence rows, about 4 MiB; two of them in one publish interval) must still go
# as a delta: at 18 M people the whole version is over a gigabyte.
MAX_DELTA_BYTES = 32 << 20
# How many versions' changes are kept for replicas that reconnect (about 10 minutes at one
# version a second); a replica further behind is sent a snapshot.
DELTA_HISTORY = 600
# ... and at most this many bytes of them (`changes.approx_bytes`): older changes could only
# go out in a delta over MAX_DELTA_BYTES, which is sent as a snapshot anyway. Counting versions
# alone kept a whole city's import in memory: at 50,000 people a version, 600 versions are
# 30 M people, about 2.8 GiB of the risk index's 4.1 GiB at 18 M (BENCHMARKS.md).
HISTORY_BYTES_PER_DELTA_BYTE = 2


class Publication:
    """The current version, the changes of recent versions, and a condition watchers wait on
    for the next one."""

    def __init__(self, first: Published, base: Delta | None = None) -> None:
        self._current = first
        self._changed = threading.Condition()
        self._closed = False
        # version -> the changes from the version before (only versions published as deltas),
        # oldest first, and their `changes.approx_bytes` in all.
        self._history: dict[int, tuple[changes.Change, ...]] = {}
        self._history_bytes = 0
        # After a start from a snapshot: the changes from the snapshot's version to the first
        # one, so replicas that hold the snapshot's version get a delta, not a whole index.
        self._base = base

    @property
    def current(self) -> Published:
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, published: Published) -> None:
        with self._changed:
            follows = published.version == self._current.version + 1
            if published.delta is not None and follows:
                self._history[published.version] = published.delta
                self._history_bytes += sum(map(changes.approx_bytes, published.delta))
                limit = MAX_DELTA_BYTES * HISTORY_BYTES_PER_DELTA_BYTE
                while len(self._history) > 1 and (
                    len(self._history) > DELTA_HISTORY or self._history_bytes > limit
                ):
                    oldest = next(iter(self._history))
                    dropped = self._history.pop(oldest)
                    self._history_bytes -= sum(map(changes.approx_bytes, dropped))
                    if self._base is not None and oldest == self._base.version + 1:
                        self._base = None  # the snapshot's tail no longer joins on
            else:
                self._history.clear()  # a rebuilt version: replicas need its snapshot
                self._history_bytes = 0
                self._base = None
            self._current = published
            self._changed.notify_all()

    def delta_since(self, held: int) -> Delta | None:
        """The changes from version `held` to the current one, if every version between is
        still kept; None otherwise (the replica needs a snapshot)."""
        with self._changed:
            current = self._current
            base = self._base
            start: tuple[changes.Change, ...] = ()
            after = held
            if base is not None and held == base.from_version < base.version:
                start, after = base.changes, base.version
            if not 0 <= held < current.version:
                return None
            steps = [self._history.get(v) for v in range(after + 1, current.version + 1)]
        if any(step is None for step in steps):
            return None
        joined = start + tuple(c for step in steps if step is not None for c in step)
        return Delta(held, current.version, current.published_at, joined)

    def wait_other(self, version: int, timeout: float) -> Published | None:
        """The current version if it differs from `version`, waiting up to `timeout` for one."""
        with self._changed:
            if self._current.version == version and not self._closed:
                self._changed.wait(timeout)
            return None if self._current.version == version else self._current

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class SourceView:
    """A catalogue entry with its live figures."""

    source: Source
    stats: SourceStats
    stale: bool


def build_index(secret: bytes, state: State) -> Index:
    """The whole index from the database's state (at start, or after a failed apply), numbered
    as the database's latest version so a replica sees one numbering."""
    builder = Index(secret).builder()
    for source in SOURCES.values():
        builder.define_source(source.name, source.keyed_by, source.has_county, hourly=source.hourly)
    for key in state.persons:
        builder.add_person_key(key)
    for phone in state.phones:
        holder = builder.add_person_key(phone.holder) if phone.holder is not None else None
        builder.add_phone_key(phone.key, holder)
    for card in state.cards:
        builder.add_card_key(card.key, builder.add_person_key(card.holder))
    for county, level in state.county_levels.items():
        builder.set_county_level(county, level)
    for rows in state.rows:
        _add_rows(
            builder, SOURCES[rows.source], bytes(rows.keys), rows.days, rows.counties, rows.hours
        )
    # Version 0 is the empty index: a new risk index publishes it with every source defined.
    return builder.finish(version=state.latest.version if state.latest is not None else 0)


def _add_rows(
    builder: IndexBuilder,
    source: Source,
    keys: bytes,
    row_days: Sequence[int | None],
    counties: Sequence[int],
    row_hours: Sequence[int | None],
) -> None:
    """Rows into the builder: by day for a daily source, by hour for an hourly one (a row
    without an hour counts from its day's 00:00)."""
    if not row_days:
        return
    county_list = list(counties) if source.has_county else None
    if source.hourly:
        hours = [bucket_hour(d, h) for d, h in zip(row_days, row_hours, strict=True)]
        builder.add_rows_by_key(source.name, keys, hours=hours, counties=county_list)
    else:
        builder.add_rows_by_key(source.name, keys, list(row_days), county_list)


class RiskIndex:
    """The service's domain: validated changes in, numbered index versions out."""

    def __init__(
        self,
        repository: RiskIndexRepository,
        identifiers: Identifiers,
        secret: bytes,
        *,
        max_batch_rows: int = 50_000,
        clock: Callable[[], dt.datetime] = utc_now,
        publish_interval_s: float = 0.0,
        snapshot_path: Path | None = None,
        snapshot_interval_s: float = 0.0,
        shared_keys_dir: Path | None = None,
    ) -> None:
        """`shared_keys_dir`: read the loaded index's keys from the machine's shared key
        files, one copy for this process and every replica (services/_common/shared_keys.py)."""
        self._repository = repository
        self._shared_keys_dir = shared_keys_dir
        self._identifiers = identifiers
        self._secret = secret
        self._max_batch_rows = max_batch_rows
        self._clock = clock
        self._write = threading.Lock()
        # The latest index written to disk, so a restart replays only the changes after it.
        self._snapshot_path = snapshot_path
        self._snapshot_version = -1
        self._restart_delta: Delta | None = None  # set by a start from a snapshot
        self._publication = Publication(self._rebuild(), self._restart_delta)
        # The rule set published last: every replica's stream starts with it.
        kept = repository.latest_rule_set()
        self._rule_set = None if kept is None else changes.RuleSet(*kept)
        # Each person's latest override (perhaps expired; a cleared one is dropped) and the
        # latest entry of the override log: every replica's stream starts with those in force.
        latest, last_seq = repository.latest_overrides()
        self._override_lock = threading.Lock()
        self._overrides = {r.person_key: override_change(r) for r in latest if r.action == "set"}
        self._override_seq = last_seq
        # Changes committed under the next version and not yet in a published index, in order.
        self._staged: list[changes.Change] = []
        self._freed = FreedMemory()
        self._interval = publish_interval_s
        self._staged_event = threading.Event()
        self._stopping = threading.Event()
        self._publisher: threading.Thread | None = None
        if publish_interval_s > 0:
            self._publisher = threading.Thread(
                target=self._publish_periodically, name="index-publisher", daemon=True
            )
            self._publisher.start()
        self._snapshotter: threading.Thread | None = None
        if snapshot_path is not None and snapshot_interval_s > 0:
            self._snapshotter = threading.Thread(
                target=self._snapshot_periodically,
                args=(snapshot_interval_s,),
                name="index-snapshots",
                daemon=True,
            )
            self._snapshotter.start()

    # -- reading -----------------------------------------------------------------------------

    @property
    def current(self) -> Published:
        return self._publication.current

    @property
    def accepted_version(self) -> int:
        """The version that carries every change accepted so far."""
        return self._next_version if self._staged else self.current.version

    def watch(
        self, known_version: int, is_active: Callable[[], bool]
    ) -> Iterator[Published | Delta]:
        """What a replica holding `known_version` needs to reach each new version: the changes
        since the version it holds while they are kept (a Delta), else the whole version (its
        Published, sent as a snapshot). A slow watcher skips to the latest in one step."""
        # 0 means "holds nothing": the empty index is version 0 too, and must still be sent.
        sent = known_version if known_version > 0 else -1
        current = self.current
        if sent == current.version:
            # "You are current": an empty delta, so a replica restarted from its own snapshot
            # knows it has caught up even when nothing new is published for a while.
            yield Delta(sent, sent, current.published_at, ())
        while is_active() and not self._publication.closed:
            published = self._publication.wait_other(sent, timeout=0.5)
            if published is None:
                continue
            delta = self._publication.delta_since(sent) if sent >= 0 else None
            if delta is not None and delta.wire.ByteSize() <= MAX_DELTA_BYTES:
                yield delta
                sent = delta.version
            else:
                yield published
                sent = published.version

    @property
    def rule_set(self) -> changes.RuleSet | None:
        """The rule set published last (None: never; replicas run their configured one)."""
        return self._rule_set

    def active_overrides(self) -> tuple[list[changes.Override], int]:
        """The overrides in force now, oldest first, and the latest override log entry they
        reflect (what a stream's first version carries)."""
        now = self._clock()
        with self._override_lock:
            active = [o for o in self._overrides.values() if o.active_at(now)]
            seq = self._override_seq
        return sorted(active, key=lambda o: o.seq), seq

    def list_sources(self) -> list[SourceView]:
        stats = self._repository.source_stats()
        now = self._clock()
        out = []
        for source in SOURCES.values():
            s = stats.get(source.name, SourceStats(0, 0, None))
            stale = s.last_updated is None or (
                now - s.last_updated > dt.timedelta(hours=source.max_staleness_hours)
            )
            out.append(SourceView(source, s, stale))
        return out

    # -- changes -----------------------------------------------------------------------------

    def ingest_batch(
        self,
        actor: Actor,
        source: str,
        batch_id: str,
        rows: Sequence[RawRow],
        replace: bool = False,
    ) -> IngestResult:
        """Validate every row, then store and publish; a replay returns the first answer."""
        actor.require(INGEST_ROLES, "IngestBatch")
        now = self._clock()
        batch = validate_batch(
            actor=actor,
            source_name=source,
            batch_id=batch_id,
            rows=rows,
            replace=replace,
            identifiers=self._identifiers,
            today=days.today(now),
            max_rows=self._max_batch_rows,
            now=now,
        )
        digest = batch.digest()
        with self._write:
            known = self._repository.find_batch(batch.batch_id)
            if known is not None:
                if known.digest != digest or known.source != batch.source:
                    raise AlreadyExists(
                        f"batch {batch.batch_id!r} was accepted before with other content "
                        f"(source {known.source!r}, {known.row_count} rows); use a new batch id"
                    )
                return IngestResult(
                    known.batch_id, known.version, known.row_count, True, known.received_at
                )
            version = self._repository.insert_batch(batch, digest, now, self._next_version)
            source_def = SOURCES[batch.source]
            self._stage(
                changes.Rows(
                    batch.source,
                    b"".join(r.key for r in batch.rows),
                    [
                        bucket_hour(r.day, r.hour) if source_def.hourly else r.day
                        for r in batch.rows
                    ],
                    [r.county or 0 for r in batch.rows] if source_def.has_county else None,
                    batch.replace,
                )
            )
        logger.info(
            "batch %s: %d rows of %s from %s -> version %d",
            batch.batch_id,
            len(batch.rows),
            batch.source,
            actor.role,
            version,
        )
        return IngestResult(batch.batch_id, version, len(batch.rows), False, now)

    def publish_rule_set(self, actor: Actor, text: str, filename: str) -> tuple[int, str]:
        """Publish a rule set to every replica with the next version: (that version, the rule
        set's own version). Publishing the rule set already published changes nothing."""
        actor.require(RULE_SET_ROLES, "PublishRuleSet")
        filename = filename.strip() or "rule_set.toml"
        if not text.strip():
            raise InvalidArgument([("text", "the rule-set text (TOML) is required")])
        try:
            rule_set = parse_rule_set(text, filename)
        except RuleSetError as error:
            raise InvalidArgument([(f"text: {p}", m) for p, m in error.violations]) from None
        with self._write:
            if self._rule_set is not None and self._rule_set.text == text:
                return self.accepted_version, rule_set.version
            version = self._repository.publish_rule_set(
                text, filename, self._clock(), self._next_version
            )
            self._rule_set = changes.RuleSet(text, filename)
            self._stage(self._rule_set)
        logger.info(
            "rule set %s (%s) published with version %d", rule_set.version, filename, version
        )
        return version, rule_set.version

    def override_colour(
        self,
        actor: Actor,
        person_key: bytes,
        colour: int | None,
        reason: str,
        valid_until: dt.datetime | None,
    ) -> OverrideRecord:
        """Set (or replace) a person's manual colour (`colour` the matcher's: 0 green, 1
        yellow, 2 red) until `valid_until`: logged, chained and carried by the next version.
        The stored entry names that version."""
        actor.require(OVERRIDE_ROLES, "OverrideColour")
        now = self._clock()
        violations: list[tuple[str, str]] = []
        key = self._override_key(person_key, violations)
        if colour not in (0, 1, 2):
            violations.append(("colour", "set GREEN, YELLOW or RED"))
        text = self._override_reason(reason, violations)
        if valid_until is None:
            violations.append(
                ("valid_until", "required: until when the override holds (at most 14 days)")
            )
        elif valid_until.tzinfo is None:
            violations.append(("valid_until", "a time must carry its offset (UTC or +08:00)"))
        elif valid_until <= now:
            violations.append(("valid_until", f"{valid_until.isoformat()} is not in the future"))
        elif valid_until > now + MAX_OVERRIDE:
            violations.append(
                (
                    "valid_until",
                    f"at most {MAX_OVERRIDE.days} days ahead; set a new override when it ends",
                )
            )
        if violations:
            raise InvalidArgument(violations)
        assert colour is not None and valid_until is not None
        masked = self._registered(key)
        with self._write:
            record = self._repository.append_override(
                action="set",
                person_key=key,
                masked_id_number=masked,
                colour=COLOUR_NAMES[colour],
                reason=text,
                valid_until=valid_until.astimezone(dt.UTC),
                actor_role=actor.role.value,
                actor_principal=actor.principal or actor.masked_id_number,
                now=now,
                version=self._next_version,
            )
            change = override_change(record)
            with self._override_lock:
                self._overrides[key] = change
                self._override_seq = record.seq
            self._stage(change)
        logger.info(
            "override %d: %s set %s until %s by %s %s -> version %d",
            record.seq,
            masked,
            record.colour,
            valid_until.isoformat(),
            actor.role,
            actor.principal,
            record.index_version,
        )
        return record

    def clear_override(self, actor: Actor, person_key: bytes, reason: str) -> OverrideRecord:
        """End a person's override in force, logged and carried by the next version;
        NotFound when none is in force."""
        actor.require(OVERRIDE_ROLES, "ClearOverride")
        violations: list[tuple[str, str]] = []
        key = self._override_key(person_key, violations)
        text = self._override_reason(reason, violations)
        if violations:
            raise InvalidArgument(violations)
        masked = self._registered(key)
        with self._write:
            now = self._clock()
            with self._override_lock:
                current = self._overrides.get(key)
            if current is None or not current.active_at(now):
                raise NotFound("this person has no manual colour override in force")
            record = self._repository.append_override(
                action="clear",
                person_key=key,
                masked_id_number=masked,
                colour=None,
                reason=text,
                valid_until=None,
                actor_role=actor.role.value,
                actor_principal=actor.principal or actor.masked_id_number,
                now=now,
                version=self._next_version,
            )
            change = override_change(record)
            with self._override_lock:
                self._overrides.pop(key, None)
                self._override_seq = record.seq
            self._stage(change)
        logger.info(
            "override %d: %s cleared (override %d) by %s %s -> version %d",
            record.seq,
            masked,
            current.seq,
            actor.role,
            actor.principal,
            record.index_version,
        )
        return record

    def list_overrides(
        self,
        actor: Actor,
        person_key: bytes | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> OverridePage:
        """A page of the override log, newest first, with the whole chain verified."""
        actor.require(OVERRIDE_ROLES, "ListOverrides")
        violations: list[tuple[str, str]] = []
        key = None if person_key is None else self._override_key(person_key, violations)
        size = page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            violations.append(("page_size", f"1-{MAX_PAGE}, or 0 for {DEFAULT_PAGE}"))
        before: int | None = None
        token = page_token.strip()
        if token:
            if not token.isascii() or not token.isdigit() or not 0 < int(token) < 2**62:
                violations.append(("page_token", "pass the next_page_token of an answer"))
            else:
                before = int(token)
        if violations:
            raise InvalidArgument(violations)
        entries = self._repository.override_entries(person_key=key, before=before, limit=size + 1)
        more = len(entries) > size
        entries = entries[:size]
        check = self._repository.verify_overrides()
        if not check.verified:
            logger.error("the override log does not verify: %s", check.problem)
        return OverridePage(entries, entries[-1].seq if more else None, check)

    def set_county_level(self, actor: Actor, county: int, level: int) -> int:
        actor.require(COUNTY_ROLES, "SetCountyLevel")
        violations = []
        try:
            check_county(county, "county")
        except InvalidArgument as error:
            violations.extend(error.violations)
        if level not in COUNTY_LEVELS:
            violations.append(("level", "set LOW, MEDIUM or HIGH"))
        if violations:
            raise InvalidArgument(violations)
        now = self._clock()
        with self._write:
            version = self._repository.set_county_level(county, level, now, self._next_version)
            if version is None:
                return self.current.version
            self._stage(changes.CountyLevel(county, level))
        logger.info("county %d -> %s, version %d", county, COUNTY_LEVELS[level], version)
        return version

    def register_person(
        self,
        actor: Actor,
        person_key: bytes,
        masked: str,
        exchange_hashes: Sequence[tuple[str, bytes]] = (),
    ) -> tuple[int, bool]:
        """Register a person by key, keeping the exchange hashes handed over with them (kept
        even for a person already known: a resend, or one first named by a phone link)."""
        actor.require(REGISTRY_ROLES, "RegisterPerson")
        key, masked = self._person(person_key, masked, "person_key", "masked_id_number")
        hashes = check_exchange_hashes(exchange_hashes, "exchange_hashes")
        now = self._clock()
        with self._write:
            version = self._repository.register_person(key, masked, now, self._next_version, hashes)
            if version is None:
                return self.current.version, False
            self._stage(changes.Persons(key))
        return version, True

    def link_phone(
        self,
        actor: Actor,
        person_key: bytes,
        masked_id_number: str,
        phone_key: bytes,
        masked_phone: str,
    ) -> int:
        actor.require(REGISTRY_ROLES, "LinkPhone")
        violations: list[tuple[str, str]] = []
        person = phone = None
        try:
            person = self._person(person_key, masked_id_number, "person_key", "masked_id_number")
        except InvalidArgument as error:
            violations.extend(error.violations)
        try:
            phone = (
                check_key(phone_key, "phone_key"),
                check_masked(masked_phone, "masked_phone"),
            )
        except InvalidArgument as error:
            violations.extend(error.violations)
        if violations or person is None or phone is None:
            raise InvalidArgument(violations)
        now = self._clock()
        with self._write:
            version = self._repository.link_phone(
                person[0], person[1], phone[0], phone[1], now, self._next_version
            )
            if version is None:
                return self.current.version
            self._stage(changes.Phones(phone[0], person[0]))
        return version

    def unlink_phone(self, actor: Actor, phone_key: bytes) -> tuple[int, bool]:
        actor.require(REGISTRY_ROLES, "UnlinkPhone")
        key = check_key(phone_key, "phone_key")
        now = self._clock()
        with self._write:
            version = self._repository.unlink_phone(key, now, self._next_version)
            if version is None:
                return self.current.version, False
            self._stage(changes.Unlink(key))
        return version, True

    def link_card(
        self,
        actor: Actor,
        person_key: bytes,
        masked_id_number: str,
        card_key: bytes,
        masked_card: str,
    ) -> int:
        actor.require(REGISTRY_ROLES, "LinkCard")
        violations: list[tuple[str, str]] = []
        person = card = None
        try:
            person = self._person(person_key, masked_id_number, "person_key", "masked_id_number")
        except InvalidArgument as error:
            violations.extend(error.violations)
        try:
            card = (check_key(card_key, "card_key"), check_masked(masked_card, "masked_card"))
        except InvalidArgument as error:
            violations.extend(error.violations)
        if violations or person is None or card is None:
            raise InvalidArgument(violations)
        now = self._clock()
        with self._write:
            version = self._repository.link_card(
                person[0], person[1], card[0], card[1], now, self._next_version
            )
            if version is None:
                return self.current.version
            self._stage(changes.Cards(card[0], person[0]))
        return version

    def register_people(self, actor: Actor, people: Sequence[KeyedPerson]) -> RegisteredPeople:
        """People with their phones and cards, in one change (the declaration service's bulk
        import). Every key and masked form is checked first; one bad entry refuses the call."""
        actor.require(REGISTRY_ROLES, "RegisterPeople")
        if len(people) > self._max_batch_rows:
            raise ResourceExhausted(
                f"{len(people)} people in one call; send at most {self._max_batch_rows}",
                [("people", f"at most {self._max_batch_rows} a call")],
            )
        checked = check_people(people)
        for i, person in enumerate(checked):
            if not _exchange_hashes_usable(person.exchange_hashes):
                check_exchange_hashes(person.exchange_hashes, f"people[{i}].exchange_hashes")
        now = self._clock()
        with self._write:
            created, linked, changed = self._repository.register_people(
                checked, now, self._next_version
            )
            if not changed:
                return RegisteredPeople(self.current.version, 0, 0)
            version = self._next_version
            staged: list[changes.Change] = [changes.Persons(b"".join(p.key for p in changed))]
            phones = [(k, p.key) for p in changed for k, _ in p.phones]
            if phones:
                staged.append(changes.Phones(*(b"".join(x) for x in zip(*phones, strict=True))))
            cards = [(k, p.key) for p in changed for k, _ in p.cards]
            if cards:
                staged.append(changes.Cards(*(b"".join(x) for x in zip(*cards, strict=True))))
            self._stage(*staged)
        logger.info(
            "%d people registered in bulk (%d new, %d links) -> version %d",
            len(checked),
            created,
            linked,
            version,
        )
        return RegisteredPeople(version, created, linked)

    def close(self) -> None:
        """Publish what is staged, stop the publisher, and wake and end every watcher (server
        shutdown)."""
        self._stopping.set()
        self._staged_event.set()
        for thread in (self._publisher, self._snapshotter):
            if thread is not None:
                thread.join(timeout=60)
        with self._write:
            self._publish_staged()
        self._publication.close()
        try:
            self.write_snapshot()  # the next start replays nothing
        except Exception:
            logger.exception("writing the index snapshot at stop failed")

    def flush(self) -> int:
        """Publish every staged change now; the current version."""
        with self._write:
            self._publish_staged()
        return self.current.version

    # -- internals ---------------------------------------------------------------------------

    def _person(
        self, key: bytes, masked: str, key_field: str, masked_field: str
    ) -> tuple[bytes, str]:
        violations: list[tuple[str, str]] = []
        checked_key = b""
        checked_masked = ""
        try:
            checked_key = check_key(key, key_field)
        except InvalidArgument as error:
            violations.extend(error.violations)
        try:
            checked_masked = check_masked(masked, masked_field)
        except InvalidArgument as error:
            violations.extend(error.violations)
        if violations:
            raise InvalidArgument(violations)
        return checked_key, checked_masked

    @staticmethod
    def _override_key(person_key: bytes, violations: list[tuple[str, str]]) -> bytes:
        try:
            return check_key(person_key, "person.person_key")
        except InvalidArgument as error:
            violations.extend(error.violations)
            return b""

    @staticmethod
    def _override_reason(reason: str, violations: list[tuple[str, str]]) -> str:
        try:
            return check_reason(reason, "reason", *OVERRIDE_REASON_CHARS)
        except InvalidArgument as error:
            violations.extend(error.violations)
            return ""

    def _registered(self, key: bytes) -> str:
        """The masked ID number of a registered person; NotFound otherwise (an override
        colours a registered person's code: no data is no colour)."""
        masked = self._repository.masked_person(key)
        if masked is None:
            raise NotFound(
                "this person is not registered: only a registered person's colour can be overridden"
            )
        return masked

    @property
    def _next_version(self) -> int:
        """The version that carries a change committed now: the one after the published one
        (every change staged since shares it)."""
        return self.current.version + 1

    def _stage(self, *change: changes.Change) -> None:
        """Queue the changes of one committed write for the next version. Called with the
        write lock held, after the write is durable."""
        self._staged.extend(change)
        if self._interval <= 0:
            self._publish_staged()
        else:
            self._staged_event.set()

    def _publish_staged(self) -> int:
        """Build the next version from the current one plus every staged change and publish
        it; about how many bytes of changes it carried (`changes.approx_bytes`). Called with
        the write lock held."""
        if not self._staged:
            return 0
        staged, self._staged = self._staged, []
        version = self._next_version
        try:
            builder = self.current.index.builder()
            changes.apply_all(builder, staged)
            now = self._clock()
            published = Published(version, now, builder.finish(version=version), tuple(staged))
            self._repository.mark_published(version, now)
        except Exception:
            # The database already holds the changes: rebuild from it rather than publish an
            # index that disagrees with the source of truth.
            logger.exception("building version %d failed; rebuilding from the database", version)
            published = self._rebuild()
        self._publication.publish(published)
        logger.debug("version %d published (%d changes)", version, len(staged))
        return sum(map(changes.approx_bytes, staged))

    def _publish_periodically(self) -> None:
        """At most one version per interval, and only when something was staged."""
        while not self._stopping.is_set():
            self._staged_event.wait()
            self._staged_event.clear()
            if self._stopping.wait(self._interval):
                return
            with self._write:
                published_bytes = self._publish_staged()
            # The version before is let go by now (unless a watcher is still sending it).
            self._freed.after_change(published_bytes)

    def write_snapshot(self) -> bool:
        """Write the current version to the snapshot file (atomically, checksummed) unless it
        is there already; True if written. A restart then loads it and replays the rest."""
        if self._snapshot_path is None:
            return False
        published = self.current
        if published.version == self._snapshot_version:
            return False
        start = time.perf_counter()
        self._snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        published.index.save(str(self._snapshot_path))
        self._snapshot_version = published.version
        logger.info(
            "index snapshot at version %d written in %.1f s",
            published.version,
            time.perf_counter() - start,
        )
        return True

    def _snapshot_periodically(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                self.write_snapshot()
            except Exception:
                logger.exception("writing the index snapshot failed; the previous one stays")

    def _from_snapshot(self) -> Published | None:
        """The latest version from the snapshot file plus the changes committed after it; None
        (and why, in the log) when there is no usable snapshot: then the slow path rebuilds
        from every row."""
        path = self._snapshot_path
        if path is None or not path.is_file():
            return None
        start = time.perf_counter()
        try:
            index = Index.load(str(path), self._secret)
        except (SnapshotError, OSError) as exc:
            logger.warning(
                "index snapshot %s refused (%s); rebuilding from the database", path, exc
            )
            return None
        base = index.version
        tail, latest = self._repository.load_tail(base)
        if latest is None or latest.version < index.version:
            logger.warning(
                "index snapshot %s is at version %d, ahead of the database (%s); rebuilding "
                "from the database",
                path,
                index.version,
                "empty" if latest is None else f"version {latest.version}",
            )
            return None
        if latest.version > index.version:
            builder = index.builder()
            changes.apply_all(builder, tail)
            index = builder.finish(version=latest.version)
            self._restart_delta = Delta(base, latest.version, latest.published_at, tuple(tail))
        self._snapshot_version = -1 if tail else latest.version
        logger.info(
            "index at version %d loaded from its snapshot (version %d) and %d changes in %.1f s",
            latest.version,
            base,
            len(tail),
            time.perf_counter() - start,
        )
        return Published(latest.version, latest.published_at, index)

    def _rebuild(self) -> Published:
        loaded = self._from_snapshot() or self._from_rows()
        return Published(
            loaded.version,
            loaded.published_at,
            share_keys(loaded.index, self._shared_keys_dir, logger),
        )

    def _from_rows(self) -> Published:
        start = time.perf_counter()
        state = self._repository.load_state()
        index = build_index(self._secret, state)
        logger.info(
            "index rebuilt from every row at version %d in %.1f s",
            0 if state.latest is None else state.latest.version,
            time.perf_counter() - start,
        )
        if state.latest is None:
            return Published(0, self._clock(), index)
        return Published(state.latest.version, state.latest.published_at, index)


def _exchange_hashes_usable(hashes: Sequence[tuple[str, bytes]]) -> bool:
    """What `check_exchange_hashes` accepts, checked cheaply (it runs once per person of a
    bulk registration); the full check names what is wrong."""
    return len(hashes) <= MAX_HASHES_PER_PERSON and all(
        type(h) is bytes and len(h) == HASH_BYTES and PROVINCE_CODE.fullmatch(p) is not None
        for p, h in hashes
    )

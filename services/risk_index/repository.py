"""The risk index's source of truth: feed batches with provenance, their rows, the person/phone/
card registry, county levels, published rule sets, the override log and the numbered versions,
in SQLite or PostgreSQL (docs/storage.md: one set of statements, DDL per backend).

Identifiers are stored as 16-byte keyed hashes plus their masked forms; a raw ID or phone number
never reaches a table. Each accepted change and its version number commit in one transaction,
so the numbering survives a restart and a version is never acknowledged before it is durable.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from operator import itemgetter

from services._common import changes
from services._common.pg import insert_rows, pg_connection, select_by_keys, upsert_rows
from services._common.sources import SOURCES
from services._common.storage import Place, Repository
from services.risk_index import overrides
from services.risk_index.model import (
    Batch,
    BatchRecord,
    CardLink,
    ChainCheck,
    KeyedPerson,
    OverrideRecord,
    PhoneLink,
    SourceRows,
    SourceStats,
    State,
    VersionRecord,
    bucket_hour,
)

SCHEMA_V1 = """
-- One row per published version; the change that made it.
CREATE TABLE versions (
    version      INTEGER PRIMARY KEY,
    published_at TEXT    NOT NULL,          -- ISO 8601, UTC
    change       TEXT    NOT NULL           -- batch:<id>, county:<code>, person, phone, card
);

-- Provenance of every accepted feed batch (R4).
CREATE TABLE batches (
    batch_id        TEXT    PRIMARY KEY,
    source          TEXT    NOT NULL,
    digest          BLOB    NOT NULL,       -- content fingerprint: replays must match
    replace         INTEGER NOT NULL,       -- 1: the source's complete list at that time
    actor_role      TEXT    NOT NULL,
    actor_principal TEXT    NOT NULL,
    received_at     TEXT    NOT NULL,
    row_count       INTEGER NOT NULL,
    version         INTEGER NOT NULL REFERENCES versions(version),
    superseded_by   INTEGER REFERENCES versions(version)  -- a later replace batch
);
CREATE INDEX batches_by_source ON batches(source, version);

-- Feed rows by key and masked form, never by raw number.
CREATE TABLE feed_rows (
    batch_id     TEXT    NOT NULL REFERENCES batches(batch_id),
    seq          INTEGER NOT NULL,
    subject_kind TEXT    NOT NULL CHECK (subject_kind IN ('person', 'phone')),
    subject_key  BLOB    NOT NULL CHECK (length(subject_key) = 16),
    masked       TEXT    NOT NULL,
    day          INTEGER,                   -- days since 1970-01-01 (Asia/Shanghai); NULL undated
    county       INTEGER,                   -- GB/T 2260 code; NULL when the source has none
    attributes   TEXT,                      -- JSON object; NULL when none
    PRIMARY KEY (batch_id, seq)
) WITHOUT ROWID;

CREATE TABLE persons (
    person_key       BLOB PRIMARY KEY CHECK (length(person_key) = 16),
    masked_id_number TEXT    NOT NULL,
    registered_at    TEXT    NOT NULL,
    version          INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE phones (
    phone_key    BLOB PRIMARY KEY CHECK (length(phone_key) = 16),
    masked_phone TEXT    NOT NULL,
    holder_key   BLOB REFERENCES persons(person_key),
    changed_at   TEXT    NOT NULL,
    version      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE cards (
    card_key    BLOB PRIMARY KEY CHECK (length(card_key) = 16),
    masked_card TEXT    NOT NULL,
    holder_key  BLOB    NOT NULL REFERENCES persons(person_key),
    changed_at  TEXT    NOT NULL,
    version     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE county_levels (
    county     INTEGER PRIMARY KEY,
    level      INTEGER NOT NULL CHECK (level BETWEEN 1 AND 3),
    changed_at TEXT    NOT NULL,
    version    INTEGER NOT NULL
);
"""


# Rows of hourly sources (a negative test "within 48 hours") keep the hour they were timed in.
# A data directory from before hours opens as it was: its rows have no hour and count from their
# day's 00:00, as a row sent with only a day does.
SCHEMA_V2 = """
-- Hours since 1970-01-01 00:00 Asia/Shanghai (hour / 24 = day); NULL: no time was given.
ALTER TABLE feed_rows ADD COLUMN hour INTEGER;
"""

# A restart loads the latest index snapshot and replays only what changed after its version:
# these find the tail without reading every person.
SCHEMA_V3 = """
CREATE INDEX persons_by_version ON persons(version);
CREATE INDEX phones_by_version ON phones(version);
CREATE INDEX cards_by_version ON cards(version);
CREATE INDEX county_levels_by_version ON county_levels(version);
CREATE INDEX batches_by_version ON batches(version);
"""


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _from_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# Rule sets published for every replica (issue 12, part 2): the latest is sent to each replica
# with the first version of its stream; each carries the index version that published it.
SCHEMA_RULE_SETS = """
CREATE TABLE rule_sets (
    version      INTEGER PRIMARY KEY,   -- the index version that carries it
    text         TEXT    NOT NULL,      -- TOML, as published
    filename     TEXT    NOT NULL,
    published_at TEXT    NOT NULL       -- ISO 8601, UTC
);
"""


# Manual colour overrides (issue 10, item 4): an append-only, hash-chained audit log. Each entry
# is one set or clear; the latest entry of a person says whether an override is in force. The
# hash of an entry is SHA-256 over the hash before it and the entry's canonical encoding
# (services/risk_index/overrides.py); the triggers refuse every UPDATE and DELETE, and no code
# issues one. Each entry carries the index version that publishes it to the replicas.
SCHEMA_OVERRIDES = """
CREATE TABLE override_log (
    seq              INTEGER PRIMARY KEY,   -- 1, 2, 3 ... without gaps
    at               TEXT    NOT NULL,      -- ISO 8601, UTC
    action           TEXT    NOT NULL CHECK (action IN ('set', 'clear')),
    person_key       BLOB    NOT NULL CHECK (length(person_key) = 16),
    masked_id_number TEXT    NOT NULL,
    colour           TEXT    CHECK (colour IN ('green', 'yellow', 'red')),  -- NULL: a clear
    reason           TEXT    NOT NULL,
    valid_until      TEXT,                  -- ISO 8601, UTC; NULL: a clear
    actor_role       TEXT    NOT NULL,
    actor_principal  TEXT    NOT NULL,
    index_version    INTEGER NOT NULL,
    prev_hash        BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash             BLOB    NOT NULL CHECK (length(hash) = 32),
    CHECK ((action = 'set') = (colour IS NOT NULL AND valid_until IS NOT NULL))
);
CREATE INDEX override_log_by_person ON override_log(person_key, seq);
CREATE TRIGGER override_log_no_update BEFORE UPDATE ON override_log
BEGIN
    SELECT RAISE(ABORT, 'override_log is append-only');
END;
CREATE TRIGGER override_log_no_delete BEFORE DELETE ON override_log
BEGIN
    SELECT RAISE(ABORT, 'override_log is append-only');
END;
"""


# Cold-chain batch links and cross-province exchange hashes (issue 11, items 9 and 10): by keyed
# hash only. Read and written by services/risk_index/cold_chain.py and provinces.py.
SCHEMA_EXCHANGE = """
CREATE TABLE cold_chain_events (
    event_id       TEXT    PRIMARY KEY,
    product_batch  TEXT    NOT NULL,
    stage          INTEGER NOT NULL,
    day            TEXT    NOT NULL,     -- YYYY-MM-DD, Asia/Shanghai
    digest         BLOB    NOT NULL,     -- of the request's content: a replay must match
    index_version  INTEGER NOT NULL,
    linked         INTEGER NOT NULL,
    unmatched      TEXT    NOT NULL,     -- JSON [[index, masked, reason], ...]
    actor_role     TEXT    NOT NULL,
    actor_principal TEXT   NOT NULL,
    received_at    TEXT    NOT NULL
);
CREATE TABLE cold_chain_links (
    product_batch    TEXT    NOT NULL,
    event_id         TEXT    NOT NULL REFERENCES cold_chain_events(event_id),
    person_key       BLOB    NOT NULL CHECK (length(person_key) = 16),
    masked_id_number TEXT    NOT NULL,
    masked_phone     TEXT    NOT NULL,   -- '' when named by ID number
    PRIMARY KEY (product_batch, event_id, person_key)
);
CREATE TABLE exchange_hashes (
    province       TEXT    NOT NULL,
    exchange_hash  BLOB    NOT NULL CHECK (length(exchange_hash) = 16),
    person_key     BLOB    NOT NULL CHECK (length(person_key) = 16),
    masked_id_number TEXT  NOT NULL,
    PRIMARY KEY (province, exchange_hash)
);
CREATE TABLE province_imports (
    batch_id       TEXT    PRIMARY KEY,
    province       TEXT    NOT NULL,
    digest         BLOB    NOT NULL,
    response       BLOB    NOT NULL      -- the serialised ImportStatusResponse
);
"""


# The same versions in PostgreSQL's DDL (services/_common/storage.py): BYTEA for BLOB, BIGINT
# for SQLite's 64-bit INTEGER; the override log's append-only triggers call a function.
PG_SCHEMA_V1 = """
CREATE TABLE versions (
    version      BIGINT PRIMARY KEY,
    published_at TEXT   NOT NULL,
    change       TEXT   NOT NULL
);
CREATE TABLE batches (
    batch_id        TEXT   PRIMARY KEY,
    source          TEXT   NOT NULL,
    digest          BYTEA  NOT NULL,
    replace         BIGINT NOT NULL,
    actor_role      TEXT   NOT NULL,
    actor_principal TEXT   NOT NULL,
    received_at     TEXT   NOT NULL,
    row_count       BIGINT NOT NULL,
    version         BIGINT NOT NULL REFERENCES versions(version),
    superseded_by   BIGINT REFERENCES versions(version)
);
CREATE INDEX batches_by_source ON batches(source, version);
CREATE TABLE feed_rows (
    batch_id     TEXT   NOT NULL REFERENCES batches(batch_id),
    seq          BIGINT NOT NULL,
    subject_kind TEXT   NOT NULL CHECK (subject_kind IN ('person', 'phone')),
    subject_key  BYTEA  NOT NULL CHECK (length(subject_key) = 16),
    masked       TEXT   NOT NULL,
    day          BIGINT,
    county       BIGINT,
    attributes   TEXT,
    PRIMARY KEY (batch_id, seq)
);
CREATE TABLE persons (
    person_key       BYTEA  PRIMARY KEY CHECK (length(person_key) = 16),
    masked_id_number TEXT   NOT NULL,
    registered_at    TEXT   NOT NULL,
    version          BIGINT NOT NULL
);
CREATE TABLE phones (
    phone_key    BYTEA  PRIMARY KEY CHECK (length(phone_key) = 16),
    masked_phone TEXT   NOT NULL,
    holder_key   BYTEA  REFERENCES persons(person_key),
    changed_at   TEXT   NOT NULL,
    version      BIGINT NOT NULL
);
CREATE TABLE cards (
    card_key    BYTEA  PRIMARY KEY CHECK (length(card_key) = 16),
    masked_card TEXT   NOT NULL,
    holder_key  BYTEA  NOT NULL REFERENCES persons(person_key),
    changed_at  TEXT   NOT NULL,
    version     BIGINT NOT NULL
);
CREATE TABLE county_levels (
    county     BIGINT PRIMARY KEY,
    level      BIGINT NOT NULL CHECK (level BETWEEN 1 AND 3),
    changed_at TEXT   NOT NULL,
    version    BIGINT NOT NULL
);
"""
PG_SCHEMA_V2 = """
ALTER TABLE feed_rows ADD COLUMN hour BIGINT;
"""
PG_SCHEMA_RULE_SETS = """
CREATE TABLE rule_sets (
    version      BIGINT PRIMARY KEY,
    text         TEXT   NOT NULL,
    filename     TEXT   NOT NULL,
    published_at TEXT   NOT NULL
);
"""
PG_SCHEMA_OVERRIDES = """
CREATE TABLE override_log (
    seq              BIGINT PRIMARY KEY,
    at               TEXT   NOT NULL,
    action           TEXT   NOT NULL CHECK (action IN ('set', 'clear')),
    person_key       BYTEA  NOT NULL CHECK (length(person_key) = 16),
    masked_id_number TEXT   NOT NULL,
    colour           TEXT   CHECK (colour IN ('green', 'yellow', 'red')),
    reason           TEXT   NOT NULL,
    valid_until      TEXT,
    actor_role       TEXT   NOT NULL,
    actor_principal  TEXT   NOT NULL,
    index_version    BIGINT NOT NULL,
    prev_hash        BYTEA  NOT NULL CHECK (length(prev_hash) = 32),
    hash             BYTEA  NOT NULL CHECK (length(hash) = 32),
    CHECK ((action = 'set') = (colour IS NOT NULL AND valid_until IS NOT NULL))
);
CREATE INDEX override_log_by_person ON override_log(person_key, seq);
CREATE FUNCTION override_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'override_log is append-only';
END;
$$;
CREATE TRIGGER override_log_no_update BEFORE UPDATE ON override_log
    FOR EACH ROW EXECUTE FUNCTION override_log_append_only();
CREATE TRIGGER override_log_no_delete BEFORE DELETE ON override_log
    FOR EACH ROW EXECUTE FUNCTION override_log_append_only();
CREATE TRIGGER override_log_no_truncate BEFORE TRUNCATE ON override_log
    FOR EACH STATEMENT EXECUTE FUNCTION override_log_append_only();
"""
PG_SCHEMA_EXCHANGE = """
CREATE TABLE cold_chain_events (
    event_id        TEXT   PRIMARY KEY,
    product_batch   TEXT   NOT NULL,
    stage           BIGINT NOT NULL,
    day             TEXT   NOT NULL,
    digest          BYTEA  NOT NULL,
    index_version   BIGINT NOT NULL,
    linked          BIGINT NOT NULL,
    unmatched       TEXT   NOT NULL,
    actor_role      TEXT   NOT NULL,
    actor_principal TEXT   NOT NULL,
    received_at     TEXT   NOT NULL
);
CREATE TABLE cold_chain_links (
    product_batch    TEXT  NOT NULL,
    event_id         TEXT  NOT NULL REFERENCES cold_chain_events(event_id),
    person_key       BYTEA NOT NULL CHECK (length(person_key) = 16),
    masked_id_number TEXT  NOT NULL,
    masked_phone     TEXT  NOT NULL,
    PRIMARY KEY (product_batch, event_id, person_key)
);
CREATE TABLE exchange_hashes (
    province         TEXT  NOT NULL,
    exchange_hash    BYTEA NOT NULL CHECK (length(exchange_hash) = 16),
    person_key       BYTEA NOT NULL CHECK (length(person_key) = 16),
    masked_id_number TEXT  NOT NULL,
    PRIMARY KEY (province, exchange_hash)
);
CREATE TABLE province_imports (
    batch_id TEXT  PRIMARY KEY,
    province TEXT  NOT NULL,
    digest   BYTEA NOT NULL,
    response BYTEA NOT NULL
);
"""


# Page cache of the risk index's connection (KiB). The registry tables are keyed by random
# hashes, so a bulk registration touches pages all over them; SQLite's 2 MiB default cannot
# even hold the interior pages of 18 M people, and every lookup then re-reads them.
CACHE_KIB = 64 * 1024


class RiskIndexRepository(Repository):
    MIGRATIONS = (
        SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_RULE_SETS, SCHEMA_OVERRIDES, SCHEMA_EXCHANGE,
    )  # fmt: skip
    PG_MIGRATIONS = (
        PG_SCHEMA_V1, PG_SCHEMA_V2, SCHEMA_V3, PG_SCHEMA_RULE_SETS, PG_SCHEMA_OVERRIDES,
        PG_SCHEMA_EXCHANGE,
    )  # fmt: skip

    def __init__(self, path: Place) -> None:
        super().__init__(path)
        if self.dialect == "sqlite":
            self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    # -- versions --------------------------------------------------------------------------

    def latest_version(self) -> VersionRecord | None:
        with self.reading() as conn:
            return _latest(conn)

    @staticmethod
    def _open_version(conn: sqlite3.Connection, version: int, change: str, now: dt.datetime) -> int:
        """Record that `version` carries a change. Several changes accepted within one publish
        interval share a version (its row names the first of them); each commits with it, so
        a restart rebuilds every acknowledged change into that version."""
        conn.execute(
            "INSERT INTO versions (version, published_at, change) VALUES (?, ?, ?) "
            "ON CONFLICT (version) DO NOTHING",
            (version, _iso(now), change),
        )
        return version

    def mark_published(self, version: int, when: dt.datetime) -> None:
        """When `version` was published (until then its row says when its first change came)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET published_at = ? WHERE version = ?", (_iso(when), version)
            )

    # -- batches ---------------------------------------------------------------------------

    def find_batch(self, batch_id: str) -> BatchRecord | None:
        with self.reading() as conn:
            row = conn.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        return BatchRecord(
            batch_id=row["batch_id"],
            source=row["source"],
            digest=bytes(row["digest"]),
            replace=bool(row["replace"]),
            actor_role=row["actor_role"],
            actor_principal=row["actor_principal"],
            received_at=_from_iso(row["received_at"]),
            row_count=int(row["row_count"]),
            version=int(row["version"]),
        )

    def insert_batch(self, batch: Batch, digest: bytes, now: dt.datetime, version: int) -> int:
        """Store a batch and its rows, carried by `version`, in one transaction."""
        with self.transaction() as conn:
            self._open_version(conn, version, f"batch:{batch.batch_id}", now)
            if batch.replace:
                conn.execute(
                    "UPDATE batches SET superseded_by = ? WHERE source = ? "
                    "AND superseded_by IS NULL",
                    (version, batch.source),
                )
            conn.execute(
                "INSERT INTO batches (batch_id, source, digest, replace, actor_role, "
                "actor_principal, received_at, row_count, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.batch_id,
                    batch.source,
                    digest,
                    int(batch.replace),
                    batch.actor.role.value,
                    batch.actor.principal or batch.actor.masked_id_number,
                    _iso(now),
                    len(batch.rows),
                    version,
                ),
            )
            rows = (
                (
                    batch.batch_id,
                    seq,
                    r.kind,
                    r.key,
                    r.masked,
                    r.day,
                    r.county,
                    json.dumps(dict(r.attributes), ensure_ascii=False) if r.attributes else None,
                    r.hour,
                )
                for seq, r in enumerate(batch.rows)
            )
            pg = pg_connection(conn)
            if pg is not None:
                # A feed batch of 100,000 rows is one COPY stream on PostgreSQL.
                pg.copy_rows("feed_rows", _FEED_ROW_COLUMNS, rows)
            else:
                conn.executemany(
                    "INSERT INTO feed_rows (batch_id, seq, subject_kind, subject_key, masked, "
                    "day, county, attributes, hour) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            return version

    def source_stats(self) -> dict[str, SourceStats]:
        """Live row counts (superseded batches excluded), batch counts and last update."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT source, "
                "COALESCE(SUM(CASE WHEN superseded_by IS NULL THEN row_count END), 0) AS live, "
                "COUNT(*) AS batches, MAX(received_at) AS last "
                "FROM batches GROUP BY source"
            ).fetchall()
        return {
            r["source"]: SourceStats(
                row_count=int(r["live"]),
                batch_count=int(r["batches"]),
                last_updated=_from_iso(r["last"]) if r["last"] else None,
            )
            for r in rows
        }

    # -- registry --------------------------------------------------------------------------

    def _ensure_person(
        self, conn: sqlite3.Connection, key: bytes, masked: str, now: dt.datetime, version: int
    ) -> None:
        conn.execute(
            "INSERT INTO persons (person_key, masked_id_number, registered_at, version) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (person_key) DO NOTHING",
            (key, masked, _iso(now), version),
        )

    def _has_person(self, conn: sqlite3.Connection, key: bytes) -> bool:
        found = conn.execute("SELECT 1 FROM persons WHERE person_key = ?", (key,)).fetchone()
        return found is not None

    def register_person(
        self,
        key: bytes,
        masked: str,
        now: dt.datetime,
        version: int,
        exchange_hashes: Sequence[tuple[str, bytes]] = (),
    ) -> int | None:
        """`version` if the person is new, else None (nothing changed in the index). The
        exchange hashes are kept either way, in the same transaction."""
        with self.transaction() as conn:
            keep_exchange_hashes(conn, [(p, h, key, masked) for p, h in exchange_hashes])
            if self._has_person(conn, key):
                return None
            self._open_version(conn, version, "person", now)
            self._ensure_person(conn, key, masked, now, version)
            return version

    def link_phone(
        self,
        person_key: bytes,
        masked_id_number: str,
        phone_key: bytes,
        masked_phone: str,
        now: dt.datetime,
        version: int,
    ) -> int | None:
        with self.transaction() as conn:
            current = conn.execute(
                "SELECT holder_key FROM phones WHERE phone_key = ?", (phone_key,)
            ).fetchone()
            if current is not None and current["holder_key"] == person_key:
                return None
            self._open_version(conn, version, "phone", now)
            self._ensure_person(conn, person_key, masked_id_number, now, version)
            conn.execute(
                "INSERT INTO phones (phone_key, masked_phone, holder_key, changed_at, version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (phone_key) DO UPDATE SET "
                "holder_key = excluded.holder_key, masked_phone = excluded.masked_phone, "
                "changed_at = excluded.changed_at, version = excluded.version",
                (phone_key, masked_phone, person_key, _iso(now), version),
            )
            return version

    def unlink_phone(self, phone_key: bytes, now: dt.datetime, version: int) -> int | None:
        with self.transaction() as conn:
            current = conn.execute(
                "SELECT holder_key FROM phones WHERE phone_key = ?", (phone_key,)
            ).fetchone()
            if current is None or current["holder_key"] is None:
                return None
            self._open_version(conn, version, "phone", now)
            conn.execute(
                "UPDATE phones SET holder_key = NULL, changed_at = ?, version = ? "
                "WHERE phone_key = ?",
                (_iso(now), version, phone_key),
            )
            return version

    def link_card(
        self,
        person_key: bytes,
        masked_id_number: str,
        card_key: bytes,
        masked_card: str,
        now: dt.datetime,
        version: int,
    ) -> int | None:
        with self.transaction() as conn:
            current = conn.execute(
                "SELECT holder_key FROM cards WHERE card_key = ?", (card_key,)
            ).fetchone()
            if current is not None and current["holder_key"] == person_key:
                return None
            self._open_version(conn, version, "card", now)
            self._ensure_person(conn, person_key, masked_id_number, now, version)
            conn.execute(
                "INSERT INTO cards (card_key, masked_card, holder_key, changed_at, version) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (card_key) DO UPDATE SET "
                "holder_key = excluded.holder_key, masked_card = excluded.masked_card, "
                "changed_at = excluded.changed_at, version = excluded.version",
                (card_key, masked_card, person_key, _iso(now), version),
            )
            return version

    def publish_rule_set(self, text: str, filename: str, now: dt.datetime, version: int) -> int:
        """Keep a published rule set under `version`, durably."""
        with self.transaction() as conn:
            self._open_version(conn, version, f"rule_set:{filename}", now)
            conn.execute(
                "INSERT INTO rule_sets (version, text, filename, published_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (version) DO UPDATE SET text = excluded.text, "
                "filename = excluded.filename, published_at = excluded.published_at",
                (version, text, filename, _iso(now)),
            )
            return version

    def latest_rule_set(self) -> tuple[str, str] | None:
        """(text, filename) of the rule set published last, if any was."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT text, filename FROM rule_sets ORDER BY version DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (str(row["text"]), str(row["filename"]))

    # -- overrides -------------------------------------------------------------------------

    def masked_person(self, key: bytes) -> str | None:
        """The masked ID number of a registered person; None if not registered."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT masked_id_number FROM persons WHERE person_key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def append_override(
        self,
        *,
        action: str,
        person_key: bytes,
        masked_id_number: str,
        colour: str | None,
        reason: str,
        valid_until: dt.datetime | None,
        actor_role: str,
        actor_principal: str,
        now: dt.datetime,
        version: int,
    ) -> OverrideRecord:
        """Append one entry to the override log, chained to the one before, carried by
        `version`, in one transaction; the stored entry."""
        with self.transaction() as conn:
            last = conn.execute(
                "SELECT seq, hash FROM override_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq = 1 if last is None else int(last[0]) + 1
            prev = overrides.GENESIS if last is None else bytes(last[1])
            unhashed = OverrideRecord(
                seq=seq,
                at=now,
                action=action,
                person_key=person_key,
                masked_id_number=masked_id_number,
                colour=colour,
                reason=reason,
                valid_until=valid_until,
                actor_role=actor_role,
                actor_principal=actor_principal,
                index_version=version,
                prev_hash=prev,
                hash=b"",
            )
            record = replace(unhashed, hash=overrides.entry_hash(prev, unhashed))
            self._open_version(conn, version, f"override:{seq}", now)
            conn.execute(
                "INSERT INTO override_log (seq, at, action, person_key, masked_id_number, "
                "colour, reason, valid_until, actor_role, actor_principal, index_version, "
                "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.seq,
                    overrides.iso(record.at),
                    record.action,
                    record.person_key,
                    record.masked_id_number,
                    record.colour,
                    record.reason,
                    None if record.valid_until is None else overrides.iso(record.valid_until),
                    record.actor_role,
                    record.actor_principal,
                    record.index_version,
                    record.prev_hash,
                    record.hash,
                ),
            )
            return record

    def override_entries(
        self, *, person_key: bytes | None = None, before: int | None = None, limit: int = 50
    ) -> list[OverrideRecord]:
        """Log entries newest first: below seq `before` (None: from the newest), optionally
        one person's, at most `limit`."""
        where, args = ["seq < ?"], [2**62 if before is None else before]
        if person_key is not None:
            where.append("person_key = ?")
            args.append(person_key)  # type: ignore[arg-type]
        with self.reading() as conn:
            rows = conn.execute(
                f"SELECT * FROM override_log WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_override(r) for r in rows]

    def verify_overrides(self) -> ChainCheck:
        """Walk the whole override log's hash chain (in one read)."""
        with self.reading() as conn:
            return overrides.verify(
                _override(r) for r in conn.execute("SELECT * FROM override_log ORDER BY seq")
            )

    def latest_overrides(self) -> tuple[list[OverrideRecord], int]:
        """Each person's latest log entry (a set one means an override, perhaps expired),
        and the latest seq (0: an empty log)."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM override_log WHERE seq IN "
                "(SELECT MAX(seq) FROM override_log GROUP BY person_key) ORDER BY seq"
            ).fetchall()
            last = conn.execute("SELECT MAX(seq) FROM override_log").fetchone()[0]
        return [_override(r) for r in rows], int(last or 0)

    def set_county_level(
        self, county: int, level: int, now: dt.datetime, version: int
    ) -> int | None:
        with self.transaction() as conn:
            current = conn.execute(
                "SELECT level FROM county_levels WHERE county = ?", (county,)
            ).fetchone()
            if current is not None and int(current["level"]) == level:
                return None
            self._open_version(conn, version, f"county:{county}", now)
            conn.execute(
                "INSERT INTO county_levels (county, level, changed_at, version) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (county) DO UPDATE SET "
                "level = excluded.level, changed_at = excluded.changed_at, "
                "version = excluded.version",
                (county, level, _iso(now), version),
            )
            return version

    def register_people(
        self, people: Sequence[KeyedPerson], now: dt.datetime, version: int
    ) -> tuple[int, int, list[KeyedPerson]]:
        """Store people and their phone and card links in one transaction, carried by
        `version`: (people created, links changed, what changed). Known people and links that
        already hold are left as they are.

        Bulk: the known people and the current holders of every phone and card are read with a
        few chunked lookups, the batch is resolved in memory in call order (a phone named twice
        ends with its last holder, as one-by-one writes would leave it), and each table gets
        one executemany."""
        when = _iso(now)
        with self._foreign_keys_off(), self.transaction() as conn:
            known = set(_present(conn, "persons", "person_key", [p.key for p in people]))
            phone_holders = _holders(
                conn, "phones", "phone_key", [k for p in people for k, _ in p.phones]
            )
            card_holders = _holders(
                conn, "cards", "card_key", [k for p in people for k, _ in p.cards]
            )
            new_persons: list[tuple[bytes, str, str, int]] = []
            phone_rows: list[tuple[bytes, str, bytes, str, int]] = []
            card_rows: list[tuple[bytes, str, bytes, str, int]] = []
            changed: list[KeyedPerson] = []
            for person in people:
                key = person.key
                new = key not in known
                if new:
                    known.add(key)
                    new_persons.append((key, person.masked, when, version))
                # Decided against the holders before this person, then applied, as the
                # one-statement-per-row version did.
                phones = [p for p in person.phones if phone_holders.get(p[0]) != key]
                cards = [c for c in person.cards if card_holders.get(c[0]) != key]
                for k, masked in phones:
                    phone_holders[k] = key
                    phone_rows.append((k, masked, key, when, version))
                for k, masked in cards:
                    card_holders[k] = key
                    card_rows.append((k, masked, key, when, version))
                if new or phones or cards:
                    # Every link of it changed (as in a first import): the person as it came.
                    whole = len(phones) == len(person.phones) and len(cards) == len(person.cards)
                    changed.append(
                        person if whole else KeyedPerson(key, person.masked, phones, cards)
                    )
            # Keys are random hashes: writing them in key order walks each B-tree once instead
            # of hopping between its pages. The sort is stable, so a key written twice keeps
            # its order and its last write wins.
            for rows in (new_persons, phone_rows, card_rows):
                rows.sort(key=itemgetter(0))
            # Every person's exchange hashes, known or new (a resend keeps them as they are).
            keep_exchange_hashes(
                conn,
                sorted(
                    (province, hash_, p.key, p.masked)
                    for p in people
                    for province, hash_ in p.exchange_hashes
                ),
            )
            # New by construction: `known` was read in this transaction, under the writer lock.
            insert_rows(
                conn,
                "persons",
                ("person_key", "masked_id_number", "registered_at", "version"),
                new_persons,
            )
            upsert_rows(
                conn,
                "phones",
                ("phone_key", "masked_phone", "holder_key", "changed_at", "version"),
                phone_rows,
                key=("phone_key",),
            )
            upsert_rows(
                conn,
                "cards",
                ("card_key", "masked_card", "holder_key", "changed_at", "version"),
                card_rows,
                key=("card_key",),
            )
            if changed:
                self._open_version(conn, version, f"people:{len(changed)}", now)
            return len(new_persons), len(phone_rows) + len(card_rows), changed

    @contextmanager
    def _foreign_keys_off(self) -> Iterator[None]:
        """Foreign keys unchecked for one transaction of ours (the pragma is fixed while one is
        open, so it is set around it, under the lock). For bulk registration only: every
        holder it writes is a person of the same call, stored before its links, and checking
        that costs a random read of `persons` per link. On PostgreSQL they stay checked."""
        if self.dialect != "sqlite":
            yield
            return
        with self._lock:
            self._conn.execute("PRAGMA foreign_keys=OFF")
            try:
                yield
            finally:
                self._conn.execute("PRAGMA foreign_keys=ON")

    def masked_phones(self, keys: Sequence[bytes]) -> dict[bytes, str]:
        """Masked forms of phones by key (for explanations)."""
        out: dict[bytes, str] = {}
        with self.reading() as conn:
            for key in keys:
                row = conn.execute(
                    "SELECT masked_phone FROM phones WHERE phone_key = ?", (key,)
                ).fetchone()
                if row is not None:
                    out[key] = row["masked_phone"]
        return out

    # -- rebuild ---------------------------------------------------------------------------

    def load_state(self) -> State:
        """Everything needed to rebuild the index, read in one consistent snapshot."""
        with self.reading() as conn:
            persons = [
                bytes(r[0])
                for r in conn.execute("SELECT person_key FROM persons ORDER BY version, person_key")
            ]
            phones = [
                PhoneLink(
                    bytes(r["phone_key"]),
                    r["masked_phone"],
                    bytes(r["holder_key"]) if r["holder_key"] is not None else None,
                )
                for r in conn.execute("SELECT * FROM phones ORDER BY version, phone_key")
            ]
            cards = [
                CardLink(bytes(r["card_key"]), r["masked_card"], bytes(r["holder_key"]))
                for r in conn.execute("SELECT * FROM cards ORDER BY version, card_key")
            ]
            counties = {
                int(r["county"]): int(r["level"])
                for r in conn.execute("SELECT county, level FROM county_levels")
            }
            by_source: dict[str, SourceRows] = {}
            for r in conn.execute(
                "SELECT b.source, f.subject_key, f.day, f.county, f.hour FROM feed_rows f "
                "JOIN batches b ON b.batch_id = f.batch_id "
                "WHERE b.superseded_by IS NULL ORDER BY b.version, f.seq"
            ):
                rows = by_source.get(r[0])
                if rows is None:
                    rows = by_source[r[0]] = SourceRows(r[0])
                rows.keys += r[1]
                rows.days.append(r[2])
                rows.counties.append(r[3] if r[3] is not None else 0)
                rows.hours.append(r[4])
            latest = _latest(conn)
        return State(persons, phones, cards, counties, list(by_source.values()), latest)

    def load_tail(self, after: int) -> tuple[list[changes.Change], VersionRecord | None]:
        """The changes committed under versions after `after`, as they apply to an index of
        version `after` to give the latest one; and the latest version. Each person, phone,
        card and county is given in its latest state; feed batches in acceptance order, those
        a later replace batch dropped left out (the replace clears their source anyway)."""
        out: list[changes.Change] = []
        with self.reading() as conn:
            keys = b"".join(
                bytes(r[0])
                for r in conn.execute(
                    "SELECT person_key FROM persons WHERE version > ? ORDER BY version", (after,)
                )
            )
            if keys:
                out.append(changes.Persons(keys))
            linked: list[tuple[bytes, bytes]] = []
            unlinked: list[bytes] = []
            for r in conn.execute(
                "SELECT phone_key, holder_key FROM phones WHERE version > ? ORDER BY version",
                (after,),
            ):
                if r[1] is None:
                    unlinked.append(bytes(r[0]))
                else:
                    linked.append((bytes(r[0]), bytes(r[1])))
            if linked:
                out.append(changes.Phones(*(b"".join(x) for x in zip(*linked, strict=True))))
            if unlinked:
                out.append(changes.Unlink(b"".join(unlinked)))
            cards = [
                (bytes(r[0]), bytes(r[1]))
                for r in conn.execute(
                    "SELECT card_key, holder_key FROM cards WHERE version > ? ORDER BY version",
                    (after,),
                )
            ]
            if cards:
                out.append(changes.Cards(*(b"".join(x) for x in zip(*cards, strict=True))))
            out.extend(
                changes.CountyLevel(int(r[0]), int(r[1]))
                for r in conn.execute(
                    "SELECT county, level FROM county_levels WHERE version > ? ORDER BY version",
                    (after,),
                )
            )
            batches = conn.execute(
                "SELECT batch_id, source, replace FROM batches "
                "WHERE version > ? AND superseded_by IS NULL ORDER BY version",
                (after,),
            ).fetchall()
            for batch_id, source, replace in batches:
                rows = conn.execute(
                    "SELECT subject_key, day, county, hour FROM feed_rows "
                    "WHERE batch_id = ? ORDER BY seq",
                    (batch_id,),
                ).fetchall()
                out.append(_rows_change(source, rows, bool(replace)))
            latest = _latest(conn)
        return out, latest


_FEED_ROW_COLUMNS = (
    "batch_id", "seq", "subject_kind", "subject_key", "masked", "day", "county", "attributes",
    "hour",
)  # fmt: skip

# Bound parameters per lookup: well under SQLite's limit, and a batch of 10,000 people is a
# handful of statements.


def _present(
    conn: sqlite3.Connection, table: str, column: str, keys: Sequence[bytes]
) -> list[bytes]:
    """Which of `keys` `table` holds (table and column are ours, never a caller's)."""
    return [r[0] for r in select_by_keys(conn, f"SELECT {column} FROM {table}", column, keys)]


def _holders(
    conn: sqlite3.Connection, table: str, column: str, keys: Sequence[bytes]
) -> dict[bytes, bytes | None]:
    """The holder of each of `keys` that `table` has (None: unlinked)."""
    select = f"SELECT {column}, holder_key FROM {table}"
    return {r[0]: r[1] for r in select_by_keys(conn, select, column, keys)}


def _rows_change(source: str, rows: Sequence[sqlite3.Row], replace: bool) -> changes.Rows:
    spec = SOURCES[source]
    times = [bucket_hour(r[1], r[3]) if spec.hourly else r[1] for r in rows]
    counties = [r[2] if r[2] is not None else 0 for r in rows] if spec.has_county else None
    return changes.Rows(source, b"".join(bytes(r[0]) for r in rows), times, counties, replace)


def _override(r: sqlite3.Row) -> OverrideRecord:
    return OverrideRecord(
        seq=int(r["seq"]),
        at=_from_iso(r["at"]),
        action=str(r["action"]),
        person_key=bytes(r["person_key"]),
        masked_id_number=str(r["masked_id_number"]),
        colour=None if r["colour"] is None else str(r["colour"]),
        reason=str(r["reason"]),
        valid_until=None if r["valid_until"] is None else _from_iso(r["valid_until"]),
        actor_role=str(r["actor_role"]),
        actor_principal=str(r["actor_principal"]),
        index_version=int(r["index_version"]),
        prev_hash=bytes(r["prev_hash"]),
        hash=bytes(r["hash"]),
    )


def _latest(conn: sqlite3.Connection) -> VersionRecord | None:
    row = conn.execute(
        "SELECT version, published_at, change FROM versions ORDER BY version DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return VersionRecord(int(row[0]), _from_iso(row[1]), row[2])


def keep_exchange_hashes(
    conn: sqlite3.Connection, rows: Sequence[tuple[str, bytes, bytes, str]]
) -> None:
    """(province, exchange hash, person key, masked ID) rows, upserted (the province exchange,
    services/risk_index/provinces.py; the same statement as EnrolExchangeHashes)."""
    upsert_rows(
        conn,
        "exchange_hashes",
        ("province", "exchange_hash", "person_key", "masked_id_number"),
        rows,
        key=("province", "exchange_hash"),
    )

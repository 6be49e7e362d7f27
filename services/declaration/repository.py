"""The declaration service's storage: persons (name, masked identifiers, keys), phones, daily
declarations and the outbox of changes owed to the risk index, in SQLite.

No raw ID or phone number is stored: keys (16-byte keyed hashes) and masked forms only. A change
and the outbox messages it owes commit in one transaction, so a change the client saw
acknowledged always reaches the risk index eventually, even if that service was down.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from services._common.actors import Role
from services._common.errors import AlreadyExists
from services._common.storage import SqliteRepository
from services.declaration.model import (
    Declaration,
    ImportPerson,
    ImportPlan,
    ImportState,
    KnownPerson,
    OutboxMessage,
    PendingMessage,
    Person,
    Phone,
    RecordedActor,
    Visit,
)
from services.declaration.wire import request_bytes

SCHEMA_V1 = """
CREATE TABLE persons (
    person_key          BLOB PRIMARY KEY CHECK (length(person_key) = 16),
    name                TEXT NOT NULL,      -- the real name (needed for printed codes)
    masked_id_number    TEXT NOT NULL,
    card_key            BLOB UNIQUE CHECK (card_key IS NULL OR length(card_key) = 16),
    masked_card         TEXT NOT NULL DEFAULT '',
    registered_at       TEXT NOT NULL,      -- ISO 8601, UTC
    registered_by_role  TEXT NOT NULL,      -- citizen, family_proxy, grid_worker, ...
    registered_by       TEXT NOT NULL,      -- account id, or the acting person's masked number
    registered_by_masked TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;

-- One phone has one holder; one holder many phones (R7).
CREATE TABLE phones (
    phone_key    BLOB PRIMARY KEY CHECK (length(phone_key) = 16),
    person_key   BLOB NOT NULL REFERENCES persons(person_key),
    masked_phone TEXT NOT NULL,
    linked_at    TEXT NOT NULL
);  -- with a rowid: it keeps the order phones were linked in
CREATE INDEX phones_by_person ON phones(person_key);

-- One declaration per person per Asia/Shanghai day: the UNIQUE constraint is the rule's
-- last word, even when two requests race.
CREATE TABLE declarations (
    declaration_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    person_key       BLOB    NOT NULL REFERENCES persons(person_key),
    day              INTEGER NOT NULL,      -- days since 1970-01-01, Asia/Shanghai
    declared_at      TEXT    NOT NULL,
    actor_role       TEXT    NOT NULL,
    actor            TEXT    NOT NULL,
    actor_masked     TEXT    NOT NULL DEFAULT '',
    symptoms         TEXT    NOT NULL,      -- JSON list of names
    temperature      REAL,                  -- degrees Celsius; NULL when not measured
    visits           TEXT    NOT NULL,      -- JSON list of [county, day, place]
    case_contact     INTEGER NOT NULL,
    case_contact_day INTEGER,
    derived_sources  TEXT    NOT NULL,      -- JSON list of source names
    UNIQUE (person_key, day)
);

-- Changes owed to the risk index, sent in id order and deleted once acknowledged.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,            -- JSON: keys in hex and masked forms only
    created_at TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead       INTEGER NOT NULL DEFAULT 0   -- refused for good (a bug): kept for inspection
);
"""

# Bulk import (R1): where a person lives, and which operator's import stored them.
SCHEMA_V2 = """
ALTER TABLE persons ADD COLUMN residence_county INTEGER;       -- GB/T 2260 district; NULL unknown
ALTER TABLE persons ADD COLUMN imported_by TEXT NOT NULL DEFAULT '';  -- '' when through Register
"""

# A bulk import's outbox messages (tens of thousands of people each) are stored as the request
# they become, serialized protobuf, instead of JSON with hex keys (see `wire`). A service older
# than this refuses the database (its schema version is newer) rather than choke on them.
SCHEMA_V3 = """
ALTER TABLE outbox ADD COLUMN body BLOB;  -- the serialized request; payload is then ''
"""

# Keys per `IN (...)` look-up: well under SQLite's limit on bound parameters.
LOOKUP_CHUNK = 500


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class DeclarationRepository(SqliteRepository):
    MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)

    def __init__(self, path: Path | str, *, cache_mib: int = 256) -> None:
        super().__init__(path)
        # A bulk import inserts random keys all over the person and phone B-trees; a page
        # cache that holds their upper levels (SQLite's default is 2 MiB) spares each insert
        # re-reading them. Pages are allocated as used: a small database stays small.
        with self._lock:
            self._conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")

    # -- persons -----------------------------------------------------------------------------

    def get_person(self, key: bytes) -> Person | None:
        with self.reading() as conn:
            return self._person(conn, key)

    def _person(self, conn: sqlite3.Connection, key: bytes) -> Person | None:
        row = conn.execute("SELECT * FROM persons WHERE person_key = ?", (key,)).fetchone()
        if row is None:
            return None
        phones = [
            Phone(bytes(p["phone_key"]), p["masked_phone"], _time(p["linked_at"]))
            for p in conn.execute(
                "SELECT * FROM phones WHERE person_key = ? ORDER BY rowid", (key,)
            )
        ]
        last = conn.execute(
            "SELECT MAX(day) FROM declarations WHERE person_key = ?", (key,)
        ).fetchone()[0]
        return Person(
            key=bytes(row["person_key"]),
            name=row["name"],
            masked_id_number=row["masked_id_number"],
            phones=phones,
            card_key=bytes(row["card_key"]) if row["card_key"] is not None else None,
            masked_card=row["masked_card"],
            registered_by=RecordedActor(
                Role(row["registered_by_role"]),
                row["registered_by"],
                row["registered_by_masked"],
            ),
            registered_at=_time(row["registered_at"]),
            last_declared_day=int(last) if last is not None else None,
            residence_county=row["residence_county"],
            imported_by=row["imported_by"],
        )

    def phone_holder(self, phone_key: bytes) -> bytes | None:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT person_key FROM phones WHERE phone_key = ?", (phone_key,)
            ).fetchone()
        return bytes(row[0]) if row is not None else None

    def card_holder(self, card_key: bytes) -> bytes | None:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT person_key FROM persons WHERE card_key = ?", (card_key,)
            ).fetchone()
        return bytes(row[0]) if row is not None else None

    def save_registration(
        self,
        *,
        key: bytes,
        name: str,
        masked_id_number: str,
        new: bool,
        phones: Sequence[tuple[bytes, str]],
        card: tuple[bytes, str] | None,
        actor: RecordedActor,
        now: dt.datetime,
        outbox: Sequence[OutboxMessage],
    ) -> Person:
        """Insert (or extend) a person with phones and card, and queue the outbox, atomically."""
        with self.transaction() as conn:
            if new:
                try:
                    conn.execute(
                        "INSERT INTO persons (person_key, name, masked_id_number, registered_at, "
                        "registered_by_role, registered_by, registered_by_masked) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            name,
                            masked_id_number,
                            _iso(now),
                            actor.role.value,
                            actor.principal,
                            actor.masked_id_number,
                        ),
                    )
                except sqlite3.IntegrityError:
                    # A concurrent registration of the same person won; the caller retries.
                    raise AlreadyExists("the person was registered concurrently; retry") from None
            for phone_key, masked in phones:
                self._insert_phone(conn, key, phone_key, masked, now)
            if card is not None:
                self._set_card(conn, key, card)
            self._enqueue(conn, outbox, now)
            person = self._person(conn, key)
        assert person is not None
        return person

    def _insert_phone(
        self, conn: sqlite3.Connection, key: bytes, phone_key: bytes, masked: str, now: dt.datetime
    ) -> None:
        try:
            conn.execute(
                "INSERT INTO phones (phone_key, person_key, masked_phone, linked_at) "
                "VALUES (?, ?, ?, ?)",
                (phone_key, key, masked, _iso(now)),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"{masked} is linked to another person") from None

    def _set_card(self, conn: sqlite3.Connection, key: bytes, card: tuple[bytes, str]) -> None:
        try:
            conn.execute(
                "UPDATE persons SET card_key = ?, masked_card = ? WHERE person_key = ?",
                (card[0], card[1], key),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"card {card[1]} is linked to another person") from None

    def add_phone(
        self,
        key: bytes,
        phone_key: bytes,
        masked: str,
        now: dt.datetime,
        outbox: Sequence[OutboxMessage],
    ) -> Person:
        with self.transaction() as conn:
            self._insert_phone(conn, key, phone_key, masked, now)
            self._enqueue(conn, outbox, now)
            person = self._person(conn, key)
        assert person is not None
        return person

    def remove_phone(
        self, key: bytes, phone_key: bytes, now: dt.datetime, outbox: Sequence[OutboxMessage]
    ) -> Person | None:
        """The person after removal, or None if the phone was not theirs."""
        with self.transaction() as conn:
            gone = conn.execute(
                "DELETE FROM phones WHERE phone_key = ? AND person_key = ?", (phone_key, key)
            ).rowcount
            if gone == 0:
                return None
            self._enqueue(conn, outbox, now)
            return self._person(conn, key)

    def set_card(
        self,
        key: bytes,
        card: tuple[bytes, str],
        now: dt.datetime,
        outbox: Sequence[OutboxMessage],
    ) -> Person:
        with self.transaction() as conn:
            self._set_card(conn, key, card)
            self._enqueue(conn, outbox, now)
            person = self._person(conn, key)
        assert person is not None
        return person

    # -- bulk import -------------------------------------------------------------------------

    def import_people(
        self,
        rows: Sequence[ImportPerson],
        plan: Callable[[Sequence[ImportPerson], ImportState], ImportPlan],
        *,
        imported_by: str,
        now: dt.datetime,
    ) -> ImportPlan:
        """One chunk in one transaction: read what its rows touch, let `plan` decide, write
        the new persons, links and outbox messages (executemany). Durable on return."""
        person_keys = {r.key for r in rows}
        phone_keys = {key for r in rows for _, key, _ in r.phones}
        card_keys = {r.card[0] for r in rows if r.card is not None}
        stamp = _iso(now)
        with self.transaction() as conn:
            state = ImportState(
                self._known_persons(conn, person_keys),
                self._holders(
                    conn, "SELECT phone_key, person_key FROM phones", "phone_key", phone_keys
                ),
                self._holders(
                    conn, "SELECT card_key, person_key FROM persons", "card_key", card_keys
                ),
            )
            decided = plan(rows, state)
            conn.executemany(
                "INSERT INTO persons (person_key, name, masked_id_number, registered_at, "
                "registered_by_role, registered_by, registered_by_masked, residence_county, "
                "imported_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        r.key,
                        r.name,
                        r.masked_id_number,
                        stamp,
                        r.registered_by.role.value,
                        r.registered_by.principal,
                        r.registered_by.masked_id_number,
                        r.residence_county,
                        imported_by,
                    )
                    # In key order: neighbouring inserts share B-tree pages.
                    for r in sorted(decided.new_persons, key=lambda r: r.key)
                ),
            )
            conn.executemany(
                "UPDATE persons SET card_key = ?, masked_card = ? WHERE person_key = ?",
                ((card, masked, person) for person, card, masked in decided.card_updates),
            )
            conn.executemany(
                "UPDATE persons SET residence_county = ? WHERE person_key = ?",
                ((county, person) for person, county in decided.residence_updates),
            )
            conn.executemany(
                "INSERT INTO phones (phone_key, person_key, masked_phone, linked_at) "
                "VALUES (?, ?, ?, ?)",
                (
                    (phone, person, masked, stamp)
                    # By holder, in the file's order for each (the order phones are shown in).
                    for phone, person, masked in sorted(decided.new_phones, key=lambda t: t[1])
                ),
            )
            self._enqueue(conn, decided.outbox, now)
        return decided

    def _known_persons(
        self, conn: sqlite3.Connection, keys: Iterable[bytes]
    ) -> dict[bytes, KnownPerson]:
        stored: dict[bytes, tuple[str, bytes | None, int | None]] = {}
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            for r in conn.execute(
                "SELECT person_key, name, card_key, residence_county FROM persons "
                f"WHERE person_key IN ({marks})",
                part,
            ):
                stored[bytes(r[0])] = (r[1], bytes(r[2]) if r[2] is not None else None, r[3])
        # Phones are counted for the stored persons only: none at all in a fresh import.
        counts: dict[bytes, int] = {}
        for part in _chunks(stored):
            marks = ",".join("?" * len(part))
            for r in conn.execute(
                f"SELECT person_key, COUNT(*) FROM phones WHERE person_key IN ({marks}) "
                "GROUP BY person_key",
                part,
            ):
                counts[bytes(r[0])] = int(r[1])
        return {
            key: KnownPerson(name, card, county, counts.get(key, 0))
            for key, (name, card, county) in stored.items()
        }

    def _holders(
        self, conn: sqlite3.Connection, select: str, column: str, keys: Iterable[bytes]
    ) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            for r in conn.execute(f"{select} WHERE {column} IN ({marks})", part):
                found[bytes(r[0])] = bytes(r[1])
        return found

    # -- declarations ------------------------------------------------------------------------

    def declared_on(self, key: bytes, day: int) -> bool:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT 1 FROM declarations WHERE person_key = ? AND day = ?", (key, day)
            ).fetchone()
        return row is not None

    def save_declaration(
        self,
        *,
        key: bytes,
        day: int,
        now: dt.datetime,
        actor: RecordedActor,
        symptoms: Sequence[str],
        temperature: float | None,
        visits: Sequence[Visit],
        case_contact: bool,
        case_contact_day: int | None,
        derived_sources: Sequence[str],
        outbox_for: Any,
    ) -> Declaration | None:
        """Store a declaration and its outbox messages; None if one exists for that day.
        `outbox_for(declaration_id)` builds the messages (batch ids name the declaration)."""
        with self.transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO declarations (person_key, day, declared_at, actor_role, actor, "
                    "actor_masked, symptoms, temperature, visits, case_contact, "
                    "case_contact_day, derived_sources) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        day,
                        _iso(now),
                        actor.role.value,
                        actor.principal,
                        actor.masked_id_number,
                        json.dumps(list(symptoms)),
                        temperature,
                        json.dumps(
                            [[v.county, v.day, v.place] for v in visits], ensure_ascii=False
                        ),
                        int(case_contact),
                        case_contact_day,
                        json.dumps(list(derived_sources)),
                    ),
                )
            except sqlite3.IntegrityError:
                return None
            declaration_id = int(cursor.lastrowid or 0)
            self._enqueue(conn, outbox_for(declaration_id), now)
        return Declaration(
            declaration_id=declaration_id,
            person_key=key,
            day=day,
            declared_at=now,
            declared_by=actor,
            symptoms=list(symptoms),
            temperature_celsius=temperature,
            visits=list(visits),
            case_contact=case_contact,
            case_contact_day=case_contact_day,
            derived_sources=list(derived_sources),
        )

    def recent_declarations(self, key: bytes, limit: int) -> list[Declaration]:
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT * FROM declarations WHERE person_key = ? ORDER BY day DESC LIMIT ?",
                (key, limit),
            ).fetchall()
        return [
            Declaration(
                declaration_id=int(r["declaration_id"]),
                person_key=bytes(r["person_key"]),
                day=int(r["day"]),
                declared_at=_time(r["declared_at"]),
                declared_by=RecordedActor(Role(r["actor_role"]), r["actor"], r["actor_masked"]),
                symptoms=json.loads(r["symptoms"]),
                temperature_celsius=r["temperature"],
                visits=[Visit(int(c), int(d), str(p)) for c, d, p in json.loads(r["visits"])],
                case_contact=bool(r["case_contact"]),
                case_contact_day=r["case_contact_day"],
                derived_sources=json.loads(r["derived_sources"]),
            )
            for r in rows
        ]

    # -- outbox ------------------------------------------------------------------------------

    def _enqueue(
        self, conn: sqlite3.Connection, messages: Sequence[OutboxMessage], now: dt.datetime
    ) -> None:
        conn.executemany(
            "INSERT INTO outbox (kind, payload, body, created_at) VALUES (?, ?, ?, ?)",
            (
                (m.kind, "", request_bytes(m), _iso(now))
                if m.compact
                else (m.kind, json.dumps(dict(m.payload), ensure_ascii=False), None, _iso(now))
                for m in messages
            ),
        )

    def pending(self, limit: int = 100) -> list[PendingMessage]:
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT id, kind, payload, body, attempts FROM outbox WHERE dead = 0 "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            PendingMessage(
                int(r["id"]),
                r["kind"],
                json.loads(r["payload"]) if r["body"] is None else {},
                int(r["attempts"]),
                r["body"],
            )
            for r in rows
        ]

    def pending_count(self) -> int:
        with self.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE dead = 0").fetchone()[0])

    def acknowledge(self, *message_ids: int) -> None:
        """Delivered: delete the messages, in one transaction however many."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in message_ids])

    def record_failure(self, message_id: int, error: str, dead: bool) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, dead = ? WHERE id = ?",
                (error[:500], int(dead), message_id),
            )


def _chunks(keys: Iterable[bytes]) -> Iterable[list[bytes]]:
    part: list[bytes] = []
    for key in keys:
        part.append(key)
        if len(part) == LOOKUP_CHUNK:
            yield part
            part = []
    if part:
        yield part

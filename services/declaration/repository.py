"""The declaration service's storage: persons (name, masked identifiers, keys), phones, daily
declarations and the outbox of changes owed to the risk index, in SQLite or PostgreSQL
(docs/storage.md: one set of statements, DDL per backend).

No raw ID or phone number is stored: keys (16-byte keyed hashes) and masked forms only. A change
and the outbox messages it owes commit in one transaction, so a change the client saw
acknowledged always reaches the risk index eventually, even if that service was down.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from services._common.actors import NoMandate, Role
from services._common.errors import AlreadyExists, NotFound
from services._common.pg import insert_rows, select_by_keys
from services._common.storage import Place, Repository
from services.declaration.model import (
    Declaration,
    ImportPerson,
    ImportPlan,
    ImportState,
    KnownPerson,
    Mandate,
    NewMandate,
    OutboxMessage,
    PendingMessage,
    Person,
    Phone,
    Proxy,
    RecordedActor,
    Visit,
)

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

# Proxy mandates (R3, issue 10): a family proxy (a person, by key and masked ID number) or a grid
# worker (an account id) acts for a person only while a mandate links them. A mandate records
# when it was granted, on what basis (the proxy registered the person, a bulk import named
# them, or a grant) and who approved it, may end at `valid_until_ms`, and may be revoked (when,
# by whom, why). Rows are never deleted: the table is the record of every mandate there was.
# Times are Unix milliseconds, so "active at t" is a plain comparison. Declarations record the
# mandate a proxy declared under.
SCHEMA_V4 = """
CREATE TABLE mandates (
    mandate_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    proxy_role         TEXT    NOT NULL CHECK (proxy_role IN ('family_proxy', 'grid_worker')),
    proxy_key          BLOB    CHECK (proxy_key IS NULL OR length(proxy_key) = 16),
    proxy_masked       TEXT    NOT NULL DEFAULT '',  -- a family proxy's masked ID number
    proxy_principal    TEXT    NOT NULL DEFAULT '',  -- a grid worker's account id
    person_key         BLOB    NOT NULL REFERENCES persons(person_key),
    granted_at_ms      INTEGER NOT NULL,
    valid_until_ms     INTEGER,                      -- NULL: open-ended
    basis              TEXT    NOT NULL CHECK (basis IN ('registration', 'import', 'grant')),
    approved_by_role   TEXT    NOT NULL,
    approved_by        TEXT    NOT NULL,             -- account id ('' for a person)
    approved_by_masked TEXT    NOT NULL DEFAULT '',  -- the approving person's masked ID number
    reason             TEXT    NOT NULL DEFAULT '',
    revoked_at_ms      INTEGER,                      -- NULL: not revoked
    revoked_by_role    TEXT,
    revoked_by         TEXT,
    revoked_by_masked  TEXT,
    revoke_reason      TEXT    NOT NULL DEFAULT '',
    CHECK ((proxy_role = 'family_proxy') = (proxy_key IS NOT NULL)),
    CHECK ((proxy_role = 'grid_worker') = (proxy_principal != ''))
);
CREATE INDEX mandates_by_person ON mandates(person_key);
CREATE INDEX mandates_by_proxy_key ON mandates(proxy_key);
CREATE INDEX mandates_by_proxy_principal ON mandates(proxy_principal);
ALTER TABLE declarations ADD COLUMN mandate_id INTEGER REFERENCES mandates(mandate_id);
"""

# A mandate with the person's masked ID number and name.
_MANDATE_SELECT = (
    "SELECT m.*, p.masked_id_number AS person_masked, p.name AS person_name "
    "FROM mandates m JOIN persons p ON p.person_key = m.person_key"
)
# Active at a time (bound twice): granted, not revoked, not expired.
_ACTIVE_AT = (
    "m.revoked_at_ms IS NULL AND m.granted_at_ms <= ? "
    "AND (m.valid_until_ms IS NULL OR m.valid_until_ms > ?)"
)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# Staff accounts for signing in (services/declaration/signin.py): the password only as a salted
# scrypt hash. Disabled accounts are kept (who had which role, and why it ended).
SCHEMA_V5 = """
CREATE TABLE staff_accounts (
    principal       TEXT    PRIMARY KEY,
    role            TEXT    NOT NULL CHECK (role IN ('grid_worker', 'verifier', 'support', 'admin')),
    context         TEXT    NOT NULL DEFAULT '',  -- a verifier's workplace
    password_hash   BLOB    NOT NULL,             -- scrypt(password, salt)
    salt            BLOB    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,             -- the administrator's account id
    disabled_at_ms  INTEGER,
    disabled_reason TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class StaffAccount:
    principal: str
    role: str
    context: str
    password_hash: bytes
    salt: bytes
    disabled: bool


# Printed codes (R3, issue 11; services/declaration/cards.py): one row per card issued, never
# deleted; revoked (when, by whom, why) when lost or replaced. At most one card per person is
# not revoked (the partial unique index): issuing another revokes it in the same transaction.
SCHEMA_V6 = """
CREATE TABLE printed_cards (
    card_id           BLOB    PRIMARY KEY CHECK (length(card_id) = 16),  -- the token's cti
    person_key        BLOB    NOT NULL REFERENCES persons(person_key),
    issued_at_ms      INTEGER NOT NULL,
    expires_at_ms     INTEGER NOT NULL,
    key_id            BLOB    NOT NULL,                 -- the card key that signed it
    issued_by_role    TEXT    NOT NULL,
    issued_by         TEXT    NOT NULL,                 -- account id ('' for a person)
    issued_by_masked  TEXT    NOT NULL DEFAULT '',      -- the issuing person's masked ID number
    mandate_id        INTEGER REFERENCES mandates(mandate_id),  -- a proxy's
    revoked_at_ms     INTEGER,                          -- NULL: not revoked
    revoked_by_role   TEXT,
    revoked_by        TEXT,
    revoked_by_masked TEXT,
    revoke_reason     TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX printed_cards_by_person ON printed_cards(person_key, issued_at_ms);
CREATE UNIQUE INDEX printed_cards_one_unrevoked ON printed_cards(person_key)
    WHERE revoked_at_ms IS NULL;
"""


# The same versions in PostgreSQL's DDL (services/_common/storage.py): BYTEA for BLOB, BIGINT
# for SQLite's 64-bit INTEGER, identity columns for AUTOINCREMENT, and `phones.rowid` spelled
# out (the order phones were linked in, which SQLite's implicit rowid keeps).
PG_SCHEMA_V1 = """
CREATE TABLE persons (
    person_key           BYTEA PRIMARY KEY CHECK (length(person_key) = 16),
    name                 TEXT NOT NULL,
    masked_id_number     TEXT NOT NULL,
    card_key             BYTEA UNIQUE CHECK (card_key IS NULL OR length(card_key) = 16),
    masked_card          TEXT NOT NULL DEFAULT '',
    registered_at        TEXT NOT NULL,
    registered_by_role   TEXT NOT NULL,
    registered_by        TEXT NOT NULL,
    registered_by_masked TEXT NOT NULL DEFAULT ''
);
CREATE TABLE phones (
    rowid        BIGINT GENERATED ALWAYS AS IDENTITY,
    phone_key    BYTEA PRIMARY KEY CHECK (length(phone_key) = 16),
    person_key   BYTEA NOT NULL REFERENCES persons(person_key),
    masked_phone TEXT NOT NULL,
    linked_at    TEXT NOT NULL
);
CREATE INDEX phones_by_person ON phones(person_key, rowid);
CREATE TABLE declarations (
    declaration_id   BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    person_key       BYTEA  NOT NULL REFERENCES persons(person_key),
    day              BIGINT NOT NULL,
    declared_at      TEXT   NOT NULL,
    actor_role       TEXT   NOT NULL,
    actor            TEXT   NOT NULL,
    actor_masked     TEXT   NOT NULL DEFAULT '',
    symptoms         TEXT   NOT NULL,
    temperature      DOUBLE PRECISION,
    visits           TEXT   NOT NULL,
    case_contact     BIGINT NOT NULL,
    case_contact_day BIGINT,
    derived_sources  TEXT   NOT NULL,
    UNIQUE (person_key, day)
);
CREATE TABLE outbox (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind       TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    created_at TEXT   NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    dead       BIGINT NOT NULL DEFAULT 0
);
"""
PG_SCHEMA_V2 = """
ALTER TABLE persons ADD COLUMN residence_county BIGINT;
ALTER TABLE persons ADD COLUMN imported_by TEXT NOT NULL DEFAULT '';
"""
PG_SCHEMA_V3 = """
ALTER TABLE outbox ADD COLUMN body BYTEA;
"""
PG_SCHEMA_V4 = """
CREATE TABLE mandates (
    mandate_id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    proxy_role         TEXT   NOT NULL CHECK (proxy_role IN ('family_proxy', 'grid_worker')),
    proxy_key          BYTEA  CHECK (proxy_key IS NULL OR length(proxy_key) = 16),
    proxy_masked       TEXT   NOT NULL DEFAULT '',
    proxy_principal    TEXT   NOT NULL DEFAULT '',
    person_key         BYTEA  NOT NULL REFERENCES persons(person_key),
    granted_at_ms      BIGINT NOT NULL,
    valid_until_ms     BIGINT,
    basis              TEXT   NOT NULL CHECK (basis IN ('registration', 'import', 'grant')),
    approved_by_role   TEXT   NOT NULL,
    approved_by        TEXT   NOT NULL,
    approved_by_masked TEXT   NOT NULL DEFAULT '',
    reason             TEXT   NOT NULL DEFAULT '',
    revoked_at_ms      BIGINT,
    revoked_by_role    TEXT,
    revoked_by         TEXT,
    revoked_by_masked  TEXT,
    revoke_reason      TEXT   NOT NULL DEFAULT '',
    CHECK ((proxy_role = 'family_proxy') = (proxy_key IS NOT NULL)),
    CHECK ((proxy_role = 'grid_worker') = (proxy_principal != ''))
);
CREATE INDEX mandates_by_person ON mandates(person_key);
CREATE INDEX mandates_by_proxy_key ON mandates(proxy_key);
CREATE INDEX mandates_by_proxy_principal ON mandates(proxy_principal);
ALTER TABLE declarations ADD COLUMN mandate_id BIGINT REFERENCES mandates(mandate_id);
"""
PG_SCHEMA_V5 = """
CREATE TABLE staff_accounts (
    principal       TEXT   PRIMARY KEY,
    role            TEXT   NOT NULL CHECK (role IN ('grid_worker', 'verifier', 'support', 'admin')),
    context         TEXT   NOT NULL DEFAULT '',
    password_hash   BYTEA  NOT NULL,
    salt            BYTEA  NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    created_by      TEXT   NOT NULL,
    disabled_at_ms  BIGINT,
    disabled_reason TEXT   NOT NULL DEFAULT ''
);
"""
PG_SCHEMA_V6 = """
CREATE TABLE printed_cards (
    card_id           BYTEA  PRIMARY KEY CHECK (length(card_id) = 16),
    person_key        BYTEA  NOT NULL REFERENCES persons(person_key),
    issued_at_ms      BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL,
    key_id            BYTEA  NOT NULL,
    issued_by_role    TEXT   NOT NULL,
    issued_by         TEXT   NOT NULL,
    issued_by_masked  TEXT   NOT NULL DEFAULT '',
    mandate_id        BIGINT REFERENCES mandates(mandate_id),
    revoked_at_ms     BIGINT,
    revoked_by_role   TEXT,
    revoked_by        TEXT,
    revoked_by_masked TEXT,
    revoke_reason     TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX printed_cards_by_person ON printed_cards(person_key, issued_at_ms);
CREATE UNIQUE INDEX printed_cards_one_unrevoked ON printed_cards(person_key)
    WHERE revoked_at_ms IS NULL;
"""


# Consent for partner look-ups (issue 11, item 11; services/declaration/consent.py): every
# look-up a partner asked for (answered or refused, and why), and every withdrawal or
# restoration of a partner's access by the holder's side; the latest change per partner is in
# force. Rows are never deleted.
SCHEMA_V7 = """
CREATE TABLE partner_access (
    access_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    person_key   BLOB    NOT NULL REFERENCES persons(person_key),
    partner      TEXT    NOT NULL,             -- partner:<name> or verifier:<account>
    partner_kind TEXT    NOT NULL,
    purpose      TEXT    NOT NULL,             -- triage, bus, exam
    place        TEXT    NOT NULL DEFAULT '',
    at_ms        INTEGER NOT NULL,
    refusal      TEXT    NOT NULL DEFAULT ''   -- '' answered; else the refusal's reason
);
CREATE INDEX partner_access_by_person ON partner_access(person_key, at_ms);
CREATE TABLE consent_changes (
    change_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    person_key   BLOB    NOT NULL REFERENCES persons(person_key),
    partner      TEXT    NOT NULL,
    revoked      INTEGER NOT NULL CHECK (revoked IN (0, 1)),  -- 1 withdrawn, 0 restored
    at_ms        INTEGER NOT NULL,
    by_role      TEXT    NOT NULL,
    by_principal TEXT    NOT NULL,
    by_masked    TEXT    NOT NULL DEFAULT '',
    mandate_id   INTEGER REFERENCES mandates(mandate_id)
);
CREATE INDEX consent_changes_by_partner ON consent_changes(person_key, partner, change_id);
"""
PG_SCHEMA_V7 = """
CREATE TABLE partner_access (
    access_id    BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    person_key   BYTEA  NOT NULL REFERENCES persons(person_key),
    partner      TEXT   NOT NULL,
    partner_kind TEXT   NOT NULL,
    purpose      TEXT   NOT NULL,
    place        TEXT   NOT NULL DEFAULT '',
    at_ms        BIGINT NOT NULL,
    refusal      TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX partner_access_by_person ON partner_access(person_key, at_ms);
CREATE TABLE consent_changes (
    change_id    BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    person_key   BYTEA  NOT NULL REFERENCES persons(person_key),
    partner      TEXT   NOT NULL,
    revoked      BIGINT NOT NULL CHECK (revoked IN (0, 1)),
    at_ms        BIGINT NOT NULL,
    by_role      TEXT   NOT NULL,
    by_principal TEXT   NOT NULL,
    by_masked    TEXT   NOT NULL DEFAULT '',
    mandate_id   BIGINT REFERENCES mandates(mandate_id)
);
CREATE INDEX consent_changes_by_partner ON consent_changes(person_key, partner, change_id);
"""


class DeclarationRepository(Repository):
    MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7)
    PG_MIGRATIONS = (
        PG_SCHEMA_V1,
        PG_SCHEMA_V2,
        PG_SCHEMA_V3,
        PG_SCHEMA_V4,
        PG_SCHEMA_V5,
        PG_SCHEMA_V6,
        PG_SCHEMA_V7,
    )

    def __init__(self, place: Place, *, cache_mib: int = 256) -> None:
        super().__init__(place)
        if self.dialect != "sqlite":
            return
        # A bulk import inserts random keys all over the person and phone B-trees; a page
        # cache that holds their upper levels (SQLite's default is 2 MiB) spares each insert
        # re-reading them. Pages are allocated as used: a small database stays small.
        with self._lock:
            self._conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")

    # -- staff accounts ----------------------------------------------------------------------

    def staff_account(self, principal: str) -> StaffAccount | None:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT principal, role, context, password_hash, salt, disabled_at_ms"
                " FROM staff_accounts WHERE principal = ?",
                (principal,),
            ).fetchone()
        if row is None:
            return None
        return StaffAccount(row[0], row[1], row[2], row[3], row[4], row[5] is not None)

    def save_staff_account(
        self,
        principal: str,
        role: str,
        context: str,
        password_hash: bytes,
        salt: bytes,
        now_ms: int,
        created_by: str,
    ) -> bool:
        """Create the account, or give an existing one (enabled again) this password and
        role. True when it was created."""
        with self.transaction() as conn:
            existed = conn.execute(
                "SELECT 1 FROM staff_accounts WHERE principal = ?", (principal,)
            ).fetchone()
            conn.execute(
                "INSERT INTO staff_accounts (principal, role, context, password_hash, salt,"
                " created_at_ms, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (principal) DO UPDATE SET role = excluded.role,"
                " context = excluded.context, password_hash = excluded.password_hash,"
                " salt = excluded.salt, disabled_at_ms = NULL, disabled_reason = ''",
                (principal, role, context, password_hash, salt, now_ms, created_by),
            )
        return existed is None

    def disable_staff_account(self, principal: str, now_ms: int, reason: str) -> bool | None:
        """True: disabled now; False: it was already; None: no such account."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT disabled_at_ms FROM staff_accounts WHERE principal = ?", (principal,)
            ).fetchone()
            if row is None:
                return None
            if row[0] is not None:
                return False
            conn.execute(
                "UPDATE staff_accounts SET disabled_at_ms = ?, disabled_reason = ?"
                " WHERE principal = ?",
                (now_ms, reason, principal),
            )
        return True

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
        new_mandate: NewMandate | None = None,
        mandate: tuple[int, int] | None = None,
    ) -> Person:
        """Insert (or extend) a person with phones and card, and queue the outbox, atomically.
        A new person registered by a proxy gets `new_mandate` in the same transaction; a
        proxy's replay for a stored person holds `mandate` (id, the act's time in ms), checked
        still active in the transaction."""
        with self.transaction() as conn:
            if mandate is not None:
                _require_active(conn, *mandate)
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
                if new_mandate is not None:
                    _insert_mandate(conn, new_mandate, _ms(now))
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
        mandate: tuple[int, int] | None = None,
    ) -> Person:
        with self.transaction() as conn:
            if mandate is not None:
                _require_active(conn, *mandate)
            self._insert_phone(conn, key, phone_key, masked, now)
            self._enqueue(conn, outbox, now)
            person = self._person(conn, key)
        assert person is not None
        return person

    def remove_phone(
        self,
        key: bytes,
        phone_key: bytes,
        now: dt.datetime,
        outbox: Sequence[OutboxMessage],
        mandate: tuple[int, int] | None = None,
    ) -> Person | None:
        """The person after removal, or None if the phone was not theirs."""
        with self.transaction() as conn:
            if mandate is not None:
                _require_active(conn, *mandate)
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
        mandate: tuple[int, int] | None = None,
    ) -> Person:
        with self.transaction() as conn:
            if mandate is not None:
                _require_active(conn, *mandate)
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
        approved_by: RecordedActor | None = None,
    ) -> ImportPlan:
        """One chunk in one transaction: read what its rows touch, let `plan` decide, write
        the new persons, links and outbox messages (executemany). Durable on return. A new
        person whose row names a family proxy (by ID number) or a grid worker gets a mandate
        for them, approved by the importer (`approved_by`, default an ADMIN `imported_by`)."""
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
            insert_rows(
                conn,
                "persons",
                (
                    "person_key",
                    "name",
                    "masked_id_number",
                    "registered_at",
                    "registered_by_role",
                    "registered_by",
                    "registered_by_masked",
                    "residence_county",
                    "imported_by",
                    "card_key",
                    "masked_card",
                ),
                [
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
                        *decided.new_cards.get(r.key, (None, "")),
                    )
                    # In key order: neighbouring inserts share B-tree pages.
                    for r in sorted(decided.new_persons, key=lambda r: r.key)
                ],
            )
            approver = approved_by or RecordedActor(Role.ADMIN, imported_by)
            _insert_mandates(
                conn,
                (
                    NewMandate(proxy, r.key, None, "import", approver)
                    for r in decided.new_persons
                    if (proxy := _registrar(r)) is not None
                ),
                _ms(now),
            )
            conn.executemany(
                "UPDATE persons SET card_key = ?, masked_card = ? WHERE person_key = ?",
                ((card, masked, person) for person, card, masked in decided.card_updates),
            )
            conn.executemany(
                "UPDATE persons SET residence_county = ? WHERE person_key = ?",
                ((county, person) for person, county in decided.residence_updates),
            )
            insert_rows(
                conn,
                "phones",
                ("phone_key", "person_key", "masked_phone", "linked_at"),
                [
                    (phone, person, masked, stamp)
                    # By holder, in the file's order for each (the order phones are shown in).
                    for phone, person, masked in sorted(decided.new_phones, key=lambda t: t[1])
                ],
            )
            self._enqueue(conn, decided.outbox, now)
        return decided

    def _known_persons(
        self, conn: sqlite3.Connection, keys: Iterable[bytes]
    ) -> dict[bytes, KnownPerson]:
        stored: dict[bytes, tuple[str, bytes | None, int | None]] = {
            bytes(r[0]): (r[1], bytes(r[2]) if r[2] is not None else None, r[3])
            for r in select_by_keys(
                conn,
                "SELECT person_key, name, card_key, residence_county FROM persons",
                "person_key",
                keys,
            )
        }
        # Phones are counted for the stored persons only: none at all in a fresh import.
        counts = {
            bytes(r[0]): int(r[1])
            for r in select_by_keys(
                conn,
                "SELECT person_key, COUNT(*) FROM phones",
                "person_key",
                stored,
                "GROUP BY person_key",
            )
        }
        return {
            key: KnownPerson(name, card, county, counts.get(key, 0))
            for key, (name, card, county) in stored.items()
        }

    def _holders(
        self, conn: sqlite3.Connection, select: str, column: str, keys: Iterable[bytes]
    ) -> dict[bytes, bytes]:
        return {bytes(r[0]): bytes(r[1]) for r in select_by_keys(conn, select, column, keys)}

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
        mandate: tuple[int, int] | None = None,
    ) -> Declaration | None:
        """Store a declaration and its outbox messages; None if one exists for that day.
        `outbox_for(declaration_id)` builds the messages (batch ids name the declaration).
        A proxy's declaration holds `mandate` (id, the act's time in ms): checked still active
        in the transaction, and recorded with the declaration."""
        mandate_id = mandate[0] if mandate is not None else None
        with self.transaction() as conn:
            if mandate is not None:
                _require_active(conn, *mandate)
            try:
                cursor = conn.execute(
                    "INSERT INTO declarations (person_key, day, declared_at, actor_role, actor, "
                    "actor_masked, symptoms, temperature, visits, case_contact, "
                    "case_contact_day, derived_sources, mandate_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        mandate_id,
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
            mandate_id=mandate_id,
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
                mandate_id=r["mandate_id"],
            )
            for r in rows
        ]

    # -- mandates ----------------------------------------------------------------------------

    def mandate(self, mandate_id: int) -> Mandate | None:
        with self.reading() as conn:
            return _mandate(conn, mandate_id)

    def active_mandate(self, proxy: Proxy, person_key: bytes, at_ms: int) -> Mandate | None:
        """The proxy's mandate for the person in force at `at_ms`, if any (the latest)."""
        with self.reading() as conn:
            return _active(conn, proxy, person_key, at_ms)

    def grant_mandate(self, new: NewMandate, now_ms: int) -> tuple[Mandate, bool]:
        """Record a mandate: (it, True); or (the active one, False) when the same proxy already
        has one for the person ending at the same time (a replay). An active one ending at
        another time is replaced: revoked by the new grant's approver, naming its successor."""
        with self.transaction() as conn:
            current = _active(conn, new.proxy, new.person_key, now_ms)
            if current is not None and current.valid_until_ms == new.valid_until_ms:
                return current, False
            known = conn.execute(
                "SELECT 1 FROM persons WHERE person_key = ?", (new.person_key,)
            ).fetchone()
            if known is None:
                raise NotFound("no person is registered with that ID number; Register first")
            mandate_id = _insert_mandate(conn, new, now_ms)
            if current is not None:
                _set_revoked(
                    conn,
                    current.mandate_id,
                    now_ms,
                    new.approved_by,
                    f"replaced by mandate {mandate_id}",
                )
            stored = _mandate(conn, mandate_id)
        assert stored is not None
        return stored, True

    def revoke_mandate(
        self,
        mandate_id: int,
        by: RecordedActor,
        reason: str,
        now_ms: int,
        may: Callable[[Mandate], None],
    ) -> tuple[Mandate, bool] | None:
        """Revoke a mandate: (it, True); (it, False) if it was revoked before (nothing
        changes); None if there is no such mandate. `may(mandate)` raises if the caller may
        not revoke it (checked in the transaction, on the stored row)."""
        with self.transaction() as conn:
            current = _mandate(conn, mandate_id)
            if current is None:
                return None
            may(current)
            if current.revoked_at_ms is not None:
                return current, False
            _set_revoked(conn, mandate_id, now_ms, by, reason)
            stored = _mandate(conn, mandate_id)
        assert stored is not None
        return stored, True

    def list_mandates(
        self,
        *,
        person_key: bytes | None = None,
        proxy: Proxy | None = None,
        active_at_ms: int | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[Mandate]:
        """Mandates in id order after `after_id`: for a person, of a proxy, or both (neither:
        all); only those active at `active_at_ms` unless it is None."""
        where = ["m.mandate_id > ?"]
        args: list[Any] = [after_id]
        if person_key is not None:
            where.append("m.person_key = ?")
            args.append(person_key)
        if proxy is not None:
            clause, bound = _proxy_match(proxy)
            where.append(clause)
            args.extend(bound)
        if active_at_ms is not None:
            where.append(_ACTIVE_AT)
            args += [active_at_ms, active_at_ms]
        sql = f"{_MANDATE_SELECT} WHERE {' AND '.join(where)} ORDER BY m.mandate_id LIMIT ?"
        with self.reading() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [_mandate_of(r) for r in rows]

    # -- outbox ------------------------------------------------------------------------------

    def _enqueue(
        self, conn: sqlite3.Connection, messages: Sequence[OutboxMessage], now: dt.datetime
    ) -> None:
        conn.executemany(
            "INSERT INTO outbox (kind, payload, body, created_at) VALUES (?, ?, ?, ?)",
            (
                (m.kind, "", m.body, _iso(now))
                if m.body is not None
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


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def _proxy_match(proxy: Proxy) -> tuple[str, tuple[Any, ...]]:
    if proxy.role is Role.FAMILY_PROXY:
        return "m.proxy_role = 'family_proxy' AND m.proxy_key = ?", (proxy.person_key,)
    return "m.proxy_role = 'grid_worker' AND m.proxy_principal = ?", (proxy.principal,)


def _active(
    conn: sqlite3.Connection, proxy: Proxy, person_key: bytes, at_ms: int
) -> Mandate | None:
    clause, bound = _proxy_match(proxy)
    row = conn.execute(
        f"{_MANDATE_SELECT} WHERE m.person_key = ? AND {clause} AND {_ACTIVE_AT} "
        "ORDER BY m.mandate_id DESC LIMIT 1",
        (person_key, *bound, at_ms, at_ms),
    ).fetchone()
    return _mandate_of(row) if row is not None else None


def _mandate(conn: sqlite3.Connection, mandate_id: int) -> Mandate | None:
    row = conn.execute(f"{_MANDATE_SELECT} WHERE m.mandate_id = ?", (mandate_id,)).fetchone()
    return _mandate_of(row) if row is not None else None


def _require_active(conn: sqlite3.Connection, mandate_id: int, at_ms: int) -> None:
    """NoMandate unless the mandate is still in force: a proxy's write checks it again in its
    own transaction, so a revocation that lands between the check and the write wins."""
    row = conn.execute(
        f"SELECT 1 FROM mandates m WHERE m.mandate_id = ? AND {_ACTIVE_AT}",
        (mandate_id, at_ms, at_ms),
    ).fetchone()
    if row is None:
        raise NoMandate(
            f"mandate {mandate_id} was revoked or expired a moment ago: nothing was changed; "
            "the person or an administrator may grant a new one (`healthcode mandate grant`)"
        )


def _registrar(row: ImportPerson) -> Proxy | None:
    """The proxy a new person's import row names, if it can hold a mandate."""
    by = row.registered_by
    if by.role is Role.FAMILY_PROXY and row.registrar_key is not None:
        return Proxy(Role.FAMILY_PROXY, row.registrar_key, by.masked_id_number)
    if by.role is Role.GRID_WORKER and by.principal:
        return Proxy(Role.GRID_WORKER, principal=by.principal)
    return None


_MANDATE_COLUMNS = (
    "proxy_role",
    "proxy_key",
    "proxy_masked",
    "proxy_principal",
    "person_key",
    "granted_at_ms",
    "valid_until_ms",
    "basis",
    "approved_by_role",
    "approved_by",
    "approved_by_masked",
    "reason",
)
_INSERT_MANDATE = (
    f"INSERT INTO mandates ({', '.join(_MANDATE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_MANDATE_COLUMNS))})"
)


def _mandate_row(new: NewMandate, now_ms: int) -> tuple[Any, ...]:
    p = new.proxy
    return (
        p.role.value,
        p.person_key if p.role is Role.FAMILY_PROXY else None,
        p.masked_id_number if p.role is Role.FAMILY_PROXY else "",
        p.principal if p.role is Role.GRID_WORKER else "",
        new.person_key,
        now_ms,
        new.valid_until_ms,
        new.basis,
        new.approved_by.role.value,
        new.approved_by.principal,
        new.approved_by.masked_id_number,
        new.reason,
    )


def _insert_mandate(conn: sqlite3.Connection, new: NewMandate, now_ms: int) -> int:
    cursor = conn.execute(_INSERT_MANDATE, _mandate_row(new, now_ms))
    return int(cursor.lastrowid or 0)


def _insert_mandates(conn: sqlite3.Connection, mandates: Iterable[NewMandate], now_ms: int) -> None:
    """An import chunk's mandates (COPY on PostgreSQL)."""
    insert_rows(conn, "mandates", _MANDATE_COLUMNS, [_mandate_row(m, now_ms) for m in mandates])


def _set_revoked(
    conn: sqlite3.Connection, mandate_id: int, now_ms: int, by: RecordedActor, reason: str
) -> None:
    conn.execute(
        "UPDATE mandates SET revoked_at_ms = ?, revoked_by_role = ?, revoked_by = ?, "
        "revoked_by_masked = ?, revoke_reason = ? WHERE mandate_id = ? AND revoked_at_ms IS NULL",
        (now_ms, by.role.value, by.principal, by.masked_id_number, reason, mandate_id),
    )


def _mandate_of(r: sqlite3.Row) -> Mandate:
    role = Role(r["proxy_role"])
    proxy = (
        Proxy(role, bytes(r["proxy_key"]), r["proxy_masked"])
        if role is Role.FAMILY_PROXY
        else Proxy(role, principal=r["proxy_principal"])
    )
    revoked_by = None
    if r["revoked_at_ms"] is not None:
        revoked_by = RecordedActor(
            Role(r["revoked_by_role"]), r["revoked_by"] or "", r["revoked_by_masked"] or ""
        )
    return Mandate(
        mandate_id=int(r["mandate_id"]),
        proxy=proxy,
        person_key=bytes(r["person_key"]),
        masked_id_number=r["person_masked"],
        person_name=r["person_name"],
        granted_at_ms=int(r["granted_at_ms"]),
        valid_until_ms=r["valid_until_ms"],
        basis=r["basis"],
        approved_by=RecordedActor(
            Role(r["approved_by_role"]), r["approved_by"], r["approved_by_masked"]
        ),
        reason=r["reason"],
        revoked_at_ms=r["revoked_at_ms"],
        revoked_by=revoked_by,
        revoke_reason=r["revoke_reason"],
    )

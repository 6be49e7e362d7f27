"""The override log's hash chain (issue 10, item 4): each entry of `override_log` carries
`hash = SHA-256(DOMAIN || prev_hash || canonical(entry))`, where `prev_hash` is the hash of the
entry before (32 zero bytes for the first) and `canonical` is a fixed encoding of every other
field. Changing, removing or reordering any entry breaks the chain at that entry or the one
after; `verify` walks it and names the first broken entry. Pure: no database, no gRPC.

The canonical encoding is UTF-8 JSON with sorted keys, no spaces and no ASCII escaping, of:

    seq, at, action, person_key (hex), masked_id_number, colour (null for a clear), reason,
    valid_until (null for a clear), actor_role, actor_principal, index_version

with times as ISO 8601 in UTC (`datetime.isoformat()` of the UTC time, as stored). It never
changes for a released log: a new field would need a new DOMAIN.

A chain alone cannot show that its newest entries were cut off (the shorter chain is still
consistent): `head_hash` is returned by every ListOverrides so it can be kept elsewhere and
compared.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable

from services.risk_index.model import ChainCheck, OverrideRecord

DOMAIN = b"healthcode override log v1\n"
GENESIS = bytes(32)
HASH_BYTES = 32


def iso(value: dt.datetime) -> str:
    """A time as the log stores and hashes it."""
    return value.astimezone(dt.UTC).isoformat()


def canonical(entry: OverrideRecord) -> bytes:
    """Every field of the entry but its hashes, in the fixed encoding above."""
    fields = {
        "seq": entry.seq,
        "at": iso(entry.at),
        "action": entry.action,
        "person_key": entry.person_key.hex(),
        "masked_id_number": entry.masked_id_number,
        "colour": entry.colour,
        "reason": entry.reason,
        "valid_until": None if entry.valid_until is None else iso(entry.valid_until),
        "actor_role": entry.actor_role,
        "actor_principal": entry.actor_principal,
        "index_version": entry.index_version,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: bytes, entry: OverrideRecord) -> bytes:
    return hashlib.sha256(DOMAIN + prev_hash + canonical(entry)).digest()


def verify(entries: Iterable[OverrideRecord]) -> ChainCheck:
    """Walk the chain in sequence order: every entry must follow the one before (seq + 1, its
    `prev_hash` the hash before) and carry the hash of its own content. The first entry that
    does not is named (the entries after it are counted, not checked)."""
    expected_seq = 1
    head = GENESIS
    count = 0
    broken: tuple[int, str] | None = None
    newest = GENESIS
    for entry in entries:
        count += 1
        newest = entry.hash
        if broken is not None:
            continue
        problem = ""
        if entry.seq != expected_seq:
            problem = (
                f"entry {entry.seq} follows entry {expected_seq - 1}: an entry is missing"
                if entry.seq > expected_seq
                else f"entry {entry.seq} is out of order"
            )
        elif entry.prev_hash != head:
            problem = f"entry {entry.seq} does not name the hash of the entry before it"
        elif entry.hash != entry_hash(entry.prev_hash, entry):
            problem = f"entry {entry.seq} does not match its hash: it was changed"
        if problem:
            broken = (entry.seq, problem)
            continue
        head = entry.hash
        expected_seq += 1
    if broken is not None:
        return ChainCheck(False, count, newest, broken[0], broken[1])
    return ChainCheck(True, count, newest)

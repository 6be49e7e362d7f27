"""The cross-province exchange's shared part (R6, issue 11 item 10): the province table, the
exchange keys and the agreed hash, used by both the declaration service (which computes each
new person's hashes where the ID number passes) and the risk index (which keeps them, exports
and imports; services/risk_index/provinces.py).

**The agreed hash.** Each province and this city share an *exchange key* (32 random bytes,
agreed out of band, one per province; `<data_dir>/province-keys/<code>.key`). A person is named
in the exchange by

    exchange_hash = HMAC-SHA256(exchange key, "healthcode-exchange-v1\\0" + normalised ID number)[:16]

which the other side computes from the ID numbers it holds. It is neither a raw number nor this
platform's internal person key (keyed with the deployment secret, which never leaves it), and a
hash for Beijing says nothing about the one for Hebei.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import healthcode_matcher

from services._common.config import ConfigError
from services._common.errors import InvalidArgument
from services._common.identifiers import KEY_BYTES

logger = logging.getLogger(__name__)

DEFAULT_PROVINCES = Path(__file__).resolve().parents[1] / "risk_index" / "provinces.toml"
EXCHANGE_CONTEXT = b"healthcode-exchange-v1\0"
HASH_BYTES = KEY_BYTES  # 16, the width of every other key the platform stores
EXCHANGE_KEY_BYTES = 32
PROVINCE_SOURCES = frozenset({"province_red", "province_yellow"})
# Hashes one registration may carry: one per configured province, with room to spare.
MAX_HASHES_PER_PERSON = 32
CODE = re.compile(r"[a-z][a-z0-9_]{1,31}")

# (province code, 16-byte exchange hash) for one person.
ExchangeHashes = tuple[tuple[str, bytes], ...]


# --- the province table -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Province:
    """One province of the exchange and how its states become our sources."""

    code: str
    region: int
    name_zh: str
    name_en: str
    app: str
    recognition: str  # "direct" (Beijing, Hebei) or "national"
    states: Mapping[str, str]  # their state (lower case) -> our source, "" for none
    default_source: str  # for a state the table does not name

    def source_for(self, state: str) -> tuple[str, bool]:
        """(our source or "", whether the table names the state)."""
        key = state.strip().lower()
        if key in self.states:
            return self.states[key], True
        return self.default_source, False


def load_provinces(path: Path) -> dict[str, Province]:
    """The province table (provinces.toml); ConfigError naming what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    out: dict[str, Province] = {}
    for i, p in enumerate(data.get("provinces", [])):
        where = f"{path}: provinces[{i}]"
        code = str(p.get("code", ""))
        if not CODE.fullmatch(code):
            raise ConfigError(f"{where}.code: lower-case letters, digits and _, 2-32 characters")
        if code in out:
            raise ConfigError(f"{where}.code: {code!r} appears twice")
        states = {str(k).strip().lower(): str(v) for k, v in dict(p.get("states", {})).items()}
        default = str(p.get("default", ""))
        for state, source in [*states.items(), ("default", default)]:
            if source and source not in PROVINCE_SOURCES:
                raise ConfigError(
                    f"{where}.states.{state}: {source!r} is not one of "
                    f'{", ".join(sorted(PROVINCE_SOURCES))} or ""'
                )
        recognition = str(p.get("recognition", "national"))
        if recognition not in ("direct", "national"):
            raise ConfigError(f'{where}.recognition: "direct" or "national"')
        out[code] = Province(
            code=code,
            region=int(p.get("region", 0)),
            name_zh=str(p.get("name_zh", "")),
            name_en=str(p.get("name_en", code)),
            app=str(p.get("app", "")),
            recognition=recognition,
            states=states,
            default_source=default,
        )
    return out


def provinces_path(env: Mapping[str, str]) -> Path:
    configured = env.get("HEALTHCODE_PROVINCES", "").strip()
    return Path(configured) if configured else DEFAULT_PROVINCES


def keys_dir(data_dir: Path, env: Mapping[str, str]) -> Path:
    configured = env.get("HEALTHCODE_PROVINCE_KEYS", "").strip()
    return Path(configured) if configured else data_dir / "province-keys"


# --- the agreed hash --------------------------------------------------------------------------


def exchange_hash(exchange_key: bytes, normalised_id_number: str) -> bytes:
    """The 16-byte hash a province and this city agree on for one person (see the module)."""
    mac = hmac.new(exchange_key, EXCHANGE_CONTEXT + normalised_id_number.encode(), hashlib.sha256)
    return mac.digest()[:HASH_BYTES]


def read_exchange_key(path: Path) -> bytes:
    """An exchange key file: 64 hexadecimal digits."""
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not an exchange key (64 hexadecimal digits): {e}") from None
    if len(key) != EXCHANGE_KEY_BYTES:
        raise ConfigError(f"{path}: an exchange key is {EXCHANGE_KEY_BYTES} bytes")
    return key


def load_exchange_keys(directory: Path, codes: Sequence[str], *, create: bool) -> dict[str, bytes]:
    """Each province's exchange key. With `create` (a development data directory), a missing
    one is made (random, mode 0600) and logged: a deployment installs the agreed key instead.
    Both the declaration service and the risk index may start at once on a fresh data
    directory: the key is written whole to a temporary file and linked into place, so the
    first one made is the one both read."""
    out: dict[str, bytes] = {}
    for code in codes:
        path = directory / f"{code}.key"
        if not path.exists():
            if not create:
                continue  # that province cannot be exchanged with until its key is installed
            if _make_key(directory, path):
                logger.warning(
                    "no exchange key for %s: made a development one at %s (install the key "
                    "agreed with that province instead)",
                    code,
                    path,
                )
        out[code] = read_exchange_key(path)
    return out


def _make_key(directory: Path, path: Path) -> bool:
    """A random key at `path` unless another process made one first; True if this one did."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:  # mkstemp: mode 0600
            f.write(secrets.token_hex(EXCHANGE_KEY_BYTES) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


def exchange_keys(data_dir: Path, env: Mapping[str, str]) -> dict[str, bytes]:
    """The configured provinces' keys as a service reads them at start: the province table
    (HEALTHCODE_PROVINCES), keys from HEALTHCODE_PROVINCE_KEYS, or, for a development data
    directory (that variable unset), `<data_dir>/province-keys`, made when missing."""
    provinces = load_provinces(provinces_path(env))
    keys = load_exchange_keys(
        keys_dir(data_dir, env),
        list(provinces),
        create=not env.get("HEALTHCODE_PROVINCE_KEYS", "").strip(),
    )
    log_key_ids(keys)
    return keys


def key_id(exchange_key: bytes) -> str:
    """A short public fingerprint of an exchange key (not the key): what an operator compares
    between the declaration service's and the risk index's logs."""
    return hashlib.sha256(b"healthcode-exchange-key-id\0" + exchange_key).hexdigest()[:8]


def log_key_ids(keys: Mapping[str, bytes]) -> None:
    # Both services must hold the same keys: hashes made with another key name nobody.
    logger.info(
        "province exchange keys (key ids; the declaration service and the risk index must "
        "show the same): %s",
        ", ".join(f"{code} {key_id(key)}" for code, key in keys.items()) or "none",
    )


# --- the declaration side: a person's hashes where the ID number passes ------------------------


class ExchangeHasher:
    """Every configured province's hash of a person, computed from the ID number while it is
    at hand (registration, import): the hashes travel with the registration, the number does
    not. The same hash as `exchange_hash`, with each key's HMAC state made once and copied
    per person (this runs once per imported row: about 8 µs a row for two provinces)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self.provinces = tuple(keys)
        self._keyed = [
            (code, hmac.new(key, EXCHANGE_CONTEXT, hashlib.sha256)) for code, key in keys.items()
        ]

    def of_normalised(self, normalised_id_number: str) -> ExchangeHashes:
        number = normalised_id_number.encode()
        out = []
        for code, keyed in self._keyed:
            mac = keyed.copy()
            mac.update(number)
            out.append((code, mac.digest()[:HASH_BYTES]))
        return tuple(out)

    def of(self, id_number: str) -> ExchangeHashes:
        """The hashes of an ID number already validated (ValueError otherwise)."""
        if not self._keyed:
            return ()
        return self.of_normalised(healthcode_matcher.normalise_id_number(id_number))


NO_EXCHANGE = ExchangeHasher({})


# --- the risk index side: what a registration hands over ---------------------------------------


def check_exchange_hashes(hashes: Sequence[tuple[str, bytes]], field: str) -> ExchangeHashes:
    """A registration's (province, hash) pairs as the risk index stores them, or
    InvalidArgument naming each bad one (people[3].exchange_hashes[1].hash)."""
    violations: list[tuple[str, str]] = []
    if len(hashes) > MAX_HASHES_PER_PERSON:
        violations.append((field, f"at most {MAX_HASHES_PER_PERSON} (one per province)"))
    out: list[tuple[str, bytes]] = []
    for i, (province, hash_) in enumerate(hashes):
        if not CODE.fullmatch(province):
            violations.append(
                (f"{field}[{i}].province", "a province code (lower-case letters, digits, _)")
            )
        if len(hash_) != HASH_BYTES:
            violations.append(
                (f"{field}[{i}].hash", f"an exchange hash is {HASH_BYTES} bytes, not {len(hash_)}")
            )
        out.append((province, bytes(hash_)))
    if violations:
        raise InvalidArgument(violations)
    return tuple(out)

"""Code-token signing keys: a key ring in a directory, each key with an id and its created and
retired times, so that the signing key rotates without voiding the codes on screens.

The ring is a directory (default `<data_dir>/display/token-keys/`; HEALTHCODE_TOKEN_KEYS_DIR),
shared by every display worker, or a Kubernetes Secret mounted read-only:

    <key id>.json   one file per key, mode 0600: it holds the private key
    .lock           taken by whoever writes the ring (a rotation, the first key)

    {"key_id": "3f2a9c0d4b1e8a77", "algorithm": "Ed25519",
     "public_key": "<64 hex>", "private_key": "<64 hex: the Ed25519 seed>",
     "created_at": "2025-01-02T03:04:05.678Z", "retired_at": null, "legacy": false}

- The key id is the first 8 bytes of SHA-256 of the raw 32-byte public key (16 hex characters
  in file names and listings; the 8 bytes themselves in a token).
- The signer is the newest key (by `created_at`) that is not retired.
- A retired key signs no more but still verifies for `RETIRED_GRACE_MS` (75 s) after
  `retired_at`: the longest token life (60 s), plus the 10 s a running display may take to see
  the rotation (it signs with the old key until then), plus the 5 s of clock skew a token is
  allowed. After that it is dropped from verification and from GetVerificationKey, and the
  next rotation deletes its file.
- `rotate` (`healthcode keys rotate`), under the lock: writes a new key, then marks every key
  not yet retired as retired at the same instant, then deletes the keys past their grace.
  Every write is a new file renamed into place, so a reader sees a whole key file or none.
- A running display re-reads the ring, without a restart, when a token names a key id it does
  not hold and a file of that name exists (a rotation by another process), and otherwise checks
  every 10 s whether the listing changed (one `stat` per key file). A ring that no longer reads
  (a malformed file, no key left to sign with) is logged and the keys held are kept.
- Displays only read the ring, except to create the first key when it holds none.
- Upgrade: when the ring is empty, the `signing.key` of earlier versions (32 raw bytes, beside
  it) is imported as its first key, marked `legacy`: tokens in the format from before key ids
  (version 1) verify against that key, and only that key, for as long as it verifies.

Nothing here logs key material: key ids and paths only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from services._common.config import ConfigError, warn_if_readable_by_others

log = logging.getLogger(__name__)

ALGORITHM = "Ed25519"
KEY_ID_BYTES = 8
SEED_BYTES = 32
# The longest life of a token, and how far in the future a token's issue time may be.
MAX_TOKEN_TTL_MS = 60_000
CLOCK_SKEW_MS = 5_000
# How often a running display checks the ring for a change it has not been told of.
RELOAD_INTERVAL_S = 10.0
RETIRED_GRACE_MS = MAX_TOKEN_TTL_MS + int(RELOAD_INTERVAL_S * 1000) + CLOCK_SKEW_MS
KEY_FILE = re.compile(r"^([0-9a-f]{16})\.json$")
LOCK_FILE = ".lock"
KEYS_DIR_ENV = "HEALTHCODE_TOKEN_KEYS_DIR"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


class KeyRingError(ConfigError):
    """The ring cannot be used: unreadable, a malformed key file, no key to sign with. The
    message names the file and the field at fault, never key material."""


def key_id_of(public_key: bytes) -> bytes:
    """The 8-byte id of an Ed25519 public key: the first bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:KEY_ID_BYTES]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_ms(ms: int) -> str:
    """Unix milliseconds as ISO 8601 UTC, e.g. 2025-01-02T03:04:05.678Z."""
    text = (_EPOCH + ms * _MS).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _parse_ms(text: object) -> int:
    if not isinstance(text, str):
        raise TypeError("not a string")
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return (when - _EPOCH) // _MS


@dataclass(frozen=True, slots=True, eq=False)
class TokenKey:
    """One key of the ring. Its repr shows the id and times, never the private key."""

    key_id: bytes
    public_key: bytes
    created_at_ms: int
    signing_key: SigningKey = field(repr=False)
    verify_key: VerifyKey = field(repr=False)
    retired_at_ms: int | None = None
    # Imported from the signing.key of earlier versions: also verifies version-1 tokens.
    legacy: bool = False

    @classmethod
    def from_seed(
        cls,
        seed: bytes,
        created_at_ms: int,
        retired_at_ms: int | None = None,
        *,
        legacy: bool = False,
    ) -> TokenKey:
        signing_key = SigningKey(seed)
        public_key = bytes(signing_key.verify_key)
        return cls(
            key_id_of(public_key),
            public_key,
            created_at_ms,
            signing_key,
            signing_key.verify_key,
            retired_at_ms,
            legacy,
        )

    @classmethod
    def generate(cls, created_at_ms: int) -> TokenKey:
        return cls.from_seed(secrets.token_bytes(SEED_BYTES), created_at_ms)

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def not_after_ms(self) -> int | None:
        """When the key stops verifying; None while it is not retired."""
        if self.retired_at_ms is None:
            return None
        return self.retired_at_ms + RETIRED_GRACE_MS

    def verifies_at(self, at_ms: int) -> bool:
        return self.retired_at_ms is None or at_ms < self.retired_at_ms + RETIRED_GRACE_MS

    def status(self, signer: TokenKey | None, at_ms: int) -> str:
        """signing, active (not retired, but a newer key signs), retired (still verifies) or
        expired (verifies no more; the next rotation deletes it)."""
        if self.retired_at_ms is None:
            return "signing" if self is signer else "active"
        return "retired" if self.verifies_at(at_ms) else "expired"


def _key_to_json(key: TokenKey) -> bytes:
    document: dict[str, Any] = {
        "key_id": key.key_id_hex,
        "algorithm": ALGORITHM,
        "public_key": key.public_key.hex(),
        "private_key": bytes(key.signing_key).hex(),
        "created_at": format_ms(key.created_at_ms),
        "retired_at": None if key.retired_at_ms is None else format_ms(key.retired_at_ms),
        "legacy": key.legacy,
    }
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def _key_from_json(path: Path, content: bytes) -> TokenKey:
    # Errors name the file and the field, never a value: a value may be the private key.
    def bad(what: str) -> KeyRingError:
        return KeyRingError(f"token key file {path}: {what}")

    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise bad("not JSON") from None
    if not isinstance(document, dict):
        raise bad("not a JSON object")
    if document.get("algorithm") != ALGORITHM:
        raise bad(f"algorithm should be {ALGORITHM!r}")
    try:
        seed = bytes.fromhex(document["private_key"])
    except (KeyError, TypeError, ValueError):
        raise bad("private_key should be hexadecimal") from None
    if len(seed) != SEED_BYTES:
        raise bad(f"private_key should be {SEED_BYTES} bytes ({2 * SEED_BYTES} hex)")
    try:
        created = _parse_ms(document["created_at"])
    except (KeyError, TypeError, ValueError):
        raise bad("created_at should be an ISO 8601 time with its zone") from None
    retired_text = document.get("retired_at")
    try:
        retired = None if retired_text is None else _parse_ms(retired_text)
    except (TypeError, ValueError):
        raise bad("retired_at should be null or an ISO 8601 time with its zone") from None
    legacy = document.get("legacy", False)
    if not isinstance(legacy, bool):
        raise bad("legacy should be true or false")
    key = TokenKey.from_seed(seed, created, retired, legacy=legacy)
    if document.get("public_key") != key.public_key.hex():
        raise bad("public_key is not the private key's")
    if document.get("key_id") != key.key_id_hex or path.name != f"{key.key_id_hex}.json":
        raise bad("key_id (and the file name) should be the public key's id")
    return key


def key_path(directory: Path, key_id: bytes) -> Path:
    return directory / f"{key_id.hex()}.json"


def read_keys(directory: Path) -> list[TokenKey]:
    """Every key in the ring, newest first; [] if the directory does not exist."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise KeyRingError(f"token key ring {directory}: cannot list ({error.strerror})") from None
    keys = []
    for name in names:
        if not KEY_FILE.match(name):
            continue
        path = directory / name
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            continue  # deleted by a rotation meanwhile
        except OSError as error:
            raise KeyRingError(f"token key file {path}: cannot read ({error.strerror})") from None
        warn_if_readable_by_others(path, "a token signing key")
        keys.append(_key_from_json(path, content))
    keys.sort(key=lambda k: (k.created_at_ms, k.key_id), reverse=True)
    return keys


def signer_of(keys: Sequence[TokenKey]) -> TokenKey | None:
    """The newest key that is not retired."""
    active = [k for k in keys if k.retired_at_ms is None]
    return max(active, key=lambda k: (k.created_at_ms, k.key_id)) if active else None


def _listing(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    # What tells a change: a new, removed or replaced key file (each write is a new inode).
    # stat() follows symbolic links, as a Kubernetes Secret volume's files are.
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if KEY_FILE.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    entries.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(sorted(entries))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_key(directory: Path, key: TokenKey, *, replacing: bool = False) -> None:
    """Write aside (0600), then link (a new key: fails if the name is taken) or rename (a
    retirement) into place: a reader never sees half a key file."""
    final = key_path(directory, key.key_id)
    tmp = directory / f".{key.key_id_hex}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_key_to_json(key))
            f.flush()
            os.fsync(f.fileno())
        if replacing:
            os.replace(tmp, final)
        else:
            os.link(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _legacy_key(path: Path) -> TokenKey:
    """The signing.key of earlier versions (a raw 32-byte seed) as a ring key."""
    seed = path.read_bytes()
    if len(seed) != SEED_BYTES:
        raise KeyRingError(f"{path}: an Ed25519 seed is {SEED_BYTES} bytes, found {len(seed)}")
    created = path.stat().st_mtime_ns // 1_000_000
    return TokenKey.from_seed(seed, created, legacy=True)


def _first_key(directory: Path, keys: Sequence[TokenKey], legacy: Path | None, at: int) -> TokenKey:
    if not keys and legacy is not None and legacy.exists():
        key = _legacy_key(legacy)
        _write_key(directory, key)
        log.info("token signing key %s imported from %s", key.key_id_hex, legacy)
    else:
        key = TokenKey.generate(at)
        _write_key(directory, key)
        log.info("token signing key %s created in %s", key.key_id_hex, directory)
    return key


def ensure_signing_key(
    directory: Path, *, legacy_key: Path | None = None, at_ms: int | None = None
) -> TokenKey:
    """The ring's signer, creating the first key if no key signs (importing `legacy_key` if the
    ring is empty and that file exists). A ring that has a signer is only read."""
    directory = Path(directory)
    signer = signer_of(read_keys(directory))
    if signer is not None:
        return signer
    try:
        with _locked(directory):
            keys = read_keys(directory)
            signer = signer_of(keys)
            if signer is not None:
                return signer
            return _first_key(directory, keys, legacy_key, now_ms() if at_ms is None else at_ms)
    except OSError as error:
        raise KeyRingError(
            f"token key ring {directory} holds no key to sign with and cannot be written "
            f"({error.strerror}); create one with `healthcode keys rotate --keys-dir DIR` "
            f"and mount it there ({KEYS_DIR_ENV})"
        ) from None


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did."""

    signer: TokenKey
    retired: tuple[TokenKey, ...]
    removed: tuple[TokenKey, ...]


def rotate(
    directory: Path,
    *,
    legacy_key: Path | None = None,
    at_ms: int | None = None,
    keep_retired_ms: int = RETIRED_GRACE_MS,
) -> Rotation:
    """A new key signs from now; every key not yet retired is retired now (and verifies for
    `RETIRED_GRACE_MS` more); the files of keys retired more than `keep_retired_ms` ago are
    deleted. A ring whose tokens live longer than a minute code (printed cards, a year) passes
    their longest life, so no key that a live token names is ever deleted."""
    directory = Path(directory)
    at = now_ms() if at_ms is None else at_ms
    try:
        with _locked(directory):
            keys = read_keys(directory)
            if not keys and legacy_key is not None and legacy_key.exists():
                keys = [_first_key(directory, keys, legacy_key, at)]
            signer = TokenKey.generate(at)
            _write_key(directory, signer)
            retired = []
            for key in keys:
                if key.retired_at_ms is None:
                    key = replace(key, retired_at_ms=at)
                    _write_key(directory, key, replacing=True)
                    retired.append(key)
            removed = []
            for key in keys:
                if key.retired_at_ms is not None and at >= key.retired_at_ms + keep_retired_ms:
                    key_path(directory, key.key_id).unlink(missing_ok=True)
                    removed.append(key)
    except OSError as error:
        raise KeyRingError(f"token key ring {directory}: cannot write ({error.strerror})") from None
    log.info(
        "token keys rotated in %s: %s signs; retired %s; removed %s",
        directory,
        signer.key_id_hex,
        ", ".join(k.key_id_hex for k in retired) or "none",
        ", ".join(k.key_id_hex for k in removed) or "none",
    )
    return Rotation(signer, tuple(retired), tuple(removed))


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys a ring holds at one moment; replaced whole when the ring is re-read."""

    keys: tuple[TokenKey, ...]  # newest first
    signer: TokenKey
    by_id: dict[bytes, TokenKey]
    legacy: TokenKey | None

    @classmethod
    def of(cls, keys: Sequence[TokenKey], where: object = "the token key ring") -> KeySet:
        signer = signer_of(keys)
        if signer is None:
            raise KeyRingError(f"{where}: no key to sign with (every key is retired)")
        ordered = tuple(sorted(keys, key=lambda k: (k.created_at_ms, k.key_id), reverse=True))
        legacy = next((k for k in ordered if k.legacy), None)
        return cls(ordered, signer, {k.key_id: k for k in ordered}, legacy)


def _ids(keys: Sequence[TokenKey]) -> str:
    """The ids of the keys that verify now (what a log line says the ring holds)."""
    at = now_ms()
    return ", ".join(k.key_id_hex for k in keys if k.verifies_at(at)) or "none"


def _summary(keys: KeySet) -> tuple[object, ...]:
    return (keys.signer.key_id, tuple((k.key_id, k.retired_at_ms) for k in keys.keys))


class KeyRing:
    """The keys a display signs and verifies with, kept current with their directory.

    `signer()` and `verifier()` are the hot path: a clock read and a dict look-up, except once
    per `RELOAD_INTERVAL_S` (a `stat` per key file) and when a token names a key id not held.
    Safe from any thread: a re-read swaps in a whole new `KeySet`.
    """

    def __init__(
        self,
        keys: Sequence[TokenKey],
        directory: Path | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._set = KeySet.of(keys, directory or "the token keys")
        self._directory = directory
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._listing: tuple[tuple[str, int, int, int], ...] = ()
        self._names: frozenset[str] = frozenset()
        self._next_check = monotonic() + RELOAD_INTERVAL_S

    @classmethod
    def fixed(cls, signing_key: SigningKey) -> KeyRing:
        """A ring of one key and no directory: it never changes (tests, tools)."""
        return cls([TokenKey.from_seed(bytes(signing_key), created_at_ms=0)])

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        create: bool = False,
        legacy_key: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> KeyRing:
        """The ring in `directory`; with `create`, its first key is made if none signs."""
        directory = Path(directory)
        if create:
            ensure_signing_key(directory, legacy_key=legacy_key)
        try:
            listing = _listing(directory)  # before reading: a change meanwhile is seen later
        except FileNotFoundError:
            raise KeyRingError(f"token key ring {directory}: no such directory") from None
        except OSError as error:
            raise KeyRingError(
                f"token key ring {directory}: cannot list ({error.strerror})"
            ) from None
        keys = read_keys(directory)
        ring = cls(keys, directory, monotonic=monotonic)
        ring._listing, ring._names = listing, frozenset(e[0] for e in listing)
        log.info(
            "token keys from %s: %s signs; verifying %s",
            directory,
            ring._set.signer.key_id_hex,
            _ids(ring._set.keys),
        )
        return ring

    @property
    def directory(self) -> Path | None:
        return self._directory

    @property
    def keys(self) -> KeySet:
        return self._set

    def signer(self) -> TokenKey:
        """The key that signs new tokens."""
        if self._directory is not None and self._monotonic() >= self._next_check:
            self._check()
        return self._set.signer

    def verifier(self, key_id: bytes | None, at_ms: int) -> TokenKey | None:
        """The key a token naming `key_id` (None: a version-1 token) must verify with at
        `at_ms`; None if no such key is published then."""
        if self._directory is not None and self._monotonic() >= self._next_check:
            self._check()
        keys = self._set
        key = keys.legacy if key_id is None else keys.by_id.get(key_id)
        if key is None and key_id is not None and self._appeared(key_id):
            self._reload()
            key = self._set.by_id.get(key_id)
        if key is None or not key.verifies_at(at_ms):
            return None
        return key

    def published(self, at_ms: int) -> list[TokenKey]:
        """Every key a token may still verify with at `at_ms`: the signer first, then newest
        first."""
        if self._directory is not None and self._monotonic() >= self._next_check:
            self._check()
        keys = self._set
        others = [k for k in keys.keys if k is not keys.signer and k.verifies_at(at_ms)]
        return [keys.signer, *others]

    def _appeared(self, key_id: bytes) -> bool:
        # A rotation by another process: a key file we have not read. One stat, so a flood of
        # tokens naming made-up key ids costs little.
        if self._directory is None:
            return False
        path = key_path(self._directory, key_id)
        return path.name not in self._names and path.exists()

    def _check(self) -> None:
        with self._lock:
            if self._monotonic() < self._next_check:
                return  # another thread has just checked
            self._next_check = self._monotonic() + RELOAD_INTERVAL_S
        try:
            changed = self._directory is not None and _listing(self._directory) != self._listing
        except OSError as error:
            log.error("token key ring %s: cannot list (%s)", self._directory, error.strerror)
            return
        if changed:
            self._reload()

    def _reload(self) -> None:
        directory = self._directory
        if directory is None:
            return
        with self._lock:
            try:
                listing = _listing(directory)
                if listing == self._listing:
                    return  # another thread has just re-read it
                self._listing, self._names = listing, frozenset(e[0] for e in listing)
                fresh = KeySet.of(read_keys(directory), directory)
            except (KeyRingError, OSError) as error:
                # Keep signing and verifying with the keys held; the next change retries.
                log.error("token keys not re-read, keeping %s: %s", _ids(self._set.keys), error)
                return
            before = self._set
            self._set = fresh
        if _summary(fresh) != _summary(before):
            log.info(
                "token keys re-read from %s: %s signs; verifying %s",
                directory,
                fresh.signer.key_id_hex,
                _ids(fresh.keys),
            )

"""The token key ring (issue 10, "Keys"): a token signed by a key the ring does not publish is
refused; a rotation keeps the codes signed under the previous key valid until they expire and
no longer; another display worker over the same ring follows a rotation without a restart;
GetVerificationKey publishes every key that may still verify; private key files are 0600 and
nothing about keys but their ids is logged."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import base45
import grpc
import healthcode_matcher as hm
import pytest
from healthcode.v1 import common_pb2, display_pb2, display_pb2_grpc
from nacl.signing import SigningKey

from services._common.identifiers import Identifiers
from services.display import keyring
from services.display.config import DisplayConfig
from services.display.keyring import (
    RELOAD_INTERVAL_S,
    RETIRED_GRACE_MS,
    KeyRing,
    KeyRingError,
    ensure_signing_key,
    read_keys,
    rotate,
)
from services.display.logic import DisplayDesk, Holder, LiveColour
from services.display.servicer import SERVICE_NAME, DisplayServicer
from services.display.store import DisplayLog
from services.display.tokens import (
    MAX_TTL_MS,
    PREFIX,
    CodeTokens,
    TokenExpired,
    TokenForged,
    decode_token,
)
from tests.support import SECRET, Clock, StartServer

PERSON = bytes(range(16))
T0 = 1_700_000_000_000


class Monotonic:
    """A monotonic clock the test moves: the ring's periodic re-read fires only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def ring_dir(tmp_path: Path) -> Path:
    return tmp_path / "token-keys"


def _ring(directory: Path, monotonic: Monotonic | None = None) -> KeyRing:
    return KeyRing.open(directory, monotonic=monotonic or Monotonic())


def test_a_token_signed_by_a_key_not_in_the_ring_is_forged(ring_dir: Path) -> None:
    ensure_signing_key(ring_dir, at_ms=T0)
    tokens = CodeTokens(_ring(ring_dir))
    # A well-formed token from a key that was never published: its key id is unknown.
    outsider = CodeTokens(SigningKey(b"\x09" * 32))
    forged, _ = outsider.issue(PERSON, T0)
    with pytest.raises(TokenForged, match=f"key {outsider.key_id.hex()}, not published") as refused:
        tokens.verify(forged, T0)
    assert refused.value.reason == "TOKEN_FORGED"
    # The same, naming the ring's own key id: the signature does not verify.
    raw = base45.b45decode(forged[len(PREFIX) :])
    borrowed = PREFIX + base45.b45encode(raw.replace(outsider.key_id, tokens.key_id)).decode()
    assert decode_token(borrowed).claims.key_id == tokens.key_id
    with pytest.raises(TokenForged, match="signature does not verify"):
        tokens.verify(borrowed, T0)


def test_rotation_keeps_old_codes_valid_until_they_expire_and_not_after(ring_dir: Path) -> None:
    first = ensure_signing_key(ring_dir, at_ms=T0)
    monotonic = Monotonic()
    tokens = CodeTokens(_ring(ring_dir, monotonic))
    old, old_claims = tokens.issue(PERSON, T0 + 5_000)
    assert old_claims.key_id == first.key_id

    rotated_at = T0 + 10_000
    done = rotate(ring_dir, at_ms=rotated_at)
    assert [k.key_id for k in done.retired] == [first.key_id]
    assert done.signer.key_id != first.key_id
    monotonic.advance(RELOAD_INTERVAL_S)  # the display's periodic re-read

    new, new_claims = tokens.issue(PERSON, rotated_at + 1_000)
    assert new_claims.key_id == decode_token(new).claims.key_id == done.signer.key_id
    assert tokens.key_id == done.signer.key_id
    # The code signed before the rotation still scans until it expires...
    assert tokens.verify(old, rotated_at + 30_000) == old_claims
    assert tokens.verify(new, rotated_at + 30_000) == new_claims
    # ... is refused as expired (genuine, so its holder is known) once it has ...
    with pytest.raises(TokenExpired) as expired:
        tokens.verify(old, old_claims.expires_at_ms)
    assert expired.value.claims == old_claims
    # ... and once its key is dropped, nothing it signed verifies at all.
    dropped_at = rotated_at + RETIRED_GRACE_MS
    assert old_claims.expires_at_ms < dropped_at
    with pytest.raises(TokenForged, match="not published"):
        tokens.verify(old, dropped_at)
    # The signature itself is still good: it is the key that is no longer published.
    assert decode_token(old).verifies_with(first)


def test_a_ring_of_long_lived_tokens_keeps_its_retired_keys_through_later_rotations(
    ring_dir: Path,
) -> None:
    # Printed cards live a year: their ring is rotated with their longest life as the keep,
    # so a second rotation long after the first deletes nothing a live card names.
    first = ensure_signing_key(ring_dir, at_ms=T0)
    keep = 365 * 86_400_000
    rotate(ring_dir, at_ms=T0 + 10_000, keep_retired_ms=keep)
    later = rotate(ring_dir, at_ms=T0 + 10_000 + 30 * 86_400_000, keep_retired_ms=keep)
    assert later.removed == ()
    assert first.key_id in {k.key_id for k in read_keys(ring_dir)}
    # With the minute keys' keep, the same second rotation deletes the first key.
    again = rotate(ring_dir, at_ms=T0 + 10_000 + 31 * 86_400_000)
    assert first.key_id in {k.key_id for k in again.removed}


def test_a_retired_key_verifies_a_full_token_life_after_retirement(ring_dir: Path) -> None:
    # A worker that has not yet seen the rotation signs with the retired key for up to
    # RELOAD_INTERVAL_S more: such a code must live its whole minute.
    ensure_signing_key(ring_dir, at_ms=T0)
    stale_worker = CodeTokens(_ring(ring_dir))
    rotated_at = T0 + 1_000
    rotate(ring_dir, at_ms=rotated_at)
    late = rotated_at + int(RELOAD_INTERVAL_S * 1000)
    token, claims = stale_worker.issue(PERSON, late)
    other_worker = CodeTokens(_ring(ring_dir))
    assert other_worker.verify(token, claims.expires_at_ms - 1) == claims
    assert RETIRED_GRACE_MS >= MAX_TTL_MS + int(RELOAD_INTERVAL_S * 1000)


def test_verification_keys_list_both_keys_during_the_overlap_then_one(ring_dir: Path) -> None:
    first = ensure_signing_key(ring_dir, at_ms=T0)
    monotonic = Monotonic()
    tokens = CodeTokens(_ring(ring_dir, monotonic))
    assert [k.key_id for k in tokens.verification_keys(T0)] == [first.key_id]
    rotated_at = T0 + 10_000
    second = rotate(ring_dir, at_ms=rotated_at).signer
    monotonic.advance(RELOAD_INTERVAL_S)
    during = tokens.verification_keys(rotated_at + 1)
    assert [k.key_id for k in during] == [second.key_id, first.key_id]
    assert during[0].not_after_ms is None
    assert during[1].not_after_ms == rotated_at + RETIRED_GRACE_MS
    after = tokens.verification_keys(rotated_at + RETIRED_GRACE_MS)
    assert [k.key_id for k in after] == [second.key_id]
    # The next rotation deletes the files of keys that verify no more.
    third = rotate(ring_dir, at_ms=rotated_at + RETIRED_GRACE_MS + 1)
    assert [k.key_id for k in third.removed] == [first.key_id]
    assert {k.key_id for k in read_keys(ring_dir)} == {second.key_id, third.signer.key_id}


def test_another_worker_over_the_same_ring_follows_a_rotation(ring_dir: Path) -> None:
    ensure_signing_key(ring_dir, at_ms=T0)
    a_clock, b_clock = Monotonic(), Monotonic()
    worker_a = CodeTokens(_ring(ring_dir, a_clock))
    worker_b = CodeTokens(_ring(ring_dir, b_clock))
    before, _ = worker_a.issue(PERSON, T0 + 1_000)

    second = rotate(ring_dir, at_ms=T0 + 2_000).signer  # `healthcode keys rotate`
    # Worker A sees it at its periodic check, without a restart ...
    a_clock.advance(RELOAD_INTERVAL_S)
    after, claims = worker_a.issue(PERSON, T0 + 3_000)
    assert claims.key_id == second.key_id
    # ... worker B, whose periodic check is not due, at the first token naming the new key.
    assert worker_b.verify(after, T0 + 4_000) == claims
    assert worker_b.key_id == second.key_id
    assert worker_b.verify(before, T0 + 4_000).person_key == PERSON


def test_a_running_display_follows_a_rotation_through_its_config(tmp_path: Path) -> None:
    config = DisplayConfig.from_env({"HEALTHCODE_DATA_DIR": str(tmp_path)})
    assert config.token_keys_dir == tmp_path / "display" / "token-keys"
    config.ensure_signing_key()  # what the supervisor does before its workers start
    monotonic = Monotonic()
    tokens = CodeTokens(
        KeyRing.open(config.token_keys_dir, create=True, monotonic=monotonic), config.token_ttl_ms
    )
    first = tokens.key_id
    rotate(config.token_keys_dir)
    assert tokens.key_id == first  # not due yet
    monotonic.advance(RELOAD_INTERVAL_S)
    assert tokens.key_id != first
    elsewhere = tmp_path / "mounted"
    moved = DisplayConfig.from_env(
        {"HEALTHCODE_DATA_DIR": str(tmp_path), "HEALTHCODE_TOKEN_KEYS_DIR": str(elsewhere)}
    )
    assert moved.token_keys_dir == elsewhere
    assert moved.for_worker(1, None).token_keys_dir == elsewhere


def test_key_files_are_private_and_hold_what_the_docs_say(ring_dir: Path) -> None:
    first = ensure_signing_key(ring_dir, at_ms=T0)
    rotate(ring_dir, at_ms=T0 + 1)  # rewrites the first key's file as retired
    assert stat.S_IMODE(ring_dir.stat().st_mode) == 0o700
    files = sorted(ring_dir.glob("*.json"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(ring_dir.glob("*.tmp")) and not list(ring_dir.glob(".*.tmp"))
    document = json.loads((ring_dir / f"{first.key_id_hex}.json").read_text())
    assert document["key_id"] == first.key_id_hex
    assert document["public_key"] == first.public_key.hex()
    assert document["retired_at"] is not None
    assert "private_key" in document and "private" not in repr(first)


def test_nothing_about_keys_but_their_ids_is_logged(
    ring_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    legacy_file = ring_dir.parent / "signing.key"
    legacy_file.write_bytes(bytes(SigningKey(b"\x0c" * 32)))
    monotonic = Monotonic()
    tokens = CodeTokens(
        KeyRing.open(ring_dir, create=True, legacy_key=legacy_file, monotonic=monotonic)
    )
    token, _ = tokens.issue(PERSON, T0)
    tokens.verify(token, T0)
    rotate(ring_dir, at_ms=T0 + 1)
    monotonic.advance(RELOAD_INTERVAL_S)
    tokens.issue(PERSON, T0 + 2)  # the periodic re-read
    with pytest.raises(TokenForged):
        tokens.verify(CodeTokens(SigningKey(b"\x0d" * 32)).issue(PERSON, T0)[0], T0)
    keys = read_keys(ring_dir)
    (ring_dir / "0123456789abcdef.json").write_text("{not json")
    monotonic.advance(RELOAD_INTERVAL_S)
    tokens.issue(PERSON, T0 + 3)  # the re-read fails: logged, the keys held are kept

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert len(keys) == 2
    for key in keys:
        assert key.key_id_hex in logged
        seed = bytes(key.signing_key)
        for material in (seed, key.public_key):
            assert material.hex() not in logged
            assert base64.b64encode(material).decode() not in logged
            assert base64.urlsafe_b64encode(material).decode().rstrip("=") not in logged
    assert "0123456789abcdef.json" in logged  # the bad file is named


def test_a_malformed_key_file_is_refused_naming_the_file_never_the_key(ring_dir: Path) -> None:
    key = ensure_signing_key(ring_dir, at_ms=T0)
    path = ring_dir / f"{key.key_id_hex}.json"
    document = json.loads(path.read_text())
    document["public_key"] = "00" * 32
    path.write_text(json.dumps(document))
    with pytest.raises(KeyRingError, match="public_key is not the private key's") as refused:
        KeyRing.open(ring_dir)
    assert str(path) in str(refused.value)
    assert document["private_key"] not in str(refused.value)


def test_a_ring_that_cannot_be_written_and_holds_no_key_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(directory: Path) -> NoReturn:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    # A Kubernetes Secret volume is mounted read-only (and tests run as root, whom no mode
    # stops from writing).
    monkeypatch.setattr(keyring, "_locked", read_only)
    with pytest.raises(KeyRingError, match="HEALTHCODE_TOKEN_KEYS_DIR") as refused:
        KeyRing.open(tmp_path / "keys", create=True)
    assert "Read-only file system" in str(refused.value)
    with pytest.raises(KeyRingError, match="no such directory"):
        KeyRing.open(tmp_path / "missing")


# --- through the real servicer -----------------------------------------------------------------

HOLDER = hm.synthetic_id_numbers(1, 7).decode().split()[0]
IDENTIFIERS = Identifiers.from_secret(SECRET)
GATE = display_pb2.Device(device_id="scanner-1", place="gate 1")


@dataclass
class Served:
    stub: display_pb2_grpc.DisplayServiceStub
    clock: Clock
    monotonic: Monotonic
    ring_dir: Path

    def show(self) -> display_pb2.ShowResponse:
        citizen = common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=HOLDER)
        )
        return self.stub.Show(
            display_pb2.ShowRequest(
                actor=citizen, person=common_pb2.PersonRef(id_number=HOLDER), device=GATE
            ),
            timeout=10,
        )

    def scan(self, token: str) -> display_pb2.ScanResponse:
        verifier = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-1")
        return self.stub.Scan(
            display_pb2.ScanRequest(actor=verifier, token=token, device=GATE), timeout=10
        )

    def keys(self) -> display_pb2.GetVerificationKeyResponse:
        return self.stub.GetVerificationKey(display_pb2.GetVerificationKeyRequest(), timeout=10)


@pytest.fixture
def served(tmp_path: Path, clock: Clock, start_server: StartServer) -> Iterator[Served]:
    ring_dir = tmp_path / "token-keys"
    ensure_signing_key(ring_dir, at_ms=clock.ms())
    monotonic = Monotonic()
    tokens = CodeTokens(KeyRing.open(ring_dir, monotonic=monotonic), clock_ms=clock.ms)
    log = DisplayLog(tmp_path / "display.db", clock_ms=clock.ms)
    desk = DisplayDesk(
        tokens,
        log,
        lambda key, version: LiveColour(0, 1, "test"),
        lambda key: Holder("张*", "12**************34"),
        clock_ms=clock.ms,
    )
    servicer = DisplayServicer(desk, log, tokens, IDENTIFIERS)
    server = start_server(
        lambda s: display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    yield Served(display_pb2_grpc.DisplayServiceStub(server.channel), clock, monotonic, ring_dir)
    server.close()
    log.close()


def test_the_servicer_refuses_a_token_of_an_unpublished_key_and_publishes_a_rotation(
    served: Served,
) -> None:
    first = served.keys()
    assert len(first.keys) == 1 and first.keys[0].signing
    assert first.key_id == first.keys[0].key_id and len(first.key_id) == 8
    assert first.ed25519_public_key == first.keys[0].ed25519_public_key
    assert not first.keys[0].HasField("not_after")

    outsider = CodeTokens(SigningKey(b"\x0a" * 32))
    forged, _ = outsider.issue(IDENTIFIERS.person(HOLDER, "person").key, served.clock.ms())
    with pytest.raises(grpc.RpcError) as refused:
        served.scan(forged)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    old_a, old_b = served.show().token, served.show().token
    assert decode_token(old_a).claims.key_id == first.key_id
    second = rotate(served.ring_dir, at_ms=served.clock.ms()).signer
    served.monotonic.advance(RELOAD_INTERVAL_S)
    new = served.show().token
    assert decode_token(new).claims.key_id == second.key_id

    overlap = served.keys()
    assert [k.key_id for k in overlap.keys] == [second.key_id, first.key_id]
    assert overlap.key_id == second.key_id
    assert overlap.ed25519_public_key == second.public_key
    assert [k.signing for k in overlap.keys] == [True, False]
    assert overlap.keys[1].not_after.ToMilliseconds() == second.created_at_ms + RETIRED_GRACE_MS

    # A code shown before the rotation still scans while it lives ...
    served.clock.advance(dt.timedelta(seconds=20))
    assert served.scan(old_a).scan_id > 0
    assert served.scan(new).scan_id > 0
    # ... is refused as expired once it has (genuine: the holder just refreshes) ...
    served.clock.advance(dt.timedelta(seconds=41))
    with pytest.raises(grpc.RpcError) as expired:
        served.scan(old_b)
    assert expired.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # ... and once the old key is dropped it is no longer published, nor trusted.
    served.clock.advance(dt.timedelta(milliseconds=RETIRED_GRACE_MS))
    after = served.keys()
    assert [k.key_id for k in after.keys] == [second.key_id]
    with pytest.raises(grpc.RpcError) as dropped:
        served.scan(old_b)
    assert dropped.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not published" in (dropped.value.details() or "")

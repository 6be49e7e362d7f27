"""The province exchange's hashes at the declaration side (R6): computed where the ID number
passes (Register, every import row), with the same hash as the risk index's `exchange_hash`,
and carried in the registration's outbox message, never the number itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import healthcode_matcher
import pytest
from healthcode.v1 import risk_index_pb2

from services._common import exchange
from services._common.actors import Actor, Role
from services._common.exchange import ExchangeHasher
from services._common.identifiers import Identifiers
from services.declaration import outbox, wire
from services.declaration.logic import Declarations
from services.declaration.model import ImportInput
from services.declaration.repository import DeclarationRepository
from services.risk_index import provinces
from tests.pg import Place
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(6, 1010).decode().split()
KEYS = {"beijing": bytes(range(32)), "hebei": bytes(range(32, 64))}
GRID = Actor(Role.GRID_WORKER, "grid-0042")
IMPORTER = Actor(Role.ADMIN, "operator")


def expected(id_number: str) -> list[tuple[str, bytes]]:
    """What the risk index computes (EnrolExchangeHashes) for the same person."""
    normalised = healthcode_matcher.normalise_id_number(id_number)
    return [(code, provinces.exchange_hash(key, normalised)) for code, key in KEYS.items()]


def test_the_declaration_side_hash_is_the_risk_index_hash() -> None:
    hasher = ExchangeHasher(KEYS)
    assert list(hasher.of(IDS[0])) == expected(IDS[0])
    # Written as people write it (lower-case x, spaces): the same normalised number, same hash.
    sloppy = " " + IDS[0].lower() + " "
    assert hasher.of(sloppy) == hasher.of(IDS[0])
    assert hasher.of(IDS[0]) != hasher.of(IDS[1])
    assert exchange.NO_EXCHANGE.of(IDS[0]) == ()  # no province configured: nothing to carry


def test_keys_are_made_once_for_a_development_data_directory(tmp_path: Path) -> None:
    made = exchange.exchange_keys(tmp_path, {})
    assert set(made) == {"beijing", "hebei"}
    assert (tmp_path / "province-keys" / "beijing.key").stat().st_mode & 0o077 == 0
    # The other service starting on the same directory reads the same keys.
    assert exchange.exchange_keys(tmp_path, {}) == made
    assert exchange.key_id(made["beijing"]) != exchange.key_id(made["hebei"])
    assert exchange.key_id(made["beijing"]) not in made["beijing"].hex()
    # Two processes racing to make a key: the first one made stays, the second is not written.
    path = tmp_path / "province-keys" / "beijing.key"
    assert exchange._make_key(path.parent, path) is False
    assert exchange.read_exchange_key(path) == made["beijing"]
    # No temporary file left behind.
    assert {p.name for p in path.parent.iterdir()} == {"beijing.key", "hebei.key"}
    # A deployment names its directory: a missing key there is not made up.
    installed = tmp_path / "installed"
    installed.mkdir()
    assert exchange.exchange_keys(tmp_path, {"HEALTHCODE_PROVINCE_KEYS": str(installed)}) == {}


@pytest.fixture()
def repo(place: Place) -> Iterator[DeclarationRepository]:
    # Once per storage backend (tests/conftest.py `place`).
    repo = DeclarationRepository(place("d.sqlite3"))
    yield repo
    repo.close()


@pytest.fixture()
def service(repo: DeclarationRepository) -> Declarations:
    return Declarations(repo, Identifiers.from_secret(SECRET), exchange=ExchangeHasher(KEYS))


class CapturingStub:
    """The risk index as the outbox sees it: records each request."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def RegisterPerson(self, request: Any, timeout: float) -> None:
        self.requests.append(request)

    def RegisterPeople(self, request: Any, timeout: float) -> None:
        self.requests.append(request)


def hashes_of(entry: Any) -> list[tuple[str, bytes]]:
    return [(h.province, h.hash) for h in entry.exchange_hashes]


def test_register_carries_the_hashes_in_its_outbox_message(
    service: Declarations, repo: DeclarationRepository
) -> None:
    service.register(GRID, "张三", IDS[0], [])
    service.register(GRID, "李四", IDS[1], [])
    service.register(GRID, "张三", IDS[0], [])  # a replay: registered once, hashed once
    pending = repo.pending()
    assert [m.kind for m in pending] == ["register_person", "register_person"]
    for message in pending:
        assert IDS[0] not in str(message.payload) and IDS[1] not in str(message.payload)
    # Sent alone (RegisterPerson) or grouped with the next ones (RegisterPeople).
    stub = CapturingStub()
    outbox.send(stub, pending[0], 5.0)  # type: ignore[arg-type]
    assert isinstance(stub.requests[0], risk_index_pb2.RegisterPersonRequest)
    assert hashes_of(stub.requests[0]) == expected(IDS[0])
    assert hashes_of(outbox.as_keyed_person(pending[1])) == expected(IDS[1])


def test_every_imported_row_carries_its_hashes(
    service: Declarations, repo: DeclarationRepository
) -> None:
    service.register(GRID, "张0", IDS[0], [])  # present already: not registered again
    rows = [ImportInput(i + 2, IDS[i], f"张{i}", registered_by=Role.CITIZEN) for i in range(4)] + [
        ImportInput(6, "12345", "坏", registered_by=Role.CITIZEN)
    ]
    outcome = service.import_chunk(IMPORTER, rows)
    assert (outcome.imported, outcome.already_present, outcome.rejected) == (3, 1, 1)
    message = repo.pending()[-1]
    assert message.kind == "register_people" and message.body is not None
    for i in range(4):
        assert IDS[i].encode() not in message.body
    request = wire.request_from(message.kind, message.body)
    assert isinstance(request, risk_index_pb2.RegisterPeopleRequest)
    assert [hashes_of(p) for p in request.people] == [expected(i) for i in IDS[1:4]]


def test_an_import_message_stored_by_an_older_version_still_goes() -> None:
    # Four fields per person, no hashes: sent as it is (`province enrol` covers those people).
    key = bytes(16).hex()
    request = wire.request("register_people", {"people": [[key, "12**3X", [], []]]})
    assert isinstance(request, risk_index_pb2.RegisterPeopleRequest)
    assert len(request.people) == 1 and not request.people[0].exchange_hashes

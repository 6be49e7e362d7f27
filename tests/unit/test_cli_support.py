"""The helpers every `healthcode` command module shares (clients/cli_support.py), and that no
command module needs `clients.cli` itself (the import cycle `python -m clients.cli` had)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from healthcode.v1 import common_pb2, declaration_pb2

from clients.cli_support import HOLDER_ROLE_NAME, acting, recorded

REPO = Path(__file__).resolve().parents[2]
PERSON = "120101199001011234"
PROXY = "120101196005051237"


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_command_module_imports_the_cli_module() -> None:
    """`python -m clients.cli` runs cli.py as __main__: a command module that imported
    `clients.cli` (even when a command runs) would load a second copy of it, whose settings
    the root options never set."""
    modules = sorted((REPO / "clients").glob("cli_*.py"))
    assert {m.stem for m in modules} >= {"cli_cards", "cli_consent", "cli_partners", "cli_support"}
    for module in modules:
        assert "clients.cli" not in _imported(module), f"{module.name} imports clients.cli"


def test_the_person_acts_by_their_id_number_and_a_proxy_by_their_own() -> None:
    citizen = acting("citizen", PERSON, None, "cli")
    assert citizen.role == common_pb2.ACTOR_ROLE_CITIZEN
    assert citizen.person.id_number == PERSON and not citizen.principal
    proxy = acting("family-proxy", PERSON, PROXY, "cli")
    assert proxy.role == common_pb2.ACTOR_ROLE_FAMILY_PROXY
    assert proxy.person.id_number == PROXY


def test_a_family_proxy_without_their_id_number_is_told_to_give_it() -> None:
    with pytest.raises(typer.BadParameter, match="their own ID number") as refused:
        acting("family-proxy", PERSON, None, "cli")
    assert refused.value.param_hint == "--proxy-id"


@pytest.mark.parametrize(
    ("by", "role"),
    [
        ("grid-worker", common_pb2.ACTOR_ROLE_GRID_WORKER),
        ("support", common_pb2.ACTOR_ROLE_SUPPORT),
        ("admin", common_pb2.ACTOR_ROLE_ADMIN),
    ],
)
def test_staff_act_by_their_account_in_the_role_of_their_by_word(
    by: str, role: common_pb2.ActorRole.ValueType
) -> None:
    staff = acting(by, PERSON, PROXY, "desk-2")
    assert staff.role == role and staff.principal == "desk-2"
    assert not staff.HasField("person")  # staff never act under the person's number


def test_a_recorded_actor_reads_as_role_and_masked_who() -> None:
    holder = declaration_pb2.RecordedActor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, masked_id_number="1201**********1234"
    )
    assert recorded(holder) == "citizen 1201**********1234"
    assert recorded(holder, HOLDER_ROLE_NAME) == "holder 1201**********1234"
    desk = declaration_pb2.RecordedActor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="desk-2")
    assert recorded(desk, HOLDER_ROLE_NAME) == "support desk desk-2"

"""The CLI as a person runs it against a test stack: `healthcode --declaration ... ARGS`, in
process (typer's CliRunner), so a test reads its exit code and what it printed."""

from __future__ import annotations

from typer.testing import CliRunner

from clients import cli
from clients.stack import Stack


def invoke(stack: Stack, *args: str) -> tuple[int, str]:
    """(exit code, output) of `healthcode ARGS` with the stack's four addresses."""
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        [
            "--declaration", p.declaration,
            "--risk-index", p.risk_index,
            "--colour", p.colour,
            "--display", p.display,
            *args,
        ],
    )  # fmt: skip
    return result.exit_code, result.output

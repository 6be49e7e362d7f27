"""The README's walkthrough, through the CLI only, as a person following it would (issue 11,
"Done when"): a daughter registers her mother, who has no smartphone, prints her a card, the
card is scanned on a bus, the daughter revokes it, and the next scan on the bus is refused.
Each step is its own `healthcode` process with only HEALTHCODE_DATA_DIR set, as in a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clients import feedgen
from clients.stack import REPO, Stack

MOTHER, DAUGHTER = feedgen.synthetic_id_numbers(2, 9393)


def run(stack: Stack, *args: str) -> tuple[int, str]:
    """`healthcode ARGS` in a process of its own, as the README's shell runs it."""
    p = stack.peers
    env = {
        **os.environ,
        "HEALTHCODE_DATA_DIR": str(stack.data_dir),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")]),
        "COLUMNS": "200",
    }
    peers = ["--declaration", p.declaration, "--risk-index", p.risk_index]
    peers += ["--colour", p.colour, "--display", p.display]
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", *peers, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_register_a_relative_print_her_card_scan_it_on_a_bus_and_revoke_it(
    stack: Stack, tmp_path: Path
) -> None:
    as_daughter = ["--by", "family-proxy", "--proxy-id", DAUGHTER]
    assert run(stack, "register", "李秀兰", DAUGHTER, "--phone", "13912345678")[0] == 0
    code, out = run(stack, "register", "王秀英", MOTHER, *as_daughter)
    assert code == 0, out

    card, token = tmp_path / "mother.pdf", tmp_path / "mother.token"
    code, out = run(
        stack,
        "card", "issue", "--id-number", MOTHER, *as_daughter,
        "--out", str(card), "--token-out", str(token),
    )  # fmt: skip
    assert code == 0, out
    assert card.read_bytes().startswith(b"%PDF")
    assert token.stat().st_mode & 0o077 == 0
    scanned = token.read_text(encoding="ascii").strip()
    assert scanned.startswith("HCC1:")

    bus = ["--temperature", "36.6", "--vehicle", "津A·12345", "--route", "8"]
    code, out = run(stack, "bus-scan", scanned, *bus)
    assert code == 0 and "PASS" in out, out
    code, out = run(stack, "bus-scan", scanned, *bus)  # a card scans every day, not once
    assert code == 0 and "PASS" in out, out
    assert MOTHER not in out

    code, out = run(
        stack, "card", "revoke", "--id-number", MOTHER, *as_daughter, "--reason", "lost"
    )
    assert code == 0 and "revoked" in out, out
    code, out = run(stack, "bus-scan", scanned, *bus)
    assert code == 1 and "CARD_REVOKED" in out, out

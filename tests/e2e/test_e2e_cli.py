"""The `healthcode` CLI against the real processes, and `make run`'s demo in its --once mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clients import feedgen
from clients.stack import REPO, Stack
from tests.e2e.cli_support import invoke
from tests.e2e.waits import eventually, today

PEOPLE = feedgen.synthetic_id_numbers(4, 7170)


def test_ingest_csv_points_at_bad_lines_then_is_idempotent(stack: Stack, tmp_path: Path) -> None:
    for n, id_number in enumerate(PEOPLE[:2]):
        code, out = invoke(stack, "register", f"李{n}", id_number)
        assert code == 0, out
    bad_id = PEOPLE[0][:-1] + ("1" if PEOPLE[0][-1] != "1" else "2")
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text(
        f"source,id_number,day,tracer\n"
        f"close_contact,{PEOPLE[0]},{today()},team-3\n"
        f"close_contact,{bad_id},{today()},team-3\n",
        encoding="utf-8",
    )
    code, out = invoke(stack, "ingest", str(csv_file))
    assert code == 1
    assert "INVALID_ARGUMENT" in out and "line 3" in out, out
    assert bad_id not in out  # the CLI never echoes a raw number back

    csv_file.write_text(
        f"source,id_number,day,tracer\n"
        f"close_contact,{PEOPLE[0]},{today()},team-3\n"
        f"close_contact,{PEOPLE[1]},{today()},team-3\n",
        encoding="utf-8",
    )
    code, out = invoke(stack, "ingest", str(csv_file))
    assert code == 0 and "2 rows accepted" in out, out
    code, out = invoke(stack, "ingest", str(csv_file))
    assert code == 0 and "2 already ingested" in out, out

    def explained() -> str:
        return invoke(stack, "explain", PEOPLE[1])[1]

    out = eventually("explain to show the close contact", explained, lambda o: "RED" in o)
    assert "close-contact" in out and today() in out
    assert PEOPLE[1] not in out


def test_cli_scan_prints_the_verifiers_decision_and_no_reasons(stack: Stack) -> None:
    code, out = invoke(stack, "register", "赵六", PEOPLE[3])
    assert code == 0, out
    code, token = invoke(stack, "show", PEOPLE[3], "--token-only")
    assert code == 0 and token.startswith("HCN1:"), token
    code, out = invoke(stack, "scan", token.strip())
    assert code == 0, out
    assert "PASS" in out and "GREEN" in out, out
    assert PEOPLE[3] not in out


def test_cli_errors_say_what_to_fix(stack: Stack) -> None:
    code, out = invoke(stack, "register", "王五", "12345")
    assert code == 1 and "id_number" in out, out
    code, out = invoke(stack, "show", PEOPLE[2])
    assert code == 1 and "NOT_FOUND" in out and "register" in out, out
    code, out = invoke(stack, "scan", "HCN1:GARBAGE")
    assert code == 1 and "INVALID_ARGUMENT" in out and "TOKEN_MALFORMED" in out, out
    code, out = invoke(stack, "status")
    assert code == 0 and out.count("SERVING") == 4, out


def test_make_run_demo_once_starts_loads_smoke_tests_and_stops(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "protos")])
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.demo", "--once", "--free-ports",
            "--persons", "40", "--data-dir", str(tmp_path / "demo"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the output goes into the failure message below
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "all four SERVING" in out
    assert "smoke check:" in out and "FAIL" not in out, out
    assert "risk_index exit 0, declaration exit 0, colour exit 0, display exit 0" in out, out

"""The city benchmark still runs end to end at a toy size.

Speed is measured by `make bench-city`, never here: this checks that the script starts the
real services, imports a city and its feeds through the CLI, restarts the risk index and the
colour replica, keeps a steady load in which every probed write shows on Show, and prints a
row for every figure the issue asks for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def bench_city(*args: str) -> dict[str, str]:
    """The table's rows (figure -> measured) of one run."""
    short = ["--load-seconds", "4", "--show-seconds", "1", "--clients", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_city", *short, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| figure")
    }


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_city_runs_and_reports_every_figure(tmp_path: Path) -> None:
    kept = tmp_path / "city"
    rows = bench_city("--people", "600", "--keep", str(kept))
    wanted = [
        "import of 600 people",
        "resident memory, all four",
        "risk_index restart to SERVING",
        "colour restart to SERVING",
        "registration reply -> Show shows it",
        "feed batch reply -> Show shows it",
        "WatchIndex bytes per version",
        "colour replica applying a delta",
        "Show per second at 600 people / at 2,000",
        "Show per second at 600 people over 600 of them",
    ]
    for start in wanted:
        assert any(label.startswith(start) for label in rows), (start, rows)
    # Every probed write showed: none left "not shown".
    for label in rows:
        if "Show shows it" in label:
            assert ", 0 not shown" in label, label
    # The kept city starts again without an import and is measured from its memory on.
    again = bench_city("--resume", str(kept))
    assert not any(label.startswith("import of") for label in again), again
    assert any(label.startswith("the kept city's four services") for label in again), again
    for start in wanted[1:]:
        assert any(label.startswith(start) for label in again), (start, again)

"""The throughput benchmark still runs end to end at a toy size.

Speed is measured by `make bench-throughput`, never here: this only checks that the script
starts the services and the echo server, drives every phase through `healthcode load`, prints
its table with every row, writes the midnight plot, and stops what it started.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_throughput_runs_every_phase(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_throughput", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("Command: `python -m bench.bench_throughput --quick")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    labels = " ".join(rows)
    for expected in (
        "echo server, Show's messages, 1 process",
        "DisplayService.Show, 1 process",
        "DisplayService.Scan, 2 process",
        "ColourService.EvaluateStream",
        "midnight profile on Show",
        "Show, 2 processes / 1 process",
        "colour from the colour service",
        "storage in PostgreSQL",
    ):
        assert expected in labels, out
    assert (tmp_path / "midnight.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    for name in ("show-1p", "scan-1p", "echo-2p", "evaluate-stream", "midnight", "show-postgresql"):
        assert (tmp_path / f"{name}.json").is_file(), name

"""The exam benchmark still runs end to end at a toy size.

Speed is measured by `make bench-exams`, never here: this only checks that the script starts the
services, loads a city, verifies a candidate list through `healthcode exam verify` (the never
registered candidates are referred: the script checks their number itself), prints its table and
stops what it started.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_exams_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_exams", "--candidates", "60", "--registered", "50"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("Command: `python -m bench.bench_exams --candidates 60 --registered 50`")
    assert "| candidates (registered / never registered) | 60 (50 / 10) |" in out
    assert "(10 of them not registered)" in out
    results = (tmp_path / "results.csv").read_text(encoding="utf-8").splitlines()
    assert results[0] == "candidate_number,masked_name,decision,note" and len(results) == 61
    ids = [line.rsplit(",", 1)[1] for line in (tmp_path / "candidates.csv").read_text(
        encoding="utf-8").splitlines()[1:]]  # fmt: skip
    text = "\n".join(results)
    assert not any(i in text for i in ids)  # the result never holds an ID number

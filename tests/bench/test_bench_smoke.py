"""The benchmarks still run, at a toy size, and still agree with their baselines.

Speed is measured by `make bench`, never here: these tests only check that the benchmark
scripts work end to end (a change to the matcher or the rules once broke one silently) and that
the figures they print come with a baseline that agrees with the matcher.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(module: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_bench_matcher_runs_and_agrees_with_the_reference() -> None:
    out = run("bench.bench_matcher", "--persons", "20000", "--phones", "30000")
    assert "disagreements with the matcher: 0" in out
    assert "colour and rule counts agree with the matcher" in out
    for figure in ("index build", "snapshot load", "raw ID number -> verdict"):
        assert figure in out, f"the table lost its {figure!r} row"


@pytest.mark.slow
def test_bench_whatif_runs_and_counts_transitions() -> None:
    out = run("bench.bench_whatif", "--persons", "20000")
    assert "**what-if**" in out and "WhatIf as served" in out
    assert "persons changing colour" in out

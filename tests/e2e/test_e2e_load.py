"""`healthcode load` as a real process against the echo server (bench/echo_server.py, two
processes on one port) and against the real display and colour services; locust's user file
against the echo server. Counts and files only: no timing assertions."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from healthcode.v1 import display_pb2, display_pb2_grpc
from typer.testing import CliRunner

from clients import cli, load
from clients.channel import open_channel
from clients.stack import REPO, Stack
from tests.e2e.waits import eventually

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CITY, SEED, SAMPLE = 30, 5, 20


def env(stack: Stack | None = None) -> dict[str, str]:
    """The CLI's environment; with a stack, its data directory (where the credentials are)."""
    e = dict(os.environ)
    if stack is not None:
        e["HEALTHCODE_DATA_DIR"] = str(stack.data_dir)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "protos")])
    e["COLUMNS"] = "120"
    return e


def healthcode_load(*args: str, expect_exit: int = 0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "load", *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,  # the output goes into the failure message below
    )
    out = done.stdout + done.stderr
    assert done.returncode == expect_exit, out
    return out


def summary(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    """The echo server with two processes on one free port; its address."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", "0", "--procs", "2"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 60)
        line = server.stdout.readline() if ready else ""
        assert line.startswith("echo server on 127.0.0.1:"), line
        assert "2 processes" in line
        yield line.split()[3].rstrip(",")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    assert code == 0


def test_a_fixed_rate_against_the_echo_server(echo: str, tmp_path: Path) -> None:
    out = healthcode_load(
        "--target", "echo", "--address", echo, "--rate", "40", "--duration", "2",
        "--channels", "4", "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "p.png"),
    )  # fmt: skip
    s = summary(tmp_path / "s.json")
    assert (s["calls"], s["ok"], s["errors"], s["failed"]) == (80, 80, {}, 0), out
    assert s["rpc"] == "DisplayService.Show" and s["latency_from"] == "scheduled send"
    assert sum(w["ok"] for w in s["windows"]) == 80
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
    assert_png(tmp_path / "p.png")
    assert "DisplayService.Show on echo" in out and "p99" in out


def test_flat_out_scan_and_midnight_with_two_generator_processes(echo: str, tmp_path: Path) -> None:
    healthcode_load(
        "--target", "echo", "--address", echo, "--call", "scan", "--calls", "60",
        "--concurrency", "4", "--procs", "2", "--json", str(tmp_path / "scan.json"),
    )  # fmt: skip
    s = summary(tmp_path / "scan.json")
    assert (s["calls"], s["ok"], s["error_count"], s["prepared_tokens"]) == (60, 60, 0, 60)
    assert s["mode"] == "closed loop (flat out)" and s["procs"] == 2

    out = healthcode_load(
        "--target", "echo", "--address", echo, "--profile", "midnight", "--rate", "10",
        "--base-s", "1", "--ramp-s", "1", "--hold-s", "1", "--peak-factor", "3", "--procs", "2",
        "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png"),
    )  # fmt: skip
    s = summary(tmp_path / "m.json")
    plan = load.LoadPlan(
        load.Target.echo, echo, load.Call.show, ("x",), rate=10, procs=2,
        profile=load.Profile.midnight, midnight=load.Midnight(1, 1, 1, 3),
    )  # fmt: skip
    assert s["ok"] == s["calls"] == load.expected_calls(plan), out
    assert [p["phase"] for p in s["phases"]] == ["before", "ramp up", "peak", "ramp down", "after"]
    assert "by phase" in out
    assert_png(tmp_path / "m.png")


def test_the_h2load_body_is_written_without_a_server(tmp_path: Path) -> None:
    out = healthcode_load("--write-h2load-body", str(tmp_path / "show.body"), "--sample", "3")
    body = (tmp_path / "show.body").read_bytes()
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    assert "h2load" in out and "te: trailers" in out and "DisplayService/Show" in out


@pytest.mark.skipif(shutil.which("locust", path=str(Path(sys.executable).parent)) is None,
                    reason="locust is not installed (pip install -e '.[dev]')")  # fmt: skip
def test_the_locust_file_times_show_and_scan(echo: str, tmp_path: Path) -> None:
    locust = str(Path(sys.executable).parent / "locust")
    done = subprocess.run(
        [
            locust, "-f", str(REPO / "bench" / "locustfile.py"), "--headless", "-u", "4",
            "-r", "4", "-t", "2s", "--host", echo, "--csv", str(tmp_path / "l"),
            "--only-summary",
        ],
        cwd=tmp_path,
        env={**env(), "HEALTHCODE_LOAD_SAMPLE": "10", "HEALTHCODE_INSECURE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out  # locust exits 1 on any failed request
    assert "DisplayService.Show" in out and "DisplayService.Scan" in out, out


# --- the real services -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(module_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """A small synthetic city registered through `healthcode seed`, shown once each."""
    p = module_stack.peers
    result = CliRunner().invoke(
        cli.app,
        [
            "--declaration", p.declaration, "--risk-index", p.risk_index, "--colour", p.colour,
            "--display", p.display, "seed", "--people", str(CITY), "--seed", str(SEED),
            "--no-feeds", "--out", str(tmp_path_factory.mktemp("seed")),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    people = load.people_from_city(SAMPLE, CITY, SEED)

    def shown() -> list[str]:
        """Who cannot be shown yet (the colour service follows the index)."""
        missing = []
        with open_channel(p.display) as channel:
            stub = display_pb2_grpc.DisplayServiceStub(channel)
            device = display_pb2.Device(device_id="e2e-load", place="test")
            for id_number in people:
                try:
                    stub.Show(load.show_request(id_number, device), timeout=10)
                except grpc.RpcError as e:
                    missing.append(e.code().name if isinstance(e, grpc.Call) else "error")
        return missing

    eventually("every sampled person to be shown", shown, lambda m: not m, timeout_s=60)
    return module_stack


def peers_args(stack: Stack) -> list[str]:
    p = stack.peers
    return ["--display", p.display, "--colour", p.colour]


def test_show_and_scan_against_the_display_service(seeded: Stack, tmp_path: Path) -> None:
    people = ["--sample", str(SAMPLE), "--city", str(CITY), "--seed", str(SEED)]
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", *peers_args(seeded), "load", *people,
            "--rate", "20", "--duration", "2", "--json", str(tmp_path / "show.json"),
            "--plot", str(tmp_path / "show.png"),
        ],
        cwd=REPO, env=env(seeded), capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    s = summary(tmp_path / "show.json")
    assert (s["target"], s["calls"], s["ok"], s["errors"]) == ("display", 40, 40, {}), out
    assert_png(tmp_path / "show.png")
    for id_number in load.people_from_city(SAMPLE, CITY, SEED):
        assert id_number not in out  # masked or absent, never raw

    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", *peers_args(seeded), "load", *people,
            "--call", "scan", "--rate", "10", "--duration", "2",
            "--json", str(tmp_path / "scan.json"),
        ],
        cwd=REPO, env=env(seeded), capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    s = summary(tmp_path / "scan.json")
    assert (s["rpc"], s["calls"], s["ok"], s["error_count"]) == ("DisplayService.Scan", 20, 20, 0)


def test_evaluate_stream_against_the_colour_service(seeded: Stack, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", *peers_args(seeded), "load", "--target",
            "colour", "--sample", str(SAMPLE), "--city", str(CITY), "--seed", str(SEED),
            "--batch", "25", "--calls", "6", "--concurrency", "2",
            "--json", str(tmp_path / "stream.json"),
        ],
        cwd=REPO, env=env(seeded), capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    s = summary(tmp_path / "stream.json")
    assert (s["rpc"], s["ok"], s["items"], s["error_count"]) == (
        "ColourService.EvaluateStream",
        6,
        150,
        0,
    ), out
    assert "persons evaluated" in out
    # the per-person form: one PersonRef a message, a Verdict each
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", *peers_args(seeded), "load", "--target",
            "colour", "--sample", str(SAMPLE), "--city", str(CITY), "--seed", str(SEED),
            "--batch", "1", "--messages", "5", "--calls", "4", "--concurrency", "2",
            "--json", str(tmp_path / "single.json"),
        ],
        cwd=REPO, env=env(seeded), capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    s = summary(tmp_path / "single.json")
    assert (s["ok"], s["items"], s["error_count"], s["batch"], s["messages"]) == (4, 20, 0, 1, 5)


def test_unregistered_people_fail_fast_saying_why(seeded: Stack) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", *peers_args(seeded), "load", "--sample", "5",
            "--city", "5", "--seed", "999", "--rate", "5", "--duration", "1",
        ],
        cwd=REPO, env=env(seeded), capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "NOT_FOUND" in out and "registered" in out, out

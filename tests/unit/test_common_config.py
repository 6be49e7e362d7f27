"""Configuration read once from the environment; the deployment secret."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from services._common.config import ConfigError, PlatformConfig, load_secret


def test_defaults() -> None:
    config = PlatformConfig.from_env({})
    assert config.data_dir == Path("./data")
    assert (config.ports.declaration, config.ports.risk_index) == (50051, 50052)
    assert (config.ports.colour, config.ports.display) == (50053, 50054)
    assert config.peers.risk_index == "127.0.0.1:50052"


def test_overrides_and_peers_follow_ports() -> None:
    config = PlatformConfig.from_env(
        {
            "HEALTHCODE_RISK_INDEX_PORT": "6000",
            "HEALTHCODE_COLOUR_ADDR": "colour:7000",
            "HEALTHCODE_DATA_DIR": "/tmp/x",
        }
    )
    assert config.ports.risk_index == 6000
    assert config.peers.risk_index == "127.0.0.1:6000"
    assert config.peers.colour == "colour:7000"
    assert config.data_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HEALTHCODE_COLOUR_PORT": "x"}, "HEALTHCODE_COLOUR_PORT"),
        ({"HEALTHCODE_COLOUR_PORT": "70000"}, "HEALTHCODE_COLOUR_PORT"),
        ({"HEALTHCODE_DISPLAY_ADDR": "nohostport"}, "HEALTHCODE_DISPLAY_ADDR"),
        ({"HEALTHCODE_LOG_LEVEL": "chatty"}, "HEALTHCODE_LOG_LEVEL"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        PlatformConfig.from_env(env)


def test_secret_file_is_created_once_private(tmp_path: Path) -> None:
    first = load_secret(tmp_path, {})
    assert len(first) == 32
    mode = stat.S_IMODE((tmp_path / "secret.key").stat().st_mode)
    assert mode == 0o600
    assert load_secret(tmp_path, {}) == first
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_secret_from_env_wins(tmp_path: Path) -> None:
    assert load_secret(tmp_path, {"HEALTHCODE_SECRET": "ab" * 32}) == b"\xab" * 32
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(ConfigError, match="HEALTHCODE_SECRET"):
        load_secret(tmp_path, {"HEALTHCODE_SECRET": "ab" * 31})
    with pytest.raises(ConfigError, match="HEALTHCODE_SECRET"):
        load_secret(tmp_path, {"HEALTHCODE_SECRET": "zz" * 32})


def test_secret_from_a_mounted_file_in_hex_or_raw(tmp_path: Path) -> None:
    hex_file = tmp_path / "hex"
    hex_file.write_text("cd" * 32 + "\n")  # what `openssl rand -hex 32 > file` writes
    hex_file.chmod(0o400)
    assert load_secret(tmp_path / "data", {"HEALTHCODE_SECRET_FILE": str(hex_file)}) == (
        b"\xcd" * 32
    )
    raw_file = tmp_path / "raw"
    raw_file.write_bytes(b"\x0a" * 32)  # a secret.key copied from a data directory
    raw_file.chmod(0o600)
    assert load_secret(tmp_path / "data", {"HEALTHCODE_SECRET_FILE": str(raw_file)}) == (
        b"\x0a" * 32
    )
    assert not (tmp_path / "data" / "secret.key").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"ab" * 31, "31 bytes, should be 32"),
        (b"zz" * 32, "not hexadecimal"),
        ("秘密".encode() * 5, "should be 64 hex characters or 32 raw bytes"),
        (b"", "0 bytes"),
    ],
)
def test_a_malformed_secret_file_names_the_variable_and_not_the_value(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="HEALTHCODE_SECRET_FILE") as refused:
        load_secret(tmp_path, {"HEALTHCODE_SECRET_FILE": str(path)})
    assert says in str(refused.value) and str(path) in str(refused.value)
    if content:
        assert content.decode(errors="replace")[:8] not in str(refused.value)


def test_a_missing_secret_file_or_both_variables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HEALTHCODE_SECRET_FILE: .*no such file"):
        load_secret(tmp_path, {"HEALTHCODE_SECRET_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="is a directory"):
        load_secret(tmp_path, {"HEALTHCODE_SECRET_FILE": str(tmp_path)})
    both = {"HEALTHCODE_SECRET": "ab" * 32, "HEALTHCODE_SECRET_FILE": str(tmp_path / "x")}
    with pytest.raises(ConfigError, match="both set"):
        load_secret(tmp_path, both)


def test_a_world_readable_secret_file_is_used_with_one_warning_without_its_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "mounted-secret"  # a Kubernetes Secret volume without defaultMode
    path.write_text("ef" * 32)
    path.chmod(0o644)
    env = {"HEALTHCODE_SECRET_FILE": str(path)}
    assert load_secret(tmp_path, env) == load_secret(tmp_path, env) == b"\xef" * 32
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage() and "0644" in warnings[0].getMessage()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ef" * 32 not in logged and "efef" not in logged


def test_the_secret_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = load_secret(tmp_path, {})
    load_secret(tmp_path, {"HEALTHCODE_SECRET": "12" * 32})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret.hex() not in logged and "12" * 32 not in logged

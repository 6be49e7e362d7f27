"""Configuration read once from the environment; the deployment secret."""

from __future__ import annotations

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

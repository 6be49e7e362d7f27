"""A CLI process's credentials come from the environment once: what a command sets on them (a
verifier's workplace, a partner's kind) holds for every channel it then opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.credentials import for_target
from services._common.auth import create_issuer_keys
from services._common.pki import create_dev_credentials


def test_the_environments_credentials_are_read_once_per_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HEALTHCODE_INSECURE", "HEALTHCODE_CREDENTIALS", "HEALTHCODE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for data in (tmp_path / "a", tmp_path / "b"):
        create_dev_credentials(data / "credentials")
        create_issuer_keys(data / "credentials")
    monkeypatch.setenv("HEALTHCODE_DATA_DIR", str(tmp_path / "a"))
    first = for_target("127.0.0.1:1")
    assert first is not None
    first.verifier_context = "bus"  # what `healthcode bus-scan` does before its call
    again = for_target("127.0.0.1:2")  # the channel the call then opens
    assert again is first and again.verifier_context == "bus"
    # Another setting (another data directory): its own credentials.
    monkeypatch.setenv("HEALTHCODE_DATA_DIR", str(tmp_path / "b"))
    other = for_target("127.0.0.1:1")
    assert other is not None and other is not first
    assert other.verifier_context != "bus"

"""What the browser tests share: the system's Chromium and how it is launched, the token life of
their stack, and where screenshots are kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page

HERE = Path(__file__).parent
REPO = HERE.parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
# STYLE.md: what Debian's chromium needs headless in a container, and nothing that phones home.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A code token's life here (the display's setting, 1-60 s): short, so the page's own refresh is
# seen within a test, long enough that a token read after a refresh is scanned before it ends.
TOKEN_TTL_S = 20


def chromium_path() -> str:
    """HEALTHCODE_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium; fail if none."""
    chosen = os.environ.get("HEALTHCODE_CHROMIUM", "") or shutil.which("chromium") or ""
    for candidate in (chosen, "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "no chromium to run the browser tests: `make browser-deps` installs Debian's "
        "(apt-get install chromium), or set HEALTHCODE_CHROMIUM to a Chromium binary. "
        "Never `playwright install`."
    )


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page under test-artifacts/browser/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

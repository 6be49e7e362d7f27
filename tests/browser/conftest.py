"""Real headless Chromium (Debian's `chromium`, driven by Playwright from PyPI) against a real
stack with the gateway. Never `playwright install`: the browser is the system's, installed by
`make browser-deps`; a machine without it fails these tests (it does not skip them), saying so.

Screenshots go to test-artifacts/browser/ (gitignored), kept after the run for people to look at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from clients.stack import Stack
from tests.browser.support import CHROMIUM_FLAGS, TOKEN_TTL_S, chromium_path
from tests.support import running_stack

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """These start the real processes too: `-m "not e2e"` leaves them out with the others."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services and the gateway, with short-lived code tokens."""
    yield from running_stack(
        tmp_path_factory.mktemp("browser") / "data",
        {"HEALTHCODE_DISPLAY_TOKEN_TTL_S": str(TOKEN_TTL_S)},
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """`new_page()`: a phone-sized page in its own context; script errors on any page fail the
    test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make() -> Page:
        context = browser.new_context(
            viewport={"width": 430, "height": 932}, locale="zh-CN", device_scale_factor=1
        )
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert errors == [], f"script errors on the page: {errors}"

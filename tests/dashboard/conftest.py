"""The browser the dashboard tests drive: Debian's chromium, headless, through Playwright (never
a browser Playwright downloads). Playwright's API blocks, so a test hands its browser steps to a
worker thread while the engine and the dashboard keep running in the test's Trio run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import trio

CHROMIUM = os.environ.get("DTRIO_TEST_CHROMIUM", "/usr/bin/chromium")
# What chromium needs to run headless as root in a container, quietly and with nothing
# fetched from the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
T = TypeVar("T")


def _need_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        reason = f"no chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the dashboard's browser tests need chromium under CI: {reason}")
        pytest.skip(reason)


def _with_page(steps: Callable[..., T], *args: Any) -> T:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dtrio-chromium-") as profile, \
            sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            return steps(page, *args)
        finally:
            context.close()




@pytest.fixture
def browse() -> Callable[..., Any]:
    """`await browse(steps, *args)`: `steps(page, *args)` in a fresh browser, in a thread; from
    there, `trio.from_thread.run(...)` reaches the test's Trio run."""
    _need_chromium()

    async def run(steps: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(_with_page, steps, *args)

    return run

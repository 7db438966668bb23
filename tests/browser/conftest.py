"""Fixtures for the console's browser tests: a real redis-server, `python -m service` on it, headless Chromium.

Chromium is Debian's (`make chromium` installs it), driven by Playwright's Python package; Playwright's own
browser download is never used.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy.processes import ADMIN_TOKEN, ROOT, Replica, clean_env, running_redis, start_replica
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

__all__ = ["ADMIN_TOKEN", "CHROMIUM", "CHROMIUM_FLAGS", "DESKTOP", "PHONE", "ConsolePage", "RedisProcess"]


@dataclass
class RedisProcess:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free port, without persistence, stopped after the module."""
    with running_redis(tmp_path_factory.mktemp("redis")) as (url, process):
        yield RedisProcess(url, process)


@pytest.fixture(scope="module")
def service(redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """`python -m service` on the shipped model and the real Redis, with an admin token."""
    env = clean_env(
        ALLOCATOR_REDIS_URL=redis.url,
        ALLOCATOR_REDIS_PREFIX=f"console-{uuid.uuid4().hex[:8]}",
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_REFRESH_SECONDS="1",
        ALLOCATOR_PACE_SECONDS="0.3",  # the flight panel's pacing steps come quickly
        # One worker process: the tests read back through new connections what the page did through its own,
        # and allocation counters are per process (the page itself only compares readings of one process).
        ALLOCATOR_WORKERS="1",
    )
    replica = start_replica(sys.executable, env, ROOT, tmp_path_factory.mktemp("service") / "service.log")
    yield replica
    replica.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, for one module at a time: Playwright's sync API keeps an asyncio loop running in the
    main thread while it is open, where later tests' `asyncio.run` would fail."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (make chromium installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class ConsolePage:
    """A browser tab on /console that records every console error and uncaught exception."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def open(self) -> ConsolePage:
        self.page.goto(f"{self.url}/console")
        self.page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        return self


@pytest.fixture()
def console(browser: Browser, service: Replica) -> Iterator[ConsolePage]:
    """A fresh desktop-sized tab on the console (its own context: no state shared between tests)."""
    context = browser.new_context(viewport=DESKTOP)
    try:
        yield ConsolePage(context.new_page(), service.url).open()
    finally:
        context.close()

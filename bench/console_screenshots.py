"""Screenshots of the operator console for docs/: 1280×800 (the viewport) and phone width (the whole page).

    python -m bench.console_screenshots

Starts a redis-server (when installed; otherwise the in-process store) and `python -m service` on the shipped
model, sets a few campaign budgets, allocates some individuals so the allocation mix has data, selects a
point on the curve and photographs the page in Debian's headless Chromium (`make chromium`). Then it runs a
paced 10-minute campaign for `--flight-seconds` of traffic and photographs its flight panel. Writes
docs/console-desktop.png, docs/console-phone.png and docs/console-flight.png.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "screenshot-admin-token-0123"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUDGETS = {"default": 1.8, "spring_sale": 1.2, "winback": 3.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, httpx.TransportError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {timeout:.0f} s")


@contextmanager
def running_service(workdir: Path) -> Iterator[str]:
    processes: list[subprocess.Popen[bytes]] = []
    # One worker: the allocations panel shows one process's counters, and this script's allocations must be in them.
    env = {
        "PATH": "/usr/bin:/bin",
        "ALLOCATOR_ADMIN_TOKEN": TOKEN,
        "ALLOCATOR_LOG_LEVEL": "WARNING",
        "ALLOCATOR_WORKERS": "1",
        "ALLOCATOR_PACE_SECONDS": "1",  # a flight panel with a few dozen steps in under a minute
    }
    try:
        redis = shutil.which("redis-server")
        if redis:
            redis_port = free_port()
            processes.append(
                subprocess.Popen(
                    [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
                    stdout=subprocess.DEVNULL,
                )
            )
            env["ALLOCATOR_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        port = free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env
            )
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, "the service")
        yield url
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=10)


def prepare(url: str) -> None:
    """Budgets for three campaigns and a few thousand allocations spread over them."""
    admin = {"authorization": f"Bearer {TOKEN}"}
    for campaign, budget in BUDGETS.items():
        response = httpx.post(f"{url}/budget", json={"campaign": campaign, "budget_per_capita": budget}, headers=admin)
        response.raise_for_status()
    with np.load(ROOT / "models" / "default" / "population.npz") as population:
        rows = population["features"]
    for i, campaign in enumerate(BUDGETS):
        batch = rows[i * 1000 : (i + 1) * 1000]
        individuals = [{"id": j, "features": row.tolist()} for j, row in enumerate(batch)]
        httpx.post(
            f"{url}/allocate", json={"campaign": campaign, "individuals": individuals}, timeout=60
        ).raise_for_status()


def show(page: Page, url: str, allocate_after_load: bool) -> None:
    page.goto(f"{url}/console")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    if allocate_after_load:  # a second counter reading after these, so the recent mix has data
        prepare_recent(url)
        recent = re.compile(r"Last \d+ s: [1-9][\d,]* individuals allocated")
        expect(page.locator("#recent-summary")).to_have_text(recent, timeout=30_000)
    page.locator("#curve circle.point").nth(40).click()
    page.mouse.move(0, 0)


def prepare_recent(url: str) -> None:
    with np.load(ROOT / "models" / "default" / "population.npz") as population:
        rows = population["features"][5000:5600]
    individuals = [{"id": j, "features": row.tolist()} for j, row in enumerate(rows)]
    httpx.post(f"{url}/allocate", json={"individuals": individuals}, timeout=60).raise_for_status()


FLIGHT = "flash_sale"


def run_flight(url: str, seconds: float) -> None:
    """A paced 10-minute campaign whose budget the traffic below would overspend at its reference λ*."""
    admin = {"authorization": f"Bearer {TOKEN}"}
    now = datetime.now(UTC)
    spec = {
        "total_budget": 600.0,
        "expected_audience": 2000,
        "pacing": "even",
        "start": (now - timedelta(seconds=60)).isoformat(),
        "end": (now + timedelta(seconds=540)).isoformat(),
    }
    httpx.put(f"{url}/campaigns/{FLIGHT}", json=spec, headers=admin).raise_for_status()
    with np.load(ROOT / "models" / "default" / "population.npz") as population:
        rows = population["features"]
    rng = np.random.default_rng(0)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        batch = rows[rng.integers(0, len(rows), 100)]
        individuals = [{"id": j, "features": row.tolist()} for j, row in enumerate(batch)]
        body = {"campaign": FLIGHT, "individuals": individuals}
        httpx.post(f"{url}/allocate", json=body, timeout=60).raise_for_status()
        time.sleep(0.25)


def show_flight(page: Page, url: str) -> None:
    page.goto(f"{url}/console")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    page.fill("#campaign-name", FLIGHT)
    page.click("#open-campaign button")
    expect(page.locator("#spend-chart path[data-series=committed]")).to_have_count(1, timeout=30_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--flight-seconds", type=float, default=45.0, help="traffic before the flight screenshot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, running_service(Path(workdir)) as url:
        prepare(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            desktop = browser.new_page(viewport={"width": 1280, "height": 800})
            show(desktop, url, allocate_after_load=True)
            desktop.screenshot(path=args.out / "console-desktop.png")
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            show(phone, url, allocate_after_load=True)
            phone.screenshot(path=args.out / "console-phone.png", full_page=True)
            run_flight(url, args.flight_seconds)
            flight = browser.new_page(viewport={"width": 1280, "height": 800})
            show_flight(flight, url)
            flight.locator("#flight-panel").screenshot(path=args.out / "console-flight.png")
            browser.close()
    print(f"wrote {', '.join(str(args.out / f'console-{n}.png') for n in ('desktop', 'phone', 'flight'))}")


if __name__ == "__main__":
    main()

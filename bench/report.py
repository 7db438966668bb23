"""Write one benchmark's results into its own section of docs/benchmarks.md (other sections untouched)."""

from __future__ import annotations

import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every section is written by the command it names; rerun that command to reproduce it. Timings are\n"
    "ratios measured within one run on a shared 2-core machine, so absolute numbers drift between runs.\n"
)


def machine_line() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"_{stamp}, commit {commit or 'unknown'}, {platform.machine()}, Python {platform.python_version()}_"


def write_section(name: str, command: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md with `body` and the command that made it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n\nCommand: `{command}`\n\n{machine_line()}\n\n{body.strip()}\n\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)

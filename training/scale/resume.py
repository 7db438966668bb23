"""Per-epoch resume state of a streamed run: rank 0 writes it after every epoch, a restarted run continues from it.

A rank dying kills the whole `torchrun` group; `torchrun --max-restarts N` (or the Kubernetes Job's pod restart)
starts every rank again, and each loads the last complete epoch from this file on shared storage, so at most
one epoch is lost. The file is written next to itself and renamed, so a crash mid-write leaves the previous
epoch intact. It records which run it belongs to; a state of a different run is an error, never silently used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.scale import ranks

STATE_FILE = "resume.pt"


class ResumeState:
    """The resume file of one run (or nothing, when no directory is given)."""

    def __init__(self, directory: Path | None, run: dict[str, Any]) -> None:
        self.path = directory / STATE_FILE if directory is not None else None
        self.run = run

    def load(self) -> dict[str, Any] | None:
        """The last saved state of this run, or None to start from scratch."""
        if self.path is None or not self.path.exists():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged file
            raise ValueError(f"{self.path}: not a resume state of dfcl-allocator: {error}") from error
        if not isinstance(blob, dict) or blob.get("run") != self.run:
            found = blob.get("run") if isinstance(blob, dict) else None
            raise ValueError(
                f"{self.path} belongs to another run ({found}), not this one ({self.run}); "
                "remove it or pass another --resume-dir"
            )
        state: dict[str, Any] = blob["state"]
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Rank 0 writes `state` atomically; every rank waits until it is on disk."""
        if self.path is not None and ranks.current().leader:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            torch.save({"run": self.run, "state": state}, partial)
            os.replace(partial, self.path)
        ranks.barrier()

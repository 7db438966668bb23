"""The bounded in-process buffer between /allocate and the shipper. Writes no Redis keys.

/allocate's CPU work may run in a worker thread, so every method takes one lock (held for O(1) work). The
bound is in decisions: when Redis is down or slow the buffer fills, and a batch that no longer fits is dropped
whole and counted, so memory stays bounded and /allocate never waits.
"""

from __future__ import annotations

import threading
from collections import deque

from service.decisions.record import DecisionBatch


class DecisionBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # decisions
        self._batches: deque[DecisionBatch] = deque()
        self._rows = 0
        self._lock = threading.Lock()
        self.appended = 0  # decisions accepted
        self.dropped = 0  # decisions lost because the buffer was full

    def append(self, batch: DecisionBatch) -> bool:
        """Queue `batch`; False (and counted as dropped) when it does not fit."""
        with self._lock:
            if self._rows + batch.size > self.capacity:
                self.dropped += batch.size
                return False
            self._batches.append(batch)
            self._rows += batch.size
            self.appended += batch.size
            return True

    def take(self, max_rows: int) -> list[DecisionBatch]:
        """Oldest batches up to `max_rows` decisions (at least one batch when any is queued)."""
        taken: list[DecisionBatch] = []
        rows = 0
        with self._lock:
            while self._batches and (not taken or rows + self._batches[0].size <= max_rows):
                batch = self._batches.popleft()
                rows += batch.size
                taken.append(batch)
            self._rows -= rows
        return taken

    def put_back(self, batches: list[DecisionBatch]) -> None:
        """Return unshipped batches to the front, in order; what no longer fits is dropped and counted."""
        with self._lock:
            for batch in reversed(batches):
                if self._rows + batch.size > self.capacity:
                    self.dropped += batch.size
                    continue
                self._batches.appendleft(batch)
                self._rows += batch.size

    @property
    def buffered(self) -> int:
        with self._lock:
            return self._rows

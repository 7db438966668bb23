"""The background task that keeps a replica's λ* table in step with the store (DESIGN.md §5).

It applies each announced change, resyncs everything every `refresh_seconds` in case an announcement was
lost, and when the store is unreachable it marks it down and retries; /allocate meanwhile serves the last
λ* it knows. On (re)connect it first restores records the store lost (a Redis restart without persistence),
so versions keep increasing and no budget is forgotten while any replica remembers it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.errors import StoreUnavailableError
from service.lambdas import LambdaTable
from service.state import LambdaStore

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.5
RESTART_SECONDS = (0.5, 30.0)  # backoff of the supervisor after an unexpected failure: first, longest


async def resync(store: LambdaStore, table: LambdaTable) -> None:
    """Restore what the store lost, then apply every stored record newer than the served one."""
    stored = await store.get_all()
    for record in table.known_records():
        kept = stored.get(record.campaign)
        if (kept is None or kept.version < record.version) and await store.restore(record):
            log.warning("restored campaign %s v%d into the λ* store", record.campaign, record.version)
    for record in stored.values():
        table.apply(record)
    table.synced_at = time.monotonic()
    table.mark_store(True)


async def apply_change(store: LambdaStore, table: LambdaTable, campaign: str) -> None:
    record = await store.get(campaign)
    if record is not None:
        table.apply(record)


async def keep_in_sync(store: LambdaStore, table: LambdaTable, refresh_seconds: float) -> None:
    """Run until cancelled: listen for announcements, resync on a timer, reconnect after failures."""
    while True:
        try:
            async for campaign in store.announcements(timeout=refresh_seconds):
                due = table.synced_at is None or time.monotonic() - table.synced_at >= refresh_seconds
                if campaign is None or due or not table.store_up:
                    await resync(store, table)
                if campaign is not None:
                    await apply_change(store, table, campaign)
        except StoreUnavailableError as error:
            table.mark_store(False, str(error))
            await asyncio.sleep(min(RETRY_SECONDS, refresh_seconds))


async def supervise_sync(store: LambdaStore, table: LambdaTable, refresh_seconds: float) -> None:
    """Run `keep_in_sync` forever, restarting it with exponential backoff after any unexpected failure.

    A store outage is handled inside `keep_in_sync`; this catches what it cannot (a bug, a record shape no
    validator foresaw), so that one bad day never leaves a replica silently serving a frozen λ*. Every
    failure is logged with its traceback and counted in `table.sync_restarts`; /readyz shows the last one.
    """
    delay = RESTART_SECONDS[0]
    while True:
        started = time.monotonic()
        try:
            await keep_in_sync(store, table, refresh_seconds)
        except Exception as error:  # a supervisor: logged with its traceback, counted, restarted
            table.sync_restarts += 1
            table.sync_error = f"{type(error).__name__}: {error}"
            log.exception("the λ* sync task failed (restart %d in %.1f s)", table.sync_restarts, delay)
            if time.monotonic() - started > RESTART_SECONDS[1]:
                delay = RESTART_SECONDS[0]  # it had been running fine for a while: start the backoff over
            await asyncio.sleep(delay)
            delay = min(2 * delay, RESTART_SECONDS[1])

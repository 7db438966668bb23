"""Shutdown never hangs on the λ* sync task, even when a cancellation is swallowed."""

from __future__ import annotations

import asyncio

from service.runtime import _stop_task


def test_a_task_that_swallows_a_cancellation_is_still_stopped() -> None:
    cancels: list[int] = []

    async def listener() -> None:
        # What Python 3.11's asyncio.timeout does when a cancel lands as the timeout fires: the
        # CancelledError becomes a timeout and the loop goes on listening.
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) == 1:
                    continue
                raise

    async def main() -> asyncio.Task[None]:
        task = asyncio.create_task(listener())
        await asyncio.sleep(0)
        await asyncio.wait_for(_stop_task(task), timeout=5)
        return task

    task = asyncio.run(main())
    assert task.cancelled() and len(cancels) == 2


def test_a_failed_task_is_reported_not_raised(caplog) -> None:  # type: ignore[no-untyped-def]
    async def broken() -> None:
        raise RuntimeError("lost the store")

    async def main() -> None:
        task = asyncio.create_task(broken())
        await asyncio.sleep(0)
        await _stop_task(task)

    asyncio.run(main())
    assert "sync task had failed" in caplog.text

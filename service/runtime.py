"""Everything a replica loads once at startup and keeps on `app.state.runtime` (DESIGN.md §3, §5)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.artifact import Artifact, load_artifact
from service.config import Settings
from service.decisions.shipper import DecisionLog
from service.errors import StoreUnavailableError
from service.features import FeatureEncoder
from service.lambdas import BudgetSolver, LambdaTable
from service.metrics import Metrics
from service.state import LambdaStore, open_store
from service.sync import resync, supervise_sync
from service.workers import onnx_threads

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    artifact: Artifact
    encoder: FeatureEncoder
    solver: BudgetSolver
    table: LambdaTable
    store: LambdaStore
    metrics: Metrics
    sync_task: asyncio.Task[None] | None
    # The threads that decode and score large /allocate bodies, as many as may run at once: bounds their
    # memory (a decoded 10k-row body is tens of MB of Python objects, and each thread that ever held one keeps
    # its malloc arena) and leaves the event loop its share of the GIL.
    batch_threads: ThreadPoolExecutor
    decisions: DecisionLog


async def start_runtime(settings: Settings) -> Runtime:
    """Load and check the artifact, sweep its reference population, connect the store and sync λ*.

    A broken artifact raises ValueError (the process refuses to start); an unreachable Redis does not: the
    replica starts unready and the sync task keeps trying.
    """
    artifact = load_artifact(settings.model_dir, threads=onnx_threads(settings))
    manifest = artifact.manifest
    solver = BudgetSolver(artifact)
    table = LambdaTable(
        solver, manifest.default_lambda, manifest.default_budget_per_capita, settings.serve_unknown_campaigns
    )
    store = open_store(settings.redis_url, settings.redis_prefix, settings.redis_timeout_seconds)
    metrics = Metrics(manifest.treatment_names, artifact.model_version, manifest.method, store.backend)
    task: asyncio.Task[None] | None = None
    if store.backend == "in-process":
        table.synced_at = time.monotonic()
        table.mark_store(True)
    else:
        try:
            await resync(store, table)
        except StoreUnavailableError as error:
            table.mark_store(False, str(error))
            log.warning("starting without λ* records: %s", error)
        task = asyncio.create_task(supervise_sync(store, table, settings.refresh_seconds), name="lambda-sync")
    decisions = DecisionLog(
        settings.redis_url,
        settings.redis_prefix,
        settings.redis_timeout_seconds,
        capacity=settings.decision_log_capacity,
        maxlen=settings.decision_stream_maxlen,
        ship_rows=settings.decision_ship_rows,
        refresh_seconds=settings.refresh_seconds,
        model_version=artifact.model_version,
        feature_names=list(manifest.features),
    )
    try:
        await decisions.refresh_epsilon()
    except StoreUnavailableError as error:
        log.warning("starting without exploration settings (ε = 0 until Redis answers): %s", error)
    decisions.start()
    threads = ThreadPoolExecutor(settings.max_concurrent_batches, thread_name_prefix="allocate")
    return Runtime(
        settings, artifact, FeatureEncoder(manifest), solver, table, store, metrics, task, threads, decisions
    )


STOP_ATTEMPTS = 10  # × STOP_WAIT_SECONDS: the longest a shutdown waits for the sync task
STOP_WAIT_SECONDS = 0.5


async def stop_runtime(runtime: Runtime) -> None:
    await runtime.decisions.stop()
    runtime.batch_threads.shutdown(wait=False, cancel_futures=True)
    if runtime.sync_task is not None:
        await _stop_task(runtime.sync_task)
    await runtime.store.close()


async def _stop_task(task: asyncio.Task[None]) -> None:
    """Cancel `task` until it ends, so a shutdown never hangs on it.

    One cancel is not always enough: when it lands just as redis-py's socket timeout fires, Python 3.11's
    asyncio.timeout can turn it into a TimeoutError (the task goes on listening); measured here as 1 hang
    in ~10 runs of tests/service/test_redis.py on a loaded machine. So cancel again until it is done.
    """
    for _ in range(STOP_ATTEMPTS):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_SECONDS)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.error("the λ* sync task had failed", exc_info=task.exception())
            return
    log.warning("the λ* sync task did not stop after %d cancellations; leaving it", STOP_ATTEMPTS)

"""Everything a replica loads once at startup and keeps on `app.state.runtime` (DESIGN.md §3, §5)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.artifact import Artifact, load_artifact
from service.campaigns.leader import Pacer, keep_pacing
from service.campaigns.ledger import InProcessLedger, Ledger
from service.campaigns.metrics import register_campaign_metrics
from service.campaigns.redis_ledger import open_ledger
from service.campaigns.slices import CampaignBook, SliceSettings, keep_slices, watch_new_campaigns
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
    campaigns: CampaignBook
    pacer: Pacer
    campaign_tasks: list[asyncio.Task[None]] = field(default_factory=list)


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
    campaigns = open_campaigns(settings)
    pacer = Pacer(campaigns, solver, store, table, settings.pace_seconds)
    register_campaign_metrics(metrics.registry, campaigns, pacer)
    runtime = Runtime(
        settings, artifact, FeatureEncoder(manifest), solver, table, store, metrics, task, threads, decisions,
        campaigns, pacer,
    )  # fmt: skip
    try:  # campaigns known before the first request, so none is served uncapped while the task starts
        await campaigns.refresh_specs()
    except StoreUnavailableError as error:
        log.warning("starting without campaign specs: %s", error)
    runtime.campaign_tasks = [
        asyncio.create_task(keep_slices(campaigns), name="campaign-slices"),
        asyncio.create_task(keep_pacing(pacer), name="campaign-pacing"),
    ]
    if store.backend != "in-process":  # in process, PUT /campaigns teaches this (only) replica directly
        runtime.campaign_tasks.append(asyncio.create_task(watch_new_campaigns(campaigns, store), name="campaign-watch"))
    return runtime


def open_campaigns(settings: Settings) -> CampaignBook:
    """This replica's campaign book over the Redis ledger (or the in-process one without Redis)."""
    ledger: Ledger | None = open_ledger(settings.redis_url, settings.redis_prefix, settings.redis_timeout_seconds)
    # Unique per process even when ALLOCATOR_REPLICA_ID is set: worker processes of one pod are replicas too, and
    # two holders of one name would corrupt each other's slice bookkeeping.
    replica = f"{settings.replica_id or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    slices = SliceSettings(
        tick=settings.campaign_tick_seconds,
        refresh=settings.campaign_refresh_seconds,
        lease_seconds=settings.slice_lease_seconds,
        slice_seconds=settings.slice_seconds,
        min_slice_share=settings.slice_min_share,
        max_share=settings.slice_max_share,
    )
    return CampaignBook(ledger if ledger is not None else InProcessLedger(), replica, slices)


STOP_ATTEMPTS = 10  # × STOP_WAIT_SECONDS: the longest a shutdown waits for the sync task
STOP_WAIT_SECONDS = 0.5


async def stop_runtime(runtime: Runtime) -> None:
    await runtime.decisions.stop()
    runtime.batch_threads.shutdown(wait=False, cancel_futures=True)
    for task in runtime.campaign_tasks:
        await _stop_task(task, what=task.get_name())
    await runtime.campaigns.return_all()  # unused slices go back to the ledger for the other replicas
    await runtime.campaigns.ledger.close()
    if runtime.sync_task is not None:
        await _stop_task(runtime.sync_task)
    await runtime.store.close()


async def _stop_task(task: asyncio.Task[None], what: str = "λ* sync") -> None:
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
                log.error("the %s task had failed", what, exc_info=task.exception())
            return
    log.warning("the %s task did not stop after %d cancellations; leaving it", what, STOP_ATTEMPTS)

"""The decision-log sink: per-campaign Redis Streams → Parquet files partitioned by campaign and hour.

Reads every stream listed in `<prefix>:decisions:campaigns` through the consumer group `--group` (created at
the stream's start if missing). Redis keys written: the consumer group's state on `<prefix>:decisions:<campaign>`
(XGROUP CREATE, XACK, XAUTOCLAIM); no data keys. Files written under `--out`:
- `campaign=<c>/hour=<YYYY-MM-DDTHH>/<first id>_<last id>.parquet`, one per (campaign, hour) of a batch;
- `_schema/<model version>.json`: the encoded feature names of each model version (from
  `<prefix>:decisions:features`), so the `features` vectors can be read without the model artifact.
A file is written to a temporary name, fsynced, renamed and its directory fsynced; only then are its entries
acknowledged. A crash before the XACK redelivers them (to this consumer on restart, or to another one through
XAUTOCLAIM after `--claim-idle-ms`): at least once, and readers drop duplicates by decision id
(`training.logs.read_decisions`). Several sinks may run side by side with different consumer names.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from numpy.typing import NDArray
from redis.exceptions import RedisError, ResponseError

from service.decisions.record import DecisionBatch, batches_from_entry

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("campaign", pa.string()),
        ("individual_id", pa.string()),
        ("model_version", pa.string()),
        ("lambda", pa.float64()),
        ("lambda_version", pa.int64()),
        ("treatment", pa.int64()),
        ("propensity", pa.float64()),
        ("explore", pa.bool_()),
        ("features", pa.list_(pa.float32())),
        ("stream_id", pa.string()),
    ]
)


@dataclass(frozen=True)
class SinkConfig:
    redis_url: str
    prefix: str
    out: Path
    group: str = "sink"
    consumer: str = "sink-0"
    batch: int = 100  # entries (each one /allocate request's decisions) read per stream per round
    block_ms: int = 1_000  # wait for new entries when every stream is drained
    claim_idle_ms: int = 60_000  # entries pending this long on another consumer are taken over
    heartbeat: Path | None = None  # touched after every pass (the k8s probes read its age)


def _hours(table: pa.Table) -> NDArray[np.str_]:
    """The `hour=` partition of each row (UTC, `YYYY-MM-DDTHH`), computed on the column, not row by row."""
    micros = table.column("time").cast(pa.int64()).to_numpy()
    return np.datetime_as_string(micros.astype("datetime64[us]"), unit="h")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` so that once this returns, the file survives a crash of this process or host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        pq.write_table(table, handle, compression="zstd")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def entries_table(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> pa.Table:
    """The Parquet rows of stream entries (id, fields) as the shipper wrote them (`service.decisions.record`):
    one row per decision, in stream order; a format-2 or -3 entry gives all of its batches' rows, each with the
    entry's stream id. ValueError naming the stream id and field for an entry that cannot be read."""
    tables: list[pa.Table] = []
    single: list[tuple[bytes, dict[bytes, bytes]]] = []  # a run of format-1 entries (one decision each)
    for stream_id, fields in entries:
        if b"format" not in fields:
            single.append((stream_id, fields))
            continue
        if single:
            tables.append(_single_rows_table(single))
            single = []
        try:
            batches = batches_from_entry(fields)
        except ValueError as error:
            raise ValueError(f"stream entry {stream_id.decode()}: {error}") from error
        tables.append(batches_table(batches, stream_id.decode()))
    if single:
        tables.append(_single_rows_table(single))
    if not tables:
        return SCHEMA.empty_table()
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def batches_table(batches: list[DecisionBatch], stream_id: str) -> pa.Table:
    """The rows of one entry's batches (one, or a shipping round's), built column by column: numpy and Arrow
    over all rows at once, per-batch scalars repeated over their rows; Python work only for the id strings.
    (A table per batch cost ≈ 120 µs per single-row request, more than the service spends deciding it.)"""
    sizes = np.array([batch.size for batch in batches])
    n = int(sizes.sum())
    # Rounded to the microsecond exactly as format 1 rows were.
    micros = [(datetime.fromtimestamp(batch.time, UTC) - EPOCH) // timedelta(microseconds=1) for batch in batches]
    features = np.ascontiguousarray(np.concatenate([batch.features for batch in batches]), dtype=np.float32)
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(features.shape[1])

    def repeated(values: list[Any], dtype: Any) -> NDArray[Any]:
        return np.repeat(np.array(values, dtype=dtype), sizes)

    def joined(name: str, dtype: Any) -> NDArray[Any]:
        return np.concatenate([getattr(batch, name) for batch in batches]).astype(dtype, copy=False)

    columns = [
        pa.array([i for batch in batches for i in batch.decision_ids], type=pa.string()),
        pa.array(repeated(micros, np.int64)).cast(SCHEMA.field("time").type),
        pa.array(repeated([batch.campaign for batch in batches], object), type=pa.string()),
        pa.array([str(individual) for batch in batches for individual in batch.individuals], type=pa.string()),
        pa.array(repeated([batch.model_version for batch in batches], object), type=pa.string()),
        pa.array(repeated([batch.lam for batch in batches], np.float64)),
        pa.array(repeated([batch.lambda_version for batch in batches], np.int64)),
        pa.array(joined("treatment", np.int64)),
        pa.array(joined("propensity", np.float64)),
        pa.array(joined("explore", np.bool_)),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(features.reshape(-1))),
        pa.array(np.full(n, stream_id, dtype=object), type=pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _single_rows_table(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> pa.Table:
    """Format-1 entries (one decision each, written before format 2): still in streams after an upgrade."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for stream_id, fields in entries:
        try:
            columns["decision_id"].append(fields[b"id"].decode())
            columns["time"].append(datetime.fromtimestamp(float(fields[b"time"]), UTC))
            columns["campaign"].append(fields[b"campaign"].decode())
            columns["individual_id"].append(fields[b"individual"].decode())
            columns["model_version"].append(fields[b"model_version"].decode())
            columns["lambda"].append(float(fields[b"lambda"]))
            columns["lambda_version"].append(int(fields[b"lambda_version"]))
            columns["treatment"].append(int(fields[b"treatment"]))
            columns["propensity"].append(float(fields[b"propensity"]))
            columns["explore"].append(fields[b"explore"] == b"1")
            columns["features"].append(np.frombuffer(fields[b"features"], dtype="<f4"))
            columns["stream_id"].append(stream_id.decode())
        except (KeyError, ValueError) as error:
            raise ValueError(f"stream entry {stream_id.decode()}: field {error} missing or unreadable") from error
    return pa.table(columns, schema=SCHEMA)


class Sink:
    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.client = redis.Redis.from_url(config.redis_url, socket_timeout=max(5.0, config.block_ms / 1e3 + 5.0))
        self._groups: set[str] = set()
        self._schemas: set[str] = set()
        self.stopping = False

    def streams(self) -> list[str]:
        members = self.client.smembers(f"{self.config.prefix}:decisions:campaigns")
        return sorted(f"{self.config.prefix}:decisions:{m.decode()}" for m in members)

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            self.client.xgroup_create(stream, self.config.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._groups.add(stream)

    def _read(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """This consumer's unacknowledged entries first (a restart), then abandoned ones, then new ones."""
        cfg = self.config
        for start in ("0", ">"):
            reply = self.client.xreadgroup(cfg.group, cfg.consumer, {stream: start}, count=cfg.batch)
            entries = [(i, f) for i, f in reply[0][1] if f] if reply else []
            if entries:
                return entries
            if start == "0":
                claimed = self.client.xautoclaim(
                    stream, cfg.group, cfg.consumer, min_idle_time=cfg.claim_idle_ms, count=cfg.batch
                )
                entries = [(i, f) for i, f in claimed[1] if f]
                if entries:
                    return entries
        return []

    def _write_schemas(self, table: pa.Table) -> None:
        versions = set(table.column("model_version").to_pylist()) - self._schemas
        if not versions:
            return
        names = self.client.hmget(f"{self.config.prefix}:decisions:features", sorted(versions))
        directory = self.config.out / "_schema"
        directory.mkdir(parents=True, exist_ok=True)
        for version, data in zip(sorted(versions), names, strict=True):
            if data is None:
                log.error("no feature names stored for model version %s", version)
                continue
            path = directory / f"{version}.json"
            temporary = directory / f".{version}.json.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, path)
            self._schemas.add(version)

    def drain_once(self) -> int:
        """One pass over every stream; returns the number of entries written and acknowledged."""
        written = 0
        for stream in self.streams():
            self._ensure_group(stream)
            entries = self._read(stream)
            if not entries:
                continue
            table = entries_table(entries)
            self._write_schemas(table)
            hours = _hours(table)
            campaign = stream.removeprefix(f"{self.config.prefix}:decisions:")
            for hour in sorted(set(hours.tolist())):
                part = table.take(pa.array(np.flatnonzero(hours == hour)))
                ids = part.column("stream_id").to_pylist()
                name = f"{ids[0]}_{ids[-1]}.parquet"
                write_durably(part, self.config.out / f"campaign={campaign}" / f"hour={hour}" / name)
            # Only now, with every file of the batch on disk, may Redis forget the entries.
            self.client.xack(stream, self.config.group, *[i for i, _ in entries])
            written += len(entries)
        return written

    def run(self) -> None:
        """Drain until SIGTERM/SIGINT (the batch in hand is finished first); Redis errors are retried."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("sink %s/%s writing to %s", self.config.group, self.config.consumer, self.config.out)
        while not self.stopping:
            try:
                written = self.drain_once()
            except (RedisError, OSError) as error:
                log.warning("sink: %s; retrying", error)
                self._groups.clear()
                written = 0
                time.sleep(1.0)
            if self.config.heartbeat is not None:
                self.config.heartbeat.touch()  # alive (a Redis outage is not a reason to restart the pod)
            if written == 0 and not self.stopping:
                time.sleep(self.config.block_ms / 1e3)

    def _stop(self, signum: int, _frame: Any) -> None:
        log.info("sink: signal %d, stopping after this batch", signum)
        self.stopping = True

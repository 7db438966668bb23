"""A request's decisions as one stream entry (format 2), or a round's requests as one (format 3), through a real
redis-server, back to the sink's rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from service.decisions.record import DecisionBatch, batches_from_entry, merged_entry, new_batch_token

pytest.importorskip("pyarrow")
from service.decisions.sink import entries_table


def _batch(n: int, seed: int) -> DecisionBatch:
    rng = np.random.default_rng(seed)
    explore = rng.random(n) < 0.3
    return DecisionBatch(
        token=new_batch_token(),
        time=1_764_619_200.123456 + seed,
        campaign="spring",
        individuals=[f"user-{i}" if i % 3 else i for i in range(n)],  # ids as sent: strings and integers
        model_version="m1",
        lam=0.4375,
        lambda_version=7,
        treatment=rng.integers(0, 3, n),
        propensity=np.where(explore, 0.1 / 3, 0.9 + 0.1 / 3),
        explore=explore,
        features=rng.normal(size=(n, 13)).astype(np.float32),
    )


def _format_one(batch: DecisionBatch) -> list[dict[str, Any]]:
    """The same decisions as format-1 entries, one per decision (the layout streams held before format 2)."""
    common = {
        "time": repr(batch.time),
        "campaign": batch.campaign,
        "model_version": batch.model_version,
        "lambda": repr(batch.lam),
        "lambda_version": str(batch.lambda_version),
    }
    return [
        {
            "id": batch.decision_ids[i],
            "individual": str(batch.individuals[i]),
            "treatment": str(int(batch.treatment[i])),
            "propensity": repr(float(batch.propensity[i])),
            "explore": "1" if batch.explore[i] else "0",
            "features": batch.features[i].astype("<f4").tobytes(),
            **common,
        }
        for i in range(batch.size)
    ]


def test_many_decisions_one_entry_the_same_rows(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    batch, n = _batch(1_000, seed=1), 1_000
    new, old = f"{prefix}:new", f"{prefix}:old"
    client.xadd(new, batch.entry())  # type: ignore[arg-type]
    for entry in _format_one(batch):
        client.xadd(old, entry)
    assert client.xlen(new) == 1 and client.xlen(old) == n
    rows = entries_table(client.xrange(new))
    before = entries_table(client.xrange(old))
    assert rows.num_rows == n and rows.schema == before.schema
    # Every column but the stream id (one per entry now) is what the per-decision layout gave.
    for name in rows.schema.names:
        if name != "stream_id":
            assert rows.column(name).equals(before.column(name)), name
    assert set(rows.column("stream_id").to_pylist()) == {client.xrange(new)[0][0].decode()}
    assert rows.column("decision_id").to_pylist() == batch.decision_ids
    assert rows.column("individual_id").to_pylist()[:3] == ["0", "user-1", "user-2"]


def test_old_and_new_entries_in_one_read_keep_stream_order(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = f"{prefix}:decisions:spring"
    first, second = _batch(3, seed=2), _batch(5, seed=3)
    for entry in _format_one(first):  # written by a replica before the upgrade
        client.xadd(stream, entry)
    client.xadd(stream, second.entry())  # type: ignore[arg-type]
    client.xadd(stream, _format_one(first)[0])
    table = entries_table(client.xrange(stream))
    expected = [*first.decision_ids, *second.decision_ids, first.decision_ids[0]]
    assert table.column("decision_id").to_pylist() == expected


def test_a_malformed_entry_is_refused_naming_the_field(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    entry: dict[Any, Any] = _batch(4, seed=4).entry()
    entry["propensity"] = entry["propensity"][:-8]  # one value short
    stream_id = client.xadd(f"{prefix}:bad", entry)
    with pytest.raises(ValueError, match=rf"{stream_id.decode()}.*'propensity'"):
        entries_table(client.xrange(f"{prefix}:bad"))
    entry = _batch(4, seed=4).entry()
    entry["format"] = "3"
    with pytest.raises(ValueError, match="'format'"):
        DecisionBatch.from_entry({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in entry.items()})


def test_integer_ids_beyond_64_bits_are_logged_as_text() -> None:
    batch = _batch(2, seed=5)
    huge = DecisionBatch(**{**batch.__dict__, "individuals": [2**70, "x"]})
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in huge.entry().items()}
    assert DecisionBatch.from_entry(fields).individuals == [str(2**70), "x"]


def _fields(entry: dict[str, Any]) -> dict[bytes, bytes]:
    """An entry as Redis gives it back: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in entry.items()}


def test_a_rounds_batches_in_one_entry_give_the_rows_of_one_entry_each(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    batches = [_batch(n, seed=10 + n) for n in (1, 1, 7, 1)]
    batches[1] = DecisionBatch(**{**batches[1].__dict__, "lam": 0.5, "lambda_version": 8})  # λ* moved between
    merged, apart = f"{prefix}:merged", f"{prefix}:apart"
    client.xadd(merged, merged_entry(batches))  # type: ignore[arg-type]
    for batch in batches:
        client.xadd(apart, batch.entry())  # type: ignore[arg-type]
    assert client.xlen(merged) == 1
    rows, before = entries_table(client.xrange(merged)), entries_table(client.xrange(apart))
    assert rows.num_rows == before.num_rows == 10
    for name in rows.schema.names:
        if name != "stream_id":
            assert rows.column(name).equals(before.column(name)), name
    back = batches_from_entry(client.xrange(merged)[0][1])
    assert [b.decision_ids for b in back] == [b.decision_ids for b in batches]
    assert [(b.time, b.lam, b.lambda_version) for b in back] == [(b.time, b.lam, b.lambda_version) for b in batches]


def test_a_merged_entry_is_refused_naming_the_field_and_holds_one_campaign() -> None:
    batches = [_batch(2, seed=20), _batch(3, seed=21)]
    entry = _fields(merged_entry(batches))
    assert [b.size for b in batches_from_entry(entry)] == [2, 3]
    with pytest.raises(ValueError, match="'batches'"):
        batches_from_entry({**entry, b"count": b"6"})
    with pytest.raises(ValueError, match="'batches'"):
        batches_from_entry({**entry, b"batches": b"[[1, 2]]"})
    with pytest.raises(ValueError, match="'treatment'"):
        batches_from_entry({**entry, b"treatment": entry[b"treatment"][:-8]})
    other = DecisionBatch(**{**batches[1].__dict__, "campaign": "autumn"})
    with pytest.raises(ValueError, match="one campaign"):
        merged_entry([batches[0], other])

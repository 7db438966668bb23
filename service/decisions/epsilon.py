"""ε per campaign: the share of its decisions drawn by exploration (default 0), set by an operator.

Stored in the Redis hash `<prefix>:exploration` (field: campaign, value: JSON {epsilon, updated_at}), or in
a dict with no Redis. Replicas keep a copy in memory (`EpsilonTable`, read by /allocate without waiting on
Redis) refreshed on a timer by the decision log's background task; the replica that takes a PUT applies it
at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import StoreUnavailableError

log = logging.getLogger(__name__)

MAX_EPSILON = 1.0


class EpsilonTable:
    """campaign → ε served by this replica (plain dict reads: safe from /allocate's worker threads)."""

    def __init__(self) -> None:
        self._epsilon: dict[str, float] = {}

    def get(self, campaign: str) -> float:
        return self._epsilon.get(campaign, 0.0)

    def set(self, campaign: str, epsilon: float) -> None:
        self._epsilon[campaign] = epsilon

    def replace(self, values: dict[str, float]) -> None:
        self._epsilon = dict(values)  # one reference swap: readers see the old or the new table, never a mix

    def items(self) -> dict[str, float]:
        return dict(self._epsilon)


class EpsilonStore:
    """Where ε records live: the `<prefix>:exploration` hash, or a dict when `client` is None."""

    def __init__(self, client: aioredis.Redis | None, prefix: str) -> None:
        self._client = client
        self.key = f"{prefix}:exploration"
        self._local: dict[str, bytes] = {}

    async def put(self, campaign: str, epsilon: float) -> dict[str, Any]:
        record = {"campaign": campaign, "epsilon": epsilon, "updated_at": datetime.now(UTC).isoformat()}
        data = orjson.dumps(record)
        if self._client is None:
            self._local[campaign] = data
            return record
        try:
            await self._client.hset(self.key, campaign, data)
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis write failed: {error}") from error
        return record

    async def get_all(self) -> dict[str, float]:
        """campaign → ε; a record this replica cannot parse is logged and skipped."""
        if self._client is None:
            raw: dict[Any, Any] = dict(self._local)
        else:
            try:
                raw = await self._client.hgetall(self.key)
            except (RedisError, OSError) as error:
                raise StoreUnavailableError(f"Redis read failed: {error}") from error
        out: dict[str, float] = {}
        for field, data in raw.items():
            campaign = field.decode() if isinstance(field, bytes) else str(field)
            try:
                epsilon = float(orjson.loads(data)["epsilon"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.error("skipping an unreadable exploration record for campaign %r", campaign)
                continue
            if 0.0 <= epsilon <= MAX_EPSILON:
                out[campaign] = epsilon
        return out

"""Where λ* records live (DESIGN.md §5): Redis for any number of replicas, or in-process for one.

One record per campaign: λ*, the per-capita budget it was solved for, the model version it belongs to,
a version number and when it was solved. Redis writes go through Lua scripts, so a version only ever
increases (even past a Redis restart that lost the data: replicas restore what they remember) and every
change is announced on a pub/sub channel in the same atomic step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.errors import StoreUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LambdaRecord:
    """The budget decision for one campaign, as stored (version 0: not stored yet)."""

    campaign: str
    lam: float
    budget_per_capita: float
    model_version: str  # the model whose reference-population predictions λ* was solved on
    solved_at: str
    spend_per_capita: float  # expected cost per individual at λ*, on the reference population
    revenue_per_capita: float
    version: int = 0

    def to_json(self) -> bytes:
        fields = asdict(self)
        del fields["version"]  # kept in its own hash field, assigned by the store
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes | str, version: int) -> LambdaRecord:
        return cls(**orjson.loads(data), version=version)


class LambdaStore(Protocol):
    """The small interface both stores implement."""

    backend: str

    async def put(self, record: LambdaRecord, after_version: int) -> LambdaRecord:
        """Store `record` with a version above both the stored one and `after_version`; announce it."""
        ...

    async def restore(self, record: LambdaRecord) -> bool:
        """Write `record` with its own version if the store holds an older one (or none)."""
        ...

    async def get(self, campaign: str) -> LambdaRecord | None: ...

    async def get_all(self) -> dict[str, LambdaRecord]: ...

    def announcements(self, timeout: float) -> AsyncIterator[str | None]:
        """Campaign names as changes are announced, None after `timeout` s of silence; StoreUnavailableError."""
        ...

    async def close(self) -> None: ...


class InProcessStore:
    """Records in a dict: one replica only (no infrastructure), same semantics as Redis."""

    backend = "in-process"

    def __init__(self) -> None:
        self._records: dict[str, LambdaRecord] = {}
        self._changed: asyncio.Queue[str] = asyncio.Queue()

    async def put(self, record: LambdaRecord, after_version: int) -> LambdaRecord:
        stored = self._records.get(record.campaign)
        version = max(stored.version if stored else 0, after_version) + 1
        record = replace(record, version=version)
        self._records[record.campaign] = record
        self._changed.put_nowait(record.campaign)
        return record

    async def restore(self, record: LambdaRecord) -> bool:
        stored = self._records.get(record.campaign)
        if stored is not None and stored.version >= record.version:
            return False
        self._records[record.campaign] = record
        return True

    async def get(self, campaign: str) -> LambdaRecord | None:
        return self._records.get(campaign)

    async def get_all(self) -> dict[str, LambdaRecord]:
        return dict(self._records)

    async def announcements(self, timeout: float) -> AsyncIterator[str | None]:
        yield None
        while True:
            try:
                yield await asyncio.wait_for(self._changed.get(), timeout)
            except TimeoutError:
                yield None

    async def close(self) -> None:
        return None


# KEYS[1] record hash, KEYS[2] campaign set; ARGV: record JSON, floor version, campaign, channel.
_PUT = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local version = math.max(stored, tonumber(ARGV[2])) + 1
redis.call('HSET', KEYS[1], 'version', version, 'record', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return version
"""

# Same keys; ARGV: record JSON, its version, campaign, channel. Returns 1 when written.
_RESTORE = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local version = tonumber(ARGV[2])
if stored >= version then return 0 end
redis.call('HSET', KEYS[1], 'version', version, 'record', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""


class RedisStore:
    """Records in Redis hashes `<prefix>:lambda:<campaign>` {version, record}; changes on `<prefix>:lambda`."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "allocator", timeout: float = 1.0) -> None:
        # No client-side retries: a dead Redis must fail fast (the sync loop retries on its own schedule).
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._prefix = prefix
        self.channel = f"{prefix}:lambda"
        self._campaigns = f"{prefix}:campaigns"
        self._put = self._client.register_script(_PUT)
        self._restore = self._client.register_script(_RESTORE)

    def _key(self, campaign: str) -> str:
        return f"{self._prefix}:lambda:{campaign}"

    async def put(self, record: LambdaRecord, after_version: int) -> LambdaRecord:
        keys = [self._key(record.campaign), self._campaigns]
        args: list[Any] = [record.to_json(), after_version, record.campaign, self.channel]
        try:
            version = await self._put(keys=keys, args=args)
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis write failed: {error}") from error
        return replace(record, version=int(version))

    async def restore(self, record: LambdaRecord) -> bool:
        keys = [self._key(record.campaign), self._campaigns]
        args: list[Any] = [record.to_json(), record.version, record.campaign, self.channel]
        try:
            return bool(await self._restore(keys=keys, args=args))
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis write failed: {error}") from error

    async def get(self, campaign: str) -> LambdaRecord | None:
        try:
            version, data = await self._client.hmget(self._key(campaign), ["version", "record"])
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis read failed: {error}") from error
        return None if data is None else LambdaRecord.from_json(data, int(version or 0))

    async def get_all(self) -> dict[str, LambdaRecord]:
        try:
            campaigns = sorted(c.decode() for c in await self._client.smembers(self._campaigns))
            async with self._client.pipeline(transaction=False) as pipe:
                for campaign in campaigns:
                    pipe.hmget(self._key(campaign), ["version", "record"])
                rows = await pipe.execute()
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis read failed: {error}") from error
        return {
            campaign: LambdaRecord.from_json(data, int(version))
            for campaign, (version, data) in zip(campaigns, rows, strict=True)
            if data is not None
        }

    async def announcements(self, timeout: float) -> AsyncIterator[str | None]:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            # Subscribed first, then the caller resyncs: nothing announced in between is missed.
            yield None
            while True:
                message = await pubsub.get_message(timeout=timeout)
                yield None if message is None else bytes(message["data"]).decode()
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis subscription lost: {error}") from error
        finally:
            try:
                await pubsub.aclose()  # type: ignore[attr-defined]
            except (RedisError, OSError):
                log.debug("closing a broken pub/sub connection failed", exc_info=True)

    async def close(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]


def open_store(redis_url: str | None, prefix: str, timeout: float) -> LambdaStore:
    """Redis when a URL is configured, else the in-process store."""
    if redis_url is None:
        return InProcessStore()
    return RedisStore(redis_url, prefix=prefix, timeout=timeout)

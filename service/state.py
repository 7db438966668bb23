"""Where λ* records live (DESIGN.md §5): Redis for any number of replicas, or in-process for one.

One record per campaign: λ*, the per-capita budget it was solved for, the model version it belongs to,
a version number and when it was solved. Redis writes go through Lua scripts, so a version only ever
increases (even past a Redis restart that lost the data: replicas restore what they remember) and every
change is announced on a pub/sub channel in the same atomic step.

An answer means what it says. A write carries a request id and a deadline in Redis's own clock: the script
refuses to apply it after the deadline, so a write queued behind a stalled Redis can never take effect after
its caller was told it failed; a write whose reply was lost is settled by `settle`, which either confirms it
or burns its request id so it can never apply. Retrying with the same request id returns the first write.

Redis keys (prefix `allocator` by default): `<prefix>:lambda:<campaign>` hash {version, record};
`<prefix>:campaigns` set of campaign names; `<prefix>:request:<id>` hash {version, record, fingerprint}
or {cancelled}, kept `REQUEST_TTL_SECONDS`; pub/sub channel `<prefix>:lambda`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from service.errors import InvalidRecordError, StoreUnavailableError, WriteOutcomeUnknownError

log = logging.getLogger(__name__)

REQUEST_TTL_SECONDS = 24 * 3600  # how long a request id is remembered (idempotent retries, burnt ids)


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
        """Parse and validate a stored record; InvalidRecordError says what is wrong with it.

        Unknown fields (a newer release's) are ignored, so an older replica keeps serving during a rollout.
        """
        try:
            fields = StoredRecord.model_validate_json(data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors())
            raise InvalidRecordError(problems) from error
        if version < 1:
            raise InvalidRecordError(f"version: expected a positive integer, got {version}")
        return cls(**fields.model_dump(), version=version)


class StoredRecord(BaseModel):
    """The fields of a stored record, validated on read (DESIGN.md §5: a bad record is skipped, never fatal)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    campaign: str = Field(min_length=1, max_length=64)
    lam: float = Field(ge=0.0, allow_inf_nan=False)
    budget_per_capita: float = Field(ge=0.0, allow_inf_nan=False)
    model_version: str = Field(min_length=1)
    solved_at: str
    # orjson writes NaN (no solution for the default budget) as null; read it back as NaN.
    spend_per_capita: float | None
    revenue_per_capita: float | None

    @field_validator("spend_per_capita", "revenue_per_capita")
    @classmethod
    def _null_is_nan(cls, value: float | None) -> float:
        return math.nan if value is None else value


def parse_version(value: Any) -> int:
    """A stored version field (bytes from Redis) as an int; InvalidRecordError when it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        raise InvalidRecordError(f"version: expected an integer, got {value!r}") from error


@dataclass(frozen=True)
class WriteRequest:
    """Who is writing: a request id (idempotency key) and what it asks for, to recognise a retry."""

    request_id: str
    fingerprint: str  # the budget asked for; a retry with the same id must ask for the same


class LambdaStore(Protocol):
    """The small interface both stores implement."""

    backend: str
    rejected_records: int  # stored records that failed validation (each read counts)

    async def put(self, record: LambdaRecord, after_version: int, request: WriteRequest | None = None) -> LambdaRecord:
        """Store `record` with a version above both the stored one and `after_version`; announce it.

        With `request`, a retry of an applied request id returns that first write (a different fingerprint:
        ValueError). StoreUnavailableError: not applied, and it never will be. WriteOutcomeUnknownError: the
        write may have been applied; it cannot apply after the deadline it names.
        """
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
        self._requests: dict[str, tuple[str, LambdaRecord]] = {}  # request id → (fingerprint, record written)
        self._changed: asyncio.Queue[str] = asyncio.Queue()
        self.rejected_records = 0

    async def put(self, record: LambdaRecord, after_version: int, request: WriteRequest | None = None) -> LambdaRecord:
        if request is not None and request.request_id in self._requests:
            fingerprint, first = self._requests[request.request_id]
            _check_retry(request, fingerprint)
            return first
        stored = self._records.get(record.campaign)
        version = max(stored.version if stored else 0, after_version) + 1
        record = replace(record, version=version)
        self._records[record.campaign] = record
        if request is not None:
            self._requests[request.request_id] = (request.fingerprint, record)
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


def _check_retry(request: WriteRequest, fingerprint: str) -> None:
    if fingerprint != request.fingerprint:
        raise ValueError(f"request id {request.request_id!r} was already used for another budget ({fingerprint})")


# KEYS[1] record hash, KEYS[2] campaign set, KEYS[3] request hash (unused when ARGV[5] is '').
# ARGV: record JSON, floor version, campaign, channel, request id, fingerprint, deadline (ms, Redis clock),
# request TTL (s). Returns {version, status, record, fingerprint}: status 'new', 'retry' (the request id's
# first write, returned as it was), 'late' (past the deadline: not applied) or 'cancelled' (id burnt by settle).
_PUT = """
if ARGV[5] ~= '' then
  local seen = redis.call('HMGET', KEYS[3], 'version', 'record', 'fingerprint', 'cancelled')
  if seen[4] then return {0, 'cancelled', '', ''} end
  if seen[1] then return {tonumber(seen[1]), 'retry', seen[2], seen[3]} end
end
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[7]) then
  return {0, 'late', '', ''}
end
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local version = math.max(stored, tonumber(ARGV[2])) + 1
redis.call('HSET', KEYS[1], 'version', version, 'record', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], 'version', version, 'record', ARGV[1], 'fingerprint', ARGV[6])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return {version, 'new', ARGV[1], ARGV[6]}
"""

# KEYS[1] request hash; ARGV: request TTL (s). Confirms a request id's write ({version, record}) or burns the id
# so that a write still queued somewhere finds it cancelled ({0, ''}).
_SETTLE = """
local seen = redis.call('HMGET', KEYS[1], 'version', 'record')
if seen[1] then return {tonumber(seen[1]), seen[2]} end
redis.call('HSET', KEYS[1], 'cancelled', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return {0, ''}
"""

# Same keys as _PUT's first two; ARGV: record JSON, its version, campaign, channel. Returns 1 when written.
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
        self._timeout = timeout
        self.channel = f"{prefix}:lambda"
        self._campaigns = f"{prefix}:campaigns"
        self._put = self._client.register_script(_PUT)
        self._settle = self._client.register_script(_SETTLE)
        self._restore = self._client.register_script(_RESTORE)
        self.clock_offset_ms = 0.0  # Redis TIME − local time, measured at every full read
        self.rejected_records = 0

    def _key(self, campaign: str) -> str:
        return f"{self._prefix}:lambda:{campaign}"

    def _request_key(self, request_id: str) -> str:
        return f"{self._prefix}:request:{request_id}"

    async def put(self, record: LambdaRecord, after_version: int, request: WriteRequest | None = None) -> LambdaRecord:
        request_id = request.request_id if request is not None else ""
        fingerprint = request.fingerprint if request is not None else ""
        # The write may not apply later than the moment this replica stops waiting for it (Redis's clock).
        deadline_ms = int(1e3 * time.time() + self.clock_offset_ms + 1e3 * self._timeout)
        keys = [self._key(record.campaign), self._campaigns, self._request_key(request_id or "-")]
        args: list[Any] = [
            record.to_json(),
            after_version,
            record.campaign,
            self.channel,
            request_id,
            fingerprint,
            deadline_ms,
            REQUEST_TTL_SECONDS,
        ]
        try:
            version, status, data, first_fingerprint = await self._put(keys=keys, args=args)
        except RedisConnectionError as error:
            if "connecting to" in str(error):  # redis-py's wording when the connection failed: nothing was sent
                raise StoreUnavailableError(f"Redis write failed: {error}") from error
            return await self._after_lost_reply(record, request_id, deadline_ms, error)
        except (RedisError, OSError) as error:
            return await self._after_lost_reply(record, request_id, deadline_ms, error)
        status = _text(status)
        if status == "late":
            raise StoreUnavailableError("Redis answered after the write's deadline; it was not applied")
        if status == "cancelled":
            raise StoreUnavailableError(f"request id {request_id!r} belongs to a write that failed; use a new one")
        if status == "retry" and request is not None:
            _check_retry(request, _text(first_fingerprint))
        return LambdaRecord.from_json(data, int(version))

    async def _after_lost_reply(
        self, record: LambdaRecord, request_id: str, deadline_ms: int, error: Exception
    ) -> LambdaRecord:
        """The write was sent but its reply never came: confirm it, or make sure it can never apply."""
        if not request_id:
            raise WriteOutcomeUnknownError(str(error), deadline_ms)
        try:
            version, data = await self._settle(keys=[self._request_key(request_id)], args=[REQUEST_TTL_SECONDS])
        except (RedisError, OSError) as settle_error:
            raise WriteOutcomeUnknownError(f"{error}; then {settle_error}", deadline_ms) from settle_error
        if int(version) == 0:
            raise StoreUnavailableError(f"Redis write failed ({error}); it was cancelled and will not be applied")
        log.warning("campaign %s: a write whose reply was lost had been applied (v%s)", record.campaign, version)
        return LambdaRecord.from_json(data, int(version))

    async def restore(self, record: LambdaRecord) -> bool:
        keys = [self._key(record.campaign), self._campaigns]
        args: list[Any] = [record.to_json(), record.version, record.campaign, self.channel]
        try:
            return bool(await self._restore(keys=keys, args=args))
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis write failed: {error}") from error

    def _parse(self, campaign: str, version: Any, data: bytes) -> LambdaRecord | None:
        """The stored record, or None (logged and counted) when it does not validate."""
        try:
            record = LambdaRecord.from_json(data, parse_version(version))
        except InvalidRecordError as error:
            self.rejected_records += 1
            log.error("skipping the stored λ* record of campaign %r: %s", campaign, error)
            return None
        if record.campaign != campaign:
            self.rejected_records += 1
            log.error("skipping the record under campaign %r: it names campaign %r", campaign, record.campaign)
            return None
        return record

    async def get(self, campaign: str) -> LambdaRecord | None:
        try:
            version, data = await self._client.hmget(self._key(campaign), ["version", "record"])
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis read failed: {error}") from error
        return None if data is None else self._parse(campaign, version, data)

    async def get_all(self) -> dict[str, LambdaRecord]:
        try:
            sent_ms = 1e3 * time.time()
            seconds, micros = await self._client.time()
            received_ms = 1e3 * time.time()
            self.clock_offset_ms = 1e3 * seconds + micros / 1e3 - (sent_ms + received_ms) / 2
            campaigns = sorted(c.decode(errors="replace") for c in await self._client.smembers(self._campaigns))
            async with self._client.pipeline(transaction=False) as pipe:
                for campaign in campaigns:
                    pipe.hmget(self._key(campaign), ["version", "record"])
                rows = await pipe.execute()
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis read failed: {error}") from error
        records = {}
        for campaign, (version, data) in zip(campaigns, rows, strict=True):
            record = None if data is None else self._parse(campaign, version, data)
            if record is not None:
                records[campaign] = record
        return records

    async def announcements(self, timeout: float) -> AsyncIterator[str | None]:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            # Subscribed first, then the caller resyncs: nothing announced in between is missed.
            yield None
            while True:
                message = await pubsub.get_message(timeout=timeout)
                yield None if message is None else bytes(message["data"]).decode(errors="replace")
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis subscription lost: {error}") from error
        finally:
            try:
                await pubsub.aclose()  # type: ignore[attr-defined]
            except (RedisError, OSError):
                log.debug("closing a broken pub/sub connection failed", exc_info=True)

    async def close(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_store(redis_url: str | None, prefix: str, timeout: float) -> LambdaStore:
    """Redis when a URL is configured, else the in-process store."""
    if redis_url is None:
        return InProcessStore()
    return RedisStore(redis_url, prefix=prefix, timeout=timeout)

"""The spend ledger in Redis (keys in `service.campaigns`): every write is one Lua script, so it is atomic.

Times come from Redis (`TIME`) so leases do not depend on the replicas' clocks. Numbers are stored with
17 significant digits (exact round trip of a double), so committed + reserved ≤ budget holds to the last bit.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from service.campaigns.ledger import BudgetBelowSpendError, Grant, LedgerState, PacePoint
from service.errors import StoreUnavailableError

log = logging.getLogger(__name__)

LEDGER_FIELDS = ("budget", "cap", "committed", "reserved", "presumed", "realized", "covered", "demand")

_HELPERS = """
local function num(f) return tonumber(redis.call('HGET', KEYS[1], f) or '0') end
local function put(f, v) redis.call('HSET', KEYS[1], f, string.format('%.17g', v)) end
local function state()
  local out = {}
  for i, f in ipairs({'budget', 'cap', 'committed', 'reserved', 'presumed', 'realized', 'covered', 'demand'}) do
    out[i] = redis.call('HGET', KEYS[1], f) or '0'
  end
  return out
end
"""

# KEYS: ledger, managed set. ARGV: spec JSON, budget, campaign. Returns the state, or an error reply.
_UPSERT = (
    _HELPERS
    + """
local budget = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local used = num('committed') + num('reserved')
  if budget < used then return redis.error_reply('BELOW ' .. string.format('%.17g', used)) end
else
  for _, f in ipairs({'committed', 'reserved', 'presumed', 'realized', 'covered'}) do put(f, 0) end
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1])
put('budget', budget)
put('cap', budget)
redis.call('SADD', KEYS[2], ARGV[3])
return state()
"""
)

# KEYS: ledger, slices, leases, presumed. ARGV: replica, cumulative spent, want, lease ms, share, release (0/1),
# report sequence number (increasing per replica), cumulative demand.
# Returns {held, state...}, or {} when the campaign does not exist.
_REPORT = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
-- A report overtaken by a later one of the same replica (its answer timed out, its bytes arrived late) must not
-- resize the slice the replica now believes it holds: it changes nothing.
local seq = tonumber(ARGV[7])
if seq <= tonumber(redis.call('HGET', KEYS[2], ARGV[1] .. '#seq') or '0') then
  local out = state()
  table.insert(out, 1, redis.call('HGET', KEYS[2], ARGV[1]) or '0')
  return out
end
redis.call('HSET', KEYS[2], ARGV[1] .. '#seq', seq)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local committed, reserved, presumed = num('committed'), num('reserved'), num('presumed')
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local held = tonumber(redis.call('HGET', KEYS[2], dead) or '0')
  reserved = reserved - held
  committed = committed + held
  presumed = presumed + held
  local charged = tonumber(redis.call('HGET', KEYS[4], dead) or '0') + held
  redis.call('HSET', KEYS[4], dead, string.format('%.17g', charged))
  redis.call('HDEL', KEYS[2], dead)
  redis.call('ZREM', KEYS[3], dead)
end
local replica, total, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- ARGV[2] is the replica's cumulative spend: a report retried after a lost answer is not counted twice.
local seen = tonumber(redis.call('HGET', KEYS[2], replica .. '#spent') or '0')
local spent = math.max(total - seen, 0)
redis.call('HSET', KEYS[2], replica .. '#spent', string.format('%.17g', math.max(total, seen)))
-- ARGV[8]: cumulative demand (cost of the treatments chosen, paid for or not), for the pacer.
local seen_demand = tonumber(redis.call('HGET', KEYS[2], replica .. '#demand') or '0')
local demand = tonumber(ARGV[8])
put('demand', num('demand') + math.max(demand - seen_demand, 0))
redis.call('HSET', KEYS[2], replica .. '#demand', string.format('%.17g', math.max(demand, seen_demand)))
local held = tonumber(redis.call('HGET', KEYS[2], replica) or '-1')
if held < 0 then
  held = 0
  local charged = tonumber(redis.call('HGET', KEYS[4], replica) or '0')
  if charged > 0 then
    committed = committed - math.max(charged - spent, 0)
    presumed = presumed - charged
    redis.call('HDEL', KEYS[4], replica)
  else
    committed = committed + spent
  end
else
  held = held - spent
  reserved = reserved - spent
  committed = committed + spent
end
local budget = num('budget')
local cap = math.min(num('cap'), budget)
local new_held = 0
if ARGV[6] == '0' then
  -- Shrink only when the replica asks (it has already stopped spending above `want`); grow within the headroom.
  local headroom = cap - committed - reserved
  local target = math.min(want, math.max(cap - committed, 0) * tonumber(ARGV[5]))
  if want < held then new_held = math.max(want, 0)
  elseif target > held then new_held = held + math.max(math.min(target - held, headroom), 0)
  else new_held = held end
  redis.call('HSET', KEYS[2], replica, string.format('%.17g', new_held))
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), replica)
else
  redis.call('HDEL', KEYS[2], replica)
  redis.call('ZREM', KEYS[3], replica)
end
reserved = reserved + new_held - held
put('committed', committed)
put('reserved', reserved)
put('presumed', presumed)
local out = state()
table.insert(out, 1, string.format('%.17g', new_held))
return out
"""
)

# KEYS: ledger, managed set. ARGV: spec JSON, budget, committed, realized, covered, campaign, demand. 1 when written.
_RESTORE = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1])
put('budget', tonumber(ARGV[2]))
put('cap', tonumber(ARGV[2]))
put('committed', tonumber(ARGV[3]))
put('reserved', 0)
put('presumed', 0)
put('realized', tonumber(ARGV[4]))
put('covered', tonumber(ARGV[5]))
put('demand', tonumber(ARGV[7]))
redis.call('SADD', KEYS[2], ARGV[6])
return 1
"""
)

# KEYS: ledger. ARGV: realized, covered.
_REALIZE = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
put('realized', num('realized') + tonumber(ARGV[1]))
put('covered', num('covered') + tonumber(ARGV[2]))
return state()
"""
)

# KEYS: ledger. ARGV: cap. Never above the budget.
_SET_CAP = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
put('cap', math.min(tonumber(ARGV[1]), num('budget')))
return 1
"""
)

# KEYS: leader. ARGV: replica, lease ms. 1 when this replica holds the lease after the call.
_LEADER = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _state(values: list[Any]) -> LedgerState:
    return LedgerState(*(float(v) for v in values))


class RedisLedger:
    """The ledger shared by every replica over one Redis (see the package docstring for the keys)."""

    backend = "redis"

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._prefix = prefix
        self._managed = f"{prefix}:campaigns:managed"
        self._upsert = self._client.register_script(_UPSERT)
        self._report = self._client.register_script(_REPORT)
        self._realize = self._client.register_script(_REALIZE)
        self._restore = self._client.register_script(_RESTORE)
        self._set_cap = self._client.register_script(_SET_CAP)
        self._leader = self._client.register_script(_LEADER)

    def _key(self, campaign: str, part: str = "") -> str:
        base = f"{self._prefix}:campaign:{{{campaign}}}"
        return f"{base}:{part}" if part else base

    async def _call(self, coroutine: Any) -> Any:
        try:
            return await coroutine
        except ResponseError as error:
            if str(error).startswith("BELOW"):  # the upsert's own refusal, handled by the caller
                raise
            raise StoreUnavailableError(f"Redis ledger refused a script: {error}") from error
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"Redis ledger unavailable: {error}") from error

    async def upsert(self, campaign: str, spec_json: str, budget: float) -> LedgerState:
        try:
            values = await self._call(
                self._upsert(keys=[self._key(campaign), self._managed], args=[spec_json, repr(budget), campaign])
            )
        except ResponseError as error:
            used = str(error).removeprefix("BELOW ").strip()
            raise BudgetBelowSpendError(f"{budget:.6g} is below committed + reserved spend {used}") from error
        return _state(values)

    async def read(self, campaign: str) -> tuple[str, LedgerState] | None:
        values = await self._call(self._client.hmget(self._key(campaign), ["spec", *LEDGER_FIELDS]))
        if values[0] is None:
            return None
        return values[0].decode(), _state([v or b"0" for v in values[1:]])

    async def restore(self, campaign: str, spec_json: str, state: LedgerState) -> bool:
        keys = [self._key(campaign), self._managed]
        args = [
            spec_json,
            repr(state.budget),
            repr(state.committed),
            repr(state.realized),
            repr(state.covered),
            campaign,
        ]
        return bool(await self._call(self._restore(keys=keys, args=args)))

    async def managed(self) -> list[str]:
        members = await self._call(self._client.smembers(self._managed))
        return sorted(m.decode() for m in members)

    async def report(
        self,
        campaign: str,
        replica: str,
        seq: int,
        spent_total: float,
        want: float,
        lease_ms: int,
        share: float,
        release: bool,
        demand_total: float = 0.0,
    ) -> Grant | None:
        keys = [self._key(campaign), self._key(campaign, "slices"), self._key(campaign, "leases")]
        keys.append(self._key(campaign, "presumed"))
        args: list[str | int] = [
            replica,
            repr(spent_total),
            repr(want),
            lease_ms,
            repr(share),
            "1" if release else "0",
            seq,
            repr(demand_total),
        ]
        values = await self._call(self._report(keys=keys, args=args))
        if not values:
            return None
        return Grant(float(values[0]), _state(values[1:]))

    async def realize(self, campaign: str, realized: float, covered: float) -> LedgerState | None:
        values = await self._call(self._realize(keys=[self._key(campaign)], args=[repr(realized), repr(covered)]))
        return _state(values) if values else None

    async def set_cap(self, campaign: str, cap: float) -> None:
        await self._call(self._set_cap(keys=[self._key(campaign)], args=[repr(cap)]))

    async def acquire_leader(self, campaign: str, replica: str, lease_ms: int) -> bool:
        return bool(await self._call(self._leader(keys=[self._key(campaign, "leader")], args=[replica, lease_ms])))

    async def pace_state(self, campaign: str) -> dict[str, float]:
        raw = await self._call(self._client.hgetall(self._key(campaign, "pace")))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def save_pace_state(self, campaign: str, state: dict[str, float]) -> None:
        if state:
            await self._call(
                self._client.hset(self._key(campaign, "pace"), mapping={k: repr(v) for k, v in state.items()})
            )

    async def record_pace(self, campaign: str, point: PacePoint, keep: int) -> None:
        key = self._key(campaign, "history")
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, point.to_json()).ltrim(key, -keep, -1)
            await self._call(pipe.execute())

    async def pace_history(self, campaign: str) -> list[PacePoint]:
        raw = await self._call(self._client.lrange(self._key(campaign, "history"), 0, -1))
        points = []
        for item in raw:
            try:
                points.append(PacePoint.from_json(item))
            except (ValueError, TypeError):  # an entry not written by this code: skipped, not a 500
                log.warning("campaign %s: unreadable pacing history entry %r skipped", campaign, item[:80])
        return points

    async def close(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]


def open_ledger(redis_url: str | None, prefix: str, timeout: float) -> RedisLedger | None:
    """A Redis ledger when a URL is configured; None means the caller uses the in-process one."""
    return None if redis_url is None else RedisLedger(redis_url, prefix, timeout)

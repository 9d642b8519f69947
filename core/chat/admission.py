"""Admission of an incoming event: duplicate check, rate limit and daily quota.

All three are decided by one Lua script on the Redis server's clock, so replicas
agree, clocks on the bot's machines do not matter, and admission costs one
round trip.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

_ADMIT = """
if ARGV[6] == '1' and redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return {1, 0} end
if ARGV[2] == '0' then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local quota = tonumber(ARGV[5])
if quota > 0 then
  local day = math.floor(now / 86400000)
  local used = tonumber(redis.call('GET', KEYS[3] .. ':' .. day) or '0')
  if used >= quota then return {3, (day + 1) * 86400000 - now} end
end
local cap, rate = tonumber(ARGV[3]), tonumber(ARGV[4]) / 1000
local b = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local code, retry = 0, 0
if tokens >= 1 then tokens = tokens - 1 else code = 2; retry = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[2], math.ceil(cap / rate) + 1000)
return {code, retry}
"""

_CHARGE = """
local t = redis.call('TIME')
local day = math.floor(tonumber(t[1]) / 86400)
local key = KEYS[1] .. ':' .. day
local used = redis.call('INCRBY', key, ARGV[1])
redis.call('EXPIRE', key, 172800)
return used
"""


class Verdict(enum.Enum):
    ADMITTED = 0
    DUPLICATE = 1
    RATE_LIMITED = 2
    OVER_QUOTA = 3


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    retry_after: float = 0.0  # seconds until the limit lets this user through again


@dataclass(frozen=True, slots=True)
class Limits:
    rate_per_minute: float
    burst: int
    daily_tokens: int  # 0 = unlimited
    event_ttl_seconds: int = 86400


class Admitter:
    """Decides whether an event may proceed, and charges tokens once it did."""

    def __init__(self, redis: RedisClient, keys: Keys, limits: Limits) -> None:
        self._keys = keys
        self._limits = limits
        self._admit = redis.register_script(_ADMIT)
        self._charge = redis.register_script(_CHARGE)

    async def admit(
        self, platform: str, event_id: str, user_id: str, *, limited: bool, check_repeat: bool = True
    ) -> Admission:
        """`limited` is False for events that cost no generation, or for admins.
        `check_repeat` is False where the intake already refused repeated event ids."""
        lim = self._limits
        keys = [
            self._keys.event(platform, event_id, user_id=user_id),
            self._keys.bucket(platform, user_id),
            self._keys.quota(platform, user_id),
        ]
        args = [
            lim.event_ttl_seconds,
            1 if limited else 0,
            lim.burst,
            lim.rate_per_minute / 60.0,
            lim.daily_tokens,
            1 if check_repeat else 0,
        ]
        code, retry_ms = await self._admit(keys=keys, args=args)
        return Admission(Verdict(int(code)), int(retry_ms) / 1000.0)

    async def charge(self, platform: str, user_id: str, tokens: int) -> int:
        """Add generated and prompt tokens to today's use; returns the new total."""
        if tokens <= 0 or self._limits.daily_tokens == 0:
            return 0
        return int(await self._charge(keys=[self._keys.quota(platform, user_id)], args=[tokens]))

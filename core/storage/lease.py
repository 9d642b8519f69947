"""A key one owner holds for a while: taken with SET NX PX under a random token,
renewed and given back only by that token (a holder that stalled past its time
can't renew or delete the lease someone else took since). The scheduler's leader
and each chat's backfill hold one."""

from __future__ import annotations

import secrets

from core.storage.redis_client import RedisClient

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, redis: RedisClient, key: str, ttl: float, *, owner: str | None = None) -> None:
        self._redis = redis
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.owner = owner or secrets.token_hex(8)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take it if nobody holds it."""
        return bool(await self._redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """Hold it `ttl` longer; False when it is no longer this owner's."""
        return bool(await self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    async def release(self) -> None:
        """Give it back, if it is still this owner's."""
        await self._release(keys=[self.key], args=[self.owner])

"""Exactly one replica runs the scheduler: a leader lease in Redis.

The leader holds a key with its owner token and a time to live, and renews it
well before it expires; a replica that dies stops renewing, and another takes
over once the lease runs out (within `ttl + poll` seconds, 20 s by default).
APScheduler must not share a job store between processes, so this lease is
what makes several replicas safe; each run still claims its slot (see the
runner), so even a leader change in the middle of a run publishes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.storage.keys import Keys
from core.storage.redis_client import honour_cancellation

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Callback = Callable[[], Awaitable[None]]


class LeaderLease:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        ttl: float = 15.0,
        poll: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._redis = redis
        self._key = keys.scheduler_lease()
        self._ttl_ms = int(ttl * 1000)
        self._poll = poll
        self._log = logger or logging.getLogger("herald.scheduler")
        self.owner = secrets.token_hex(8)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.leading = False

    async def try_acquire(self) -> bool:
        self.leading = bool(await self._redis.set(self._key, self.owner, nx=True, px=self._ttl_ms))
        return self.leading

    async def renew(self) -> bool:
        self.leading = bool(await self._renew(keys=[self._key], args=[self.owner, self._ttl_ms]))
        return self.leading

    async def release(self) -> None:
        if self.leading:
            with contextlib.suppress(RedisError):
                await self._release(keys=[self._key], args=[self.owner])
        self.leading = False

    async def _elect(self, on_elected: Callback, on_deposed: Callback) -> bool:
        """Start leading; if that fails, say so loudly and give the lease back at once, so
        that another replica (or this one, next round) can try: a leader that runs no
        scheduler must not hold the lease."""
        try:
            await on_elected()
            return True
        except Exception:
            self._log.exception("this replica could not start the scheduler; giving up the lease")
            await on_deposed()
            await self.release()
            await asyncio.sleep(self._poll)
            return False

    async def run(self, on_elected: Callback, on_deposed: Callback) -> None:
        """Campaign for the lease forever; call back when leadership starts or ends."""
        try:
            while True:
                was_leading = self.leading
                try:
                    leading = await (self.renew() if was_leading else self.try_acquire())
                except RedisError as exc:
                    self._log.warning("scheduler lease: Redis failed (%s)", exc)
                    leading = False
                    self.leading = False
                if leading and not was_leading:
                    self._log.info("this replica now runs the scheduler")
                    if not await self._elect(on_elected, on_deposed):
                        continue
                elif was_leading and not leading:
                    self._log.warning("this replica lost the scheduler lease")
                    await on_deposed()
                honour_cancellation()
                await asyncio.sleep(self._poll)
        finally:
            if self.leading:
                await on_deposed()
            await self.release()

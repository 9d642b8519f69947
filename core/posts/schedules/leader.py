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
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from core.storage.keys import Keys
from core.storage.lease import Lease
from core.storage.redis_client import RedisClient, honour_cancellation

Callback = Callable[[], Awaitable[None]]


class LeaderLease:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        ttl: float = 15.0,
        poll: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._lease = Lease(redis, keys.scheduler_lease(), ttl)
        self._poll = poll
        self._log = logger or logging.getLogger("herald.scheduler")
        self.owner = self._lease.owner
        self.leading = False

    async def try_acquire(self) -> bool:
        self.leading = await self._lease.acquire()
        return self.leading

    async def renew(self) -> bool:
        self.leading = await self._lease.renew()
        return self.leading

    async def release(self) -> None:
        if self.leading:
            with contextlib.suppress(RedisError):
                await self._lease.release()
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

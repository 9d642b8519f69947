"""A bot's overall limit shared by every process that calls the platform for it.

Discord's 50 requests a second and Telegram's 30 messages are the bot's, however many
processes make the calls: gateways, answering workers, publishers. Each process paces
by its own `Rate` (`core.pacing`), so each keeps to a share: the limit divided by the
processes present for the same bot. They count each other in Redis: a sorted set per
bot, whose members are the processes and whose scores are when each one's presence
lapses, on the Redis server's clock (one clock for all of them).

A process renews its presence and reads the count every `period`, and resizes its
`Rate` to its share. One that joins while others are present waits a period before its
first call, so they have shrunk their shares by then and the shares never add up to
more than the limit. One that stops removes itself; one that dies lapses after
`lapse`, its share unused until then. If Redis cannot be reached, a process keeps the
share it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from core.pacing import Rate
from core.storage.redis_client import RedisClient

#: seconds between a process's renewals (and a joining process's wait before its first call)
PERIOD = 1.0
#: seconds after its last renewal that a process which stopped renewing no longer counts
LAPSE = 3.0

# KEYS[1] the bot's set; ARGV: this process, seconds its presence lasts.
# Returns how many processes are present, this one included.
_RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return redis.call('ZCARD', KEYS[1])
"""


def bot_tag(token: str) -> str:
    """Names a bot in keys without its token: the same for every process of the bot."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class RateShare:
    """Keeps a `Rate` at this process's share of a bot's `limit` calls a second."""

    def __init__(
        self,
        redis: RedisClient,
        key: str,
        limit: int,
        *,
        period: float = PERIOD,
        lapse: float = LAPSE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        logger: logging.Logger | None = None,
    ) -> None:
        self._redis = redis
        self.key = key
        self.limit = limit
        self.period = period
        self.lapse = max(lapse, 2 * period)  # a renewal late by a period must not lapse
        self.member = secrets.token_hex(8)
        self._sleep = sleep
        self._log = logger or logging.getLogger(__name__)
        self._renew = redis.register_script(_RENEW)
        self._rate: Rate | None = None
        self._task: asyncio.Task[None] | None = None
        #: processes present at the last count, this one included (0: not joined)
        self.present = 0

    async def join(self, rate: Rate) -> None:
        """Count this process in, then pace `rate` at its share; before the bot's first call."""
        self._rate = rate
        present = await self._count()
        if present > 1:  # the others shrink at their next renewal: make no call before it
            await self._sleep(self.period)
            present = await self._count()
        self._apply(present)
        self._task = asyncio.create_task(self._keep(), name=f"rate-share {self.key}")

    async def leave(self) -> None:
        """Stop counting this process, so the others take its share at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(self.key, self.member)

    async def _count(self) -> int:
        return int(await self._renew(keys=[self.key], args=[self.member, self.lapse]))

    def _apply(self, present: int) -> None:
        present = max(present, 1)
        if present != self.present:
            self._log.info(
                "processes sharing the bot's %d calls a second (%s): %d, %.1f a second here",
                self.limit,
                self.key,
                present,
                self.limit / present,
            )
        self.present = present
        assert self._rate is not None
        self._rate.resize(self.limit / present)

    async def _keep(self) -> None:
        while True:
            await self._sleep(self.period)
            try:
                present = await self._count()
            except (RedisError, OSError) as exc:
                self._log.warning("could not renew this process's share of %s: %r", self.key, exc)
                continue
            self._apply(present)

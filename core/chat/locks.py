"""Per-conversation lock across processes, so one conversation is answered in order.

Two layers: an asyncio lock per conversation inside the process (waiters are
served first come, first served, without polling Redis), then a Redis lease
(`SET NX PX` with an owner token, renewed while held, released only by its
owner) that keeps replicas from interleaving one conversation. A second message
waits its turn; it is never dropped unless it waited longer than the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient, honour_cancellation

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LockTimeout(Exception):
    """The conversation stayed busy for longer than the caller was willing to wait."""


@dataclass(slots=True)
class _Local:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConversationLocks:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        lease: float = 30.0,
        poll_min: float = 0.005,
        poll_max: float = 0.2,
        logger: logging.Logger | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._lease_ms = int(lease * 1000)
        self._poll_min = poll_min
        self._poll_max = poll_max
        self._log = logger or logging.getLogger(__name__)
        self._local: dict[ConversationKey, _Local] = {}
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self.waiting = 0  # conversations' messages waiting for their turn, in this process

    async def is_held(self, conv: ConversationKey) -> bool:
        return bool(await self._redis.exists(self._keys.lock(conv)))

    @contextlib.asynccontextmanager
    async def hold(self, conv: ConversationKey, *, wait: float) -> AsyncIterator[None]:
        """Hold the conversation for the body; raise `LockTimeout` after `wait` seconds."""
        local = self._local.setdefault(conv, _Local())
        local.users += 1
        self.waiting += 1
        holds_local = False
        try:
            async with asyncio.timeout(wait):
                await local.lock.acquire()
                holds_local = True
                token = await self._acquire(self._keys.lock(conv))
        except BaseException as exc:
            if holds_local:
                local.lock.release()
            self._forget(conv, local)
            if isinstance(exc, TimeoutError):
                raise LockTimeout(str(conv)) from None
            raise
        finally:
            self.waiting -= 1
        renewer = asyncio.create_task(self._keep(self._keys.lock(conv), token))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await self._release(keys=[self._keys.lock(conv)], args=[token])
            except RedisError:
                self._log.warning("could not release lock of %s; it expires by itself", conv)
            local.lock.release()
            self._forget(conv, local)

    def _forget(self, conv: ConversationKey, local: _Local) -> None:
        local.users -= 1
        if local.users == 0:
            self._local.pop(conv, None)

    async def _acquire(self, key: str) -> str:
        token = secrets.token_hex(8)
        delay = self._poll_min
        while not await self._redis.set(key, token, nx=True, px=self._lease_ms):
            # the wait's time-out may have come while redis-py had the call, which then
            # swallows it (Python 3.11): without this the loop would poll on past it
            honour_cancellation()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_max)
        return token

    async def _keep(self, key: str, token: str) -> None:
        """Renew the lease at a third of its length while the body runs."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                if not await self._renew(keys=[key], args=[token, self._lease_ms]):
                    self._log.warning("lost the lock %s while holding it", key)
                    return
            except RedisError as exc:
                self._log.warning("could not renew lock %s: %s", key, exc)

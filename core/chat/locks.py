"""Per-conversation lock across processes, so one conversation is answered in order.

Two layers: an asyncio lock per conversation inside the process (waiters are
served first come, first served, without polling Redis), then a Redis lease
(`SET NX PX` with an owner token, renewed while held, released only by its
owner) that keeps replicas from interleaving one conversation. A second message
waits its turn; it is never dropped unless it waited longer than the bound.

One task renews all the leases a process holds, a script call per slot (one on a
single server) every third of a lease. A task per lease cost a Redis call each,
and a burst of answers took its leases at once, so their renewals came in a burst
too: 1,000 of them stalled the event loop for 50-200 ms every 5 s (measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient, honour_cancellation

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: leases; ARGV[1]: the lease in ms; ARGV[1 + i]: KEYS[i]'s owner token.
# Returns the positions (from 1) of the leases this owner no longer holds.
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

#: leases renewed by one script call at most: Redis runs a script alone, so a bound on
#: its length is a bound on how long it holds up every other client
_RENEW_BATCH = 500


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
        self._held: dict[str, str] = {}  # lease key → owner token, for every lease held here
        self._renewer: asyncio.Task[None] | None = None
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
        key = self._keys.lock(conv)
        self._held[key] = token
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._keep(), name="conversation-lease-renewer")
        try:
            yield
        finally:
            self._held.pop(key, None)  # the renewer drops a lease it found lost
            if not self._held and self._renewer is not None:
                self._renewer.cancel()
                self._renewer = None
            try:
                await self._release(keys=[key], args=[token])
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

    async def _keep(self) -> None:
        """Renew every lease held here at a third of its length, until none is held."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            for batch in self._batches():
                try:
                    lost = await self._renew(
                        keys=[key for key, _ in batch], args=[self._lease_ms, *(token for _, token in batch)]
                    )
                except RedisError as exc:
                    self._log.warning("could not renew %d conversation locks: %s", len(batch), exc)
                    continue
                for position in lost:
                    key, token = batch[int(position) - 1]
                    if self._held.get(key) == token:  # not released since the batch was made
                        self._log.warning("lost the lock %s while holding it", key)
                        del self._held[key]

    def _batches(self) -> list[list[tuple[str, str]]]:
        """The leases held now as (key, token), in groups one script call may renew: a
        cluster's script keeps its keys in one slot, and a group stays within `_RENEW_BATCH`."""
        cluster = self._redis if isinstance(self._redis, RedisCluster) else None
        groups: dict[int, list[tuple[str, str]]] = {}
        for key, token in self._held.items():
            groups.setdefault(0 if cluster is None else cluster.keyslot(key), []).append((key, token))
        return [
            group[start : start + _RENEW_BATCH]
            for group in groups.values()
            for start in range(0, len(group), _RENEW_BATCH)
        ]

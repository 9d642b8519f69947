"""A per-process bound on in-flight generations.

TGI answers "overloaded" beyond its `max_concurrent_requests`, and every
retry of an overloaded request only adds load. Waiting here, in order, for a
slot the server is known to have is cheaper and fairer; waiting too long turns
into `ModelBusy` so a user hears "busy" instead of nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from core.llm.errors import ModelBusy


def gate_limit(server_limit: int | None, cap: int | None) -> int:
    """min(server's max_concurrent_requests, configured cap), at least 1."""
    limits = [value for value in (server_limit, cap) if value is not None and value > 0]
    return max(1, min(limits)) if limits else 1


class ConcurrencyGate:
    """At most `limit` holders at once; first come, first served.

    A hand-rolled semaphore rather than `asyncio.Semaphore` + `wait_for`, so a
    slot handed to a waiter at the moment its timeout fires is passed on
    instead of leaked.
    """

    def __init__(self, limit: int, queue_timeout: float | None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.queue_timeout = queue_timeout
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self) -> None:
        """Take a slot, waiting at most `queue_timeout` seconds (else `ModelBusy`)."""
        if self._in_flight < self.limit and not self.waiting:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise ModelBusy(
                    f"no model slot free within {self.queue_timeout}s ({self.limit} requests in flight)"
                ) from None
            raise
        # release() handed its slot over: `_in_flight` already counts us

    def release(self) -> None:
        """Give a slot back, directly to the longest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if self._in_flight <= 0:
            raise RuntimeError("release() without acquire()")
        self._in_flight -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of an `async with`."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

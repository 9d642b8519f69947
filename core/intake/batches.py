"""Calls made while a round trip is under way go out together in the next one.

A gateway receiving a burst puts hundreds of events in at once, and a busy worker
finishes many; one round trip each would make Redis round trips, not Redis, the
limit (a redis-py call costs 0.1–0.2 ms of CPU). `Batches` sends the first call at
once and everything that arrives meanwhile together, when that one is back: no call
waits for a timer, and a quiet replica sends one call per round trip as before.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: sends a batch; a result per item, an exception for an item that failed
Send = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batches(Generic[T, R]):
    def __init__(self, send: Send[T, R]) -> None:
        self._send = send
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """`item`'s result, once its batch was sent; its exception, when it failed there."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._task is None or self._task.done():
            # a context of its own: it serves every caller, not the first one's request
            self._task = asyncio.create_task(
                self._run(), name="intake-batches", context=contextvars.Context()
            )
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Stop sending; calls still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _, future in self._waiting:
            future.cancel()
        self._waiting = []

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            try:
                results: Sequence[R | BaseException] = await self._send([item for item, _ in batch])
            except Exception as exc:  # the whole batch failed (the connection): each call says so
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

"""Stopping a conversation's in-flight generation, in whichever process runs it.

`/cancel` publishes the conversation key on a Redis channel; every process
listens and cancels its local generation task for that key, if it has one. A
request that arrives while the conversation's turn has begun but its generation
has not (the prompt is being built) is remembered, and stops that generation as
it starts: "Stopping the current answer" is then true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from redis.exceptions import RedisError

from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient, honour_cancellation, subscriber

#: conversations whose stop request found no generation, remembered at most
MAX_REMEMBERED = 1024


@dataclass(slots=True)
class Generation:
    """A running generation; `cancelled` tells a requested stop from other cancellation,
    `interrupted` a stop because the process is shutting down."""

    task: asyncio.Task[object]
    cancelled: bool = False
    interrupted: bool = False

    def cancel(self, *, shutdown: bool = False) -> None:
        if not self.task.done():
            self.cancelled = True
            self.interrupted = shutdown
            self.task.cancel()


class CancelBus:
    def __init__(self, redis: RedisClient, keys: Keys, *, logger: logging.Logger | None = None) -> None:
        self._redis = redis
        self._channel = keys.cancel_channel()
        self._log = logger or logging.getLogger(__name__)
        self._running: dict[str, Generation] = {}
        #: requests that found no generation here, by conversation: when they came
        self._requested: dict[str, float] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="herald-cancel-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    def interrupt_all(self) -> int:
        """Stop every generation of this process (shutdown); returns how many."""
        running = list(self._running.values())
        for generation in running:
            generation.cancel(shutdown=True)
        return len(running)

    @contextlib.contextmanager
    def track(
        self, conv: ConversationKey, task: asyncio.Task[object], *, since: float
    ) -> Iterator[Generation]:
        """Make `task` stoppable; a request made since `since` (the turn's start, on the
        loop's clock) that found no generation yet stops it at once."""
        generation = Generation(task)
        requested = self._requested.pop(str(conv), None)
        if requested is not None and requested >= since:
            generation.cancel()
        self._running[str(conv)] = generation
        try:
            yield generation
        finally:
            if self._running.get(str(conv)) is generation:
                del self._running[str(conv)]

    async def request(self, conv: ConversationKey) -> None:
        """Ask every process (this one included) to stop the conversation's generation."""
        self._cancel_local(str(conv))
        await self._redis.publish(self._channel, str(conv))

    def _cancel_local(self, key: str) -> None:
        generation = self._running.get(key)
        if generation is not None:
            generation.cancel()
            return
        now = asyncio.get_running_loop().time()
        if len(self._requested) >= MAX_REMEMBERED:  # forget the oldest half
            for old in sorted(self._requested, key=self._requested.__getitem__)[: MAX_REMEMBERED // 2]:
                del self._requested[old]
        self._requested[key] = now

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = None
            try:
                pubsub = await subscriber(self._redis)
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._cancel_local(str(message["data"]))
                    honour_cancellation()  # `stop`'s cancel, should the read have swallowed it
            except (RedisError, OSError) as exc:
                self._log.warning("cancel listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2

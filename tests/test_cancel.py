"""The cross-process cancel bus: it always stops, even when a cancel gets lost."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from core.chat.cancel import CancelBus
from core.storage.keys import Keys


class LosesCancels:
    """A real pub/sub whose reads answer "no message" when cancelled: a cancel lost inside
    a Redis read, as Python 3.11's `asyncio.wait_for` and timeouts can lose one when it
    lands as the read completes or times out."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pubsub, name)

    async def get_message(self, **options: Any) -> Any:
        try:
            return await self._pubsub.get_message(**options)
        except asyncio.CancelledError:
            self.lost += 1
            return None


class Client:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.pubsubs: list[LosesCancels] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pubsub(self, **options: Any) -> LosesCancels:
        self.pubsubs.append(LosesCancels(self._redis.pubsub(**options)))
        return self.pubsubs[-1]


async def test_stopping_ends_the_listener_even_if_its_cancel_is_lost(redis: Redis, prefix: str) -> None:
    client = Client(redis)
    bus = CancelBus(cast(Redis, client), Keys(prefix))
    await bus.start()
    await asyncio.wait_for(bus.stop(), timeout=10)  # unless the lost cancel is honoured: forever
    assert sum(p.lost for p in client.pubsubs) == 1

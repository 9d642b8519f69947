"""The per-conversation lock across processes (two clients stand for two replicas)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from core.chat.locks import ConversationLocks, LockTimeout
from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis

CONV = ConversationKey("test", "chat", None)


async def test_two_processes_never_overlap(redis: Redis, redis_url: str, prefix: str) -> None:
    other = connect_redis(redis_url)
    try:
        replicas = [ConversationLocks(redis, Keys(prefix)), ConversationLocks(other, Keys(prefix))]
        inside = 0
        most = 0
        order: list[int] = []

        async def work(i: int) -> None:
            nonlocal inside, most
            async with replicas[i % 2].hold(CONV, wait=10):
                inside += 1
                most = max(most, inside)
                order.append(i)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(work(i) for i in range(12)))
        assert most == 1
        assert sorted(order) == list(range(12))  # nobody was dropped
    finally:
        await other.aclose()


async def test_waiters_in_one_process_go_in_arrival_order(redis: Redis, prefix: str) -> None:
    locks = ConversationLocks(redis, Keys(prefix))
    order: list[int] = []

    async def work(i: int) -> None:
        async with locks.hold(CONV, wait=10):
            order.append(i)
            await asyncio.sleep(0.005)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(work(i)))
        await asyncio.sleep(0)  # arrive one after another
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_waiting_is_bounded(redis: Redis, prefix: str) -> None:
    locks = ConversationLocks(redis, Keys(prefix))
    async with locks.hold(CONV, wait=1):
        with pytest.raises(LockTimeout):
            async with locks.hold(CONV, wait=0.1):
                pass
    async with locks.hold(CONV, wait=1):  # usable again, nothing left behind
        assert await locks.is_held(CONV)
    assert not await locks.is_held(CONV)


async def test_lease_is_renewed_while_held(redis: Redis, redis_url: str, prefix: str) -> None:
    locks = ConversationLocks(redis, Keys(prefix), lease=0.3)
    other = connect_redis(redis_url)
    try:
        rival = ConversationLocks(other, Keys(prefix), lease=0.3)
        async with locks.hold(CONV, wait=1):
            await asyncio.sleep(0.8)  # more than two lease lengths
            with pytest.raises(LockTimeout):
                async with rival.hold(CONV, wait=0.2):
                    pass
    finally:
        await other.aclose()


async def test_release_only_by_owner(redis: Redis, prefix: str) -> None:
    locks = ConversationLocks(redis, Keys(prefix), lease=5)
    key = Keys(prefix).lock(CONV)
    async with locks.hold(CONV, wait=1):
        await redis.set(key, "someone-else")  # the lease expired and another process took it
    assert await redis.get(key) == "someone-else"

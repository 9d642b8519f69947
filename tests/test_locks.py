"""The per-conversation lock across processes (two clients stand for two replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from redis.asyncio import Redis

from core.chat.locks import ConversationLocks, LockTimeout
from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.support import eventually, leases_renewed

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


def renewers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "conversation-lease-renewer"]


async def test_one_task_renews_every_lease_held(redis: Redis, prefix: str) -> None:
    """A burst of answers holds many leases: they are renewed together, not each by its own task."""
    locks = ConversationLocks(redis, Keys(prefix), lease=1.5)
    convs = [ConversationKey("test", f"chat-{i}", None) for i in range(40)]
    keys = [Keys(prefix).lock(conv) for conv in convs]
    async with contextlib.AsyncExitStack() as stack:
        for conv in convs:
            await stack.enter_async_context(locks.hold(conv, wait=1))
        assert len(renewers()) == 1
        await leases_renewed(redis, keys, "every lease renewed")
    assert renewers() == []  # nothing held, nothing left running
    assert not any([await redis.exists(key) for key in keys])


async def test_a_lost_lease_is_told_once_and_the_others_stay_renewed(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    locks = ConversationLocks(redis, Keys(prefix), lease=1.5)
    lost, kept = ConversationKey("test", "lost", None), ConversationKey("test", "kept", None)
    lost_key, kept_key = Keys(prefix).lock(lost), Keys(prefix).lock(kept)
    caplog.set_level(logging.WARNING, logger="core.chat.locks")
    async with locks.hold(lost, wait=1), locks.hold(kept, wait=1):
        await redis.set(lost_key, "another-replica")  # its lease ran out and another took it

        async def told() -> bool:
            return any(
                "lost the lock" in r.getMessage() and lost_key in r.getMessage() for r in caplog.records
            )

        await eventually(told, "the lost lease reported")
        assert await redis.ttl(lost_key) == -1  # the other replica's lease is left alone
        renewals = [0, await redis.pttl(kept_key)]

        async def renewed_thrice() -> bool:
            """The kept lease goes on being renewed after the loss (its TTL rose 3 times)."""
            now = await redis.pttl(kept_key)
            renewals[0] += now > renewals[1]
            renewals[1] = now
            return renewals[0] >= 3

        await eventually(renewed_thrice, "the kept lease renewed")
        reports = [r for r in caplog.records if "lost the lock" in r.getMessage()]
        assert len(reports) == 1
    assert await redis.get(lost_key) == "another-replica"  # released only by its owner
    assert not await redis.exists(kept_key)

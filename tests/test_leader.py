"""The scheduler's leader lease: one leader among replicas, hand-over when it dies."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from core.posts.schedules.leader import LeaderLease
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis


async def test_only_one_replica_leads(redis: Redis, redis_url: str, prefix: str) -> None:
    other = connect_redis(redis_url)
    try:
        a, b = LeaderLease(redis, Keys(prefix)), LeaderLease(other, Keys(prefix))
        results = await asyncio.gather(a.try_acquire(), b.try_acquire())
        assert sorted(results) == [False, True]
        leader, follower = (a, b) if a.leading else (b, a)
        assert await leader.renew() and not await follower.renew()
        await leader.release()
        assert await follower.try_acquire()  # a clean hand-over is immediate
    finally:
        await other.aclose()


async def test_a_stopping_leader_hands_over(redis: Redis, redis_url: str, prefix: str) -> None:
    other = connect_redis(redis_url)
    events: list[str] = []
    try:
        first = LeaderLease(redis, Keys(prefix), ttl=0.3, poll=0.05)
        second = LeaderLease(other, Keys(prefix), ttl=0.3, poll=0.05)

        async def note(name: str) -> None:
            events.append(name)

        running = asyncio.create_task(first.run(lambda: note("first elected"), lambda: note("first deposed")))
        await asyncio.sleep(0.2)
        standby = asyncio.create_task(
            second.run(lambda: note("second elected"), lambda: note("second deposed"))
        )
        await asyncio.sleep(0.5)  # several lease lengths: the living leader keeps renewing
        assert events == ["first elected"]
        running.cancel()  # the first replica stops: it steps down and releases the lease
        await asyncio.gather(running, return_exceptions=True)
        async with asyncio.timeout(2):
            while "second elected" not in events:  # noqa: ASYNC110 - waiting for the hand-over
                await asyncio.sleep(0.02)
        assert events == ["first elected", "first deposed", "second elected"]
        standby.cancel()
        await asyncio.gather(standby, return_exceptions=True)
    finally:
        await other.aclose()


async def test_crashed_leader_lease_expires(redis: Redis, redis_url: str, prefix: str) -> None:
    other = connect_redis(redis_url)
    try:
        crashed = LeaderLease(redis, Keys(prefix), ttl=0.2)
        assert await crashed.try_acquire()  # ... and never renews or releases
        survivor = LeaderLease(other, Keys(prefix), ttl=0.2)
        assert not await survivor.try_acquire()
        await asyncio.sleep(0.3)
        assert await survivor.try_acquire()
        assert not await crashed.renew()  # the old leader learns it lost the lease
    finally:
        await other.aclose()

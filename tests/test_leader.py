"""The scheduler's leader lease: one leader among replicas, hand-over when it dies."""

from __future__ import annotations

import asyncio
import contextlib

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
        # a lease a renewal could miss only by stalling for 0.95 s, far beyond a busy machine's
        first = LeaderLease(redis, Keys(prefix), ttl=1.0, poll=0.05)
        second = LeaderLease(other, Keys(prefix), ttl=1.0, poll=0.05)

        async def note(name: str) -> None:
            events.append(name)

        running = asyncio.create_task(first.run(lambda: note("first elected"), lambda: note("first deposed")))
        async with asyncio.timeout(10):
            while "first elected" not in events:  # noqa: ASYNC110 - waiting for the election
                await asyncio.sleep(0.02)
        standby = asyncio.create_task(
            second.run(lambda: note("second elected"), lambda: note("second deposed"))
        )
        await asyncio.sleep(2.0)  # two lease lengths: the living leader keeps renewing
        assert events == ["first elected"]
        running.cancel()  # the first replica stops: it steps down and releases the lease
        await asyncio.gather(running, return_exceptions=True)
        async with asyncio.timeout(10):
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
        crashed = LeaderLease(redis, Keys(prefix), ttl=1.0)
        assert await crashed.try_acquire()  # ... and never renews or releases
        survivor = LeaderLease(other, Keys(prefix), ttl=1.0)
        assert not await survivor.try_acquire()
        async with asyncio.timeout(10):
            while not await survivor.try_acquire():  # noqa: ASYNC110 - until the lease runs out
                await asyncio.sleep(0.05)
        assert not await crashed.renew()  # the old leader learns it lost the lease
    finally:
        await other.aclose()


async def test_a_cancellation_swallowed_by_a_redis_call_still_stops_the_lease(
    redis: Redis, prefix: str
) -> None:
    """On Python 3.11, `asyncio.wait_for` (which redis-py sends every command through) returns
    the result instead of raising when the cancellation arrives as the send completes: the
    loop must stop all the same, or a stopping replica renews its lease for ever."""
    renewing = asyncio.Event()
    events: list[str] = []

    class SwallowingLease(LeaderLease):
        async def renew(self) -> bool:
            if not renewing.is_set():
                renewing.set()
                with contextlib.suppress(asyncio.CancelledError):  # swallowed, like wait_for does
                    await asyncio.Event().wait()
            return await super().renew()

    async def note(name: str) -> None:
        events.append(name)

    lease = SwallowingLease(redis, Keys(prefix), ttl=5.0, poll=0.02)
    running = asyncio.create_task(lease.run(lambda: note("elected"), lambda: note("deposed")))
    await asyncio.wait_for(renewing.wait(), 10)
    running.cancel()
    done, _ = await asyncio.wait({running}, timeout=10)  # a bound for a broken loop, not a pace
    assert running in done and running.cancelled(), "the lease ignored its cancellation"
    assert events == ["elected", "deposed"]
    assert not await redis.exists(Keys(prefix).scheduler_lease())  # released

"""A bot's overall limit shared by its processes, counted in a real Redis (a client per
process where it matters: each stands for a replica)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from core.pacing import PACED_SHARE, Rate
from core.pacing_share import RateShare, bot_tag
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.support import eventually

pytestmark = pytest.mark.timeout(30)

LIMIT = 30
PERIOD = 0.05
LAPSE = 0.4


def key(prefix: str, token: str = "123:abc") -> str:
    return Keys(prefix).rate_share("telegram", bot_tag(token))


def share_of(redis: Redis, prefix: str, **options: Any) -> RateShare:
    return RateShare(redis, key(prefix), LIMIT, period=PERIOD, lapse=LAPSE, **options)


async def paced_at(rate: Rate, processes: int) -> None:
    expected = LIMIT / processes * PACED_SHARE

    async def there() -> bool:
        return rate.per_second == pytest.approx(expected)

    await eventually(there, f"a rate of {expected} a second", timeout=10)


async def test_the_processes_of_one_bot_share_its_limit(redis: Redis, redis_url: str, prefix: str) -> None:
    clients = [redis, connect_redis(redis_url), connect_redis(redis_url)]
    shares = [share_of(client, prefix) for client in clients]
    rates = [Rate.within(LIMIT) for _ in shares]
    try:
        await shares[0].join(rates[0])
        assert rates[0].per_second == pytest.approx(LIMIT * PACED_SHARE)  # alone: all of it
        await shares[1].join(rates[1])
        assert rates[1].per_second == pytest.approx(LIMIT / 2 * PACED_SHARE)
        await paced_at(rates[0], 2)
        await shares[2].join(rates[2])
        for rate in rates:
            await paced_at(rate, 3)
        assert sum(rate.per_second for rate in rates) == pytest.approx(LIMIT * PACED_SHARE)
        assert sum(rate.burst for rate in rates) <= LIMIT
        await shares[2].leave()  # its share goes to the others at their next renewal
        for rate in rates[:2]:
            await paced_at(rate, 2)
        assert await redis.zcard(key(prefix)) == 2
    finally:
        for share in shares:
            await share.leave()
        for client in clients[1:]:
            await client.aclose()
    assert await redis.exists(key(prefix)) == 0


async def test_a_process_that_dies_lapses(redis: Redis, prefix: str) -> None:
    alive, dead = share_of(redis, prefix), share_of(redis, prefix)
    rate = Rate.within(LIMIT)
    await alive.join(rate)
    await dead.join(Rate.within(LIMIT))
    await paced_at(rate, 2)
    task = dead._task
    assert task is not None
    task.cancel()  # it stops renewing, and never says so
    try:
        await paced_at(rate, 1)
        assert await redis.zrange(key(prefix), 0, -1) == [alive.member]
    finally:
        await alive.leave()


async def test_a_joining_process_waits_a_period_while_others_are_present(redis: Redis, prefix: str) -> None:
    """The others shrink at their next renewal: a newcomer makes its first call after it,
    so the shares never add up to more than the limit. Alone, it starts at once."""
    waits: dict[str, list[float]] = {"first": [], "second": []}

    def sleeper(name: str) -> Callable[[float], Awaitable[None]]:
        async def sleep(seconds: float) -> None:
            waits[name].append(seconds)
            await asyncio.sleep(seconds)

        return sleep

    first = share_of(redis, prefix, sleep=sleeper("first"))
    second = share_of(redis, prefix, sleep=sleeper("second"))
    try:
        await first.join(Rate.within(LIMIT))
        first_waited = list(waits["first"])
        await second.join(Rate.within(LIMIT))
        second_waited = list(waits["second"])
    finally:
        await first.leave()
        await second.leave()
    assert first_waited == []  # alone: it joined without waiting
    assert second_waited == [PERIOD]  # the newcomer waited a renewal period
    assert second.present == 2


async def test_a_failed_renewal_keeps_the_share(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    share = share_of(redis, prefix)
    other = share_of(redis, prefix)
    rate = Rate.within(LIMIT)
    await share.join(rate)
    await other.join(Rate.within(LIMIT))
    await paced_at(rate, 2)
    await other.leave()
    caplog.set_level(logging.WARNING, logger="core.pacing_share")
    await redis.delete(key(prefix))
    await redis.set(key(prefix), "not a sorted set")  # every renewal fails (WRONGTYPE)

    async def warned() -> bool:
        return any("could not renew" in r.getMessage() for r in caplog.records)

    try:
        await eventually(warned, "a failed renewal told")
        assert rate.per_second == pytest.approx(LIMIT / 2 * PACED_SHARE)  # kept, not reset
        await redis.delete(key(prefix))  # Redis answers again: the count goes on
        await paced_at(rate, 1)
    finally:
        await share.leave()


async def test_bots_with_other_tokens_do_not_share(redis: Redis, prefix: str) -> None:
    ours = RateShare(redis, key(prefix, "123:abc"), LIMIT, period=PERIOD, lapse=LAPSE)
    theirs = RateShare(redis, key(prefix, "456:def"), LIMIT, period=PERIOD, lapse=LAPSE)
    rate = Rate.within(LIMIT)
    try:
        await ours.join(rate)
        await theirs.join(Rate.within(LIMIT))
        assert ours.present == theirs.present == 1
        assert rate.per_second == pytest.approx(LIMIT * PACED_SHARE)
    finally:
        await ours.leave()
        await theirs.leave()
    assert "123:abc" not in key(prefix, "123:abc")  # a key never holds the token


def test_a_resized_rate_keeps_what_was_spent() -> None:
    now = [0.0]
    rate = Rate.within(LIMIT, clock=lambda: now[0])
    for _ in range(20):
        rate.spend()
    rate.resize(LIMIT / 3)  # a burst of 9 now: 7 tokens were left, and stay 7
    assert rate.burst == 9
    assert rate.wait() == 0.0
    for _ in range(7):
        rate.spend()
    assert rate.wait() == pytest.approx(1 / (LIMIT / 3 * PACED_SHARE))
    rate.resize(LIMIT)  # more a second, and the tokens refill to the larger burst over time
    assert rate.wait() == pytest.approx(1 / (LIMIT * PACED_SHARE))
    now[0] += 10
    assert rate.wait(keep=rate.burst - 1) == 0.0

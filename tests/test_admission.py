"""Duplicates, the token-bucket rate limit and the daily quota, in Lua on a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from core.chat.admission import Admitter, Limits, Verdict
from core.storage.keys import Keys


def admitter(redis: Redis, prefix: str, **kw: float) -> Admitter:
    limits = Limits(
        rate_per_minute=kw.get("rate", 60.0),
        burst=int(kw.get("burst", 3)),
        daily_tokens=int(kw.get("quota", 0)),
    )
    return Admitter(redis, Keys(prefix), limits)


async def test_duplicate_event_ids_are_refused(redis: Redis, prefix: str) -> None:
    adm = admitter(redis, prefix)
    first = await adm.admit("test", "evt-1", "u", limited=True)
    again = await adm.admit("test", "evt-1", "u", limited=True)
    other_platform = await adm.admit("other", "evt-1", "u", limited=True)
    assert first.verdict is Verdict.ADMITTED
    assert again.verdict is Verdict.DUPLICATE
    assert other_platform.verdict is Verdict.ADMITTED


async def test_bucket_allows_burst_then_refuses_with_wait(redis: Redis, prefix: str) -> None:
    adm = admitter(redis, prefix, rate=60.0, burst=3)
    verdicts = [(await adm.admit("test", f"e{i}", "u", limited=True)) for i in range(4)]
    assert [v.verdict for v in verdicts] == [Verdict.ADMITTED] * 3 + [Verdict.RATE_LIMITED]
    assert 0.5 < verdicts[-1].retry_after <= 1.0
    unlimited = await adm.admit("test", "e-free", "u", limited=False)
    assert unlimited.verdict is Verdict.ADMITTED
    other_user = await adm.admit("test", "e-other", "v", limited=True)
    assert other_user.verdict is Verdict.ADMITTED


async def test_bucket_refills_over_time(redis: Redis, prefix: str) -> None:
    adm = admitter(redis, prefix, rate=1200.0, burst=1)  # 20 per second
    assert (await adm.admit("test", "a", "u", limited=True)).verdict is Verdict.ADMITTED
    refused = await adm.admit("test", "b", "u", limited=True)
    assert refused.verdict is Verdict.RATE_LIMITED
    await asyncio.sleep(refused.retry_after + 0.02)
    assert (await adm.admit("test", "c", "u", limited=True)).verdict is Verdict.ADMITTED


async def test_bucket_is_atomic_under_concurrency(redis: Redis, prefix: str) -> None:
    adm = admitter(redis, prefix, rate=0.001, burst=5)
    results = await asyncio.gather(*(adm.admit("test", f"e{i}", "u", limited=True) for i in range(40)))
    assert sum(r.verdict is Verdict.ADMITTED for r in results) == 5


async def test_daily_quota(redis: Redis, prefix: str) -> None:
    adm = admitter(redis, prefix, rate=6000.0, burst=100, quota=100)
    assert (await adm.admit("test", "a", "u", limited=True)).verdict is Verdict.ADMITTED
    assert await adm.charge("test", "u", 60) == 60
    assert (await adm.admit("test", "b", "u", limited=True)).verdict is Verdict.ADMITTED
    assert await adm.charge("test", "u", 60) == 120
    over = await adm.admit("test", "c", "u", limited=True)
    assert over.verdict is Verdict.OVER_QUOTA
    assert 0 < over.retry_after <= 86400
    assert (await adm.admit("test", "d", "v", limited=True)).verdict is Verdict.ADMITTED
    assert (await adm.admit("test", "e", "u", limited=False)).verdict is Verdict.ADMITTED

"""The intake across a Redis restart (append-only file on, as the embedded server and
the deploy files run it): every event the intake said it kept is still there after,
and the workers' group with it. A private server of its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.exceptions import RedisError

from bots.redis_server import RedisServerProcess, free_port
from core.intake.stream import IntakeStream
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.support import eventually

PLATFORM = "test"


async def test_no_kept_event_is_lost_when_redis_restarts_under_load(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "redis"
    server = await asyncio.to_thread(RedisServerProcess(data_dir=data, port=port).start)
    redis = connect_redis(server.url)
    keys = Keys("durable")
    gateway = IntakeStream(redis, keys, consumer="gateway")
    worker = IntakeStream(redis, keys, consumer="worker")
    await worker.prepare([PLATFORM])
    kept: list[str] = []
    restarted = asyncio.Event()

    async def steady_load() -> None:
        """Like a webhook: an event not kept is answered 503 and delivered again. Runs
        until the server is back, and then some."""
        number = after = 0
        while after < 100:
            event_id = f"ev{number}"
            try:
                await gateway.put(PLATFORM, event_id, {"n": number}, take=False)
            except RedisError:
                await asyncio.sleep(0.05)
                continue
            kept.append(event_id)  # kept now, or by an earlier try whose answer was lost
            number += 1
            after += restarted.is_set()

    try:
        load = asyncio.create_task(steady_load())
        await eventually(lambda: _true(len(kept) >= 200), "load under way")
        before = len(kept)
        await asyncio.to_thread(server.stop)
        server = await asyncio.to_thread(RedisServerProcess(data_dir=data, port=port).start)
        restarted.set()
        await asyncio.wait_for(load, 120)
        assert before >= 200 and len(kept) >= before + 100

        read: list[str] = []

        async def all_read() -> bool:
            read.extend(entry.event_id for entry in await worker.read(PLATFORM, 500, 0.05))
            return len(read) >= len(kept)

        await eventually(all_read, "every kept event read back")
        assert sorted(read) == sorted(kept)  # each once: none lost, none doubled
    finally:
        await redis.aclose()
        await asyncio.to_thread(server.stop)


async def _true(value: bool) -> bool:
    return value

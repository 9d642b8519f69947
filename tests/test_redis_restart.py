"""Redis going away and coming back under a running engine (a private server of its own)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bots.redis_server import RedisServerProcess, free_port
from bots.runtime import build_engine, build_llm
from core.chat.engine import Outcome
from core.config import load_settings
from core.storage.redis_client import connect_redis
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event


async def test_engine_survives_a_redis_restart(tmp_path: Path, tgi: TGIEmulator) -> None:
    port = free_port()
    data = tmp_path / "redis"
    server = await asyncio.to_thread(RedisServerProcess(data_dir=data, port=port).start)
    settings = load_settings(env_file=None, tgi_url=tgi.url, redis_url=server.url)
    redis = connect_redis(server.url)
    llm = build_llm(settings)
    await llm.start()
    engine = build_engine(settings, redis, llm)
    await engine.cancels.start()
    try:
        first = RecordingSurface()
        assert await engine.handle(event("my name is Eve"), first) is Outcome.ANSWERED

        await asyncio.to_thread(server.stop)
        down = RecordingSurface()
        assert await engine.handle(event("hello?"), down) is Outcome.FAILED
        assert down.texts == ["My memory store is unavailable right now — try again in a minute."]

        server = await asyncio.to_thread(RedisServerProcess(data_dir=data, port=port).start)
        back = RecordingSurface()
        assert await engine.handle(event("what is my name?"), back) is Outcome.ANSWERED
        assert back.last == "Your name is Eve."  # memory was on disk and the client reconnected
    finally:
        await engine.cancels.stop()
        await llm.close()
        await redis.aclose()
        await asyncio.to_thread(server.stop)

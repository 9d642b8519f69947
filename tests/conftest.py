"""Shared fixtures: a real Redis server, the TGI emulator, and a wired engine.

Redis: the suite starts a private server on a free port, the same way as the
embedded default, unless HERALD_TEST_REDIS_URL names one. Each test works
under its own key prefix and deletes only its own keys: a server the suite did
not start is never flushed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from bots.redis_server import RedisServerProcess
from bots.runtime import build_engine, build_llm
from core.chat.engine import Engine
from core.config import Settings, load_settings
from core.llm.metered import MeteredLLM
from core.metrics import Metrics
from core.storage.redis_client import connect_redis
from tests.emulators.tgi import TGIEmulator


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("HERALD_TEST_REDIS_URL")
    if given:
        yield given
        return
    with RedisServerProcess() as server:
        yield server.url


@pytest.fixture
def prefix() -> str:
    return f"herald-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = connect_redis(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def tgi() -> AsyncIterator[TGIEmulator]:
    async with TGIEmulator() as emulator:
        yield emulator


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(redis_url: str, prefix: str, tgi: TGIEmulator) -> SettingsFactory:
    """Settings for a test: the emulator, the test Redis and prefix, no .env file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "tgi_url": tgi.url,
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "llm_idle_timeout": 2.0,
            "llm_connect_timeout": 1.0,
            # limits are tested on purpose; elsewhere they would only get in the way
            "rate_limit_burst": 10_000,
            "rate_limit_per_minute": 60_000,
        }
        values.update(overrides)
        return load_settings(env_file=None, **values)

    return make


EngineFactory = Callable[..., Any]


@pytest.fixture
async def make_engine(make_settings: SettingsFactory, redis: Redis) -> AsyncIterator[EngineFactory]:
    """Engines wired exactly like `herald` does, each with its own Redis connections
    (as separate replicas would have), all closed at the end of the test."""
    started: list[tuple[Engine, Any, Redis]] = []

    async def make(**overrides: Any) -> Engine:
        settings = make_settings(**overrides)
        client = connect_redis(settings.redis_url or "")
        metrics = Metrics()
        llm = MeteredLLM(build_llm(settings), metrics)
        await llm.start()
        engine = build_engine(settings, client, llm, metrics=metrics)
        await engine.cancels.start()
        started.append((engine, llm, client))
        return engine

    yield make
    for engine, llm, client in started:
        await engine.cancels.stop()
        await llm.close()
        await client.aclose()

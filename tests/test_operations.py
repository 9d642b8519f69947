"""Operations, tested against a real `herald run` process: /healthz, /readyz with each
dependency down in turn, /metrics moving for a real exchange through the Telegram
emulator, JSON logs without secrets or message bodies, and SIGTERM during a
streamed answer (finished within the grace period, or marked interrupted after
it; exit 0; lock and lease released)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bots.redis_server import RedisServerProcess, free_port
from core.storage.keys import Keys
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator

pytestmark = pytest.mark.timeout(90)

ADA = {"id": 901, "is_bot": False, "first_name": "Ada"}
ANSWER = "Streaming works: " + " ".join(f"word{i}" for i in range(40)) + "."

Spawn = Callable[..., Awaitable["Herald"]]


class Herald:
    """A `herald run` child process and its HTTP address."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.log = log

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as response:
            return response.status, await response.text()

    async def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = await self.get("/readyz")
        return status, json.loads(body)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = await self.get("/metrics")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


async def until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    for _ in range(int(within / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {within} s")


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator() as emulator:
        yield emulator


@pytest.fixture
async def spawn(
    tmp_path: Path, telegram: TelegramEmulator, tgi: TGIEmulator, redis_url: str, prefix: str
) -> AsyncIterator[Spawn]:
    started: list[asyncio.subprocess.Process] = []

    async def start(**env: str) -> Herald:
        port = free_port()
        values = {
            "HERALD_TELEGRAM_TOKEN": telegram.token,
            "HERALD_TELEGRAM_API_URL": telegram.url,
            "HERALD_TGI_URL": tgi.url,
            "HERALD_REDIS_URL": redis_url,
            "HERALD_REDIS_PREFIX": prefix,
            "HERALD_HTTP_ADDR": f"127.0.0.1:{port}",
            "HERALD_LOG_FORMAT": "json",
            "HERALD_RATE_LIMIT_BURST": "1000",
        } | env
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        log = tmp_path / f"herald-{len(started)}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bots",
                "run",
                cwd=tmp_path,  # no .env here
                env=clean | values,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(proc)
        herald = Herald(proc, port, log)

        async def serving() -> bool:
            assert proc.returncode is None, log.read_text()
            try:
                return (await herald.ready())[0] == 200
            except aiohttp.ClientError:
                return False

        await until(serving, 30)
        return herald

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_health_readiness_metrics_and_logs(
    spawn: Spawn, telegram: TelegramEmulator, tgi: TGIEmulator, prefix: str, tmp_path: Path
) -> None:
    server = RedisServerProcess(data_dir=tmp_path / "redis")
    await asyncio.to_thread(server.start)
    try:
        herald = await spawn(HERALD_REDIS_URL=server.url)
        assert await herald.get("/healthz") == (200, '{"status": "ok"}')
        status, body = await herald.ready()
        assert (status, body) == (
            200,
            {"ready": True, "checks": {"redis": "ok", "model": "ok", "telegram": "ok", "scheduler": "ok"}},
        )

        before = await herald.metrics()
        answered = ("herald_events_total", (("outcome", "answered"), ("platform", "telegram")))
        assert before.get(answered, 0) == 0
        tgi.responder = lambda m: ANSWER
        chat = telegram.private_chat(ADA["id"])
        telegram.send_user_message(chat, ADA, "hello there, Herald")
        await telegram.wait_until(lambda: any(m.text == ANSWER for m in telegram.messages_in(ADA["id"])))

        async def counted() -> bool:
            return (await herald.metrics()).get(answered) == 1

        await until(counted)
        after = await herald.metrics()
        by_platform = (("platform", "telegram"),)
        assert after[("herald_events_received_total", by_platform)] == 1
        assert after[("herald_tokens_total", (("direction", "out"),))] > 0
        assert after[("herald_tokens_total", (("direction", "in"),))] > 0
        assert after[("herald_time_to_first_token_seconds_count", by_platform)] == 1
        assert after[("herald_time_to_first_output_seconds_count", by_platform)] == 1
        assert after[("herald_answer_seconds_count", by_platform)] == 1
        assert after[("herald_generations_in_flight", ())] == 0
        assert after[("herald_scheduler_leader", ())] == 1  # the only replica leads
        assert after[("herald_posts", (("state", "published"),))] == 0

        # each dependency down in turn: 503, naming it and only it
        tgi.healthy = False
        status, body = await herald.ready()
        assert status == 503 and body["checks"] == {
            "redis": "ok",
            "model": "not ready",
            "telegram": "ok",
            "scheduler": "ok",
        }
        tgi.healthy = True
        assert (await herald.ready())[0] == 200

        telegram.fail_next("getMe", 502, "Bad Gateway")
        status, body = await herald.ready()
        assert status == 503 and body["checks"]["telegram"].startswith("failed")
        assert body["checks"]["redis"] == body["checks"]["model"] == "ok"
        assert (await herald.ready())[0] == 200

        await asyncio.to_thread(server.stop)
        status, body = await herald.ready()
        assert status == 503 and body["checks"]["redis"].startswith(("failed", "no answer"))
        assert body["checks"]["model"] == body["checks"]["telegram"] == "ok"
        assert (await herald.get("/healthz"))[0] == 200  # alive all the same
        await asyncio.to_thread(server.start)

        async def recovered() -> bool:
            return (await herald.ready())[0] == 200

        await until(recovered)
    finally:
        await asyncio.to_thread(server.stop)

    records = [json.loads(line) for line in herald.log_lines()]  # every line is JSON
    events = [r for r in records if r.get("event_id") and r.get("outcome") == "answered"]
    assert len(events) == 1 and events[0]["platform"] == "telegram"
    assert events[0]["conversation"] == f"telegram:{ADA['id']}:-" and events[0]["level"] == "INFO"
    text = herald.log.read_text()
    assert telegram.token not in text and telegram.token.split(":")[1] not in text
    assert "hello there" not in text and "word39" not in text  # no message bodies


async def locks_and_lease(redis: Redis, prefix: str) -> list[bytes]:
    keys = Keys(prefix)
    found = [key async for key in redis.scan_iter(match=f"{prefix}:lock:*")]
    return found + ([keys.scheduler_lease().encode()] if await redis.exists(keys.scheduler_lease()) else [])


@pytest.mark.parametrize("grace", [20.0, 0.5])
async def test_sigterm_during_a_streamed_answer(
    spawn: Spawn, telegram: TelegramEmulator, tgi: TGIEmulator, redis: Redis, prefix: str, grace: float
) -> None:
    herald = await spawn(HERALD_SHUTDOWN_GRACE_SECONDS=str(grace))
    tgi.responder = lambda m: ANSWER
    tgi.token_delay = 0.05  # a few seconds of streaming
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "tell me something long")
    await telegram.wait_until(lambda: bool(telegram.messages_in(ADA["id"])), 20)  # streaming has begun

    held = await locks_and_lease(redis, prefix)
    assert len(held) == 2, held  # the conversation's lock and the scheduler's lease
    herald.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await herald.proc.wait()
    assert code == 0, herald.log.read_text()
    final = telegram.messages_in(ADA["id"])[-1].text
    if grace > 5:
        assert final == ANSWER  # the answer in flight finished
    else:
        assert final.startswith("Streaming works:") and final != ANSWER
        assert final.endswith("⚠️ Answer interrupted: Herald is restarting — try again in a moment.")
    assert await locks_and_lease(redis, prefix) == []


async def test_a_replica_without_the_scheduler_never_leads(spawn: Spawn, redis: Redis, prefix: str) -> None:
    """HERALD_SCHEDULER=false, e.g. the Discord gateway pods: the lease stays free for others."""
    herald = await spawn(HERALD_SCHEDULER="false")
    await asyncio.sleep(1.0)  # a scheduler would have taken the free lease within milliseconds
    assert (await herald.metrics())[("herald_scheduler_leader", ())] == 0
    assert not await redis.exists(Keys(prefix).scheduler_lease())

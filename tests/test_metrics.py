"""Metrics that need a failure to move: model-server errors by type, platform errors
and rate-limit waits (the happy path is measured against a running `herald run` in
test_operations.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from bots.runtime import build_engine, build_llm
from core.chat.engine import Engine, Outcome
from core.llm.metered import MeteredLLM
from core.metrics import Metrics
from core.platform import Button, MessageRef, PlatformRateLimited
from core.storage.redis_client import connect_redis
from tests.conftest import SettingsFactory
from tests.emulators.tgi import Fault, TGIEmulator
from tests.support import RecordingSurface, event


@dataclass
class SlowDownOnce(RecordingSurface):
    """A platform that asks for a pause on the first send."""

    asked: bool = False

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        if not self.asked:
            self.asked = True
            raise PlatformRateLimited(0.2)
        return await super().send(text, reply_to, buttons)


@pytest.fixture
async def metered(make_settings: SettingsFactory) -> AsyncIterator[tuple[Engine, Metrics]]:
    """Wired as `herald run` wires it: one `Metrics` for the engine and the model client."""
    settings = make_settings()
    metrics = Metrics()
    llm = MeteredLLM(build_llm(settings), metrics)
    await llm.start()
    redis = connect_redis(settings.redis_url or "")
    try:
        yield build_engine(settings, redis, llm, metrics=metrics), metrics
    finally:
        await llm.close()
        await redis.aclose()


async def test_model_errors_are_counted_by_type(metered: tuple[Engine, Metrics], tgi: TGIEmulator) -> None:
    engine, metrics = metered
    tgi.inject(Fault(kind="http_status", status=424, error_type="generation"), times=5)
    assert await engine.handle(event("hello"), RecordingSurface()) is Outcome.FAILED
    value = metrics.registry.get_sample_value
    assert value("herald_model_errors_total", {"type": "GenerationFailed"}) == 1
    assert value("herald_events_total", {"platform": "test", "outcome": "failed"}) == 1
    assert value("herald_tokens_total", {"direction": "out"}) is None  # nothing was generated


async def test_platform_rate_limits_are_counted_and_waited(
    metered: tuple[Engine, Metrics], tgi: TGIEmulator
) -> None:
    engine, metrics = metered
    tgi.responder = lambda m: "All good."
    surface = SlowDownOnce()
    assert await engine.handle(event("hello"), surface) is Outcome.ANSWERED
    assert surface.last == "All good."
    value = metrics.registry.get_sample_value
    assert value("herald_platform_errors_total", {"platform": "test", "kind": "rate_limited"}) == 1
    assert value("herald_platform_rate_limit_wait_seconds_total", {"platform": "test"}) == pytest.approx(0.2)
    assert value("herald_time_to_first_output_seconds_count", {"platform": "test"}) == 1
    assert value("herald_time_to_first_output_seconds_sum", {"platform": "test"}) >= 0.2  # waited first
    assert value("herald_tokens_total", {"direction": "out"}) >= 3  # as the server counted them

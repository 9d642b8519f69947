"""The process's event loop: which one `herald run` gets, and its lag in the metrics."""

from __future__ import annotations

import asyncio
import time

import uvloop

from bots.event_loop import loop_factory, watch_loop_lag
from core.metrics import Metrics


def test_uvloop_unless_asyncio_is_asked_for() -> None:
    for kind, expected in (("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = loop_factory(kind)()  # type: ignore[arg-type]
        try:
            assert isinstance(loop, expected)
            assert kind == "uvloop" or not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


async def test_a_stalled_event_loop_shows_in_the_lag_histogram() -> None:
    """The loop is blocked for 0.2 s: the timer due meanwhile fires at least that late."""
    metrics = Metrics()
    sampled, stalled = asyncio.Event(), asyncio.Event()

    def observe(lag: float) -> None:
        metrics.loop_lag.observe(lag)
        sampled.set()
        if lag >= 0.18:
            stalled.set()

    watcher = asyncio.create_task(watch_loop_lag(observe, interval=0.01))
    await sampled.wait()
    time.sleep(0.2)  # noqa: ASYNC251 - the point: a stall, CPU-bound work on the loop
    await asyncio.wait_for(stalled.wait(), timeout=30)
    watcher.cancel()
    sample = metrics.registry.get_sample_value
    total = sample("herald_event_loop_lag_seconds_count")
    under = sample("herald_event_loop_lag_seconds_bucket", {"le": "0.1"})
    assert total is not None and under is not None and total - under >= 1  # the stall, over 0.1 s
    assert "herald_event_loop_lag_seconds" in metrics.render().decode()

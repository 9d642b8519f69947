"""Helpers shared by the model-client tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from core.llm import Finished, StreamEvent, TextDelta


def client_options(logger: str, **overrides: Any) -> dict[str, Any]:
    """Test-sized timeouts and backoff for either backend (override any option)."""
    options: dict[str, Any] = {
        "connect_timeout": 0.5,
        "idle_timeout": 2.0,
        "backoff": 0.01,
        "max_backoff": 0.02,
        "logger": logging.getLogger(logger),
    }
    options.update(overrides)
    return options


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[list[str], Finished | None]:
    """The deltas of a stream and its final event."""
    deltas: list[str] = []
    finished: Finished | None = None
    async for event in events:
        if isinstance(event, Finished):
            finished = event
        else:
            assert isinstance(event, TextDelta)
            deltas.append(event.text)
    return deltas, finished


async def drain_until_error(events: AsyncIterator[StreamEvent], deltas: list[str]) -> None:
    """Read a stream expected to fail, keeping the deltas that came before the error."""
    async for event in events:
        if isinstance(event, TextDelta):
            deltas.append(event.text)

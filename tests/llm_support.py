"""Helpers shared by the model-client tests."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from core.llm import Finished, StreamEvent, TextDelta, TransportOptions


def client_options(logger: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for either backend: test-sized timeouts and backoff.

    Overrides naming a `TransportOptions` field go into `options`; the rest
    (`max_concurrency`, `model`, …) are passed to the backend as they are.
    """
    shared = {name: overrides.pop(name) for name in _SHARED & overrides.keys()}
    options = TransportOptions(
        **{"connect_timeout": 0.5, "idle_timeout": 2.0, "backoff": 0.01, "max_backoff": 0.02, **shared}
    )
    return {"options": options, "logger": logging.getLogger(logger), **overrides}


_SHARED = frozenset(field.name for field in dataclasses.fields(TransportOptions))


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

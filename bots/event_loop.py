"""The process's event loop: which one runs it, and how late it runs what is ready.

uvloop (libuv's loop) where installed, asyncio's own otherwise or when asked
(`HERALD_EVENT_LOOP=asyncio`). Lag is every answer's, edit's and heartbeat's wait:
a timer is set for `INTERVAL` and the lateness of its firing recorded
(`herald_event_loop_lag_seconds`); a loop stalled by CPU-bound work or a long
garbage collection shows there first.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Literal

#: seconds between lag samples: cheap enough to leave on, often enough to catch a stall
INTERVAL = 0.25

_log = logging.getLogger("herald")


def loop_factory(kind: Literal["uvloop", "asyncio"]) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the loop `herald run` runs on; asyncio's where uvloop is missing."""
    if kind == "uvloop":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            _log.warning("uvloop is not installed: running on asyncio's event loop")
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


async def watch_loop_lag(observe: Callable[[float], None], interval: float = INTERVAL) -> None:
    """Record the loop's lag every `interval` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))

"""Run n3d1117/chatgpt-telegram-bot (the anchor) against the Bot API emulator, with a loop-lag probe.

Run with the anchor's own interpreter (its virtualenv), never Herald's:

    /work/anchors/ctb-venv/bin/python bench/telegram_anchor_launcher.py \
        --checkout /work/anchors/chatgpt-telegram-bot --api-url http://127.0.0.1:PORT \
        --probe-file /tmp/x/anchor.lag [--workdir /tmp/x]

Nothing of the anchor is copied: its `bot/` folder goes on `sys.path` and its `bot/main.py`
runs as `__main__`, unchanged, with its configuration from the environment (the bench
writes it). Two things are patched before its code runs, both from the outside:

* python-telegram-bot's `ApplicationBuilder.build` first sets `base_url` and
  `base_file_url` to the emulator (`--api-url`), as `ApplicationBuilder().base_url(...)`
  would; the anchor's builder chain is otherwise its own.
* the loop-lag probe (`install_probe`) starts on the first event loop that runs.

This module uses the standard library only: it runs under the anchor's interpreter, and
`bench.herald_telegram_launcher` imports `install_probe` from it for Herald's process.

The probe is a task that sleeps 10 ms and records how late it woke, with the monotonic
time it went to sleep (CLOCK_MONOTONIC is system-wide, so the bench compares those times
with its own). Samples are appended to the probe file as native doubles, pairs of
(start, lag), every second and at exit.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import atexit
import os
import runpy
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

PROBE_PERIOD = 0.010
FLUSH_EVERY = 1.0


class LoopLagProbe:
    """Samples of (monotonic start, lag seconds), flushed to `path` as native doubles."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples = array.array("d")
        # loops by identity, not id() (a short-lived loop closed before the main one may
        # leave its id() to it), held strongly (uvloop's loops take no weak references)
        self._started: list[asyncio.AbstractEventLoop] = []
        self._tasks: list[asyncio.Task[None]] = []
        path.write_bytes(b"")

    def flush(self) -> None:
        if not self.samples:
            return
        with self.path.open("ab") as out:
            self.samples.tofile(out)
        self.samples = array.array("d")

    async def run(self) -> None:
        monotonic = time.monotonic
        last_flush = monotonic()
        while True:
            start = monotonic()
            await asyncio.sleep(PROBE_PERIOD)
            woke = monotonic()
            self.samples.append(start)
            self.samples.append(woke - start - PROBE_PERIOD)
            if woke - last_flush >= FLUSH_EVERY:
                last_flush = woke
                self.flush()

    def start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        if any(seen is loop for seen in self._started):
            return
        self._started.append(loop)
        task = loop.create_task(self.run(), name="loop-lag-probe")
        # The loop may be closed with the probe still pending (python-telegram-bot closes
        # its loop without cancelling what is left): that is expected, not worth a log line.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._tasks.append(task)


def install_probe(path: Path) -> LoopLagProbe:
    """Start the probe on every event loop when it first runs; flush at exit.

    asyncio's own loops all run through `BaseEventLoop.run_forever` (asyncio.run,
    run_until_complete as python-telegram-bot calls it); a loop of another kind (uvloop,
    which Herald runs on where installed) is reached through `asyncio.Runner.run`, whose
    main coroutine starts the probe first."""
    probe = LoopLagProbe(path)
    original_forever = asyncio.base_events.BaseEventLoop.run_forever
    original_run = asyncio.runners.Runner.run

    def run_forever(self: asyncio.base_events.BaseEventLoop) -> None:
        probe.start_on(self)
        original_forever(self)

    async def probed(coro: Coroutine[Any, Any, Any]) -> Any:
        probe.start_on(asyncio.get_running_loop())
        return await coro

    def run(self: asyncio.Runner, coro: Coroutine[Any, Any, Any], *, context: Any = None) -> Any:
        return original_run(self, probed(coro), context=context)

    asyncio.base_events.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign]
    asyncio.runners.Runner.run = run  # type: ignore[method-assign]
    atexit.register(probe.flush)
    return probe


def read_probe(path: Path) -> list[tuple[float, float]]:
    """The (start, lag) pairs a probe wrote."""
    values = array.array("d")
    data = path.read_bytes() if path.exists() else b""
    values.frombytes(data[: len(data) // 16 * 16])
    return list(zip(values[0::2], values[1::2], strict=True))


def _point_ptb_at(api_url: str) -> None:
    from telegram.ext import ApplicationBuilder  # the anchor's interpreter has it

    original = ApplicationBuilder.build

    def build(self: Any) -> Any:
        self.base_url(f"{api_url}/bot")
        self.base_file_url(f"{api_url}/file/bot")
        return original(self)

    ApplicationBuilder.build = build  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checkout", type=Path, required=True, help="the anchor's checkout (bot/main.py)")
    parser.add_argument("--api-url", required=True, help="the Bot API emulator, http://127.0.0.1:PORT")
    parser.add_argument("--probe-file", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=None, help="cwd: its usage_logs go there")
    args = parser.parse_args(argv)
    bot_dir = args.checkout.resolve() / "bot"
    if args.workdir is not None:
        os.chdir(args.workdir)
    install_probe(args.probe_file)
    _point_ptb_at(args.api_url.rstrip("/"))
    sys.path.insert(0, str(bot_dir))
    sys.argv = [str(bot_dir / "main.py")]
    runpy.run_path(str(bot_dir / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()

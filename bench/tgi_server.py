"""The TGI emulator as benchmarks need it: `python -m bench.tgi_server --port N`.

The same `tests.emulators.tgi.TGIEmulator`, streaming instantly by default, minus
two things a test server wants and a stand-in for a model server must not have: it
keeps no record of the requests (the tests' server keeps every one for assertions,
so over a long run its heap and its garbage-collection pauses grow, and show up as
model-server time in the measurements), and its start-up objects are frozen out of
the garbage collector.

`--token-delay` and `--slots` make it a model server with a fixed capacity, for
benchmarks where the model is the limit (`bench.intake_workers`): at most `slots`
requests generate at once, one token per `token_delay` seconds each, and the rest
of the `--max-concurrent-requests` admitted wait in order, as TGI's router queues
what its batch has no room for (the emulator alone refuses beyond its limit, with
no queue). A slot's speed does not depend on how many are busy: a fixed ceiling of
`slots / (tokens per answer × token_delay)` answers per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

from tests.emulators.tgi import TGIEmulator


class SlottedEmulator(TGIEmulator):
    """The emulator with `slots` generating at once and the other admitted requests queued."""

    def __init__(self, *, slots: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._slots = asyncio.Semaphore(slots) if slots else None

    async def _stream(self, *args: Any, **kwargs: Any) -> None:
        async with self._slot():
            await super()._stream(*args, **kwargs)

    async def _plain(self, *args: Any, **kwargs: Any) -> Any:
        async with self._slot():
            return await super()._plain(*args, **kwargs)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield


async def serve(port: int, max_concurrent_requests: int, token_delay: float, slots: int | None) -> None:
    emulator = SlottedEmulator(
        max_concurrent_requests=max_concurrent_requests, token_delay=token_delay, record=False, slots=slots
    )
    url = await emulator.start(port=port)
    gc.collect()
    gc.freeze()
    print(f"TGI emulator (bench) at {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The TGI emulator, streaming instantly, for benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-concurrent-requests", type=int, default=1000, help="admitted; beyond: 429")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    parser.add_argument("--slots", type=int, default=None, help="generating at once (default: all admitted)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.max_concurrent_requests, args.token_delay, args.slots))


if __name__ == "__main__":
    main()

"""The TGI emulator as benchmarks need it: `python -m bench.tgi_server --port N`.

The same `tests.emulators.tgi.TGIEmulator`, streaming instantly, minus two
things a test server wants and a stand-in for an instant model server must not
have: it keeps no record of the requests (the tests' server keeps every one
for assertions, so over a long run its heap and its garbage-collection pauses
grow, and show up as model-server time in the measurements), and its start-up
objects are frozen out of the garbage collector.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc

from tests.emulators.tgi import TGIEmulator


async def serve(port: int, max_concurrent_requests: int) -> None:
    emulator = TGIEmulator(max_concurrent_requests=max_concurrent_requests, token_delay=0.0, record=False)
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
    parser.add_argument("--max-concurrent-requests", type=int, default=1000)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.max_concurrent_requests))


if __name__ == "__main__":
    main()

"""The model stream's waits outside the event stream: a server that never sends its headers,
or an error status whose body never comes, is a stall within the idle limit, never a hang
(aiohttp's own read timeout is off for streams; `core.llm.sse` watches the events)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from core.llm.errors import StreamStalled
from core.llm.tgi import TGIStreamDecoder
from core.llm.transport import Transport, TransportOptions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def released() -> AsyncIterator[asyncio.Event]:
    """Set at the end, so the handlers the test left waiting can finish."""
    event = asyncio.Event()
    yield event
    event.set()


async def assert_stalls(handler: Handler, released: asyncio.Event) -> None:
    """A stream from a server answering with `handler` ends in `StreamStalled`."""
    app = web.Application()
    app.router.add_post("/generate_stream", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    transport = Transport(url, TransportOptions(idle_timeout=0.2, retries=0), logger=logging.getLogger("t"))
    transport.open(concurrency=1)
    try:
        with pytest.raises(StreamStalled):
            async with asyncio.timeout(30):  # bounds a broken run only
                async for _ in transport.stream("/generate_stream", {"inputs": "hi"}, TGIStreamDecoder):
                    pass
    finally:
        await transport.close()
        released.set()
        await runner.cleanup()


async def test_no_headers_within_the_idle_limit_is_a_stall(released: asyncio.Event) -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        await released.wait()
        return web.Response()

    await assert_stalls(silent, released)


async def test_an_error_whose_body_never_comes_is_a_stall(released: asyncio.Event) -> None:
    async def half_error(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"error": "out of ')
        await released.wait()
        return response

    await assert_stalls(half_error, released)

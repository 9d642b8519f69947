"""HTTP transport shared by the model backends: session, retries, streaming.

One `aiohttp.ClientSession` per client keeps connections to the model server
alive between requests. Timeouts are an idle limit between bytes (`sock_read`)
and a connect limit, never a total limit: a long answer that keeps streaming
must never be cut off, while a server that stops sending is detected quickly.

Every failure leaves this module as one of `core.llm.errors`' classes, mapped
by `core.llm.error_mapping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson

from core.llm.base import Finished, ReadPace, StreamEvent
from core.llm.error_mapping import error_from_exception, error_from_response, quote
from core.llm.errors import GenerationFailed, LLMError
from core.llm.sse import iter_sse

T = TypeVar("T")

#: connections beyond the generation slots, so tokenize/health calls never
#: queue behind long streams for a pooled connection
SIDE_CONNECTIONS = 4
#: how long to wait for the bytes after a stream's final event, so the
#: connection goes back to the pool instead of being closed
DRAIN_SECONDS = 1.0

_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """How a client talks to its model server; the same for every backend.

    `queue_timeout` bounds the wait for one of the client's own server slots
    (the gate), so no request is sent late.
    """

    #: sent as `Authorization: Bearer …`; kept out of repr so it never reaches logs
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    #: longest silence between bytes, and between a stream's data events
    idle_timeout: float = 60.0
    queue_timeout: float = 30.0
    #: extra tries for retryable errors, only before a stream's first token
    retries: int = 2
    backoff: float = 0.25
    max_backoff: float = 2.0


DEFAULT_OPTIONS = TransportOptions()


# --------------------------------------------------------------------------- session


def client_timeout(connect_timeout: float, idle_timeout: float | None) -> aiohttp.ClientTimeout:
    """Connect and idle limits only: `total=None` so long streams are never cut."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect_timeout,
        sock_connect=connect_timeout,
        sock_read=idle_timeout,
    )


def open_session(
    *,
    concurrency: int,
    connect_timeout: float,
    idle_timeout: float,
    api_key: str | None = None,
) -> aiohttp.ClientSession:
    """A keep-alive session whose pool fits `concurrency` streams plus side calls."""
    size = max(1, concurrency) + SIDE_CONNECTIONS
    connector = aiohttp.TCPConnector(limit=size, limit_per_host=size)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout(connect_timeout, idle_timeout),
        headers=headers,
        raise_for_status=False,
        json_serialize=_dumps,
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------- transport


class StreamDecoder(Protocol):
    """Turns one SSE data payload into events; raises `LLMError` on error events."""

    def feed(self, data: str) -> list[StreamEvent]: ...

    @property
    def finished(self) -> Finished | None:
        """The final event once seen; the stream is then complete."""

    def incomplete(self) -> LLMError:
        """The error for a stream that ended before its final event."""


class Transport:
    """A base URL, a shared session, and the retry policy for one client."""

    def __init__(
        self,
        base_url: str,
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        logger: logging.Logger,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.options = options
        #: a plain attribute (not read from `options`) so a caller may tune it live
        self.retries = max(0, options.retries)
        self.log = logger
        self._session: aiohttp.ClientSession | None = None

    def open(self, concurrency: int) -> None:
        """Create the shared session (must run inside the event loop)."""
        if self._session is not None and not self._session.closed:
            raise RuntimeError("transport already open")
        self._session = open_session(
            concurrency=concurrency,
            connect_timeout=self.options.connect_timeout,
            idle_timeout=self.options.idle_timeout,
            api_key=self.options.api_key,
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("the model client is not started (call start() first)")
        return self._session

    def url(self, path: str) -> str:
        return self.base_url + path

    def delay(self, attempt: int) -> float:
        """Capped exponential backoff: backoff, 2×backoff, … ≤ max_backoff."""
        return float(min(self.options.max_backoff, self.options.backoff * (2**attempt)))

    async def _pause(self, attempt: int, what: str, err: LLMError) -> None:
        delay = self.delay(attempt)
        self.log.warning(
            "model server %s failed (%s: %s); retry %d/%d in %.2fs",
            what,
            type(err).__name__,
            err,
            attempt + 1,
            self.retries,
            delay,
        )
        await asyncio.sleep(delay)

    async def retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, retrying retryable errors up to `retries` extra times."""
        attempt = 0
        while True:
            try:
                return await op()
            except LLMError as err:
                if not err.retryable or attempt >= self.retries:
                    raise
                await self._pause(attempt, what, err)
                attempt += 1

    async def request_json(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        retry: bool = True,
        none_on_404: bool = False,
    ) -> Any:
        """A unary JSON call; non-200 answers raise the mapped typed error.

        `none_on_404` turns "no such endpoint" into None, for optional routes.
        """

        async def once() -> Any:
            try:
                async with self.session.request(method, self.url(path), json=body) as resp:
                    status = resp.status
                    raw = await resp.read()
            except _NETWORK_ERRORS as exc:
                raise error_from_exception(exc, in_body=False, streaming=False) from exc
            if status == 404 and none_on_404:
                return None
            if status != 200:
                raise error_from_response(status, raw, what=f"{method} {path}")
            try:
                return orjson.loads(raw)
            except ValueError as exc:
                raise GenerationFailed(f"{method} {path}: the answer is not JSON") from exc

        if not retry:
            return await once()
        return await self.retrying(f"{method} {path}", once)

    async def status_of(self, method: str, path: str) -> int | None:
        """The status of a body-less call, or None if the server can't be reached."""
        try:
            async with self.session.request(method, self.url(path)) as resp:
                await resp.read()
                return resp.status
        except _NETWORK_ERRORS:
            return None

    async def stream(
        self, path: str, body: Any, decoder: Callable[[], StreamDecoder], pace: ReadPace | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """POST `body` and yield decoded events, retrying only before the first one.

        The request, its events and the retries are one generator: every token passes
        through each generator between the socket and the answer, and at 1,000 answers
        streaming each one more costs about 1% of the process's CPU.
        """
        attempt = 0
        idle_timeout = self.options.idle_timeout
        # An event stream's silences are iter_sse's to notice: aiohttp's read timeout
        # would re-arm a timer on every chunk, so the idle limit is set on the waits
        # for the headers and for an error's body here instead.
        body_timeout = client_timeout(self.options.connect_timeout, None)
        while True:
            events = decoder()
            in_body = yielded = False
            try:
                try:
                    async with asyncio.timeout(idle_timeout):
                        posted = await self.session.post(self.url(path), json=body, timeout=body_timeout)
                    async with posted as resp:
                        if resp.status != 200:
                            async with asyncio.timeout(idle_timeout):
                                raw = await resp.read()
                            raise error_from_response(resp.status, raw, what=f"POST {path}")
                        in_body = True
                        async with contextlib.aclosing(iter_sse(resp.content, idle_timeout, pace)) as lines:
                            async for data in lines:
                                for event in events.feed(data):
                                    if not isinstance(event, Finished):
                                        yielded = True
                                        yield event
                                if events.finished is not None:
                                    break
                        finished = events.finished
                        if finished is None:
                            raise events.incomplete()
                        await _drain(resp)
                except _NETWORK_ERRORS as exc:
                    raise error_from_exception(exc, in_body=in_body, streaming=True) from exc
            except LLMError as err:
                if yielded or not err.retryable or attempt >= self.retries:
                    raise
                await self._pause(attempt, f"POST {path}", err)
                attempt += 1
                continue
            # yielded after the response is released, so the connection is back in the
            # pool even if the consumer stops iterating at `Finished`
            yield finished
            return


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows the final event so the connection can be reused."""
    with contextlib.suppress(*_NETWORK_ERRORS):
        async with asyncio.timeout(DRAIN_SECONDS):
            await resp.content.read()


def json_event(data: str) -> Mapping[str, Any]:
    """Parse one event's JSON object; malformed data is a failed generation."""
    try:
        payload = orjson.loads(data)
    except ValueError as exc:
        raise GenerationFailed(f"malformed stream event: {quote(data)}") from exc
    if not isinstance(payload, Mapping):
        raise GenerationFailed(f"unexpected stream event: {quote(data)}")
    return payload


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[str, Finished | None]:
    """Join a stream's text (a convenience for callers and tests)."""
    parts: list[str] = []
    finished: Finished | None = None
    async for event in events:
        if isinstance(event, Finished):
            finished = event
        else:
            parts.append(event.text)
    return "".join(parts), finished

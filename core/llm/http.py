"""HTTP plumbing shared by the model backends.

One `aiohttp.ClientSession` per client keeps connections to the model server
alive between requests. Timeouts are an idle limit between bytes (`sock_read`)
and a connect limit, never a total limit: a long answer that keeps streaming
must never be cut off, while a server that stops sending is detected quickly.

Every failure leaves this module as one of `core.llm.errors`' classes: HTTP
statuses with JSON or non-JSON bodies, in-stream error events, and aiohttp's
own exceptions are all mapped here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from text_generation import errors as tg_errors

from core.llm.base import Finished, StreamEvent
from core.llm.errors import (
    ContextTooLong,
    GenerationFailed,
    InvalidRequest,
    LLMError,
    ModelOverloaded,
    ModelUnreachable,
    StreamStalled,
)

T = TypeVar("T")

#: connections beyond the generation slots, so tokenize/health calls never
#: queue behind long streams for a pooled connection
SIDE_CONNECTIONS = 4
#: how long to wait for the bytes after a stream's final event, so the
#: connection goes back to the pool instead of being closed
DRAIN_SECONDS = 1.0
#: longest server text quoted in an error message
_QUOTE = 300


# --------------------------------------------------------------------------- session


def client_timeout(connect_timeout: float, idle_timeout: float) -> aiohttp.ClientTimeout:
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


# --------------------------------------------------------------------------- SSE


class SSEParser:
    """Incremental Server-Sent Events parser: feed bytes, get each event's data.

    Follows the SSE line rules (LF, CRLF or CR endings, `:` comments, several
    `data` lines joined by newlines, one optional space after the colon, so both
    `data:` and `data: ` work) and copes with lines and events split across
    network chunks.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event completed by them."""
        self._buf.extend(chunk)
        buf = self._buf
        out: list[str] = []
        start = 0
        size = len(buf)
        while start < size:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            if cr < 0 or 0 <= lf < cr:
                end, after = lf, lf + 1
            elif cr == size - 1:
                break  # a CR at the end may be half of a CRLF split across chunks
            else:
                end = cr
                after = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            self._line(bytes(buf[start:end]), out)
            start = after
        del buf[:start]
        return out

    def flush(self) -> list[str]:
        """At end of stream: the last line and event even if unterminated."""
        out: list[str] = []
        if self._buf:
            self._line(bytes(self._buf).rstrip(b"\r"), out)
            self._buf.clear()
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[str]) -> None:
        if not line:
            if self._data:
                out.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value.decode("utf-8", errors="replace"))


async def iter_sse(
    content: aiohttp.StreamReader, idle_timeout: float | None = None
) -> AsyncGenerator[str, None]:
    """Yield the data of each SSE event read from a response body.

    `idle_timeout` limits the time between data events. TGI sends keep-alive
    comments on an idle stream, so a socket read timeout alone never notices
    a stalled generation; comments therefore do not reset this clock.
    """
    parser = SSEParser()
    loop = asyncio.get_running_loop()
    last_event = loop.time()
    while True:
        try:
            if idle_timeout is None:
                chunk = await content.readany()
            else:
                async with asyncio.timeout(last_event + idle_timeout - loop.time()):
                    chunk = await content.readany()
        except TimeoutError:
            raise StreamStalled("no tokens from the model server within the idle timeout") from None
        if not chunk:
            break
        events = parser.feed(chunk)
        if events:
            last_event = loop.time()
        for data in events:
            yield data
    for data in parser.flush():
        yield data


# --------------------------------------------------------------------------- errors

_CONTEXT_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[int, int]]], ...] = (
    # TGI: `inputs` tokens + `max_new_tokens` must be <= N. Given: X `inputs` tokens and Y ...
    (
        re.compile(r"must be <= (\d+)\. Given: (\d+) `?inputs`? tokens and (\d+) `?max_new_tokens`?"),
        lambda m: (int(m[2]) + int(m[3]), int(m[1])),
    ),
    # TGI: `inputs` must have less than N tokens. Given: X
    (
        re.compile(r"`?inputs`? must have less than (\d+) tokens\. Given: (\d+)"),
        lambda m: (int(m[2]), int(m[1])),
    ),
    # vLLM / OpenAI: maximum context length is N tokens. However, you requested X tokens
    (
        re.compile(
            r"maximum context length is (\d+) tokens.*?(?:requested|resulted in) (\d+) tokens",
            re.DOTALL,
        ),
        lambda m: (int(m[2]), int(m[1])),
    ),
)


def context_overflow(message: str) -> ContextTooLong | None:
    """`ContextTooLong` if `message` is a server's context-overflow text.

    `given` is the number the server compared with `limit` (for TGI's first
    form, input tokens + max_new_tokens against max_total_tokens), so
    `given - limit` is always how many tokens must go.
    """
    for pattern, numbers in _CONTEXT_PATTERNS:
        match = pattern.search(message)
        if match:
            given, limit = numbers(match)
            return ContextTooLong(message, given=given, limit=limit)
    return None


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"


def _parse_error_body(body: bytes) -> tuple[str, str | None]:
    """(message, TGI error_type) from any error body, JSON or not."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return _quote(text), None
    if not isinstance(payload, Mapping):
        return _quote(text), None
    error = payload.get("error")
    error_type = payload.get("error_type")
    if isinstance(error, str):  # TGI: {"error": str, "error_type": str}
        return _quote(error), error_type if isinstance(error_type, str) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):  # OpenAI
        return _quote(error["message"]), None
    for key in ("message", "detail"):  # vLLM {"object": "error", "message"}, FastAPI
        if isinstance(payload.get(key), str):
            return _quote(payload[key]), None
    return _quote(text), None


def _classify_tgi(message: str, error_type: str) -> LLMError | None:
    """Map TGI's `error_type` through `text_generation`'s own parser."""
    parsed = tg_errors.parse_error(0, {"error": message, "error_type": error_type})
    if isinstance(parsed, tg_errors.OverloadedError):
        return ModelOverloaded(message)
    if isinstance(parsed, tg_errors.ValidationError):
        return context_overflow(message) or InvalidRequest(message)
    if isinstance(parsed, tg_errors.GenerationError | tg_errors.IncompleteGenerationError):
        return GenerationFailed(message)
    if error_type.startswith("incomplete_generation"):
        return GenerationFailed(message)
    if error_type in ("template_error", "missing_template_variable", "tool_error"):
        return InvalidRequest(message)
    return None


def _classify_status(status: int, message: str) -> LLMError:
    if status in (400, 413, 422):
        overflow = context_overflow(message)
        if overflow is not None:
            return overflow
    if status == 429:
        return ModelOverloaded(message)
    if status in (502, 503, 504):
        return ModelUnreachable(message)
    if 400 <= status < 500:
        return InvalidRequest(message)
    return GenerationFailed(message)


def error_from_response(status: int, body: bytes, *, what: str = "") -> LLMError:
    """The typed error for a non-200 response; the body may be anything."""
    message, error_type = _parse_error_body(body)
    prefix = f"{what}: " if what else ""
    text = f"{prefix}HTTP {status}: {message}" if message else f"{prefix}HTTP {status}"
    # capacity and gateway statuses say more than a body's error_type
    if error_type is not None and status not in (429, 502, 503, 504):
        typed = _classify_tgi(text, error_type)
        if typed is not None:
            return typed
    return _classify_status(status, text)


def error_from_event(payload: Mapping[str, Any]) -> LLMError:
    """The typed error for an in-stream error event (a 200 stream that failed).

    TGI's native stream sends `{"error": str, "error_type": str}`; its chat
    stream sends `{"error": {"message": str, "http_status_code": 422}}` with 422
    whatever the cause, so the message text is classified too.
    """
    error = payload.get("error")
    if isinstance(error, str):
        error_type = payload.get("error_type")
        if isinstance(error_type, str):
            typed = _classify_tgi(error, error_type)
            if typed is not None:
                return typed
        return context_overflow(error) or GenerationFailed(error)
    if isinstance(error, Mapping):
        message = str(error.get("message", "") or "error event")
        overflow = context_overflow(message)
        if overflow is not None:
            return overflow
        if message.startswith("Model is overloaded"):
            return ModelOverloaded(message)
        if message.startswith(("Input validation error", "Template error", "Tool error")):
            return InvalidRequest(message)
        if message.startswith(("Request failed during generation", "Incomplete generation")):
            return GenerationFailed(message)
        status = error.get("http_status_code", error.get("code"))
        if isinstance(status, int) and status != 422:
            return _classify_status(status, message)
        return GenerationFailed(message)
    return GenerationFailed(f"error event: {_quote(json.dumps(payload))}")


def error_from_exception(exc: BaseException, *, in_body: bool, streaming: bool) -> LLMError:
    """Map aiohttp/asyncio failures.

    Before a response arrives everything is "unreachable" (retryable: refused,
    DNS, connect timeout, a pooled keep-alive connection the server had
    closed). Once a stream's body is being read, a read timeout means the
    server stalled and a broken connection means the generation failed.
    """
    if isinstance(exc, LLMError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ModelUnreachable(f"connect timeout ({name})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ModelUnreachable(f"cannot connect: {exc}")
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        if streaming:
            return StreamStalled("no data from the model server within the idle timeout")
        return ModelUnreachable("no answer from the model server within the idle timeout")
    if in_body and streaming:
        return GenerationFailed(f"connection lost mid-stream ({name}: {exc})")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError) and streaming:
        return GenerationFailed(f"bad response ({name}: {exc})")
    return ModelUnreachable(f"connection failed ({name}: {exc})")


_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


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
        *,
        api_key: str | None,
        connect_timeout: float,
        idle_timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        logger: logging.Logger,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.log = logger
        self._session: aiohttp.ClientSession | None = None

    def open(self, concurrency: int) -> None:
        """Create the shared session (must run inside the event loop)."""
        if self._session is not None and not self._session.closed:
            raise RuntimeError("transport already open")
        self._session = open_session(
            concurrency=concurrency,
            connect_timeout=self.connect_timeout,
            idle_timeout=self.idle_timeout,
            api_key=self.api_key,
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
        return float(min(self.max_backoff, self.backoff * (2**attempt)))

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
        self, path: str, body: Any, decoder: Callable[[], StreamDecoder]
    ) -> AsyncGenerator[StreamEvent, None]:
        """POST `body` and yield decoded events, retrying only before the first one."""
        attempt = 0
        while True:
            yielded = False
            try:
                async with contextlib.aclosing(self._stream_once(path, body, decoder())) as events:
                    async for event in events:
                        yielded = True
                        yield event
                return
            except LLMError as err:
                if yielded or not err.retryable or attempt >= self.retries:
                    raise
                await self._pause(attempt, f"POST {path}", err)
                attempt += 1

    async def _stream_once(
        self, path: str, body: Any, decoder: StreamDecoder
    ) -> AsyncGenerator[StreamEvent, None]:
        in_body = False
        try:
            async with self.session.post(self.url(path), json=body) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    raise error_from_response(resp.status, raw, what=f"POST {path}")
                in_body = True
                async with contextlib.aclosing(iter_sse(resp.content, self.idle_timeout)) as lines:
                    async for data in lines:
                        events = decoder.feed(data)
                        for event in events:
                            if not isinstance(event, Finished):
                                yield event
                        if decoder.finished is not None:
                            break
                finished = decoder.finished
                if finished is None:
                    raise decoder.incomplete()
                await _drain(resp)
        except _NETWORK_ERRORS as exc:
            raise error_from_exception(exc, in_body=in_body, streaming=True) from exc
        # yielded after the response is released, so the connection is back in
        # the pool even if the consumer stops iterating at `Finished`
        yield finished


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
        raise GenerationFailed(f"malformed stream event: {_quote(data)}") from exc
    if not isinstance(payload, Mapping):
        raise GenerationFailed(f"unexpected stream event: {_quote(data)}")
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

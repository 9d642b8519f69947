"""Server answers and network failures mapped onto `core.llm.errors`' classes.

HTTP statuses with JSON or non-JSON bodies, in-stream error events and
aiohttp's own exceptions are all classified here, in one place, so every
failure leaves the transport as one typed error. Kept apart from
`core.llm.errors` so that module, imported by the engine and commands, stays
free of aiohttp and `text_generation`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from text_generation import errors as tg_errors

from core.llm.errors import (
    ConnectionLost,
    ContextTooLong,
    GenerationFailed,
    InvalidRequest,
    LLMError,
    ModelOverloaded,
    ModelUnreachable,
    StreamStalled,
)

#: longest server text quoted in an error message
QUOTE_LIMIT = 300

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
    # llama.cpp (llama-cpp-python): Requested tokens (X) exceed context window of N
    (
        re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)"),
        lambda m: (int(m[1]), int(m[2])),
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


def quote(text: str) -> str:
    """Server text fit for an error message: one line, at most `QUOTE_LIMIT` characters."""
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"


def _parse_error_body(body: bytes) -> tuple[str, str | None]:
    """(message, TGI error_type) from any error body, JSON or not."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return quote(text), None
    if not isinstance(payload, Mapping):
        return quote(text), None
    error = payload.get("error")
    error_type = payload.get("error_type")
    if isinstance(error, str):  # TGI: {"error": str, "error_type": str}
        return quote(error), error_type if isinstance(error_type, str) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):  # OpenAI
        return quote(error["message"]), None
    for key in ("message", "detail"):  # vLLM {"object": "error", "message"}, FastAPI
        if isinstance(payload.get(key), str):
            return quote(payload[key]), None
    return quote(text), None


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
    return GenerationFailed(f"error event: {quote(json.dumps(payload))}")


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
        return ConnectionLost(f"connection lost mid-stream ({name}: {exc})")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError) and streaming:
        return GenerationFailed(f"bad response ({name}: {exc})")
    return ModelUnreachable(f"connection failed ({name}: {exc})")

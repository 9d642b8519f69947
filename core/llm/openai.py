"""Backend for any OpenAI-compatible chat server (vLLM, SGLang, TGI's /v1).

Such servers offer no exact tokenizer endpoint and no `/info`, so prompts are
sized with a deliberately pessimistic estimate and limits come from
configuration. The chat-stream code here is shared with the TGI backend,
which falls back to TGI's own `/v1/chat/completions` when it cannot template
a prompt itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from core.llm.base import (
    ChatMessage,
    Finished,
    GenerationParams,
    ModelInfo,
    PreparedPrompt,
    ReadPace,
    StreamEvent,
    TextDelta,
)
from core.llm.client_base import ClientBase
from core.llm.error_mapping import error_from_event
from core.llm.errors import GenerationFailed, InvalidRequest, LLMError
from core.llm.gate import ConcurrencyGate
from core.llm.markers import neutralise
from core.llm.transport import DEFAULT_OPTIONS, Transport, TransportOptions, json_event

CHAT_PATH = "/v1/chat/completions"
#: per-message allowance for role markers and separators in the estimate
MESSAGE_OVERHEAD_TOKENS = 8


# --------------------------------------------------------------------------- estimate


def estimate_text_tokens(text: str) -> int:
    """Over-estimate tokens as ceil(utf-8 bytes / 3): real tokenizers average more
    bytes per token, so a prompt budgeted this way fits."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(estimate_text_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def estimated_prompt(messages: Sequence[ChatMessage]) -> PreparedPrompt:
    """A prompt that the chat endpoint will template (`rendered=None`)."""
    return PreparedPrompt(
        messages=tuple(messages),
        input_tokens=estimate_prompt_tokens(messages),
        exact=False,
        rendered=None,
    )


# --------------------------------------------------------------------------- chat stream


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def sampling_options(params: GenerationParams) -> dict[str, Any]:
    """`params` as the OpenAI-style fields every such server reads (`max_tokens`,
    `temperature`, `top_p`, `seed`, `stop`), validated; unset ones are left out."""
    if params.max_new_tokens < 1:
        raise InvalidRequest("max_new_tokens must be at least 1")
    if params.temperature is not None and params.temperature < 0:
        raise InvalidRequest("temperature must not be negative")
    if params.top_p is not None and not 0 < params.top_p <= 1:
        raise InvalidRequest("top_p must be > 0 and <= 1")
    if params.seed is not None and params.seed < 0:
        raise InvalidRequest("seed must not be negative")
    options: dict[str, Any] = {"max_tokens": params.max_new_tokens}
    if params.temperature is not None:
        options["temperature"] = params.temperature
    if params.top_p is not None:
        options["top_p"] = params.top_p
    if params.seed is not None:
        options["seed"] = params.seed
    if params.stop:
        options["stop"] = list(params.stop)
    return options


def chat_request_body(
    model: str, messages: Sequence[ChatMessage], params: GenerationParams
) -> dict[str, Any]:
    """The streaming `/v1/chat/completions` body; unset options are left out.

    `repetition_penalty` has no OpenAI equivalent and is dropped.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": message_dicts(messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_options(params),
    }
    if params.json_schema is not None:
        body["response_format"] = response_format(model, params.json_schema)
    return body


def response_format(model: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """TGI's chat route takes `{"type": "json_schema", "value": schema}` (TGI.md);
    other servers (vLLM, SGLang, llama.cpp) take OpenAI's shape."""
    if model == "tgi":
        return {"type": "json_schema", "value": dict(schema)}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": dict(schema)}}


class ChatStreamDecoder:
    """Decodes `chat.completion.chunk` events up to `data: [DONE]`.

    Text chunks become `TextDelta`s; the finish reason comes from the last
    choice that had one and the token count from `usage.completion_tokens`
    (servers that ignore `stream_options` get the number of content chunks).
    """

    def __init__(self) -> None:
        self._finish_reason: str | None = None
        self._usage_tokens: int | None = None
        self._content_chunks = 0
        self._finished: Finished | None = None

    @property
    def finished(self) -> Finished | None:
        return self._finished

    def feed(self, data: str) -> list[StreamEvent]:
        if data.strip() == "[DONE]":
            if self._finish_reason is None:
                raise GenerationFailed("the chat stream ended without a finish_reason")
            tokens = self._usage_tokens if self._usage_tokens is not None else self._content_chunks
            self._finished = Finished(self._finish_reason, tokens)
            return [self._finished]
        payload = json_event(data)
        if "error" in payload and payload["error"] is not None:
            raise error_from_event(payload)
        events: list[StreamEvent] = []
        for choice in _list(payload.get("choices")):
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            content = self.text_of(choice)
            if isinstance(content, str) and content:
                self._content_chunks += 1
                events.append(TextDelta(content))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
        usage = payload.get("usage")
        if isinstance(usage, Mapping) and isinstance(usage.get("completion_tokens"), int):
            self._usage_tokens = usage["completion_tokens"]
        return events

    @staticmethod
    def text_of(choice: Mapping[str, Any]) -> object:
        """A chat chunk's new text: `choices[0].delta.content`."""
        delta = choice.get("delta")
        return delta.get("content") if isinstance(delta, Mapping) else None

    def incomplete(self) -> LLMError:
        return GenerationFailed("the chat stream ended without data: [DONE]")


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def stream_chat(
    transport: Transport,
    model: str,
    messages: Sequence[ChatMessage],
    params: GenerationParams,
    pace: ReadPace | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """Stream a chat completion (retries before the first token, idle timeout)."""
    body = chat_request_body(model, messages, params)
    return transport.stream(CHAT_PATH, body, ChatStreamDecoder, pace)


# --------------------------------------------------------------------------- client


def api_root(base_url: str) -> str:
    """Accept both `http://host:8000` and `http://host:8000/v1`."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class OpenAIClient(ClientBase):
    """`LLMClient` for an OpenAI-compatible `/v1/chat/completions` server.

    `model` is sent as-is in every request ("tgi" for TGI; the served model
    name for vLLM/SGLang). `/v1/models`, when offered, only informs `info`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        options: TransportOptions = DEFAULT_OPTIONS,
        model: str = "tgi",
        max_concurrency: int = 16,
        max_input_tokens: int = 8192,
        max_total_tokens: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.model = model
        self.max_concurrency = max(1, max_concurrency)
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        super().__init__(api_root(base_url), options, logger=logger or logging.getLogger(__name__))

    async def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        self.transport.open(self.max_concurrency)
        self._gate = ConcurrencyGate(self.max_concurrency, self.queue_timeout)
        model_id, context = await self._discover()
        max_input = self.max_input_tokens
        max_total = self.max_total_tokens or max_input + 1024
        if context is not None:  # vLLM tells its context length
            max_total = min(max_total, context) if self.max_total_tokens else context
            max_input = min(max_input, max_total - 1)
        self._info = ModelInfo(
            model_id=model_id,
            max_input_tokens=max_input,
            max_total_tokens=max_total,
            max_concurrent_requests=self.max_concurrency,
        )
        self.log.info("model server ready: %s", self._info)
        return self._info

    async def _discover(self) -> tuple[str, int | None]:
        """(model id, context length) from `/v1/models`; configuration if absent."""
        try:
            listing = await self.transport.request_json("GET", "/v1/models", retry=False)
        except LLMError as err:
            self.log.info("GET /v1/models unavailable (%s); using configuration", err)
            return self.model, None
        entries = [
            entry
            for entry in _list(listing.get("data") if isinstance(listing, Mapping) else None)
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str)
        ]
        chosen = next((e for e in entries if e["id"] == self.model), entries[0] if entries else None)
        if chosen is None:
            return self.model, None
        context = chosen.get("max_model_len")
        return str(chosen["id"]), context if isinstance(context, int) and context > 1 else None

    async def health(self) -> bool:
        """`GET /health`; servers without that route are asked for `/v1/models`."""
        status = await self.transport.status_of("GET", "/health")
        if status in (404, 405):
            status = await self.transport.status_of("GET", "/v1/models")
        return status == 200

    async def prepare(self, messages: Sequence[ChatMessage]) -> PreparedPrompt:
        return estimated_prompt(messages)

    async def count_tokens(self, text: str) -> int:
        return estimate_text_tokens(neutralise(text))  # as a ChatMessage will carry it

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, pace: ReadPace | None = None
    ) -> AsyncIterator[StreamEvent]:
        events = stream_chat(self.transport, self.model, prompt.messages, params, pace)
        return self.generate(events, params)

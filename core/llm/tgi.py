"""Backend for Hugging Face Text Generation Inference's native protocol.

The server templates and counts the prompt (`/chat_tokenize`), so budgets are
exact and the text sent to `/generate_stream` is what was counted. Requests
are built and validated, and stream events parsed, with the `text-generation`
package's pydantic models; the transport is our own because its client opens
a session per call and imposes a total timeout (see docs TGI.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from text_generation import errors as tg_errors
from text_generation.types import Grammar, GrammarType, Parameters, Request, StreamResponse

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
from core.llm.error_mapping import error_from_event, quote
from core.llm.errors import GenerationFailed, InvalidRequest, LLMError
from core.llm.gate import ConcurrencyGate, gate_limit
from core.llm.markers import neutralise
from core.llm.openai import (
    estimate_text_tokens,
    estimated_prompt,
    message_dicts,
    stream_chat,
)
from core.llm.transport import DEFAULT_OPTIONS, TransportOptions, json_event

GENERATE_STREAM_PATH = "/generate_stream"
#: TGI's chat routes take "tgi"; any other model name selects a LoRA adapter
TGI_MODEL = "tgi"
_INVALID = (PydanticValidationError, tg_errors.ValidationError)


def tgi_parameters(params: GenerationParams, *, max_stop: int | None = None) -> Any:
    """`text_generation.types.Parameters` for `params`, validated by TGI's rules.

    A temperature of 0 means greedy decoding, as on the chat route (the native
    route rejects 0, so it is left unset).
    """
    if params.max_new_tokens < 1:
        raise InvalidRequest("max_new_tokens must be at least 1")
    if max_stop is not None and len(params.stop) > max_stop:
        raise InvalidRequest(f"at most {max_stop} stop sequences are allowed")
    temperature = None if params.temperature == 0 else params.temperature
    try:
        return Parameters(
            max_new_tokens=params.max_new_tokens,
            temperature=temperature,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed,
            stop=list(params.stop),
            details=True,
            grammar=None
            if params.json_schema is None
            else Grammar(type=GrammarType.Json, value=dict(params.json_schema)),
        )
    except _INVALID as exc:
        raise InvalidRequest(f"invalid generation parameters: {exc}") from exc


def generate_request(inputs: str, params: GenerationParams, *, max_stop: int | None = None) -> dict[str, Any]:
    """The `/generate_stream` body, validated through `text_generation.types.Request`."""
    parameters = tgi_parameters(params, max_stop=max_stop)
    try:
        request = Request(inputs=inputs, parameters=parameters, stream=True)
    except _INVALID as exc:
        raise InvalidRequest(f"invalid request: {exc}") from exc
    # `stream` belongs to the compatibility route `POST /`, not /generate_stream
    body: dict[str, Any] = request.model_dump(mode="json", exclude_none=True, exclude={"stream"})
    return body


def _token_text(payload: Mapping[str, Any]) -> str:
    """A token event's visible text ("" for a special token), its shape checked as
    `text_generation.types.Token` would: id an integer, text a string, logprob a number
    or null, special a boolean. `GenerationFailed` otherwise."""
    token = payload.get("token")
    if (
        not isinstance(token, Mapping)
        or type(token.get("id")) is not int
        or not isinstance(text := token.get("text"), str)
        or not isinstance(token.get("logprob", 0.0), float | int | None)
        or type(special := token.get("special")) is not bool
    ):
        raise GenerationFailed(f"malformed stream event: {quote(str(payload))}")
    return "" if special else text


class TGIStreamDecoder:
    """Decodes `/generate_stream` events; the one carrying `details` is the last."""

    def __init__(self) -> None:
        self._tokens = 0
        self._finished: Finished | None = None

    @property
    def finished(self) -> Finished | None:
        return self._finished

    def feed(self, data: str) -> list[StreamEvent]:
        payload = json_event(data)
        if "error" in payload:
            raise error_from_event(payload)
        self._tokens += 1
        if payload.get("details") is None and payload.get("generated_text") is None:
            # every token but the last: checked by hand, the model's schema is too slow for
            # thousands of tokens a second, and only the token is read
            text = _token_text(payload)
            return [TextDelta(text)] if text else []
        try:
            event = StreamResponse.model_validate(payload)
        except _INVALID as exc:
            raise GenerationFailed(f"malformed stream event: {exc}") from exc
        events: list[StreamEvent] = []
        token = event.token
        if not token.special and token.text:
            events.append(TextDelta(str(token.text)))
        details = event.details
        if details is not None:
            reason = details.finish_reason
            self._finished = Finished(str(getattr(reason, "value", reason)), int(details.generated_tokens))
        else:  # a server that omits details
            self._finished = Finished("unknown", self._tokens)
        events.append(self._finished)
        return events

    def incomplete(self) -> LLMError:
        return GenerationFailed(f"the stream ended after {self._tokens} tokens without its final event")


def parse_info(payload: Any) -> tuple[ModelInfo, int | None]:
    """ModelInfo (and max_stop_sequences) from `GET /info`, old and new key names."""
    if not isinstance(payload, Mapping):
        raise InvalidRequest("GET /info: not a TGI server (use api='openai' for others)")
    max_input = payload.get("max_input_tokens", payload.get("max_input_length"))
    values = {
        "model_id": payload.get("model_id"),
        "max_input_tokens": max_input,
        "max_total_tokens": payload.get("max_total_tokens"),
        "max_concurrent_requests": payload.get("max_concurrent_requests"),
    }
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise InvalidRequest(
            f"GET /info lacks {', '.join(missing)}: not a TGI server (use api='openai' for other servers)"
        )
    try:
        info = ModelInfo(
            model_id=str(values["model_id"]),
            max_input_tokens=int(max_input),
            max_total_tokens=int(payload["max_total_tokens"]),
            max_concurrent_requests=int(payload["max_concurrent_requests"]),
            version=str(payload.get("version") or ""),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"GET /info: unexpected values ({exc})") from exc
    max_stop = payload.get("max_stop_sequences")
    return info, max_stop if isinstance(max_stop, int) and max_stop >= 0 else None


class TGIClient(ClientBase):
    """`LLMClient` for TGI: exact prompt sizes, native streaming, bounded concurrency."""

    def __init__(
        self,
        base_url: str,
        *,
        options: TransportOptions = DEFAULT_OPTIONS,
        max_concurrency: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """`max_concurrency` caps (never raises) the server's `/info` limit."""
        self.max_concurrency = max_concurrency
        super().__init__(base_url, options, logger=logger or logging.getLogger(__name__))
        self._max_stop: int | None = None
        self._chat_tokenize = True  # until the server says 404
        self._tokenize = True
        self._bos: str | None = None

    async def start(self) -> ModelInfo:
        """Read `/info`, then open the shared session sized to the server's limit.

        `/info` goes over a throwaway one-connection session because the pool
        size depends on its answer.
        """
        if self._info is not None:
            return self._info
        self.transport.open(1)
        try:
            payload = await self.transport.request_json("GET", "/info")
        finally:
            await self.transport.close()
        info, self._max_stop = parse_info(payload)
        limit = gate_limit(info.max_concurrent_requests, self.max_concurrency)
        self.transport.open(limit)
        self._gate = ConcurrencyGate(limit, self.queue_timeout)
        self._bos = await self._find_bos()
        self._info = info
        self.log.info("TGI ready: %s (%d concurrent requests)", info, limit)
        return info

    async def _find_bos(self) -> str | None:
        """The text of the begin-of-sequence token the tokenizer adds, if any.

        Chat templates write it into the templated text, and `/generate_stream`
        always adds special tokens (clients cannot turn that off), so it is
        stripped from the templated text to avoid sending it twice.
        """
        payload = await self.transport.request_json("POST", "/tokenize", {"inputs": "a"}, none_on_404=True)
        if isinstance(payload, list) and len(payload) > 1 and isinstance(payload[0], Mapping):
            first = payload[0]
            if first.get("start") == first.get("stop") == 0 and first.get("text"):
                return str(first["text"])
        return None

    async def health(self) -> bool:
        return await self.transport.status_of("GET", "/health") == 200

    async def prepare(self, messages: Sequence[ChatMessage]) -> PreparedPrompt:
        """Template and count with the server's own chat template and tokenizer.

        Servers without `/chat_tokenize` (404) get an estimate, and the prompt
        then goes to the chat route, which templates it.
        """
        if self._chat_tokenize:
            body = {"model": TGI_MODEL, "messages": message_dicts(messages)}
            payload = await self.transport.request_json("POST", "/chat_tokenize", body, none_on_404=True)
            if payload is not None:
                return _tokenized_prompt(messages, payload, self._bos)
            self.log.warning("TGI has no /chat_tokenize: prompt sizes are estimates")
            self._chat_tokenize = False
        return estimated_prompt(messages)

    async def count_tokens(self, text: str) -> int:
        text = neutralise(text)  # counted as a ChatMessage will carry it
        if self._tokenize:
            payload = await self.transport.request_json(
                "POST", "/tokenize", {"inputs": text}, none_on_404=True
            )
            if isinstance(payload, list):
                return len(payload)
            if payload is not None:
                raise GenerationFailed("POST /tokenize: unexpected answer")
            self._tokenize = False
        return estimate_text_tokens(text)

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, pace: ReadPace | None = None
    ) -> AsyncIterator[StreamEvent]:
        if prompt.rendered is None:
            tgi_parameters(params, max_stop=self._max_stop)  # TGI's rules apply there too
            events = stream_chat(self.transport, TGI_MODEL, prompt.messages, params, pace)
        else:
            body = generate_request(prompt.rendered, params, max_stop=self._max_stop)
            events = self.transport.stream(GENERATE_STREAM_PATH, body, TGIStreamDecoder, pace)
        return self.generate(events, params)


def _tokenized_prompt(messages: Sequence[ChatMessage], payload: Any, bos: str | None) -> PreparedPrompt:
    """The server's count stays as it is: with the BOS re-added it is exact, or one high."""
    tokens = payload.get("tokenize_response") if isinstance(payload, Mapping) else None
    text = payload.get("templated_text") if isinstance(payload, Mapping) else None
    if not isinstance(tokens, list) or not isinstance(text, str):
        raise GenerationFailed("POST /chat_tokenize: unexpected answer")
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return PreparedPrompt(messages=tuple(messages), input_tokens=len(tokens), exact=True, rendered=text)

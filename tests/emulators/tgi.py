"""A loopback emulator of Hugging Face Text Generation Inference (TGI 3.x).

It speaks TGI's wire format (see docs/TGI.md and TGI's ``router/src/server.rs``)
so that Herald's model client is tested against real HTTP, real SSE framing and
TGI's real failure shapes (422 in-stream context overflow, 429 overload, dropped
connections) instead of mocks. Every limit is computed from a deterministic
tokenizer that tests can call themselves to compute expected numbers.

The model family is configurable (`ChatTemplate`: ChatML as Qwen uses it, the
default; Llama 3; Zephyr): its chat template, its special tokens, which its
tokenizer reads in any input text as TGI's does, and a model that believes
every turn marker it reads, forged or not, on either route.

Run standalone for benchmarks: ``python -m tests.emulators.tgi --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "CHATML",
    "LLAMA3",
    "ZEPHYR",
    "ChatTemplate",
    "Fault",
    "RecordedRequest",
    "TGIEmulator",
    "Token",
    "default_responder",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_IDS: dict[str, int] = {IM_START: 1, IM_END: 2}
BOS_ID = 3
VOCAB_SIZE = 32000
MAX_PIECE_CHARS = 8
# TGI's validation chunk for requests without max_new_tokens (validation.rs).
DEFAULT_GENERATION_LENGTH = 1024

_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
_NAME_QUESTION = re.compile(r"what\s+is\s+my\s+name", re.I)
_NAME_STATEMENT = re.compile(r"my\s+name\s+is\s+([\w'-]+)", re.I)


@dataclass(frozen=True)
class ChatTemplate:
    """A model family's chat template and added tokens, as its tokenizer_config.json has them.

    TGI's tokenizer reads each of `specials` as that one special token wherever
    it appears in an input text (/tokenize, /chat_tokenize and the generation
    routes alike), so a marker inside a message is a real marker to the model;
    `turns` reads the turns back the way the model would: a new one at every
    turn-opening marker, wherever it came from.
    """

    name: str
    specials: Mapping[str, int]
    #: ends an assistant turn; generation stops at it
    eos: str
    #: added by the tokenizer on /tokenize and the native generation routes
    bos: str | None
    #: the template writes the BOS too (Llama), or not (Zephyr)
    bos_in_template: bool
    #: one turn, with {role} and {content}
    turn: str
    generation_prompt: str
    #: (role, content) of each turn, as the model reads them
    turns: re.Pattern[str]
    #: the template trims each message's content (Llama 3's `| trim`)
    trims: bool = False


#: Qwen 2.5 / ChatML: the markers are special tokens; no BOS.
CHATML = ChatTemplate(
    name="chatml",
    specials=MappingProxyType(SPECIAL_IDS),
    eos=IM_END,
    bos=None,
    bos_in_template=True,
    turn=IM_START + "{role}\n{content}" + IM_END + "\n",
    generation_prompt=IM_START + "assistant\n",
    turns=re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)(?=<\|im_end\|>|<\|im_start\|>)", re.S),
)
#: Llama 3 Instruct: header and end-of-turn markers are special tokens; the template
#: writes the BOS, which the tokenizer adds again on the native routes.
LLAMA3 = ChatTemplate(
    name="llama3",
    specials=MappingProxyType(
        {
            "<|begin_of_text|>": 128000,
            "<|end_of_text|>": 128001,
            "<|start_header_id|>": 128006,
            "<|end_header_id|>": 128007,
            "<|eot_id|>": 128009,
        }
    ),
    eos="<|eot_id|>",
    bos="<|begin_of_text|>",
    bos_in_template=True,
    turn="<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
    generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    turns=re.compile(
        r"<\|start_header_id\|>(.*?)<\|end_header_id\|>(?:\n\n)?(.*?)(?=<\|eot_id\|>|<\|start_header_id\|>)",
        re.S,
    ),
    trims=True,
)
#: Zephyr (Mistral's tokenizer): `<|user|>` is plain text, `</s>` the special EOS
#: that closes every turn; the tokenizer adds `<s>`, the template does not write it.
ZEPHYR = ChatTemplate(
    name="zephyr",
    specials=MappingProxyType({"<unk>": 0, "<s>": 1, "</s>": 2}),
    eos="</s>",
    bos="<s>",
    bos_in_template=False,
    turn="<|{role}|>\n{content}</s>\n",
    generation_prompt="<|assistant|>\n",
    turns=re.compile(r"<\|(system|user|assistant)\|>\n?(.*?)(?=</s>|<\|(?:system|user|assistant)\|>)", re.S),
)

# How TGI maps an error_type to an HTTP status (server.rs, From<InferError>).
_ERROR_STATUS: dict[str, int] = {
    "generation": 424,
    "overloaded": 429,
    "validation": 422,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "template_error": 422,
    "tool_error": 422,
}

_Json = dict[str, Any]
Responder = Callable[[list[dict[str, str]]], str]


@dataclass(frozen=True)
class Token:
    """One token of the emulated tokenizer; ``start``/``stop`` are character offsets.

    ``special``: one of the template's added tokens or the BOS (TGI's /tokenize does
    not say so; tests inspecting what the model saw do).
    """

    id: int
    text: str
    start: int
    stop: int
    special: bool = False


@dataclass
class Fault:
    """A failure to inject into the next generation request(s).

    ``stall``/``drop``/``error_event`` fire after ``after_tokens`` tokens (clamped so
    that the final event is never sent); ``http_status`` answers at once.
    """

    kind: Literal["stall", "drop", "error_event", "http_status"]
    after_tokens: int = 0
    status: int = 500
    body: str | None = None
    content_type: str = "application/json"
    error: str = "Request failed during generation: Server error: CUDA out of memory"
    error_type: str = "generation"


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int


@dataclass
class RecordedRequest:
    """What the emulator received, for assertions (``body`` is parsed JSON or None)."""

    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _GenToken:
    id: int
    text: str
    logprob: float
    special: bool

    def wire(self) -> _Json:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


class _HttpError(Exception):
    """An answer outside TGI's JSON error shape (axum's plain-text extractor rejections)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _InferError(Exception):
    """TGI's InferError: JSON on plain endpoints, an SSE event on streaming ones."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type

    @property
    def status(self) -> int:
        return _ERROR_STATUS.get(self.error_type, 500)


def _validation(message: str) -> _InferError:
    return _InferError(f"Input validation error: {message}", "validation")


@dataclass
class _Spec:
    """A generation request reduced to what TGI's validation and backend see."""

    kind: Literal["generate", "native_stream", "chat"]
    stream: bool
    inputs: str
    messages: list[dict[str, str]]
    params: _Json
    model: str | None = None
    include_usage: bool = False


@dataclass
class _Plan:
    """The validated request: how many input tokens, the tokens to emit and why it stops."""

    input_length: int
    prefill: list[Token]
    tokens: list[_GenToken]
    finish_reason: str
    seed: int | None


def default_responder(messages: list[dict[str, str]]) -> str:
    """Echo the last user turn, and remember a name, so memory tests have a signal."""
    user_turns = [m.get("content", "") for m in messages if m.get("role") == "user"]
    last = user_turns[-1] if user_turns else ""
    if _NAME_QUESTION.search(last):
        for earlier in reversed(user_turns[:-1]):
            match = _NAME_STATEMENT.search(earlier)
            if match:
                return f"Your name is {match.group(1)}."
        return "I don't know your name yet."
    return f"You said: {last}"


# --- axum/serde-like body checking -------------------------------------------------------

_ParamKind = Literal["bool", "float", "int", "uint", "str", "str_list", "map"]
_EXPECTED: dict[str, str] = {
    "bool": "a boolean",
    "float": "f32",
    "int": "i32",
    "uint": "u32",
    "str": "a string",
    "str_list": "a sequence",
    "map": "a map",
}
# GenerateParameters in TGI's lib.rs: (kind, nullable).
_GENERATE_PARAMS: dict[str, tuple[_ParamKind, bool]] = {
    "best_of": ("uint", True),
    "temperature": ("float", True),
    "repetition_penalty": ("float", True),
    "frequency_penalty": ("float", True),
    "top_k": ("int", True),
    "top_p": ("float", True),
    "typical_p": ("float", True),
    "do_sample": ("bool", False),
    "max_new_tokens": ("uint", True),
    "return_full_text": ("bool", True),
    "stop": ("str_list", False),
    "truncate": ("uint", True),
    "watermark": ("bool", False),
    "details": ("bool", False),
    "decoder_input_details": ("bool", False),
    "seed": ("uint", True),
    "top_n_tokens": ("uint", True),
    "grammar": ("map", True),
    "adapter_id": ("str", True),
}
# ChatRequest in TGI's lib.rs (the fields the emulator reads).
_CHAT_PARAMS: dict[str, tuple[_ParamKind, bool]] = {
    "model": ("str", True),
    "frequency_penalty": ("float", True),
    "presence_penalty": ("float", True),
    "max_tokens": ("uint", True),
    "max_completion_tokens": ("uint", True),
    "stop": ("str_list", True),
    "stream": ("bool", False),
    "seed": ("uint", True),
    "temperature": ("float", True),
    "top_p": ("float", True),
    "logprobs": ("bool", True),
    "stream_options": ("map", True),
    "response_format": ("map", True),
}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "a sequence"
    return "a map"


def _type_ok(kind: _ParamKind, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind in ("int", "uint"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, dict)


def _check_fields(body: _Json, spec: dict[str, tuple[_ParamKind, bool]], prefix: str) -> None:
    """Reject wrongly typed fields the way axum's Json extractor does (422, text/plain)."""
    for name, (kind, nullable) in spec.items():
        if name not in body or (body[name] is None and nullable):
            continue
        value = body[name]
        if not _type_ok(kind, value):
            raise _deser_error(
                f"{prefix}{name}: invalid type: {_describe(value)}, expected {_EXPECTED[kind]}"
            )
        if kind == "uint" and value < 0:
            raise _deser_error(f"{prefix}{name}: invalid value: integer `{value}`, expected u32")


def _deser_error(detail: str) -> _HttpError:
    return _HttpError(
        422,
        f"Failed to deserialize the JSON body into the target type: {detail} at line 1 column 1",
    )


# --- the emulator ------------------------------------------------------------------------


class TGIEmulator:
    """A real HTTP server on 127.0.0.1 that behaves like one TGI 3.x replica.

    Generation takes ``token_delay`` seconds per token on every endpoint, plain ones
    included, and holds one of ``max_concurrent_requests`` slots meanwhile.
    """

    def __init__(
        self,
        *,
        model_id: str = "herald/emulated-7b",
        max_input_tokens: int = 4096,
        max_total_tokens: int = 4608,
        max_concurrent_requests: int = 8,
        token_delay: float = 0.0,
        responder: Responder | None = None,
        version: str = "3.3.6",
        record: bool = True,
        bos: str | None = None,
        template: ChatTemplate = CHATML,
    ) -> None:
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.token_delay = token_delay
        self.responder: Responder = responder or default_responder
        self.version = version
        # Tests assert on `requests` and `prompts`; a long benchmark run turns the
        # recording off so the emulator's heap (and its GC pauses) stay flat.
        self.record = record
        # `bos` makes the template a Llama-style one: it writes `bos` into the text, and
        # the native routes (and /tokenize) add it again as a special token, as TGI does.
        if bos is not None:
            template = replace(template, bos=bos, bos_in_template=True)
        self.template = template
        self.bos = template.bos
        self._special_ids = dict(template.specials)
        if self.bos is not None:
            self._special_ids.setdefault(self.bos, BOS_ID)
        # Longest first, so that no special token is split at a shorter one.
        specials = sorted(self._special_ids, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self.healthy = True
        # SSE field prefix of /generate_stream and the compat route; set to "data: " to
        # exercise the other spelling (TGI.md: clients must accept both).
        self.native_sse_prefix = "data:"
        # Seconds without an event after which a stream gets an SSE comment (axum's default).
        self.keep_alive_interval = 15.0
        # A broken server: streams valid tokens for ever, whatever max_new_tokens says,
        # until the client goes away; `endless_tokens` counts what such streams sent.
        self.endless = False
        self.endless_tokens = 0
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.prompts: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[_PendingFault] = []
        self._active: set[asyncio.BaseTransport] = set()
        self._runner: web.AppRunner | None = None
        self._counters: dict[str, int] = {"request_count": 0, "success": 0, "failure": 0}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, port: int = 0) -> str:
        """Bind 127.0.0.1 (a free port unless one is given) and return the base URL."""
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/chat_tokenize", self._chat_tokenize)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/generate_stream", self._generate_stream)
        app.router.add_post("/", self._compat)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        # handler_cancellation: a client that goes away cancels its generation (and frees
        # its concurrency slot), as TGI does when the SSE receiver is dropped.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Close every connection, stalled streams included, then the listener."""
        for transport in list(self._active):
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TGIEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Make the next ``times`` generation requests (any endpoint) fail this way."""
        if times > 0:
            self._faults.append(_PendingFault(fault, times))

    # -- tokenizer and chat template ------------------------------------------------------

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[Token]:
        """Deterministic word-piece-like tokenizer; token texts concatenate to ``text``.

        `add_special_tokens` prepends the BOS token (offsets 0, 0), as TGI's
        tokenizer does on /tokenize and the native generation routes.
        """
        tokens: list[Token] = []
        if add_special_tokens and self.bos:
            tokens.append(Token(self._special_ids[self.bos], self.bos, 0, 0, special=True))
        offset = 0
        for segment in self._special_split.split(text):
            if not segment:
                continue
            token_id = self._special_ids.get(segment)
            if token_id is not None:  # an added token, wherever it is in the text
                tokens.append(Token(token_id, segment, offset, offset + len(segment), special=True))
                offset += len(segment)
                continue
            for match in _PIECE.finditer(segment):
                piece = match.group()
                for i in range(0, len(piece), MAX_PIECE_CHARS):
                    chunk = piece[i : i + MAX_PIECE_CHARS]
                    token_id = zlib.crc32(chunk.encode()) % VOCAB_SIZE
                    tokens.append(Token(token_id, chunk, offset, offset + len(chunk)))
                    offset += len(chunk)
        return tokens

    def count(self, text: str) -> int:
        return len(self.tokenize(text))

    def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt the model's own template renders, with the generation prompt."""
        t = self.template
        turns = "".join(
            t.turn.format(role=m["role"], content=m["content"].strip() if t.trims else m["content"])
            for m in messages
        )
        bos = t.bos if t.bos and t.bos_in_template else ""
        return f"{bos}{turns}{t.generation_prompt}"

    def parse_template(self, text: str) -> list[dict[str, str]]:
        """The turns the model reads in a prompt, a new one at every turn-opening
        marker, forged or not; any other text is one user message."""
        messages = [
            {"role": role.strip(), "content": content} for role, content in self.template.turns.findall(text)
        ]
        return messages or [{"role": "user", "content": text}]

    # -- middleware and small endpoints ---------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record every request, and render axum-style plain-text rejections."""
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path, body, dict(request.headers)))
        try:
            return await handler(request)
        except _HttpError as err:
            return web.Response(status=err.status, text=err.text, content_type="text/plain")

    def _info_payload(self) -> _Json:
        return {
            "model_id": self.model_id,
            "model_sha": "0123456789abcdef0123456789abcdef01234567",
            "model_dtype": "torch.float16",
            "model_device_type": "cuda",
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": self.version,
            "sha": "emulated",
            "docker_label": None,
        }

    @property
    def _fingerprint(self) -> str:
        return f"{self.version}-native"

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self._info_payload())

    async def _health(self, request: web.Request) -> web.Response:
        if self.healthy:
            return web.Response(status=200)
        return web.json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        c = self._counters
        lines = [
            f"tgi_request_count {c['request_count']}",
            f"tgi_request_success {c['success']}",
            f"tgi_request_failure {c['failure']}",
            "tgi_queue_size 0",
            f"tgi_batch_current_size {self.in_flight}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_id,
                        "object": "model",
                        "created": 0,
                        "owned_by": self.model_id,
                    }
                ],
            }
        )

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise _deser_error(
                "missing field `inputs`"
                if inputs is None
                else f"inputs: invalid type: {_describe(inputs)}, expected a string"
            )
        tokens = self.tokenize(inputs, add_special_tokens=True)
        return web.json_response([self._wire_simple(t) for t in tokens])

    async def _chat_tokenize(self, request: web.Request) -> web.Response:
        spec = self._parse_chat(await self._json_body(request))
        return web.json_response(
            {
                "tokenize_response": [self._wire_simple(t) for t in self.tokenize(spec.inputs)],
                "templated_text": spec.inputs,
            }
        )

    @staticmethod
    def _wire_simple(token: Token) -> _Json:
        return {"id": token.id, "text": token.text, "start": token.start, "stop": token.stop}

    # -- request parsing ------------------------------------------------------------------

    async def _json_body(self, request: web.Request) -> _Json:
        """Axum's Json extractor: 415 without a JSON content type, 400 on bad syntax."""
        if "json" not in request.content_type:
            raise _HttpError(415, "Expected request with `Content-Type: application/json`")
        raw = await request.text()
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise _HttpError(400, f"Failed to parse the request body as JSON: {err}") from err
        if not isinstance(body, dict):
            raise _deser_error(f"invalid type: {_describe(body)}, expected a map")
        return body

    def _parse_generate(self, body: _Json, *, compat: bool) -> _Spec:
        inputs = body.get("inputs")
        if inputs is None:
            raise _deser_error("missing field `inputs`")
        if not isinstance(inputs, str):
            raise _deser_error(f"inputs: invalid type: {_describe(inputs)}, expected a string")
        params = body.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise _deser_error(
                f"parameters: invalid type: {_describe(params)}, expected struct GenerateParameters"
            )
        _check_fields(params, _GENERATE_PARAMS, "parameters.")
        params = dict(params)
        stream = False
        if compat:
            stream_value = body.get("stream", False)
            if not isinstance(stream_value, bool):
                raise _deser_error(f"stream: invalid type: {_describe(stream_value)}, expected a boolean")
            stream = stream_value
            # TGI defaults return_full_text to true on `POST /` for text-generation models.
            if params.get("return_full_text") is None:
                params["return_full_text"] = True
        return _Spec(
            kind="native_stream" if stream else "generate",
            stream=stream,
            inputs=inputs,
            messages=self.parse_template(inputs),
            params=params,
        )

    def _parse_chat(self, body: _Json) -> _Spec:
        raw_messages = body.get("messages")
        if raw_messages is None:
            raise _deser_error("missing field `messages`")
        if not isinstance(raw_messages, list):
            raise _deser_error(f"messages: invalid type: {_describe(raw_messages)}, expected a sequence")
        _check_fields(body, _CHAT_PARAMS, "")
        messages: list[dict[str, str]] = []
        for i, message in enumerate(raw_messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _deser_error(f"messages[{i}]: missing field `role`")
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                content = "".join(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
            elif content is None:
                content = ""
            elif not isinstance(content, str):
                raise _deser_error(f"messages[{i}]: data did not match any variant")
            messages.append({"role": message["role"], "content": content})
        temperature = body.get("temperature")
        presence = body.get("presence_penalty")
        stream_options = body.get("stream_options") or {}
        params: _Json = {
            "max_new_tokens": body.get("max_tokens", body.get("max_completion_tokens")),
            "stop": body.get("stop") or [],
            "seed": body.get("seed"),
            "top_p": body.get("top_p"),
            "frequency_penalty": body.get("frequency_penalty"),
            "repetition_penalty": None if presence is None else presence + 2.0,
            # TGI's chat route: temperature 0 means greedy, anything else samples.
            "do_sample": temperature != 0,
            "temperature": None if temperature == 0 else temperature,
            "details": True,
        }
        stream = bool(body.get("stream", False))
        inputs = self.apply_template(messages)
        return _Spec(
            kind="chat",
            stream=stream,
            inputs=inputs,
            messages=self.parse_template(inputs),  # the model reads tokens, not JSON
            params=params,
            model=body.get("model"),
            include_usage=bool(stream_options.get("include_usage", False)),
        )

    # -- validation and generation plan ---------------------------------------------------

    def _validate(self, spec: _Spec) -> _Plan:
        """TGI's Validation::validate, in TGI's order, then the emulated model's answer."""
        p = spec.params
        best_of = 1 if p.get("best_of") is None else p["best_of"]
        if best_of > 1 and spec.stream:
            raise _validation("`best_of` != 1 is not supported when streaming tokens")
        if best_of < 1 or best_of > 2:
            raise _validation(f"`best_of` must be > 0 and <= 2. Given: {best_of}")
        if p.get("decoder_input_details") and spec.stream:
            raise _validation("`decoder_input_details` == true is not supported when streaming tokens")
        grammar = p.get("grammar")
        if grammar is not None and grammar.get("type") not in ("json", "regex", "json_schema"):
            raise _deser_error(
                f"parameters.grammar: unknown variant `{grammar.get('type')}`, expected "
                "one of `json`, `regex`, `json_schema`"
            )
        temperature = p.get("temperature")
        if temperature is not None and temperature <= 0:
            raise _validation("`temperature` must be strictly positive")
        repetition_penalty = p.get("repetition_penalty")
        if repetition_penalty is not None and repetition_penalty <= 0:
            raise _validation("`repetition_penalty` must be strictly positive")
        frequency_penalty = p.get("frequency_penalty")
        if frequency_penalty is not None and not -2.0 <= frequency_penalty <= 2.0:
            raise _validation("`frequency_penalty` must be >= -2.0 and <= 2.0")
        top_p = p.get("top_p")
        if top_p is not None and not 0.0 < top_p < 1.0:
            raise _validation("`top_p` must be > 0.0 and < 1.0")
        typical_p = p.get("typical_p")
        if typical_p is not None and not 0.0 < typical_p < 1.0:
            raise _validation("`typical_p` must be > 0.0 and < 1.0")
        top_k = p.get("top_k")
        if top_k is not None and top_k <= 0:
            raise _validation("`top_k` must be strictly positive")
        max_new_tokens: int | None = p.get("max_new_tokens")
        if max_new_tokens == 0:
            raise _validation("`max_new_tokens` must be strictly positive")
        stop: list[str] = p.get("stop") or []
        if len(stop) > 4:
            raise _validation(f"`stop` supports up to 4 stop sequences. Given: {len(stop)}")
        if not spec.inputs:
            raise _validation("`inputs` cannot be empty")
        truncate: int | None = p.get("truncate")
        if truncate is not None and (truncate == 0 or truncate > self.max_input_tokens):
            raise _validation(
                "`truncate` must be strictly positive and less than "
                f"{self.max_input_tokens}. Given: {truncate}"
            )

        # The chat route's template already holds the BOS; the native routes add one.
        prompt_tokens = self.tokenize(spec.inputs, add_special_tokens=spec.kind != "chat")
        input_length = len(prompt_tokens)
        if truncate is not None:
            input_length = min(input_length, truncate)
            prompt_tokens = prompt_tokens[len(prompt_tokens) - input_length :]
        if max_new_tokens is not None:
            budget = max_new_tokens
            checked = min(max_new_tokens, DEFAULT_GENERATION_LENGTH)
        else:  # TGI lets the request run to max_total_tokens
            budget = max(self.max_total_tokens - input_length, 0)
            checked = min(budget, DEFAULT_GENERATION_LENGTH)
        # TGI checks the total before the input length (validation.rs validate_input).
        if input_length + checked > self.max_total_tokens:
            raise _validation(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {checked} `max_new_tokens`"
            )
        if input_length > self.max_input_tokens:
            raise _validation(
                f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {input_length}"
            )

        answer = self.responder([dict(m) for m in spec.messages])
        tokens, finish_reason = self._decode(answer, budget, stop)
        sampling = bool(p.get("do_sample"))
        seed: int | None = p.get("seed")
        if sampling and seed is None:
            seed = zlib.crc32(spec.inputs.encode())
        prefill = prompt_tokens if p.get("decoder_input_details") else []
        return _Plan(input_length, prefill, tokens, finish_reason, seed if sampling else None)

    def _decode(self, answer: str, budget: int, stop: list[str]) -> tuple[list[_GenToken], str]:
        """The answer's tokens, then EOS (special), cut at a stop sequence or the budget."""
        pieces = [_GenToken(t.id, t.text, self._logprob(t.id), t.special) for t in self.tokenize(answer)]
        eos = self.template.eos
        pieces.append(_GenToken(self._special_ids[eos], eos, -0.0625, True))
        out: list[_GenToken] = []
        text = ""
        for piece in pieces:
            if len(out) >= budget:
                return out, "length"
            out.append(piece)
            if piece.special and piece.text == eos:
                return out, "eos_token"
            text += piece.text
            if any(text.endswith(s) for s in stop if s):
                return out, "stop_sequence"
        return out, "eos_token"  # pragma: no cover - the EOS piece always ends the loop

    @staticmethod
    def _logprob(token_id: int) -> float:
        return -round((token_id % 997) / 997, 4)

    @staticmethod
    def _visible(tokens: list[_GenToken]) -> str:
        return "".join(t.text for t in tokens if not t.special)

    # -- generation endpoints -------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        spec = self._parse_generate(await self._json_body(request), compat=False)
        return await self._run(request, spec)

    async def _generate_stream(self, request: web.Request) -> web.StreamResponse:
        spec = self._parse_generate(await self._json_body(request), compat=False)
        spec.kind, spec.stream = "native_stream", True
        return await self._run(request, spec)

    async def _compat(self, request: web.Request) -> web.StreamResponse:
        spec = self._parse_generate(await self._json_body(request), compat=True)
        return await self._run(request, spec, compat=True)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        spec = self._parse_chat(await self._json_body(request))
        return await self._run(request, spec)

    def _take_fault(self) -> Fault | None:
        if not self._faults:
            return None
        pending = self._faults[0]
        pending.remaining -= 1
        if pending.remaining <= 0:
            self._faults.pop(0)
        return pending.fault

    async def _run(self, request: web.Request, spec: _Spec, *, compat: bool = False) -> web.StreamResponse:
        """Admission, validation, then plain or streamed generation, as TGI orders them."""
        self._counters["request_count"] += 1
        if self.record:  # what the model sees, special tokens included
            added = self.bos if self.bos and spec.kind != "chat" else ""
            self.prompts.append(added + spec.inputs)
        fault = self._take_fault()
        if fault is not None and fault.kind == "http_status":
            self._counters["failure"] += 1
            if fault.body is None:
                return web.json_response(
                    {"error": fault.error, "error_type": fault.error_type}, status=fault.status
                )
            return web.Response(
                status=fault.status,
                body=fault.body.encode(),
                headers={"Content-Type": fault.content_type},
            )
        if self.in_flight >= self.max_concurrent_requests:
            self._counters["failure"] += 1
            return await self._fail(request, spec, _InferError("Model is overloaded", "overloaded"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        transport = request.transport
        if transport is not None:
            self._active.add(transport)
        try:
            try:
                plan = self._validate(spec)
            except _InferError as err:
                self._counters["failure"] += 1
                return await self._fail(request, spec, err)
            if not spec.stream:
                return await self._plain(request, spec, plan, fault, compat=compat)
            response = await self._open_sse(request)
            with contextlib.suppress(ConnectionError):  # the client went away mid-stream
                await self._stream(request, response, spec, plan, fault)
            return response
        finally:
            self.in_flight -= 1
            if transport is not None:
                self._active.discard(transport)

    async def _fail(self, request: web.Request, spec: _Spec, err: _InferError) -> web.StreamResponse:
        """Plain endpoints answer the error status; streams answer 200 and one error event."""
        if not spec.stream:
            return web.json_response({"error": err.message, "error_type": err.error_type}, status=err.status)
        response = await self._open_sse(request)
        with contextlib.suppress(ConnectionError):
            await self._send_error_event(response, spec, err)
            await response.write_eof()
        return response

    async def _open_sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        await response.prepare(request)
        return response

    async def _sse(self, response: web.StreamResponse, spec: _Spec, data: Any) -> None:
        prefix = "data: " if spec.kind == "chat" else self.native_sse_prefix
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        await response.write(f"{prefix}{text}\n\n".encode())

    async def _send_error_event(self, response: web.StreamResponse, spec: _Spec, err: _InferError) -> None:
        if spec.kind == "chat":
            # TGI's into_openai_event: the code is 422 whatever the cause; [DONE] follows.
            await self._sse(response, spec, {"error": {"message": err.message, "http_status_code": 422}})
            await self._sse(response, spec, "[DONE]")
        else:
            await self._sse(response, spec, {"error": err.message, "error_type": err.error_type})

    async def _apply_fault(
        self, request: web.Request, response: web.StreamResponse | None, fault: Fault
    ) -> None:
        """Stall (until the client leaves or stop()) or abort the connection; never return."""
        if fault.kind == "drop" and request.transport is not None:
            request.transport.abort()
        # A stalled TGI stream still gets axum's keep-alive comments; handler_cancellation
        # ends this wait when the connection closes.
        await self._wait(response, None)

    @staticmethod
    def _fault_point(fault: Fault | None, plan: _Plan) -> int | None:
        if fault is None:
            return None
        return max(0, min(fault.after_tokens, len(plan.tokens) - 1))

    async def _wait(self, response: web.StreamResponse | None, seconds: float | None) -> None:
        """Sleep (forever if ``seconds`` is None), sending SSE keep-alives on ``response``."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            left = math.inf if deadline is None else deadline - loop.time()
            if left <= 0:
                return
            if response is None or left <= self.keep_alive_interval:
                await asyncio.sleep(min(left, 3600.0))
                continue
            await asyncio.sleep(self.keep_alive_interval)
            await response.write(b":\n\n")

    async def _plain(
        self, request: web.Request, spec: _Spec, plan: _Plan, fault: Fault | None, *, compat: bool
    ) -> web.StreamResponse:
        fault_at = self._fault_point(fault, plan)
        for index in range(len(plan.tokens)):
            if fault is not None and index == fault_at:
                if fault.kind == "error_event":
                    self._counters["failure"] += 1
                    err = _InferError(fault.error, fault.error_type)
                    return web.json_response(
                        {"error": err.message, "error_type": err.error_type}, status=err.status
                    )
                await self._apply_fault(request, None, fault)
            await self._wait(None, self.token_delay)
        self._counters["success"] += 1
        text = self._visible(plan.tokens)
        headers = {
            "x-compute-type": "gpu+optimized",
            "x-prompt-tokens": str(plan.input_length),
            "x-generated-tokens": str(len(plan.tokens)),
        }
        if spec.kind == "chat":
            return web.json_response(self._chat_completion(spec, plan, text), headers=headers)
        if spec.params.get("return_full_text"):
            text = spec.inputs + text
        answer: _Json = {"generated_text": text}
        if spec.params.get("details") or spec.params.get("decoder_input_details"):
            answer["details"] = {
                "finish_reason": plan.finish_reason,
                "generated_tokens": len(plan.tokens),
                "seed": plan.seed,
                "prefill": [
                    {"id": t.id, "text": t.text, "logprob": None if i == 0 else self._logprob(t.id)}
                    for i, t in enumerate(plan.prefill)
                ],
                "tokens": [t.wire() for t in plan.tokens],
            }
        return web.json_response([answer] if compat else answer, headers=headers)

    def _chat_model(self, spec: _Spec) -> str:
        return self.model_id if spec.model in (None, "tgi") else str(spec.model)

    @staticmethod
    def _chat_finish(finish_reason: str) -> str:
        return "stop" if finish_reason == "eos_token" else finish_reason

    def _usage(self, plan: _Plan) -> _Json:
        return {
            "prompt_tokens": plan.input_length,
            "completion_tokens": len(plan.tokens),
            "total_tokens": plan.input_length + len(plan.tokens),
        }

    def _chat_completion(self, spec: _Spec, plan: _Plan, text: str) -> _Json:
        return {
            "object": "chat.completion",
            "id": "",
            "created": int(time.time()),
            "model": self._chat_model(spec),
            "system_fingerprint": self._fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": self._chat_finish(plan.finish_reason),
                }
            ],
            "usage": self._usage(plan),
        }

    def _chat_chunk(self, spec: _Spec, choices: list[_Json], usage: _Json | None) -> _Json:
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": int(time.time()),
            "model": self._chat_model(spec),
            "system_fingerprint": self._fingerprint,
            "choices": choices,
            "usage": usage,
        }

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        spec: _Spec,
        plan: _Plan,
        fault: Fault | None,
    ) -> None:
        if self.endless:
            await self._stream_endless(response, spec, plan)
            return
        fault_at = self._fault_point(fault, plan)
        last = len(plan.tokens) - 1
        for index, token in enumerate(plan.tokens):
            if fault is not None and index == fault_at:
                if fault.kind == "error_event":
                    self._counters["failure"] += 1
                    err = _InferError(fault.error, fault.error_type)
                    await self._send_error_event(response, spec, err)
                    await response.write_eof()
                    return
                await self._apply_fault(request, response, fault)
            await self._wait(response, self.token_delay)
            final = index == last
            if spec.kind == "chat":
                choice = {
                    "index": 0,
                    # TGI sends "" for a special token (the EOS), never null.
                    "delta": {"role": "assistant", "content": "" if token.special else token.text},
                    "logprobs": None,
                    "finish_reason": self._chat_finish(plan.finish_reason) if final else None,
                }
                await self._sse(response, spec, self._chat_chunk(spec, [choice], None))
            else:
                event: _Json = {
                    "index": index + 1,
                    "token": token.wire(),
                    "generated_text": None,
                    "details": None,
                }
                if final:
                    text = self._visible(plan.tokens)
                    if spec.params.get("return_full_text"):
                        text = spec.inputs + text
                    event["generated_text"] = text
                    if spec.params.get("details"):
                        event["details"] = {
                            "finish_reason": plan.finish_reason,
                            "generated_tokens": len(plan.tokens),
                            "seed": plan.seed,
                            "input_length": plan.input_length,
                        }
                await self._sse(response, spec, event)
        if spec.kind == "chat":
            if spec.include_usage:  # TGI 3.x: a separate chunk, choices empty
                await self._sse(response, spec, self._chat_chunk(spec, [], self._usage(plan)))
            await self._sse(response, spec, "[DONE]")
        self._counters["success"] += 1
        await response.write_eof()

    async def _stream_endless(self, response: web.StreamResponse, spec: _Spec, plan: _Plan) -> None:
        """The answer's text tokens over and over, never a final event. Ends only when the
        client goes away: the write fails, or handler_cancellation cancels this."""
        tokens = [t for t in plan.tokens if not t.special] or [_GenToken(7, " la", -0.5, False)]
        index = 0
        while True:
            await asyncio.sleep(self.token_delay)  # yields even at 0: tests share this loop
            token = tokens[index % len(tokens)]
            index += 1
            if spec.kind == "chat":
                delta = {"role": "assistant", "content": token.text}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                await self._sse(response, spec, self._chat_chunk(spec, [choice], None))
            else:
                event = {"index": index, "token": token.wire(), "generated_text": None, "details": None}
                await self._sse(response, spec, event)
            self.endless_tokens += 1


# --- standalone server -------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    emulator = TGIEmulator(
        model_id=args.model_id,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        token_delay=args.token_delay,
    )
    url = await emulator.start(port=args.port)
    print(f"TGI emulator serving {emulator.model_id} at {url} (Ctrl-C to stop)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator until Ctrl-C (used by benchmarks)."""
    parser = argparse.ArgumentParser(description="Emulated TGI server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--max-input-tokens", type=int, default=4096)
    parser.add_argument("--max-total-tokens", type=int, default=4608)
    parser.add_argument("--max-concurrent-requests", type=int, default=8)
    parser.add_argument("--model-id", default="herald/emulated-7b")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

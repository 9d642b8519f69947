"""The built-in model's own process: llama.cpp through the llama-cpp-python binding,
served over loopback HTTP to the Herald process that started it. Run only by
`LocalModelProcess` (`python -m bots.local_model.server`).

Routes, named after llama.cpp's own server:
- `GET /props`: the model's file, context size and threads;
- `POST /apply-template`: messages rendered with the model's own chat template,
  and the exact number of tokens `/completion` will read for that text;
- `POST /tokenize`: a text's token count;
- `POST /completion`: a streamed completion (OpenAI's `text_completion` chunks
  as server-sent events, then `[DONE]`), a JSON schema enforced as a grammar.

Not llama-cpp-python's own server: that one hands every token from a worker
thread to its event loop and back (measured: a third of the speed of a small
model lost), and may run llama.cpp from several threads, each with its own
OpenMP team. Here one thread does all of the generating, hands tokens over
without waiting, and stops between two tokens when Herald closes the stream.
Counting uses a vocabulary-only copy, so it answers while the model generates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

API_KEY_ENV = "HERALD_LOCAL_MODEL_KEY"
#: printed on stdout once the model is loaded and the routes are ready
READY = "herald-model-ready"
#: after the first token, at most one event this often (seconds)
FLUSH_EVERY = 0.01
#: printed on stderr when Herald closes a stream (`/cancel`): generation stops there
STREAM_CLOSED = "stream closed by Herald: generation stopped"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Messages(BaseModel):
    messages: list[dict[str, str]]


class Text(BaseModel):
    content: str


class Completion(BaseModel):
    prompt: str
    max_tokens: int = Field(ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    repeat_penalty: float = Field(default=1.0, gt=0)
    seed: int | None = Field(default=None, ge=0)
    stop: list[str] = Field(default_factory=list)
    json_schema: dict[str, Any] | None = None


Item = dict[str, Any] | Exception | None


class Handoff:
    """Chunks from the generating thread to the event loop. The thread wakes the loop
    only when the loop waits for it, not for every token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[Item] = []
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Item) -> None:
        """On the generating thread."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)

    async def take(self) -> list[Item]:
        """Everything put so far, waiting for at least one item."""
        with self._lock:
            if not self._items:
                self._waiter = waiter = self._loop.create_future()
            else:
                waiter = None
        if waiter is not None:
            await waiter
        with self._lock:
            items, self._items = self._items, []
        return items


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _merged(chunks: list[dict[str, Any]], tokens: int | None) -> dict[str, Any]:
    """Consecutive `text_completion` chunks as one: their texts joined, the last one's
    finish reason; the last of a stream also says how many tokens were generated."""
    merged = dict(chunks[-1])
    last = dict(merged["choices"][0])
    last["text"] = "".join(str(c["choices"][0].get("text") or "") for c in chunks)
    merged["choices"] = [last]
    if tokens is not None:
        merged["usage"] = _usage(tokens)
    return merged


def _usage(tokens: int) -> dict[str, int]:
    return {"completion_tokens": tokens}


class ModelServer:
    """The model, its tokenizer and template, and the one thread that generates."""

    def __init__(self, model: str, context: int, threads: int, api_key: str | None) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama = llama_cpp.Llama(
            model_path=model,
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            use_mlock=False,
            verbose=False,
        )
        self.vocab = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
        template = self.vocab.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the model file has no chat template (tokenizer.chat_template)")
        self.bos = self._token_text(self.vocab.token_bos())
        eos = self._token_text(self.vocab.token_eos())
        self.formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=self.bos)
        self.props = {
            "model_path": model,
            "model_id": os.path.basename(model),
            "n_ctx": context,
            "n_threads": threads,
        }
        self.api_key = api_key
        # One thread for every generation: llama.cpp keeps one OpenMP team per calling thread
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._turn = asyncio.Lock()  # one generation at a time
        self._grammars: dict[str, Any] = {}

    def _token_text(self, token: int) -> str:
        """A special token's text, as the template writes it ("" where the model has none)."""
        if token < 0:
            return ""
        return str(self.vocab.detokenize([token], special=True).decode("utf-8", "replace"))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/health", self.health)
        app.router.add_get("/props", self.get_props)
        app.router.add_post("/apply-template", self.apply_template)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/completion", self.completion)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.api_key and request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return _error(401, "invalid API key", "authentication_error")
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_props(self, request: web.Request) -> web.Response:
        return web.json_response(self.props)

    def count(self, text: str) -> int:
        """What `/completion` reads: BOS where the model wants one, then the text with
        its special tokens parsed."""
        return len(self.vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    async def apply_template(self, request: web.Request) -> web.Response:
        body = await _parse(request, Messages)
        try:
            prompt = str(self.formatter(messages=body.messages).prompt)  # type: ignore[arg-type]
        except Exception as exc:  # a template that refuses these messages (jinja's raise_exception)
            return _error(422, f"the chat template refused the messages: {exc}")
        if self.bos and prompt.startswith(self.bos):
            prompt = prompt[len(self.bos) :]  # llama.cpp adds BOS itself: never twice
        return web.json_response({"prompt": prompt, "tokens": self.count(prompt)})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await _parse(request, Text)
        tokens = self.vocab.tokenize(body.content.encode("utf-8"), add_bos=False, special=False)
        return web.json_response({"count": len(tokens)})

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """The llama.cpp grammar for a JSON schema, built once per schema."""
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_string(json_schema_to_gbnf(key), verbose=False)
        return self._grammars[key]

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await _parse(request, Completion)
        try:
            grammar = None if body.json_schema is None else self._grammar(body.json_schema)
        except Exception as exc:
            return _error(422, f"unsupported JSON schema: {exc}")
        async with self._turn:
            return await self._stream(request, body, grammar)

    async def _stream(self, request: web.Request, body: Completion, grammar: Any) -> web.StreamResponse:
        handoff = Handoff(asyncio.get_running_loop())
        stop = threading.Event()

        def generate() -> None:  # on the worker thread
            try:
                for chunk in self._chunks(body, grammar):
                    if stop.is_set():  # Herald closed the stream: stop between two tokens
                        break
                    handoff.put(chunk)
            except Exception as exc:
                handoff.put(exc)
            finally:
                handoff.put(None)

        generating = asyncio.get_running_loop().run_in_executor(self._worker, generate)
        try:
            batch = await handoff.take()
            if isinstance(batch[0], Exception):  # before any token: a plain HTTP error
                return _error(400 if isinstance(batch[0], ValueError) else 500, str(batch[0]))
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            try:
                await self._send_all(response, handoff, batch)
            except ConnectionResetError:
                print(STREAM_CLOSED, file=sys.stderr, flush=True)
            return response
        finally:
            stop.set()
            await asyncio.wait([generating])  # the model is free before the next turn

    @staticmethod
    async def _send_all(response: web.StreamResponse, handoff: Handoff, batch: list[Item]) -> None:
        """Send what the model writes, the first token at once, then at most one event
        per `FLUSH_EVERY` (every token that came meanwhile, in one chunk): fewer
        wake-ups and writes here and fewer events for Herald, which edits messages
        far less often anyway; the CPU saved is the model's on a small machine."""
        tokens = 0
        while True:
            chunks = [item for item in batch if isinstance(item, dict)]
            tokens += sum(
                1 for c in chunks if c["choices"][0].get("finish_reason") is None
            )  # the last says why only
            end = batch[-1]
            merged = _merged(chunks, tokens if end is None else None) if chunks else None
            if merged is not None:
                await _send(response, merged)
            elif end is None:  # the stream's end came alone: its token count still goes
                await _send(response, {"object": "text_completion", "choices": [], "usage": _usage(tokens)})
            if isinstance(end, Exception):
                await _send(response, {"error": {"message": str(end), "type": "server_error"}})
                return
            if end is None:
                await response.write(b"data: [DONE]\n\n")
                return
            if merged is not None and merged["choices"][0]["text"]:  # text shown: pause a moment
                await asyncio.sleep(FLUSH_EVERY)
            batch = await handoff.take()

    def _chunks(self, body: Completion, grammar: Any) -> Iterator[dict[str, Any]]:
        return self.llama.create_completion(  # type: ignore[return-value]
            body.prompt,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            repeat_penalty=body.repeat_penalty,
            seed=body.seed,
            stop=body.stop,
            grammar=grammar,
            stream=True,
        )


M = TypeVar("M", bound=BaseModel)


async def _parse(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        raise web.HTTPUnprocessableEntity(
            text=json.dumps({"error": {"message": str(exc), "type": "invalid_request_error"}}),
            content_type="application/json",
        ) from None


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bots.local_model.server")
    parser.add_argument("--model", required=True, help="path to the .gguf file")
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    listener = socket.socket(fileno=args.fd)
    api_key = os.environ.pop(API_KEY_ENV, None)

    async def serve() -> web.Application:
        try:
            server = ModelServer(args.model, args.context, args.threads, api_key)
        except Exception as exc:  # reported by the parent as the reason start-up failed
            print(f"cannot load the model: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        print(READY, flush=True)
        return server.app()

    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(serve(), sock=listener, print=None, shutdown_timeout=2, access_log=None)
    return 0


if __name__ == "__main__":  # pragma: no cover - the child process
    sys.exit(main())

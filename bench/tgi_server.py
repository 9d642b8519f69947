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

Two options for the streaming benchmarks (`bench.streaming_discord`), both off by default:
`--bench-answers` answers a prompt whose last user turn holds ``n=<tokens>`` (e.g.
``bench c=123 n=340 r=50``) with a text of exactly that many tokens, EOS included (other
prompts get the tests' echo), streamed at ``r=`` tokens per second where given (else
`--token-delay`); `--record-times PATH` appends one JSON line per finished stream:
``{"tag", "received", "first", "last_text", "end", "tokens"}``, where ``tag`` is the last
``c=<id>`` in the prompt (null without one), ``received`` the `time.monotonic()` at which
the request, read and admitted, began its stream, ``first`` / ``last_text`` the same for
the first / last token with visible text written to the socket, ``end`` the same for
the final event (the EOS and finish reason), ``tokens`` the events sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from tests.emulators.tgi import TGIEmulator, default_responder

_TOKENS = re.compile(r"\bn=(\d+)")
_TAG = re.compile(r"\bc=(\d+)")
_RATE = re.compile(r"\br=(\d+(?:\.\d+)?)")
_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
_WORDS += ["hotel", "india", "juliet", "kilo", "lima", "mike"]


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


class _Times:
    __slots__ = ("end", "first", "last_text", "received", "tag", "tokens")

    def __init__(self, tag: str | None) -> None:
        self.tag = tag
        self.received = time.monotonic()
        self.first: float | None = None
        self.last_text: float | None = None
        self.end: float | None = None
        self.tokens = 0


_current: contextvars.ContextVar[_Times | None] = contextvars.ContextVar("bench_tgi_times", default=None)
_delay: contextvars.ContextVar[float | None] = contextvars.ContextVar("bench_tgi_delay", default=None)


class TimedEmulator(SlottedEmulator):
    """`SlottedEmulator` that writes each stream's token times to `times_out` (JSON lines), and
    streams a prompt holding ``r=<tokens per second>`` (last user turn) at that rate."""

    def __init__(self, *, times_out: IO[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._times_out = times_out

    async def _stream(self, *args: Any, **kwargs: Any) -> None:
        spec = args[2] if len(args) > 2 else kwargs["spec"]
        tags = _TAG.findall(spec.inputs)
        rates = _RATE.findall(spec.inputs)
        times = _Times(tags[-1] if tags else None)
        token = _current.set(times)
        delay = _delay.set(1 / float(rates[-1]) if rates and float(rates[-1]) > 0 else None)
        try:
            await super()._stream(*args, **kwargs)
        finally:
            _current.reset(token)
            _delay.reset(delay)
            if self._times_out is not None:
                row = {s: getattr(times, s) for s in _Times.__slots__}
                self._times_out.write(json.dumps(row) + "\n")
                self._times_out.flush()

    async def _wait(self, response: Any, seconds: float | None) -> None:
        delay = _delay.get()
        if delay is not None and seconds is not None and seconds == self.token_delay:
            seconds = delay
        await super()._wait(response, seconds)

    async def _sse(self, response: Any, spec: Any, data: Any) -> None:
        await super()._sse(response, spec, data)
        times = _current.get()
        if times is None or not isinstance(data, dict):
            return
        now = time.monotonic()
        if "choices" in data:  # OpenAI chat chunk
            choices = data["choices"]
            if not choices:
                return
            text = bool(choices[0].get("delta", {}).get("content"))
            final = choices[0].get("finish_reason") is not None
        elif "token" in data:  # TGI native event
            text = not data["token"].get("special") and bool(data["token"].get("text"))
            final = data.get("generated_text") is not None
        else:
            return
        times.tokens += 1
        if text:
            if times.first is None:
                times.first = now
            times.last_text = now
        if final:
            times.end = now


def bench_answer(count: int, tokenize: Any) -> str:
    """A text of words and full stops that the emulator's tokenizer cuts into `count` tokens:
    it starts with "alpha" and ends with "omega", found nowhere else in it."""
    words: list[str] = []
    while len(words) < count:
        index = len(words)
        words.append(" " + _WORDS[index % len(_WORDS)] + ("." if index % 12 == 11 else ""))
    text = "".join(words).lstrip()
    pieces = [t.text for t in tokenize(text)[: max(count - 1, 0)]]
    return ("".join(pieces) + " omega").lstrip()


def bench_responder(tokenize: Any) -> Any:
    """Answers ``n=<tokens>`` in the last user turn with `bench_answer` (n − 1: EOS is one)."""

    def respond(messages: list[dict[str, str]]) -> str:
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        found = _TOKENS.findall(users[-1]) if users else []
        if not found:
            return default_responder(messages)
        return bench_answer(max(int(found[-1]) - 1, 1), tokenize)

    return respond


async def serve(
    port: int,
    max_concurrent_requests: int,
    token_delay: float,
    slots: int | None,
    *,
    bench_answers: bool = False,
    record_times: Path | None = None,
) -> None:
    out = record_times.open("a", encoding="utf-8") if record_times is not None else None
    options: dict[str, Any] = dict(
        max_concurrent_requests=max_concurrent_requests, token_delay=token_delay, record=False, slots=slots
    )
    timed = out is not None or bench_answers
    emulator = TimedEmulator(times_out=out, **options) if timed else SlottedEmulator(**options)
    if bench_answers:
        emulator.responder = bench_responder(emulator.tokenize)
    url = await emulator.start(port=port)
    gc.collect()
    gc.freeze()
    print(f"TGI emulator (bench) at {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
        if out is not None:
            out.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The TGI emulator, streaming instantly, for benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-concurrent-requests", type=int, default=1000, help="admitted; beyond: 429")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    parser.add_argument("--slots", type=int, default=None, help="generating at once (default: all admitted)")
    parser.add_argument(
        "--bench-answers", action="store_true", help="answer n=<tokens> in the prompt with that many tokens"
    )
    parser.add_argument(
        "--record-times", type=Path, default=None, help="append each stream's token times here (JSON lines)"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                args.port,
                args.max_concurrent_requests,
                args.token_delay,
                args.slots,
                bench_answers=args.bench_answers,
                record_times=args.record_times,
            )
        )


if __name__ == "__main__":
    main()

"""Tests for core.chat.render.StreamRenderer, in virtual time against an in-memory surface."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from core.chat.render import RenderResult, StreamRenderer
from core.chat.splitting import split_message
from core.pacing import Bucket, Rate
from core.platform import (
    Button,
    CallKind,
    Capabilities,
    LengthUnit,
    MessageNotModified,
    MessageRef,
    PlatformError,
    PlatformRateLimited,
    Surface,
)

T = TypeVar("T")
EPS = 1e-9

# ---------------------------------------------------------------- virtual time


class VirtualTime:
    """A fake clock whose sleeps only end when every task is idle.

    `run(coro)` drives the event loop: it lets all runnable tasks run, then jumps
    the clock to the earliest pending sleep and wakes it. Relative timing of
    concurrent tasks is therefore exact, and a 60-second stream takes no time.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.now + max(delay, 0.0), next(self._seq), fut))
        await fut

    async def run(self, coro: Coroutine[Any, Any, T], horizon: float = 3600.0) -> T:
        task = asyncio.ensure_future(coro)
        while True:
            for _ in range(50):  # let everything runnable run
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            while self._heap and self._heap[0][2].done():
                heapq.heappop(self._heap)
            if not self._heap:
                task.cancel()
                raise AssertionError("deadlock: the script waits and nothing sleeps")
            when, _, fut = heapq.heappop(self._heap)
            assert when < horizon, "virtual time ran away (busy loop?)"
            self.now = max(self.now, when)
            fut.set_result(None)


# ---------------------------------------------------------------- surface


@dataclass
class Call:
    kind: str  # typing / send / edit
    at: float
    text: str = ""
    ref: str = ""
    reply_to: str | None = None
    error: str | None = None


@dataclass
class FakeSurface(Surface):
    """An in-memory chat that records every call with its virtual time.

    `errors[n]` is raised by the n-th send/edit call (0-based, failed calls
    count); `error_when(call)` can decide per call too; `latency` makes each
    call take virtual time.
    """

    vt: VirtualTime
    caps: Capabilities
    latency: float = 0.0
    errors: dict[int, BaseException] = field(default_factory=dict)
    error_when: Callable[[Call], BaseException | None] | None = None
    typing_error: BaseException | None = None
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)  # every text a message had
    _n: int = 0

    @property
    def capabilities(self) -> Capabilities:
        return self.caps

    async def typing(self) -> None:
        self.calls.append(Call("typing", self.vt.now))
        if self.typing_error is not None:
            raise self.typing_error

    def _maybe_fail(self, call: Call) -> None:
        n = self._n
        self._n += 1
        exc = self.errors.get(n) or (self.error_when(call) if self.error_when else None)
        if exc is not None:
            call.error = type(exc).__name__
            raise exc

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        if self.latency:
            await self.vt.sleep(self.latency)
        call = Call("send", self.vt.now, text, reply_to=reply_to.id if reply_to else None)
        self.calls.append(call)
        self._maybe_fail(call)
        assert self.caps.measure(text) <= self.caps.max_length
        ref = MessageRef(f"m{len(self.messages) + 1}")
        call.ref = ref.id
        self.messages[ref.id] = text
        self.history[ref.id] = [text]
        return ref

    async def edit(self, ref: MessageRef, text: str) -> None:
        if self.latency:
            await self.vt.sleep(self.latency)
        call = Call("edit", self.vt.now, text, ref=ref.id)
        self.calls.append(call)
        assert ref.id in self.messages, "edit of a message that was never sent"
        self._maybe_fail(call)
        assert self.caps.measure(text) <= self.caps.max_length
        self.messages[ref.id] = text
        self.history[ref.id].append(text)

    # views
    def platform_calls(self, ok_only: bool = False) -> list[Call]:
        return [c for c in self.calls if c.kind != "typing" and (not ok_only or c.error is None)]

    @property
    def texts(self) -> list[str]:
        return list(self.messages.values())


def make(
    caps: Capabilities | None = None, **surface_kw: Any
) -> tuple[VirtualTime, FakeSurface, Callable[..., StreamRenderer]]:
    vt = VirtualTime()
    surface = FakeSurface(vt, caps or Capabilities(max_length=2000, min_edit_interval=1.0), **surface_kw)

    def renderer(**kw: Any) -> StreamRenderer:
        return StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep, **kw)

    return vt, surface, renderer


async def stream(vt: VirtualTime, r: StreamRenderer, tokens: list[str], gap: float) -> None:
    for tok in tokens:
        await r.feed(tok)
        await vt.sleep(gap)


def words(n: int) -> list[str]:
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    out = []
    for i in range(n):
        w = vocab[i % len(vocab)]
        out.append((" " if i else "") + w + ("." if i % 11 == 10 else "") + ("\n\n" if i % 37 == 36 else ""))
    return out


def open_fence(text: str) -> str | None:
    marker: str | None = None
    for line in text.split("\n"):
        if marker is None:
            m = re.match(r"[ \t]*(`{3,}|~{3,})(.*)", line)
            if m and not (m[1][0] == "`" and "`" in m[2]):
                marker = m[1]
        else:
            m = re.fullmatch(r"[ \t]*(`{3,}|~{3,})[ \t\r]*", line)
            if m and m[1][0] == marker[0] and len(m[1]) >= len(marker):
                marker = None
    return marker


def assert_spacing(calls: list[Call], interval: float) -> None:
    for a, b in itertools.pairwise(calls):
        assert b.at - a.at >= interval - EPS, (a, b)


# ---------------------------------------------------------------- tests


async def test_first_send_on_first_visible_token() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await vt.sleep(0.3)
        await r.feed("  \n")  # whitespace is not visible output
        await vt.sleep(0.3)
        assert surface.platform_calls() == []
        await r.feed("Hel")
        await vt.sleep(0.01)
        await r.feed("lo")
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    assert calls[0].kind == "send"
    assert calls[0].at == pytest.approx(0.6)  # no waiting for an interval
    assert calls[0].text == "Hel"
    assert calls[1].kind == "edit" and calls[1].at >= calls[0].at + 1.0 - EPS
    assert surface.texts == ["Hello"]
    assert result.parts == ("Hello",) and result.sends == 1 and result.edits == 1
    assert result.delivered


async def test_long_fast_stream_is_coalesced() -> None:
    vt, surface, renderer = make()
    tokens = words(2000)  # 2000 tokens, 10 ms apart: a 20 s stream
    full = "".join(tokens)

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await stream(vt, r, tokens, 0.01)
        assert r.text == full
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    duration = vt.now
    assert len(calls) <= duration / 1.0 + 3
    assert_spacing(calls, 1.0)
    assert result.parts == tuple(split_message(full, 2000))
    assert surface.texts == list(result.parts)
    assert result.sends == len(result.parts) and result.sends + result.edits == len(calls)
    # no busy loop: a bounded number of sleeps besides the stream's own 2000
    assert vt.sleeps - 2000 <= 3 * len(calls) + 10


async def test_continuation_parts_are_replies_within_limit() -> None:
    caps = Capabilities(max_length=300, min_edit_interval=0.5, length_unit=LengthUnit.UTF16)
    vt, surface, renderer = make(caps)
    code = "```python\n" + "\n".join(f"    print('row {i} 🙂')" for i in range(40)) + "\n```\n"
    full = "Intro text 👨‍👩‍👧. " * 10 + "\n\n" + code + "Some words after the code. " * 20
    tokens = [full[i : i + 7] for i in range(0, len(full), 7)]

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await stream(vt, r, tokens, 0.02)
        return await r.finish()

    result = await vt.run(script())
    expected = split_message(full, 300, caps.measure)
    assert len(expected) >= 4
    assert result.parts == tuple(expected)
    assert surface.texts == expected
    sends = [c for c in surface.platform_calls() if c.kind == "send"]
    assert sends[0].reply_to is None
    for prev, nxt in itertools.pairwise(sends):
        assert nxt.reply_to == prev.ref
    for text in surface.texts:
        assert caps.measure(text) <= 300
        assert open_fence(text) is None
    # a part followed by another reaches its final text exactly once, as its last state
    for ref, final in zip([c.ref for c in sends], expected, strict=True):
        states = surface.history[ref]
        assert states[-1] == final and states.count(final) == 1
    assert_spacing(surface.platform_calls(), 0.5)
    assert [r.id for r in result.refs] == [c.ref for c in sends]


async def test_rate_limit_waits_widens_and_keeps_text() -> None:
    vt, surface, renderer = make(errors={2: PlatformRateLimited(3.0)})
    tokens = words(600)  # 6 s of stream
    full = "".join(tokens)

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await stream(vt, r, tokens, 0.01)
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    limited = calls[2]
    assert limited.error == "PlatformRateLimited"
    after = calls[3:]
    assert after[0].at >= limited.at + 3.0 - EPS
    assert_spacing(after, 2.0)  # the interval doubled for the rest of the render
    assert surface.texts == split_message(full, 2000)
    assert result.delivered


async def test_rate_limit_wait_is_capped() -> None:
    vt, surface, renderer = make(errors={1: PlatformRateLimited(120.0)})

    async def script() -> RenderResult:
        r = renderer(max_retry_after=5.0)
        await r.start()
        await stream(vt, r, words(200), 0.01)
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    gap = calls[2].at - calls[1].at
    assert 5.0 - EPS <= gap < 120.0
    assert surface.texts == split_message("".join(words(200)), 2000)
    assert result.delivered


async def test_rate_limited_final_edit_is_retried() -> None:
    vt, surface, renderer = make(error_when=lambda c: None)
    hits = iter([PlatformRateLimited(2.0), PlatformRateLimited(2.0)])

    def on_final(call: Call) -> BaseException | None:
        return next(hits, None) if call.kind == "edit" and call.text.endswith("end") else None

    surface.error_when = on_final

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("start")
        await vt.sleep(0.1)
        await r.feed(" and end")
        return await r.finish()

    result = await vt.run(script())
    edits = [c for c in surface.platform_calls() if c.kind == "edit"]
    assert [e.error for e in edits] == ["PlatformRateLimited", "PlatformRateLimited", None]
    assert edits[1].at - edits[0].at >= 2.0 - EPS
    assert surface.texts == ["start and end"]
    assert result.delivered


async def test_not_modified_counts_as_success() -> None:
    vt, surface, renderer = make(errors={1: MessageNotModified("same")})

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("Hello")
        await vt.sleep(0.1)
        await r.feed(" world")
        await vt.sleep(5.0)
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    assert [c.kind for c in calls] == ["send", "edit"]  # the edit is not retried
    assert calls[1].error == "MessageNotModified"
    assert result.delivered and result.edits == 1
    assert result.parts == ("Hello world",)


async def test_platform_errors_are_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    secret = "secret body text"
    vt, surface, renderer = make()
    surface.errors = {1: PlatformError("boom"), 3: PlatformError("boom"), 4: PlatformError("boom")}

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed(secret)
        await vt.sleep(0.1)
        await r.feed(" one")  # the edit for this fails while streaming
        await vt.sleep(1.5)
        await r.feed(" two")  # more text: tried again, succeeds
        await vt.sleep(1.5)
        await r.feed(" three")
        return await r.finish()  # final edit fails twice, third try succeeds

    with caplog.at_level(logging.INFO, logger="core.chat.render"):
        result = await vt.run(script())
    kinds = [(c.kind, c.error) for c in surface.platform_calls()]
    assert kinds == [
        ("send", None),
        ("edit", "PlatformError"),
        ("edit", None),
        ("edit", "PlatformError"),
        ("edit", "PlatformError"),
        ("edit", None),
    ]
    assert surface.texts == [secret + " one two three"]
    assert result.delivered
    warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert warnings and all(secret not in rec.getMessage() for rec in caplog.records)


async def test_final_edit_gives_up_after_three_attempts() -> None:
    vt, surface, renderer = make()
    surface.error_when = lambda c: PlatformError("gone") if c.kind == "edit" else None

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("partial")
        await vt.sleep(0.1)
        await r.feed(" answer")
        return await r.finish(note="note")

    result = await vt.run(script())  # returns, does not raise
    edits = [c for c in surface.platform_calls() if c.kind == "edit"]
    assert len(edits) == 3
    assert not result.delivered
    assert result.parts == ("partial answer\n\nnote",)
    assert surface.texts == ["partial"]


async def test_surface_bug_never_reaches_the_caller() -> None:
    vt, surface, renderer = make(errors={0: RuntimeError("adapter bug")})

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("text")
        return await r.finish()

    result = await vt.run(script())
    assert surface.texts == ["text"]  # the final retry sends it
    assert result.delivered


async def test_fail_before_output_sends_the_message() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("   ")
        await vt.sleep(2.0)
        return await r.fail("The model is busy right now.")

    result = await vt.run(script())
    assert surface.texts == ["The model is busy right now."]
    assert result.parts == ("The model is busy right now.",)
    assert result.sends == 1 and result.edits == 0


async def test_fail_after_output_keeps_partial_text_and_adds_note() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("Here is half an ans")
        await vt.sleep(0.2)
        return await r.fail("⚠️ Answer interrupted: the model stopped responding.")

    result = await vt.run(script())
    expected = "Here is half an ans\n\n⚠️ Answer interrupted: the model stopped responding."
    assert surface.texts == [expected]
    assert result.parts == (expected,)
    calls = surface.platform_calls()
    assert calls[-1].at >= calls[0].at + 1.0 - EPS  # the final edit respected the interval


async def test_note_after_open_code_block_goes_below_it() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("Try:\n```py\nprint(1")
        return await r.finish(note="⚠️ interrupted")

    await vt.run(script())
    assert surface.texts == ["Try:\n```py\nprint(1\n```\n\n⚠️ interrupted"]


async def test_cannot_edit_sends_each_part_once() -> None:
    caps = Capabilities(max_length=120, can_edit=False, min_edit_interval=0.5)
    vt, surface, renderer = make(caps)
    tokens = words(300)
    full = "".join(tokens)

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await stream(vt, r, tokens, 0.02)
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    expected = split_message(full, 120)
    assert all(c.kind == "send" for c in calls)
    assert [c.text for c in calls] == expected
    assert result.sends == len(expected) and result.edits == 0
    assert calls[0].at < vt.now - 1.0  # finished parts went out while streaming
    assert_spacing(calls, 0.5)
    for prev, nxt in itertools.pairwise(calls):
        assert nxt.reply_to == prev.ref


async def test_typing_before_first_token_and_refreshed() -> None:
    vt, surface, renderer = make(typing_error=PlatformError("typing is best effort"))

    async def script() -> RenderResult:
        r = renderer(typing_interval=4.0)
        await r.start()
        await vt.sleep(10.0)
        await r.feed("Finally")
        await vt.sleep(20.0)
        return await r.finish()

    await vt.run(script())
    typing = [c.at for c in surface.calls if c.kind == "typing"]
    assert typing == [0.0, 4.0, 8.0]  # shown at once, refreshed, stopped at the first send
    assert surface.texts == ["Finally"]


async def test_abandoned_before_any_text_stops_typing_and_sends_nothing() -> None:
    """An answer that ends before its first word (refused while it waited for its turn
    to prepare) leaves no typing indicator running and no message."""
    vt, surface, renderer = make()

    async def script() -> None:
        r = renderer(typing_interval=4.0)
        await r.start()
        await vt.sleep(5.0)
        await r.abandon()
        await vt.sleep(20.0)

    await vt.run(script())
    assert [c.at for c in surface.calls if c.kind == "typing"] == [0.0, 4.0]
    assert surface.platform_calls() == []


async def test_abandon_leaves_an_answer_with_text_alone() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await r.feed("Half an answer")
        await r.abandon()  # text was fed: it is the answer's to end, not abandon's
        return await r.finish()

    result = await vt.run(script())
    assert surface.texts == ["Half an answer"] == list(result.parts)


async def test_feed_never_waits_for_the_platform() -> None:
    vt, surface, renderer = make(latency=5.0)

    async def script() -> tuple[list[float], RenderResult]:
        r = renderer()
        await r.start()
        stamps = []
        for tok in words(50):
            before = vt.now
            await r.feed(tok)
            stamps.append(vt.now - before)
            await vt.sleep(0.05)
        return stamps, await r.finish()

    stamps, result = await vt.run(script())
    assert stamps == [0.0] * 50
    assert surface.texts == [result.parts[0]] == ["".join(words(50))]


async def test_empty_answer_sends_nothing() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        return await r.finish()

    result = await vt.run(script())
    assert surface.platform_calls() == []
    assert result == RenderResult(parts=(), refs=(), edits=0, sends=0)


async def test_real_clock_and_zero_interval() -> None:
    """The defaults (real clock, asyncio.sleep) work and do not spin."""
    vt = VirtualTime()
    surface = FakeSurface(vt, Capabilities(max_length=100, min_edit_interval=0.0))
    r = StreamRenderer(surface)
    await r.start()
    for tok in words(100):
        await r.feed(tok)
        await asyncio.sleep(0)
    result = await asyncio.wait_for(r.finish(), timeout=5)
    assert surface.texts == split_message("".join(words(100)), 100)
    assert result.delivered


# ---------------------------------------------------------------- pacing by the platform's bucket


@dataclass
class BucketSurface(FakeSurface):
    """A chat whose platform counts calls in fixed windows (Discord's kind: `limit` per
    `window` seconds from a window's first call) and refuses a call over it with a 429.
    It tells the renderer its `bucket`, as an adapter does from the platform's headers."""

    limit: int = 5
    window: float = 5.0
    shared: Bucket | None = None
    refused: int = 0
    _window_end: float = -1.0
    _count: int = 0

    def bucket(self, kind: CallKind) -> Bucket | None:
        return self.shared

    def _maybe_fail(self, call: Call) -> None:
        if self.vt.now >= self._window_end:
            self._window_end, self._count = self.vt.now + self.window, 0
        if self._count >= self.limit:
            self.refused += 1
            call.error = "PlatformRateLimited"
            raise PlatformRateLimited(self._window_end - self.vt.now)
        self._count += 1
        super()._maybe_fail(call)


def bucket_chat(vt: VirtualTime, latency: float = 0.0) -> BucketSurface:
    caps = Capabilities(max_length=2000, min_edit_interval=1.0)
    return BucketSurface(vt, caps, latency=latency, shared=Bucket(5, 5.0, clock=vt.clock))


async def test_typing_only_while_the_bots_overall_limit_has_calls_to_spare() -> None:
    """Under the bot's overall limit (Discord's global one), a typing indicator takes only
    a spare call, as a streaming edit would: the reserve is for answers' text."""
    vt = VirtualTime()
    surface = bucket_chat(vt)
    busy = Rate(1.0, 4, clock=vt.clock)  # a reserve of two
    for _ in range(3):
        busy.spend()  # other answers took all but one
    surface.shared = Bucket(5, 5.0, overall=busy, clock=vt.clock)

    async def script() -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep, typing_interval=4.0)
        await r.start()
        await vt.sleep(10.0)  # the rate refills meanwhile, a call a second
        await r.feed("Hi")
        return await r.finish()

    result = await vt.run(script())
    typing = [c.at for c in surface.calls if c.kind == "typing"]
    assert typing == [4.0, 8.0]  # not at once (one call left), then each refresh
    assert result.delivered and surface.texts == ["Hi"]


async def test_final_text_goes_as_the_model_ends_when_the_bucket_allows() -> None:
    vt = VirtualTime()
    surface = bucket_chat(vt, latency=0.05)
    ended: list[float] = []

    async def script() -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep)
        await r.start()
        await stream(vt, r, words(300), 0.02)  # 6 s of tokens
        ended.append(vt.now)
        return await r.finish()

    result = await vt.run(script())
    calls = surface.platform_calls()
    final = calls[-1]
    assert final.text == "".join(words(300))
    # one call's round trip after the last token, not an edit interval
    assert final.at == pytest.approx(ended[0] + 0.05)
    assert surface.refused == 0  # no call into an exhausted bucket
    edits = [c for c in calls if c.kind == "edit"]
    assert_spacing(edits[:-1], 1.0)  # while streaming, at most one edit a second
    assert len(edits) <= vt.now / 1.0 + 1
    assert result.delivered and surface.texts == list(result.parts)


async def test_idle_for_tells_when_the_next_edit_goes() -> None:
    """What the model's stream reader is told (`ReadPace`): nothing to wait before the
    first message is shown, then exactly when the next streaming edit goes, so text
    read by then is in it; nothing to wait once the answer ends."""
    vt = VirtualTime()
    surface = bucket_chat(vt, latency=0.05)
    told: list[tuple[float, float]] = []
    ended: list[float] = []

    async def script() -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep)
        await r.start()
        for token in words(60):  # 6 s of tokens
            told.append((vt.now, r.idle_for()))
            await r.feed(token)
            await vt.sleep(0.1)
        ended.append(vt.now)
        finishing = asyncio.ensure_future(r.finish())
        await asyncio.sleep(0)
        assert r.idle_for() == 0.0
        return await finishing

    result = await vt.run(script())
    calls = surface.platform_calls()
    shown_at = calls[0].at + 0.05  # the first message exists once its send returns
    assert all(idle == 0.0 for at, idle in told if at < shown_at)
    edits = [c.at for c in calls if c.kind == "edit"]
    held = [(at, idle) for at, idle in told if idle > 0]
    assert len(held) >= len(told) // 2
    for at, idle in held:
        if at + idle < ended[0]:
            # the flusher's pause and the reader's hold end together (edits start then)
            assert any(abs(edit - 0.05 - (at + idle)) < EPS for edit in edits), (at, idle, edits)
    assert result.delivered and surface.texts == ["".join(words(60))]


async def test_a_finish_during_a_streaming_pause_does_not_wait_it_out() -> None:
    vt = VirtualTime()
    surface = bucket_chat(vt)

    async def script() -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep)
        await r.start()
        await r.feed("Hello")
        await vt.sleep(0.1)  # sent; the next edit may only come at 1.0
        await r.feed(" world")
        await vt.sleep(0.1)
        return await r.finish()

    await vt.run(script())
    calls = surface.platform_calls()
    assert [(c.kind, c.at, c.text) for c in calls] == [
        ("send", 0.0, "Hello"),
        ("edit", pytest.approx(0.2), "Hello world"),
    ]


async def test_answers_sharing_a_chat_keep_to_its_bucket() -> None:
    """Four answers stream at once into one chat: together they stay in its bucket, and
    each one's final text still goes out without a 429."""
    vt = VirtualTime()
    surface = bucket_chat(vt, latency=0.03)

    async def one(n: int) -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep)
        await r.start()
        await stream(vt, r, [f"{n}:", *words(100 + 40 * n)], 0.02)
        return await r.finish()

    async def script() -> list[RenderResult]:
        return await asyncio.gather(*(one(n) for n in range(4)))

    results = await vt.run(script())
    assert surface.refused == 0
    assert sorted(surface.texts) == sorted(r.parts[0] for r in results)
    assert all(r.delivered for r in results)


async def test_a_chat_without_a_bucket_keeps_one_call_per_interval() -> None:
    vt, surface, renderer = make()

    async def script() -> RenderResult:
        r = renderer()
        await r.start()
        await stream(vt, r, words(40), 0.02)
        return await r.finish()

    await vt.run(script())
    assert_spacing(surface.platform_calls(), 1.0)


async def test_typing_never_delays_the_first_message() -> None:
    vt = VirtualTime()
    surface = FakeSurface(vt, Capabilities(max_length=2000, min_edit_interval=1.0))
    typed = asyncio.Event()

    async def slow_typing() -> None:
        surface.calls.append(Call("typing", vt.now))
        await vt.sleep(2.0)  # a slow platform call
        typed.set()

    surface.typing = slow_typing  # type: ignore[method-assign]

    async def script() -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep)
        await r.start()
        await r.feed("Hi")
        await vt.sleep(0.5)
        return await r.finish()

    await vt.run(script())
    assert surface.calls[0].kind == "typing"  # shown first, still in flight
    sent = surface.platform_calls()[0]
    assert sent.at == 0.0 and sent.text == "Hi"
    assert not typed.is_set()


@dataclass
class CountingSurface(FakeSurface):
    """Counts the edits in flight across every surface sharing `flight`."""

    flight: dict[str, int] = field(default_factory=lambda: {"now": 0, "most": 0})

    async def edit(self, ref: MessageRef, text: str) -> None:
        self.flight["now"] += 1
        self.flight["most"] = max(self.flight["most"], self.flight["now"])
        try:
            await super().edit(ref, text)
        finally:
            self.flight["now"] -= 1


async def test_streaming_edits_take_turns_for_the_shared_places() -> None:
    """Six answers streaming together share two places: never more than two streaming
    edits in flight, every answer still edited while it streams, and every place given
    back at the end."""
    vt = VirtualTime()
    places = asyncio.Semaphore(2)
    flight = {"now": 0, "most": 0}
    caps = Capabilities(max_length=2000, min_edit_interval=1.0)
    surfaces = [CountingSurface(vt, caps, latency=0.3, flight=flight) for _ in range(6)]

    async def one(surface: FakeSurface) -> RenderResult:
        r = StreamRenderer(surface, clock=vt.clock, sleep=vt.sleep, places=places)
        await r.start()
        await stream(vt, r, words(150), 0.02)  # 3 s of tokens
        flight["most_streaming"] = flight["most"]
        return await r.finish()

    results = await vt.run(asyncio.gather(*(one(s) for s in surfaces)))
    assert flight["most_streaming"] == 2
    assert all(len([c for c in s.platform_calls() if c.kind == "edit"]) >= 2 for s in surfaces)
    assert all(r.delivered for r in results)
    assert [s.texts for s in surfaces] == [[r.parts[0]] for r in results]
    await places.acquire()
    assert not places.locked()  # both places are free again


async def test_a_finish_while_waiting_for_a_place_goes_at_once() -> None:
    vt, surface, renderer = make()
    places = asyncio.Semaphore(1)
    await places.acquire()  # every place taken, for as long as the answer lasts

    async def script() -> RenderResult:
        r = renderer(places=places)
        await r.start()
        await stream(vt, r, words(100), 0.02)  # 2 s: edits are due, and wait for the place
        ended = vt.now
        result = await r.finish()
        assert vt.now == ended
        return result

    result = await vt.run(script())
    assert [c.kind for c in surface.platform_calls()] == ["send", "edit"]  # the first and the final
    assert result.delivered and surface.texts == ["".join(words(100))]
    places.release()
    assert not places.locked()  # the place the answer waited for was not lost

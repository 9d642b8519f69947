"""iter_sse's idle timeout and pace over a real aiohttp StreamReader, on a virtual clock.

The running loop's clock is replaced by one that only the test moves, so each
check is about what happens before and after a deadline, never about how fast
this machine is: the timers are real loop timers, the test lets the loop run
with `asyncio.sleep(0)` and never waits for wall-clock time to pass. Times and
steps are binary fractions, so deadlines fall exactly on a step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from contextvars import Context
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from core.llm.errors import StreamStalled
from core.llm.sse import HOLD_LEAD, MAX_HOLD, MIN_HOLD, iter_sse

pytestmark = pytest.mark.timeout(10)

TIMEOUT = 0.25
STEP = 0.0625  # TIMEOUT / 4
STALLED = "no tokens from the model server within the idle timeout"


class Clock:
    """The loop's `time()`, advanced only by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Timers:
    """Every timer the loop is asked for, and which of them have run."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_at = loop.call_at
        self.handles: list[asyncio.TimerHandle] = []
        self._ran: set[int] = set()

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.TimerHandle:
        index = len(self.handles)

        def run(*args: Any) -> None:
            self._ran.add(index)
            callback(*args)

        handle = self._call_at(when, run, *args, context=context)
        self.handles.append(handle)
        return handle

    def pending(self) -> list[asyncio.TimerHandle]:
        """Timers neither run nor cancelled."""
        return [h for i, h in enumerate(self.handles) if i not in self._ran and not h.cancelled()]


def virtual_loop(monkeypatch: pytest.MonkeyPatch) -> tuple[Clock, Timers]:
    loop = asyncio.get_running_loop()
    clock = Clock(1024.0)
    timers = Timers(loop)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop, "call_at", timers.call_at)
    return clock, timers


def make_reader() -> aiohttp.StreamReader:
    """A response body's reader, fed by the test instead of a socket."""
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.transport = asyncio.Transport()  # "connected"; no flow control, which aiohttp tolerates
    return aiohttp.StreamReader(protocol, 2**16, loop=loop)


async def settle() -> None:
    """Let the loop run what is ready (woken reads, due timers); no time passes."""
    for _ in range(10):
        await asyncio.sleep(0)


class Consumer:
    """Reads `iter_sse` in a task, as the transport does, keeping every event's data."""

    def __init__(
        self,
        reader: aiohttp.StreamReader,
        idle_timeout: float | None,
        pace: Callable[[], float] | None = None,
    ) -> None:
        self.received: list[str] = []
        self.task = asyncio.create_task(self._run(iter_sse(reader, idle_timeout, pace)))

    async def _run(self, lines: AsyncGenerator[str, None]) -> None:
        async with contextlib.aclosing(lines):
            async for data in lines:
                self.received.append(data)


async def test_steady_events_are_never_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, TIMEOUT)
    await settle()
    for i in range(24):  # 24 events, 3 steps apart: 18 steps, 4.5 timeouts in all
        clock.advance(2 * STEP)
        reader.feed_data(b": keep-alive\n\n")
        await settle()
        clock.advance(STEP)
        await settle()  # the read is waiting here, and the timer set before the last event fires
        reader.feed_data(f"data: {i}\n".encode())  # an event split across chunks
        await settle()
        reader.feed_data(b"\n")
        await settle()
        assert not consumer.task.done()
        assert consumer.received == [str(n) for n in range(i + 1)]
    reader.feed_eof()
    await consumer.task
    assert timers.pending() == []


async def test_keep_alive_comments_do_not_hold_off_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, TIMEOUT)
    reader.feed_data(b"data: first\n\n")
    await settle()
    assert consumer.received == ["first"]
    for _ in range(3):  # up to one step before the deadline
        clock.advance(STEP)
        reader.feed_data(b":\n\n")
        await settle()
        assert not consumer.task.done()
    clock.advance(STEP)
    reader.feed_data(b":\n\n")
    await settle()
    assert consumer.task.done()
    with pytest.raises(StreamStalled, match=STALLED):
        consumer.task.result()
    assert consumer.received == ["first"]
    assert timers.pending() == []


async def test_a_silent_stream_stalls_from_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timers = virtual_loop(monkeypatch)
    consumer = Consumer(make_reader(), TIMEOUT)
    await settle()
    clock.advance(TIMEOUT - STEP)
    await settle()
    assert not consumer.task.done()
    clock.advance(STEP)
    await settle()
    with pytest.raises(StreamStalled, match=STALLED):
        consumer.task.result()
    assert timers.pending() == []


async def test_one_timer_serves_a_whole_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    _, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, TIMEOUT)
    for i in range(100):
        reader.feed_data(f"data: {i}\n\n".encode())
        await settle()
    reader.feed_eof()
    await consumer.task
    assert len(consumer.received) == 100
    assert len(timers.handles) == 1
    assert timers.pending() == []


async def test_data_that_arrived_while_the_consumer_held_the_stream_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline only fails a read that has to wait, as a per-read timeout did."""
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    lines = iter_sse(reader, TIMEOUT)
    async with contextlib.aclosing(lines):
        reader.feed_data(b"data: one\n\n")
        assert await anext(lines) == "one"
        clock.advance(2 * TIMEOUT)  # the consumer is busy past the deadline
        await settle()
        reader.feed_data(b"data: two\n\n")
        assert await anext(lines) == "two"  # already there: read, and the clock restarts
        clock.advance(TIMEOUT - STEP)
        await settle()
        reader.feed_data(b"data: three\n\n")
        assert await anext(lines) == "three"
        clock.advance(2 * TIMEOUT)
        await settle()
        with pytest.raises(StreamStalled, match=STALLED):
            await anext(lines)  # nothing there: this read would wait, and fails
    assert timers.pending() == []


async def test_a_deadline_reached_as_data_arrives_is_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """As with a per-read timeout: the timer fired while the read waited, so the read fails."""
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, TIMEOUT)
    await settle()
    clock.advance(TIMEOUT)
    # the loop's next pass runs this callback, then the timer now due, then (one
    # pass later) the read it woke: the data and the deadline meet
    asyncio.get_running_loop().call_soon(reader.feed_data, b"data: late\n\n")
    await settle()
    with pytest.raises(StreamStalled, match=STALLED):
        consumer.task.result()
    assert consumer.received == []
    assert timers.pending() == []


async def close_at_a_yield(reader: aiohttp.StreamReader) -> None:
    lines = iter_sse(reader, TIMEOUT)
    reader.feed_data(b"data: one\n\ndata: two\n\n")
    assert await anext(lines) == "one"
    await lines.aclose()


async def stop_iterating(reader: aiohttp.StreamReader) -> None:
    async with contextlib.aclosing(iter_sse(reader, TIMEOUT)) as lines:
        reader.feed_data(b"data: one\n\n")
        async for _ in lines:
            break


async def cancel_a_waiting_read(reader: aiohttp.StreamReader) -> None:
    consumer = Consumer(reader, TIMEOUT)
    reader.feed_data(b"data: one\n\n")
    await settle()
    assert consumer.received == ["one"]
    consumer.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer.task


async def fail_a_read(reader: aiohttp.StreamReader) -> None:
    consumer = Consumer(reader, TIMEOUT)
    await settle()
    reader.set_exception(aiohttp.ClientPayloadError("connection lost"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await consumer.task


async def end_of_stream(reader: aiohttp.StreamReader) -> None:
    consumer = Consumer(reader, TIMEOUT)
    reader.feed_data(b"data: one\n\ndata: unterminated")
    reader.feed_eof()
    await consumer.task
    assert consumer.received == ["one", "unterminated"]


@pytest.mark.parametrize(
    "finish", [close_at_a_yield, stop_iterating, cancel_a_waiting_read, fail_a_read, end_of_stream]
)
async def test_no_timer_outlives_the_stream(
    monkeypatch: pytest.MonkeyPatch, finish: Callable[[aiohttp.StreamReader], Any]
) -> None:
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    await finish(reader)
    assert timers.handles  # the stream did set its watchdog
    assert timers.pending() == []
    failed = reader.exception()
    clock.advance(10 * TIMEOUT)
    await settle()
    assert reader.exception() is failed  # the watchdog never ran to fail the body


async def test_no_idle_timeout_never_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, None)
    reader.feed_data(b"data: one\n\n")
    await settle()
    clock.advance(1000 * TIMEOUT)
    reader.feed_data(b": keep-alive\n\n")
    await settle()
    clock.advance(1000 * TIMEOUT)
    await settle()
    assert not consumer.task.done()
    reader.feed_data(b"data: two\n\n")
    reader.feed_eof()
    await consumer.task
    assert consumer.received == ["one", "two"]
    assert timers.handles == []


# --- pace: a stream is read when its reader can use more of it ---------------------------


class NextEdit:
    """A reader's pace as a renderer's: nothing to wait until `at` is set, then the time
    left until it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.at: float | None = None

    def __call__(self) -> float:
        return 0.0 if self.at is None else max(0.0, self.at - self.clock.now)


Paced = tuple[Clock, Timers, aiohttp.StreamReader, NextEdit, Consumer]


async def paced_after_first(monkeypatch: pytest.MonkeyPatch) -> Paced:
    """A paced reader that has read its first event: nothing was to wait for yet."""
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    edit = NextEdit(clock)
    consumer = Consumer(reader, TIMEOUT, edit)
    reader.feed_data(b"data: first\n\n")
    await settle()
    assert consumer.received == ["first"]  # read as it came
    return clock, timers, reader, edit, consumer


async def test_a_paced_stream_is_read_when_its_reader_wants_more(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timers, reader, edit, consumer = await paced_after_first(monkeypatch)
    edit.at = clock.now + 4 * STEP
    reader.feed_data(b"data: second\n\n")
    await settle()
    assert consumer.received == ["first", "second"]  # this read was already waiting
    for word in ("third", "fourth"):
        clock.advance(STEP)
        reader.feed_data(f"data: {word}\n\n".encode())
        await settle()
    clock.advance(STEP)
    await settle()
    assert consumer.received == ["first", "second"]  # held until just before the edit
    clock.advance(STEP - HOLD_LEAD)
    await settle()
    assert consumer.received == ["first", "second", "third", "fourth"]  # both in one read
    reader.feed_eof()
    await consumer.task
    assert timers.pending() == []


async def test_the_end_of_a_held_stream_is_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The final event never waits for the next edit: the body's end wakes the hold."""
    clock, timers, reader, edit, consumer = await paced_after_first(monkeypatch)
    edit.at = clock.now + 1.0
    reader.feed_data(b"data: second\n\n")  # woke the waiting read; the next one holds
    await settle()
    reader.feed_data(b"data: last\n\n")
    await settle()
    assert consumer.received == ["first", "second"]
    reader.feed_eof()
    await settle()  # no time passes
    assert consumer.task.done()
    assert consumer.received == ["first", "second", "last"]
    assert timers.pending() == []


async def test_no_stream_is_held_longer_than_max_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, None, lambda: 3600.0)
    await settle()  # the first read holds too: this reader never wants more sooner
    reader.feed_data(b"data: one\n\n")
    clock.advance(MAX_HOLD - HOLD_LEAD - STEP)
    await settle()
    assert consumer.received == []
    clock.advance(STEP)
    await settle()
    assert consumer.received == ["one"]
    reader.feed_eof()
    await consumer.task
    assert timers.pending() == []


async def test_a_pace_too_short_for_a_timer_reads_as_data_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    _, timers = virtual_loop(monkeypatch)
    reader = make_reader()
    consumer = Consumer(reader, TIMEOUT, lambda: MIN_HOLD)  # less HOLD_LEAD: below MIN_HOLD
    for i in range(10):
        reader.feed_data(f"data: {i}\n\n".encode())
        await settle()
        assert consumer.received == [str(n) for n in range(i + 1)]
    reader.feed_eof()
    await consumer.task
    assert len(timers.handles) == 1  # the idle watchdog's, and no hold
    assert timers.pending() == []


async def test_a_stall_is_seen_once_a_hold_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold longer than the idle timeout: tokens that came meanwhile are read, and no
    stall; a server silent through the hold has stalled, and the read that would wait fails."""
    clock, timers, reader, edit, consumer = await paced_after_first(monkeypatch)
    edit.at = clock.now + 3 * TIMEOUT
    reader.feed_data(b"data: second\n\n")
    await settle()
    clock.advance(TIMEOUT)
    reader.feed_data(b"data: third\n\n")
    await settle()
    clock.advance(2 * TIMEOUT)  # the hold ends: "third" is there
    await settle()
    assert consumer.received == ["first", "second", "third"]
    assert not consumer.task.done()
    edit.at = clock.now + 3 * TIMEOUT
    clock.advance(3 * TIMEOUT)  # a hold through which nothing came
    await settle()
    with pytest.raises(StreamStalled, match=STALLED):
        consumer.task.result()
    assert timers.pending() == []


async def test_a_stream_stopped_during_a_hold_yields_what_came_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop (or shutdown, or time limit) cancels the reader: the text that reached it
    during the hold is the answer's too, as it would be had each token been read."""
    clock, timers, reader, edit, consumer = await paced_after_first(monkeypatch)
    edit.at = clock.now + 1.0
    reader.feed_data(b"data: second\n\n")
    await settle()
    reader.feed_data(b"data: third\n\ndata: fou")  # the last event is not complete
    await settle()
    assert consumer.received == ["first", "second"]
    consumer.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer.task
    assert consumer.received == ["first", "second", "third"]
    assert timers.pending() == []

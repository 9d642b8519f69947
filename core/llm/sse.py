"""Server-Sent Events: the incremental parser and the reader over a response body.

Both backends stream over SSE (TGI's `/generate_stream` and any server's
`/v1/chat/completions`); this module only turns bytes into each event's data,
and leaves decoding the data to the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp

from core.llm.base import ReadPace
from core.llm.errors import StreamStalled


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


_STALLED = "no tokens from the model server within the idle timeout"
#: a pace shorter than this is not worth a timer: the stream is read as data comes
MIN_HOLD = 0.05
#: the longest a stream is left unread: a stall, an overrun or a full buffer is seen by then
MAX_HOLD = 2.0
#: a held read wakes this much before the reader said it wants more, so that reader (say a
#: message's next edit, due at that time) gets the newest text, not the text of the last read
HOLD_LEAD = 0.02


async def iter_sse(
    content: aiohttp.StreamReader, idle_timeout: float | None = None, pace: ReadPace | None = None
) -> AsyncGenerator[str, None]:
    """Yield the data of each SSE event read from a response body.

    `idle_timeout` limits the time between data events; past it the stream
    fails with `StreamStalled`. TGI sends keep-alive comments on an idle
    stream, so a socket read timeout alone never notices a stalled generation;
    comments therefore do not reset this clock.

    The clock is one lazy watchdog timer per stream, not a timeout per read
    (per-read timers cost a noticeable share of CPU across many streams).
    Reads only note when the latest event came; when the watchdog fires it
    re-arms for that event's deadline or, if none came and a read is waiting,
    fails the read through `content.set_exception`. As with a per-read
    timeout, data that arrived while the consumer held the stream past the
    deadline is still read; only a read that would wait fails.

    `pace`, asked once the events read so far are consumed, holds the next read
    for that long (`ReadPace`; at most `MAX_HOLD`, and `HOLD_LEAD` less), or until
    the body ends, which wakes the hold at once: the final event is never held.
    A stream cancelled during a hold (a stop, a shutdown, a time limit) first yields
    the events that came in it, then raises `CancelledError`. A connection lost during
    a hold is seen when the hold ends, and what came in it is lost with the stream:
    aiohttp keeps the buffered bytes of a failed body from its reader.
    """
    parser = SSEParser()
    loop = asyncio.get_running_loop()
    last_event = loop.time()
    timer: asyncio.TimerHandle | None = None
    armed_for = 0.0  # the deadline `timer` was set for
    reading = False  # a read is waiting on `content`
    stalled = False
    holding: asyncio.Future[None] | None = None  # a held read's wake-up

    def arm(deadline: float) -> None:
        nonlocal timer, armed_for
        armed_for = deadline
        timer = loop.call_at(deadline, watchdog)

    def watchdog() -> None:
        nonlocal timer, stalled
        assert idle_timeout is not None
        deadline = last_event + idle_timeout
        if deadline > armed_for:  # an event since the timer was set
            arm(deadline)
            return
        timer = None
        if reading:
            stalled = True
            content.set_exception(StreamStalled(_STALLED))
        # otherwise the consumer holds the stream: the next read re-arms

    def wake() -> None:
        if holding is not None and not holding.done():
            holding.set_result(None)

    async def hold(seconds: float) -> None:
        nonlocal holding
        holding = loop.create_future()
        alarm = loop.call_at(loop.time() + seconds, wake)
        try:
            await holding
        finally:
            alarm.cancel()
            holding = None

    if pace is not None:
        content.on_eof(wake)
    try:
        while True:
            if pace is not None and not content.is_eof():
                wait = min(pace(), MAX_HOLD) - HOLD_LEAD
                if wait >= MIN_HOLD:
                    try:
                        await hold(wait)
                    except asyncio.CancelledError:
                        # stopped: what came during the hold is still the reader's
                        if content.exception() is None:
                            for data in parser.feed(content.read_nowait()):
                                yield data
                        raise
            if idle_timeout is not None and timer is None:
                arm(last_event + idle_timeout)
            reading = True
            try:
                chunk = await content.readany()
            except Exception:
                if stalled:
                    raise StreamStalled(_STALLED) from None
                raise
            finally:
                reading = False
            if stalled:  # the watchdog fired as this chunk arrived; `content` is failed now
                raise StreamStalled(_STALLED)
            if not chunk:
                break
            events = parser.feed(chunk)
            if events:
                last_event = loop.time()
            for data in events:
                yield data
    finally:
        if timer is not None:
            timer.cancel()
    for data in parser.flush():
        yield data

"""Render a streamed answer onto a `Surface`: typing, first send, coalesced edits.

The engine feeds text deltas as fast as the model produces them; platforms
allow a few calls per second per chat. A single background flusher task
therefore owns all platform I/O: `feed` only appends and wakes it, and the
flusher makes one call (edit or continuation send) at a time, always with the
newest text. Because `core.chat.splitting.split_message` is prefix-stable, a
message that has been followed by another never changes again, so earlier
parts are edited to their final text once and only the last part keeps growing.

Pacing follows the platform's real limits (`core.pacing`): while the answer
streams, a message is edited at most once per `min_edit_interval` and only
while its chat's bucket keeps a call in reserve; the final text uses that
reserve, so it goes out as soon as the model ends. A surface that tells no
bucket gets one call per `min_edit_interval`.

A typing indicator is shown only while it spares a call (as a streaming edit would):
under the bot's overall limit, indicators give way to the answers themselves.

Streaming edits also take one of a few places shared by every answer in the process
(`STREAMING_CALLS`). Answers that started together would otherwise edit together,
every interval, all in one turn of the event loop: at 1,000 answers that stalled the
loop for a quarter of a second each time. With the places, a turn starts at most as
many edits as calls came back in the one before. The first message and the final text
never wait for a place.

Platform errors never reach the engine: rate limits slow the render down,
other failures are logged and retried (the final state a few times), and
`finish`/`fail` report what was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.chat.splitting import closing_fence, split_message
from core.pacing import Bucket
from core.platform import CallKind, MessageNotModified, MessageRef, PlatformRateLimited, Surface

#: widened intervals after a rate limit never exceed this (unless the platform's base does)
MAX_INTERVAL = 10.0
#: the final state is retried this many times per message after ordinary errors
FINAL_ATTEMPTS = 3
#: rate limits in a row while finishing before they count as an ordinary failure
FINAL_RATE_LIMITS = 5
#: first pause before retrying a failed final call; doubles each time
RETRY_BACKOFF = 0.5

#: calls a streaming answer leaves in its chat's bucket: the final edit's
RESERVE = 1
#: streaming edits in flight at once, across all the answers that share the places
STREAMING_CALLS = 64


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What the user ended up seeing.

    `parts` is the complete answer as split for the platform; `refs` the
    messages that exist, in order; `delivered` is False when some part could
    not be sent or brought up to date.
    """

    parts: tuple[str, ...]
    refs: tuple[MessageRef, ...]
    edits: int
    sends: int
    delivered: bool = True


@dataclass(frozen=True, slots=True)
class _Action:
    kind: CallKind
    index: int
    text: str


class StreamRenderer:
    """Turns text deltas into one or more messages on a surface (see module doc)."""

    def __init__(
        self,
        surface: Surface,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        typing_interval: float = 4.0,
        max_retry_after: float = 30.0,
        places: asyncio.Semaphore | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._surface = surface
        #: shared with the other answers: a place per streaming edit in flight (module doc)
        self._places = places
        self._caps = surface.capabilities
        self._clock = clock
        self._sleep = sleep
        self._typing_interval = typing_interval
        self._max_retry_after = max_retry_after
        self._log = logger or logging.getLogger(__name__)

        self._text = ""
        self._note: str | None = None
        self._fail_message: str | None = None
        self._finishing = False
        self._final: str | None = None  # frozen once the flusher first sees `_finishing`
        self._split_cache: tuple[str, list[str]] = ("", [])

        self._refs: list[MessageRef | None] = []  # per part; None: gave up sending it
        self._shown: list[str] = []  # per part: the text the platform has
        self._abandoned: set[int] = set()
        self._visible = False
        self.visible_at: float | None = None  # time.monotonic() of the first text shown (metrics)
        self._edits = 0
        self._sends = 0

        base = self._caps.min_edit_interval
        self._interval = base
        self._max_interval = max(MAX_INTERVAL, base)
        # a surface that tells no limits: one call per interval (widened with it)
        self._own = Bucket(1, base, clock=clock)
        self._buckets: dict[CallKind, Bucket] = {
            "send": surface.bucket("send") or self._own,
            "edit": surface.bucket("edit") or self._own,
        }
        self._last_call_at: dict[int, float] = {}  # per part: when it was last sent or edited
        self._next_call_at = -math.inf  # no call before this (after a failure or a 429)
        self._pausing: asyncio.Future[Any] | None = None
        self._stalled_at = -1  # text length at a failed streaming call; retry once it grows
        self._final_failures: dict[int, int] = {}
        self._rate_hits = 0

        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._started = False
        self._result: RenderResult | None = None

    # ------------------------------------------------------------ public API

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return self._text

    def idle_for(self) -> float:
        """Seconds before newer text could reach the platform (a `ReadPace`): 0 until the
        first message is shown and once the answer ends, else until the last message's
        next streaming edit may go. The model's stream is read then, all its new tokens
        at once, instead of waking the answer per token; text that outgrows the message
        starts the next one at that read too."""
        if not self._visible or self._finishing or not self._caps.can_edit:
            return 0.0
        return max(0.0, self._delay(_Action("edit", len(self._refs) - 1, "")))

    async def start(self) -> None:
        """Show typing (in the background: the answer never waits for it) and keep it
        alive until the first message is visible."""
        if self._started or self._finishing:
            return
        self._started = True
        self._typing = asyncio.create_task(self._typing_loop())
        self._ensure_flusher()

    async def feed(self, delta: str) -> None:
        """Append text; the flusher does the I/O, so this never waits on the platform."""
        if self._finishing:
            self._log.debug("text fed after finish() ignored")
            return
        if not delta:
            return
        self._text += delta
        self._ensure_flusher()
        self._wake.set()

    async def finish(self, note: str | None = None) -> RenderResult:
        """Deliver the complete text (plus `note` in its own paragraph) and stop."""
        if not self._finishing:
            self._note = note
        return await self._close()

    async def fail(self, message: str) -> RenderResult:
        """End with an error: `message` is the answer if nothing is visible yet,
        otherwise a note under the partial text."""
        if not self._finishing:
            self._fail_message = message
        return await self._close()

    async def abandon(self) -> None:
        """The answer ended before any text of it (refused, or nothing to do): stop the
        typing indicator and send nothing. No-op once text was fed or the end was told."""
        if self._finishing or self._text:
            return
        self._finishing = True
        self._stop_typing()
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            await asyncio.wait([flusher])

    # ------------------------------------------------------------ lifecycle

    def _ensure_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run())

    def _stop_typing(self) -> None:
        # Dropping the reference breaks the task <-> renderer cycle a cancelled task
        # keeps, so finished renders are freed at once instead of by the full GC.
        typing, self._typing = self._typing, None
        if typing is not None and not typing.done():
            typing.cancel()

    async def _close(self) -> RenderResult:
        self._finishing = True
        self._stop_typing()
        self._ensure_flusher()
        self._wake.set()
        if self._pausing is not None:
            self._pausing.cancel()  # a streaming pause: the final text may go sooner
        assert self._flusher is not None
        await asyncio.wait([self._flusher])  # the flusher logs its own failures
        if self._result is None:
            self._result = self._build_result()
        return self._result

    def _build_result(self) -> RenderResult:
        parts = self._split(self._content())
        current = sum(
            1
            for i, part in enumerate(parts)
            if i < len(self._refs) and self._refs[i] is not None and self._shown[i] == part
        )
        delivered = current == len(parts)
        if not delivered:
            self._log.warning("answer only partly delivered: %d of %d parts up to date", current, len(parts))
        return RenderResult(
            parts=tuple(parts),
            refs=tuple(ref for ref in self._refs if ref is not None),
            edits=self._edits,
            sends=self._sends,
            delivered=delivered,
        )

    # ------------------------------------------------------------ typing

    async def _typing_once(self) -> None:
        if self._buckets["send"].wait(RESERVE) > 0:
            # only spare calls: a busy chat or bot keeps them for answers' text
            self._log.debug("typing indicator skipped: the platform's limits are busy")
            return
        try:
            await self._surface.typing()
        except Exception as exc:  # best effort by contract
            self._log.debug("typing indicator failed: %r", exc)

    async def _typing_loop(self) -> None:
        while not (self._visible or self._finishing):
            await self._typing_once()
            await self._sleep(self._typing_interval)

    # ------------------------------------------------------------ flushing

    def _content(self) -> str:
        """The text to show now. Once finishing, frozen to the final text."""
        if not self._finishing:
            return self._text
        if self._final is None:
            self._final = self._compose_final()
        return self._final

    def _compose_final(self) -> str:
        note = self._note
        if self._fail_message is not None:
            if not self._visible:
                return self._fail_message
            note = self._fail_message
        text = self._text
        if not note:
            return text
        if not text.strip():
            return note
        # Extends `text`, so the parts already sent stay as they are.
        return text + closing_fence(text) + "\n\n" + note

    def _split(self, content: str) -> list[str]:
        if self._split_cache[0] != content:
            parts = split_message(content, self._caps.max_length, self._caps.measure)
            self._split_cache = (content, parts)
        return self._split_cache[1]

    def _next_action(self) -> _Action | None:
        parts = self._split(self._content())
        if not self._caps.can_edit and not self._finishing:
            parts = parts[:-1]  # only parts that can no longer change
        for i, part in enumerate(parts):
            if i in self._abandoned:
                continue
            if i >= len(self._refs):
                return _Action("send", i, part)
            if self._caps.can_edit and self._shown[i] != part:
                return _Action("edit", i, part)
        return None

    async def _run(self) -> None:
        """The flusher: one platform call at a time, paced by the platform's limits."""
        try:
            while True:
                self._wake.clear()
                action = self._next_action()
                if action is None:
                    if self._finishing:
                        return
                    await self._wake.wait()
                    continue
                if not self._finishing and self._stalled_at == len(self._text):
                    await self._wake.wait()  # failed on this text; wait for more
                    continue
                delay = self._delay(action)
                if delay > 0:
                    await self._pause(delay)
                    continue
                if self._places is not None and not self._is_final(action):
                    await self._streaming_call(self._places)
                    continue
                await self._perform(action)
        except Exception:
            self._log.exception("renderer flusher crashed")

    def _is_final(self, action: _Action) -> bool:
        """The final text, or the first message: neither waits for a streaming pace."""
        return self._finishing or (action.kind == "send" and action.index == 0)

    async def _streaming_call(self, places: asyncio.Semaphore) -> None:
        """Take a place, then make the call that is due by then with the newest text.
        The answer's end cuts the wait short: its final text needs no place."""
        if places.locked():
            if not await self._until_finishing(places.acquire()):
                return
        else:
            await places.acquire()
        try:
            action = self._next_action()
            if action is not None and not self._finishing and self._delay(action) <= 0:
                await self._perform(action)
        finally:
            places.release()

    def _delay(self, action: _Action) -> float:
        """Seconds before `action` may go. The final text (and the first message) wait
        only for the bucket; streaming calls also keep `RESERVE` calls in it, and a
        message is edited no more than once per interval."""
        now = self._clock()
        final = self._is_final(action)
        delay = max(self._next_call_at - now, self._buckets[action.kind].wait(0 if final else RESERVE))
        if not final:
            last = self._last_call_at.get(action.index, -math.inf)
            delay = max(delay, last + self._interval - now)
        return delay

    async def _pause(self, delay: float) -> None:
        """Sleep `delay`, less if the answer finishes meanwhile (`_close` cancels it)."""
        if self._finishing:
            await self._sleep(delay)
            return
        await self._until_finishing(self._sleep(delay))

    async def _until_finishing(self, awaitable: Awaitable[object]) -> bool:
        """Await `awaitable` unless the answer finishes first (`_close` cancels it then);
        whether it completed."""
        self._pausing = waiting = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait([waiting])
        finally:
            self._pausing = None
        return not waiting.cancelled()

    async def _perform(self, action: _Action) -> None:
        i = action.index
        self._buckets[action.kind].spend()
        self._last_call_at[i] = self._clock()
        try:
            if action.kind == "send":
                ref = await self._surface.send(action.text, reply_to=self._reply_to(i))
                self._refs.append(ref)
                self._shown.append(action.text)
                self._sends += 1
                if not self._visible:
                    self._visible = True
                    self.visible_at = time.monotonic()
                    self._stop_typing()
            else:
                target = self._refs[i]
                assert target is not None
                with contextlib.suppress(MessageNotModified):  # already shows this text
                    await self._surface.edit(target, action.text)
                self._shown[i] = action.text
                self._edits += 1
        except PlatformRateLimited as exc:
            self._on_rate_limited(action, exc.retry_after)
            return
        except Exception as exc:  # PlatformError, or a surface bug: never the engine's problem
            self._on_failure(action, exc)
            return
        self._rate_hits = 0

    def _reply_to(self, index: int) -> MessageRef | None:
        for ref in reversed(self._refs[:index]):
            if ref is not None:
                return ref
        return None

    def _on_rate_limited(self, action: _Action, retry_after: float) -> None:
        wait = min(max(retry_after, 0.0), self._max_retry_after)
        self._buckets[action.kind].refused(wait)
        self._interval = min(max(self._interval * 2, 1.0), self._max_interval)
        self._own.window = self._interval
        self._next_call_at = self._clock() + max(wait, self._interval)
        self._log.warning(
            "rate limited on %s of part %d: waiting %.1fs, edit interval now %.1fs",
            action.kind,
            action.index + 1,
            wait,
            self._interval,
        )
        if self._finishing:
            self._rate_hits += 1
            if self._rate_hits > FINAL_RATE_LIMITS:
                self._rate_hits = 0
                self._count_final_failure(action)

    def _on_failure(self, action: _Action, exc: Exception) -> None:
        self._log.warning("%s of part %d failed: %s", action.kind, action.index + 1, type(exc).__name__)
        self._log.debug("failed %s text: %r", action.kind, action.text, exc_info=exc)
        now = self._clock()
        if not self._finishing:
            self._stalled_at = len(self._text)
            self._next_call_at = now + self._interval
            return
        failures = self._count_final_failure(action)
        backoff = RETRY_BACKOFF * 2 ** (failures - 1)
        self._next_call_at = now + max(self._interval, backoff)

    def _count_final_failure(self, action: _Action) -> int:
        i = action.index
        failures = self._final_failures.get(i, 0) + 1
        self._final_failures[i] = failures
        if failures >= FINAL_ATTEMPTS:
            self._log.warning("giving up on part %d after %d attempts", i + 1, failures)
            self._abandoned.add(i)
            if action.kind == "send":
                self._refs.append(None)
                self._shown.append("")
        return failures

"""Platforms' rate limits as the renderer paces by them: so many calls per window.

Discord tells a bucket's state on every response (`X-RateLimit-Limit`, `-Remaining`,
`-Reset-After`); Telegram tells nothing until it refuses, and asks bots to keep to
about one message a second in a chat and twenty a minute in a group. A `Bucket`
holds what is known of one: the platform's word where it spoke, the documented
figures until then. Knowing how many calls are left lets a streamed answer leave
one for its final edit, so the last words go out as the model ends instead of
after a fixed interval, and no call is made into a bucket known to be empty.

Both platforms also limit the bot as a whole, over all its chats: Discord to 50
requests a second (its "global" limit, told only by a 429), Telegram to about 30
messages a second. A `Rate` holds that budget. The platform's client takes from it
before every call it counts (`Rate.take`), so no call goes into it empty; a chat's
`Bucket` reads it too, so that a streaming edit leaves part of it for other
answers' first messages and final texts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

#: buckets a `Buckets` remembers; the least recently used beyond this are forgotten
KEPT = 8192
#: a bot-wide limit of L calls a second as Herald paces by it: this share of L a second,
#: up to this share of L at once. Neither platform says how it counts; this is the reading
#: of their client libraries (python-telegram-bot's rate limiter: 30 a second, 30 at
#: once), with room to spare: a platform that allows L a second and L at once never
#: refuses these calls, even when some arrive up to a ninth of a second later than others.
PACED_SHARE, BURST_SHARE = 0.9, 0.9
#: calls' worth of float noise a `Rate` overlooks
_EPSILON = 1e-9


def _paced(limit: float) -> tuple[float, int]:
    """Calls a second and at once that keep under `limit` calls a second."""
    return limit * PACED_SHARE, math.floor(limit * BURST_SHARE)


class Rate:
    """A bot's budget over all its chats: `per_second` calls a second, at most `burst`
    at once (a token bucket). A streaming call leaves `reserve` of the burst for calls
    that end or begin an answer. Single-threaded: the event loop's tasks share it."""

    __slots__ = ("_at", "_clock", "_tokens", "_turns", "burst", "per_second", "reserve")

    def __init__(self, per_second: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = max(per_second, 1e-6)
        self.burst = max(1, burst)
        self.reserve = self.burst // 2
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()  # tokens are counted as of this time (later: refused until then)
        self._turns = asyncio.Lock()  # callers waiting in `take`, first come first served

    @classmethod
    def within(cls, limit: float, *, clock: Callable[[], float] = time.monotonic) -> Rate:
        """Paced to keep under a platform's `limit` calls a second (`PACED_SHARE`)."""
        return cls(*_paced(limit), clock=clock)

    def resize(self, limit: float) -> None:
        """From now on, keep under `limit` calls a second (as `within`): this process's
        share of the bot's limit changed (`core.pacing_share`). Calls made stay counted."""
        self._refill(self._clock())
        per_second, burst = _paced(limit)
        self.per_second = max(per_second, 1e-6)
        self.burst = max(1, burst)
        self.reserve = self.burst // 2
        self._tokens = min(self._tokens, float(self.burst))

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_second)
            self._at = now

    def wait(self, keep: int = 0) -> float:
        """Seconds until a call may go and still leave `keep` calls (0.0: now)."""
        now = self._clock()
        need = 1 + min(max(keep, 0), self.burst - 1)
        if now < self._at:  # refused by the platform until then
            return self._at - now + max(0.0, need - self._tokens) / self.per_second
        self._refill(now)
        if self._tokens >= need - _EPSILON:  # a wait of exactly the shortfall always ends it
            return 0.0
        return (need - self._tokens) / self.per_second

    def spend(self) -> None:
        """Count a call as it is made."""
        self._refill(self._clock())
        self._tokens -= 1

    def refused(self, retry_after: float) -> None:
        """The platform answered 429 for the whole bot: nothing until `retry_after` has passed."""
        self._tokens = min(self._tokens, 0.0)
        self._at = max(self._at, self._clock() + max(0.0, retry_after))

    async def take(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Wait until a call may go, then count it: what a platform's client does before
        each call the platform counts against the bot. Callers go in the order they came
        (one waits at a time, instead of all waking together to race for each call)."""
        if not self._turns.locked() and self.wait() <= 0:
            self.spend()
            return
        async with self._turns:
            while (delay := self.wait()) > 0:
                await sleep(delay)
            self.spend()


class Bucket:
    """`limit` calls per `window` seconds, a window starting with its first call (Discord's
    kind), within the bot's `overall` budget where the platform has one (its client
    spends that one). Single-threaded: the event loop's tasks share it."""

    __slots__ = ("_clock", "_remaining", "_reset_at", "limit", "overall", "window")

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        overall: Rate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max(1, limit)
        self.window = max(0.0, window)
        self.overall = overall
        self._clock = clock
        self._remaining = self.limit
        self._reset_at = -math.inf

    @property
    def remaining(self) -> int:
        """Calls left in the current window (a window that has ended is full again)."""
        return self.limit if self._clock() >= self._reset_at else self._remaining

    def wait(self, keep: int = 0) -> float:
        """Seconds until a call may go and still leave `keep` calls in its window
        (0.0: now). `keep` is capped so that a bucket of one still lets calls through.
        A call that keeps some (a streaming edit) also leaves the bot's overall budget
        its reserve."""
        own = self._wait(keep)
        if self.overall is None:
            return own
        return max(own, self.overall.wait(self.overall.reserve if keep > 0 else 0))

    def _wait(self, keep: int) -> float:
        now = self._clock()
        if now >= self._reset_at:
            return 0.0
        if self._remaining - 1 >= min(keep, self.limit - 1):
            return 0.0
        return self._reset_at - now

    def spend(self) -> None:
        """Count a call as it is made."""
        now = self._clock()
        if now >= self._reset_at:
            self._reset_at = now + self.window
            self._remaining = self.limit
        self._remaining = max(0, self._remaining - 1)

    def observe(self, limit: int, remaining: int, reset_after: float) -> None:
        """What the platform said after a call. Calls still in flight are already
        counted here, so within the same window the lower count is kept."""
        now = self._clock()
        self.limit = max(1, limit)
        if now < self._reset_at:
            remaining = min(remaining, self._remaining)
        self._remaining = max(0, remaining)
        self._reset_at = now + max(0.0, reset_after)
        self.window = max(self.window, reset_after)

    def refused(self, retry_after: float) -> None:
        """The platform answered 429: nothing more until `retry_after` has passed."""
        self._remaining = 0
        self._reset_at = max(self._reset_at, self._clock() + max(0.0, retry_after))


class Buckets:
    """The buckets of one platform connection, by key (what the platform counts per:
    a chat, a kind of call), made on first use with the documented figures, and the
    bot's `overall` budget where the platform has one."""

    def __init__(
        self,
        *,
        overall: Rate | None = None,
        kept: int = KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.overall = overall
        self._kept = kept
        self._clock = clock
        self._buckets: OrderedDict[Hashable, Bucket] = OrderedDict()

    def get(self, key: Hashable, limit: int, window: float, *, overall: bool = True) -> Bucket:
        """The bucket for `key`; a new one allows `limit` calls per `window` seconds, within
        the overall budget unless `overall` is False (calls the platform does not count there)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(
                limit, window, overall=self.overall if overall else None, clock=self._clock
            )
            if len(self._buckets) > self._kept:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def known(self, key: Hashable) -> Bucket | None:
        """The bucket for `key` if one was made (what a platform's headers update)."""
        return self._buckets.get(key)

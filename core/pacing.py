"""Platforms' rate limits as the renderer paces by them: so many calls per window.

Discord tells a bucket's state on every response (`X-RateLimit-Limit`, `-Remaining`,
`-Reset-After`); Telegram tells nothing until it refuses, and asks bots to keep to
about one message a second in a chat and twenty a minute in a group. A `Bucket`
holds what is known of one: the platform's word where it spoke, the documented
figures until then. Knowing how many calls are left lets a streamed answer leave
one for its final edit, so the last words go out as the model ends instead of
after a fixed interval, and no call is made into a bucket known to be empty.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

#: buckets a `Buckets` remembers; the least recently used beyond this are forgotten
KEPT = 8192


class Bucket:
    """`limit` calls per `window` seconds, a window starting with its first call (Discord's
    kind). Single-threaded: the event loop's tasks share it."""

    __slots__ = ("_clock", "_remaining", "_reset_at", "limit", "window")

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, limit)
        self.window = max(0.0, window)
        self._clock = clock
        self._remaining = self.limit
        self._reset_at = -math.inf

    @property
    def remaining(self) -> int:
        """Calls left in the current window (a window that has ended is full again)."""
        return self.limit if self._clock() >= self._reset_at else self._remaining

    def wait(self, keep: int = 0) -> float:
        """Seconds until a call may go and still leave `keep` calls in its window
        (0.0: now). `keep` is capped so that a bucket of one still lets calls through."""
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
    a chat, a kind of call), made on first use with the documented figures."""

    def __init__(self, *, kept: int = KEPT, clock: Callable[[], float] = time.monotonic) -> None:
        self._kept = kept
        self._clock = clock
        self._buckets: OrderedDict[Hashable, Bucket] = OrderedDict()

    def get(self, key: Hashable, limit: int, window: float) -> Bucket:
        """The bucket for `key`; a new one allows `limit` calls per `window` seconds."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(limit, window, clock=self._clock)
            if len(self._buckets) > self._kept:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def known(self, key: Hashable) -> Bucket | None:
        """The bucket for `key` if one was made (what a platform's headers update)."""
        return self._buckets.get(key)

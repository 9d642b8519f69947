"""What every social network client offers the core, and how it fails.

One client per connected account. Publishing is keyed: the caller derives a key
from its post id (and the part's number in a thread), and a client whose network
can make a retry harmless uses it (Mastodon's `Idempotency-Key`, a Bluesky record
key); X has no such thing, so a send that may have happened is `PublishUnknown`
and is never retried automatically.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connected account posts as (checked once, when it is connected)."""

    network: str  # "x", "bluesky", "mastodon"
    account_id: str  # the network's own id (X user id, Bluesky DID, Mastodon account id)
    handle: str  # as people write it: @name, name.bsky.social, @name@instance
    url: str  # the profile's page


@dataclass(frozen=True, slots=True)
class PublishedPart:
    """One post on the network: what a reply in a thread refers to, and its link."""

    post_id: str  # X tweet id, Bluesky at:// URI, Mastodon status id
    url: str
    #: what else a reply needs (Bluesky: the record's cid)
    ref: str = ""


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a thread's next part goes: under `parent`, in the thread that `root` began."""

    root: PublishedPart
    parent: PublishedPart


class NetworkError(Exception):
    """A network refused or failed; `user_message` is for the chat (plain words, no tokens)."""

    def __init__(self, user_message: str, detail: str = "") -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message


class PublishFailed(NetworkError):
    """Nothing was published: safe to retry."""


class PublishUnknown(NetworkError):
    """It may have been published (a timeout after sending, where a retry could post it
    twice): never retried automatically; the approver is told, with where to check."""


class RateLimited(PublishFailed):
    """Refused for now; `retry_after` seconds (from the network's reset headers)."""

    def __init__(self, user_message: str, retry_after: float, detail: str = "") -> None:
        super().__init__(user_message, detail)
        self.retry_after = retry_after


class Unauthorized(NetworkError):
    """401/403 for the account itself (revoked, expired, wrong scope): the account needs
    a person's attention; not retried."""


class Rejected(NetworkError):
    """The network refused this post as it is (X's duplicate content, Mastodon's 422, too
    long): not retried; the reason is explained to the chat."""


class Measure(Protocol):
    def __call__(self, text: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a post may be on this account's network, counted the network's way."""

    max_length: int
    measure: Measure
    unit: str  # "weighted characters", "graphemes", "characters"


class NetworkClient(Protocol):
    """A connected account on one network."""

    @property
    def network(self) -> str: ...

    async def whoami(self) -> Identity:
        """Check the credentials once (on connecting) and say who they post as."""

    async def limits(self) -> Limits:
        """This account's post limits (Mastodon: the instance's own, from /api/v2/instance)."""

    async def publish(self, text: str, *, key: str, reply_to: ReplyTo | None = None) -> PublishedPart:
        """Publish one post (a thread's part when `reply_to` is given). `key` is stable
        for this part of this post across retries and replicas."""

    async def close(self) -> None: ...


def server_now(headers: Mapping[str, str]) -> float:
    """The server's own time from its `Date` header (any case), else this machine's: a
    rate limit's reset is counted from it, so that a skewed local clock does not matter."""
    found = next((value for name, value in headers.items() if name.lower() == "date"), None)
    if found:
        with contextlib.suppress(TypeError, ValueError):
            return parsedate_to_datetime(found).timestamp()
    return time.time()


def in_words(seconds: float) -> str:
    """A wait as people say it: `1 second`, `40 seconds`, `3 minutes`, `2 hours`."""
    for unit, size, below in (("second", 1, 90), ("minute", 60, 90 * 60), ("hour", 3600, math.inf)):
        if seconds < below:
            count = max(1, math.ceil(int(seconds) / size))  # never sooner than it is, to the second
            return f"{count} {unit}{'s' if count != 1 else ''}"
    raise AssertionError("unreachable")


def thread_keys(post_id: str, parts: int) -> Sequence[str]:
    """The key of each part of a post's thread on one network."""
    return [f"{post_id}-{n}" for n in range(1, parts + 1)]

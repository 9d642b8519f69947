"""Discord's rate-limit buckets for answers, as its responses tell them.

Every REST response carries the bucket's state in `X-RateLimit-Limit`, `-Remaining`
and `-Reset-After`. discord.py waits on them itself; the renderer reads them too
(`core.pacing`), through an aiohttp trace on discord.py's own session, so that a
streamed answer keeps a call in reserve for its final edit. Messages are counted
per channel, an interaction's follow-ups per interaction token; until Discord has
answered once, a bucket is taken to be the usual 5 calls per 5 seconds.

Discord also limits the bot as a whole: 50 requests a second over every route, told
only by a 429 with `X-RateLimit-Global`, and interaction endpoints not counted. The
same trace takes each other API request from the bot's overall `Rate` before it goes
(discord.py would otherwise learn of that limit only from a 429).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import SimpleNamespace

import aiohttp

from core.pacing import Bucket, Buckets
from core.platform import CallKind

#: what Discord allows a channel's messages before it has said (5 per 5 s)
LIMIT, WINDOW = 5, 5.0
#: requests a second Discord allows a bot over all routes, unless it raised the bot's limit
GLOBAL_LIMIT = 50

_CHANNEL = re.compile(r"/channels/(\d+)/messages(/\d+)?$")
_WEBHOOK = re.compile(r"/webhooks/\d+/([^/]+)(/messages/[^/]+)?$")


def channel_bucket(buckets: Buckets, kind: CallKind, channel_id: int) -> Bucket:
    return buckets.get((kind, str(channel_id)), LIMIT, WINDOW)


def webhook_bucket(buckets: Buckets, kind: CallKind, token: str) -> Bucket:
    """An interaction's follow-ups: interaction endpoints are not in the global limit."""
    return buckets.get((kind, token), LIMIT, WINDOW, overall=False)


def counts_globally(path: str) -> bool:
    """Whether Discord counts a request in the bot's global limit: every API request but
    the interaction endpoints (an interaction's callback, and its webhook's follow-ups)."""
    return path.startswith("/api/") and "/interactions/" not in path and _WEBHOOK.search(path) is None


def bucket_key(method: str, path: str) -> tuple[CallKind, str] | None:
    """The bucket a request counts against: a message sent or edited in a channel, or
    through an interaction's webhook. None for any other request."""
    kind: CallKind
    if method == "POST":
        kind = "send"
    elif method == "PATCH":
        kind = "edit"
    else:
        return None
    for pattern in (_CHANNEL, _WEBHOOK):
        found = pattern.search(path)
        if found is not None and (found.group(2) is not None) == (kind == "edit"):
            return kind, found.group(1)
    return None


def observe(buckets: Buckets, method: str, path: str, headers: Mapping[str, str]) -> None:
    """Update the bucket a response tells of; headers that don't parse are ignored."""
    key = bucket_key(method, path)
    bucket = buckets.known(key) if key is not None else None
    if bucket is None:
        return
    try:
        limit = int(headers["X-RateLimit-Limit"])
        remaining = int(headers["X-RateLimit-Remaining"])
        reset_after = float(headers["X-RateLimit-Reset-After"])
    except (KeyError, ValueError):
        return
    bucket.observe(limit, remaining, reset_after)


def refused_globally(buckets: Buckets, status: int, headers: Mapping[str, str]) -> None:
    """A 429 for the whole bot: its overall budget waits as long as Discord said."""
    if buckets.overall is None or status != 429 or headers.get("X-RateLimit-Global") != "true":
        return
    try:
        retry_after = float(headers["Retry-After"])
    except (KeyError, ValueError):
        retry_after = 1.0
    buckets.overall.refused(retry_after)


def rate_limit_trace(buckets: Buckets) -> aiohttp.TraceConfig:
    """An aiohttp trace (discord.py's `http_trace`) that takes each request the global
    limit counts from `buckets.overall` before it goes, and feeds `buckets` from responses."""

    async def on_request_start(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        if buckets.overall is not None and counts_globally(params.url.path):
            await buckets.overall.take()

    async def on_request_end(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        headers = params.response.headers
        observe(buckets, params.method, params.url.path, headers)
        refused_globally(buckets, params.response.status, headers)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    trace.on_request_end.append(on_request_end)
    return trace

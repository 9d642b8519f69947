"""Discord's rate-limit buckets for answers, as its responses tell them.

Every REST response carries the bucket's state in `X-RateLimit-Limit`, `-Remaining`
and `-Reset-After`. discord.py waits on them itself; the renderer reads them too
(`core.pacing`), through an aiohttp trace on discord.py's own session, so that a
streamed answer keeps a call in reserve for its final edit. Messages are counted
per channel, an interaction's follow-ups per interaction token; until Discord has
answered once, a bucket is taken to be the usual 5 calls per 5 seconds.
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

_CHANNEL = re.compile(r"/channels/(\d+)/messages(/\d+)?$")
_WEBHOOK = re.compile(r"/webhooks/\d+/([^/]+)(/messages/[^/]+)?$")


def channel_bucket(buckets: Buckets, kind: CallKind, channel_id: int) -> Bucket:
    return buckets.get((kind, str(channel_id)), LIMIT, WINDOW)


def webhook_bucket(buckets: Buckets, kind: CallKind, token: str) -> Bucket:
    return buckets.get((kind, token), LIMIT, WINDOW)


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


def rate_limit_trace(buckets: Buckets) -> aiohttp.TraceConfig:
    """An aiohttp trace (discord.py's `http_trace`) that feeds `buckets` from responses."""

    async def on_request_end(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        observe(buckets, params.method, params.url.path, params.response.headers)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace

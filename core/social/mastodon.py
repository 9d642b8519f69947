"""Mastodon: one account's posts, published exactly once through Mastodon's REST API.

The wire protocol over aiohttp, not Mastodon.py: Mastodon.py is synchronous (requests),
so every call would block the event loop or need a thread of its own, its
`request_timeout` bounds each socket read rather than the whole call, and it cannot
tell a request that never left from one that timed out after it was sent, which is
what exactly-once turns on. Herald is asyncio throughout and already depends on
aiohttp, and three endpoints are all it needs: `GET /api/v1/accounts/verify_credentials`,
`GET /api/v2/instance` and `POST /api/v1/statuses`.

Exactly once: every publish sends `Idempotency-Key: <key>`. Mastodon's PostStatusService
keeps the key per account for one hour after creating the status, under a lock: the
same key again returns that status and creates nothing, and while the first request
with the key is still running another gets 503. So a timeout, a dropped connection or
a 5xx, any of which may come after the status was created, is retried with the same
key a bounded number of times; if no try confirms, the post is `PublishUnknown`. A
request that never reached the server (connection refused) is plain `PublishFailed`.
The key only holds for that hour: whoever retries later must not count on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from core.social.mastodon_text import URL_LENGTH, MastodonMeasure
from core.social.network import (
    Identity,
    Limits,
    NetworkError,
    PublishedPart,
    PublishFailed,
    PublishUnknown,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
    in_words,
    server_now,
)

__all__ = ["MastodonClient", "MastodonCredentials"]

log = logging.getLogger(__name__)

NETWORK = "mastodon"
#: how long Mastodon keeps an Idempotency-Key (PostStatusService: setex 3_600)
IDEMPOTENCY_WINDOW = 3600.0
#: Mastodon's own default, for a server whose instance document leaves it out
DEFAULT_MAX_CHARACTERS = 500
#: a rate-limit wait that would end this close to the key's expiry is not waited out
_KEY_MARGIN = 300.0
_OVER_LIMIT = re.compile(r"character limit of (\d+) exceeded")
_RETRIED_STATUSES = frozenset({500, 502, 503, 504})

_Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MastodonCredentials:
    """One account: its server's address and an access token (never in the repr)."""

    instance_url: str
    access_token: str = field(repr=False)

    def __post_init__(self) -> None:
        url = self.instance_url.strip().rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise ValueError("a Mastodon server's address starts with https://")
        object.__setattr__(self, "instance_url", url)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: _Json
    headers: dict[str, str]

    @property
    def error(self) -> str:
        return str(self.body.get("error") or f"HTTP {self.status}")


class MastodonClient:
    """A connected Mastodon account (a `NetworkClient`)."""

    def __init__(
        self,
        credentials: MastodonCredentials,
        *,
        timeout: float = 20.0,
        connect_timeout: float = 5.0,
        attempts: int = 3,
        retry_delay: float = 1.0,
        visibility: str = "public",
        user_agent: str = "Herald",
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._visibility = visibility
        self._user_agent = user_agent
        #: makes the connections (a chat's own server: public addresses only)
        self._connector = connector
        self._session: aiohttp.ClientSession | None = None
        self._instance: _Json | None = None
        self._instance_lock = asyncio.Lock()

    @property
    def network(self) -> str:
        return NETWORK

    @property
    def server(self) -> str:
        return URL(self._credentials.instance_url).host or self._credentials.instance_url

    async def whoami(self) -> Identity:
        account = await self._get("/api/v1/accounts/verify_credentials")
        domain = str((await self._instance_document()).get("domain") or self.server)
        username = str(account["username"])
        return Identity(
            network=NETWORK,
            account_id=str(account["id"]),
            handle=f"@{username}@{domain}",
            url=str(account.get("url") or f"{self._credentials.instance_url}/@{username}"),
        )

    async def limits(self) -> Limits:
        """The instance's own limit and link length (read once, then kept)."""
        statuses = (await self._instance_document()).get("configuration", {}).get("statuses", {})
        return Limits(
            max_length=int(statuses.get("max_characters") or DEFAULT_MAX_CHARACTERS),
            measure=MastodonMeasure(int(statuses.get("characters_reserved_per_url") or URL_LENGTH)),
            unit="characters",
        )

    async def publish(self, text: str, *, key: str, reply_to: ReplyTo | None = None) -> PublishedPart:
        if not key:
            raise ValueError("a Mastodon post needs its idempotency key")
        form = {"status": text, "visibility": self._visibility}
        if reply_to is not None:
            form["in_reply_to_id"] = reply_to.parent.post_id
        #: when a try that may have created the status was sent (None: none yet)
        maybe_sent: float | None = None
        why = ""
        for attempt in range(self._attempts):
            if attempt and self._retry_delay > 0:
                await asyncio.sleep(self._retry_delay * 2 ** (attempt - 1))
            try:
                answer = await self._request("POST", "/api/v1/statuses", data=form, key=key)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
                why = f"could not connect ({type(error).__name__})"  # never reached the server
            except (TimeoutError, aiohttp.ClientError, ValueError) as error:
                maybe_sent = maybe_sent or time.monotonic()
                why = f"no answer after sending ({type(error).__name__})"
            else:
                if answer.status == 200 and "id" in answer.body:
                    return PublishedPart(
                        post_id=str(answer.body["id"]),
                        url=str(answer.body.get("url") or answer.body.get("uri") or ""),
                    )
                if answer.status not in _RETRIED_STATUSES and answer.status != 200:
                    raise self._refused(answer, reply_to, maybe_sent)
                maybe_sent = maybe_sent or time.monotonic()
                why = f"HTTP {answer.status}"
            log.warning("mastodon: try %d of %d for %s failed: %s", attempt + 1, self._attempts, key, why)
        if maybe_sent is not None:
            raise PublishUnknown(
                f"Mastodon at {self.server} did not confirm this post after {self._attempts} tries; it "
                "may already be up. Sent again within the hour, it cannot be published twice.",
                f"mastodon {key}: {why}",
            )
        raise PublishFailed(
            f"Mastodon at {self.server} could not be reached; nothing was published.",
            f"mastodon {key}: {why}",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the wire ---------------------------------------------------------------------------

    async def _instance_document(self) -> _Json:
        async with self._instance_lock:
            if self._instance is None:
                self._instance = await self._get("/api/v2/instance")
            return self._instance

    async def _get(self, path: str) -> _Json:
        """A read: one try; a failure says plainly what is wrong."""
        try:
            answer = await self._request("GET", path)
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            raise PublishFailed(
                f"Mastodon at {self.server} could not be reached.", f"GET {path}: {type(error).__name__}"
            ) from error
        if answer.status == 200:
            return answer.body
        if answer.status in (401, 403, 429):
            raise self._refused(answer, None, None)
        raise PublishFailed(
            f"Mastodon at {self.server} did not answer as a Mastodon server does (HTTP {answer.status}).",
            f"GET {path}: {answer.status} {answer.error}",
        )

    async def _request(
        self, method: str, path: str, *, data: dict[str, str] | None = None, key: str = ""
    ) -> _Answer:
        headers = {"Authorization": f"Bearer {self._credentials.access_token}"}
        if key:
            headers["Idempotency-Key"] = key
        async with self._client().request(
            method, self._credentials.instance_url + path, data=data, headers=headers
        ) as response:
            text = await response.text()
            body = _json_object(text) if response.content_type == "application/json" else {}
            if response.status == 200 and not body:
                raise ValueError(f"HTTP 200 without a JSON object ({response.content_type})")
            return _Answer(response.status, body, dict(response.headers))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": self._user_agent},
                connector=self._connector() if self._connector else None,
            )
        return self._session

    # -- refusals in plain words --------------------------------------------------------------

    def _refused(self, answer: _Answer, reply_to: ReplyTo | None, maybe_sent: float | None) -> NetworkError:
        detail = f"mastodon {answer.status}: {answer.error}"
        if answer.status == 401:
            return Unauthorized(
                f"Mastodon at {self.server} no longer accepts this account's access token (revoked or "
                "expired): connect the account again.",
                detail,
            )
        if answer.status == 403:
            return Unauthorized(
                f"Mastodon at {self.server} does not let this account post ({answer.error}): connect it "
                "again with permission to write posts, or check the account on its server.",
                detail,
            )
        if answer.status == 429:
            wait = _retry_after(answer.headers)
            if (
                maybe_sent is not None
                and time.monotonic() - maybe_sent + wait > IDEMPOTENCY_WINDOW - _KEY_MARGIN
            ):
                return PublishUnknown(
                    f"Mastodon at {self.server} did not confirm this post and is limiting this account for "
                    f"{in_words(wait)}; the post may already be up. Check the account on {self.server} "
                    "before publishing it again.",
                    detail,
                )
            return RateLimited(
                "Mastodon is limiting how often this account may post; it can post again in "
                f"{in_words(wait)}.",
                wait,
                detail,
            )
        if answer.status == 422:
            over = _OVER_LIMIT.search(answer.error)
            if over is not None:
                reason = f"it is longer than this server allows ({over.group(1)} characters)"
            else:
                reason = answer.error.removeprefix("Validation failed: ").rstrip(".")
            return Rejected(f"Mastodon refused this post: {reason}.", detail)
        if answer.status == 404 and reply_to is not None:
            if maybe_sent is not None:
                return PublishUnknown(
                    "Mastodon did not confirm this post and can no longer find the post it replies to. "
                    f"Check the account on {self.server} before publishing it again.",
                    detail,
                )
            return Rejected(
                "Mastodon refused this post: the post it replies to is gone (deleted, or hidden from "
                "this account).",
                detail,
            )
        return Rejected(f"Mastodon refused this post: {answer.error.rstrip('.')}.", detail)


def _json_object(text: str) -> _Json:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(headers: dict[str, str]) -> float:
    """Seconds until X-RateLimit-Reset, measured on the server's own clock (its Date) when it
    sends one, so that a skewed local clock does not matter."""
    reset = _moment(headers.get("X-RateLimit-Reset", ""))
    if reset is None:
        try:
            return max(0.0, float(headers.get("Retry-After", "")))
        except ValueError:
            return 60.0
    return max(0.0, reset - server_now(headers))


def _moment(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except ValueError:
        return None

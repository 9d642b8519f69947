"""X (Twitter) API v2 for one account: who it is, and publishing posts and threads.

The wire protocol over aiohttp, signed with oauthlib, rather than a client library:

- tweepy's `AsyncClient` (tweepy[async], 4.17) sends every request to a hard-coded
  ``https://api.twitter.com`` (no stand-in can be put in its place), has no timeout
  of its own (only through a session one makes for it), reads every error body as
  JSON (a proxy's HTML 502 becomes a parsing error) and logs each request's headers
  at DEBUG, an OAuth 2.0 bearer token included;
- X's official `xdk` is synchronous (`requests`, no timeout by default): a thread per
  call that can't be cancelled, and an alpha SDK.

Herald needs two endpoints (``GET /2/users/me``, ``POST /2/tweets``), async calls
with timeouts, and to tell a send that certainly did not happen from one that may
have: X has no idempotency key, so that difference is the whole of exactly-once
here, and it is decided below from where the request failed. OAuth 1.0a signing is
where a hand-written version goes subtly wrong, so oauthlib (RFC 5849, vetted) does
it.

Failures (see `core.social.network`): refused before connecting (DNS, connection
refused, connect timeout) → `PublishFailed`; a timeout or a dropped connection once
the request may have reached X → `PublishUnknown`, never retried automatically;
503 (X overloaded, "try again later") → `PublishFailed`; other 5xx on a post →
`PublishUnknown` (X's stack may have written it); 429 → `RateLimited`, the wait from
the exhausted limit's reset header, measured against X's own ``Date``; 401, and 403
for the account or app → `Unauthorized`; X's refusals of the post itself (duplicate
content, too long, replying to a post that is gone, 400) → `Rejected` in plain words.

Connections are never reused (`force_close`): a reused keep-alive connection the
server closed meanwhile fails a POST in a way indistinguishable from a post that
was received, and publishing is far too rare for pooling to matter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from oauthlib.oauth1 import Client as OAuth1Signer

from core.posts.targets import Target
from core.social.network import (
    Identity,
    Limits,
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

__all__ = ["API_URL", "DUPLICATE_MESSAGE", "XClient", "XCredentials"]

log = logging.getLogger("herald.social")
# oauthlib logs every signed request's parameters at DEBUG, the access token among
# them; keep that out of Herald's logs unless someone asked for oauthlib's on purpose.
if logging.getLogger("oauthlib").level == logging.NOTSET:
    logging.getLogger("oauthlib").setLevel(logging.INFO)

API_URL = "https://api.x.com"
NETWORK = "x"
SITE = "https://x.com"
DUPLICATE_MESSAGE = "X refused this post because the account already posted the same text."
#: the most of an answer's body read (X's answers here are a few hundred bytes)
MAX_BODY = 1 << 20
#: headers whose exhausted limit makes a 429: X's 15-minute window and its 24-hour caps
_LIMIT_HEADERS = ("x-rate-limit", "x-user-limit-24hour", "x-app-limit-24hour")
_CREDENTIAL_FIELDS = ("consumer_key", "consumer_secret", "access_token", "access_token_secret", "user_token")


@dataclass(frozen=True, slots=True)
class XCredentials:
    """One account's X credentials: OAuth 1.0a user context (the app's consumer key and
    secret, the account's access token and secret), or an OAuth 2.0 user access token
    (scopes tweet.read, tweet.write, users.read). None of them is ever shown: the repr
    says only which kind it is."""

    consumer_key: str = field(default="", repr=False)
    consumer_secret: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    access_token_secret: str = field(default="", repr=False)
    user_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        oauth1 = (self.consumer_key, self.consumer_secret, self.access_token, self.access_token_secret)
        if self.user_token and any(oauth1):
            raise ValueError("X credentials: give OAuth 1.0a keys or an OAuth 2.0 user token, not both")
        if not self.user_token and not all(oauth1):
            raise ValueError(
                "X credentials: OAuth 1.0a needs the consumer key and secret and the access token "
                "and secret (or give an OAuth 2.0 user token)"
            )

    @property
    def kind(self) -> Literal["oauth1", "oauth2"]:
        return "oauth2" if self.user_token else "oauth1"

    def __repr__(self) -> str:
        return f"XCredentials({'OAuth 2.0 user token' if self.user_token else 'OAuth 1.0a user context'})"

    __str__ = __repr__

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> XCredentials:
        """From what an account store keeps (`as_mapping`); unknown keys are ignored."""
        return cls(**{name: str(values.get(name, "")) for name in _CREDENTIAL_FIELDS})

    def as_mapping(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _CREDENTIAL_FIELDS if getattr(self, name)}


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or None


class XClient:
    """One X account over API v2. `identity`, when the account's is known (kept from when
    it was connected), saves a ``whoami`` before the first post. `timeout` bounds each
    request (connect, send, answer), `connect_timeout` the connecting alone: keep it
    below `timeout`, so that a request that never reached X is told from one that may
    have."""

    def __init__(
        self,
        credentials: XCredentials,
        *,
        api_url: str = API_URL,
        identity: Identity | None = None,
        timeout: float = 15.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._credentials = credentials
        self._api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._identity = identity
        self._signer = (
            OAuth1Signer(
                credentials.consumer_key,
                client_secret=credentials.consumer_secret,
                resource_owner_key=credentials.access_token,
                resource_owner_secret=credentials.access_token_secret,
            )
            if credentials.kind == "oauth1"
            else None
        )

    def __repr__(self) -> str:
        who = self._identity.handle if self._identity else "not checked yet"
        return f"XClient({who}, {self._credentials!r})"

    @property
    def network(self) -> str:
        return NETWORK

    async def whoami(self) -> Identity:
        """``GET /2/users/me``; the handle is kept for the links of published posts."""
        try:
            answer = await self._request("GET", "/2/users/me")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PublishFailed("Herald could not reach X to check the account.", _describe(exc)) from exc
        if answer.status != 200:
            raise _refusal(answer, posting=False)
        data = answer.body.get("data") if isinstance(answer.body, dict) else None
        if not isinstance(data, dict) or not data.get("id") or not data.get("username"):
            raise PublishFailed("X answered the account check in a way Herald does not understand.")
        username = str(data["username"])
        self._identity = Identity(
            network=NETWORK, account_id=str(data["id"]), handle=f"@{username}", url=f"{SITE}/{username}"
        )
        return self._identity

    async def limits(self) -> Limits:
        return Limits(max_length=Target.X.limit, measure=Target.X.measure, unit="weighted characters")

    async def publish(self, text: str, *, key: str, reply_to: ReplyTo | None = None) -> PublishedPart:
        """``POST /2/tweets``; a thread's part replies to its parent. `key` is not sent: X
        has no idempotency, so a send that may have happened raises `PublishUnknown`."""
        if not text.strip():
            raise Rejected("X refused this post because it is empty.")
        length = Target.X.measure(text)
        if length > Target.X.limit:
            raise Rejected(
                f"X refused this post because it is longer than X allows "
                f"({length} of {Target.X.limit} weighted characters)."
            )
        identity = self._identity or await self.whoami()  # before sending: the post's link needs it
        payload: dict[str, Any] = {"text": text}
        if reply_to is not None:
            payload["reply"] = {"in_reply_to_tweet_id": reply_to.parent.post_id}
        check = f"Check {identity.url} before posting it again."
        try:
            answer = await self._request("POST", "/2/tweets", payload)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL) as exc:
            raise PublishFailed("Herald could not reach X; nothing was posted.", _describe(exc)) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("x: publishing %s may have happened: %s", key, _describe(exc))
            raise PublishUnknown(
                f"X did not answer in time, so Herald can't tell whether the post went out. {check}",
                _describe(exc),
            ) from exc
        if 200 <= answer.status < 300:
            data = answer.body.get("data") if isinstance(answer.body, dict) else None
            if not isinstance(data, dict) or not data.get("id"):
                raise PublishUnknown(f"X accepted the post but did not say which it is. {check}")
            post_id = str(data["id"])
            return PublishedPart(post_id=post_id, url=f"{identity.url}/status/{post_id}")
        if answer.status >= 500 and answer.status != 503:
            raise PublishUnknown(
                f"X failed while taking the post ({answer.status}), so it may have gone out. {check}",
                _detail(answer),
            )
        raise _refusal(answer, posting=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self, method: Literal["GET", "POST"], path: str, payload: dict[str, Any] | None = None
    ) -> _Answer:
        url = self._api_url + path
        headers = {"Accept": "application/json"}
        body = None
        if payload is not None:
            body = json.dumps(payload, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        if self._signer is not None:
            # A JSON body is not part of an OAuth 1.0a signature (RFC 5849 §3.4.1.3.1).
            _, signed, _ = self._signer.sign(url, http_method=method)
            headers["Authorization"] = signed["Authorization"]
        else:
            headers["Authorization"] = f"Bearer {self._credentials.user_token}"
        timeout = aiohttp.ClientTimeout(total=self.timeout, connect=self.connect_timeout)
        session = self._client()
        async with session.request(
            method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_BODY:
                    break  # not X's answer: read as unparsable
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            return _Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, parsed)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session


def _refusal(answer: _Answer, *, posting: bool) -> Exception:
    """X's refusal as one of the core's errors, with a chat-ready message."""
    detail = _detail(answer)
    lowered = detail.lower()
    if answer.status == 429:
        wait = _retry_after(answer.headers)
        return RateLimited(
            f"X is limiting this account for now; it can post again in about {in_words(wait)}.",
            retry_after=wait,
            detail=detail,
        )
    if posting and "duplicate content" in lowered:
        return Rejected(DUPLICATE_MESSAGE, detail)
    if posting and "too long" in lowered:
        return Rejected("X refused this post because it is longer than X allows.", detail)
    if posting and "deleted or not visible" in lowered:
        return Rejected(
            "X refused this post because the post it replies to was deleted or is not visible "
            "to the account.",
            detail,
        )
    if answer.status == 401:
        return Unauthorized(
            "X no longer accepts this account's credentials (revoked or expired): reconnect it.", detail
        )
    if answer.status == 403:
        return Unauthorized(
            "X does not let this account do that with these credentials (the app may lack write "
            "access, or the account is restricted): check the account and reconnect it.",
            detail,
        )
    if posting and answer.status == 400:
        return Rejected(f"X refused this post as it is: {detail[:200]}", detail)
    if answer.status == 503:
        return PublishFailed("X is overloaded right now; nothing was posted.", detail)
    return PublishFailed(f"X answered {answer.status}; nothing was posted.", detail)


def _detail(answer: _Answer) -> str:
    """X's own words: the problem's detail and each error's message."""
    body = answer.body if isinstance(answer.body, dict) else {}
    parts = [str(body[name]) for name in ("title", "detail") if body.get(name)]
    errors = body.get("errors")
    if isinstance(errors, list):
        parts += [str(e["message"]) for e in errors if isinstance(e, dict) and e.get("message")]
    return " — ".join(parts) or f"HTTP {answer.status}"


def _retry_after(headers: Mapping[str, str]) -> float:
    """Seconds until the limit that ran out resets (the latest, if several did), counted
    from X's ``Date`` so that this machine's clock does not matter."""
    resets: list[int] = []
    for prefix in _LIMIT_HEADERS:
        reset, remaining = headers.get(f"{prefix}-reset"), headers.get(f"{prefix}-remaining")
        if reset and reset.isdigit() and remaining == "0":
            resets.append(int(reset))
    fallback = headers.get("x-rate-limit-reset", "")
    if not resets and fallback.isdigit():
        resets.append(int(fallback))
    if not resets:
        return 60.0  # a 429 without X's headers: a short, polite pause
    return max(0.0, max(resets) - server_now(headers))


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

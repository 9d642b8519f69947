"""A loopback stand-in of the X API v2 (posting), strict like the real one.

Written from X's documentation (docs.x.com: "Creating a signature", "Authorizing a
request", POST /2/tweets, GET /2/users/me, rate limits) and from the bodies X is
seen sending in client libraries' issue trackers, so that Herald's client meets
X's real refusals instead of mocks:

* Authentication, checked before anything else:
  - OAuth 1.0a user context, verified exactly per RFC 5849: the ``Authorization:
    OAuth …`` header's parameters, the query (and a form-encoded body; a JSON body
    is never signed), the base string URI from the Host header, HMAC-SHA1 keyed with
    the consumer secret and the token secret. A wrong signature or secret, an
    unknown key or token, a timestamp more than `timestamp_skew` seconds from the
    emulator's clock, a nonce used before (same consumer, token and timestamp), a
    repeated parameter or a signature method other than HMAC-SHA1: all answer X's
    ``401 {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail":
    "Unauthorized"}``.
  - OAuth 2.0 user-context bearer tokens the emulator issued (`XAccount.user_token`),
    with scopes; an app-only bearer token answers 403 "Unsupported Authentication",
    as X does on user-context endpoints, and a missing scope 403 "Forbidden".
* ``GET /2/users/me``: ``{"data": {"id", "name", "username"}}``.
* ``POST /2/tweets`` (JSON ``{"text", "reply": {"in_reply_to_tweet_id"}}``):
  ``201 {"data": {"id", "text", "edit_history_tweet_ids"}}``, the text as X stores
  it (links wrapped as ``https://t.co/…``); ids are snowflakes. Refused: a body that
  is not JSON or has fields X does not know (400 "Invalid Request"), text longer
  than 280 weighted characters, counted by twitter-text as X does (400 "Your
  Tweet text is too long…"; X has been seen answering it as 400 and as 403 over
  the years: clients must read the body, not only the status), a reply to a tweet
  that does not exist or was deleted (403 "You attempted to reply to a Tweet that
  is deleted or not visible to you."), the same text again from the same account
  (403 "You are not allowed to create a Tweet with duplicate content.").
* Rate limits per account and endpoint in fixed windows (`rate_limits`), with
  ``x-rate-limit-limit/remaining/reset`` (reset in epoch seconds) on every
  authenticated answer, and ``x-user-limit-24hour-*`` on POST /2/tweets when
  `user_day_limit` is set; past either, 429 ``Too Many Requests``. Every
  authenticated request counts, refused or not. ``Date`` comes from the same
  clock, so a client can compute the wait from X's own time.

Test hooks: `add_account` (per-account credentials), `revoke`, `delete_tweet`,
`tweets` / `tweets_by`, `fail_next` (a 5xx before or after the tweet is created),
`drop_next` (the connection closed without an answer), `hold_next` (the tweet is
created, then the answer waits until the test releases it: a client timeout with
the tweet in place, without racing a clock), `requests` (a log), `clock`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import math
import re
import secrets
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from aiohttp import web

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from twitter_text import extract_urls_with_indices, parse_tweet

__all__ = [
    "ALL_SCOPES",
    "EmulatedTweet",
    "Fault",
    "Hold",
    "RateLimit",
    "RecordedRequest",
    "XAccount",
    "XEmulator",
    "hmac_sha1_signature",
    "percent_encode",
    "signature_base_string",
]

TWEETS = "POST /2/tweets"
ME = "GET /2/users/me"
MAX_WEIGHTED_LENGTH = 280
#: X's epoch for snowflake ids (2010-11-04T01:42:54.657Z)
TWITTER_EPOCH_MS = 1288834974657
ALL_SCOPES = frozenset({"tweet.read", "tweet.write", "users.read", "offline.access"})
_SCOPES_NEEDED = {TWEETS: {"tweet.read", "tweet.write", "users.read"}, ME: {"tweet.read", "users.read"}}
_REQUIRED_OAUTH = (
    "oauth_consumer_key",
    "oauth_token",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_nonce",
)
_TWEET_ID = re.compile(r"^[0-9]{1,19}$")
_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_.~%-]+)="([^"]*)"\s*(?:,|$)')
_CREATE_FIELDS = frozenset(
    {
        "text",
        "reply",
        "quote_tweet_id",
        "reply_settings",
        "media",
        "poll",
        "geo",
        "for_super_followers_only",
        "direct_message_deep_link",
        "nullcast",
        "card_uri",
        "community_id",
        "share_with_followers",
        "made_with_ai",
        "paid_partnership",
    }
)
_SUPPORTED_FIELDS = frozenset({"text", "reply"})

UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
FORBIDDEN = {"title": "Forbidden", "type": "about:blank", "status": 403, "detail": "Forbidden"}
UNSUPPORTED_AUTHENTICATION = {
    "title": "Unsupported Authentication",
    "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint.  "
    "Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User Context].",
    "type": "https://api.twitter.com/2/problems/unsupported-authentication",
    "status": 403,
}
TOO_MANY_REQUESTS = {
    "title": "Too Many Requests",
    "detail": "Too Many Requests",
    "type": "about:blank",
    "status": 429,
}
DUPLICATE = "You are not allowed to create a Tweet with duplicate content."
REPLY_GONE = "You attempted to reply to a Tweet that is deleted or not visible to you."
TOO_LONG = (
    "Your Tweet text is too long. For more information on how Twitter determines text length "
    "see https://github.com/twitter/twitter-text."
)
_SERVER_ERRORS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# RFC 5849 §3.4 (signature), written from the RFC, independently of any client library.


def percent_encode(value: str) -> str:
    """RFC 5849 §3.6: UTF-8, then every byte but ALPHA, DIGIT, "-", ".", "_", "~" as %XX."""
    return quote(value.encode(), safe="-._~")


def base_string_uri(scheme: str, host: str, path: str) -> str:
    """RFC 5849 §3.4.1.2: scheme and host in lower case, the default port left out, no query."""
    scheme = scheme.lower()
    host = host.lower()
    name, _, port = host.rpartition(":") if re.search(r":\d+$", host) else (host, "", "")
    if port and (scheme, port) not in {("http", "80"), ("https", "443")}:
        name = f"{name}:{port}"
    return f"{scheme}://{name}{path or '/'}"


def signature_base_string(method: str, uri: str, params: Iterable[tuple[str, str]]) -> str:
    """RFC 5849 §3.4.1: METHOD&enc(base string URI)&enc(normalized parameters)."""
    encoded = sorted((percent_encode(name), percent_encode(value)) for name, value in params)
    normalized = "&".join(f"{name}={value}" for name, value in encoded)
    return "&".join((method.upper(), percent_encode(uri), percent_encode(normalized)))


def hmac_sha1_signature(base_string: str, consumer_secret: str, token_secret: str) -> str:
    """RFC 5849 §3.4.2: HMAC-SHA1 keyed with enc(consumer secret)&enc(token secret), base64."""
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class _Refused(Exception):
    """Answer with X's error body (raised anywhere in a request's handling)."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class XAccount:
    """One X account with its credentials for the emulator's app."""

    user_id: str
    username: str
    name: str
    access_token: str
    access_token_secret: str
    #: an OAuth 2.0 user-context access token
    user_token: str
    scopes: frozenset[str] = ALL_SCOPES
    revoked: bool = False


@dataclass(frozen=True)
class EmulatedTweet:
    id: str
    author_id: str
    #: as X stores and returns it (links wrapped)
    text: str
    #: as the client sent it
    sent_text: str
    in_reply_to: str | None
    created_at: float
    deleted: bool = False


@dataclass(frozen=True)
class RateLimit:
    """`limit` requests per account in each fixed window of `window` seconds."""

    limit: int
    window: float


@dataclass(frozen=True)
class Fault:
    """The next POST /2/tweets answers `status` (X's 5xx body), or closes the connection
    without an answer (`drop`); before the tweet is created, or after (`after_create`)."""

    status: int = 503
    after_create: bool = False
    drop: bool = False


@dataclass
class Hold:
    """The next POST /2/tweets creates the tweet, sets `created`, then holds its answer
    until `release()`; a client that gives up meanwhile leaves the tweet in place."""

    created: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


_Handle = Callable[[web.Request, XAccount], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any
    #: 0 until answered, and for good when there was no answer (dropped, or the client left)
    status: int = 0
    #: "oauth1", "oauth2" or "" (none, or refused before it was known)
    auth: str = ""
    user_id: str = ""


@dataclass
class _Window:
    start: float
    used: int = 0


@dataclass
class XEmulator:
    """X API v2 on a free loopback port; `url` is the API's base (for ``https://api.x.com``)."""

    #: the app's OAuth 1.0a consumer key and secret (X calls them API Key and Secret)
    consumer_key: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    consumer_secret: str = field(repr=False, default_factory=lambda: secrets.token_urlsafe(36))
    #: an app-only OAuth 2.0 bearer token for the same app
    app_bearer_token: str = field(repr=False, default_factory=lambda: "AAAA" + secrets.token_urlsafe(40))
    rate_limits: dict[str, RateLimit] = field(
        default_factory=lambda: {TWEETS: RateLimit(100, 900.0), ME: RateLimit(75, 900.0)}
    )
    #: POST /2/tweets per account per 24 hours (X's x-user-limit-24hour-*); None: no such limit
    user_day_limit: int | None = None
    #: how far an OAuth timestamp may be from the emulator's clock, in seconds
    timestamp_skew: float = 300.0
    clock: Callable[[], float] = time.time
    accounts: list[XAccount] = field(repr=False, default_factory=list)
    tweets: list[EmulatedTweet] = field(repr=False, default_factory=list)
    requests: list[RecordedRequest] = field(repr=False, default_factory=list)
    faults: list[Fault] = field(repr=False, default_factory=list)
    holds: list[Hold] = field(repr=False, default_factory=list)
    url: str = ""
    _nonces: set[tuple[str, str, str, str]] = field(repr=False, default_factory=set)
    _windows: dict[tuple[str, str], _Window] = field(repr=False, default_factory=dict)
    _day_windows: dict[str, _Window] = field(repr=False, default_factory=dict)
    _last_id: int = field(default=0, repr=False)
    _ids: Iterator[int] = field(repr=False, default_factory=lambda: itertools.count(2244994945))
    _runner: web.AppRunner | None = field(default=None, repr=False)

    # -- lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/2/users/me", self._me)
        app.router.add_post("/2/tweets", self._create_tweet)
        # handler_cancellation: a client that gives up ends its held answer
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for hold in self.holds:
            hold.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> XEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- test hooks

    def add_account(
        self, username: str, name: str | None = None, *, scopes: Iterable[str] = ALL_SCOPES
    ) -> XAccount:
        user_id = str(next(self._ids))
        account = XAccount(
            user_id=user_id,
            username=username,
            name=name or username.title(),
            access_token=f"{user_id}-{secrets.token_urlsafe(30)}",
            access_token_secret=secrets.token_urlsafe(33),
            user_token=secrets.token_urlsafe(60),
            scopes=frozenset(scopes),
        )
        self.accounts.append(account)
        return account

    def revoke(self, account: XAccount) -> None:
        """The account's tokens stop working (the user revoked the app, or X suspended it)."""
        account.revoked = True

    def delete_tweet(self, tweet_id: str) -> None:
        self.tweets = [replace(t, deleted=True) if t.id == tweet_id else t for t in self.tweets]

    def tweets_by(self, account: XAccount) -> list[EmulatedTweet]:
        return [t for t in self.tweets if t.author_id == account.user_id and not t.deleted]

    def fail_next(self, status: int = 503, *, after_create: bool = False) -> None:
        self.faults.append(Fault(status=status, after_create=after_create))

    def drop_next(self, *, after_create: bool = True) -> None:
        self.faults.append(Fault(after_create=after_create, drop=True))

    def hold_next(self) -> Hold:
        hold = Hold()
        self.holds.append(hold)
        return hold

    # -- handlers

    async def _me(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, ME, self._me_body)

    async def _me_body(self, request: web.Request, account: XAccount) -> tuple[int, dict[str, Any]]:
        return 200, {"data": {"id": account.user_id, "name": account.name, "username": account.username}}

    async def _create_tweet(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, TWEETS, self._create_body)

    async def _create_body(self, request: web.Request, account: XAccount) -> tuple[int, dict[str, Any]]:
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None and not fault.after_create:
            self._fault(request, fault)
        raw = await request.read()
        text, reply_to = self._validated(request, raw)
        parsed = parse_tweet(text)
        if parsed.weightedLength > MAX_WEIGHTED_LENGTH:
            raise _Refused(400, _problem(400, "Bad Request", TOO_LONG))
        if reply_to is not None and not any(t.id == reply_to and not t.deleted for t in self.tweets):
            raise _Refused(403, _problem(403, "Forbidden", REPLY_GONE))
        if any(t.sent_text == text for t in self.tweets_by(account)):
            raise _Refused(403, _problem(403, "Forbidden", DUPLICATE))
        tweet = EmulatedTweet(
            id=self._snowflake(),
            author_id=account.user_id,
            text=_wrap_links(text),
            sent_text=text,
            in_reply_to=reply_to,
            created_at=self.clock(),
        )
        self.tweets.append(tweet)
        if fault is not None:
            self._fault(request, fault)
        if self.holds:
            hold = self.holds.pop(0)
            hold.created.set()
            await hold.released.wait()
        data = {"id": tweet.id, "text": tweet.text, "edit_history_tweet_ids": [tweet.id]}
        return 201, {"data": data}

    def _fault(self, request: web.Request, fault: Fault) -> None:
        if fault.drop:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        title = _SERVER_ERRORS.get(fault.status, "Internal Server Error")
        raise _Refused(fault.status, _problem(fault.status, title, title))

    def _validated(self, request: web.Request, raw: bytes) -> tuple[str, str | None]:
        """The text and the replied-to id of a create request, or X's 400 "Invalid Request"."""
        if request.content_type != "application/json":
            raise _invalid(f"Unsupported Content-Type {request.content_type!r}: send application/json")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _invalid("Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _invalid("$: must be a JSON object")
        for name in body:
            if name not in _CREATE_FIELDS:
                raise _invalid(f"$.{name}: is not defined in the schema and the schema does not allow it")
            if name not in _SUPPORTED_FIELDS:
                raise _invalid(f"$.{name}: not supported by this emulator")
        text = body.get("text")
        if not isinstance(text, str):
            raise _invalid(
                "$.text: is missing but it is required" if text is None else "$.text: not a string"
            )
        if not text.strip():
            raise _invalid("$.text: must not be empty")
        reply = body.get("reply")
        if reply is None:
            return text, None
        if not isinstance(reply, dict) or set(reply) - {"in_reply_to_tweet_id", "exclude_reply_user_ids"}:
            raise _invalid("$.reply: must be an object with in_reply_to_tweet_id")
        target = reply.get("in_reply_to_tweet_id")
        if not isinstance(target, str) or not _TWEET_ID.match(target):
            raise _invalid(
                f"$.reply.in_reply_to_tweet_id: string [{target}] does not match pattern ^[0-9]{{1,19}}$"
            )
        return text, target

    async def _answer(self, request: web.Request, endpoint: str, handle: _Handle) -> web.StreamResponse:
        now = self.clock()
        record = RecordedRequest(request.method, request.path, body=_json(await request.read()))
        self.requests.append(record)  # on arrival: a client that gives up is still in the log
        headers: dict[str, str] = {"Date": formatdate(now, usegmt=True)}
        try:
            record.auth, account = await self._authenticate(request, now)
            record.user_id = account.user_id
            if record.auth == "oauth2" and not _SCOPES_NEEDED[endpoint] <= account.scopes:
                raise _Refused(403, FORBIDDEN)
            headers.update(self._count(endpoint, account, now))
            status, payload = await handle(request, account)
        except _Refused as refused:
            status, payload = refused.status, refused.body
            headers.update(refused.headers)
        record.status = status
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )

    # -- authentication

    async def _authenticate(self, request: web.Request, now: float) -> tuple[str, XAccount]:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme == "Bearer":
            if hmac.compare_digest(credentials, self.app_bearer_token):
                raise _Refused(403, UNSUPPORTED_AUTHENTICATION)
            for account in self.accounts:
                if not account.revoked and hmac.compare_digest(credentials, account.user_token):
                    return "oauth2", account
            raise _Refused(401, UNAUTHORIZED)
        if scheme == "OAuth":
            form = b""
            if request.content_type == "application/x-www-form-urlencoded":
                form = await request.read()  # kept by aiohttp: the handler reads it again
            return "oauth1", self._verify_oauth1(request, credentials, form, now)
        raise _Refused(401, UNAUTHORIZED)

    def _verify_oauth1(self, request: web.Request, credentials: str, form: bytes, now: float) -> XAccount:
        oauth = _auth_params(credentials)
        given = oauth.pop("oauth_signature", None)
        oauth.pop("realm", None)
        required = (
            "oauth_consumer_key",
            "oauth_token",
            "oauth_signature_method",
            "oauth_timestamp",
            "oauth_nonce",
        )
        if given is None or any(name not in oauth for name in required):
            raise _Refused(401, UNAUTHORIZED)
        if oauth["oauth_signature_method"] != "HMAC-SHA1" or oauth.get("oauth_version", "1.0") != "1.0":
            raise _Refused(401, UNAUTHORIZED)
        if not hmac.compare_digest(oauth["oauth_consumer_key"], self.consumer_key):
            raise _Refused(401, UNAUTHORIZED)
        account = next(
            (a for a in self.accounts if hmac.compare_digest(oauth["oauth_token"], a.access_token)), None
        )
        if account is None or account.revoked:
            raise _Refused(401, UNAUTHORIZED)
        stamp = oauth["oauth_timestamp"]
        if not stamp.isdigit() or abs(int(stamp) - now) > self.timestamp_skew:
            raise _Refused(401, UNAUTHORIZED)
        params: list[tuple[str, str]] = list(oauth.items())
        # §3.4.1.3.1: the query, and a form-encoded body (never a JSON one)
        params += parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        params += parse_qsl(form.decode(errors="replace"), keep_blank_values=True)
        uri = base_string_uri(request.scheme, request.host, request.rel_url.raw_path)
        base = signature_base_string(request.method, uri, params)
        expected = hmac_sha1_signature(base, self.consumer_secret, account.access_token_secret)
        if not hmac.compare_digest(given, expected):
            raise _Refused(401, UNAUTHORIZED)
        nonce = (self.consumer_key, account.access_token, stamp, oauth["oauth_nonce"])
        if nonce in self._nonces:
            raise _Refused(401, UNAUTHORIZED)
        self._nonces.add(nonce)
        return account

    # -- rate limits

    def _count(self, endpoint: str, account: XAccount, now: float) -> dict[str, str]:
        """Count one request; X's headers for it, or 429 with them past a limit."""
        rule = self.rate_limits[endpoint]
        window = self._windows.get((endpoint, account.user_id))
        if window is None or now >= window.start + rule.window:
            window = self._windows[(endpoint, account.user_id)] = _Window(start=now)
        window.used += 1
        headers = {
            "x-rate-limit-limit": str(rule.limit),
            "x-rate-limit-remaining": str(max(0, rule.limit - window.used)),
            "x-rate-limit-reset": str(math.ceil(window.start + rule.window)),
        }
        over = window.used > rule.limit
        if endpoint == TWEETS and self.user_day_limit is not None:
            day = self._day_windows.get(account.user_id)
            if day is None or now >= day.start + 86400:
                day = self._day_windows[account.user_id] = _Window(start=now)
            day.used += 1
            headers |= {
                "x-user-limit-24hour-limit": str(self.user_day_limit),
                "x-user-limit-24hour-remaining": str(max(0, self.user_day_limit - day.used)),
                "x-user-limit-24hour-reset": str(math.ceil(day.start + 86400)),
            }
            over = over or day.used > self.user_day_limit
        if over:
            raise _Refused(429, TOO_MANY_REQUESTS, headers)
        return headers

    def _snowflake(self) -> str:
        """Time-based ids, as X's: unique and growing even across emulator restarts."""
        candidate = (int(self.clock() * 1000) - TWITTER_EPOCH_MS) << 22
        self._last_id = max(candidate, self._last_id + 1)
        return str(self._last_id)


def _auth_params(credentials: str) -> dict[str, str]:
    """RFC 5849 §3.5.1: comma-separated name="value" pairs, values percent-encoded; a
    parameter given twice, or anything unparsable, is refused."""
    found: dict[str, str] = {}
    position = 0
    while position < len(credentials):
        match = _AUTH_PARAM.match(credentials, position)
        if match is None:
            raise _Refused(401, UNAUTHORIZED)
        name, value = unquote(match.group(1)), unquote(match.group(2))
        if name in found:
            raise _Refused(401, UNAUTHORIZED)
        found[name] = value
        position = match.end()
    return found


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"detail": detail, "type": "about:blank", "title": title, "status": status}


def _invalid(message: str) -> _Refused:
    return _Refused(
        400,
        {
            "errors": [{"parameters": {}, "message": message}],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request",
        },
    )


def _wrap_links(text: str) -> str:
    """Links as X stores them: each replaced by a t.co link (23 characters)."""
    out, last = [], 0
    for url in extract_urls_with_indices(text):
        start, end = url["indices"]
        out += [text[last:start], "https://t.co/" + secrets.token_urlsafe(8)[:10]]
        last = end
    out.append(text[last:])
    return "".join(out)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None

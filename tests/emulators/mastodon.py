"""A loopback stand-in of a Mastodon server's REST API, for the posts Herald publishes.

It answers as Mastodon 4.x does (app/controllers/api/v1/statuses_controller.rb,
PostStatusService, StatusLengthValidator, config/initializers/rack_attack.rb,
RateLimiter), so that Herald's client is tested over real HTTP against Mastodon's
real rules and failure shapes:

* ``GET /api/v1/accounts/verify_credentials`` (scope ``read``, ``read:accounts`` or
  ``profile``): the CredentialAccount.
* ``GET /api/v2/instance`` (no token needed): ``domain`` and
  ``configuration.statuses`` with ``max_characters`` (500 unless configured) and
  ``characters_reserved_per_url`` (23).
* ``POST /api/v1/statuses`` (scope ``write`` or ``write:statuses``; form, multipart or
  JSON, and the query string): ``status``, ``spoiler_text``, ``in_reply_to_id``,
  ``visibility``, ``language``.

  - over the limit, counted Mastodon's way (`core.social.mastodon_text`): ``422
    {"error": "Validation failed: Text character limit of N exceeded"}``; blank:
    ``Text can't be blank``; an unknown visibility: ``Visibility is not included in
    the list``.
  - a reply to a status that is not there: ``404 {"error": "The post you are trying to
    reply to does not appear to exist."}``.
  - ``Idempotency-Key``: per account, kept 3,600 s after the status is created; the same
    key again returns that status (whatever the new text) and creates nothing. While
    the first request with a key is still running (it holds the key's lock), another
    gets ``503 {"error": "There was a temporary problem serving your request, please
    try again"}``.
  - a client that hangs up does not stop the server's work: the status is created all
    the same, as Puma finishes a request whose client went away.
* Tokens: ``Authorization: Bearer`` (or ``access_token``); a wrong or missing one is
  ``401 {"error": "The access token is invalid"}``, a revoked one "The access token was
  revoked", a missing scope ``403 {"error": "This action is outside the authorized
  scopes"}``.
* Rate limits: Rack::Attack's per-token API throttle (300 requests per 5 minutes) on
  every request and the ``statuses`` family (300 created per 3 hours), both windows
  aligned to the epoch as Mastodon's are, both configurable; answers carry
  ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (ISO 8601 with microseconds);
  past a limit: ``429 {"error": "Too many requests"}``.

Knobs for tests: `max_characters`, the limits, `clock` (the server's time, which
the ``Date`` header tells too), `add_account`, `revoke`; `statuses` and `requests`
to look at; faults for the next ``POST /api/v1/statuses``: `fail_next` (5xx before
anything happens), `fail_after_create`, `drop_after_create` (the connection closes
with no answer), `hold_after_create` and `hold_before_create` (the answer, or the
creation under the key's lock, waits for `release`; `held` counts those waiting).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Literal

from aiohttp import web

from core.social.mastodon_text import URL_LENGTH, mastodon_length

__all__ = ["EmulatedAccount", "EmulatedStatus", "MastodonEmulator", "RecordedRequest"]

#: PostStatusService: redis.setex(idempotency_key, 3_600, status.id)
IDEMPOTENCY_WINDOW = 3600.0
VISIBILITIES = ("public", "unlisted", "private", "direct")
INVALID_TOKEN = "The access token is invalid"
REVOKED_TOKEN = "The access token was revoked"
OUTSIDE_SCOPES = "This action is outside the authorized scopes"
TEMPORARY_PROBLEM = "There was a temporary problem serving your request, please try again"
REPLY_NOT_FOUND = "The post you are trying to reply to does not appear to exist."
TOO_MANY_REQUESTS = "Too many requests"
READ_SCOPES = frozenset({"read", "read:accounts", "profile"})
WRITE_SCOPES = frozenset({"write", "write:statuses"})
_BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"  # noqa: E501

_Json = dict[str, Any]
FaultKind = Literal[
    "error", "error_after_create", "drop_after_create", "hold_after_create", "hold_before_create"
]


@dataclass(frozen=True)
class EmulatedAccount:
    id: str
    username: str
    display_name: str
    token: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class EmulatedStatus:
    id: str
    account_id: str
    text: str
    spoiler_text: str
    visibility: str
    in_reply_to_id: str | None
    language: str
    created_at: float
    idempotency_key: str | None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class _Fault:
    kind: FaultKind
    status: int = 0


@dataclass
class _Window:
    """A fixed window aligned to the epoch, as Rack::Attack's and RateLimiter's are."""

    limit: int
    period: int
    counts: dict[tuple[str, int], int] = field(default_factory=dict)

    def key(self, who: str, now: float) -> tuple[str, int]:
        return who, int(now) // self.period

    def reset(self, now: float) -> float:
        return now + (self.period - int(now) % self.period)

    def headers(self, who: str, now: float) -> dict[str, str]:
        used = self.counts.get(self.key(who, now), 0)
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - used)),
            "X-RateLimit-Reset": _iso8601(self.reset(now)),
        }


def _iso8601(moment: float) -> str:
    """Ruby's Time#iso8601(6) in UTC."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Refusal(Exception):
    def __init__(self, status: int, error: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = dict(headers or {})


@dataclass
class MastodonEmulator:
    """A Mastodon server on a free loopback port; `url` is its base URL."""

    #: LOCAL_DOMAIN: handles are @user@domain, links https://domain/@user/id
    domain: str = "social.example"
    max_characters: int = 500
    characters_reserved_per_url: int = URL_LENGTH
    #: Rack::Attack's throttle_per_token_api
    api_limit: int = 300
    api_period: int = 300
    #: RateLimiter's statuses family: statuses created per account
    status_limit: int = 300
    status_period: int = 3 * 3600
    #: the server's time (seconds since the epoch); the Date header tells it too
    clock: Callable[[], float] = time.time
    statuses: list[EmulatedStatus] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    url: str = ""
    _accounts: dict[str, EmulatedAccount] = field(default_factory=dict)
    _revoked: set[str] = field(default_factory=set)
    _keys: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    _locks: set[tuple[str, str]] = field(default_factory=set)
    _faults: deque[_Fault] = field(default_factory=deque)
    _gate: asyncio.Event = field(default_factory=asyncio.Event)
    _held: int = 0
    _work: set[asyncio.Task[Any]] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._api = _Window(self.api_limit, self.api_period)
        self._created = _Window(self.status_limit, self.status_period)

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/accounts/verify_credentials", self._verify_credentials)
        app.router.add_get("/api/v2/instance", self._instance)
        app.router.add_post("/api/v1/statuses", self._create_status)
        # handler_cancellation: a client that hangs up ends its held answer (never the
        # server's own work: that runs shielded, see _create_status)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self.release()
        if self._work:
            await asyncio.gather(*self._work, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MastodonEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- accounts and what tests look at -------------------------------------------------

    def add_account(
        self,
        username: str,
        token: str,
        *,
        display_name: str = "",
        scopes: frozenset[str] = frozenset({"read", "write"}),
    ) -> EmulatedAccount:
        account = EmulatedAccount(
            str(109_000_000 + len(self._accounts)), username, display_name, token, scopes
        )
        self._accounts[token] = account
        return account

    def revoke(self, token: str) -> None:
        self._revoked.add(token)

    def statuses_of(self, username: str) -> list[EmulatedStatus]:
        ids = {a.id for a in self._accounts.values() if a.username == username}
        return [s for s in self.statuses if s.account_id in ids]

    def status(self, status_id: str) -> EmulatedStatus | None:
        return next((s for s in self.statuses if s.id == status_id), None)

    def status_url(self, status: EmulatedStatus) -> str:
        return f"https://{self.domain}/@{self._account(status.account_id).username}/{status.id}"

    def posts(self) -> list[RecordedRequest]:
        """Every ``POST /api/v1/statuses`` that arrived, in order."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/api/v1/statuses"]

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the predicate, not for I/O
    ) -> None:
        """Poll every 10 ms until ``predicate()`` is true; fail with what arrived if it never is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                seen = ", ".join(f"{r.method} {r.path}" for r in self.requests[-10:])
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise AssertionError(f"{name} still false after {timeout}s; last requests: [{seen}]")
            await asyncio.sleep(0.01)

    # -- faults for the next POST /api/v1/statuses, in order ----------------------------

    def fail_next(self, status: int = 503, *, times: int = 1) -> None:
        """Answer `status` before anything happens (a proxy's or the app's error)."""
        self._faults.extend(_Fault("error", status) for _ in range(times))

    def fail_after_create(self, status: int = 500, *, times: int = 1) -> None:
        """Create the status, then answer `status` instead of it."""
        self._faults.extend(_Fault("error_after_create", status) for _ in range(times))

    def drop_after_create(self, *, times: int = 1) -> None:
        """Create the status, then close the connection without an answer."""
        self._faults.extend(_Fault("drop_after_create") for _ in range(times))

    def hold_after_create(self, *, times: int = 1) -> None:
        """Create the status, then hold the answer until `release` (a slow answer)."""
        self._faults.extend(_Fault("hold_after_create") for _ in range(times))

    def hold_before_create(self, *, times: int = 1) -> None:
        """Take the key's lock, then wait for `release` before creating (a slow server)."""
        self._faults.extend(_Fault("hold_before_create") for _ in range(times))

    @property
    def held(self) -> int:
        """Requests now waiting for `release`."""
        return self._held

    def release(self) -> None:
        """Let every held request go on; later holds wait again."""
        self._gate.set()
        self._gate = asyncio.Event()

    # -- the API --------------------------------------------------------------------------

    async def _verify_credentials(self, request: web.Request) -> web.Response:
        try:
            params = await self._params(request)
            account = self._authenticate(request, params, READ_SCOPES)
        except _Refusal as refusal:
            return self._refuse(refusal)
        body = self._account_json(account) | {
            "source": {
                "privacy": "public",
                "sensitive": False,
                "language": "",
                "note": "",
                "fields": [],
                "follow_requests_count": 0,
            },
            "role": {"id": "-99", "name": "", "permissions": "0", "color": "", "highlighted": False},
        }
        return self._json(body, headers=self._api.headers(account.token, self.clock()))

    async def _instance(self, request: web.Request) -> web.Response:
        try:
            await self._params(request)
            self._throttle(request, token=None)
        except _Refusal as refusal:
            return self._refuse(refusal)
        base = f"https://{self.domain}"
        body = {
            "domain": self.domain,
            "title": "Emulated Mastodon",
            "version": "4.5.0",
            "source_url": "https://github.com/mastodon/mastodon",
            "description": "A loopback stand-in for tests.",
            "usage": {"users": {"active_month": len(self._accounts)}},
            "thumbnail": {"url": f"{base}/packs/media/images/preview.png"},
            "icon": [],
            "languages": ["en"],
            "configuration": {
                "urls": {"streaming": f"wss://{self.domain}", "status": None, "about": f"{base}/about"},
                "vapid": {"public_key": ""},
                "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
                "statuses": {
                    "max_characters": self.max_characters,
                    "max_media_attachments": 4,
                    "characters_reserved_per_url": self.characters_reserved_per_url,
                },
                "media_attachments": {"description_limit": 1500, "supported_mime_types": []},
                "polls": {
                    "max_options": 4,
                    "max_characters_per_option": 50,
                    "min_expiration": 300,
                    "max_expiration": 2629746,
                },
                "translation": {"enabled": False},
            },
            "registrations": {"enabled": False, "approval_required": False, "message": None, "url": None},
            "api_versions": {"mastodon": 6},
            "contact": {"email": f"admin@{self.domain}", "account": None},
            "rules": [],
        }
        return self._json(body)

    async def _create_status(self, request: web.Request) -> web.StreamResponse:
        fault = self._faults.popleft() if self._faults else None
        try:
            params = await self._params(request)
            if fault is not None and fault.kind == "error":
                return self._error_page(fault.status)
            account = self._authenticate(request, params, WRITE_SCOPES)
            key = request.headers.get("Idempotency-Key", "")
            # the server's work goes on when the client hangs up (Puma does not stop a
            # request whose client went away): only the answer is the handler's
            work = asyncio.ensure_future(self._post_status(account, params, key, fault))
            self._work.add(work)
            work.add_done_callback(self._finished)
            status, fresh = await asyncio.shield(work)
        except _Refusal as refusal:
            return self._refuse(refusal)
        headers = self._status_headers(account, self.clock())
        if fresh and fault is not None:
            if fault.kind == "error_after_create":
                return self._error_page(fault.status)
            if fault.kind == "drop_after_create":
                if request.transport is not None:
                    request.transport.close()
                await asyncio.Event().wait()  # handler_cancellation ends this when the connection is gone
            if fault.kind == "hold_after_create":
                await self._hold()
        return self._json(self._status_json(status), headers=headers)

    async def _post_status(
        self, account: EmulatedAccount, params: Mapping[str, Any], key: str, fault: _Fault | None
    ) -> tuple[EmulatedStatus, bool]:
        """Statuses#create from set_thread on: the status, and whether it is new."""
        reply_to = _text(params.get("in_reply_to_id"))
        parent = self.status(reply_to) if reply_to else None
        if reply_to and parent is None:
            raise _Refusal(404, REPLY_NOT_FOUND)
        lock = (account.id, key)
        if key:
            if lock in self._locks:
                raise _Refusal(503, TEMPORARY_PROBLEM)
            self._locks.add(lock)
        try:
            if key and (kept := self._keys.get(lock)) is not None:
                status_id, expires = kept
                existing = self.status(status_id)
                if existing is not None and self.clock() < expires:
                    return existing, False
            if fault is not None and fault.kind == "hold_before_create":
                await self._hold()
            status = self._validate(account, params, parent, key)
            now = self.clock()
            created = self._created.counts
            window = self._created.key(account.id, now)
            if created.get(window, 0) >= self._created.limit:
                raise _Refusal(429, TOO_MANY_REQUESTS, self._created.headers(account.id, now))
            created[window] = created.get(window, 0) + 1
            self.statuses.append(status)
            if key:
                self._keys[lock] = (status.id, now + IDEMPOTENCY_WINDOW)
            return status, True
        finally:
            self._locks.discard(lock)

    def _validate(
        self, account: EmulatedAccount, params: Mapping[str, Any], parent: EmulatedStatus | None, key: str
    ) -> EmulatedStatus:
        text = _text(params.get("status"))
        spoiler = _text(params.get("spoiler_text"))
        visibility = _text(params.get("visibility")) or "public"
        if visibility not in VISIBILITIES:
            raise _Refusal(422, "Validation failed: Visibility is not included in the list")
        if not text.strip():
            raise _Refusal(422, "Validation failed: Text can't be blank")
        if mastodon_length(text, spoiler_text=spoiler) > self.max_characters:
            raise _Refusal(422, f"Validation failed: Text character limit of {self.max_characters} exceeded")
        now = self.clock()
        return EmulatedStatus(
            id=str((int(now * 1000) << 16) | (next(self._ids) & 0xFFFF)),
            account_id=account.id,
            text=text,
            spoiler_text=spoiler,
            visibility=visibility,
            in_reply_to_id=parent.id if parent else None,
            language=_text(params.get("language")) or "en",
            created_at=now,
            idempotency_key=key or None,
        )

    def _finished(self, work: asyncio.Task[Any]) -> None:
        """Forget finished work; its outcome was the abandoned handler's to read."""
        self._work.discard(work)
        if not work.cancelled():
            work.exception()

    async def _hold(self) -> None:
        self._held += 1
        try:
            await self._gate.wait()
        finally:
            self._held -= 1

    # -- authentication, throttling, parameters -------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.text() or "{}")
            except ValueError:
                raise _Refusal(400, "Error occurred while parsing request parameters") from None
            if isinstance(body, dict):
                params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), params))
        return params

    def _authenticate(
        self, request: web.Request, params: Mapping[str, Any], scopes: frozenset[str]
    ) -> EmulatedAccount:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else _text(params.get("access_token"))
        account = self._accounts.get(token) if token else None
        self._throttle(request, token=token if account is not None else None)
        if account is None or token in self._revoked:
            error = REVOKED_TOKEN if token in self._revoked else INVALID_TOKEN
            challenge = f'Bearer realm="Doorkeeper", error="invalid_token", error_description="{error}"'
            raise _Refusal(401, error, {"WWW-Authenticate": challenge})
        if not account.scopes & scopes:
            raise _Refusal(403, OUTSIDE_SCOPES)
        return account

    def _throttle(self, request: web.Request, *, token: str | None) -> None:
        """Rack::Attack: per token when it authenticates, else per address."""
        now = self.clock()
        who = token or f"ip:{request.remote}"
        window = self._api.key(who, now)
        self._api.counts[window] = self._api.counts.get(window, 0) + 1
        if self._api.counts[window] > self._api.limit:
            raise _Refusal(429, TOO_MANY_REQUESTS, self._api.headers(who, now))

    def _status_headers(self, account: EmulatedAccount, now: float) -> dict[str, str]:
        """override_rate_limit_headers :create, family: :statuses (unless the API's are lower)."""
        api = self._api.headers(account.token, now)
        family = self._created.headers(account.id, now)
        if int(api["X-RateLimit-Remaining"]) < int(family["X-RateLimit-Remaining"]):
            return api
        return family

    # -- answers ----------------------------------------------------------------------------

    def _json(
        self, body: object, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        all_headers = {"Date": formatdate(self.clock(), usegmt=True), **(headers or {})}
        return web.Response(
            status=status,
            text=json.dumps(body),
            content_type="application/json",
            charset="utf-8",
            headers=all_headers,
        )

    def _refuse(self, refusal: _Refusal) -> web.Response:
        return self._json({"error": refusal.error}, status=refusal.status, headers=refusal.headers)

    def _error_page(self, status: int) -> web.Response:
        if status in (502, 504):
            return web.Response(status=status, text=_BAD_GATEWAY, content_type="text/html")
        return self._json(
            {"error": TEMPORARY_PROBLEM if status == 503 else "Internal server error"}, status=status
        )

    def _account(self, account_id: str) -> EmulatedAccount:
        return next(a for a in self._accounts.values() if a.id == account_id)

    def _account_json(self, account: EmulatedAccount) -> _Json:
        base = f"https://{self.domain}"
        return {
            "id": account.id,
            "username": account.username,
            "acct": account.username,
            "display_name": account.display_name,
            "locked": False,
            "bot": True,
            "discoverable": True,
            "group": False,
            "created_at": "2026-01-01T00:00:00.000Z",
            "note": "",
            "url": f"{base}/@{account.username}",
            "uri": f"{base}/users/{account.username}",
            "avatar": f"{base}/avatars/original/missing.png",
            "avatar_static": f"{base}/avatars/original/missing.png",
            "header": f"{base}/headers/original/missing.png",
            "header_static": f"{base}/headers/original/missing.png",
            "followers_count": 0,
            "following_count": 0,
            "statuses_count": len([s for s in self.statuses if s.account_id == account.id]),
            "last_status_at": None,
            "emojis": [],
            "fields": [],
        }

    def _status_json(self, status: EmulatedStatus) -> _Json:
        account = self._account(status.account_id)
        parent = self.status(status.in_reply_to_id) if status.in_reply_to_id else None
        paragraphs = "".join(
            f"<p>{html.escape(p).replace(chr(10), '<br />')}</p>" for p in status.text.split("\n\n")
        )
        return {
            "id": status.id,
            "created_at": _iso8601(status.created_at)[:-4] + "Z",
            "in_reply_to_id": status.in_reply_to_id,
            "in_reply_to_account_id": parent.account_id if parent else None,
            "sensitive": bool(status.spoiler_text),
            "spoiler_text": status.spoiler_text,
            "visibility": status.visibility,
            "language": status.language,
            "uri": f"https://{self.domain}/users/{account.username}/statuses/{status.id}",
            "url": self.status_url(status),
            "replies_count": len([s for s in self.statuses if s.in_reply_to_id == status.id]),
            "reblogs_count": 0,
            "favourites_count": 0,
            "edited_at": None,
            "favourited": False,
            "reblogged": False,
            "muted": False,
            "bookmarked": False,
            "pinned": False,
            "content": paragraphs,
            "filtered": [],
            "reblog": None,
            "application": {"name": "Herald", "website": None},
            "account": self._account_json(account),
            "media_attachments": [],
            "mentions": [],
            "tags": [],
            "emojis": [],
            "card": None,
            "poll": None,
        }


def _text(value: object) -> str:
    """A parameter as Rails reads it: absent or null is empty, anything else its text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

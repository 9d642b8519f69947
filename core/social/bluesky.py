"""Publishing to Bluesky for one account (a handle and an app password), exactly once.

The wire protocol directly (XRPC over aiohttp), not the `atproto` SDK's AsyncClient. The
SDK is async and has timeouts (httpx's, per client or per call), and `createRecord` takes
an `rkey`; but it refreshes a session only before a call, from the access JWT's own
`exp` claim read on this machine (`_should_refresh_session`). A PDS that answers
``400 ExpiredToken`` anyway (a token revoked or rotated early, a clock off by minutes)
reaches the caller as a plain `BadRequestError`, and renewing then means its private
`_refresh_and_set_session`; its `login` also fetches the profile from the AppView, a
second service to depend on. Herald needs five calls (createSession, refreshSession,
getSession, resolveHandle, createRecord with getRecord), made here with the aiohttp that
the project already uses, one timeout per call and no second HTTP stack (httpx, plus the
SDK's pydantic models, libipld, dnspython and websockets, untyped for mypy).

Exactly once: each post is created under a record key derived from the caller's `key`,
a TID (the key type `app.bsky.feed.post` demands, and the PDS enforces), so a second
`createRecord` of the same part can't make a second post: the PDS refuses the key (it
answers a bare ``500 InternalServerError``). Whenever a create's outcome is unknown (a
timeout, a 5xx, a dropped connection) the record is read back with `getRecord`: found,
it is the post, returned as published; not found, nothing was posted and `PublishFailed`
says a retry is safe, which it is whatever happened, since the key can't be used twice.

Session: `createSession` once; on ``ExpiredToken`` (or ``InvalidToken``) `refreshSession`
and the call once more; a refresh token that is refused too means a new `createSession`.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from core.social.bluesky_text import MAX_GRAPHEMES, graphemes, rich_text, too_long
from core.social.network import (
    Identity,
    Limits,
    NetworkError,
    PublishedPart,
    PublishFailed,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
    server_now,
)

log = logging.getLogger("herald.social.bluesky")

POST = "app.bsky.feed.post"
APP = "https://bsky.app"
#: errors that a new session cures: the access token expired, or the PDS can't verify it
_RENEWABLE = frozenset({"ExpiredToken", "InvalidToken"})
_B32 = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable, TIDs' alphabet
# Derived record keys' TIDs lie in 2015–2024: never in the future (a TID's time is only a
# hint; Bluesky orders posts by createdAt), among 2^58 values per account.
_TID_FROM_US = 1_420_070_400_000_000  # 2015-01-01T00:00:00Z
_TID_SPAN_US = 3653 * 86_400_000_000  # ten years


@dataclass(frozen=True, slots=True)
class BlueskyCredentials:
    """One account: its handle, an app password (never in a repr), and its service."""

    handle: str
    app_password: str = field(repr=False)
    #: the PDS or entryway (bsky.social proxies to the PDS that holds the account)
    service: str = "https://bsky.social"


@dataclass(frozen=True, slots=True)
class _Session:
    access: str = field(repr=False)
    refresh: str = field(repr=False)
    did: str
    handle: str


class _XrpcFailure(Exception):
    """A non-2xx XRPC answer: ``{"error", "message"}`` and the headers (rate limits)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


#: what leaves a call's outcome unknown: no answer, or a server's failure
_UNANSWERED = (aiohttp.ClientError, TimeoutError)


def record_key(key: str) -> str:
    """The record key of the post published under `key`: a TID, the same for every retry."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "big")
    micros = _TID_FROM_US + digest % _TID_SPAN_US
    return tid(micros, digest >> 118)


def tid(micros: int, clock_id: int) -> str:
    """A TID: 53 bits of microseconds and a 10-bit clock id, in 13 base32-sortable characters."""
    value = ((micros & (2**53 - 1)) << 10) | (clock_id & 0x3FF)
    return "".join(_B32[(value >> (5 * (12 - i))) & 0x1F] for i in range(13))


def profile_url(handle: str) -> str:
    return f"{APP}/profile/{handle}"


def post_url(handle: str, uri: str) -> str:
    """The app's page of the post at `uri` (``at://did/app.bsky.feed.post/rkey``)."""
    return f"{profile_url(handle)}/post/{uri.rsplit('/', 1)[-1]}"


class BlueskyClient:
    """A connected Bluesky account (`NetworkClient`). `timeout` bounds each call;
    `create_timeout` (default `timeout`) a post's `createRecord` alone."""

    def __init__(
        self,
        credentials: BlueskyCredentials,
        *,
        timeout: float = 10.0,
        create_timeout: float | None = None,
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        self._credentials = credentials
        #: makes the connections (a chat's own server: public addresses only)
        self._connector = connector
        self._xrpc = f"{credentials.service.rstrip('/')}/xrpc"
        self._timeout = timeout
        self._create_timeout = create_timeout if create_timeout is not None else timeout
        self._http: aiohttp.ClientSession | None = None
        self._session: _Session | None = None
        self._session_lock = asyncio.Lock()

    @property
    def network(self) -> str:
        return "bluesky"

    async def whoami(self) -> Identity:
        try:
            body = await self._call("GET", "com.atproto.server.getSession")
        except (_XrpcFailure, *_UNANSWERED) as exc:
            raise _network_error(exc) from exc
        handle, did = str(body["handle"]), str(body["did"])
        return Identity(network="bluesky", account_id=did, handle=handle, url=profile_url(handle))

    async def limits(self) -> Limits:
        return Limits(max_length=MAX_GRAPHEMES, measure=graphemes, unit="graphemes")

    async def publish(self, text: str, *, key: str, reply_to: ReplyTo | None = None) -> PublishedPart:
        if not text.strip():
            raise Rejected("There is nothing to post to Bluesky: the post is empty.")
        problem = too_long(text)
        if problem:
            raise Rejected(f"Bluesky can't take this post: {problem}.")
        try:
            session = await self._current_session()
        except (_XrpcFailure, *_UNANSWERED) as exc:
            raise _network_error(exc) from exc
        record: dict[str, Any] = {
            "$type": POST,
            "text": text,
            "createdAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        facets = await rich_text(text, self._resolve)
        if facets:
            record["facets"] = facets
        if reply_to is not None:
            record["reply"] = {"root": _strong_ref(reply_to.root), "parent": _strong_ref(reply_to.parent)}
        rkey = record_key(key)
        request = {"repo": session.did, "collection": POST, "rkey": rkey, "record": record}
        try:
            body = await self._call(
                "POST", "com.atproto.repo.createRecord", json=request, seconds=self._create_timeout
            )
        except _XrpcFailure as exc:
            if exc.status < 500:
                raise _network_error(exc, creating=True) from exc
            # A 5xx: perhaps after the write, or the PDS refusing a record key already
            # used (by an earlier try whose answer was lost).
            return await self._read_back(session, rkey, exc)
        except _UNANSWERED as exc:
            return await self._read_back(session, rkey, exc)
        return PublishedPart(post_id=body["uri"], url=post_url(session.handle, body["uri"]), ref=body["cid"])

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- exactly once ---------------------------------------------------------------------

    async def _read_back(self, session: _Session, rkey: str, cause: Exception) -> PublishedPart:
        """The post under `rkey`, when a create's answer was lost; `PublishFailed` if none."""
        log.info("bluesky: create of %s not confirmed (%s); reading it back", rkey, _describe(cause))
        params = {"repo": session.did, "collection": POST, "rkey": rkey}
        try:
            body = await self._call("GET", "com.atproto.repo.getRecord", params=params, authenticated=False)
        except (_XrpcFailure, *_UNANSWERED) as exc:
            # Not there, or can't tell: either way a retry under the same key can't post twice.
            raise PublishFailed(
                "Bluesky didn't confirm the post; it will be tried again.",
                f"createRecord {rkey}: {_describe(cause)}; getRecord: {_describe(exc)}",
            ) from exc
        return PublishedPart(post_id=body["uri"], url=post_url(session.handle, body["uri"]), ref=body["cid"])

    async def _resolve(self, handle: str) -> str | None:
        """A mentioned handle's DID; None (the mention stays plain text) when it can't be had."""
        try:
            body = await self._call(
                "GET", "com.atproto.identity.resolveHandle", params={"handle": handle}, authenticated=False
            )
        except (_XrpcFailure, *_UNANSWERED) as exc:
            log.info("bluesky: @%s not resolved (%s); left as plain text", handle, _describe(exc))
            return None
        did = body.get("did")
        return did if isinstance(did, str) and did.startswith("did:") else None

    # -- session --------------------------------------------------------------------------

    async def _current_session(self) -> _Session:
        async with self._session_lock:
            if self._session is None:
                self._session = await self._create_session()
            return self._session

    async def _renew(self, stale: _Session) -> None:
        """A new access token, once for everyone who found `stale` refused."""
        async with self._session_lock:
            if self._session is not stale:
                return  # another call renewed it meanwhile
            try:
                body = await self._send(
                    "POST", "com.atproto.server.refreshSession", bearer=stale.refresh, seconds=self._timeout
                )
                self._session = _session_from(body)
                log.info("bluesky: session of %s refreshed", stale.handle)
                return
            except _XrpcFailure as exc:
                if exc.status >= 500 or exc.status == 429:
                    raise
                log.info("bluesky: refresh token refused (%s); logging in again", exc.error)
            self._session = await self._create_session()

    async def _create_session(self) -> _Session:
        identifier = self._credentials.handle.strip().removeprefix("@")
        body = await self._send(
            "POST",
            "com.atproto.server.createSession",
            json={"identifier": identifier, "password": self._credentials.app_password},
            seconds=self._timeout,
        )
        return _session_from(body)

    # -- calls ----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        nsid: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        authenticated: bool = True,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        """One XRPC call; an authenticated one renews a refused session and is made once more."""
        if not authenticated:
            return await self._send(method, nsid, params=params, json=json, seconds=seconds or self._timeout)
        session = await self._current_session()
        try:
            return await self._send(
                method,
                nsid,
                params=params,
                json=json,
                bearer=session.access,
                seconds=seconds or self._timeout,
            )
        except _XrpcFailure as exc:
            # the PDS answers 400; some servers in front of one answer 401
            if exc.status not in (400, 401) or exc.error not in _RENEWABLE:
                raise
        # refused at the door, so nothing was done: safe to make again
        await self._renew(session)
        session = await self._current_session()
        return await self._send(
            method, nsid, params=params, json=json, bearer=session.access, seconds=seconds or self._timeout
        )

    async def _send(
        self,
        method: str,
        nsid: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        bearer: str | None = None,
        seconds: float,
    ) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=self._connector() if self._connector else None)
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        async with self._http.request(
            method,
            f"{self._xrpc}/{nsid}",
            params=params,
            json=json,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if 200 <= response.status < 300:
                if not isinstance(body, dict):
                    raise _XrpcFailure(502, "InvalidResponse", f"{nsid} answered no JSON object", {})
                return body
            found = body if isinstance(body, dict) else {}
            raise _XrpcFailure(
                response.status,
                str(found.get("error") or ""),
                str(found.get("message") or response.reason or ""),
                dict(response.headers),
            )


def _session_from(body: dict[str, Any]) -> _Session:
    return _Session(
        access=str(body["accessJwt"]),
        refresh=str(body["refreshJwt"]),
        did=str(body["did"]),
        handle=str(body["handle"]),
    )


def _strong_ref(part: PublishedPart) -> dict[str, str]:
    return {"uri": part.post_id, "cid": part.ref}


def _network_error(exc: BaseException, *, creating: bool = False) -> NetworkError:
    """What a failed call means for the chat, in plain words (never a token)."""
    if not isinstance(exc, _XrpcFailure):
        return PublishFailed("Bluesky can't be reached right now; it will be tried again.", _describe(exc))
    detail = _describe(exc)
    if exc.status == 429:
        return RateLimited(
            "Bluesky asks to slow down; it will be tried again.", _retry_after(exc.headers), detail
        )
    if exc.status in (401, 403) or exc.error in _RENEWABLE:
        return Unauthorized(
            "Bluesky refused the account's handle or app password: reconnect it with a new app password.",
            detail,
        )
    if exc.status >= 500:
        return PublishFailed("Bluesky is having trouble right now; it will be tried again.", detail)
    if creating and "too big" in exc.message and "$.record.text" in exc.message:
        return Rejected(
            f"Bluesky refused the post: it is longer than Bluesky allows ({MAX_GRAPHEMES} characters).",
            detail,
        )
    if creating:
        return Rejected(f"Bluesky refused the post as it is ({exc.message or exc.error}).", detail)
    return PublishFailed("Bluesky refused the request; it will be tried again.", detail)


def _retry_after(headers: dict[str, str]) -> float:
    """Seconds until the limit resets: ``Retry-After``, else ``RateLimit-Reset`` (epoch s),
    counted from the server's clock where it says its time."""
    found = {name.lower(): value for name, value in headers.items()}
    retry_after = found.get("retry-after", "")
    if retry_after.strip().isdigit():
        return float(retry_after)
    if retry_after:
        try:
            return max(email.utils.parsedate_to_datetime(retry_after).timestamp() - server_now(headers), 0.0)
        except (TypeError, ValueError):
            pass
    reset = found.get("ratelimit-reset", "")
    try:
        return max(float(reset) - server_now(headers), 0.0)
    except ValueError:
        return 60.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _XrpcFailure):
        return f"{exc.status} {exc.error}: {exc.message}".strip()
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")

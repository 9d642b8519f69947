"""A loopback stand-in of a Bluesky PDS's XRPC API: the calls Herald makes, strict like the real one.

It answers as bluesky-social/atproto's PDS (`packages/pds`, `packages/xrpc-server`) does:

* ``com.atproto.server.createSession`` (identifier: handle, DID or email; password: the
  account's or an app password) → ``accessJwt``, ``refreshJwt``, ``did``, ``handle``,
  ``didDoc``, ``active``; a wrong one is ``401 AuthenticationRequired`` "Invalid identifier
  or password".
* ``com.atproto.server.refreshSession`` with the refresh JWT as its bearer token: a new
  pair; the old refresh token is revoked at once (the PDS keeps a short grace period; none
  here, so that a client that refreshes twice at once is caught), and a revoked one answers
  ``400 ExpiredToken`` "Token has been revoked". ``com.atproto.server.getSession``.
* Access tokens: a missing one is ``401 AuthMissing``; an expired one ``400 ExpiredToken``
  "Token has expired" (400, not 401, as the PDS answers); an unknown or wrong-kind one
  ``400 InvalidToken`` "Token could not be verified".
* ``com.atproto.identity.resolveHandle``: ``{did}``; an unknown handle under the service's
  domains is ``400 HandleNotFound``, any other ``400 InvalidRequest``, both "Unable to
  resolve handle".
* ``com.atproto.repo.createRecord``: the record's ``$type``, the record key's syntax, the
  collection's key type (``tid`` for ``app.bsky.feed.post``: the PDS enforces it, "Invalid
  record key for app.bsky.feed.post: Invalid TID string …"), then the lexicon: ``text``
  at most 300 graphemes and 3000 UTF-8 bytes, ``createdAt`` a datetime, facets' and
  strong refs' shapes and formats, all ``400 InvalidRequest`` "Invalid app.bsky.feed.post
  record: …" in lex-schema's words. A record key already used answers what the PDS
  answers when its repository tree refuses the duplicate: ``500 InternalServerError``
  "Internal Server Error", with no detail.
* ``com.atproto.repo.getRecord``: ``{uri, cid, value}``, or ``400 RecordNotFound``.
* ``429 RateLimitExceeded`` with ``RateLimit-Limit``, ``-Remaining``, ``-Reset`` (epoch
  seconds), ``-Policy`` and ``Retry-After``; successful writes carry the same headers.
* Every error body is ``{"error": name, "message": text}``.

Stricter than a PDS, on purpose (a PDS stores such posts, and Bluesky then shows them
wrong or not at all), each refused as ``400 InvalidRequest`` with a message that says it
is this emulator's check: facets' byte offsets must lie within the UTF-8 text, on
character boundaries, in order without overlapping, and cover what they claim (a link's
text shows its URI, a mention's is "@" and the handle of an account that exists, a tag's
is "#" and the tag); a reply's ``root`` and ``parent`` must be existing records with those
CIDs, ``root`` being the parent's own root (the AppView's rule for a valid thread).

CIDs are real CIDv1 strings (dag-cbor, sha-256) but hash the record's canonical JSON, not
its DAG-CBOR. Tokens are JWTs signed with a key of this emulator.

Hooks for tests: `add_account`, `add_identity` (an account elsewhere, for mentions),
`expire_access_tokens`, `revoke_refresh_tokens`, `rate_limit_next`, `fail_next` (a 5xx
before or after the write), `hold` (an answer kept until released, before or after the
write: a client's timeout becomes certain, not a matter of timing), `records`, `calls`
and `wait_until`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import regex
from aiohttp import web

__all__ = ["Account", "BlueskyEmulator", "Call", "Hold", "StoredRecord"]

_Json = dict[str, Any]

POST = "app.bsky.feed.post"
FACET = "app.bsky.richtext.facet"

_B32 = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable (TIDs)
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
_RECORD_KEY = re.compile(r"^[a-zA-Z0-9_~.:-]{1,512}$")
_HANDLE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_URI = re.compile(r"^\w+:(?://)?[^\s/]\S*$")
_AT_URI = re.compile(
    r"^at://(did:[a-z]+:[a-zA-Z0-9._:%-]+|[a-zA-Z0-9.-]+)/([a-zA-Z0-9.-]+)/([a-zA-Z0-9_~.:-]+)$"
)
_CID = re.compile(r"^b[a-z2-7]{50,}$")
_DATETIME = re.compile(
    r"^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\.[0-9]{1,20})?(Z|[+-][0-2][0-9]:[0-5][0-9])$"
)
_GRAPHEME = regex.compile(r"\X")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_STRICT = " (this emulator's check; a PDS would store it, and Bluesky would show it wrong)"

ACCESS_SECONDS = 2 * 3600  # the PDS's access token lifetime
REFRESH_SECONDS = 90 * 86400
#: createRecord's rate limit (repo-write-hour: 5000 points, 3 a create)
WRITE_POINTS, WRITE_WINDOW, CREATE_COST = 5000, 3600, 3


class XrpcError(Exception):
    """An XRPC refusal: HTTP `status` with the body ``{"error", "message"}``."""

    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})


def _invalid(message: str, error: str = "InvalidRequest") -> XrpcError:
    return XrpcError(400, error, message)


_STATUS_ERRORS = {
    500: ("InternalServerError", "Internal Server Error"),
    501: ("MethodNotImplemented", "Method Not Implemented"),
    502: ("UpstreamFailure", "Upstream Failure"),
    503: ("NotEnoughResources", "Not Enough Resources"),
    504: ("UpstreamTimeout", "Upstream Timeout"),
}


def _server_error(status: int) -> XrpcError:
    name, text = _STATUS_ERRORS.get(status, ("InternalServerError", "Internal Server Error"))
    return XrpcError(status, name, text)


@dataclass
class Account:
    did: str
    handle: str
    password: str = ""
    app_passwords: set[str] = field(default_factory=set)
    #: False for an identity on another PDS: it resolves and can be mentioned, never log in
    local: bool = True


@dataclass(frozen=True)
class StoredRecord:
    uri: str
    cid: str
    did: str
    collection: str
    rkey: str
    value: _Json
    validation_status: str | None


@dataclass
class Call:
    """One XRPC request as received; `status` and `error` are what it was answered."""

    method: str
    nsid: str
    params: dict[str, str]
    body: Any
    status: int = 0
    error: str = ""


@dataclass
class Hold:
    """Answers kept waiting until `release()`: the first `passes` matching calls go through.

    ``after_write``: the record is written first and only its answer waits, as a PDS that
    committed but answers slowly. A client that gives up meanwhile is never answered
    (``status`` 499); what was written stays written.
    """

    nsid: str
    after_write: bool
    passes: int = 0
    waiting: list[Call] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()

    def matches(self, nsid: str, after_write: bool) -> bool:
        return not self.released.is_set() and nsid == self.nsid and after_write == self.after_write


@dataclass
class _Fault:
    nsid: str
    status: int
    times: int
    after_write: bool


@dataclass
class _Limit:
    nsid: str
    times: int
    reset_in: float
    limit: int


@dataclass
class _Token:
    did: str
    kind: str  # "access" or "refresh"
    app_password: bool
    expires: float
    revoked: bool = False


class BlueskyEmulator:
    """A PDS on a free loopback port; `url` is its service URL (XRPC under ``/xrpc``)."""

    def __init__(self, *, service_domains: tuple[str, ...] = (".bsky.social",)) -> None:
        self.service_domains = service_domains
        self.url = ""
        self.calls: list[Call] = []
        self._accounts: dict[str, Account] = {}  # by DID
        self._records: dict[tuple[str, str, str], StoredRecord] = {}
        self._order: list[tuple[str, str, str]] = []
        self._tokens: dict[str, _Token] = {}  # by jti
        self._key = secrets.token_bytes(32)
        self._holds: list[Hold] = []
        self._faults: list[_Fault] = []
        self._limits: list[_Limit] = []
        self._write_points: dict[str, int] = {}
        self._last_tid = 0
        self._clock_id = secrets.randbelow(1024)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/xrpc/{nsid}", self._dispatch)
        # handler_cancellation: a client that gives up ends its held request
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for held in self._holds:
            held.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BlueskyEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the world ----------------------------------------------------------------------

    def add_account(
        self,
        handle: str,
        *,
        app_password: str | None = None,
        password: str | None = None,
        did: str | None = None,
    ) -> Account:
        """An account on this PDS; it logs in with its password or its app password."""
        account = Account(
            did=did or _new_did(),
            handle=handle.lower(),
            password=password or secrets.token_urlsafe(12),
            app_passwords={app_password} if app_password else set(),
        )
        self._accounts[account.did] = account
        return account

    def add_identity(self, handle: str, did: str | None = None) -> str:
        """An account hosted elsewhere: its handle resolves and it can be mentioned. Its DID."""
        account = Account(did=did or _new_did(), handle=handle.lower(), local=False)
        self._accounts[account.did] = account
        return account.did

    def account(self, handle_or_did: str) -> Account | None:
        key = handle_or_did.lower()
        for account in self._accounts.values():
            if key in (account.did, account.handle):
                return account
        return None

    def records(self, collection: str = POST, did: str | None = None) -> list[StoredRecord]:
        """Every record of `collection` (of one repository if `did`), in the order written."""
        found = (self._records[key] for key in self._order)
        return [r for r in found if r.collection == collection and (did is None or r.did == did)]

    def calls_to(self, nsid: str) -> list[Call]:
        return [call for call in self.calls if call.nsid == nsid]

    # -- hooks --------------------------------------------------------------------------

    def expire_access_tokens(self) -> None:
        """Every access token issued so far has expired: its next use answers ExpiredToken."""
        for token in self._tokens.values():
            if token.kind == "access":
                token.expires = 0.0

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is revoked (as when a user revokes the app
        password's sessions): refreshSession answers ExpiredToken "Token has been revoked"."""
        for token in self._tokens.values():
            if token.kind == "refresh":
                token.revoked = True

    def rate_limit_next(self, nsid: str, *, times: int = 1, reset_in: float = 30.0, limit: int = 30) -> None:
        """Answer the next `times` calls of `nsid` 429, the window resetting `reset_in` s from now."""
        self._limits.append(_Limit(nsid, times, reset_in, limit))

    def fail_next(self, nsid: str, *, status: int = 500, times: int = 1, after_write: bool = False) -> None:
        """Answer the next `times` calls of `nsid` with a 5xx, before anything is done or, with
        `after_write`, once the record is written (a crash between commit and answer)."""
        self._faults.append(_Fault(nsid, status, times, after_write))

    def hold(self, nsid: str, *, after_write: bool = False, after: int = 0) -> Hold:
        """Let `after` calls of `nsid` through, then keep the next ones' answers until released."""
        held = Hold(nsid, after_write, after)
        self._holds.append(held)
        return held

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the predicate, not for I/O
    ) -> None:
        """Poll every 10 ms until ``predicate()`` is true; fail with the recent calls if never."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                recent = ", ".join(f"{c.nsid} {c.status} {c.error}".rstrip() for c in self.calls[-10:])
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise AssertionError(f"{name} still false after {timeout}s; last calls: [{recent}]")
            await asyncio.sleep(0.01)

    # -- dispatch -----------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        nsid = request.match_info["nsid"]
        body: Any = None
        raw = await request.read()
        call = Call(request.method, nsid, dict(request.query), None)
        self.calls.append(call)
        try:
            if raw:
                if request.content_type != "application/json":
                    raise _invalid(f"Wrong request encoding (Content-Type): {request.content_type}")
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise _invalid("Request body is not valid JSON") from None
                call.body = body
            route = _ROUTES.get(nsid)
            if route is None:
                raise XrpcError(501, "MethodNotImplemented", "Method Not Implemented")
            method, handler = route
            if request.method != method:
                raise _invalid(f"Incorrect HTTP method ({request.method}) expected {method}")
            await self._wait_for_holds(call, request, after_write=False)
            self._inject_fault(nsid, after_write=False)
            result, headers = await handler(self, request, call)
            await self._wait_for_holds(call, request, after_write=True)
            self._inject_fault(nsid, after_write=True)
        except XrpcError as exc:
            call.status, call.error = exc.status, exc.error
            return _json({"error": exc.error, "message": exc.message}, exc.status, exc.headers)
        except asyncio.CancelledError:
            call.status = 499  # the client gave up: never answered
            raise
        call.status = 200
        return _json(result, 200, headers)

    async def _wait_for_holds(self, call: Call, request: web.Request, *, after_write: bool) -> None:
        for held in self._holds:
            if held.matches(call.nsid, after_write):
                if held.passes > 0:
                    held.passes -= 1
                    continue
                held.waiting.append(call)
                await held.released.wait()

    def _inject_fault(self, nsid: str, *, after_write: bool) -> None:
        for fault in self._faults:
            if fault.nsid == nsid and fault.after_write == after_write and fault.times > 0:
                fault.times -= 1
                raise _server_error(fault.status)

    def _check_rate_limit(self, nsid: str) -> None:
        for limit in self._limits:
            if limit.nsid == nsid and limit.times > 0:
                limit.times -= 1
                reset_at = math.floor(time.time() + limit.reset_in)
                raise XrpcError(
                    429,
                    "RateLimitExceeded",
                    "Rate Limit Exceeded",
                    {
                        "RateLimit-Limit": str(limit.limit),
                        "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(reset_at),
                        "RateLimit-Policy": f"{limit.limit};w={math.ceil(limit.reset_in)}",
                        "Retry-After": str(math.ceil(limit.reset_in)),
                    },
                )

    # -- tokens -------------------------------------------------------------------------

    def _issue(self, account: Account, *, app_password: bool) -> tuple[str, str]:
        now = time.time()
        pair = []
        for kind, lifetime in (("access", ACCESS_SECONDS), ("refresh", REFRESH_SECONDS)):
            jti = secrets.token_urlsafe(16)
            self._tokens[jti] = _Token(account.did, kind, app_password, now + lifetime)
            scope = {
                "access": "com.atproto.appPass" if app_password else "com.atproto.access",
                "refresh": "com.atproto.refresh",
            }[kind]
            claims = {"scope": scope, "sub": account.did, "aud": "did:web:pds.test", "iat": int(now)}
            claims |= {"exp": int(now + lifetime), "jti": jti}
            pair.append(
                self._sign({"typ": "at+jwt" if kind == "access" else "refresh+jwt", "alg": "HS256"}, claims)
            )
        return pair[0], pair[1]

    def _sign(self, header: _Json, claims: _Json) -> str:
        head = _b64(json.dumps(header, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        return f"{head}.{payload}.{_b64(signature)}"

    def _bearer(self, request: web.Request, kind: str) -> _Token:
        header = request.headers.get("Authorization")
        if not header:
            raise XrpcError(401, "AuthMissing", "Authentication Required")
        parts = header.split(" ")
        if len(parts) != 2:
            raise _invalid("Malformed authorization header", "InvalidToken")
        if parts[0].upper() != "BEARER":
            raise _invalid(f"Unsupported authorization type: {parts[0]}", "InvalidToken")
        token = self._verify(parts[1], "at+jwt" if kind == "access" else "refresh+jwt")
        if token is None or token.kind != kind:
            raise _invalid("Token could not be verified", "InvalidToken")
        if token.expires <= time.time():
            raise _invalid("Token has expired", "ExpiredToken")
        return token

    def _verify(self, jwt: str, typ: str) -> _Token | None:
        try:
            head, payload, signature = jwt.split(".")
            expected = hmac.new(self._key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_unb64(signature), expected):
                return None
            if json.loads(_unb64(head)).get("typ") != typ:
                return None
            return self._tokens.get(json.loads(_unb64(payload)).get("jti", ""))
        except ValueError:
            return None

    # -- methods ------------------------------------------------------------------------

    def _session_body(self, account: Account, access: str, refresh: str) -> _Json:
        return {
            "accessJwt": access,
            "refreshJwt": refresh,
            "handle": account.handle,
            "did": account.did,
            "didDoc": self._did_doc(account),
            "emailConfirmed": True,
            "active": True,
        }

    def _did_doc(self, account: Account) -> _Json:
        return {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": account.did,
            "alsoKnownAs": [f"at://{account.handle}"],
            "service": [
                {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": self.url}
            ],
        }

    async def _create_session(self, request: web.Request, call: Call) -> tuple[_Json, dict[str, str]]:
        body = _object_input(call.body, ("identifier", "password"))
        self._check_rate_limit(call.nsid)
        identifier, password = body["identifier"], body["password"]
        if not isinstance(identifier, str) or not isinstance(password, str):
            raise _invalid("Input/identifier and Input/password must be strings")
        ident = identifier.lower()
        account = next(
            (
                a
                for a in self._accounts.values()
                if a.local and ident in (a.did, a.handle, f"{a.handle}@mail.test")
            ),
            None,
        )
        if account is None or password not in {account.password, *account.app_passwords}:
            raise XrpcError(401, "AuthenticationRequired", "Invalid identifier or password")
        access, refresh = self._issue(account, app_password=password in account.app_passwords)
        return self._session_body(account, access, refresh), {}

    async def _refresh_session(self, request: web.Request, call: Call) -> tuple[_Json, dict[str, str]]:
        token = self._bearer_refresh(request)
        account = self._accounts[token.did]
        token.revoked = True
        access, refresh = self._issue(account, app_password=token.app_password)
        return self._session_body(account, access, refresh), {}

    def _bearer_refresh(self, request: web.Request) -> _Token:
        token = self._bearer(request, "refresh")
        if token.revoked:
            raise _invalid("Token has been revoked", "ExpiredToken")
        return token

    async def _get_session(self, request: web.Request, call: Call) -> tuple[_Json, dict[str, str]]:
        account = self._accounts[self._bearer(request, "access").did]
        return {
            "handle": account.handle,
            "did": account.did,
            "didDoc": self._did_doc(account),
            "emailConfirmed": True,
            "active": True,
        }, {}

    async def _resolve_handle(self, request: web.Request, call: Call) -> tuple[_Json, dict[str, str]]:
        handle = _param(call, "handle").lower()
        if len(handle) > 253 or not _HANDLE.match(handle):
            raise _invalid("Handle didn't validate via regex", "InvalidHandle")
        account = self.account(handle)
        if account is not None:
            return {"did": account.did}, {}
        if any(handle.endswith(domain) or handle == domain[1:] for domain in self.service_domains):
            raise _invalid("Unable to resolve handle", "HandleNotFound")
        raise _invalid("Unable to resolve handle")

    async def _get_record(self, request: web.Request, call: Call) -> tuple[_Json, dict[str, str]]:
        repo, collection, rkey = (_param(call, name) for name in ("repo", "collection", "rkey"))
        account = self.account(repo)
        if account is None:
            raise _invalid("Could not locate record")
        uri = f"at://{account.did}/{collection}/{rkey}"
        record = self._records.get((account.did, collection, rkey))
        cid = call.params.get("cid")
        if record is None or (cid is not None and cid != record.cid):
            raise _invalid(f"Could not locate record: {uri}", "RecordNotFound")
        return {"uri": record.uri, "cid": record.cid, "value": record.value}, {}

    async def _create_record(self, request: web.Request, call: Call) -> tuple[_Json, dict[str, str]]:
        token = self._bearer(request, "access")
        self._check_rate_limit(call.nsid)
        body = _object_input(call.body, ("repo", "collection", "record"))
        account = self.account(str(body["repo"]))
        if account is None or not account.local:
            raise XrpcError(403, "AccountNotFound", "Account not found")
        if account.did != token.did:
            raise XrpcError(401, "AuthenticationRequired", "Authentication Required")
        collection, record, rkey = body["collection"], body["record"], body.get("rkey")
        if not isinstance(record, dict):
            raise _invalid("Expected object value type at $.record")
        record_type = record.get("$type", collection)
        if record_type != collection:
            raise _invalid(f"Invalid $type: expected {collection}, got {record_type}")
        record = {**record, "$type": collection}
        if rkey is not None and (
            not isinstance(rkey, str) or not _RECORD_KEY.match(rkey) or rkey in (".", "..")
        ):
            raise _invalid(f"Invalid record key: {rkey}")
        rkey = rkey or self._next_tid()
        status: str | None = None
        if body.get("validate") is not False:
            if collection != POST:
                if body.get("validate") is True:
                    raise _invalid(f"Unknown lexicon type: {collection}")
                status = "unknown"
            else:
                if not _TID.match(rkey):
                    raise _invalid(f'Invalid record key for {POST}: Invalid TID string (got "{rkey}") at $')
                _validate_post(record)
                self._check_post_strictly(record)
                status = "valid"
        key = (account.did, collection, rkey)
        if key in self._records:
            # the repository's tree refuses a second value at a key: a plain error, a bare 500
            raise _server_error(500)
        uri = f"at://{account.did}/{collection}/{rkey}"
        stored = StoredRecord(uri, _cid(record), account.did, collection, rkey, record, status)
        self._records[key] = stored
        self._order.append(key)
        points = self._write_points.get(account.did, WRITE_POINTS) - CREATE_COST
        self._write_points[account.did] = points
        headers = {
            "RateLimit-Limit": str(WRITE_POINTS),
            "RateLimit-Remaining": str(max(points, 0)),
            "RateLimit-Reset": str(math.floor(time.time() + WRITE_WINDOW)),
            "RateLimit-Policy": f"{WRITE_POINTS};w={WRITE_WINDOW}",
        }
        result: _Json = {
            "uri": uri,
            "cid": stored.cid,
            "commit": {"cid": _cid({"record": stored.cid, "rev": rkey}), "rev": self._next_tid()},
        }
        if status is not None:
            result["validationStatus"] = status
        return result, headers

    def _check_post_strictly(self, record: _Json) -> None:
        """What a PDS lets through and Bluesky then shows wrong: facets and reply refs."""
        text: str = record["text"]
        data = text.encode("utf-8", "surrogatepass")
        previous_end = 0
        for n, facet in enumerate(record.get("facets") or []):
            start, end = facet["index"]["byteStart"], facet["index"]["byteEnd"]
            where = f"$.record.facets[{n}]"
            if not start < end <= len(data):
                raise _invalid(
                    f"facet bytes {start}..{end} outside the text's {len(data)} at {where}{_STRICT}"
                )
            if any(i < len(data) and data[i] & 0xC0 == 0x80 for i in (start, end)):
                raise _invalid(f"facet bytes {start}..{end} split a character at {where}{_STRICT}")
            if start < previous_end:
                raise _invalid(f"facets out of order or overlapping at {where}{_STRICT}")
            previous_end = end
            shown = data[start:end].decode("utf-8", "surrogatepass")
            for feature in facet["features"]:
                problem = self._feature_problem(feature, shown)
                if problem:
                    raise _invalid(f"{problem} at {where}{_STRICT}")
        reply = record.get("reply")
        if reply is not None:
            root, parent = (
                self._existing(reply[part], f"$.record.reply.{part}") for part in ("root", "parent")
            )
            parent_root = (parent.value.get("reply") or {}).get("root") or {
                "uri": parent.uri,
                "cid": parent.cid,
            }
            if (root.uri, root.cid) != (parent_root["uri"], parent_root["cid"]):
                raise _invalid(f"reply root is not the parent's thread root ({parent_root['uri']}){_STRICT}")

    def _feature_problem(self, feature: _Json, shown: str) -> str:
        kind = feature.get("$type", "")
        if kind == f"{FACET}#link":
            # shown may drop the scheme, or be cut short with an ellipsis
            target = _SCHEME.sub("", feature["uri"]).lower()
            text = _SCHEME.sub("", shown.removesuffix("…").removesuffix("...")).lower()
            if not text or not target.startswith(text):
                return f"link text {shown!r} does not show {feature['uri']!r}"
        elif kind == f"{FACET}#mention":
            account = self._accounts.get(feature["did"])
            if account is None:
                return f"mention of {feature['did']}, an account that does not exist"
            if shown.lower() != f"@{account.handle}":
                return f"mention text {shown!r} is not @{account.handle}"
        elif kind == f"{FACET}#tag":
            tag = feature["tag"]
            ok = (shown[:1] in "#＃" and shown[1:] == tag) or (
                tag.startswith("$") and shown[:1] == "$" and shown.upper() == tag
            )
            if not ok:
                return f"tag text {shown!r} is not #{tag}"
        return ""

    def _existing(self, ref: _Json, where: str) -> StoredRecord:
        match = _AT_URI.match(ref["uri"])
        account = self.account(match.group(1)) if match else None
        stored = (
            self._records.get((account.did, match.group(2), match.group(3))) if account and match else None
        )
        if stored is None:
            raise _invalid(f"{ref['uri']} is not an existing record at {where}{_STRICT}")
        if stored.cid != ref["cid"]:
            raise _invalid(f"cid {ref['cid']} is not {ref['uri']}'s ({stored.cid}) at {where}{_STRICT}")
        return stored

    def _next_tid(self) -> str:
        micros = max(time.time_ns() // 1000, self._last_tid + 1)
        self._last_tid = micros
        return tid(micros, self._clock_id)


Handler = Callable[[BlueskyEmulator, web.Request, Call], Awaitable[tuple[_Json, dict[str, str]]]]

_ROUTES: dict[str, tuple[str, Handler]] = {
    "com.atproto.server.createSession": ("POST", BlueskyEmulator._create_session),
    "com.atproto.server.refreshSession": ("POST", BlueskyEmulator._refresh_session),
    "com.atproto.server.getSession": ("GET", BlueskyEmulator._get_session),
    "com.atproto.identity.resolveHandle": ("GET", BlueskyEmulator._resolve_handle),
    "com.atproto.repo.createRecord": ("POST", BlueskyEmulator._create_record),
    "com.atproto.repo.getRecord": ("GET", BlueskyEmulator._get_record),
}


# -- the lexicon's checks ---------------------------------------------------------------


def _validate_post(record: _Json) -> None:
    """app.bsky.feed.post's lexicon, with lex-schema's messages."""

    def fail(issue: str, path: str) -> XrpcError:
        return _invalid(f"Invalid {POST} record: {issue} at $.record{path}")

    def string(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise fail(f"Expected string value type (got {_preview(value)})", path)
        return value

    def integer(value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(f"Expected integer value type (got {_preview(value)})", path)
        if value < 0:
            raise fail(f"integer too small (minimum 0, got {value})", path)
        return value

    def obj(value: Any, path: str, required: tuple[str, ...]) -> _Json:
        if not isinstance(value, dict):
            raise fail(f"Expected object value type (got {_preview(value)})", path)
        for key in required:
            if key not in value:
                raise fail(f'Missing required key "{key}"', path)
        return value

    def array(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise fail(f"Expected array value type (got {_preview(value)})", path)
        return value

    obj(record, "", ("text", "createdAt"))
    text = string(record["text"], ".text")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > 3000:
        raise fail(f"string too big (maximum 3000, got {size})", ".text")
    count = sum(1 for _ in _GRAPHEME.finditer(text))
    if count > 300:
        raise fail(f"grapheme too big (maximum 300, got {count})", ".text")
    created = string(record["createdAt"], ".createdAt")
    if not _is_datetime(created):
        raise fail(f"Invalid datetime (got {_preview(created)})", ".createdAt")
    for n, facet in enumerate(array(record.get("facets", []), ".facets")):
        path = f".facets[{n}]"
        obj(facet, path, ("index", "features"))
        index = obj(facet["index"], f"{path}.index", ("byteStart", "byteEnd"))
        integer(index["byteStart"], f"{path}.index.byteStart")
        integer(index["byteEnd"], f"{path}.index.byteEnd")
        for m, feature in enumerate(array(facet["features"], f"{path}.features")):
            where = f"{path}.features[{m}]"
            kind = obj(feature, where, ("$type",))["$type"]
            if kind == f"{FACET}#mention":
                if not _DID.match(string(obj(feature, where, ("did",))["did"], f"{where}.did")):
                    raise fail(f"Invalid DID (got {_preview(feature['did'])})", f"{where}.did")
            elif kind == f"{FACET}#link":
                if not _URI.match(string(obj(feature, where, ("uri",))["uri"], f"{where}.uri")):
                    raise fail(f"Invalid uri (got {_preview(feature['uri'])})", f"{where}.uri")
            elif kind == f"{FACET}#tag":
                tag = string(obj(feature, where, ("tag",))["tag"], f"{where}.tag")
                if len(tag.encode()) > 640:
                    raise fail(f"string too big (maximum 640, got {len(tag.encode())})", f"{where}.tag")
                if (graphemes := sum(1 for _ in _GRAPHEME.finditer(tag))) > 64:
                    raise fail(f"grapheme too big (maximum 64, got {graphemes})", f"{where}.tag")
    if "reply" in record:
        reply = obj(record["reply"], ".reply", ("root", "parent"))
        for part in ("root", "parent"):
            ref = obj(reply[part], f".reply.{part}", ("uri", "cid"))
            if not _AT_URI.match(string(ref["uri"], f".reply.{part}.uri")):
                raise fail(f"Invalid AT URI (got {_preview(ref['uri'])})", f".reply.{part}.uri")
            if not _CID.match(string(ref["cid"], f".reply.{part}.cid")):
                raise fail(f"Invalid CID string (got {_preview(ref['cid'])})", f".reply.{part}.cid")
    if "langs" in record and len(array(record["langs"], ".langs")) > 3:
        raise fail(f"array too big (maximum 3, got {len(record['langs'])})", ".langs")


def _is_datetime(value: str) -> bool:
    if not _DATETIME.match(value) or value.endswith("-00:00"):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _object_input(body: Any, required: tuple[str, ...]) -> _Json:
    if not isinstance(body, dict):
        raise _invalid("Request encoding (Content-Type) required but not provided")
    for key in required:
        if key not in body:
            raise _invalid(f'Input must have the property "{key}"')
    return body


def _param(call: Call, name: str) -> str:
    value = call.params.get(name)
    if not value:
        raise _invalid(f'Params must have the property "{name}"')
    return value


def _preview(value: Any) -> str:
    return (
        json.dumps(value, ensure_ascii=False)[:256]
        if isinstance(value, str | int | float)
        else type(value).__name__
    )


# -- identifiers --------------------------------------------------------------------------


def tid(micros: int, clock_id: int) -> str:
    """A TID: 53 bits of microseconds and 10 of clock id, base32-sortable, 13 characters."""
    value = (micros << 10) | (clock_id & 0x3FF)
    return "".join(_B32[(value >> (5 * (12 - i))) & 0x1F] for i in range(13))


def _new_did() -> str:
    return "did:plc:" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))


def _cid(value: Any) -> str:
    """A CIDv1 (dag-cbor, sha-256) string; the hash is over canonical JSON, not DAG-CBOR."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).digest()
    raw = bytes([0x01, 0x71, 0x12, 0x20]) + digest
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    # Express answers JSON with a charset: a client must not need the bare type
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )

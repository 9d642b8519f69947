"""Web pages read as text: `PageFetcher` reads the result pages, which are anybody's.

A connection goes only to an address the `AddressPolicy` allows (see
`core.search.addresses`). Redirects are followed here, one hop at a time, so
that every hop's URL is checked before anything is sent. Size, time and
redirects are bounded (`FetchLimits`), and only text (HTML, XHTML, plain text)
is read; `core.search.page_text` turns it into readable text.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from core.search.addresses import (
    PUBLIC_ONLY,
    AddressPolicy,
    HostResolver,
    PolicyResolver,
    guarded_socket_factory,
    parse_ip,
    system_resolver,
)
from core.search.errors import BlockedAddress, PageFetchError
from core.search.http import CHUNK, USER_AGENT
from core.search.page_text import looks_like_html, page_text

__all__ = ["FetchLimits", "Fetcher", "Page", "PageFetcher"]


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """What one page may cost: bytes read, seconds in all (redirects included), hops,
    and characters of text kept."""

    max_bytes: int = 2_000_000
    max_seconds: float = 8.0
    max_redirects: int = 5
    max_chars: int = 20_000
    connect_timeout: float = 4.0


@dataclass(frozen=True, slots=True)
class Page:
    """A page's readable text. `truncated`: the page was cut (by size, time or a dropped
    connection, or by `max_chars`) and `text` is its beginning."""

    url: str
    final_url: str
    title: str
    text: str
    truncated: bool = False


class Fetcher(Protocol):
    async def fetch(self, url: str) -> Page: ...


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_TEXT_TYPES = _HTML_TYPES | {"text/plain"}


class PageFetcher:
    """Reads web pages as text, connecting only to addresses `policy` allows.

    It owns its session, because the session's connector carries the policy (a
    session passed in could connect anywhere). Connections are not kept alive:
    each request resolves, checks and connects afresh. No cookies are kept.
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy = PUBLIC_ONLY,
        resolver: HostResolver = system_resolver,
        limits: FetchLimits | None = None,
        user_agent: str = USER_AGENT,
        max_connections: int = 8,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._limits = limits or FetchLimits()
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "text/html,application/xhtml+xml;q=0.9,text/plain;q=0.8",
            "Accept-Encoding": "gzip, deflate",
        }
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def limits(self) -> FetchLimits:
        return self._limits

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> PageFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def fetch(self, url: str) -> Page:
        """The page at `url` as text, following up to `max_redirects` redirects, each checked.

        Raises `BlockedAddress` for a refused address (nothing is sent there) and
        `PageFetchError` for anything else that leaves no text to read.
        """
        limits = self._limits
        deadline = asyncio.get_running_loop().time() + limits.max_seconds
        target = _web_url(url)
        for _ in range(limits.max_redirects + 1):
            self._check_literal(target)
            response = await self._get(target, deadline)
            try:
                if response.status in _REDIRECTS:
                    target = _redirect_target(response)
                    continue
                return await self._page(url, response, deadline)
            finally:
                response.close()
        raise PageFetchError(f"{url}: more than {limits.max_redirects} redirects")

    def _check_literal(self, target: URL) -> None:
        """A URL naming an IP address is checked here (aiohttp does not resolve those)."""
        host = target.host or ""
        if parse_ip(host) is not None and not self._policy.allows(host):
            raise BlockedAddress(f"{target}: {host} is not a public address")

    async def _get(self, target: URL, deadline: float) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._open().get(target, allow_redirects=False, headers=self._headers)
        except TimeoutError as exc:
            raise PageFetchError(f"{target}: no answer within {self._limits.max_seconds:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno == errno.EACCES:
                raise BlockedAddress(f"{target}: {exc.os_error.strerror or exc.os_error}") from exc
            raise PageFetchError(f"{target}: cannot connect: {exc.os_error!r}") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise PageFetchError(f"{target}: {exc!r}") from exc

    async def _page(self, url: str, response: aiohttp.ClientResponse, deadline: float) -> Page:
        where = str(response.url)
        if not 200 <= response.status < 300:
            raise PageFetchError(f"{where}: HTTP {response.status}")
        declared = "Content-Type" in response.headers
        kind = response.content_type if declared else None
        if kind is not None and kind not in _TEXT_TYPES:
            raise PageFetchError(f"{where}: not a web page ({kind})")
        body, cut = await self._read(response, deadline)
        if kind is None:
            kind = "text/html" if looks_like_html(body) else None
            if kind is None:
                raise PageFetchError(f"{where}: no Content-Type, and not HTML")
        charset = response.charset if declared else None
        title, text, clipped = await asyncio.to_thread(
            page_text, body, kind in _HTML_TYPES, charset, self._limits.max_chars
        )
        return Page(url=url, final_url=where, title=title, text=text, truncated=cut or clipped)

    async def _read(self, response: aiohttp.ClientResponse, deadline: float) -> tuple[bytes, bool]:
        """The body, up to `max_bytes` and until the deadline; whether it was cut short."""
        room = self._limits.max_bytes
        chunks: list[bytes] = []
        cut = False
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.content.iter_chunked(CHUNK):
                    if len(chunk) > room:
                        chunks.append(chunk[:room])
                        cut = True
                        break
                    chunks.append(chunk)
                    room -= len(chunk)
        except TimeoutError as exc:
            if not chunks:
                raise PageFetchError(f"{response.url}: sent no text within the time limit") from exc
            cut = True
        except (aiohttp.ClientError, OSError) as exc:
            if not chunks:
                raise PageFetchError(f"{response.url}: {exc!r}") from exc
            cut = True
        return b"".join(chunks), cut

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=PolicyResolver(self._resolver, self._policy),
                use_dns_cache=False,
                force_close=True,
                limit=self._max_connections,
                socket_factory=guarded_socket_factory(self._policy),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._limits.connect_timeout),
                trust_env=False,  # a proxy would connect for us, unchecked
            )
        return self._session


def _web_url(text: str) -> URL:
    try:
        url = URL(text)
    except (ValueError, TypeError) as exc:
        raise PageFetchError(f"not a URL: {text[:200]!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise PageFetchError(f"not an http(s) URL: {text[:200]!r}")
    if url.user is not None or url.password is not None:
        raise PageFetchError(f"{url.host}: URLs with credentials are not fetched")
    return url.with_fragment(None)


def _redirect_target(response: aiohttp.ClientResponse) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise PageFetchError(f"{response.url}: redirect without a Location")
    try:
        target = response.url.join(URL(location))
    except (ValueError, TypeError) as exc:
        raise PageFetchError(f"{response.url}: bad redirect {location[:200]!r}") from exc
    return _web_url(str(target))

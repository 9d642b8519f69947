"""SearXNG's results for a question: `SearxngClient` asks a self-hosted SearXNG instance
(`GET /search?format=json`).

The instance is the operator's own service, often on a private address, so no
address policy applies to it (that is for the pages, `core.search.addresses`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from yarl import URL

from core.search.errors import WebSearchError
from core.search.http import CHUNK, USER_AGENT
from core.search.page_text import MAX_TITLE

__all__ = [
    "MAX_QUERY_CHARS",
    "NOTHING_TO_SEARCH",
    "SEARCH_NOT_ENABLED",
    "SEARCH_RATE_LIMITED",
    "SEARCH_TOO_SLOW",
    "SEARCH_UNREACHABLE",
    "SearchResult",
    "Searcher",
    "SearxngClient",
]

log = logging.getLogger(__name__)

# What people are told; the exception's own text (for the logs) says what happened.
SEARCH_UNREACHABLE = "I can't reach the web search service right now — try again in a minute."
SEARCH_TOO_SLOW = "The web search service is taking too long to answer — try again in a minute."
SEARCH_NOT_ENABLED = "Web search isn't set up correctly on this server (its JSON output is turned off)."
SEARCH_RATE_LIMITED = "The web search service is refusing my requests for now — try again later."
NOTHING_TO_SEARCH = "What should I search the web for?"


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str


#: a question longer than this is cut before it is searched
MAX_QUERY_CHARS = 400
_MAX_SNIPPET = 1000
#: SearXNG's JSON for one page of results is tens of kilobytes
_MAX_SEARCH_BYTES = 4_000_000


class Searcher(Protocol):
    async def search(self, query: str, *, limit: int) -> list[SearchResult]: ...


class SearxngClient:
    """SearXNG's JSON search API on a base URL (`HERALD_SEARXNG_URL`).

    The instance must enable the format (`search.formats: [html, json]` in its
    settings.yml; it answers 403 otherwise). Headers are those SearXNG's bot
    detection expects from a browser (Accept with text/html, Accept-Language,
    gzip), so an instance with its limiter on still answers.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        language: str | None = None,
        safesearch: int | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        base = URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"not an http(s) URL for SearXNG: {base_url!r}")
        self._endpoint = base / "search"
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout
        self._language = language
        self._safesearch = safesearch
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "application/json, text/html;q=0.1",
            "Accept-Language": language or "*",
            "Accept-Encoding": "gzip, deflate",
        }

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> SearxngClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def search(self, query: str, *, limit: int = 5) -> list[SearchResult]:
        """Up to `limit` results with http(s) URLs, in SearXNG's order, without duplicates."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        text = " ".join(query.split())[:MAX_QUERY_CHARS]
        if not text:
            raise WebSearchError("empty search query", user_message=NOTHING_TO_SEARCH)
        params = {"q": text, "format": "json", "pageno": "1"}
        if self._language:
            params["language"] = self._language
        if self._safesearch is not None:
            params["safesearch"] = str(self._safesearch)
        where = f"SearXNG at {self._endpoint.origin()}"
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._open().get(self._endpoint, params=params, headers=self._headers) as response,
            ):
                status = response.status
                body = await _read_capped(response, _MAX_SEARCH_BYTES)
        except TimeoutError as exc:
            raise WebSearchError(
                f"{where} did not answer within {self._timeout:g} s", user_message=SEARCH_TOO_SLOW
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise WebSearchError(f"{where} is unreachable: {exc!r}", user_message=SEARCH_UNREACHABLE) from exc
        if status == 403:
            raise WebSearchError(
                f"{where} refused format=json (403): add json to search.formats in its settings.yml",
                user_message=SEARCH_NOT_ENABLED,
            )
        if status == 429:
            raise WebSearchError(
                f"{where} is rate limiting Herald (429): turn its limiter off (server.limiter) "
                "or let Herald's address pass its bot detection",
                user_message=SEARCH_RATE_LIMITED,
            )
        if status != 200:
            raise WebSearchError(f"{where} answered HTTP {status}: {_excerpt(body)}")
        if len(body) > _MAX_SEARCH_BYTES:
            raise WebSearchError(f"{where} answered more than {_MAX_SEARCH_BYTES} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise WebSearchError(f"{where} answered something other than JSON: {_excerpt(body)}") from exc
        results = _parse_results(data, limit)
        if isinstance(data, dict) and not results and data.get("unresponsive_engines"):
            log.warning("web search: no results; unresponsive engines: %s", data["unresponsive_engines"])
        return results

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
            )
        return self._session


def _parse_results(data: object, limit: int) -> list[SearchResult]:
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise WebSearchError(f"SearXNG's JSON has no results list: {str(data)[:200]!r}")
    found: list[SearchResult] = []
    seen: set[str] = set()
    for item in data["results"]:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        try:
            url = URL(item["url"]).with_fragment(None)
        except (ValueError, TypeError):
            continue
        if url.scheme not in ("http", "https") or not url.host or str(url) in seen:
            continue
        seen.add(str(url))
        title = _one_line(item.get("title"))[:MAX_TITLE] or url.host
        found.append(
            SearchResult(title=title, url=str(url), snippet=_one_line(item.get("content"))[:_MAX_SNIPPET])
        )
        if len(found) == limit:
            break
    return found


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, or its first `cap` + 1 bytes when it is longer (so the caller can tell)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            break
    return b"".join(chunks)[: cap + 1]


def _one_line(value: object) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _excerpt(body: bytes) -> str:
    return repr(body[:200].decode("utf-8", "replace"))

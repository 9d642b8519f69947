"""A loopback stand-in of SearXNG's search API (``GET``/``POST /search``).

It answers the way SearXNG's ``searx/webapp.py`` does, so that Herald's client is
tested against real HTTP and SearXNG's real failure shapes instead of mocks:

* ``format=json``: ``200 application/json`` with ``query``, ``number_of_results``
  (older releases; SearXNG dropped it in 2026, so clients must not need it),
  ``results`` (each with ``url``, ``title``, ``content``, ``engine``, ``engines``,
  ``score``, ``category``, ``template``, ``parsed_url``, ``positions``,
  ``publishedDate``, ``thumbnail``, ``img_src``, ``priority``), ``answers``,
  ``corrections``, ``infoboxes``, ``suggestions`` and ``unresponsive_engines``
  (pairs of engine and error).
* A format the instance does not enable (``search.formats`` in settings.yml; only
  ``html`` by default) answers Flask's plain ``403 Forbidden`` page, before the
  query is even looked at. No ``format`` at all means ``html``.
* An empty ``q`` in JSON answers ``400 {"error": "No query"}``.
* The limiter (bot detection) answers ``429`` with the text ``Too Many Requests``.

Knobs for tests: `results` (a query's results; other queries get `default_count`
generated ones), `formats`, `rate_limited`, `delay` (seconds before answering),
`outage` (every request answers that status with a proxy's HTML error page),
`login_page` (``200`` with an HTML page, as a captive portal or an auth proxy would),
`unresponsive`, and `requests`, a log of every request's parameters and headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

__all__ = ["EmulatedResult", "RecordedSearch", "SearxngEmulator"]

# Flask's (werkzeug's) body for abort(403), as SearXNG sends it.
_FORBIDDEN = (
    "<!doctype html>\n<html lang=en>\n<title>403 Forbidden</title>\n<h1>Forbidden</h1>\n"
    "<p>You don&#39;t have the permission to access the requested resource. It is either "
    "read-protected or not readable by the server.</p>\n"
)
_BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"

_LOGIN_PAGE = "<!doctype html><html><body><form method=post><input name=password></form></body></html>"


@dataclass(frozen=True)
class EmulatedResult:
    """One result as a test describes it; `as_json` adds SearXNG's other fields."""

    url: str | None
    title: str = ""
    content: str = ""
    engines: Sequence[str] = ("duckduckgo",)
    category: str = "general"

    def as_json(self, position: int) -> dict[str, Any]:
        parts = urlsplit(self.url or "")
        return {
            "url": self.url,
            "title": self.title,
            "content": self.content,
            "engine": self.engines[0] if self.engines else "",
            "template": "default.html",
            "parsed_url": [parts.scheme, parts.netloc, parts.path, "", parts.query, parts.fragment],
            "img_src": "",
            "thumbnail": "",
            "priority": "",
            "engines": list(self.engines),
            "positions": [position],
            "score": round(len(self.engines) / position, 3),
            "category": self.category,
            "publishedDate": None,
        }


@dataclass(frozen=True)
class RecordedSearch:
    method: str
    params: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass
class SearxngEmulator:
    """SearXNG on a free loopback port; `url` is the instance's base URL."""

    #: query -> its results, in rank order
    results: dict[str, list[EmulatedResult]] = field(default_factory=dict)
    #: results generated for any other query
    default_count: int = 5
    #: the formats settings.yml enables (`search.formats`)
    formats: set[str] = field(default_factory=lambda: {"html", "json"})
    #: the limiter refuses every request
    rate_limited: bool = False
    #: seconds before answering, as a slow instance (or slow engines) would
    delay: float = 0.0
    #: every request answers this status with a reverse proxy's HTML page
    outage: int | None = None
    #: every request answers 200 with an HTML login page (an auth proxy in front)
    login_page: bool = False
    #: (engine, error) pairs reported as unresponsive
    unresponsive: list[tuple[str, str]] = field(default_factory=list)
    requests: list[RecordedSearch] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("GET", "/search", self._search)
        app.router.add_route("POST", "/search", self._search)
        # handler_cancellation: a client that gives up ends its delayed request
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SearxngEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def results_for(self, query: str) -> list[EmulatedResult]:
        if query in self.results:
            return self.results[query]
        slug = "-".join(query.lower().split()) or "empty"
        return [
            EmulatedResult(
                url=f"https://example.org/{slug}/{n}",
                title=f"{query} — result {n}",
                content=f"Snippet {n} about {query}.",
            )
            for n in range(1, self.default_count + 1)
        ]

    async def _search(self, request: web.Request) -> web.StreamResponse:
        # SearXNG reads GET parameters and POST form fields alike
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        self.requests.append(RecordedSearch(request.method, params, dict(request.headers)))
        if self.outage is not None:
            return web.Response(status=self.outage, text=_BAD_GATEWAY, content_type="text/html")
        if self.login_page:
            return web.Response(text=_LOGIN_PAGE, content_type="text/html")
        if self.rate_limited:
            return web.Response(status=429, text="Too Many Requests", content_type="text/html")
        output_format = params.get("format", "html")
        if output_format not in {"html", "json", "csv", "rss"}:
            output_format = "html"
        if output_format not in self.formats:
            return web.Response(status=403, text=_FORBIDDEN, content_type="text/html")
        if self.delay:
            await asyncio.sleep(self.delay)
        query = params.get("q", "")
        if output_format != "json":
            return web.Response(text=f"<html><body>{len(query)}</body></html>", content_type="text/html")
        if not query:
            return web.json_response({"error": "No query"}, status=400)
        found = self.results_for(query)
        body = {
            "query": query,
            "number_of_results": 0,
            "results": [result.as_json(n) for n, result in enumerate(found, start=1)],
            "answers": [],
            "corrections": [],
            "infoboxes": [],
            "suggestions": [f"{query} explained"],
            "unresponsive_engines": [list(pair) for pair in self.unresponsive],
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

"""`/web` through the engine (issue 13): the answer comes from pages read through the
SearXNG stand-in, with numbered links; a page's text stays data; without a
SearXNG instance the command says how to set one up."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bots.runtime import build_engine, build_llm
from core.chat.engine import Engine, Outcome
from core.commands.web import NOT_SET_UP, WebTools
from core.search.pages import PageFetcher
from core.search.searxng import SearxngClient
from tests.conftest import SettingsFactory
from tests.emulators.searxng import SearxngEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event
from tests.test_web_search import Site, dns, fetcher, private, results_for, searx, site

__all__ = ["dns", "fetcher", "private", "searx", "site"]  # fixtures borrowed from test_web_search


@pytest.fixture
async def engine_with_web(
    make_settings: SettingsFactory, redis: Redis, searx: SearxngEmulator, fetcher: PageFetcher
) -> AsyncIterator[Engine]:
    settings = make_settings()
    llm = build_llm(settings)
    await llm.start()
    async with SearxngClient(searx.url) as client:
        engine = build_engine(settings, redis, llm, web=WebTools(client, fetcher))
        await engine.cancels.start()
        yield engine
        await engine.cancels.stop()
    await llm.close()


async def test_answers_from_the_pages_with_links(
    engine_with_web: Engine, searx: SearxngEmulator, site: Site, private: Site, tgi: TGIEmulator
) -> None:
    searx.results["will it rain"] = results_for(
        site,
        ("/article", "news.example"),
        (f"/redirect?to=http://127.0.0.1:{private.port}/", "news.example"),
        ("/injection", "news.example"),
    )
    tgi.responder = lambda messages: "Heavy rain is expected [1]."
    surface = RecordingSurface()
    assert await engine_with_web.handle(event("/web will it rain"), surface) is Outcome.COMMAND
    assert surface.texts[0] == "Heavy rain is expected [1]."
    assert surface.last.startswith(
        "Sources:\n[1] Rain expected tomorrow: " + site.url("/article", "news.example")
    )
    assert private.seen == []  # the redirect to a private address was never followed
    asked = tgi.prompts[-1]
    assert '<source number="1">' in asked and "Question: will it rain" in asked
    assert asked.count("</source>") == asked.count("<source number=")  # no page ends its own block early


async def test_without_searxng_it_says_how_to_set_it_up(make_engine: object) -> None:
    engine = await make_engine()  # type: ignore[operator]
    surface = RecordingSurface()
    await engine.handle(event("/web anything"), surface)
    assert surface.texts == [NOT_SET_UP]


async def test_a_search_that_fails_says_why(engine_with_web: Engine, searx: SearxngEmulator) -> None:
    searx.formats = {"html"}  # JSON switched off, as on a default instance
    surface = RecordingSurface()
    await engine_with_web.handle(event("/web anything"), surface)
    assert len(surface.texts) == 1 and "search" in surface.last.lower()

"""A model that never stops (issue 11): Herald ends the answer at its own token and time
limits, closes the stream, frees the conversation, and a message that waits for a turn
held elsewhere (perhaps by a dead process) is told that it waits."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable

import aiohttp
import pytest
from redis.asyncio import Redis

from core import messages
from core.chat.engine import Engine, Outcome
from core.chat.locks import ConversationLocks
from core.config import ConfigError, load_settings
from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.conftest import EngineFactory
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event

CONV = ConversationKey("test", "c1", None)
WORDS = " ".join(f"w{i}" for i in range(1, 41)) + "."
FIRST_12 = " ".join(f"w{i}" for i in range(1, 13))


async def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll `check` until it holds; `within` only bounds a broken run, it paces nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {within} s: {what}")
        await asyncio.sleep(0.01)


def limited(engine: Engine, limit: str) -> float | None:
    return engine.metrics.registry.get_sample_value("herald_answers_limited_total", {"limit": limit})


async def test_the_endless_emulator_ignores_max_new_tokens_until_the_client_leaves(tgi: TGIEmulator) -> None:
    tgi.endless = True
    tgi.responder = lambda messages: "one two"
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "details": True}}
    events: list[dict[str, object]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{tgi.url}/generate_stream", json=body) as resp,
    ):
        async for line in resp.content:
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
            if len(events) == 10:
                break
    assert [e["token"]["text"] for e in events[:4]] == ["one", " two", "one", " two"]  # type: ignore[index]
    assert all(e["details"] is None and e["generated_text"] is None for e in events)
    await until(lambda: tgi.in_flight == 0, "the emulator stops once the client has gone")


@pytest.mark.parametrize("api", ["tgi", "openai"])
async def test_a_server_that_never_stops_is_cut_at_max_new_tokens(
    make_engine: EngineFactory, tgi: TGIEmulator, api: str
) -> None:
    """Counted on Herald's side; cut like the server's own `length`: note, Continue, saved."""
    engine = await make_engine(llm_api=api, max_new_tokens=12)
    tgi.endless = True
    tgi.responder = lambda messages: WORDS
    surface = RecordingSurface()
    async with asyncio.timeout(60):  # before the fix this never ended
        outcome = await engine.handle(event("count to forty"), surface)
    assert outcome is Outcome.ANSWERED
    assert surface.texts == [FIRST_12, f"{messages.CUT_SHORT}\n\n/continue"]
    history = await engine.memory.history(CONV)
    assert [(t.role, t.content, t.tokens, t.cut, t.partial) for t in history[1:]] == [
        ("assistant", FIRST_12, 12, True, False)
    ]
    assert limited(engine, "tokens") == 1
    await until(lambda: tgi.in_flight == 0, "the stream was closed: the server stopped generating")
    assert not await engine.locks.is_held(CONV)

    tgi.endless = False  # the server mended: /continue writes the rest, as after a server-side cut
    tgi.responder = lambda messages: "and that is the end."
    rest = RecordingSurface()
    outcome = await engine.handle(event("/continue"), rest)
    assert outcome is Outcome.COMMAND and rest.texts == ["and that is the end."]
    assert FIRST_12 in tgi.prompts[-1]


async def test_a_draft_from_a_server_that_never_stops_ends_at_max_new_tokens(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    """Drafts, campaigns and scheduled posts read the model through the same client:
    the cap is the client's, so none of them waits for ever either."""
    engine = await make_engine(max_new_tokens=12)
    tgi.endless = True
    tgi.responder = lambda messages: WORDS
    surface = RecordingSurface()
    async with asyncio.timeout(60):  # before the fix this never ended
        assert await engine.handle(event("/draft x count to forty"), surface) is Outcome.COMMAND
    assert f"— 38/280\n\n{FIRST_12}\n\n/copy" in surface.last
    assert limited(engine, "tokens") == 1
    await until(lambda: tgi.in_flight == 0, "the stream was closed: the server stopped generating")


async def test_an_answer_past_its_time_limit_stops_where_it_is(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    """The time limit runs out when the test says (it paces the engine's sleep), once
    text is showing: what was written is kept, under a note, and the turn is free."""
    engine = await make_engine(max_new_tokens=4000, answer_timeout=300)
    expired = asyncio.Event()
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        await expired.wait()

    engine.sleep = sleep
    tgi.endless = True
    tgi.token_delay = 0.01  # 4000 tokens take 40 s at least: the token limit is far away
    surface = RecordingSurface()
    answering = asyncio.create_task(engine.handle(event("talk for ever"), surface))
    await until(lambda: len(surface.last.split()) >= 3, "the answer is streaming")
    shown = surface.last
    expired.set()
    async with asyncio.timeout(60):  # before the fix this never ended
        assert await answering is Outcome.FAILED
    note = messages.interrupted(messages.TIME_LIMIT)
    [saved] = (await engine.memory.history(CONV))[1:]
    assert saved.partial and saved.content.startswith(shown)
    assert surface.texts == [f"{saved.content}\n\n{note}"]
    assert max(naps) <= 300 < max(naps) + 60  # what is left of it, from the turn's start
    assert limited(engine, "time") == 1
    await until(lambda: tgi.in_flight == 0, "the stream was closed: the server stopped generating")

    tgi.endless, engine.sleep = False, asyncio.sleep  # the turn is free for the next message
    after = RecordingSurface()
    outcome = await engine.handle(event("hello"), after)
    assert outcome is Outcome.ANSWERED and after.texts == ["You said: hello"]


async def test_the_time_limit_is_a_setting(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine(answer_timeout=0.2)
    tgi.endless = True
    tgi.token_delay = 0.05
    surface = RecordingSurface()
    async with asyncio.timeout(60):
        assert await engine.handle(event("talk"), surface) is Outcome.FAILED
    assert surface.last.endswith(messages.interrupted(messages.TIME_LIMIT))
    with pytest.raises(ConfigError) as bad:
        load_settings(env_file=None, answer_timeout=0)
    assert bad.value.problems == ["HERALD_ANSWER_TIMEOUT: Input should be greater than 0 (got 0)"]


def noticing(engine: Engine) -> Engine:
    engine.policy = dataclasses.replace(engine.policy, wait_notice_after=0.01)
    return engine


async def test_a_message_waiting_on_a_dead_process_is_told_then_answered(
    make_engine: EngineFactory, redis: Redis, prefix: str
) -> None:
    engine = noticing(await make_engine())
    key = Keys(prefix).lock(CONV)
    await redis.set(key, "a process that died answering")  # its lease runs out when the test says
    surface = RecordingSurface()
    answering = asyncio.create_task(engine.handle(event("hello"), surface))
    await until(lambda: surface.texts == [messages.WAITING_FOR_TURN], "the waiting message is told")
    await redis.pexpire(key, 1)
    assert await answering is Outcome.ANSWERED
    assert surface.texts == [messages.WAITING_FOR_TURN, "You said: hello"]


async def test_the_notice_is_said_once_and_a_timeout_still_answers_busy(
    make_engine: EngineFactory, redis_url: str, prefix: str
) -> None:
    engine = noticing(await make_engine(conversation_wait_timeout=60))
    other = connect_redis(redis_url)
    try:
        rival = ConversationLocks(other, Keys(prefix))  # another replica, answering here
        async with rival.hold(CONV, wait=1):
            surface = RecordingSurface()
            answering = asyncio.create_task(engine.handle(event("hello"), surface))
            await until(lambda: bool(surface.texts), "the waiting message is told")
            await asyncio.sleep(0.2)  # twenty notice delays: proves only that none follows
            assert surface.texts == [messages.WAITING_FOR_TURN]
        assert await answering is Outcome.ANSWERED
        assert surface.texts == [messages.WAITING_FOR_TURN, "You said: hello"]

        short = noticing(await make_engine(conversation_wait_timeout=0.5))
        async with rival.hold(CONV, wait=1):
            busy = RecordingSurface()
            assert await short.handle(event("hello"), busy) is Outcome.BUSY
        assert busy.texts == [messages.WAITING_FOR_TURN, messages.BUSY_CONVERSATION]
    finally:
        await other.aclose()


async def test_a_turn_that_comes_at_once_says_nothing_about_waiting(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    late = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await late.wait()

    engine.sleep = sleep  # the notice delay ends only after the answer
    surface = RecordingSurface()
    assert await engine.handle(event("hello"), surface) is Outcome.ANSWERED
    late.set()
    await asyncio.sleep(0.05)  # a notice left behind would now be said; proves only its absence
    assert surface.texts == ["You said: hello"]

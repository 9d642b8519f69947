"""Ranked retrieval over a chat's log (issue 13): a fact planted among hundreds of
messages is found through other word forms; deleted messages, other chats and
filtered-out spans or authors never come back."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from core.chatlog.search import SearchFilter, search
from core.chatlog.store import ChatLog, LoggedMessage
from core.chatlog.terms import Terms
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis

NOW = time.time()
CHATTER = [
    "good morning everyone",
    "did anyone see the game last night",
    "lunch at noon?",
    "I pushed a fix for the flaky test",
    "the coffee machine is broken again",
    "who is on call this week",
    "please review my pull request",
    "the weather looks nice today",
    "thanks for the help yesterday",
    "let's sync after standup",
]
FACT = "Decision: we will launch version 2.0 on Friday the 14th, after the security review."


@pytest.fixture
async def log(redis_url: str, prefix: str) -> AsyncIterator[ChatLog]:
    client: Redis = connect_redis(redis_url)
    chat_log = ChatLog(client, Keys(prefix), Terms())
    yield chat_log
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()


async def fill(log: ChatLog, chat: str, count: int, *, fact_at: int | None = None) -> None:
    await log.turn_on("discord", chat, 30 * 86400)
    rng = random.Random(7)
    for n in range(count):
        text = FACT if n == fact_at else rng.choice(CHATTER)
        author = "ada" if n == fact_at else f"user{n % 5}"
        at = NOW - (count - n) * 60
        await log.record("discord", chat, LoggedMessage(str(1000 + n), author, author, text, at))


async def test_a_planted_fact_is_found_through_other_word_forms(log: ChatLog) -> None:
    await fill(log, "c1", 400, fact_at=217)
    question = log.terms.query("When are we launching the new version?")
    hits = await search(log, "discord", "c1", question, now=NOW)
    assert hits and hits[0].message.text == FACT and hits[0].message.message_id == "1217"
    assert all(hit.score <= hits[0].score for hit in hits)


async def test_nothing_relevant_finds_nothing(log: ChatLog) -> None:
    await fill(log, "c1", 50)
    assert await search(log, "discord", "c1", log.terms.query("quarterly budget spreadsheet"), now=NOW) == []


async def test_another_chat_never_answers(log: ChatLog) -> None:
    await fill(log, "c1", 100, fact_at=50)
    await fill(log, "c2", 100)
    assert await search(log, "discord", "c2", log.terms.query("launch version"), now=NOW) == []


async def test_a_deleted_message_never_comes_back(log: ChatLog) -> None:
    await fill(log, "c1", 100, fact_at=50)
    fact_time = NOW - 50 * 60
    assert await log.delete("discord", "c1", "1050", fact_time)
    assert await search(log, "discord", "c1", log.terms.query("launch version"), now=NOW) == []


async def test_filters_by_author_and_time(log: ChatLog) -> None:
    await fill(log, "c1", 100, fact_at=50)
    terms = log.terms.query("launch version")
    fact_time = NOW - 50 * 60
    assert await search(log, "discord", "c1", terms, where=SearchFilter(author_id="user1"), now=NOW) == []
    assert await search(log, "discord", "c1", terms, where=SearchFilter(since=fact_time + 1), now=NOW) == []
    [hit] = await search(log, "discord", "c1", terms, where=SearchFilter(author_id="ada"), now=NOW)
    assert hit.message.text == FACT


async def test_a_chat_that_records_nothing_finds_nothing(log: ChatLog) -> None:
    assert await search(log, "discord", "never", log.terms.query("anything"), now=NOW) == []


async def test_filters_find_what_ranks_below_the_first_candidates(log: ChatLog) -> None:
    """A person's or a span's match is found even when hundreds of better matches by
    others, or from other days, come first."""
    await log.turn_on("discord", "c1", 30 * 86400)
    for n in range(300):
        at = NOW - 3 * 86400 - n  # three days ago
        said = LoggedMessage(str(n), f"user{n % 7}", "someone", "launch launch", at)
        await log.record("discord", "c1", said)
    long_one = "launch " + " ".join(f"filler{i}" for i in range(60))  # ranks low: long, one mention
    await log.record("discord", "c1", LoggedMessage("ada-1", "ada", "Ada", long_one, NOW - 3 * 86400 - 500))
    await log.record("discord", "c1", LoggedMessage("new-1", "bob", "Bob", long_one, NOW - 60))
    terms = log.terms.query("launch")
    [by_ada] = await search(log, "discord", "c1", terms, where=SearchFilter(author_id="ada"), now=NOW)
    assert by_ada.message.message_id == "ada-1"
    [recent] = await search(log, "discord", "c1", terms, where=SearchFilter(since=NOW - 3600), now=NOW)
    assert recent.message.message_id == "new-1"


async def test_a_thread_is_searched_as_a_chat_of_its_own(log: ChatLog) -> None:
    await fill(log, "c", 300)
    threads = {"t1": "the thread settled on a purple logo", "t2": "the other thread wants a purple banner"}
    for n, (thread, text) in enumerate(threads.items()):
        message = LoggedMessage(str(5000 + n), "bob", "bob", text, NOW - 10, thread_id=thread)
        await log.record("discord", "c", message)
    await log.record("discord", "c", LoggedMessage("6000", "ada", "ada", "purple is my colour", NOW - 5))
    query = log.terms.query("purple")

    async def found(thread: str | None, **options: str) -> set[str]:
        where = SearchFilter(thread=thread, author_id=options.get("author"))
        return {hit.message.message_id for hit in await search(log, "discord", "c", query, where=where)}

    assert await found("t1") == {"5000"}
    assert await found("t2") == {"5001"}
    assert await found("") == {"6000"}  # the channel itself, outside its threads
    assert await found(None) == {"5000", "5001", "6000"}
    assert await found("t1", author="ada") == set()
    assert await found("t1", author="bob") == {"5000"}
    # a deleted thread message leaves its thread's postings too
    await log.delete("discord", "c", "5000", NOW - 10)
    assert await found("t1") == set()

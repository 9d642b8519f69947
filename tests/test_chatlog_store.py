"""The chat log's store (issue 13): recording, edits, deletes, forgetting a person,
turning it off, retention by expiry; on the Valkey that Herald embeds and on a
Redis 7 server, both real."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from bots.redis_server import RedisServerProcess, find_server_binary
from core.chatlog.store import POSTING, STATE_SECONDS, ChatLog, LoggedMessage
from core.chatlog.terms import Terms
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis

SERVERS = {"valkey": find_server_binary(), "redis": shutil.which("redis-server")}
DAY = 30 * 86400.0


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    binary = SERVERS[request.param]
    if binary is None:
        pytest.skip(f"no {request.param} server binary on this machine")
    with RedisServerProcess(binary=binary) as server:
        yield server.url


class Counting(Redis):
    """A client that counts the commands it sends (each is one round trip here)."""

    sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        Counting.sent += 1
        return await super().execute_command(*args, **options)


@pytest.fixture
async def redis(server_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(server_url)
    yield client
    await client.flushall()
    await client.aclose()


@pytest.fixture
def log(redis: Redis) -> ChatLog:
    return ChatLog(redis, Keys("t"), Terms())


def said(message_id: str, text: str, *, author: str = "u1", at: float | None = None) -> LoggedMessage:
    return LoggedMessage(message_id, author, f"User {author}", text, at if at is not None else time.time())


async def every_value(url: str) -> str:
    """Every key name and every value in the server, as one text (binary as latin-1)."""
    raw = Redis.from_url(url, decode_responses=False)
    parts: list[str] = []
    try:
        async for key in raw.scan_iter(count=1000):
            parts.append(key.decode("latin-1"))
            kind = (await raw.type(key)).decode()
            if kind == "string":
                parts.append((await raw.get(key) or b"").decode("latin-1"))
            elif kind == "hash":
                for field, value in (await raw.hgetall(key)).items():
                    parts += [field.decode("latin-1"), value.decode("latin-1")]
            elif kind == "zset":
                parts += [m.decode("latin-1") for m in await raw.zrange(key, 0, -1)]
    finally:
        await raw.aclose()
    return "\n".join(parts)


async def test_nothing_is_recorded_until_the_chat_turns_it_on(log: ChatLog, redis: Redis) -> None:
    assert await log.record("telegram", "-100", said("1", "hello there")) == 0
    assert await redis.dbsize() == 0
    settings = await log.turn_on("telegram", "-100", DAY)
    assert settings.on and settings.retention == DAY and settings.since is not None
    assert await log.record("telegram", "-100", said("2", "hello there")) == 1
    [message] = await log.messages("telegram", "-100", [1])
    assert (message.message_id, message.text, message.author_name, message.seq) == (
        "2",
        "hello there",
        "User u1",
        1,
    )


async def test_recording_is_one_round_trip(server_url: str) -> None:
    client = Counting.from_url(server_url, decode_responses=True)
    try:
        log = ChatLog(client, Keys("t"), Terms())
        await log.turn_on("discord", "c1", DAY)
        await log.record("discord", "c1", said("1", "the script is loaded once"))
        Counting.sent = 0
        await log.record("discord", "c1", said("2", "then every message is a single call"))
        assert Counting.sent == 1
    finally:
        await client.flushall()
        await client.aclose()


async def test_the_index_holds_stemmed_words_a_few_bytes_each(log: ChatLog, redis: Redis) -> None:
    await log.turn_on("discord", "c1", DAY)
    at = time.time()
    await log.record("discord", "c1", said("1", "Launching launches: the launch!", at=at))
    day = int(at // 86400)
    keys = Keys("t")
    day_postings = keys.chat_log("discord", "c1", "p", day)
    raw = await redis.execute_command("HGET", day_postings, "launch", NEVER_DECODE=True)
    assert raw == b"\x00\x00\x00\x01\x03" and len(raw) == POSTING  # seq 1, three times
    assert not await redis.hexists(day_postings, "the")  # a function word
    assert (
        await redis.execute_command("HGET", day_postings, "@u1", NEVER_DECODE=True) == b"\x00\x00\x00\x01\x01"
    )


async def test_an_edit_replaces_the_text_and_its_index(log: ChatLog, server_url: str) -> None:
    await log.turn_on("telegram", "-100", DAY)
    at = time.time()
    await log.record("telegram", "-100", said("7", "meeting on tuesday", at=at))
    assert await log.edit("telegram", "-100", "7", at, "meeting on thursday")
    [message] = await log.messages("telegram", "-100", await log.span("telegram", "-100", 0))
    assert (message.message_id, message.text) == ("7", "meeting on thursday")
    assert "tuesday" not in await every_value(server_url)
    assert not await log.edit("telegram", "-100", "8", at, "never recorded")


async def test_a_deleted_message_is_gone_everywhere(log: ChatLog, server_url: str) -> None:
    await log.turn_on("discord", "c1", DAY)
    at = time.time()
    await log.record("discord", "c1", said("1", "the password is swordfish", at=at))
    await log.record("discord", "c1", said("2", "the weather is fine", at=at))
    assert await log.delete("discord", "c1", "1", at)
    everything = await every_value(server_url)
    assert "swordfish" not in everything and "password" not in everything
    assert [m.text for m in await log.messages("discord", "c1", await log.span("discord", "c1", 0))] == [
        "the weather is fine"
    ]
    assert not await log.delete("discord", "c1", "1", at)  # twice: nothing left to delete


async def test_forgetting_one_person_keeps_everyone_else(log: ChatLog) -> None:
    await log.turn_on("telegram", "-100", DAY)
    for n in range(6):
        await log.record("telegram", "-100", said(str(n), f"message {n}", author="ada" if n % 2 else "bob"))
    assert await log.forget_user("telegram", "-100", "ada") == 3
    left = await log.messages("telegram", "-100", await log.span("telegram", "-100", 0))
    assert [m.author_id for m in left] == ["bob"] * 3


async def test_turning_off_deletes_the_chat_and_only_that_chat(log: ChatLog, server_url: str) -> None:
    for chat in ("c1", "c2"):
        await log.turn_on("discord", chat, DAY)
        await log.record("discord", chat, said("1", f"a fact of {chat}"))
    assert await log.turn_off("discord", "c1") > 0
    assert await log.settings("discord", "c1") is None
    assert await log.record("discord", "c1", said("2", "after off")) == 0
    everything = await every_value(server_url)
    assert "fact of c1" not in everything and "fact of c2" in everything


async def test_retention_is_kept_by_expiry(log: ChatLog, redis: Redis) -> None:
    await log.turn_on("discord", "c1", 3600)
    now = time.time()
    await log.record("discord", "c1", said("1", "recent news", at=now))
    await log.record("discord", "c1", said("2", "ancient history", at=now - 7200))
    keys = Keys("t")
    assert 3500 < await redis.ttl(keys.chat_log("discord", "c1", "m", 1)) <= 3601  # whole seconds, rounded up
    assert await redis.exists(keys.chat_log("discord", "c1", "m", 2)) == 0  # already past retention
    assert [m.text for m in await log.messages("discord", "c1", [1, 2])] == ["recent news"]
    assert await log.span("discord", "c1", 0) == [1]
    postings = [k async for k in redis.scan_iter(match="t:log:*:p:*")]  # one hash per day
    ttls = [await redis.ttl(key) for key in postings]
    assert ttls and all(0 < ttl <= 86400 + 3600 for ttl in ttls)  # the day's end + retention


async def test_an_unreadable_record_is_skipped(log: ChatLog, redis: Redis) -> None:
    await log.turn_on("discord", "c1", DAY)
    await log.record("discord", "c1", said("1", "good one"))
    await log.record("discord", "c1", said("2", "will break"))
    await redis.set(
        Keys("t").chat_log("discord", "c1", "m", 2), '{"id": "2", "t": "no author, no time"}', keepttl=True
    )
    assert [m.text for m in await log.messages("discord", "c1", [1, 2])] == ["good one"]


async def test_a_chat_that_does_not_record_costs_nothing_per_message(server_url: str) -> None:
    """Most chats never record: after one read a replica skips their messages without
    stemming or a round trip, and follows another replica's /history on within
    STATE_SECONDS. A chat turned off elsewhere never records (the script checks)."""
    now = [0.0]
    client = Counting.from_url(server_url, decode_responses=True)
    other = connect_redis(server_url)
    try:
        log = ChatLog(client, Keys("t"), Terms(), monotonic=lambda: now[0])
        elsewhere = ChatLog(other, Keys("t"), Terms())
        assert await log.record("discord", "c1", said("1", "first look")) == 0
        Counting.sent = 0
        assert await log.record("discord", "c1", said("2", "skipped")) == 0
        assert Counting.sent == 0
        await elsewhere.turn_on("discord", "c1", DAY)
        now[0] += STATE_SECONDS + 1
        assert await log.record("discord", "c1", said("3", "recorded now")) > 0
        await elsewhere.turn_off("discord", "c1")
        assert await log.record("discord", "c1", said("4", "refused by the script")) == 0
        assert await elsewhere.settings("discord", "c1") is None
    finally:
        await client.flushall()
        await client.aclose()
        await other.aclose()


async def test_the_collection_size_counts_only_messages_within_the_retention(log: ChatLog) -> None:
    await log.turn_on("tg", "c", retention=3600)
    now = time.time()
    await log.record("tg", "c", said("1", "an old word", at=now - 7200))  # already past the retention
    await log.record("tg", "c", said("2", "a recent word", at=now - 60))
    await log.record("tg", "c", said("3", "another recent word", at=now - 30))
    settings = await log.settings("tg", "c")
    assert settings is not None
    assert settings.live == 2  # BM25's N: what can still be found
    assert settings.docs == 3  # ever recorded: with `words`, the average length only
    await log.delete("tg", "c", "3", now - 30)
    after = await log.settings("tg", "c")
    assert after is not None and after.live == 1

"""Conversation memory against a real Redis: atomic append, trim, expiry, reset."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from core.chat.memory import ConversationStore, Turn
from core.platform import ConversationKey
from core.storage.keys import Keys

CONV = ConversationKey("test", "chat", None)


def store(redis: Redis, prefix: str, **kw: int) -> ConversationStore:
    max_messages, ttl = kw.get("max_messages", 1000), kw.get("ttl", 3600)
    return ConversationStore(redis, Keys(prefix), max_messages=max_messages, ttl_seconds=ttl)


async def test_concurrent_appends_stay_whole_and_ordered(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix)

    async def append_pair(i: int) -> None:
        await memory.append(CONV, [Turn("user", f"q{i}", 2), Turn("assistant", f"a{i}", 3)])

    await asyncio.gather(*(append_pair(i) for i in range(60)))
    turns = await memory.history(CONV)
    assert len(turns) == 120
    assert [t.seq for t in turns] == list(range(1, 121))
    for user, assistant in zip(turns[::2], turns[1::2], strict=True):
        assert user.role == "user" and assistant.role == "assistant"
        assert user.content[1:] == assistant.content[1:]  # each pair stayed together


async def test_trim_keeps_newest_and_sequence_keeps_growing(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix, max_messages=10)
    for i in range(15):
        await memory.append(CONV, [Turn("user", f"q{i}", 1), Turn("assistant", f"a{i}", 1)])
    turns = await memory.history(CONV)
    assert [t.content for t in turns][-2:] == ["q14", "a14"]
    assert len(turns) == 10
    assert turns[0].seq == 21 and turns[-1].seq == 30


async def test_expiry_is_set_on_every_append(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix, ttl=120)
    await memory.append(CONV, [Turn("user", "hi", 1)])
    ttl = await redis.pttl(Keys(prefix).history(CONV))
    assert 0 < ttl <= 120_000


async def test_reset_forgets_only_that_conversation(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix)
    other = ConversationKey("test", "chat", "thread-7")
    await memory.append(CONV, [Turn("user", "a", 1)])
    await memory.append(other, [Turn("user", "b", 1)])
    assert await memory.reset(CONV) is True
    assert await memory.reset(CONV) is False
    assert await memory.history(CONV) == []
    assert [t.content for t in await memory.history(other)] == ["b"]


async def test_unreadable_entries_are_skipped_not_fatal(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix)
    await memory.append(CONV, [Turn("user", "kept", 1)])
    await redis.rpush(Keys(prefix).history(CONV), "not json", '{"r": "tool"}')
    await memory.append(CONV, [Turn("assistant", "also kept", 1, partial=True)])
    turns = await memory.history(CONV)
    assert [(t.content, t.partial) for t in turns] == [("kept", False), ("also kept", True)]
    assert await redis.llen(Keys(prefix).history(CONV)) == 4  # nothing was deleted


async def test_persona_is_per_chat(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix)
    await memory.set_persona("test", "chat", "Talk like a pirate.")
    assert await memory.persona("test", "chat") == "Talk like a pirate."
    assert await memory.persona("test", "other") is None
    persona, _ = await memory.load(ConversationKey("test", "chat", "any-thread"))
    assert persona == "Talk like a pirate."
    await memory.set_persona("test", "chat", None)
    assert await memory.persona("test", "chat") is None


async def test_moving_a_chat_keeps_its_conversations_and_persona(redis: Redis, prefix: str) -> None:
    memory = store(redis, prefix)
    old_main, old_topic = ConversationKey("tg", "-100", None), ConversationKey("tg", "-100", "7")
    other = ConversationKey("tg", "-1000", None)  # a chat whose id starts like the old one
    await memory.append(old_main, [Turn("user", "main", 1)])
    await memory.append(old_topic, [Turn("user", "topic", 1)])
    await memory.append(other, [Turn("user", "other", 1)])
    await memory.set_persona("tg", "-100", "pirate")
    assert await memory.move_chat("tg", "-100", "-100555") == 5  # 2 histories, 2 counters, persona
    assert [t.content for t in await memory.history(ConversationKey("tg", "-100555", None))] == ["main"]
    assert [t.content for t in await memory.history(ConversationKey("tg", "-100555", "7"))] == ["topic"]
    assert await memory.history(old_main) == []
    assert [t.content for t in await memory.history(other)] == ["other"]
    assert await memory.persona("tg", "-100555") == "pirate"
    assert await memory.move_chat("tg", "-100", "-100555") == 0  # a second notice changes nothing

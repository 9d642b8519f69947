"""Keys of the earlier layout (no hash tags) moved once, at start, to today's."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from core.chat.memory import ConversationStore
from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.migrate import migrate


async def test_conversations_and_personas_move_to_the_tagged_layout(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    old_turns = [_stored("user", "hi", 1), _stored("assistant", "hello", 2)]
    await redis.rpush(f"{prefix}:hist:telegram:-100:7", *old_turns)
    await redis.expire(f"{prefix}:hist:telegram:-100:7", 3600)
    await redis.set(f"{prefix}:hist-seq:telegram:-100:7", 2)
    await redis.rpush(f"{prefix}:hist:console:my:chat:-", _stored("user", "colons", 1))
    await redis.set(f"{prefix}:persona:discord:555", "You are a pirate.")

    assert await migrate(redis, keys) == 4
    store = ConversationStore(redis, keys, max_messages=50, ttl_seconds=3600)
    history = await store.history(ConversationKey("telegram", "-100", "7"))
    assert [t.content for t in history] == ["hi", "hello"]
    assert 0 < await redis.ttl(keys.history(ConversationKey("telegram", "-100", "7"))) <= 3600
    assert await redis.get(keys.history_seq(ConversationKey("telegram", "-100", "7"))) == "2"
    assert [t.content for t in await store.history(ConversationKey("console", "my:chat", None))] == ["colons"]
    assert await store.persona("discord", "555") == "You are a pirate."
    assert not await redis.exists(f"{prefix}:persona:discord:555", f"{prefix}:hist:telegram:-100:7")

    # recorded as done: the next start moves nothing (and scans nothing)
    await redis.set(f"{prefix}:persona:discord:556", "late")
    assert await migrate(redis, keys) == 0
    assert await redis.get(f"{prefix}:persona:discord:556") == "late"


async def test_a_key_already_moved_is_left_alone(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await redis.set(keys.persona("discord", "1"), "today's")
    await redis.set(f"{prefix}:persona:discord:1", "yesterday's")
    assert await migrate(redis, keys) == 0
    assert await redis.get(keys.persona("discord", "1")) == "today's"


def _stored(role: str, content: str, number: int) -> str:
    """A turn as the history script stores it (numbered)."""
    return json.dumps({"r": role, "c": content, "t": 1, "n": number})

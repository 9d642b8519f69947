"""Keys written under an earlier layout, moved to today's once, when Herald starts.

Layout 2 put hash tags in the conversation keys for Redis Cluster
(`herald:hist:telegram:42:-` became `herald:hist:{telegram:42}:-`). What people would
miss is moved: conversations (their history and its counter) and chat personas, which
never expire. Locks, admission marks, rate buckets and today's quota counters live
seconds to a day and start over. The version is then recorded, so later starts skip
the scan; moving is safe to repeat (a key already moved is left alone).
"""

from __future__ import annotations

import logging

from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient, move_key

LAYOUT = "2"

log = logging.getLogger("herald")


async def migrate(redis: RedisClient, keys: Keys) -> int:
    """Move the earlier layout's keys; how many were moved."""
    if await redis.get(keys.layout()) == LAYOUT:
        return 0
    moved = 0
    for kind in ("hist", "hist-seq", "persona"):
        found = [key async for key in redis.scan_iter(match=f"{keys.prefix}:{kind}:*", count=1000)]
        for old in found:
            new = _new_name(keys, kind, old.removeprefix(f"{keys.prefix}:{kind}:"))
            if new is not None and new != old:
                moved += await move_key(redis, old, new)
    await redis.set(keys.layout(), LAYOUT)
    if moved:
        log.info("moved %d conversation and persona keys to the key layout %s", moved, LAYOUT)
    return moved


def _new_name(keys: Keys, kind: str, rest: str) -> str | None:
    """Today's name of an earlier key (`rest` follows `prefix:kind:`); None when it is
    already today's, or not one Herald wrote."""
    if rest.startswith("{"):
        return None
    if kind == "persona":
        platform, sep, chat = rest.partition(":")
        return keys.persona(platform, chat) if sep and chat else None
    platform, sep, tail = rest.partition(":")
    chat, sep2, thread = tail.rpartition(":")
    if not (sep and sep2 and chat):
        return None
    conv = ConversationKey(platform, chat, None if thread == "-" else thread)
    return keys.history(conv) if kind == "hist" else keys.history_seq(conv)

"""Conversation memory in Redis: history per conversation and persona per chat.

A history is a list of JSON turns. Appending, trimming to the configured length
and refreshing the expiry happen in one Lua script, so concurrent writers never
see a half-updated history. Every turn carries a sequence number that keeps
growing across trims, which lets the context builder cut old turns in blocks
aligned to those numbers (a stable prompt prefix for TGI's prefix cache).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.llm.base import Role
from core.platform import ConversationKey
from core.storage.keys import Keys, chat_tag
from core.storage.redis_client import RedisClient, move_key

_APPEND = """
local hist, seqkey = KEYS[1], KEYS[2]
local maxlen, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ttl) then return 0 end
local seq = 0
for i = 3, #ARGV do
  local turn = cjson.decode(ARGV[i])
  seq = redis.call('INCR', seqkey)
  turn['n'] = seq
  redis.call('RPUSH', hist, cjson.encode(turn))
end
redis.call('LTRIM', hist, -maxlen, -1)
redis.call('PEXPIRE', hist, ttl)
redis.call('PEXPIRE', seqkey, ttl)
return seq
"""


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation, with its size in model tokens."""

    role: Role
    content: str
    tokens: int
    seq: int = 0
    partial: bool = False  # stopped before the model finished (cancelled, failed, restarted)
    cut: bool = False  # the model stopped at the length limit: `/continue` may write the rest

    def encode(self) -> str:
        data: dict[str, Any] = {"r": self.role, "c": self.content, "t": self.tokens}
        if self.partial:
            data["p"] = 1
        if self.cut:
            data["x"] = 1
        return json.dumps(data, ensure_ascii=False)

    @staticmethod
    def decode(raw: str) -> Turn | None:
        """None for an entry that is not a turn (kept data, never a crash)."""
        try:
            data = json.loads(raw)
            role = data["r"]
            if role not in ("user", "assistant"):
                return None
            return Turn(
                role, str(data["c"]), int(data["t"]), int(data["n"]), bool(data.get("p")), bool(data.get("x"))
            )
        except (ValueError, KeyError, TypeError):
            return None


class ConversationStore:
    """History and personas, namespaced by `Keys`."""

    def __init__(
        self, redis: RedisClient, keys: Keys, *, max_messages: int, ttl_seconds: int, block_messages: int = 0
    ) -> None:
        self._redis = redis
        self._keys = keys
        # one block beyond the length: a prompt begins at a block's start, so the oldest
        # block may be cut into and the prompt still holds `max_messages` (`context.py`)
        self._max = max_messages + block_messages
        self._ttl_ms = ttl_seconds * 1000
        self._append = redis.register_script(_APPEND)

    async def load(self, conv: ConversationKey) -> tuple[str | None, list[Turn]]:
        """The chat's persona and the conversation's turns, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._keys.persona(conv.platform, conv.chat_id))
        pipe.lrange(self._keys.history(conv), 0, -1)
        persona, raw = await pipe.execute()
        turns = [t for t in (Turn.decode(r) for r in raw) if t is not None]
        return persona, turns

    async def history(self, conv: ConversationKey) -> list[Turn]:
        return (await self.load(conv))[1]

    async def append(self, conv: ConversationKey, turns: Sequence[Turn], *, once: str | None = None) -> int:
        """Append turns atomically; returns the last sequence number. `once`: the event
        the turns answer; they are saved only the first time (0 is returned after), so a
        replica that finishes a dead one's answer never saves its turn twice."""
        if not turns:
            return 0
        keys = [self._keys.history(conv), self._keys.history_seq(conv)]
        if once is not None:
            keys.append(self._keys.turn_saved(conv, once))
        args: list[str | int] = [self._max, self._ttl_ms, *(t.encode() for t in turns)]
        return int(await self._append(keys=keys, args=args))

    async def saved(self, conv: ConversationKey, event_id: str) -> bool:
        """Whether the turn answering `event_id` was saved (`append(…, once=event_id)`)."""
        return bool(await self._redis.exists(self._keys.turn_saved(conv, event_id)))

    async def reset(self, conv: ConversationKey) -> bool:
        """Forget the conversation; True when there was something to forget.

        The sequence counter is kept so block alignment stays monotonic.
        """
        return bool(await self._redis.delete(self._keys.history(conv)))

    async def move_chat(self, platform: str, old_chat: str, new_chat: str) -> int:
        """Carry a chat's conversations and persona to its new id (Telegram group → supergroup).

        Idempotent: keys already at the new id are kept; returns how many keys moved. The
        new id's keys carry another hash tag: on a cluster they may live in another slot,
        so each key is moved by `move_key`, and found by a SCAN of every primary.
        """
        old_tag, new_tag = chat_tag(platform, old_chat), chat_tag(platform, new_chat)
        found: list[str] = []
        for pattern in self._keys.chat_conversations(platform, old_chat):
            found += [str(key) async for key in self._redis.scan_iter(match=pattern, count=200)]
        moved = 0
        for key in found:  # scanned first: a key moved during a SCAN may be seen again
            head, _, tail = key.partition(old_tag)
            moved += await move_key(self._redis, key, head + new_tag + tail)
        persona = self._keys.persona(platform, old_chat)
        if await self._redis.exists(persona):
            moved += await move_key(self._redis, persona, self._keys.persona(platform, new_chat))
        return moved

    async def persona(self, platform: str, chat_id: str) -> str | None:
        value = await self._redis.get(self._keys.persona(platform, chat_id))
        return None if value is None else str(value)

    async def set_persona(self, platform: str, chat_id: str, prompt: str | None) -> None:
        key = self._keys.persona(platform, chat_id)
        if prompt is None:
            await self._redis.delete(key)
        else:
            await self._redis.set(key, prompt)

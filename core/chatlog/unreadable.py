"""Messages whose text the platform withholds: never recorded blank, and said once.

Discord sends other people's guild messages with empty content to a bot without
the Message Content intent. A blank in the chat log would be found by nothing and
counted as a message, so such a message is not recorded; instead a chat that
records is told, once a day (remembered in Redis, so every replica agrees), that
Herald can't read its messages and what would change that (the platform's advice,
from `Surface.visibility`). The live path and backfills both come here: the
platform only says which messages came without their text.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from core.chat.say import say
from core.chatlog.store import ChatLog
from core.platform import Surface
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

#: how long a chat that was told is not told again
TELL_EVERY = 86400

log = logging.getLogger("herald.chatlog")


def notice(advice: str) -> str:
    """What a recording chat is told when a message came without its text."""
    said = (
        "I can't read the text of the messages in this chat, so I'm not recording them "
        "(nothing blank is kept)."
    )
    return f"{said} {advice}".strip()


class UnreadableNotice:
    """Tells a recording chat, once per `TELL_EVERY`, that its messages can't be read."""

    def __init__(self, chatlog: ChatLog, redis: RedisClient, keys: Keys, *, every: int = TELL_EVERY) -> None:
        self._log = chatlog
        self._redis = redis
        self._keys = keys
        self._every = every

    async def withheld(self, platform: str, chat_id: str, surface: Surface) -> bool:
        """A message of the chat came without its text: nothing is recorded; the chat is
        told if it records and was not told lately. Whether it was told now; never raises
        for Redis or the platform (it is a side note, on the event path)."""
        try:
            if not await self._log.records(platform, chat_id):
                return False
            # under the chat's log keys: /history off forgets it with the rest
            key = self._keys.chat_log(platform, chat_id, "unreadable")
            if not await self._redis.set(key, "1", nx=True, ex=self._every):
                return False
        except RedisError as exc:
            log.warning("could not tell whether %s:%s was told it can't be read: %s", platform, chat_id, exc)
            return False
        seen = await surface.visibility()
        return await say(surface, notice(seen.advice if seen is not None else "")) is not None

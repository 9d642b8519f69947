"""Scheduled posts on Discord: publish into a channel, ask for approval with the core's buttons.

Every message pings nobody. A send that failed with a status below 500 was not
made; a timeout or a server error may hide a message that was posted, so it
is reported as unknown and never retried automatically.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import discord

from adapters.discord.surface import NO_PINGS, Postable, PostSurface
from core.chat.say import say
from core.platform import Button
from core.posts.schedules.runner import PublishFailed, PublishUnknown


class DiscordPublisher:
    def __init__(self, client: discord.Client) -> None:
        self._client = client

    async def _channel(self, chat_id: str) -> discord.abc.Messageable:
        channel = self._client.get_channel(int(chat_id)) or await self._client.fetch_channel(int(chat_id))
        if not isinstance(channel, discord.abc.Messageable):
            raise PublishFailed(f"Discord channel {chat_id} cannot hold messages")
        return channel

    async def publish(self, chat_id: str, thread_id: str | None, text: str) -> str:
        try:
            channel = await self._channel(thread_id or chat_id)
            message = await channel.send(text, allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            if exc.status >= 500:
                raise PublishUnknown(f"Discord answered {exc.status}") from exc
            raise PublishFailed(f"Discord refused: {exc.status} {exc.text}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PublishUnknown(f"Discord: {exc!r}") from exc
        return str(message.id)

    async def request_approval(self, chat_id: str, text: str, buttons: Sequence[Button]) -> None:
        """In parts where it is long (a thread for the networks), the buttons under the last."""
        await say(await self._surface(chat_id), text, buttons)

    async def notify(self, chat_id: str, text: str) -> None:
        await say(await self._surface(chat_id), text)

    async def _surface(self, chat_id: str) -> PostSurface:
        channel = await self._channel(chat_id)
        if not isinstance(channel, Postable):
            raise PublishFailed(f"Discord channel {chat_id} cannot hold Herald's messages")
        return PostSurface(channel, self._client.intents)

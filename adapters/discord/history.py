"""Discord channel history for backfills (`core.chatlog.backfill`), and which messages
Discord sent without their text.

A page is discord.py's own `channel.history(after=…, oldest_first=True)` of 100
messages, one request: discord.py's HTTP client paces every request from the
X-RateLimit headers (and waits out a 429), so a long backfill keeps within the history
route's tighter bucket. Each message is translated as a live one is
(`translate.from_message`), so backfilled and live messages are recorded alike; the
cursors are snowflakes, which hold their message's time.
"""

from __future__ import annotations

import datetime as dt

import discord

from adapters.discord.surface import Postable, PostSurface
from adapters.discord.translate import from_message
from core.chatlog.backfill import HistoryUnavailable, Page
from core.chatlog.store import LoggedMessage, loggable
from core.platform import PlatformError, Surface

#: messages a page holds (the most Discord gives in one request)
PAGE = 100
#: the kinds of message people write (and that Herald reads and records)
WRITTEN = (discord.MessageType.default, discord.MessageType.reply)

NO_ACCESS = (
    "I can't read this channel's history: I need the View Channel and Read Message History permissions here."
)


def withheld(message: discord.Message, me: discord.abc.User) -> bool:
    """Discord sent someone's guild message without its text (no Message Content intent):
    everything the intent gates is empty, and the message is neither a bot's nor mentions
    Herald (those come with their text). Only a message of attachments or stickers is
    empty with the intent too, and those keep their attachments or stickers."""
    return (
        message.guild is not None
        and not message.author.bot
        and not message.content
        and not message.attachments
        and not message.embeds
        and not message.components
        and not message.stickers
        and message.poll is None
        and me not in message.mentions
    )


def readable(channel: Postable) -> bool:
    """Whether Herald may read a guild channel's history, as discord.py resolves its
    permissions there (roles and overwrites; a thread's are its parent's): without Read
    Message History, Discord answers an empty history rather than an error."""
    if not isinstance(
        channel, discord.TextChannel | discord.Thread | discord.VoiceChannel | discord.StageChannel
    ):
        return True
    me = channel.guild.me
    if me is None:
        return True  # not known yet: Discord will say
    allowed = channel.permissions_for(me)
    return allowed.view_channel and allowed.read_message_history


class DiscordHistory:
    """What a backfill reads on Discord: a channel's messages after a snowflake."""

    def __init__(self, client: discord.Client) -> None:
        self._client = client

    def cursor(self, at: float) -> str:
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        return str(max(0, discord.utils.time_snowflake(moment, high=False) - 1))

    async def page(self, chat_id: str, after: str, end: str) -> Page:
        me = self._client.user
        if me is None:
            raise PlatformError("Discord: not logged in")
        channel = await self._channel(chat_id)
        if not readable(channel):
            raise HistoryUnavailable(NO_ACCESS)  # Discord would answer an empty history
        last, limit = int(after), int(end)
        found: list[LoggedMessage] = []
        hidden = count = 0
        past_end = False
        try:
            async for message in channel.history(limit=PAGE, after=discord.Object(last), oldest_first=True):
                count += 1
                if message.id > limit:
                    past_end = True  # written since the backfill began: recorded live
                    break
                last = message.id
                if message.author.bot or message.type not in WRITTEN:
                    continue  # Herald's own and other bots' messages are never recorded
                said = from_message(message, me)
                if not said.addressed and withheld(message, me):
                    hidden += 1
                    continue
                kept = loggable(said)
                if kept is not None:
                    found.append(kept)
        except discord.Forbidden:
            raise HistoryUnavailable(NO_ACCESS) from None
        except discord.NotFound:
            raise HistoryUnavailable("this channel is gone.") from None
        except (discord.HTTPException, OSError) as exc:  # a 5xx, or Discord unreachable: for now
            raise PlatformError(f"Discord history of {chat_id}: {exc}") from exc
        return Page(found, str(last), hidden, last=past_end or count < PAGE)

    async def surface(self, where: str) -> Surface:
        return PostSurface(await self._channel(where), self._client.intents)

    async def _channel(self, channel_id: str) -> Postable:
        """A channel or thread by id: held by discord.py, or asked of Discord (an archived
        thread, a channel discord.py has not seen)."""
        channel = self._client.get_channel(int(channel_id))
        if channel is None:
            try:
                channel = await self._client.fetch_channel(int(channel_id))
            except (discord.Forbidden, discord.NotFound):
                raise HistoryUnavailable(NO_ACCESS) from None
            except (discord.HTTPException, discord.InvalidData, OSError) as exc:
                raise PlatformError(f"Discord channel {channel_id}: {exc}") from exc
        if not isinstance(channel, Postable):
            raise HistoryUnavailable("this channel holds no messages I can read.")
        return channel

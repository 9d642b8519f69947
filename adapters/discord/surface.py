"""Where an answer goes in Discord: a reply in a channel, or an interaction's response.

Every message goes out with allowed mentions that ping nobody: model output
that contains @everyone, @here, role or user mentions notifies no one.
discord.py already waits out 429s and slows down from the rate-limit headers;
what still fails becomes the core's platform errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import discord

from adapters.discord.translate import place
from core.platform import (
    Button,
    ButtonStyle,
    Capabilities,
    MessageRef,
    PlatformError,
    PlatformRateLimited,
    Surface,
    Visibility,
)

MAX_LENGTH = 2000
EDIT_INTERVAL = 1.2
NO_PINGS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=False)
CAPABILITIES = Capabilities(
    max_length=MAX_LENGTH, min_edit_interval=EDIT_INTERVAL, has_slash_commands=True, has_buttons=True
)

#: what would let Herald read the text of other people's guild messages
CONTENT_ADVICE = (
    "To let me read every message's text, the bot's operator turns on Message Content Intent "
    "for this app in the Discord Developer Portal (Bot page), then sets "
    "HERALD_DISCORD_MESSAGE_CONTENT=true and restarts Herald."
)
#: the channels Herald's own messages go to (each can name a message it sent, to edit it)
Postable = (
    discord.TextChannel
    | discord.Thread
    | discord.VoiceChannel
    | discord.StageChannel
    | discord.DMChannel
    | discord.PartialMessageable
)

T = TypeVar("T")


def visibility(in_guild: bool, intents: discord.Intents) -> Visibility:
    """What Herald reads in a channel: every message (default intents: guild messages and
    DMs), with other people's text in a guild only with the Message Content intent, which
    is what this client was actually given (Discord refuses to connect a client that asks
    for it unapproved); the channel's history over REST."""
    reads_text = not in_guild or intents.message_content
    return Visibility(
        reads_all=True, reads_text=reads_text, has_history=True, advice="" if reads_text else CONTENT_ADVICE
    )


STYLES = {
    ButtonStyle.NEUTRAL: discord.ButtonStyle.secondary,
    ButtonStyle.PRIMARY: discord.ButtonStyle.primary,
    ButtonStyle.POSITIVE: discord.ButtonStyle.success,
    ButtonStyle.NEGATIVE: discord.ButtonStyle.danger,
}


def button_view(buttons: Sequence[Button]) -> discord.ui.View:
    """The core's buttons as message components; clicks arrive as component interactions
    that the bot turns back into commands (the view itself handles nothing)."""
    view = discord.ui.View(timeout=None)
    for button in buttons:
        view.add_item(
            discord.ui.Button(label=button.label, style=STYLES[button.style], custom_id=button.data)
        )
    return view


async def sending(view: discord.ui.View | None, send: Callable[[], Awaitable[T]]) -> T:
    """Send with `view`, then stop it: the buttons stay on the message, but discord.py's
    view store does not keep one view per message sent for as long as the bot runs."""
    try:
        return await _call(send)
    finally:
        if view is not None:
            view.stop()


async def _call(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except discord.RateLimited as exc:
        raise PlatformRateLimited(exc.retry_after, str(exc)) from exc
    except discord.HTTPException as exc:
        raise PlatformError(f"Discord refused: {exc.status} {exc.code} {exc.text}") from exc
    except (discord.DiscordException, OSError) as exc:
        raise PlatformError(f"Discord call failed: {exc}") from exc


class ChannelSurface(Surface):
    """Answers a message: the first part replies to it, later parts to the part before."""

    def __init__(self, message: discord.Message, intents: discord.Intents | None = None) -> None:
        self._message = message
        self._channel = message.channel
        self._intents = intents

    async def visibility(self) -> Visibility | None:
        if self._intents is None:
            return None
        return visibility(self._message.guild is not None, self._intents)

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return jump_link(self._message.guild, self._channel, message_id, thread_id)

    async def typing(self) -> None:
        await _call(lambda: self._channel.typing())

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        target = self._message.to_reference(fail_if_not_exists=False)
        if reply_to is not None:
            target = discord.MessageReference(
                message_id=int(reply_to.id), channel_id=self._channel.id, fail_if_not_exists=False
            )
        view = button_view(buttons) if buttons else None
        sent = await sending(
            view,
            lambda: self._channel.send(
                text, reference=target, allowed_mentions=NO_PINGS, view=view or discord.utils.MISSING
            ),
        )
        return MessageRef(str(sent.id))

    async def edit(self, ref: MessageRef, text: str) -> None:
        partial = self._channel.get_partial_message(int(ref.id))  # type: ignore[union-attr]
        await _call(lambda: partial.edit(content=text, allowed_mentions=NO_PINGS))


class InteractionSurface(Surface):
    """Answers a slash command: streams into the deferred original response,
    continuation parts are follow-ups."""

    ORIGINAL = "@original"

    def __init__(self, interaction: discord.Interaction) -> None:
        self._interaction = interaction
        self._original_used = False

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return jump_link(self._interaction.guild, self._interaction.channel, message_id, thread_id)

    async def visibility(self) -> Visibility | None:
        return visibility(self._interaction.guild_id is not None, self._interaction.client.intents)

    async def typing(self) -> None:
        return None  # the deferred response already shows "thinking…"

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        if self._original_used:
            return await self._followup(text, buttons)
        self._original_used = True
        view = button_view(buttons) if buttons else None
        await sending(
            view,
            lambda: self._interaction.edit_original_response(
                content=text, allowed_mentions=NO_PINGS, view=view or discord.utils.MISSING
            ),
        )
        return MessageRef(self.ORIGINAL)

    async def _followup(self, text: str, buttons: Sequence[Button]) -> MessageRef:
        view = button_view(buttons) if buttons else None
        followup = self._interaction.followup
        sent = await sending(
            view,
            lambda: followup.send(
                text, allowed_mentions=NO_PINGS, wait=True, view=view or discord.utils.MISSING
            ),
        )
        return MessageRef(str(sent.id))

    async def edit(self, ref: MessageRef, text: str) -> None:
        if ref.id == self.ORIGINAL:
            await _call(
                lambda: self._interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
            )
        else:
            followup = self._interaction.followup
            await _call(lambda: followup.edit_message(int(ref.id), content=text, allowed_mentions=NO_PINGS))


class PostSurface(Surface):
    """Herald's own messages in a channel or thread, answering none: a backfill's
    progress, and what it tells the chat on the way."""

    def __init__(self, channel: Postable, intents: discord.Intents) -> None:
        self._channel = channel
        self._intents = intents

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return jump_link(self._channel.guild, self._channel, message_id, thread_id)

    async def visibility(self) -> Visibility | None:
        return visibility(self._channel.guild is not None, self._intents)

    async def typing(self) -> None:
        await _call(lambda: self._channel.typing())

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        view = button_view(buttons) if buttons else None
        sent = await sending(
            view,
            lambda: self._channel.send(text, allowed_mentions=NO_PINGS, view=view or discord.utils.MISSING),
        )
        return MessageRef(str(sent.id))

    async def edit(self, ref: MessageRef, text: str) -> None:
        partial = self._channel.get_partial_message(int(ref.id))
        await _call(lambda: partial.edit(content=text, allowed_mentions=NO_PINGS))


class DecisionSurface(InteractionSurface):
    """Answers a click that decides the message it was on (approve, reject…), after
    a deferred update: the outcome is appended to that message and its buttons go;
    a refusal is an ephemeral message for the clicker; anything else a new message."""

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        return await self._followup(text, buttons)  # the original response is the clicked message

    async def notice(self, text: str) -> None:
        followup = self._interaction.followup
        await _call(lambda: followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS))

    async def conclude(self, text: str) -> None:
        message = self._interaction.message
        shown = f"{message.content}\n\n**{text}**" if message is not None else f"**{text}**"
        await _call(
            lambda: self._interaction.edit_original_response(
                content=shown, view=None, allowed_mentions=NO_PINGS
            )
        )


def jump_link(
    guild: discord.Guild | None, channel: object, message_id: str, thread_id: str | None
) -> str | None:
    """Discord's link to a message: a thread's messages live in the thread's channel."""
    chat, _ = place(channel)
    target = thread_id or chat
    if not target or not message_id.isdigit():
        return None
    return f"https://discord.com/channels/{guild.id if guild else '@me'}/{target}/{message_id}"

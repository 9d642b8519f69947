"""Where an answer goes in Discord: a reply in a channel, or an interaction's response.

The answering surfaces hold ids and an interaction's token only, never the gateway's
objects, so a worker that holds no shard builds them over REST (`address.py`).
Every message goes out with allowed mentions that ping nobody: model output
that contains @everyone, @here, role or user mentions notifies no one.
discord.py already waits out 429s and slows down from the rate-limit headers;
the answering surfaces tell the renderer their bucket (`limits.py`) so that it paces
itself by them too. What still fails becomes the core's platform errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import discord
from discord.http import handle_message_parameters

from adapters.discord.limits import channel_bucket, webhook_bucket
from adapters.discord.translate import place
from core.pacing import Bucket, Buckets
from core.platform import (
    Button,
    ButtonStyle,
    CallKind,
    Capabilities,
    MessageRef,
    PlatformError,
    PlatformRateLimited,
    Surface,
    Visibility,
)

MAX_LENGTH = 2000
#: between a streaming message's edits (its chat's bucket, 5 per 5 s, paces them too)
EDIT_INTERVAL = 1.0
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


def visibility(in_guild: bool, message_content: bool) -> Visibility:
    """What Herald reads in a channel: every message (default intents: guild messages and
    DMs), with other people's text in a guild only with the Message Content intent, as the
    gateway's client was actually given it (Discord refuses to connect a client that asks
    for it unapproved); the channel's history over REST."""
    reads_text = not in_guild or message_content
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


def _sent_ref(data: Any) -> MessageRef:
    """The id of the message Discord says it created."""
    try:
        return MessageRef(str(int(data["id"])))
    except (KeyError, TypeError, ValueError):
        raise PlatformError(f"Discord's answer names no message: {str(data)[:200]!r}") from None


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
    """Answers a message: the first part replies to it, later parts to the part before.
    Built from ids alone (`address`), so any replica answers over REST.

    Sends and edits go through discord.py's HTTP client, which paces them by the same
    buckets, without building a `Message` from each response: only the id is needed,
    and at 1,000 answers streaming at once the `Message`s were 6% of the process's CPU.
    """

    def __init__(
        self,
        http: discord.http.HTTPClient,
        channel: discord.PartialMessageable,
        chat: str,
        reply_to: int,
        reads_text: bool,
        buckets: Buckets,
    ) -> None:
        self._http = http
        self._channel = channel
        self._chat = chat
        self._reply_to = reply_to
        self._reads_text = reads_text
        self._buckets = buckets

    def bucket(self, kind: CallKind) -> Bucket | None:
        return channel_bucket(self._buckets, kind, self._channel.id)

    async def visibility(self) -> Visibility | None:
        return visibility(self._channel.guild_id is not None, self._reads_text)

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return jump_link(self._channel.guild_id, self._chat, message_id, thread_id)

    async def typing(self) -> None:
        await _call(lambda: self._channel.typing())

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        target = discord.MessageReference(
            message_id=int(reply_to.id) if reply_to is not None else self._reply_to,
            channel_id=self._channel.id,
            guild_id=self._channel.guild_id,
            fail_if_not_exists=False,
        ).to_message_reference_dict()
        view = button_view(buttons) if buttons else None

        async def post() -> Any:
            with handle_message_parameters(
                text, allowed_mentions=NO_PINGS, message_reference=target, view=view or discord.utils.MISSING
            ) as params:
                return await self._http.send_message(self._channel.id, params=params)

        return _sent_ref(await sending(view, post))

    async def edit(self, ref: MessageRef, text: str) -> None:
        async def patch() -> None:
            with handle_message_parameters(text, allowed_mentions=NO_PINGS) as params:
                await self._http.edit_message(self._channel.id, int(ref.id), params=params)

        await _call(patch)

    async def delete(self, ref: MessageRef) -> None:
        partial = self._channel.get_partial_message(int(ref.id))
        await _call(lambda: partial.delete())


class InteractionSurface(Surface):
    """Answers a slash command (or a click that asks for a new message) after a deferral
    with "thinking…", through the interaction's webhook: the first message fills in the
    deferred response (Discord turns the first follow-up after a deferral into it), the
    next ones are follow-ups replying to it. Only the token and ids are needed, so any
    replica answers, over REST, for as long as the token lives (15 minutes)."""

    def __init__(
        self,
        webhook: discord.Webhook,
        channel: discord.PartialMessageable,
        chat: str,
        original: int | None,
        reads_text: bool,
        buckets: Buckets,
    ) -> None:
        self._webhook = webhook
        self._channel = channel
        self._chat = chat
        #: the interaction's response message: the deferred one, or the message clicked
        self._original = original
        self._reads_text = reads_text
        self._buckets = buckets

    def bucket(self, kind: CallKind) -> Bucket | None:
        return webhook_bucket(self._buckets, kind, self._webhook.token or "")

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return jump_link(self._channel.guild_id, self._chat, message_id, thread_id)

    async def visibility(self) -> Visibility | None:
        return visibility(self._channel.guild_id is not None, self._reads_text)

    async def typing(self) -> None:
        return None  # the deferred response already shows "thinking…"

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        view = button_view(buttons) if buttons else None
        webhook = self._webhook
        sent = await sending(
            view,
            lambda: webhook.send(
                text, allowed_mentions=NO_PINGS, wait=True, view=view or discord.utils.MISSING
            ),
        )
        return MessageRef(str(sent.id))

    async def edit(self, ref: MessageRef, text: str) -> None:
        webhook = self._webhook
        await _call(lambda: webhook.edit_message(int(ref.id), content=text, allowed_mentions=NO_PINGS))

    async def delete(self, ref: MessageRef) -> None:
        if self._original is not None and ref.id == str(self._original):
            # the response to the command (or the message clicked): deleting it would
            # leave the follow-ups replying to nothing, so it is edited instead
            raise PlatformError("an interaction's response is not deleted")
        webhook = self._webhook
        await _call(lambda: webhook.delete_message(int(ref.id)))


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
        guild = self._channel.guild
        return jump_link(
            guild.id if guild is not None else None, place(self._channel)[0], message_id, thread_id
        )

    async def visibility(self) -> Visibility | None:
        return visibility(self._channel.guild is not None, self._intents.message_content)

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
    """Answers a click that decides the message it was on (approve, reject…), after a
    deferred update: the outcome is appended to that message and its buttons go; a
    refusal is an ephemeral message for the clicker; anything else a new message."""

    def __init__(
        self,
        webhook: discord.Webhook,
        channel: discord.PartialMessageable,
        chat: str,
        clicked: int | None,
        shown: str,
        reads_text: bool,
        buckets: Buckets,
    ) -> None:
        super().__init__(webhook, channel, chat, clicked, reads_text, buckets)
        self._shown = shown

    async def notice(self, text: str) -> None:
        webhook = self._webhook
        await _call(lambda: webhook.send(text, ephemeral=True, allowed_mentions=NO_PINGS, wait=True))

    async def conclude(self, text: str) -> None:
        if self._original is None:  # Discord did not say which message was clicked
            await self.send(f"**{text}**")
            return
        # Herald's own message, edited as the bot: an interaction's webhook edits only the
        # messages it sent itself (the clicked one is its `@original`, which discord.py
        # reaches only through the interaction object of the replica that received it)
        clicked = self._channel.get_partial_message(self._original)
        shown = f"{self._shown}\n\n**{text}**" if self._shown else f"**{text}**"
        await _call(lambda: clicked.edit(content=shown, view=None, allowed_mentions=NO_PINGS))


def jump_link(guild_id: int | None, chat: str, message_id: str, thread_id: str | None) -> str | None:
    """Discord's link to a message: a thread's messages live in the thread's channel."""
    target = thread_id or chat
    if not target or not message_id.isdigit():
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{target}/{message_id}"

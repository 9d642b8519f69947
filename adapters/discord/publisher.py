"""Scheduled posts on Discord: publish into a channel, ask for approval with buttons.

Every message pings nobody. A send that failed with a status below 500 was not
made; a timeout or a server error may hide a message that was posted, so it
is reported as unknown and never retried automatically.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import discord

from adapters.discord.surface import NO_PINGS
from core.posts.schedules.runner import PublishFailed, PublishUnknown
from core.posts.schedules.store import Post

PREFIX = "herald"
BUTTONS = (
    ("Approve", "approve", discord.ButtonStyle.success),
    ("Edit", "edit", discord.ButtonStyle.secondary),
    ("Regenerate", "regenerate", discord.ButtonStyle.primary),
    ("Reject", "reject", discord.ButtonStyle.danger),
)


def custom_id(action: str, post_id: str) -> str:
    return f"{PREFIX}:{action}:{post_id}"


def parse_custom_id(value: str) -> tuple[str, str] | None:
    prefix, _, rest = value.partition(":")
    action, _, post_id = rest.partition(":")
    return (action, post_id) if prefix == PREFIX and action and post_id else None


def approval_view(post_id: str) -> discord.ui.View:
    """Buttons only: clicks are handled in the bot's `on_interaction`, not by the view."""
    view = discord.ui.View(timeout=None)
    for label, action, style in BUTTONS:
        view.add_item(discord.ui.Button(label=label, style=style, custom_id=custom_id(action, post_id)))
    return view


def edit_form(post: Post) -> discord.ui.Modal:
    """Edit: the draft in a text box; the submission is handled in the bot's `on_interaction`."""
    form = discord.ui.Modal(title=f"Edit post {post.id}"[:45], custom_id=custom_id("edit", post.id))
    form.add_item(
        discord.ui.TextInput(
            label="Text to publish",
            style=discord.TextStyle.paragraph,
            default=post.text[:4000],
            max_length=4000,
            custom_id="text",
        )
    )
    return form


def form_text(data: Mapping[str, object]) -> str:
    """The text box's value from a submitted `edit_form`."""
    for row in data.get("components") or []:  # type: ignore[attr-defined]
        for item in row.get("components") or []:
            if item.get("custom_id") == "text":
                return str(item.get("value") or "").strip()
    return ""


def approval_text(post: Post) -> str:
    return f"Draft `{post.id}` for {post.slot[:16].replace('T', ' ')} — approve to publish:\n\n{post.text}"


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

    async def request_approval(self, chat_id: str, post: Post) -> None:
        channel = await self._channel(chat_id)
        view = approval_view(post.id)
        try:
            await channel.send(approval_text(post), view=view, allowed_mentions=NO_PINGS)
        finally:
            view.stop()  # the buttons stay on the message; clicks reach the bot's on_interaction

    async def notify(self, chat_id: str, text: str) -> None:
        channel = await self._channel(chat_id)
        await channel.send(text, allowed_mentions=NO_PINGS)

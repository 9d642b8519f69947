"""Discord messages and interactions → the core's `Inbound`.

Addressed: a DM; a mention of the bot user (`bot.user in message.mentions`:
`mentioned_in` is also true for @everyone, which must not wake the bot) or of
the bot's own managed role; a reply to one of the bot's messages. A thread is
its own conversation inside its parent channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

import discord

from core.platform import Author, CommandCall, Inbound, Posted

PLATFORM = "discord"


def place(channel: object) -> tuple[str, str | None]:
    """(chat, thread): a thread lives in its parent channel's chat."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(getattr(channel, "id", "")), None


def _bot_role_ids(message: discord.Message, me: discord.ClientUser) -> set[int]:
    guild = message.guild
    if guild is None or guild.me is None:
        return set()
    return {role.id for role in guild.me.roles if role.is_bot_managed()}


def _replies_to_bot(message: discord.Message, me: discord.ClientUser) -> bool:
    ref = message.reference
    resolved = ref.resolved if ref is not None else None
    return isinstance(resolved, discord.Message) and resolved.author.id == me.id


def _without_mentions(text: str, me: discord.ClientUser, role_ids: set[int]) -> str:
    pattern = rf"<@!?{me.id}>" + "".join(rf"|<@&{rid}>" for rid in role_ids)
    return re.sub(pattern, "", text).strip()


def _roles(user: discord.abc.User) -> frozenset[str]:
    """A guild member's role ids (the core decides what they allow)."""
    return frozenset(str(role.id) for role in getattr(user, "roles", ()))


def _manages(perms: discord.Permissions | None) -> bool:
    """Manage Server or Manage Channels (or Administrator) may change chat-wide settings."""
    return bool(perms and (perms.manage_guild or perms.manage_channels or perms.administrator))


def from_message(message: discord.Message, me: discord.ClientUser) -> Inbound:
    private = message.guild is None
    role_ids = _bot_role_ids(message, me)
    mentioned = me in message.mentions or any(r.id in role_ids for r in message.role_mentions)
    chat, thread = place(message.channel)
    return Inbound(
        platform=PLATFORM,
        event_id=str(message.id),
        chat_id=chat,
        thread_id=thread,
        author=Author(
            str(message.author.id),
            message.author.display_name,
            _manages(getattr(message.author, "guild_permissions", None)),
            _roles(message.author),
        ),
        text=_without_mentions(message.content, me, role_ids),
        addressed=private or mentioned or _replies_to_bot(message, me),
        is_private=private,
        posted=Posted(str(message.id), message.created_at.timestamp(), _replied_id(message)),
    )


def deleted(message_ids: Iterable[int]) -> list[Posted]:
    """Deleted messages known only by id: a snowflake holds its message's time, which
    is the `Posted.at` that `from_message` gave when it was recorded."""
    return [Posted(str(i), discord.utils.snowflake_time(i).timestamp()) for i in sorted(message_ids)]


def _replied_id(message: discord.Message) -> str | None:
    ref = message.reference
    return str(ref.message_id) if ref is not None and ref.message_id is not None else None


def command_call(data: Mapping[str, object]) -> CommandCall:
    """A chat-input command with its typed options, by name; a chosen subcommand is
    the one option of type SUB_COMMAND, holding its own options."""
    options = [o for o in data.get("options") or [] if isinstance(o, dict)]  # type: ignore[attr-defined]
    name = str(data.get("name", ""))
    if len(options) == 1 and options[0].get("type") == discord.AppCommandOptionType.subcommand.value:
        chosen = options[0]
        return CommandCall(name, subcommand=str(chosen["name"]), options=_values(chosen.get("options")))
    return CommandCall(name, options=_values(options))


def _values(options: object) -> dict[str, object]:
    found = options if isinstance(options, list) else []
    return {str(o["name"]): o.get("value") for o in found if isinstance(o, dict)}


def from_button(interaction: discord.Interaction) -> Inbound:
    """Who acted (a button, a slash command), and where; the core decides what they may do."""
    chat, thread = place(interaction.channel)
    user = interaction.user
    return Inbound(
        platform=PLATFORM,
        event_id=f"i{interaction.id}",
        chat_id=chat or str(interaction.channel_id),
        thread_id=thread,
        # the permissions Discord resolved for this user in this channel
        author=Author(str(user.id), user.display_name, _manages(interaction.permissions), _roles(user)),
        text="",
        addressed=True,
        is_private=interaction.guild_id is None,
    )


def from_interaction(interaction: discord.Interaction) -> Inbound:
    """A slash command with its typed options."""
    data: Mapping[str, object] = interaction.data or {}
    return replace(from_button(interaction), command=command_call(data))

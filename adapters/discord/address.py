"""Where the answer to a Discord event goes, as data kept with the event in the intake.

The replica that received the event (it holds a gateway shard) writes the address; the
one that answers it, maybe a worker with no gateway connection and nothing cached,
rebuilds the surface from it over REST alone: a channel and a message to reply to, or
an interaction's application id and token (its webhook) and response message. The
fast path (the receiving replica answering at once) goes through the same address, so
there is one way to build a surface. Snowflakes are strings, as Discord writes them.

    {"kind": "message", "guild": "5000" | null, "channel": "5001", "chat": "5001",
     "message": "<id replied to>", "reads_text": false}
    {"kind": "interaction", "application": "900", "token": "…", "guild": …, "channel": …,
     "chat": …, "original": "<response message id>" | null, "decision": false,
     "shown": "<the clicked message's text>" | null, "reads_text": false}

`channel` is where the answer goes (a thread's own id), `chat` the conversation's chat
(a thread's parent), for jump links; `reads_text`: the gateway's client has the Message
Content intent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import discord

from adapters.discord.surface import ChannelSurface, DecisionSurface, InteractionSurface
from core.pacing import Buckets
from core.platform import Surface


def message_address(message: discord.Message, chat: str, reads_text: bool) -> dict[str, Any]:
    """A reply to `message`, in its channel (or thread)."""
    return {
        "kind": "message",
        "guild": _text(message.guild.id if message.guild is not None else None),
        "channel": str(message.channel.id),
        "chat": chat,
        "message": str(message.id),
        "reads_text": reads_text,
    }


def interaction_address(
    interaction: discord.Interaction,
    chat: str,
    response: discord.InteractionCallbackResponse[Any] | None,
    *,
    decision: bool,
    reads_text: bool,
) -> dict[str, Any]:
    """The response to a deferred interaction: a decision's is the message clicked (its text
    kept, to show the outcome under it); anything else's the deferred "thinking" message."""
    clicked = interaction.message if decision else None
    original = clicked.id if clicked is not None else response.message_id if response is not None else None
    return {
        "kind": "interaction",
        "application": str(interaction.application_id),
        "token": interaction.token,
        "guild": _text(interaction.guild_id),
        "channel": str(interaction.channel_id),
        "chat": chat,
        "original": _text(original),
        "decision": decision,
        "shown": clicked.content if clicked is not None else None,
        "reads_text": reads_text,
    }


def address_surface(client: discord.Client, address: Mapping[str, Any], buckets: Buckets) -> Surface:
    """The surface an address names, on `client` (logged in; no gateway needed), paced
    by `buckets` (what `client`'s responses tell of Discord's rate limits).
    `ValueError` when it names none (damaged, or written by something else)."""
    try:
        guild = _snowflake(address.get("guild"))
        channel = client.get_partial_messageable(int(address["channel"]), guild_id=guild)
        chat, reads_text = str(address["chat"]), bool(address.get("reads_text", False))
        kind = address["kind"]
        if kind == "message":
            return ChannelSurface(client.http, channel, chat, int(address["message"]), reads_text, buckets)
        if kind != "interaction":
            raise ValueError(f"unknown kind {kind!r}")
        webhook = discord.Webhook.partial(int(address["application"]), str(address["token"]), client=client)
        # an interaction's webhook (what `Interaction.followup` makes): its follow-ups may be ephemeral
        webhook.type = discord.WebhookType.application
        original = _snowflake(address.get("original"))
        if address.get("decision"):
            shown = address.get("shown")
            return DecisionSurface(webhook, channel, chat, original, str(shown or ""), reads_text, buckets)
        return InteractionSurface(webhook, channel, chat, original, reads_text, buckets)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a Discord address: {exc!r}") from None


def _text(snowflake: int | None) -> str | None:
    return None if snowflake is None else str(snowflake)


def _snowflake(value: Any) -> int | None:
    return None if value is None else int(value)

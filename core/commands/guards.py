"""Who may run a command, and where: the wrappers every command group uses, so that a
refusal is decided and worded in one way (the access policy decides who manages a chat)."""

from __future__ import annotations

from typing import Any

from core.chat.access import AccessPolicy
from core.commands.context import CommandContext
from core.commands.registry import Handler


def in_chats_only(handler: Handler, refusal: str) -> Handler:
    """`handler` in group chats; in a DM, `refusal` instead."""

    async def checked(ctx: CommandContext, args: dict[str, Any]) -> None:
        if ctx.event.is_private:
            await ctx.reply(refusal)
        else:
            await handler(ctx, args)

    return checked


def managers_only(access: AccessPolicy, handler: Handler, refusal: str) -> Handler:
    """`handler` for the chat's managers (and Herald's admins); others get `refusal`."""

    async def checked(ctx: CommandContext, args: dict[str, Any]) -> None:
        if access.may_manage_chat(ctx.event):
            await handler(ctx, args)
        else:
            await ctx.reply(refusal)

    return checked

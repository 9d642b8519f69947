"""`/history`: a chat's managers turn recording of its messages on and off; anyone
may have their own messages forgotten.

Recording is opt-in per chat and never in DMs (a DM's conversation memory is
already there). Turning it off deletes everything recorded in the chat at once.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from core.chat.access import AccessPolicy
from core.chatlog.store import ChatLog
from core.commands.context import CommandContext
from core.commands.registry import ArgSpec, CommandSpec, Handler
from core.commands.values import duration, user_id

DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650

NOT_IN_DMS = "Direct messages are never recorded: your conversation with me is already remembered."
MANAGERS_ONLY = "Only the people who manage this chat can turn recording on or off."


def parse_retention(text: str) -> float:
    """`30d`, `12h`, `2w` or a number of days → seconds; ValueError with the reason."""
    value = text.strip()
    seconds = float(int(value) * 86400) if value.isdigit() and len(value) <= 5 else duration(value)
    if seconds is None:
        raise ValueError(f"I don't understand retention={text!r}: write it like 30d, 12h or 2w.")
    if not 3600 <= seconds <= MAX_RETENTION_DAYS * 86400:
        raise ValueError(f"retention must be between 1 hour and {MAX_RETENTION_DAYS} days.")
    return seconds


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} days" if days >= 1 else f"{seconds / 3600:g} hours"


class HistoryCommands:
    def __init__(self, chatlog: ChatLog, access: AccessPolicy) -> None:
        self._log = chatlog
        self._access = access

    def spec(self) -> CommandSpec:
        return CommandSpec(
            "history",
            "Record this chat's messages for /search and /summary",
            subcommands=(
                CommandSpec(
                    "status", "Whether this chat is recorded, and how much", self._outside_dms(self._status)
                ),
                CommandSpec(
                    "on",
                    "Record this chat's messages from now on (managers)",
                    self._managed(self._on),
                    args=(
                        ArgSpec(
                            "retention",
                            "How long messages are kept, e.g. 30d",
                            max_length=12,
                            keyword_only=True,
                        ),
                    ),
                ),
                CommandSpec(
                    "off",
                    "Stop recording and delete everything recorded here (managers)",
                    self._managed(self._off),
                ),
                CommandSpec(
                    "forget",
                    "Forget your recorded messages (managers: someone else's)",
                    self._outside_dms(self._forget),
                    args=(ArgSpec("user", "A mention or a user id; yourself when left out", max_length=40),),
                ),
            ),
        )

    def _outside_dms(self, handler: Handler) -> Handler:
        async def checked(ctx: CommandContext, args: dict[str, Any]) -> None:
            if ctx.event.is_private:
                await ctx.reply(NOT_IN_DMS)
            else:
                await handler(ctx, args)

        return checked

    def _managed(self, handler: Handler) -> Handler:
        async def checked(ctx: CommandContext, args: dict[str, Any]) -> None:
            if not self._access.may_manage_chat(ctx.event):
                await ctx.reply(MANAGERS_ONLY)
            else:
                await handler(ctx, args)

        return self._outside_dms(checked)

    async def _off(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        deleted = await self._log.turn_off(ctx.event.platform, ctx.event.chat_id)
        await ctx.reply(
            "Recording is off, and everything recorded in this chat is deleted."
            if deleted
            else "Recording is off (nothing was recorded here)."
        )

    async def _on(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        retention = args.get("retention")
        try:
            seconds = (
                DEFAULT_RETENTION_DAYS * 86400.0 if retention is None else parse_retention(str(retention))
            )
        except ValueError as exc:
            await ctx.reply(str(exc))
            return
        event = ctx.event
        settings = await self._log.turn_on(event.platform, event.chat_id, seconds)
        await ctx.reply(
            f"Recording is on: I keep this chat's messages for {_days(settings.retention)} so that "
            "/search and /summary can use them. History starts now; /history off deletes it all."
        )

    async def _status(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        event = ctx.event
        settings = await self._log.settings(event.platform, event.chat_id)
        if settings is None or not settings.on:
            await ctx.reply("Recording is off in this chat. A chat manager can turn it on with /history on.")
            return
        count = await self._log.count(event.platform, event.chat_id, time.time() - settings.retention)
        since = dt.datetime.fromtimestamp(settings.since or 0, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        await ctx.reply(
            f"Recording is on since {since}, keeping messages for {_days(settings.retention)}: "
            f"{count} message{'s' if count != 1 else ''} recorded."
        )

    async def _forget(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        user = args.get("user")
        event = ctx.event
        target = event.author.user_id
        if user is not None:
            named = user_id(str(user))
            if named is None:
                await ctx.reply(
                    "Name the person as a mention or a user id, or leave it out to forget yourself."
                )
                return
            target = named
        if target != event.author.user_id and not self._access.may_manage_chat(event):
            await ctx.reply("You can have your own messages forgotten; a chat manager can do it for others.")
            return
        forgotten = await self._log.forget_user(event.platform, event.chat_id, target)
        whose = "your" if target == event.author.user_id else "their"
        await ctx.reply(
            f"Done: {forgotten} of {whose} recorded message{'s' if forgotten != 1 else ''} forgotten."
        )

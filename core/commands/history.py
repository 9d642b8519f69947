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
from core.chatlog.backfill import Backfills, Begun, last_span
from core.chatlog.store import ChatLog
from core.commands.context import CommandContext
from core.commands.guards import in_chats_only, managers_only
from core.commands.registry import ArgSpec, CommandSpec, Handler
from core.commands.values import duration, user_id
from core.platform import Visibility

DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650

NOT_IN_DMS = "Direct messages are never recorded: your conversation with me is already remembered."
MANAGERS_ONLY = "Only the people who manage this chat can turn recording on or off."

# What Herald can read in a chat, as the platform says: the one place it is worded.
SEES_ALL = "I receive every message in this chat."
SEES_ADDRESSED = (
    "I only receive the messages addressed to me here (commands, mentions, replies to me), "
    "so only those can be recorded."
)
SEES_NO_TEXT = (
    "Messages here reach me without their text, except those addressed to me, so only those can be recorded."
)
NO_EARLIER = "History starts when recording starts: I can't read the messages from before it."


def parse_retention(text: str) -> float:
    """`30d`, `12h`, `2w` or a number of days → seconds; ValueError with the reason."""
    value = text.strip()
    seconds = float(int(value) * 86400) if value.isdigit() and len(value) <= 5 else duration(value)
    if seconds is None:
        raise ValueError(f"I don't understand retention={text!r}: write it like 30d, 12h or 2w.")
    if not 3600 <= seconds <= MAX_RETENTION_DAYS * 86400:
        raise ValueError(f"retention must be between 1 hour and {MAX_RETENTION_DAYS} days.")
    return seconds


def parse_backfill(text: str) -> float:
    """`7d`, `12h`, `2w` or a number of days → how far back a backfill reads, in seconds."""
    value = text.strip()
    seconds = float(int(value) * 86400) if value.isdigit() and len(value) <= 5 else duration(value)
    if seconds is None:
        raise ValueError(f"I don't understand backfill={text!r}: write it like 7d, 12h or 2w.")
    if not 3600 <= seconds <= MAX_RETENTION_DAYS * 86400:
        raise ValueError("backfill must be at least 1 hour (and reaches no further back than the retention).")
    return seconds


def what_i_see(seen: Visibility | None) -> str:
    """What recording here can hold, from what the platform says now, with what would
    let Herald read more; empty when the platform can't tell (nothing is assumed)."""
    if seen is None:
        return ""
    if not seen.reads_all:
        sentences = [SEES_ADDRESSED]
    else:
        sentences = [SEES_ALL if seen.reads_text else SEES_NO_TEXT]
    if seen.advice:
        sentences.append(seen.advice)
    if not seen.has_history:
        sentences.append(NO_EARLIER)
    return " ".join(sentences)


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} days" if days >= 1 else f"{seconds / 3600:g} hours"


class HistoryCommands:
    def __init__(self, chatlog: ChatLog, access: AccessPolicy, backfills: Backfills | None = None) -> None:
        self._log = chatlog
        self._access = access
        self._backfills = backfills

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
                        ArgSpec(
                            "backfill",
                            "Also record the messages of the last…, e.g. 7d (Discord)",
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
        return in_chats_only(handler, NOT_IN_DMS)

    def _managed(self, handler: Handler) -> Handler:
        return in_chats_only(managers_only(self._access, handler, MANAGERS_ONLY), NOT_IN_DMS)

    async def _off(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        deleted = await self._log.turn_off(ctx.event.platform, ctx.event.chat_id)
        await ctx.reply(
            "Recording is off, and everything recorded in this chat is deleted."
            if deleted
            else "Recording is off (nothing was recorded here)."
        )

    async def _on(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        retention, backfill = args.get("retention"), args.get("backfill")
        try:
            seconds = (
                DEFAULT_RETENTION_DAYS * 86400.0 if retention is None else parse_retention(str(retention))
            )
            asked = None if backfill is None else parse_backfill(str(backfill))
        except ValueError as exc:
            await ctx.reply(str(exc))
            return
        event = ctx.event
        settings = await self._log.turn_on(event.platform, event.chat_id, seconds)
        text = (
            f"Recording is on: I keep this chat's messages for {_days(settings.retention)} so that "
            "/search and /summary can use them."
        )
        backfills = self._backfills
        begun: Begun | None = None
        if asked is None:
            text += " History starts now; /history off deletes it all."
        elif backfills is None or not backfills.reads(event.platform):
            text += (
                f" {event.platform.capitalize()} bots can't read past messages, so history starts now; "
                "/history off deletes it all."
            )
        else:
            reach = min(asked, settings.retention)  # what is older would expire at once
            where = event.thread_id or event.chat_id
            begun = await backfills.begin(event.platform, event.chat_id, where, reach)
            if begun is Begun.STARTED:
                capped = " (as far back as the retention goes)" if reach < asked else ""
                text += (
                    f" I'm also reading back {last_span(reach)}{capped}: progress below. "
                    "/history off stops that and deletes it all."
                )
            elif begun is Begun.RUNNING:
                text += " A backfill is already under way here; /history off stops it and deletes it all."
            else:
                text = "Recording was turned off again before the backfill could start."
        seen = await ctx.surface.visibility()
        if seen is not None and not seen.reads_text:
            text += "\n\n⚠️ " + what_i_see(seen)  # said now, not once messages come up empty
        await ctx.reply(text)
        if begun is Begun.STARTED and backfills is not None:
            backfills.kick(event.platform, event.chat_id)  # after the answer: progress comes below it

    async def _status(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        """On or off, retention and count, and what Herald can read here (also while off,
        so that a manager can check before turning it on)."""
        event = ctx.event
        settings = await self._log.settings(event.platform, event.chat_id)
        if settings is None or not settings.on:
            state = "Recording is off in this chat. A chat manager can turn it on with /history on."
        else:
            count = await self._log.count(event.platform, event.chat_id, time.time() - settings.retention)
            since = dt.datetime.fromtimestamp(settings.since or 0, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            state = (
                f"Recording is on since {since}, keeping messages for {_days(settings.retention)}: "
                f"{count} message{'s' if count != 1 else ''} recorded."
            )
        seen = what_i_see(await ctx.surface.visibility())
        await ctx.reply(f"{state}\n\n{seen}" if seen else state)

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

"""`/summary` and `/catchup`: what was said in this chat, streamed, with citations.

`/summary` covers a span (`since=`, `last=`, the last 24 hours by default),
`/catchup` everything since the caller's own last recorded message. Both say
first how many messages they cover, read spans of any length through
`core.chatlog.summary` (pieces that fit the model, then combined), stream the
summary, and list the messages it cites, linked where the platform can.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from core.chat.progress import ProgressMessage
from core.chatlog.store import ChatLog, LoggedMessage, in_place, written_order
from core.chatlog.summary import Summariser, SummaryError
from core.commands.context import CommandContext
from core.commands.registry import ArgSpec, ArgType, CommandSpec
from core.commands.search import NOT_RECORDED, SearchError, parse_when, source_line
from core.llm.base import ChatMessage
from core.llm.errors import LLMError
from core.platform import Inbound

log = logging.getLogger("herald.summary")

DEFAULT_SPAN = 86400.0
#: the most messages one summary reads (the newest of a longer span)
MAX_MESSAGES = 10_000
#: messages read beyond the most, for the ties of one tick at the span's old end
READ_SLACK = 500
#: cited messages listed under a summary at most
MAX_SOURCES = 12
NOT_IN_DMS = "Summaries work in group chats that record their messages (/history on)."
_CITED = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _count(n: int) -> str:
    return f"{n:,} message{'s' if n != 1 else ''}"


def cited(text: str, most: int) -> list[int]:
    """The message numbers an answer cites (`[3]`, `[3, 7]`), in order, once each."""
    numbers = (int(n) for group in _CITED.findall(text) for n in group.split(","))
    return sorted({n for n in numbers if 1 <= n <= most})


class SummaryCommands:
    def __init__(
        self, chatlog: ChatLog, summariser: Summariser, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._log = chatlog
        self._summariser = summariser
        self._clock = clock

    def specs(self) -> tuple[CommandSpec, ...]:
        return (
            CommandSpec(
                "summary",
                "Summarise what was said in this chat",
                self.summary,
                args=(
                    ArgSpec("since", "From when: 24h, 7d or a date", keyword_only=True, max_length=20),
                    ArgSpec(
                        "last",
                        "The last N messages",
                        type=ArgType.INTEGER,
                        min_value=1,
                        max_value=MAX_MESSAGES,
                        keyword_only=True,
                    ),
                    ArgSpec("about", "Only what concerns this topic", keyword_only=True, max_length=200),
                ),
                generates=True,
            ),
            CommandSpec(
                "catchup",
                "Summarise what was said here since your last message",
                self.catchup,
                args=(ArgSpec("about", "Only what concerns this topic", keyword_only=True, max_length=200),),
                generates=True,
            ),
        )

    async def summary(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        if not await self._recorded(ctx):
            return
        now = self._clock()
        try:
            since = parse_when(str(args["since"]), now) if args.get("since") is not None else None
        except SearchError as exc:
            await ctx.reply(str(exc))
            return
        last = int(args["last"]) if args.get("last") is not None else None
        if since is None and last is None:
            since = now - DEFAULT_SPAN
        await self._summarise(ctx, since or 0.0, args.get("about"), "Summary", last=last)

    async def catchup(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        if not await self._recorded(ctx):
            return
        event = ctx.event
        place = event.thread_id or ""
        mine = await self._log.last_from(event.platform, event.chat_id, event.author.user_id, place)
        if mine is None:
            since = self._clock() - DEFAULT_SPAN
            title = "Catch-up on the last 24 hours (I have no recorded message of yours here)"
        else:
            since = mine.at
            title = f"Catch-up since your last message ({_when(mine.at)})"
        await self._summarise(ctx, since, args.get("about"), title, after=mine)

    async def _recorded(self, ctx: CommandContext) -> bool:
        event = ctx.event
        if event.is_private:
            await ctx.reply(NOT_IN_DMS)
            return False
        settings = await self._log.settings(event.platform, event.chat_id)
        if settings is None or not settings.on:
            await ctx.reply(NOT_RECORDED)
            return False
        return True

    async def _summarise(
        self,
        ctx: CommandContext,
        since: float,
        about: object,
        title: str,
        *,
        last: int | None = None,
        after: LoggedMessage | None = None,
    ) -> None:
        """Summarise this chat's (or thread's) messages since `since`: their newest
        `last`, or those written after `after`."""
        event = ctx.event
        messages, capped = await self._read(event, since, last, after)
        if not messages:
            if after is not None:
                await ctx.reply(f"Nothing new here since your last message ({_when(after.at)}).")
            else:
                await ctx.reply(f"{title}: no recorded messages in that span.")
            return
        covered = f"{_count(len(messages))} from {_when(messages[0].at)} to {_when(messages[-1].at)}" + (
            f" (the newest {MAX_MESSAGES:,}: a summary reads no more)" if capped else ""
        )
        reading = f"{title}: reading {covered}"
        progress = ProgressMessage(ctx.surface, await ctx.reply(f"{reading}…"))
        topic = str(about) if about is not None else None

        async def read_pieces(done: int, total: int) -> None:
            progress.show(f"{reading}: read {done} of {total} parts…")

        async def read() -> list[ChatMessage]:
            digest = await self._summariser.digest(messages, topic, read_pieces)
            await ctx.conversation.charge(event, digest.tokens)
            log.info(
                "summary of %d messages: %d pieces, %d model calls before the last, largest input %d",
                len(messages),
                digest.pieces,
                digest.calls,
                digest.largest_input,
            )
            await progress.final(f"{title} of {covered}:")
            return digest.prompt

        try:
            text = await ctx.conversation.answer_with(event, ctx.surface, read)
        except SummaryError as exc:
            await ctx.reply(str(exc))
            return
        except LLMError as exc:
            log.warning("summary of %s failed: %r", event.conversation, exc)
            await ctx.reply(exc.user_message)
            return
        finally:
            progress.close()
        numbers = cited(text, len(messages))[:MAX_SOURCES]
        if numbers:
            link = ctx.surface.message_link
            lines = [source_line(n, messages[n - 1], link) for n in numbers]
            await ctx.reply("\n".join(["Key messages:", *lines]))

    async def _read(
        self, event: Inbound, since: float, last: int | None, after: LoggedMessage | None
    ) -> tuple[list[LoggedMessage], bool]:
        """The messages of the event's place (a thread is a chat of its own) since
        `since`, in the order written: the newest `last`, at most `MAX_MESSAGES`;
        and whether older ones were left out. The log is read from its newest end,
        a wider stretch each round, until enough of this place's messages are in."""
        most = min(last or MAX_MESSAGES, MAX_MESSAGES)
        place = event.thread_id or ""
        wanted = most + READ_SLACK  # the stretch's old end may cut one tick's messages
        while True:
            oldest = await self._log.newest_time(event.platform, event.chat_id, wanted)
            complete = oldest is None or oldest <= since  # the stretch reaches `since`
            seqs = await self._log.span(event.platform, event.chat_id, max(since, oldest or since))
            kept = [
                m
                for start in range(0, len(seqs), 1000)
                for m in await self._log.messages(event.platform, event.chat_id, seqs[start : start + 1000])
                if in_place(m, place) and (after is None or written_order(m) > written_order(after))
            ]
            if len(kept) > most + READ_SLACK or complete:
                kept.sort(key=written_order)
                return kept[-most:], last is None and len(kept) > most
            wanted *= 4

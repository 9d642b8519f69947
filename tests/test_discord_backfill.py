"""Backfill on Discord (issue 13), through the real discord.py client and the Discord
emulator: `/history on backfill=7d` reads the channel's history oldest first, 100 a
page, within the history route's tight rate limit (no 429), records what it reads
once (live messages included), shows its progress in one message edited no more often
than Discord tolerates, goes on after a restart from the last page done (one replica
at a time), stops at /history off; without the Message Content intent nothing blank is
recorded and the chat is told once."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import discord
import pytest
from redis.asyncio import Redis

from adapters.discord.bot import DiscordBot
from adapters.discord.history import NO_ACCESS
from adapters.discord.surface import CONTENT_ADVICE, EDIT_INTERVAL
from core.chat.engine import Engine
from core.chatlog.backfill import STOPPED_OFF
from core.chatlog.store import LoggedMessage
from core.chatlog.unreadable import notice
from core.storage.keys import Keys
from tests import test_discord
from tests.conftest import EngineFactory
from tests.emulators.discord import (
    READ_MESSAGE_HISTORY,
    BotMessage,
    DiscordEmulator,
    Interaction,
    PastMessage,
)
from tests.support import eventually
from tests.test_discord import CHANNEL, GUILD, BotFactory, bot_user, settled

# the Discord emulator, a member (Ada) and the bot, as test_discord starts them
discord_emu = test_discord.discord_emu
ada = test_discord.ada
start_bot = test_discord.start_bot

pytestmark = pytest.mark.timeout(90)

MANAGE_CHANNELS = 1 << 4
BOB, OTHER_BOT = 602, 603
HISTORY = rf"^/channels/{CHANNEL}/messages$"
WEEK = 7 * 86400.0
DONE_WEEK = "Backfill done: {} messages from the last 7 days recorded."


def ago(seconds: float) -> dt.datetime:
    """A past instant at millisecond precision (what a snowflake keeps)."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def week_of_chatter(emu: DiscordEmulator, count: int) -> list[int]:
    """`count` messages by Bob spread over the last week (from 6 days 22 hours ago)."""
    start, step = ago(WEEK - 7200), (WEEK - 3 * 7200) / count
    return emu.seed_history(
        CHANNEL,
        [
            PastMessage(BOB, f"note {i} about topic{i}", start + dt.timedelta(seconds=i * step))
            for i in range(count)
        ],
    )


async def logged(engine: Engine) -> list[LoggedMessage]:
    """The channel's log in the order it was recorded."""
    assert engine.chatlog is not None
    seqs = await engine.chatlog.span("discord", str(CHANNEL), 0)
    return sorted(await engine.chatlog.messages("discord", str(CHANNEL), seqs), key=lambda m: m.seq)


def history_command(emu: DiscordEmulator, sub: str, **options: str) -> Interaction:
    """A member who may manage channels (Ada) runs /history <sub> in the channel."""
    given = [{"name": name, "value": value} for name, value in options.items()]
    return emu.slash_command(
        "history",
        [{"name": sub, "type": 1, "options": given}],
        channel_id=CHANNEL,
        user=emu.user(601),
        guild_id=GUILD,
        permissions=MANAGE_CHANNELS,
    )


async def answered(emu: DiscordEmulator, interaction: Interaction, start: str) -> str:
    """The command's answer, once it starts with `start`."""
    await emu.wait_until(
        lambda: (r := emu.interaction_response(interaction)) is not None and r.content.startswith(start), 10
    )
    response = emu.interaction_response(interaction)
    assert response is not None
    return response.content


def progress(emu: DiscordEmulator) -> list[BotMessage]:
    """Herald's backfill progress messages in the channel."""
    return [m for m in emu.messages_in(CHANNEL) if m.history and m.history[0].startswith("Backfill")]


async def shown(emu: DiscordEmulator, text: str) -> BotMessage:
    """The one progress message, once it shows `text`."""
    await emu.wait_until(lambda: any(m.content == text for m in progress(emu)), 30)
    [message] = progress(emu)
    return message


def pages(emu: DiscordEmulator) -> list[Any]:
    """The history requests, in order."""
    return [c for c in emu.calls if c.method == "GET" and c.path == f"/channels/{CHANNEL}/messages"]


async def unfinished(redis: Redis, prefix: str) -> list[str]:
    return [str(m) for m in await redis.zrange(Keys(prefix).backfills(), 0, -1)]


async def test_a_week_is_backfilled_oldest_first_with_progress_and_no_429(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    redis: Redis,
    prefix: str,
) -> None:
    discord_emu.history_bucket_limit, discord_emu.history_bucket_window = 2, 1.0  # tight
    discord_emu.user(BOB, "bob")
    discord_emu.user(OTHER_BOT, "otherbot", bot=True)
    old = discord_emu.seed_history(
        CHANNEL, [(BOB, f"too old {i}", ago(WEEK + 86400 + i * 60)) for i in range(20)]
    )
    week = week_of_chatter(discord_emu, 347)
    [bots, reply] = discord_emu.seed_history(
        CHANNEL,
        [
            PastMessage(OTHER_BOT, "a bot's message is never recorded", ago(3600)),
            PastMessage(ada["id"], "replying to the first note", ago(3000), reply_to=week[0]),
        ],
    )
    engine = await make_engine()
    await start_bot(engine, message_content=True)

    # recording on first; three messages recorded live before the backfill reads them too
    await answered(discord_emu, history_command(discord_emu, "on"), "Recording is on:")
    live = [discord_emu.user_message(CHANNEL, ada, f"live message {i}", guild_id=GUILD) for i in range(3)]

    async def recorded_live() -> bool:
        return len(await logged(engine)) == 3

    await eventually(recorded_live)
    asked = history_command(discord_emu, "on", backfill="7d")
    assert await answered(discord_emu, asked, "Recording is on:") == (
        "Recording is on: I keep this chat's messages for 30 days so that /search and /summary can "
        "use them. I'm also reading back the last 7 days: progress below. /history off stops that "
        "and deletes it all."
    )
    message = await shown(discord_emu, DONE_WEEK.format(351))

    # every message of the week once, the live ones included; nothing older, no bot
    found = await logged(engine)
    ids = [int(m.message_id) for m in found]
    assert sorted(ids) == sorted([*week, reply, *live]) and len(set(ids)) == len(ids) == 351
    assert not set(ids) & {*old, bots}
    backfilled = [m for m in found if int(m.message_id) not in live]
    assert [int(m.message_id) for m in backfilled] == sorted([*week, reply])  # oldest first
    first = backfilled[0]
    assert (first.author_id, first.author_name, first.text) == (str(BOB), "Bob", "note 0 about topic0")
    assert first.at == discord.utils.snowflake_time(week[0]).timestamp()
    assert next(m for m in found if m.message_id == str(reply)).reply_to == str(week[0])
    assert engine.chatlog is not None
    settings = await engine.chatlog.settings("discord", str(CHANNEL))
    assert settings is not None and settings.docs == 351  # the store counted each message once

    # four pages of 100 from a week ago, after the last id of the page before
    reads = pages(discord_emu)
    assert [c.query["limit"] for c in reads] == ["100"] * 4
    afters = [int(c.query["after"]) for c in reads]
    assert afters[1:] == [week[99], week[199], week[299]]
    assert week[0] > afters[0] > max(old)
    assert discord_emu.throttled() == []  # discord.py kept to the 2-per-second bucket

    # one progress message, edited no more often than Discord's interval
    assert message.history[0] == "Backfill: reading the last 7 days of this chat…"
    assert all(text.startswith("Backfill") for text in message.history)
    writes = [
        c for c in discord_emu.calls if c.path.endswith(f"/messages/{message.id}") and c.method == "PATCH"
    ]
    posted = next(
        c for c in discord_emu.calls if c.method == "POST" and c.json.get("content") == message.history[0]
    )
    times = [posted.at, *(c.at for c in writes)]
    assert len(times) == len(message.history) >= 2
    assert all(later - earlier >= EDIT_INTERVAL for earlier, later in itertools.pairwise(times))

    async def finished() -> bool:
        return await unfinished(redis, prefix) == []

    await eventually(finished)
    assert await redis.exists(Keys(prefix).chat_log("discord", str(CHANNEL), "backfill")) == 0


async def test_an_interrupted_backfill_goes_on_after_its_last_page_at_the_next_start(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    redis: Redis,
    prefix: str,
) -> None:
    discord_emu.history_bucket_limit, discord_emu.history_bucket_window = 2, 1.0
    discord_emu.user(BOB, "bob")
    week = week_of_chatter(discord_emu, 350)
    held = discord_emu.hold("GET", HISTORY, after=2)  # the third page waits: Herald stops there
    first = await start_bot(await make_engine(), message_content=True)
    await answered(discord_emu, history_command(discord_emu, "on", backfill="7d"), "Recording is on:")
    await shown(discord_emu, "Backfill: 200 messages from the last 7 days recorded so far…")
    await discord_emu.wait_until(lambda: len(held.waiting) == 1, 10)
    state = Keys(prefix).chat_log("discord", str(CHANNEL), "backfill")
    assert await redis.hget(state, "cursor") == str(week[199])

    await first.stop()  # Herald restarts mid-backfill
    assert await unfinished(redis, prefix) == [f"discord:{CHANNEL}"]
    held.release()
    # two replicas start; one takes the backfill up (the lease), the other leaves it be
    engine = await make_engine()
    await start_bot(engine, message_content=True)
    await start_bot(await make_engine(), message_content=True)
    await shown(discord_emu, DONE_WEEK.format(350))

    found = [int(m.message_id) for m in await logged(engine)]
    assert found == week  # each once, oldest first, across the restart
    done = [c for c in pages(discord_emu) if c is not held.waiting[0]]
    afters = [int(c.query["after"]) for c in done]
    assert afters[1:] == [week[99], week[199], week[299]]  # no page was read twice
    assert int(held.waiting[0].query["after"]) == week[199]  # the one abandoned, read again
    assert discord_emu.throttled() == []

    async def finished() -> bool:
        return await unfinished(redis, prefix) == []

    await eventually(finished)


async def test_history_off_stops_a_backfill_and_nothing_more_is_recorded(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    redis: Redis,
    prefix: str,
) -> None:
    discord_emu.user(BOB, "bob")
    week_of_chatter(discord_emu, 250)
    held = discord_emu.hold("GET", HISTORY, after=1)
    engine = await make_engine()
    await start_bot(engine, message_content=True)
    await answered(discord_emu, history_command(discord_emu, "on", backfill="7d"), "Recording is on:")
    await discord_emu.wait_until(lambda: len(held.waiting) == 1, 10)

    async def first_page() -> bool:
        return len(await logged(engine)) == 100

    await eventually(first_page)
    off = history_command(discord_emu, "off")
    assert await answered(discord_emu, off, "Recording is off") == (
        "Recording is off, and everything recorded in this chat is deleted."
    )
    held.release()  # the second page comes back after all: nothing of it is kept
    await shown(discord_emu, STOPPED_OFF)

    async def stopped() -> bool:
        return await unfinished(redis, prefix) == []

    await eventually(stopped)
    assert await logged(engine) == []
    left = [
        key async for key in redis.scan_iter(match=Keys(prefix).chat_log_pattern("discord", str(CHANNEL)))
    ]
    assert left == []
    assert len(pages(discord_emu)) == 2  # no page after the one that was on its way


async def test_without_message_content_nothing_blank_is_recorded_and_the_chat_is_told_once(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    redis: Redis,
    prefix: str,
) -> None:
    """Herald as deployed by default: the intent neither approved nor asked for. Discord
    sends others' guild messages empty, live and in history, unless they mention Herald."""
    discord_emu.privileged_intents = 0
    bob = discord_emu.user(BOB, "bob")
    me = bot_user(discord_emu)
    mention = f"<@{discord_emu.bot_id}>"
    discord_emu.seed_history(
        CHANNEL,
        [
            *((BOB, f"hidden plans {i}", ago(7200 - i)) for i in range(5)),
            (ada["id"], f"{mention} an old question", ago(3600)),  # its text comes: it mentions Herald
        ],
    )
    engine = await make_engine()
    await start_bot(engine)
    told = notice(CONTENT_ADVICE)

    def notices() -> list[BotMessage]:
        return [m for m in discord_emu.messages_in(CHANNEL) if m.content == told]

    answer = await answered(
        discord_emu, history_command(discord_emu, "on", backfill="1d"), "Recording is on:"
    )
    assert "I'm also reading back the last day" in answer
    assert answer.endswith(
        "\n\n⚠️ " + f"Messages here reach me without their text, except those addressed "
        f"to me, so only those can be recorded. {CONTENT_ADVICE}"
    )
    await shown(
        discord_emu, "Backfill done: 1 message from the last day recorded. 5 more had no text I could read."
    )
    assert len(notices()) == 1
    assert [m.text for m in await logged(engine)] == ["an old question"]

    # live, on two replicas: nothing blank is kept, and nobody is told again
    await start_bot(await make_engine())
    for i in range(3):
        discord_emu.user_message(CHANNEL, bob, f"live secret {i}", guild_id=GUILD)
    discord_emu.user_message(CHANNEL, ada, f"{mention} are you there", guild_id=GUILD, mentions=[me])
    await settled(discord_emu, CHANNEL, "You said: are you there")

    async def asked() -> bool:
        return [m.text for m in await logged(engine)] == ["an old question", "are you there"]

    await eventually(asked)
    assert len(notices()) == 1
    key = Keys(prefix).chat_log("discord", str(CHANNEL), "unreadable")
    assert 0 < await redis.ttl(key) <= 86400  # remembered for a day, by every replica


async def test_a_fresh_chat_is_told_when_its_first_message_comes_without_text(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], make_engine: EngineFactory
) -> None:
    discord_emu.privileged_intents = 0
    bob = discord_emu.user(BOB, "bob")
    engine = await make_engine()
    bot: DiscordBot = await start_bot(engine)
    assert bot.client.intents.message_content is False
    await answered(discord_emu, history_command(discord_emu, "on"), "Recording is on:")
    for i in range(3):
        discord_emu.user_message(CHANNEL, bob, f"it comes empty {i}", guild_id=GUILD)
    told = notice(CONTENT_ADVICE)
    await settled(discord_emu, CHANNEL, told)
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> hi", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await settled(discord_emu, CHANNEL, "You said: hi")
    assert sum(m.content == told for m in discord_emu.messages_in(CHANNEL)) == 1
    assert [m.text for m in await logged(engine)] == ["hi"]


async def test_a_channel_herald_may_not_read_ends_the_backfill_with_the_reason(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    redis: Redis,
    prefix: str,
) -> None:
    """Without Read Message History, Discord answers an empty history: Herald says why
    instead of reporting nothing found. (A backfill reaches no further than the retention.)"""
    week_of_chatter(discord_emu, 5)
    discord_emu.overwrite(CHANNEL, GUILD + 1, deny=READ_MESSAGE_HISTORY)  # the bot's own role
    await start_bot(await make_engine(), message_content=True)
    asked = history_command(discord_emu, "on", retention="2d", backfill="7d")
    answer = await answered(discord_emu, asked, "Recording is on:")
    assert "reading back the last 2 days (as far back as the retention goes)" in answer
    await shown(discord_emu, f"Backfill stopped: {NO_ACCESS}")

    async def ended() -> bool:
        return await unfinished(redis, prefix) == []

    await eventually(ended)
    assert pages(discord_emu) == []

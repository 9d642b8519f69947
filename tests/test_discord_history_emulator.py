"""Channel history, edits and deletions in the Discord emulator, proven with the real discord.py.

What /search and /summary will rely on: ``channel.history`` pages seeded history exactly in
both directions, the history route is paced by its own rate-limit window, permissions and the
MESSAGE_CONTENT intent shape what comes back, and MESSAGE_UPDATE / MESSAGE_DELETE /
MESSAGE_DELETE_BULK reach discord.py's raw events while history follows. Raw aiohttp requests
are used only to see wire answers that discord.py would hide or turn into exceptions.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import discord
import pytest

from tests.emulators.discord import (
    MESSAGE_CONTENT,
    PRIVILEGED_INTENTS,
    READ_MESSAGE_HISTORY,
    VIEW_CHANNEL,
    DiscordEmulator,
    PastMessage,
)
from tests.test_discord_emulator import ADA, BOB, CHANNEL, GUILD, THREAD, Bot, raw, running, world

EVERY = dt.timedelta(seconds=7)
HISTORY = f"/channels/{CHANNEL}/messages"


def hours_ago(hours: float) -> dt.datetime:
    """A past instant at millisecond precision (what a snowflake keeps)."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def chatter(count: int, start: dt.datetime, authors: Sequence[int] = (ADA, BOB)) -> list[PastMessage]:
    return [PastMessage(authors[i % len(authors)], f"message {i}", start + i * EVERY) for i in range(count)]


def wire_ids(body: Any) -> list[int]:
    return [int(m["id"]) for m in body]


class HistoryBot(Bot):
    """Also records the raw edit and delete events (they fire for uncached messages too)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.raw_edits: list[discord.RawMessageUpdateEvent] = []
        self.raw_deletes: list[discord.RawMessageDeleteEvent] = []
        self.raw_bulk: list[discord.RawBulkMessageDeleteEvent] = []

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.raw_edits.append(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.raw_deletes.append(payload)

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        self.raw_bulk.append(payload)


def with_content() -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        world(emulator)
        yield emulator


@pytest.fixture
async def bot(emu: DiscordEmulator) -> AsyncIterator[HistoryBot]:
    async with running(emu, HistoryBot()) as client:
        yield client


def text_channel(client: discord.Client, channel_id: int = CHANNEL) -> discord.TextChannel:
    channel = client.get_channel(channel_id)
    assert isinstance(channel, discord.TextChannel)
    return channel


# --- seeding and paging ------------------------------------------------------------------


async def test_seeded_ids_are_snowflakes_of_their_times(emu: DiscordEmulator) -> None:
    start = hours_ago(2)
    ids = emu.seed_history(
        CHANNEL, [(ADA, "first", start), (BOB, "same ms", start), PastMessage(ADA, "later", start + EVERY)]
    )
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [discord.utils.snowflake_time(i) for i in ids] == [start, start, start + EVERY]
    assert ids[1] == ids[0] + 1  # one millisecond, counted up in the low bits in the order given
    wire = emu.message(ids[0])
    assert wire is not None and dt.datetime.fromisoformat(wire["timestamp"]) == start
    assert (wire["author"]["id"], wire["content"], wire["edited_timestamp"]) == (str(ADA), "first", None)
    now_ids = emu.seed_history(CHANNEL, [(ADA, "just now", time.time())])
    live = emu.user_message(CHANNEL, emu.user(ADA), "live")
    assert live > now_ids[0] > ids[-1]  # live messages still sort after anything seeded
    with pytest.raises(ValueError, match="between"):
        emu.seed_history(CHANNEL, [(ADA, "from the future", time.time() + 60)])
    with pytest.raises(ValueError, match="naive"):
        emu.seed_history(CHANNEL, [(ADA, "no timezone", dt.datetime(2024, 1, 1))])
    with pytest.raises(ValueError, match="reply"):
        emu.seed_history(CHANNEL, [PastMessage(ADA, "a reply to a later one", start, reply_to=live)])


async def test_oldest_first_history_pages_a_few_hundred_messages_exactly(
    emu: DiscordEmulator, bot: HistoryBot
) -> None:
    emu.history_bucket_window = 0.2  # paced, but quickly: this test is about paging
    start = hours_ago(3)
    burst = [PastMessage(ADA, f"burst {i}", start + 347 * EVERY) for i in range(3)]
    ids = emu.seed_history(CHANNEL, chatter(347, start) + burst)
    assert len(set(ids)) == 350 and ids == sorted(ids)
    channel = text_channel(bot)

    everything = [m async for m in channel.history(limit=None, oldest_first=True)]
    assert [m.id for m in everything] == ids  # no gaps, no duplicates, oldest first
    assert [m.content for m in everything[:2]] == ["message 0", "message 1"]
    assert [m.content for m in everything[-3:]] == ["burst 0", "burst 1", "burst 2"]
    first = everything[0]
    assert first.created_at == start and first.author.id == ADA and first.edited_at is None
    gets = [c for c in emu.calls if c.method == "GET" and c.path == HISTORY]
    # discord.py pages with after=, continuing after the newest message of each page
    assert [(c.query["after"], c.query["limit"]) for c in gets] == [
        ("0", "100"),
        (str(ids[99]), "100"),
        (str(ids[199]), "100"),
        (str(ids[299]), "100"),
    ]

    middle = [
        m.id async for m in channel.history(limit=120, oldest_first=True, after=discord.Object(ids[99]))
    ]
    assert middle == ids[100:220]
    by_time = [m.id async for m in channel.history(limit=5, after=start + 10 * EVERY)]  # oldest first
    assert by_time == ids[11:16]
    newest = [m.id async for m in channel.history(limit=150)]
    assert newest == ids[::-1][:150]
    between = [
        m.id
        async for m in channel.history(
            limit=None, before=discord.Object(ids[250]), after=discord.Object(ids[10])
        )
    ]
    assert between == ids[11:250]  # with after=, discord.py defaults to oldest first
    newest_between = [
        m.id
        async for m in channel.history(
            limit=None, before=discord.Object(ids[250]), after=discord.Object(ids[10]), oldest_first=False
        )
    ]
    assert newest_between == ids[249:10:-1]  # paged with before=, filtered by after
    around = [m.id async for m in channel.history(limit=101, around=discord.Object(ids[200]))]
    assert around == ids[250:149:-1]  # 50 older, the message, 50 newer
    assert emu.throttled() == []


async def test_history_route_answers_as_documented_on_the_wire(emu: DiscordEmulator, bot: HistoryBot) -> None:
    emu.history_bucket_limit = 0  # many raw requests in a row: no window here
    start = hours_ago(1)
    ids = emu.seed_history(CHANNEL, chatter(60, start))
    reply = emu.seed_history(CHANNEL, [PastMessage(BOB, "a reply", start + 60 * EVERY, reply_to=ids[0])])[0]
    ids.append(reply)

    async def page(query: str) -> list[int]:
        status, _, body = await raw(emu, "GET", f"{HISTORY}?{query}")
        assert status == 200, body
        return wire_ids(body)

    assert await page(f"after={ids[4]}&limit=3") == [
        ids[7],
        ids[6],
        ids[5],
    ]  # the oldest after it, newest first
    assert await page(f"before={ids[10]}&limit=3") == [ids[9], ids[8], ids[7]]
    assert await page(f"around={ids[10]}&limit=4") == ids[12:7:-1]  # even limit: limit + 1
    assert await page(f"around={ids[10]}&limit=5") == ids[12:7:-1]
    assert await page(f"around={ids[0]}&limit=4") == ids[2::-1]
    assert await page("") == ids[::-1][:50]  # default limit 50, newest first
    assert await page(f"after={ids[-1]}") == []

    status, _, body = await raw(emu, "GET", f"{HISTORY}?limit=2")
    newest, older = body
    assert newest["id"] == str(reply) and newest["type"] == 19
    assert newest["message_reference"]["message_id"] == str(ids[0])
    assert newest["referenced_message"]["content"] == "message 0"
    assert newest["mentions"][0]["id"] == str(ADA)  # a reply pings its author
    assert older["type"] == 0 and "message_reference" not in older and "guild_id" not in older
    for key in (
        "channel_id",
        "author",
        "content",
        "timestamp",
        "edited_timestamp",
        "tts",
        "mention_everyone",
    ):
        assert key in older
    for key in ("mentions", "mention_roles", "attachments", "embeds", "pinned", "flags", "components"):
        assert key in older
    assert dt.datetime.fromisoformat(older["timestamp"]) == start + 59 * EVERY

    for query, field, code in [
        ("limit=0", "limit", "NUMBER_TYPE_MIN"),
        ("limit=101", "limit", "NUMBER_TYPE_MAX"),
        ("limit=many", "limit", "NUMBER_TYPE_COERCE"),
        ("before=yesterday", "before", "NUMBER_TYPE_COERCE"),
        (f"around={ids[3]}&after={ids[1]}", "after", "MUTUALLY_EXCLUSIVE"),
    ]:
        status, headers, body = await raw(emu, "GET", f"{HISTORY}?{query}")
        assert (status, body["code"], body["message"]) == (400, 50035, "Invalid Form Body"), query
        assert body["errors"][field]["_errors"][0]["code"] == code, query
        assert headers["Content-Type"] == "application/json"
    status, _, body = await raw(emu, "GET", "/channels/777/messages")
    assert (status, body) == (404, {"message": "Unknown Channel", "code": 10003})

    for bad in (0, 101):  # discord.py's own HTTP client passes a bad limit through and raises
        with pytest.raises(discord.HTTPException) as refused:
            await bot.http.logs_from(CHANNEL, bad)
        assert (refused.value.status, refused.value.code) == (400, 50035)


# --- rate limits -------------------------------------------------------------------------


async def test_history_has_its_own_window_and_429s_beyond_it(emu: DiscordEmulator) -> None:
    other = f"/channels/{CHANNEL + 1}/messages"
    status, headers, _ = await raw(emu, "GET", f"{other}?limit=1")
    assert status == 200
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("5", "4")  # 5 per 5 s
    assert 4.0 < float(headers["X-RateLimit-Reset-After"]) <= 5.0
    assert (
        abs(float(headers["X-RateLimit-Reset"]) - time.time() - float(headers["X-RateLimit-Reset-After"])) < 1
    )
    bucket = headers["X-RateLimit-Bucket"]
    _, post_headers, _ = await raw(emu, "POST", f"/channels/{CHANNEL + 1}/messages", {"content": "hi"})
    assert post_headers["X-RateLimit-Bucket"] != bucket and post_headers["X-RateLimit-Limit"] == "5"
    for remaining in ("3", "2", "1", "0"):
        status, headers, _ = await raw(emu, "GET", other)
        assert (status, headers["X-RateLimit-Remaining"]) == (200, remaining)
    status, headers, body = await raw(emu, "GET", other)
    assert status == 429
    assert body == {
        "message": "You are being rate limited.",
        "retry_after": body["retry_after"],
        "global": False,
    }
    assert 0 < body["retry_after"] <= 5.0
    assert int(headers["Retry-After"]) >= body["retry_after"]
    assert (headers["X-RateLimit-Scope"], headers["X-RateLimit-Remaining"]) == ("user", "0")
    assert headers["X-RateLimit-Bucket"] == bucket and headers["Content-Type"] == "application/json"
    assert [(c.method, c.path) for c in emu.throttled()] == [("GET", other)]
    # the window is per channel (a top-level resource); the bucket name is the route's
    status, headers, _ = await raw(emu, "GET", HISTORY)
    assert status == 200 and headers["X-RateLimit-Bucket"] == bucket
    assert emu.throttled(rf"^{HISTORY}$") == []


async def test_discord_py_paces_history_from_the_headers_and_never_gets_a_429(
    emu: DiscordEmulator, bot: HistoryBot
) -> None:
    emu.history_bucket_limit, emu.history_bucket_window = 2, 0.5
    ids = emu.seed_history(CHANNEL, chatter(450, hours_ago(5)))
    channel = text_channel(bot)
    assert [m.id async for m in channel.history(limit=None, oldest_first=True)] == ids
    gets = [c for c in emu.calls if c.method == "GET" and c.path == HISTORY]
    assert [c.status for c in gets] == [200] * 5  # pages of 100, 100, 100, 100, 50
    assert emu.throttled() == []
    assert gets[2].at - gets[0].at >= 0.5 - 0.01  # it waited for the window from the headers
    assert gets[4].at - gets[2].at >= 0.5 - 0.01


# --- permissions -------------------------------------------------------------------------


async def test_permissions_decide_between_forbidden_empty_and_history(
    emu: DiscordEmulator, bot: HistoryBot
) -> None:
    ids = emu.seed_history(CHANNEL, chatter(5, hours_ago(1)))
    emu.seed_history(THREAD, chatter(2, hours_ago(1)))
    channel = text_channel(bot)
    thread = bot.get_channel(THREAD)
    assert isinstance(thread, discord.Thread)

    emu.overwrite(CHANNEL, GUILD + 1, deny=READ_MESSAGE_HISTORY)  # on the bot's managed role
    await emu.wait_until(lambda: not channel.permissions_for(channel.guild.me).read_message_history)
    assert [m async for m in channel.history(limit=10)] == []  # documented: no messages, no error
    with pytest.raises(discord.Forbidden) as no_history:
        await channel.fetch_message(ids[0])
    assert no_history.value.code == 50013

    emu.overwrite(CHANNEL, GUILD, deny=VIEW_CHANNEL)  # @everyone may not see the channel
    await emu.wait_until(lambda: not channel.permissions_for(channel.guild.me).view_channel)
    with pytest.raises(discord.Forbidden) as hidden:
        [m async for m in channel.history(limit=10)]
    assert (hidden.value.status, hidden.value.code, hidden.value.text) == (403, 50001, "Missing Access")
    with pytest.raises(discord.Forbidden):
        [m async for m in thread.history(limit=10)]  # threads inherit their parent's overwrites
    emu.user_message(CHANNEL, emu.user(ADA), f"<@{emu.bot_id}> unseen")
    emu.user_message(CHANNEL + 1, emu.user(ADA), f"<@{emu.bot_id}> seen")
    await emu.wait_until(lambda: len(bot.seen) == 1)
    assert bot.seen[0].content == f"<@{emu.bot_id}> seen"  # no event from a channel it cannot view

    emu.overwrite(CHANNEL, emu.bot_id, allow=VIEW_CHANNEL | READ_MESSAGE_HISTORY)  # the member wins
    await emu.wait_until(lambda: channel.permissions_for(channel.guild.me).read_message_history)
    assert len([m async for m in channel.history(limit=10)]) == 6
    assert len([m async for m in thread.history(limit=10)]) == 2
    assert emu.channel_permissions(CHANNEL, BOB) & (VIEW_CHANNEL | READ_MESSAGE_HISTORY) == 0
    assert emu.channel_permissions(CHANNEL, ADA) & VIEW_CHANNEL  # the owner sees everything
    dm = emu.dm_channel(ADA)
    emu.seed_history(dm, [(ADA, "a DM", hours_ago(1))])
    dm_channel = await (await bot.fetch_user(ADA)).create_dm()
    assert [m.content async for m in dm_channel.history(limit=5)] == ["a DM"]


# --- message content ---------------------------------------------------------------------


async def test_without_message_content_history_hides_content_but_documented_exceptions() -> None:
    async with DiscordEmulator(privileged_intents=PRIVILEGED_INTENTS & ~MESSAGE_CONTENT) as emu:
        world(emu)
        async with running(emu, HistoryBot()) as bot:  # IDENTIFY cannot ask for it (4014)
            channel = text_channel(bot)
            start = hours_ago(1)
            ids = emu.seed_history(
                CHANNEL,
                [
                    PastMessage(ADA, "plain chatter", start, embeds=[{"title": "an embed"}]),
                    PastMessage(BOB, f"<@{emu.bot_id}> asks the bot", start + EVERY),
                ],
            )
            mine = await channel.send("the bot's own words", file=discord.File(io.BytesIO(b"x"), "a.txt"))
            emu.user_message(CHANNEL, emu.user(ADA), "said live")
            emu.user_message(CHANNEL, emu.user(BOB), "a reply pinging the bot", reply_to=mine.id)
            seen = [m async for m in channel.history(limit=10, oldest_first=True)]
            assert [(m.content, len(m.embeds), len(m.attachments)) for m in seen] == [
                ("", 0, 0),
                (f"<@{emu.bot_id}> asks the bot", 0, 0),
                ("the bot's own words", 0, 1),
                ("", 0, 0),
                ("a reply pinging the bot", 0, 0),
            ]
            dm = emu.dm_channel(ADA)
            emu.seed_history(dm, [(ADA, "private words", start)])
            dm_channel = await (await bot.fetch_user(ADA)).create_dm()
            assert [m.content async for m in dm_channel.history(limit=5)] == ["private words"]

            emu.edit_message(ids[0], "plain chatter, edited")
            await emu.wait_until(lambda: len(bot.raw_edits) == 1)
            assert bot.raw_edits[0].message.content == "" and bot.raw_edits[0].data["content"] == ""

            # Approved now, though this session never asked for it: REST shows content, the
            # gateway (which goes by IDENTIFY) still does not.
            emu.privileged_intents |= MESSAGE_CONTENT
            seen = [m async for m in channel.history(limit=2, oldest_first=True)]
            assert [(m.content, len(m.embeds)) for m in seen] == [
                ("plain chatter, edited", 1),
                (f"<@{emu.bot_id}> asks the bot", 0),
            ]
            assert (await channel.fetch_message(ids[0])).content == "plain chatter, edited"
            emu.edit_message(ids[0], "edited twice")
            await emu.wait_until(lambda: len(bot.raw_edits) == 2)
            assert bot.raw_edits[1].message.content == ""


# --- edits and deletions -----------------------------------------------------------------


async def test_edits_and_deletions_reach_raw_events_and_history(emu: DiscordEmulator) -> None:
    async with running(emu, HistoryBot(intents=with_content())) as bot:
        channel = text_channel(bot)
        ids = emu.seed_history(CHANNEL, chatter(10, hours_ago(24)))
        old = emu.seed_history(CHANNEL, [(ADA, "from last month", hours_ago(24 * 30))])[0]
        live = emu.user_message(CHANNEL, emu.user(ADA), "live words")
        await emu.wait_until(lambda: len(bot.seen) == 1)  # discord.py caches this one

        emu.edit_message(ids[2], "corrected")
        emu.edit_message(live, f"live words, now for <@{BOB}>")
        await emu.wait_until(lambda: len(bot.raw_edits) == 2)
        seeded_edit, live_edit = bot.raw_edits
        assert (seeded_edit.message_id, seeded_edit.channel_id, seeded_edit.guild_id) == (
            ids[2],
            CHANNEL,
            GUILD,
        )
        assert seeded_edit.cached_message is None and seeded_edit.message.content == "corrected"
        assert seeded_edit.message.edited_at is not None and seeded_edit.data["tts"] is False
        assert seeded_edit.message.created_at == discord.utils.snowflake_time(ids[2])
        assert live_edit.cached_message is not None and live_edit.cached_message.content == "live words"
        await emu.wait_until(lambda: len(bot.edited) == 1)  # on_message_edit for the cached one
        assert bot.edited[0].content == f"live words, now for <@{BOB}>"
        assert [u.id for u in bot.edited[0].mentions] == [BOB]
        fetched = await channel.fetch_message(ids[2])
        assert fetched.content == "corrected" and fetched.edited_at is not None

        emu.delete_message(ids[0])
        emu.bulk_delete(CHANNEL, [ids[5], ids[6], live])
        await emu.wait_until(lambda: len(bot.raw_deletes) == 1 and len(bot.raw_bulk) == 1)
        [deleted] = bot.raw_deletes
        assert (deleted.message_id, deleted.channel_id, deleted.guild_id) == (ids[0], CHANNEL, GUILD)
        [bulk] = bot.raw_bulk
        assert (bulk.message_ids, bulk.channel_id, bulk.guild_id) == ({ids[5], ids[6], live}, CHANNEL, GUILD)
        assert [m.id for m in bulk.cached_messages] == [live]
        remaining = [m.id async for m in channel.history(limit=None, oldest_first=True)]
        assert remaining == [old] + [i for i in ids if i not in (ids[0], ids[5], ids[6])]
        assert emu.message(ids[0]) is None
        assert [m["id"] for m in emu.history(CHANNEL)] == [str(i) for i in remaining]
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(ids[5])

        with pytest.raises(ValueError, match="does not exist"):
            emu.delete_message(ids[0])
        with pytest.raises(ValueError, match="2 to 100"):
            emu.bulk_delete(CHANNEL, [ids[1]])
        with pytest.raises(ValueError, match="two weeks"):
            emu.bulk_delete(CHANNEL, [ids[1], old])
        mine = await channel.send("the bot's")
        with pytest.raises(ValueError, match="REST"):
            emu.edit_message(mine.id, "not through here")

        emu.user_message(THREAD, emu.user(BOB), "in the thread")
        in_thread = emu.seed_history(THREAD, [(BOB, "older, in the thread", hours_ago(2))])[0]
        emu.edit_message(in_thread, "edited in the thread")
        await emu.wait_until(lambda: len(bot.raw_edits) == 3)
        assert (bot.raw_edits[2].channel_id, bot.raw_edits[2].message.content) == (
            THREAD,
            "edited in the thread",
        )


# --- threads -----------------------------------------------------------------------------


async def test_thread_messages_are_served_by_the_thread_id(emu: DiscordEmulator, bot: HistoryBot) -> None:
    start = hours_ago(2)
    parent_ids = emu.seed_history(CHANNEL, chatter(3, start))
    emu.thread(GUILD, CHANNEL, parent_ids[1], "started from a message")
    thread_ids = emu.seed_history(parent_ids[1], chatter(4, start + 2 * EVERY, authors=[BOB]))
    await emu.wait_until(lambda: isinstance(bot.get_channel(parent_ids[1]), discord.Thread))
    thread = bot.get_channel(parent_ids[1])
    assert isinstance(thread, discord.Thread)
    assert [m.id async for m in thread.history(limit=None, oldest_first=True)] == thread_ids
    parent = [m async for m in text_channel(bot).history(limit=None, oldest_first=True)]
    assert [m.id for m in parent] == parent_ids  # the thread's messages are not the parent's
    starter = parent[1]
    assert starter.flags.has_thread and starter.thread is not None and starter.thread.id == thread.id
    status, _, body = await raw(emu, "GET", f"/channels/{thread.id}/messages")
    assert status == 200 and [m["position"] for m in body] == [3, 2, 1, 0]
    assert {m["channel_id"] for m in body} == {str(thread.id)}

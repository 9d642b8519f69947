"""The Discord emulator behaves like Discord: proven with the real discord.py.

Every test drives discord.py's own ``Client``/``AutoShardedClient``, ``CommandTree`` and
interaction objects over real HTTP and a real WebSocket, so discord.py's encoding, pacing,
parsing and error mapping are part of what is checked. Raw aiohttp requests are used only
to see wire answers that discord.py would turn into exceptions or hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.emulators.discord import DiscordEmulator, point_discord_py_at

GUILD = 2 << 22  # shard 0 of 2
GUILD_B = 3 << 22  # shard 1 of 2
CHANNEL = GUILD + 2
CHANNEL_B = GUILD_B + 2
THREAD = GUILD + 50
ADA = 42
BOB = 43

ClientT = TypeVar("ClientT", bound=discord.Client)


class Bot(discord.Client):
    """A client that records what it saw (the way an adapter would react to events)."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("intents", discord.Intents.default())
        # discord.py waits guild_ready_timeout (2 s) after the last GUILD_CREATE before READY.
        options.setdefault("guild_ready_timeout", 0.05)
        super().__init__(**options)
        self.seen: list[discord.Message] = []
        self.edited: list[discord.Message] = []

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every IDENTIFY but the first (also after an invalid session)."""

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)

    async def on_message_edit(self, before: discord.Message, after: discord.Message) -> None:
        self.edited.append(after)


class ShardedBot(discord.AutoShardedClient):
    def __init__(self, **options: Any) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05, **options)
        self.seen: list[discord.Message] = []

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every IDENTIFY but the first; Discord's limit is ours to model."""

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)


class _ErrorLog(logging.Handler):
    """discord.py logs (rather than raises) handler errors and reconnects: collect them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.asynccontextmanager
async def running(
    emu: DiscordEmulator, client: ClientT, *, allow_reconnects: bool = False
) -> AsyncIterator[ClientT]:
    """Log in and connect ``client`` to the emulator, wait for READY, always close it.

    Afterwards, an exception from ``client.start`` or an error discord.py logged (a parse
    failure, a handler exception, a reconnect) fails the test.
    """
    errors = _ErrorLog()
    logging.getLogger("discord").addHandler(errors)
    try:
        with point_discord_py_at(emu):
            task = asyncio.create_task(client.start(emu.token))
            try:
                ready = asyncio.create_task(client.wait_until_ready())
                done, _ = await asyncio.wait({ready, task}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    ready.cancel()
                    task.result()  # raises what start() raised
                assert ready in done, "client never became ready"
                yield client
            finally:
                await client.close()
                finished, _ = await asyncio.wait({task}, timeout=2)
                if not finished:
                    task.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError("client.start failed") from task.exception()
        logged = [
            r.getMessage()
            for r in errors.records
            if not (allow_reconnects and r.getMessage().startswith("Attempting a reconnect"))
        ]
        assert logged == [], f"discord.py logged errors: {logged}"
    finally:
        logging.getLogger("discord").removeHandler(errors)


def world(emu: DiscordEmulator) -> None:
    emu.guild(GUILD, "Guild A", channels=[CHANNEL, CHANNEL + 1], owner_id=ADA)
    emu.user(ADA, "ada")
    emu.user(BOB, "bob")
    emu.member(GUILD, BOB)
    emu.thread(GUILD, CHANNEL, THREAD, "help")


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        world(emulator)
        yield emulator


@pytest.fixture
async def bot(emu: DiscordEmulator) -> AsyncIterator[Bot]:
    async with running(emu, Bot()) as client:
        yield client


async def raw(
    emu: DiscordEmulator, method: str, path: str, body: Any = None, *, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request as discord.py would send it, answered without discord.py's interpretation."""
    headers = {"Authorization": f"Bot {token or emu.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{emu.url}/api/v10{path}", json=body, headers=headers) as response,
    ):
        data = await response.json(content_type=None) if response.status != 204 else None
        return response.status, dict(response.headers), data


# --- connecting --------------------------------------------------------------------------


async def test_client_logs_in_and_sees_guilds_channels_and_its_managed_role(
    emu: DiscordEmulator, bot: Bot
) -> None:
    assert bot.user is not None and bot.user.id == emu.bot_id and bot.user.bot
    assert bot.application_id == emu.application_id
    assert [(c.method, c.path) for c in emu.calls[:2]] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    ]
    identify = emu.identifies[0]
    assert identify["intents"] == discord.Intents.default().value and "shard" not in identify
    guild = bot.get_guild(GUILD)
    assert guild is not None and guild.name == "Guild A" and guild.owner_id == ADA
    assert {c.id for c in guild.text_channels} == {CHANNEL, CHANNEL + 1}
    assert [t.id for t in guild.threads] == [THREAD] and guild.threads[0].parent_id == CHANNEL
    me = guild.me
    managed = [r for r in me.roles if r.managed]
    assert [r.id for r in managed] == [GUILD + 1] and managed[0].tags is not None
    assert managed[0].tags.bot_id == emu.bot_id
    assert guild.default_role.id == GUILD
    # Without GUILD_PRESENCES, GUILD_CREATE lists only the bot's own member.
    assert guild.get_member(BOB) is None and guild.member_count == 3
    assert emu.connected() == [(0, 1)]


async def test_auto_sharded_client_gets_shard_count_from_gateway_bot_and_splits_guilds() -> None:
    async with DiscordEmulator(shards=2) as emu:
        world(emu)
        emu.guild(GUILD_B, "Guild B")
        async with running(emu, ShardedBot()) as client:
            assert ("GET", "/gateway/bot") in [(c.method, c.path) for c in emu.calls]
            assert sorted(i["shard"] for i in emu.identifies) == [[0, 2], [1, 2]]
            assert client.shard_count == 2 and emu.connected() == [(0, 2), (1, 2)]
            guild_a, guild_b = client.get_guild(GUILD), client.get_guild(GUILD_B)
            assert guild_a is not None and guild_a.shard_id == 0
            assert guild_b is not None and guild_b.shard_id == 1
            emu.user_message(CHANNEL_B, emu.user(ADA), f"<@{emu.bot_id}> on shard one")
            dm = emu.dm_channel(ADA)
            emu.user_message(dm, emu.user(ADA), "in a DM")
            await emu.wait_until(lambda: len(client.seen) == 2)
            await asyncio.sleep(0.05)  # a duplicate on the other shard would arrive by now
            assert [m.content for m in client.seen] == [f"<@{emu.bot_id}> on shard one", "in a DM"]
            assert client.seen[0].guild is guild_b and client.seen[1].guild is None


async def test_privileged_intent_not_enabled_closes_4014() -> None:
    async with DiscordEmulator(privileged_intents=0) as emu:
        world(emu)
        intents = discord.Intents.default()
        intents.message_content = True
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with running(emu, Bot(intents=intents)):
                pass
        assert (4014, "Disallowed intent(s).") in emu.gateway_closes


async def test_wrong_token_fails_login(emu: DiscordEmulator) -> None:
    status, headers, body = await raw(emu, "GET", "/users/@me", token="nope")
    assert (status, body) == (401, {"message": "401: Unauthorized", "code": 0})
    assert headers["Content-Type"] == "application/json"
    client = Bot()
    with point_discord_py_at(emu), pytest.raises(discord.LoginFailure):
        await client.login("nope")
    await client.close()


async def test_world_changes_after_ready_arrive_as_events(emu: DiscordEmulator, bot: Bot) -> None:
    emu.guild(GUILD_B, "Guild B")
    emu.text_channel(GUILD, CHANNEL + 5, "news")
    emu.thread(GUILD, CHANNEL, THREAD + 1, "late thread")
    await emu.wait_until(
        lambda: bot.get_guild(GUILD_B) is not None and bot.get_channel(THREAD + 1) is not None
    )
    assert isinstance(bot.get_channel(CHANNEL_B), discord.TextChannel)
    news = bot.get_channel(CHANNEL + 5)
    assert isinstance(news, discord.TextChannel) and news.name == "news"


# --- incoming messages -------------------------------------------------------------------


async def test_message_create_reaches_on_message_with_mentions_and_reference(
    emu: DiscordEmulator, bot: Bot
) -> None:
    ada = emu.user(ADA)
    first = emu.user_message(CHANNEL, emu.user(BOB), f"<@{emu.bot_id}> what is 2+2?")
    reply = emu.user_message(CHANNEL, ada, f"<@{emu.bot_id}> <@&{GUILD + 1}> and 3+3?", reply_to=first)
    await emu.wait_until(lambda: len(bot.seen) == 2)
    message = bot.seen[1]
    assert message.id == reply and message.type is discord.MessageType.reply
    assert message.content == f"<@{emu.bot_id}> <@&{GUILD + 1}> and 3+3?"
    assert bot.user in message.mentions and BOB in [u.id for u in message.mentions]  # the reply pinged bob
    assert [r.id for r in message.role_mentions] == [GUILD + 1]
    assert message.reference is not None and message.reference.message_id == first
    resolved = message.reference.resolved
    assert isinstance(resolved, discord.Message) and resolved.content == f"<@{emu.bot_id}> what is 2+2?"
    assert isinstance(message.author, discord.Member) and message.author.id == ADA
    assert isinstance(message.channel, discord.TextChannel) and message.channel.id == CHANNEL


async def test_without_message_content_intent_only_mentions_and_dms_carry_content(
    emu: DiscordEmulator, bot: Bot
) -> None:
    ada = emu.user(ADA)
    emu.user_message(CHANNEL, ada, "plain chatter")
    emu.user_message(THREAD, ada, f"hey <@{emu.bot_id}>")
    emu.user_message(emu.dm_channel(ADA), ada, "private words")
    await emu.wait_until(lambda: len(bot.seen) == 3)
    assert [m.content for m in bot.seen] == ["", f"hey <@{emu.bot_id}>", "private words"]
    assert isinstance(bot.seen[1].channel, discord.Thread)
    assert isinstance(bot.seen[2].channel, discord.DMChannel)


async def test_content_exceptions_replies_and_managed_role_mentions(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    mine = await channel.send("a regular bot message")
    ada = emu.user(ADA)
    emu.user_message(CHANNEL, ada, "pinging reply", reply_to=mine.id)
    emu.user_message(CHANNEL, ada, "silent reply", reply_to=mine.id, ping_reply=False)
    emu.user_message(CHANNEL, ada, f"<@&{GUILD + 1}> via the bot's role")
    emu.role_mention_reveals_content = True
    emu.user_message(CHANNEL, ada, f"<@&{GUILD + 1}> via the bot's role, switch on")
    emu.strict_commands = False
    command = emu.slash_command("ping", channel_id=CHANNEL, user=ada)
    path = f"/interactions/{command.id}/{command.token}/callback"
    assert (await raw(emu, "POST", path, {"type": 4, "data": {"content": "pong"}}))[0] == 204
    response = emu.interaction_response(command)
    assert response is not None
    emu.user_message(CHANNEL, ada, "reply to a command's answer", reply_to=response.id)
    await emu.wait_until(lambda: len(bot.seen) == 7)  # the bot's own messages come back too
    assert [m.content for m in bot.seen if m.author.id == ADA] == [
        "pinging reply",
        "",
        "",
        f"<@&{GUILD + 1}> via the bot's role, switch on",
        "",
    ]


async def test_message_content_intent_shows_everything(emu: DiscordEmulator) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    async with running(emu, Bot(intents=intents)) as client:
        emu.user_message(CHANNEL, emu.user(ADA), "plain chatter")
        await emu.wait_until(lambda: len(client.seen) == 1)
        assert client.seen[0].content == "plain chatter"


# --- sending -----------------------------------------------------------------------------


async def test_send_records_allowed_mentions_and_who_was_pinged(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    quiet = await channel.send(f"<@{ADA}> @everyone hi", allowed_mentions=discord.AllowedMentions.none())
    loud = await channel.send(f"<@{ADA}> @everyone hi")
    sent = emu.messages_in(CHANNEL)
    assert [m.id for m in sent] == [quiet.id, loud.id]
    assert sent[0].allowed_mentions == {"parse": []} and sent[0].pinged_users == []
    assert sent[1].allowed_mentions is None and sent[1].pinged_users == [ADA]
    assert not sent[1].pinged_everyone  # the bot lacks MENTION_EVERYONE
    assert quiet.mentions == [] and [u.id for u in loud.mentions] == [ADA]
    # Discord echoes the bot's own messages on the gateway.
    await emu.wait_until(lambda: len(bot.seen) == 2)
    assert all(m.author == bot.user for m in bot.seen)


async def test_reply_by_the_bot_pings_the_author_only_when_allowed(emu: DiscordEmulator, bot: Bot) -> None:
    question = emu.user_message(CHANNEL, emu.user(ADA), f"<@{emu.bot_id}> hello")
    await emu.wait_until(lambda: len(bot.seen) == 1)
    await bot.seen[0].reply("hi", mention_author=False)
    await bot.seen[0].reply("hi again")
    quiet, loud = emu.messages_in(CHANNEL)
    assert quiet.message_reference is not None and quiet.message_reference["message_id"] == question
    assert quiet.pinged_users == [] and loud.pinged_users == [ADA]
    wire = emu.message(quiet.id)
    assert wire is not None and wire["type"] == 19 and wire["referenced_message"]["id"] == str(question)


async def test_too_long_and_empty_messages_raise_discords_errors(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert (too_long.value.status, too_long.value.code) == (400, 50035)
    assert "Must be 2000 or fewer in length." in too_long.value.text
    with pytest.raises(discord.HTTPException) as empty:
        await channel.send("   ")
    assert (empty.value.code, empty.value.text) == (50006, "Cannot send an empty message")
    with pytest.raises(discord.NotFound) as unknown:
        await channel.fetch_message(12345)
    assert unknown.value.code == 10008
    assert emu.messages_in(CHANNEL) == []
    await channel.send("x" * 2000)
    status, _, body = await raw(emu, "POST", "/channels/777/messages", {"content": "hi"})
    assert (status, body) == (404, {"message": "Unknown Channel", "code": 10003})


async def test_edit_is_recorded_with_history(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("draft")
    edited = await message.edit(content="final")
    assert edited.content == "final" and edited.edited_at is not None
    [record] = emu.messages_in(CHANNEL)
    assert (record.content, record.edits, record.history) == ("final", 1, ["draft", "final"])
    await emu.wait_until(lambda: len(bot.edited) == 1)
    assert bot.edited[0].content == "final"
    await message.delete()
    assert emu.messages_in(CHANNEL) == []


async def test_files_dms_threads_typing_and_history(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    async with channel.typing():
        sent = await channel.send("see attached", file=discord.File(io.BytesIO(b"hello"), "notes.txt"))
    assert [(a.filename, a.size) for a in sent.attachments] == [("notes.txt", 5)]
    [record] = emu.messages_in(CHANNEL)
    assert record.attachments == ["notes.txt"] and record.content == "see attached"
    post = next(c for c in emu.calls if c.method == "POST" and c.path.endswith("/messages"))
    assert post.files == ["notes.txt"] and post.json["content"] == "see attached"  # payload_json
    assert ("POST", f"/channels/{CHANNEL}/typing", 204) in [(c.method, c.path, c.status) for c in emu.calls]

    ada = await bot.fetch_user(ADA)
    dm_message = await ada.send("a private hello")
    assert dm_message.channel.id == emu.dm_channel(ADA)
    assert [m.content for m in emu.messages_in(emu.dm_channel(ADA))] == ["a private hello"]

    thread = bot.get_channel(THREAD)
    assert isinstance(thread, discord.Thread)
    question = emu.user_message(THREAD, emu.user(BOB), f"<@{emu.bot_id}> in the thread")
    await thread.send("thread answer")
    history = [m async for m in thread.history(limit=10)]
    assert [m.content for m in history] == ["thread answer", f"<@{emu.bot_id}> in the thread"]
    assert (await thread.fetch_message(question)).author.id == BOB


# --- rate limits -------------------------------------------------------------------------


async def test_429_is_waited_out_and_retried(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("draft")
    emu.rate_limit_next("PATCH", r"^/channels/\d+/messages/\d+$", retry_after=0.3)
    await message.edit(content="final")
    first, retried = [c for c in emu.calls if c.method == "PATCH"]
    assert (first.status, retried.status) == (429, 200)
    assert retried.at - first.at >= 0.3
    assert emu.messages_in(CHANNEL)[0].history == ["draft", "final"]


async def test_rate_limit_headers_make_discord_py_pace_itself(emu: DiscordEmulator, bot: Bot) -> None:
    emu.bucket_limit, emu.bucket_window = 2, 0.4
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    for n in range(4):
        await channel.send(f"m{n}")
    posts = [c for c in emu.calls if c.method == "POST" and c.path.endswith("/messages")]
    assert [c.status for c in posts] == [200] * 4  # never a 429: it waited from the headers
    assert posts[2].at - posts[0].at >= 0.4 - 0.01


async def test_ignoring_the_window_gets_a_429_with_discords_headers(emu: DiscordEmulator) -> None:
    emu.bucket_limit = 1
    status, headers, _ = await raw(emu, "POST", f"/channels/{CHANNEL}/messages", {"content": "a"})
    assert status == 200 and headers["X-RateLimit-Remaining"] == "0" and headers["X-RateLimit-Limit"] == "1"
    assert float(headers["X-RateLimit-Reset-After"]) > 0 and headers["X-RateLimit-Bucket"]
    status, headers, body = await raw(emu, "POST", f"/channels/{CHANNEL}/messages", {"content": "b"})
    assert status == 429 and body["message"] == "You are being rate limited." and body["global"] is False
    assert headers["X-RateLimit-Scope"] == "user" and headers["Via"] and "Retry-After" in headers


async def test_global_429_holds_every_route(emu: DiscordEmulator, bot: Bot) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    emu.rate_limit_next("POST", r"/messages$", retry_after=0.2, global_=True)
    started = time.monotonic()
    await channel.send("after the global limit")
    assert time.monotonic() - started >= 0.2
    assert [c.status for c in emu.calls if c.method == "POST"][-2:] == [429, 200]


# --- application commands ----------------------------------------------------------------


async def test_command_tree_sync_and_slash_command_with_defer_edit_and_followup(
    emu: DiscordEmulator, bot: Bot
) -> None:
    tree = app_commands.CommandTree(bot)
    seen: list[tuple[str, int, bool]] = []
    finished: list[str] = []  # handlers whose last request is done

    @tree.command(name="ask", description="Ask Herald")
    @app_commands.describe(prompt="What to ask", count="How many answers")
    async def ask(interaction: discord.Interaction, prompt: str, count: int = 1, loud: bool = False) -> None:
        seen.append((prompt, count, loud))
        await interaction.response.defer()
        await interaction.edit_original_response(content=f"answer to {prompt}")
        await interaction.followup.send(f"and {count - 1} more")
        finished.append("ask")

    @tree.command(name="admin", description="Guild only", guild=discord.Object(GUILD))
    async def admin(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("ok", ephemeral=True)
        finished.append("admin")

    await tree.sync()
    await tree.sync(guild=discord.Object(GUILD))
    assert [c["name"] for c in emu.global_commands] == ["ask"]
    options = {o["name"]: (o["type"], o.get("required", False)) for o in emu.global_commands[0]["options"]}
    assert options == {"prompt": (3, True), "count": (4, False), "loud": (5, False)}
    assert [c["name"] for c in emu.guild_commands[GUILD]] == ["admin"] and emu.command_puts == 2

    handle = emu.slash_command(
        "ask",
        [{"name": "prompt", "value": "life"}, {"name": "count", "value": 3}],
        channel_id=CHANNEL,
        user=emu.user(ADA),
    )
    await emu.wait_until(lambda: finished == ["ask"])
    assert len(emu.followups(handle)) == 1
    assert seen == [("life", 3, False)]
    assert [c["type"] for c in emu.interaction_callbacks(handle)] == [5]
    callback = next(c for c in emu.calls if c.path.endswith("/callback"))
    assert callback.query == {"with_response": "1"} and callback.status == 200
    original = emu.interaction_response(handle)
    assert original is not None and original.content == "answer to life" and not original.loading
    assert original.interaction_token == handle.token and original.history == ["answer to life"]
    [followup] = emu.followups(handle)
    assert followup.content == "and 2 more"
    assert [m.content for m in emu.messages_in(CHANNEL)] == ["answer to life", "and 2 more"]

    guild_only = emu.slash_command("admin", [], channel_id=CHANNEL, user=emu.user(ADA))
    await emu.wait_until(lambda: finished == ["ask", "admin"])
    response = emu.interaction_response(guild_only)
    assert response is not None and response.ephemeral and response.content == "ok"
    with pytest.raises(ValueError, match="not registered"):
        emu.slash_command("nope", [], channel_id=CHANNEL, user=emu.user(ADA))


async def test_member_permissions_come_from_roles_discord_py_can_see(emu: DiscordEmulator, bot: Bot) -> None:
    tree = app_commands.CommandTree(bot)
    seen: list[tuple[bool, bool]] = []
    answered: list[int] = []

    @tree.command(name="admin", description="Admins only")
    async def admin(interaction: discord.Interaction) -> None:
        assert isinstance(interaction.user, discord.Member)
        seen.append((interaction.user.guild_permissions.manage_guild, interaction.permissions.manage_guild))
        await interaction.response.send_message("ok")
        answered.append(interaction.id)  # its last request is done: the client may close now

    await tree.sync()
    manage_guild = 1 << 5
    handles = [emu.slash_command("admin", channel_id=CHANNEL, user=emu.user(BOB))]
    emu.member(GUILD, BOB, permissions=manage_guild)
    handles.append(emu.slash_command("admin", channel_id=CHANNEL, user=emu.user(BOB)))
    cy = emu.user(44, "cy")
    handles.append(emu.slash_command("admin", channel_id=CHANNEL, user=cy, permissions=manage_guild))
    handles.append(emu.slash_command("admin", channel_id=CHANNEL, user=emu.user(ADA)))  # the owner
    await emu.wait_until(lambda: len(answered) == 4)
    assert seen == [(False, False), (True, True), (True, True), (True, True)]
    assert sorted(answered) == sorted(h.id for h in handles)
    assert all((r := emu.interaction_response(h)) is not None and r.content == "ok" for h in handles)


async def test_first_followup_after_defer_fills_the_thinking_message(emu: DiscordEmulator, bot: Bot) -> None:
    tree = app_commands.CommandTree(bot)
    messages: list[discord.WebhookMessage] = []

    @tree.command(name="slow", description="Takes a while")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        messages.append(await interaction.followup.send("done", wait=True))
        messages.append(await interaction.followup.send("extra", wait=True))

    await tree.sync()
    handle = emu.slash_command("slow", channel_id=CHANNEL, user=emu.user(ADA))
    await emu.wait_until(lambda: len(messages) == 2)
    original = emu.interaction_response(handle)
    assert original is not None and messages[0].id == original.id and original.content == "done"
    assert [m.content for m in emu.followups(handle)] == ["extra"]


async def test_slash_command_in_a_dm_with_a_user_option_and_ephemeral_followup(
    emu: DiscordEmulator, bot: Bot
) -> None:
    tree = app_commands.CommandTree(bot)
    seen: list[tuple[type, int, int]] = []
    finished: list[int] = []

    @tree.command(name="greet", description="Greet someone")
    async def greet(interaction: discord.Interaction, who: discord.User) -> None:
        seen.append((type(interaction.channel), who.id, interaction.user.id))
        await interaction.response.send_message(f"hi {who.mention}")
        await interaction.followup.send("just for you", ephemeral=True)
        finished.append(interaction.id)  # its last request is done: the client may close now

    await tree.sync()
    dm = emu.dm_channel(ADA)
    handle = emu.slash_command("greet", [{"name": "who", "value": BOB}], channel_id=dm, user=emu.user(ADA))
    await emu.wait_until(lambda: finished == [handle.id])
    assert seen == [(discord.DMChannel, BOB, ADA)]
    response = emu.interaction_response(handle)
    assert response is not None and response.content == f"hi <@{BOB}>" and response.pinged_users == [BOB]
    [secret] = emu.followups(handle)
    assert secret.ephemeral and secret.channel_id == dm


async def test_interaction_must_be_acknowledged_once_and_in_time(emu: DiscordEmulator) -> None:
    emu.strict_commands = False
    first = emu.slash_command("ping", channel_id=CHANNEL, user=emu.user(ADA))  # Discord's 3 s to answer
    path = f"/interactions/{first.id}/{first.token}/callback"
    status, _, _ = await raw(emu, "POST", path, {"type": 4, "data": {"content": "pong"}})
    assert status == 204  # no ?with_response
    status, _, body = await raw(emu, "POST", path, {"type": 4, "data": {"content": "again"}})
    assert (status, body["code"]) == (400, 40060)
    emu.interaction_deadline = 0.2
    late = emu.slash_command("ping", channel_id=CHANNEL, user=emu.user(ADA))
    await asyncio.sleep(0.25)  # past the deadline, however fast or slow the machine
    status, _, body = await raw(emu, "POST", f"/interactions/{late.id}/{late.token}/callback", {"type": 5})
    assert (status, body) == (404, {"message": "Unknown interaction", "code": 10062})
    status, _, body = await raw(
        emu, "PATCH", f"/webhooks/{emu.application_id}/{late.token}/messages/@original"
    )
    assert (status, body["code"]) == (404, 10015)


async def test_invalid_command_definitions_are_refused(emu: DiscordEmulator) -> None:
    options = [
        {"name": "later", "description": "optional", "type": 3},
        {"name": "first", "description": "required", "type": 3, "required": True},
    ]
    status, _, body = await raw(
        emu,
        "PUT",
        f"/applications/{emu.application_id}/commands",
        [{"name": "x", "description": "d", "options": options}],
    )
    assert status == 400 and body["code"] == 50035
    assert (
        body["errors"]["0"]["options"]["_errors"][0]["code"] == "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID"
    )
    status, _, body = await raw(
        emu, "PUT", f"/applications/{emu.application_id}/commands", [{"name": "Bad Name", "description": "d"}]
    )
    assert status == 400 and "name" in body["errors"]["0"]


# --- message components ------------------------------------------------------------------


def approval_view(post_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Approve", custom_id=f"herald:approve:{post_id}"))
    view.add_item(
        discord.ui.Button(
            label="Reject", style=discord.ButtonStyle.danger, custom_id=f"herald:reject:{post_id}"
        )
    )
    return view


class ButtonBot(Bot):
    """Answers clicks the way Herald's approval flow would, from ``on_interaction``."""

    def __init__(self) -> None:
        super().__init__()
        self.clicks: list[tuple[str, int, type, int | None]] = []
        self.answered: list[str] = []  # clicks whose last request is done

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.component or interaction.data is None:
            return
        custom_id = str(interaction.data.get("custom_id"))
        message_id = interaction.message.id if interaction.message else None
        self.clicks.append((custom_id, interaction.user.id, type(interaction.user), message_id))
        if custom_id.startswith("herald:approve:"):
            await interaction.response.edit_message(content="Approved", view=None)
            await interaction.followup.send("published")
        elif custom_id.startswith("herald:reject:"):
            await interaction.response.send_message("Only editors may reject", ephemeral=True)
        else:
            await interaction.response.defer()
            await interaction.edit_original_response(content="seen")
        self.answered.append(custom_id)


async def test_buttons_are_stored_and_a_click_reaches_on_interaction(emu: DiscordEmulator) -> None:
    async with running(emu, ButtonBot()) as bot:
        channel = bot.get_channel(CHANNEL)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("Publish post 7?", view=approval_view(7))
        stored = emu.bot_message(sent.id)
        assert stored is not None
        [row] = stored.components
        assert row["type"] == 1
        assert [(b["type"], b["custom_id"]) for b in row["components"]] == [
            (2, "herald:approve:7"),
            (2, "herald:reject:7"),
        ]
        wire = emu.message(sent.id)
        assert wire is not None and wire["components"] == stored.components
        [parsed] = sent.components  # discord.py parsed the components back from our answer
        assert isinstance(parsed, discord.ActionRow)
        assert [b.custom_id for b in parsed.children if isinstance(b, discord.Button)] == [
            "herald:approve:7",
            "herald:reject:7",
        ]

        click = emu.click_button(sent.id, "herald:approve:7", user=emu.user(BOB), permissions=1 << 5)
        await emu.wait_until(lambda: bot.answered == ["herald:approve:7"])
        assert len(emu.followups(click)) == 1
        assert bot.clicks == [("herald:approve:7", BOB, discord.Member, sent.id)]
        assert [c["type"] for c in emu.interaction_callbacks(click)] == [7]
        approved = emu.bot_message(sent.id)
        assert approved is not None and approved.content == "Approved" and approved.components == []
        assert approved.history == ["Publish post 7?", "Approved"]
        wire = emu.message(sent.id)
        assert wire is not None and wire["content"] == "Approved" and wire["components"] == []
        [published] = emu.followups(click)
        assert published.content == "published" and emu.interaction_response(click) == approved
        published_wire = emu.message(published.id)
        assert published_wire is not None and "message_reference" not in published_wire
        metadata = published_wire["interaction_metadata"]
        assert metadata["type"] == 3 and metadata["interacted_message_id"] == str(sent.id)
        with pytest.raises(ValueError, match="no button"):
            emu.click_button(sent.id, "herald:approve:7", user=emu.user(BOB))  # the view is gone


async def test_ephemeral_answer_defer_raw_components_and_dm_clicks(emu: DiscordEmulator) -> None:
    async with running(emu, ButtonBot()) as bot:
        channel = bot.get_channel(CHANNEL)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("Publish post 8?", view=approval_view(8))
        reject = emu.click_button(sent.id, "herald:reject:8", user=emu.user(ADA), guild_id=GUILD)
        await emu.wait_until(lambda: bot.answered == ["herald:reject:8"])
        assert [(c["type"], c["data"]["flags"]) for c in emu.interaction_callbacks(reject)] == [(4, 64)]
        answer = emu.interaction_response(reject)
        assert answer is not None and answer.ephemeral and answer.content == "Only editors may reject"
        unchanged = emu.bot_message(sent.id)
        assert (
            unchanged is not None
            and unchanged.content == "Publish post 8?"
            and len(unchanged.components) == 1
        )
        with pytest.raises(ValueError, match="no button with custom_id 'herald:approve:9'"):
            emu.click_button(sent.id, "herald:approve:9", user=emu.user(ADA))
        with pytest.raises(ValueError, match="not in guild"):
            emu.click_button(sent.id, "herald:reject:8", user=emu.user(ADA), guild_id=GUILD_B)

        # raw components in the body, in a DM, answered with a deferred update then an edit
        dm = emu.dm_channel(ADA)
        button = {"type": 2, "style": 1, "label": "Ack", "custom_id": "herald:ack"}
        await bot.http.send_message(
            dm,
            params=discord.http.MultipartParameters(
                payload={"content": "ping", "components": [{"type": 1, "components": [button]}]},
                multipart=None,
                files=None,
            ),
        )
        [raw_message] = emu.messages_in(dm)
        assert raw_message.components[0]["components"][0]["custom_id"] == "herald:ack"
        components = list(raw_message.components)
        ack = emu.click_button(raw_message.id, "herald:ack", user=emu.user(ADA))
        await emu.wait_until(lambda: bot.answered[-1:] == ["herald:ack"])
        assert raw_message.content == "seen"  # the live record
        assert [c["type"] for c in emu.interaction_callbacks(ack)] == [6]
        assert bot.clicks[-1] == ("herald:ack", ADA, discord.User, raw_message.id)
        assert raw_message.components == components and raw_message.edits == 1


async def test_an_interaction_webhook_reaches_by_id_only_what_its_token_sent(
    emu: DiscordEmulator, bot: Bot
) -> None:
    """How a replica that never saw an interaction answers it, knowing only its token:
    follow-ups by id (edit, delete); the clicked message only as `@original`."""
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    view = approval_view(9)
    sent = await channel.send("Publish post 9?", view=view)
    view.stop()
    click = emu.click_button(sent.id, "herald:approve:9", user=emu.user(ADA), guild_id=GUILD)
    status, _, _ = await raw(emu, "POST", f"/interactions/{click.id}/{click.token}/callback", {"type": 6})
    assert status == 204
    hook = f"/webhooks/{emu.application_id}/{click.token}"
    status, _, body = await raw(emu, "PATCH", f"{hook}/messages/{sent.id}", {"content": "by id"})
    assert (status, body["code"]) == (404, 10008)  # not sent from this token
    status, _, body = await raw(emu, "PATCH", f"{hook}/messages/@original", {"content": "Approved"})
    assert status == 200 and body["id"] == str(sent.id) and body["content"] == "Approved"

    status, _, followup = await raw(emu, "POST", f"{hook}?wait=true", {"content": "published"})
    assert status == 200
    status, _, body = await raw(emu, "PATCH", f"{hook}/messages/{followup['id']}", {"content": "done"})
    assert status == 200 and body["content"] == "done"
    other = emu.click_button(sent.id, "herald:reject:9", user=emu.user(ADA), guild_id=GUILD)
    await raw(emu, "POST", f"/interactions/{other.id}/{other.token}/callback", {"type": 6})
    status, _, body = await raw(
        emu, "DELETE", f"/webhooks/{emu.application_id}/{other.token}/messages/{followup['id']}"
    )
    assert (status, body["code"]) == (404, 10008)  # another interaction's message
    status, _, _ = await raw(emu, "DELETE", f"{hook}/messages/{followup['id']}")
    assert status == 204 and emu.message(int(followup["id"])) is None


async def test_a_message_may_be_delivered_twice(emu: DiscordEmulator, bot: Bot) -> None:
    """Gateway delivery is at least once: the same MESSAGE_CREATE can come again."""
    sent = emu.user_message(CHANNEL, emu.user(ADA), "hello", guild_id=GUILD)
    await emu.wait_until(lambda: len(bot.seen) == 1)
    emu.deliver_again(sent)
    await emu.wait_until(lambda: len(bot.seen) == 2)
    assert [m.id for m in bot.seen] == [sent, sent]


async def test_component_only_callback_types_are_refused_for_slash_commands(emu: DiscordEmulator) -> None:
    emu.strict_commands = False
    command = emu.slash_command("ping", channel_id=CHANNEL, user=emu.user(ADA))
    path = f"/interactions/{command.id}/{command.token}/callback"
    status, _, body = await raw(emu, "POST", path, {"type": 7, "data": {"content": "x"}})
    assert status == 400 and body["code"] == 50035


# --- gateway -----------------------------------------------------------------------------


async def test_heartbeats_are_acknowledged() -> None:
    async with DiscordEmulator(heartbeat_interval_ms=50) as emu:
        world(emu)
        async with running(emu, Bot()) as client:
            await emu.wait_until(lambda: emu.heartbeat_acks >= 3)
            assert client.latency < 1.0
            assert emu.heartbeats == emu.heartbeat_acks


async def test_dropped_connection_resumes_and_replays_missed_events(emu: DiscordEmulator, bot: Bot) -> None:
    emu.drop_gateway(code=4000)
    emu.user_message(emu.dm_channel(ADA), emu.user(ADA), "sent while reconnecting")
    await emu.wait_until(lambda: len(emu.resumes) == 1 and emu.connected() == [(0, 1)])
    await emu.wait_until(lambda: [m.content for m in bot.seen] == ["sent while reconnecting"])
    assert len(emu.identifies) == 1 and emu.gateway_closes == [(4000, "Dropped by the emulator")]
    emu.request_reconnect()
    await emu.wait_until(lambda: len(emu.resumes) == 2 and emu.connected() == [(0, 1)])
    emu.invalidate_session()
    await emu.wait_until(lambda: len(emu.identifies) == 2 and emu.connected() == [(0, 1)])


async def test_stop_is_prompt_with_connected_clients() -> None:
    emu = DiscordEmulator()
    await emu.start()
    world(emu)
    client = Bot()
    try:
        async with running(emu, client, allow_reconnects=True):
            started = time.monotonic()
            await emu.stop()
            assert time.monotonic() - started < 1.5
    finally:
        await emu.stop()

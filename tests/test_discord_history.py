"""Recording a Discord channel (issue 13), through the real discord.py client and the
Discord emulator: once a manager runs /history on, members' messages are recorded (not
Herald's), and edits, deletions and bulk deletions follow through discord.py's raw events,
which fire for messages it never cached; a thread's messages belong to its channel."""

from __future__ import annotations

from typing import Any

import pytest

from core.chat.engine import Engine
from core.chatlog.search import search
from core.chatlog.store import LoggedMessage
from core.platform import Inbound
from tests import test_discord
from tests.conftest import EngineFactory
from tests.emulators.discord import DiscordEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually
from tests.test_discord import CHANNEL, GUILD, BotFactory, bot_user, settled

# the Discord emulator, a member (Ada) and the bot, as test_discord starts them
discord_emu = test_discord.discord_emu
ada = test_discord.ada
start_bot = test_discord.start_bot

pytestmark = pytest.mark.timeout(60)

MANAGE_CHANNELS = 1 << 4
OTHER = 5002  # a second channel of the guild, recorded on its own
THREAD = 5100  # a thread under CHANNEL


async def logged(engine: Engine, channel: int = CHANNEL) -> list[LoggedMessage]:
    assert engine.chatlog is not None
    seqs = await engine.chatlog.span("discord", str(channel), 0)
    found = await engine.chatlog.messages("discord", str(channel), seqs)
    # in the order written: messages of one millisecond are in the order they were recorded
    return sorted(found, key=lambda m: int(m.message_id))


async def texts(engine: Engine, channel: int = CHANNEL) -> list[str]:
    return [m.text for m in await logged(engine, channel)]


async def found(engine: Engine, words: str, channel: int = CHANNEL) -> list[str]:
    """The ids of the messages a search of the channel's log finds."""
    assert engine.chatlog is not None
    query = engine.chatlog.terms.query(words)
    return [hit.message.message_id for hit in await search(engine.chatlog, "discord", str(channel), query)]


async def history_on(emu: DiscordEmulator, channel: int, manager: dict[str, Any]) -> None:
    """A member who may manage channels runs /history on there."""
    interaction = emu.slash_command(
        "history",
        [{"name": "on", "type": 1, "options": []}],
        channel_id=channel,
        user=manager,
        guild_id=GUILD,
        permissions=MANAGE_CHANNELS,
    )
    await emu.wait_until(
        lambda: (
            (r := emu.interaction_response(interaction)) is not None
            and r.content.startswith("Recording is on:")
        ),
        10,
    )


def spy_on_edits(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Inbound]:
    """Every edit the adapter hands to the core."""
    seen: list[Inbound] = []
    follow = engine.message_edited

    async def message_edited(event: Inbound) -> None:
        seen.append(event)
        await follow(event)

    monkeypatch.setattr(engine, "message_edited", message_edited)
    return seen


async def test_a_recorded_channel_follows_edits_and_deletions(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    tgi: TGIEmulator,
    make_engine: EngineFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    discord_emu.text_channel(GUILD, OTHER, "other")
    bob = discord_emu.user(602, "bob")
    engine = await make_engine()
    edits = spy_on_edits(engine, monkeypatch)
    await start_bot(engine, message_content=True)
    discord_emu.user_message(CHANNEL, bob, "before recording: not kept", guild_id=GUILD)
    await history_on(discord_emu, CHANNEL, ada)
    await history_on(discord_emu, OTHER, ada)

    release = discord_emu.user_message(CHANNEL, bob, "the release moves to Thursday", guild_id=GUILD)
    party = discord_emu.user_message(CHANNEL, ada, "the launch party is on Friday", guild_id=GUILD)
    answer = " ".join(f"zebra{i}" for i in range(30))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.05  # streamed: Herald edits its answer as it grows
    me = bot_user(discord_emu)
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> which day", guild_id=GUILD, mentions=[me]
    )
    await settled(discord_emu, CHANNEL, answer)
    shown = next(m for m in discord_emu.messages_in(CHANNEL) if m.content == answer)
    assert shown.edits >= 1
    budget = discord_emu.user_message(OTHER, bob, "the budget is forty thousand", guild_id=GUILD)

    async def recorded() -> bool:
        return await texts(engine, OTHER) == ["the budget is forty thousand"]

    await eventually(recorded)
    assert await texts(engine) == [
        "the release moves to Thursday",
        "the launch party is on Friday",
        "which day",  # what Ada wrote, without the mention
    ]
    assert await found(engine, "zebra0") == []  # Herald's own answer is not recorded
    assert await found(engine, "budget") == []  # each channel has its own log
    assert await found(engine, "budget", OTHER) == [str(budget)]
    assert await found(engine, "party") == [str(party)]
    assert await found(engine, "party", OTHER) == []
    assert discord_emu.bot_id not in {int(m.author_id) for m in await logged(engine)}

    discord_emu.edit_message(party, "the launch party is on Saturday")

    async def edited() -> bool:
        return "the launch party is on Saturday" in await texts(engine)

    await eventually(edited)
    assert "the launch party is on Friday" not in await texts(engine)
    assert await found(engine, "party saturday") == [str(party)]
    assert await found(engine, "friday") == []

    discord_emu.delete_message(release)

    async def deleted() -> bool:
        return "the release moves to Thursday" not in await texts(engine)

    await eventually(deleted)
    assert await found(engine, "release thursday") == []

    lunch = [
        discord_emu.user_message(CHANNEL, bob, "lunch is at noon", guild_id=GUILD),
        discord_emu.user_message(CHANNEL, ada, "lunch moves to one", guild_id=GUILD),
    ]

    async def lunch_recorded() -> bool:
        return len(await found(engine, "lunch")) == 2

    await eventually(lunch_recorded)
    discord_emu.bulk_delete(CHANNEL, lunch)

    async def lunch_deleted() -> bool:
        return await found(engine, "lunch") == []

    await eventually(lunch_deleted)
    assert await texts(engine) == ["the launch party is on Saturday", "which day"]
    assert await texts(engine, OTHER) == ["the budget is forty thousand"]

    # a DM is never recorded, and its edits never reach the core
    dm = discord_emu.dm_channel(602)
    private = discord_emu.user_message(dm, bob, "my secret is Tuesday")
    await settled(discord_emu, dm, answer)
    discord_emu.edit_message(private, "my secret is Wednesday")
    discord_emu.edit_message(budget, "the budget is fifty thousand")  # after the DM's edit, in order

    async def budget_edited() -> bool:
        return await texts(engine, OTHER) == ["the budget is fifty thousand"]

    await eventually(budget_edited)
    # Herald's streamed edits (echoed by Discord as MESSAGE_UPDATE) and the DM's never came
    assert [(e.event_id, e.chat_id, e.author.user_id) for e in edits] == [
        (str(party), str(CHANNEL), str(ada["id"])),
        (str(budget), str(OTHER), str(bob["id"])),
    ]


async def test_a_thread_belongs_to_its_channel_even_once_discord_py_forgot_it(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
) -> None:
    discord_emu.thread(GUILD, CHANNEL, THREAD, "plans")
    bob = discord_emu.user(602, "bob")
    engine = await make_engine()
    bot = await start_bot(engine, message_content=True)
    await history_on(discord_emu, CHANNEL, ada)
    said = discord_emu.user_message(CHANNEL, ada, "the colour needs a decision", guild_id=GUILD)
    first = discord_emu.user_message(THREAD, bob, "the thread picked blue", guild_id=GUILD)
    second = discord_emu.user_message(THREAD, ada, "and a round logo", guild_id=GUILD)

    async def recorded() -> bool:
        return len(await logged(engine)) == 3

    await eventually(recorded)
    assert [(m.message_id, m.thread_id) for m in await logged(engine)] == [
        (str(said), None),
        (str(first), str(THREAD)),
        (str(second), str(THREAD)),
    ]
    assert await texts(engine, THREAD) == []  # the thread is no chat of its own

    # discord.py drops a thread from its cache once it is archived; moderators may still
    # edit and delete there, and the raw events then carry only the thread's id
    guild = bot.client.get_guild(GUILD)
    assert guild is not None
    thread = guild.get_thread(THREAD)
    assert thread is not None
    guild._remove_thread(thread)
    assert bot.client.get_channel(THREAD) is None
    discord_emu.edit_message(first, "the thread picked green")

    async def edited() -> bool:
        return "the thread picked green" in await texts(engine)

    await eventually(edited)
    assert await found(engine, "green") == [str(first)] and await found(engine, "blue") == []
    [changed] = [m for m in await logged(engine) if m.message_id == str(first)]
    assert changed.thread_id == str(THREAD)

    discord_emu.delete_message(second)

    async def deleted() -> bool:
        return len(await logged(engine)) == 2

    await eventually(deleted)
    assert await found(engine, "round logo") == []
    # the thread's parent was asked of Discord once, then remembered
    asked = [c for c in discord_emu.calls if c.method == "GET" and c.path == f"/channels/{THREAD}"]
    assert len(asked) == 1


async def test_without_message_content_nothing_blank_is_recorded(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
) -> None:
    """Herald as deployed by default: MESSAGE_CONTENT neither approved nor asked for.
    Discord then sends guild messages with empty content, except those that mention it."""
    discord_emu.privileged_intents = 0
    bob = discord_emu.user(602, "bob")
    engine = await make_engine()
    await start_bot(engine)
    await history_on(discord_emu, CHANNEL, ada)
    plain = discord_emu.user_message(CHANNEL, bob, "secret plans for Friday", guild_id=GUILD)
    me = bot_user(discord_emu)
    mention = f"<@{discord_emu.bot_id}>"
    asked = discord_emu.user_message(
        CHANNEL, ada, f"{mention} remember the launch", guild_id=GUILD, mentions=[me]
    )
    await settled(discord_emu, CHANNEL, "You said: remember the launch")

    async def recorded() -> bool:
        return await texts(engine) == ["remember the launch"]  # Bob's message came empty: not kept

    await eventually(recorded)
    discord_emu.edit_message(plain, "secret plans for Saturday")  # arrives empty again
    discord_emu.edit_message(asked, "never mind")  # no mention any more: arrives empty
    discord_emu.user_message(CHANNEL, ada, f"{mention} last one", guild_id=GUILD, mentions=[me])

    async def last() -> bool:
        return await texts(engine) == ["remember the launch", "last one"]

    await eventually(last)  # the edits came before it, and changed nothing: no blank replaced a text
    assert all(m.text.strip() for m in await logged(engine))

    discord_emu.delete_message(asked)  # deletions need no content

    async def forgotten() -> bool:
        return await texts(engine) == ["last one"]

    await eventually(forgotten)

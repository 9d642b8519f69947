"""Herald on Discord end to end: the real discord.py client over a real gateway
WebSocket and REST against the Discord emulator, the real engine, Redis and TGI."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.discord.bot import DiscordBot
from adapters.discord.platform import DISCORD, DiscordSettings
from bots.cli import main
from bots.runtime import build_intake
from core.chat.engine import Engine
from core.chat.splitting import closing_fence
from core.intake.worker import Intake
from core.storage.keys import Keys
from tests.conftest import EngineFactory, SettingsFactory
from tests.emulators.discord import DiscordEmulator, point_discord_py_at
from tests.emulators.tgi import TGIEmulator
from tests.support import COMMAND_NAMES, start_serving, stop_serving

pytestmark = pytest.mark.timeout(60)

GUILD, CHANNEL = 5000, 5001
BotFactory = Callable[..., Any]


@pytest.fixture
async def discord_emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        with point_discord_py_at(emulator):
            emulator.guild(GUILD, "Team", channels=[CHANNEL])
            yield emulator


@pytest.fixture
def ada(discord_emu: DiscordEmulator) -> dict[str, Any]:
    user = discord_emu.user(601, "ada")
    discord_emu.member(GUILD, 601)
    return user


@pytest.fixture
async def start_bot(
    make_engine: EngineFactory,
    make_settings: SettingsFactory,
    discord_emu: DiscordEmulator,
    redis: Redis,
    prefix: str,
) -> AsyncIterator[BotFactory]:
    """Bots as `herald run` starts them: each with the intake of its replica (`intake`, or
    one of its own that receives and works), started once the bot serves it."""
    running: list[tuple[DiscordBot, Intake]] = []

    async def start(
        engine: Engine | None = None, *, intake: Intake | None = None, **options: Any
    ) -> DiscordBot:
        intake = intake or build_intake(make_settings(), redis)
        bot = DiscordBot(
            engine or await make_engine(),
            discord_emu.token,
            redis=redis,
            keys=Keys(prefix),
            intake=intake,
            ready_timeout=10,
            **options,
        )
        await start_serving(bot, intake)
        running.append((bot, intake))
        return bot

    yield start
    for bot, intake in running:
        await stop_serving(bot, intake, grace=2)


def bot_user(emu: DiscordEmulator) -> dict[str, Any]:
    return {"id": str(emu.bot_id), "username": emu.bot_name, "bot": True, "discriminator": "0"}


async def settled(emu: DiscordEmulator, channel_id: int, expected: str) -> None:
    await emu.wait_until(lambda: any(m.content == expected for m in emu.messages_in(channel_id)), 10)


async def test_mention_in_a_channel_is_answered_as_a_reply(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any]
) -> None:
    await start_bot()
    question = discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> hello there", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await settled(discord_emu, CHANNEL, "You said: hello there")
    answer = discord_emu.messages_in(CHANNEL)[0]
    assert answer.message_reference is not None
    assert int(answer.message_reference["message_id"]) == question
    assert answer.allowed_mentions is not None and answer.allowed_mentions.get("parse") == []


async def test_reply_chain_dm_and_threads(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any]
) -> None:
    await start_bot()
    me = bot_user(discord_emu)
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> my name is Ada", guild_id=GUILD, mentions=[me]
    )
    await settled(discord_emu, CHANNEL, "You said: my name is Ada")
    answer = discord_emu.messages_in(CHANNEL)[0]
    discord_emu.user_message(CHANNEL, ada, "what is my name", guild_id=GUILD, reply_to=answer.id)
    await settled(discord_emu, CHANNEL, "Your name is Ada.")

    dm = discord_emu.dm_channel(601)
    discord_emu.user_message(dm, ada, "what is my name")  # a DM is its own conversation
    await settled(discord_emu, dm, "I don't know your name yet.")

    discord_emu.thread(GUILD, CHANNEL, 5100, "topic")
    discord_emu.user_message(
        5100, ada, f"<@{discord_emu.bot_id}> what is my name", guild_id=GUILD, mentions=[me]
    )
    await settled(discord_emu, 5100, "I don't know your name yet.")


async def test_a_reply_that_comes_without_the_message_it_replies_to_is_still_a_reply_to_herald(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any]
) -> None:
    """Discord may leave `referenced_message` out of a reply; discord.py then looks only in
    its cache, which never holds Herald's own messages. Herald asks Discord for it. (A reply
    that doesn't ping the bot shows its text only with the Message Content intent.)"""
    await start_bot(message_content=True)
    me = bot_user(discord_emu)
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> my name is Ada", guild_id=GUILD, mentions=[me]
    )
    await settled(discord_emu, CHANNEL, "You said: my name is Ada")
    answer = discord_emu.messages_in(CHANNEL)[0]
    discord_emu.user_message(
        CHANNEL,
        ada,
        "what is my name",
        guild_id=GUILD,
        reply_to=answer.id,
        ping_reply=False,
        reference_fetched=False,
    )
    await settled(discord_emu, CHANNEL, "Your name is Ada.")
    asked = [
        c
        for c in discord_emu.calls
        if c.method == "GET" and c.path == f"/channels/{CHANNEL}/messages/{answer.id}"
    ]
    assert len(asked) == 1


async def test_everyone_bots_and_plain_chatter_do_not_trigger(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    await start_bot(message_content=True)  # a role mention's text needs the privileged intent
    other_bot = discord_emu.user(602, "otherbot", bot=True)
    discord_emu.user_message(CHANNEL, ada, "@everyone meeting now", guild_id=GUILD, mention_everyone=True)
    discord_emu.user_message(CHANNEL, ada, "Herald is great", guild_id=GUILD)
    discord_emu.user_message(
        CHANNEL, other_bot, f"<@{discord_emu.bot_id}> ping", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    role = GUILD + 1  # the bot's own managed role
    discord_emu.user_message(CHANNEL, ada, f"<@&{role}> via my role", guild_id=GUILD, mention_roles=[role])
    await settled(discord_emu, CHANNEL, "You said: via my role")
    assert len(tgi.prompts) == 1


async def test_slash_command_is_deferred_and_streamed_into_the_original_response(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    await start_bot()
    answer = " ".join(f"word{i}" for i in range(50))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.05
    interaction = discord_emu.slash_command(
        "ask",
        [{"name": "question", "type": 3, "value": "stream it"}],
        channel_id=CHANNEL,
        user=ada,
        guild_id=GUILD,
    )
    await discord_emu.wait_until(
        lambda: (r := discord_emu.interaction_response(interaction)) is not None and r.content == answer, 15
    )
    assert [c["type"] for c in discord_emu.interaction_callbacks(interaction)] == [5]
    original = discord_emu.interaction_response(interaction)
    assert original is not None and original.edits >= 2


async def test_reset_persona_cancel_as_slash_commands(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    await start_bot()

    async def command(name: str, options: list[dict[str, Any]], answer: str, **kw: Any) -> None:
        """Run a slash command; its response (streamed in edits) ends up as `answer`."""
        interaction = discord_emu.slash_command(
            name, options, channel_id=CHANNEL, user=ada, guild_id=GUILD, **kw
        )

        def answered() -> bool:
            response = discord_emu.interaction_response(interaction)
            return response is not None and response.content == answer

        await discord_emu.wait_until(answered, 10)

    question = [{"name": "question", "type": 3, "value": "my name is Ada"}]
    await command("ask", question, "You said: my name is Ada")
    await command("reset", [], "Done — I've forgotten this conversation.")
    pirate = [{"name": "action", "type": 3, "value": "set"}, {"name": "text", "type": 3, "value": "pirate"}]
    await command("persona", pirate, "Only chat admins can change that here.")
    manage_guild = 1 << 5
    discord_emu.member(GUILD, 601, permissions=manage_guild)
    await command("persona", pirate, "Persona set for this chat.", permissions=manage_guild)

    tgi.responder = lambda messages: " ".join(f"w{i}" for i in range(300))
    tgi.token_delay = 0.02
    asking = discord_emu.slash_command(
        "ask",
        [{"name": "question", "type": 3, "value": "talk"}],
        channel_id=CHANNEL,
        user=ada,
        guild_id=GUILD,
    )
    await discord_emu.wait_until(  # the answer is streaming (not just deferred): there is one to stop
        lambda: (r := discord_emu.interaction_response(asking)) is not None and r.content.startswith("w0"), 10
    )
    await command("cancel", [], "Stopping the current answer.")
    await discord_emu.wait_until(
        lambda: (
            (r := discord_emu.interaction_response(asking)) is not None and r.content.endswith("⏹️ Stopped.")
        ),
        10,
    )


async def test_long_answer_splits_at_2000_with_code_blocks_intact(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    tgi: TGIEmulator,
    make_engine: EngineFactory,
) -> None:
    code = "\n".join(f"    print('line {i} of the example')" for i in range(120))
    answer = f"Here is the script:\n\n```python\ndef main():\n{code}\n```\n\nThat is all."
    tgi.responder = lambda messages: answer
    tgi.max_total_tokens = 16_000
    await start_bot(await make_engine(max_new_tokens=8000))
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> code please", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await discord_emu.wait_until(
        lambda: (
            bool(discord_emu.messages_in(CHANNEL))
            and discord_emu.messages_in(CHANNEL)[-1].content.endswith("That is all.")
        ),
        15,
    )
    parts = [m.content for m in discord_emu.messages_in(CHANNEL)]
    assert len(parts) >= 3
    assert all(len(p) <= 2000 for p in parts)
    assert all(closing_fence(p) == "" for p in parts)  # every part closes its code block
    assert all(p.startswith("```python") for p in parts[1:-1])  # and the next reopens it
    for previous, part in itertools.pairwise(discord_emu.messages_in(CHANNEL)):
        assert part.message_reference is not None and int(part.message_reference["message_id"]) == previous.id


async def test_model_output_pinging_everyone_pings_nobody(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    await start_bot()
    tgi.responder = lambda messages: "Hey @everyone and @here, ask <@601> or <@&5001>!"
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> announce", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await settled(discord_emu, CHANNEL, "Hey @everyone and @here, ask <@601> or <@&5001>!")
    sent = [c for c in discord_emu.calls if c.method in ("POST", "PATCH") and "/messages" in c.path]
    assert sent
    for call in sent:
        mentions = (call.json or {}).get("allowed_mentions")
        assert mentions is not None and mentions.get("parse") == [] and not mentions.get("replied_user")
        assert not mentions.get("users") and not mentions.get("roles")
    for message in discord_emu.messages_in(CHANNEL):  # what Discord would actually notify
        assert message.pinged_users == [] and message.pinged_roles == []
        assert not message.pinged_everyone


async def test_rate_limit_is_obeyed_without_losing_text(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    await start_bot()
    answer = " ".join(f"token{i}" for i in range(40))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.05
    discord_emu.rate_limit_next("PATCH", r"/channels/\d+/messages/\d+", retry_after=1.0)
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> go", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await settled(discord_emu, CHANNEL, answer)
    edits = [c for c in discord_emu.calls if c.method == "PATCH" and "/messages/" in c.path]
    limited = next(c for c in edits if c.status == 429)
    retried = [c for c in edits if c.at > limited.at]
    assert retried and retried[0].at - limited.at >= 1.0


async def test_answers_streaming_into_one_channel_keep_to_the_bucket_discord_tells(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    """Discord's real message bucket (5 per 5 s per channel): two answers streaming at once
    into one channel are paced by it together, and no request meets a 429."""
    discord_emu.bucket_limit, discord_emu.bucket_window = 5, 5.0
    await start_bot()
    grace = discord_emu.user(602, "grace")
    discord_emu.member(GUILD, 602)
    answers = {name: " ".join(f"{name}{i}" for i in range(50)) for name in ("ada", "grace")}
    tgi.responder = lambda messages: answers["grace" if "grace" in messages[-1]["content"] else "ada"]
    tgi.token_delay = 0.05
    for user, name in ((ada, "ada"), (grace, "grace")):
        discord_emu.user_message(
            CHANNEL, user, f"<@{discord_emu.bot_id}> {name}", guild_id=GUILD, mentions=[bot_user(discord_emu)]
        )
    for answer in answers.values():
        await settled(discord_emu, CHANNEL, answer)
    assert discord_emu.throttled() == []


async def test_answers_in_many_channels_keep_to_the_bots_global_limit(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    """Discord's global limit (50 requests a second, here 25): twenty answers streaming at
    once in twenty channels make more calls than that, paced together so that none meets
    the global 429, and every answer arrives whole. Herald is told 20 a second: the
    emulator counts calls when they arrive, and a busy machine delays some more than others."""
    discord_emu.global_limit = 25
    channels = [CHANNEL + n for n in range(1, 21)]
    for channel in channels:
        discord_emu.text_channel(GUILD, channel)
    await start_bot(global_limit=20)
    answers = {channel: " ".join(f"c{channel}w{i}" for i in range(40)) for channel in channels}
    tgi.responder = lambda messages: answers[int(messages[-1]["content"].split()[-1])]
    tgi.token_delay = 0.03
    for channel in channels:
        discord_emu.user_message(
            channel,
            ada,
            f"<@{discord_emu.bot_id}> {channel}",
            guild_id=GUILD,
            mentions=[bot_user(discord_emu)],
        )
    for channel, answer in answers.items():
        await settled(discord_emu, channel, answer)
    assert discord_emu.throttled() == []
    answered = [c for c in discord_emu.calls if c.method in ("POST", "PATCH") and "/messages" in c.path]
    assert len(answered) >= 60  # more than twice what the limit allows in a second


async def test_model_server_down_is_a_short_message(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], tgi: TGIEmulator
) -> None:
    await start_bot()
    await tgi.stop()
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> hi", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await settled(discord_emu, CHANNEL, "I can't reach the model server right now — try again in a minute.")


async def test_restart_keeps_the_conversation_and_commands_are_written_once(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any], make_engine: EngineFactory
) -> None:
    bot = await start_bot()
    assert {c["name"] for c in discord_emu.global_commands} == COMMAND_NAMES
    ask = next(c for c in discord_emu.global_commands if c["name"] == "ask")
    assert ask["options"][0]["required"] is True and ask["options"][0]["type"] == 3
    persona = next(c for c in discord_emu.global_commands if c["name"] == "persona")
    assert [ch["value"] for ch in persona["options"][0]["choices"]] == ["show", "set", "clear", "list"]
    puts = discord_emu.command_puts
    dm = discord_emu.dm_channel(601)
    discord_emu.user_message(dm, ada, "my name is Grace")
    await settled(discord_emu, dm, "You said: my name is Grace")
    await bot.stop()
    assert len(discord_emu.global_commands) == len(COMMAND_NAMES)  # shutting down never removes commands
    restarted = await start_bot(await make_engine())
    assert discord_emu.command_puts == puts  # unchanged commands are not written again
    discord_emu.user_message(dm, ada, "what is my name?")
    await settled(discord_emu, dm, "Your name is Grace.")
    await restarted.sync_commands(guild_id=GUILD)  # what `herald discord sync-commands --guild` does
    assert {c["name"] for c in discord_emu.guild_commands[GUILD]} == COMMAND_NAMES


async def test_shards_split_the_guilds(start_bot: BotFactory, discord_emu: DiscordEmulator) -> None:
    await start_bot(shard_ids=[1], shard_count=2)
    assert [i["shard"] for i in discord_emu.identifies] == [[1, 2]]


async def test_without_the_gateway_it_only_publishes(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any]
) -> None:
    """HERALD_DISCORD_GATEWAY=false: a replica that publishes scheduled posts over REST
    while another process holds the gateway shards."""
    bot = await start_bot(answers=False)
    assert discord_emu.identifies == [] and discord_emu.connected() == []
    assert await bot.ready()
    publisher = bot.publisher()
    message_id = await publisher.publish(str(CHANNEL), None, "Release notes are out @everyone")
    [posted] = [m for m in discord_emu.messages_in(CHANNEL) if str(m.id) == message_id]
    assert posted.content == "Release notes are out @everyone" and not posted.pinged_everyone
    discord_emu.user_message(
        CHANNEL, ada, f"<@{discord_emu.bot_id}> hi", guild_id=GUILD, mentions=[bot_user(discord_emu)]
    )
    await asyncio.sleep(0.5)
    assert [m.content for m in discord_emu.messages_in(CHANNEL)] == [
        "Release notes are out @everyone"
    ]  # no gateway: the mention never reached it, so nothing answered
    await bot.stop()
    assert not await bot.ready()


async def test_schedule_is_a_command_with_typed_subcommands(
    start_bot: BotFactory, discord_emu: DiscordEmulator, ada: dict[str, Any]
) -> None:
    """Each /schedule action is a Discord subcommand with its own options; a member runs
    one, and the core answers it like the typed `/schedule …` on other platforms."""
    await start_bot()
    schedule = next(c for c in discord_emu.global_commands if c["name"] == "schedule")
    subcommands = {o["name"]: o for o in schedule["options"]}
    assert all(o["type"] == 1 for o in subcommands.values())
    assert {"add", "list", "approve", "edit", "regenerate", "reject", "timezone"} <= set(subcommands)
    add = {o["name"]: (o["type"], o["required"]) for o in subcommands["add"]["options"]}
    assert add["prompt"] == (3, True) and add["when"] == (3, True) and add["count"] == (4, False)
    with pytest.raises(ValueError, match="exactly one of its subcommands"):
        discord_emu.slash_command("schedule", [], channel_id=CHANNEL, user=ada)  # Discord's client can't

    listed = discord_emu.slash_command(
        "schedule", [{"name": "list", "type": 1, "options": []}], channel_id=CHANNEL, user=ada, guild_id=GUILD
    )
    await discord_emu.wait_until(
        lambda: (
            (r := discord_emu.interaction_response(listed)) is not None
            and r.content.startswith("No schedules in this chat yet.")
        ),
        10,
    )
    digest = [{"name": "prompt", "value": "digest"}, {"name": "when", "value": "daily"}]
    refused = discord_emu.slash_command(
        "schedule",
        [{"name": "add", "options": digest}],
        channel_id=CHANNEL,
        user=ada,
        guild_id=GUILD,
    )
    await discord_emu.wait_until(
        lambda: (
            (r := discord_emu.interaction_response(refused)) is not None
            and r.content == "Only people who manage this chat can change its schedules."
        ),
        10,
    )


async def test_doctor_checks_the_token_over_rest(discord_emu: DiscordEmulator) -> None:
    """`herald doctor`'s Discord line: a login over REST, no gateway."""
    found = await DISCORD.doctor(DiscordSettings(_env_file=None, token=discord_emu.token))  # type: ignore[call-arg]
    assert found.ok and found.lines == (f"Discord: OK — {discord_emu.bot_name}, gateway, shards all",)
    refused = await DISCORD.doctor(DiscordSettings(_env_file=None, token="not-the-token"))  # type: ignore[call-arg]
    assert not refused.ok and refused.lines == ("Discord: FAILED — Discord refused HERALD_DISCORD_TOKEN",)
    assert discord_emu.identifies == []  # the gateway was never opened
    assert "sync-commands" in main.commands["discord"].commands  # type: ignore[attr-defined]


async def test_an_answer_cut_short_offers_continue(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    tgi: TGIEmulator,
) -> None:
    await start_bot(await make_engine(max_new_tokens=12))
    answers = iter([" ".join(f"w{i}" for i in range(1, 41)), "and that is the end."])
    tgi.responder = lambda messages: next(answers)
    me = bot_user(discord_emu)
    discord_emu.user_message(CHANNEL, ada, f"<@{discord_emu.bot_id}> count", guild_id=GUILD, mentions=[me])
    note = "✂️ That answer reached my length limit and stops mid-way."
    await settled(discord_emu, CHANNEL, note)
    shown = next(m for m in discord_emu.messages_in(CHANNEL) if m.content == note)
    assert [c["custom_id"] for row in shown.components for c in row["components"]] == ["cmd:continue"]
    click = discord_emu.click_button(shown.id, "cmd:continue", user=ada, guild_id=GUILD)
    rest = "and that is the end."
    await discord_emu.wait_until(
        lambda: (r := discord_emu.interaction_response(click)) is not None and r.content == rest, 10
    )
    assert discord_emu.interaction_callbacks(click)[0]["type"] == 5  # a new message, not an edit

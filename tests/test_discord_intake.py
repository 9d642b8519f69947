"""Discord through the durable intake: the real discord.py against the Discord emulator,
real Redis Streams, the real engine and TGI emulator.

A gateway replica (holding the shard) only keeps events; a worker replica, logged in
over REST and holding no shard, answers them from the address kept with each event. A
worker that dies mid-answer leaves its event pending; another takes it over and
finishes the answer in the message(s) the first one sent.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from bots.redis_server import free_port
from bots.runtime import build_intake
from core import messages
from core.intake.worker import Intake
from core.metrics import Metrics
from core.platform import ConversationKey
from core.storage.redis_client import connect_redis
from tests import test_discord
from tests.conftest import EngineFactory, SettingsFactory
from tests.emulators.discord import DiscordEmulator, Interaction
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually
from tests.test_discord import CHANNEL, GUILD, BotFactory, bot_user, settled

discord_emu = test_discord.discord_emu
ada = test_discord.ada
start_bot = test_discord.start_bot

pytestmark = pytest.mark.timeout(60)

ANSWER = " ".join(f"word{i}" for i in range(80))


def intake_of(make_settings: SettingsFactory, redis: Redis, role: str, **settings: Any) -> Intake:
    """The intake of a replica with this role (each its own consumer in the group)."""
    return build_intake(make_settings(role=role, **settings), redis)


async def split_replicas(
    start_bot: BotFactory, make_engine: EngineFactory, make_settings: SettingsFactory, redis: Redis
) -> Intake:
    """A gateway replica and a worker replica, each with its own engine; the worker's intake."""
    await start_bot(await make_engine(), intake=intake_of(make_settings, redis, "gateway"))
    worker = intake_of(make_settings, redis, "worker")
    await start_bot(await make_engine(), intake=worker, receives=False)
    return worker


def mention(emu: DiscordEmulator, user: dict[str, Any], text: str) -> int:
    return emu.user_message(
        CHANNEL, user, f"<@{emu.bot_id}> {text}", guild_id=GUILD, mentions=[bot_user(emu)]
    )


def ask(emu: DiscordEmulator, user: dict[str, Any], question: str) -> Interaction:
    options = [{"name": "question", "type": 3, "value": question}]
    return emu.slash_command("ask", options, channel_id=CHANNEL, user=user, guild_id=GUILD)


def response(emu: DiscordEmulator, interaction: Interaction) -> str:
    shown = emu.interaction_response(interaction)
    return shown.content if shown is not None and not shown.loading else ""


async def test_the_gateway_keeps_events_and_a_worker_without_the_gateway_answers_them(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    make_settings: SettingsFactory,
    redis: Redis,
) -> None:
    await split_replicas(start_bot, make_engine, make_settings, redis)
    assert len(discord_emu.identifies) == 1  # the worker holds no shard

    question = mention(discord_emu, ada, "hello there")
    await settled(discord_emu, CHANNEL, "You said: hello there")
    [answer] = discord_emu.messages_in(CHANNEL)
    assert answer.message_reference is not None and int(answer.message_reference["message_id"]) == question

    asked = ask(discord_emu, ada, "and now?")
    await discord_emu.wait_until(lambda: response(discord_emu, asked) == "You said: and now?", 10)
    assert [c["type"] for c in discord_emu.interaction_callbacks(asked)] == [5]  # deferred by the gateway
    assert discord_emu.followups(asked) == []  # the answer is in the original response


@pytest.mark.parametrize("via", ["mention", "slash command"])
async def test_an_answer_taken_over_after_its_worker_died_ends_in_the_same_message(
    via: str,
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    make_settings: SettingsFactory,
    redis: Redis,
    tgi: TGIEmulator,
) -> None:
    first = await split_replicas(start_bot, make_engine, make_settings, redis)
    tgi.responder = lambda m: ANSWER
    tgi.token_delay = 0.05
    if via == "mention":
        mention(discord_emu, ada, "count")
    else:
        asked = ask(discord_emu, ada, "count")

    def begun() -> bool:
        return any(m.content.startswith("word0") for m in discord_emu.messages_in(CHANNEL))

    await discord_emu.wait_until(begun, 10)
    await first.stop(0)  # the worker dies mid-answer: its event is left pending
    [sent] = discord_emu.messages_in(CHANNEL)
    assert not sent.content.endswith(ANSWER)

    tgi.token_delay = 0.0
    engine = await make_engine()
    second = intake_of(make_settings, redis, "worker", intake_visibility_seconds=2)
    await start_bot(engine, intake=second, receives=False)
    await discord_emu.wait_until(lambda: sent.content.endswith(messages.RESUMED), 15)
    assert sent.content.startswith(ANSWER)
    assert [m.id for m in discord_emu.messages_in(CHANNEL)] == [sent.id]  # nothing more sent
    if via == "slash command":
        assert discord_emu.interaction_response(asked) is sent and discord_emu.followups(asked) == []

    async def finished() -> bool:  # the turn is saved, then the event finished
        return await second.stream.depth(["discord"]) == (0, 0)

    await eventually(finished, "the event finished", timeout=10)
    turns = await engine.memory.history(ConversationKey("discord", str(CHANNEL)))
    assert [(t.role, t.content) for t in turns] == [("user", "count"), ("assistant", ANSWER)]  # saved once


async def test_a_message_delivered_twice_is_answered_once(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    make_settings: SettingsFactory,
    redis: Redis,
    tgi: TGIEmulator,
) -> None:
    metrics = Metrics()
    gateway = build_intake(make_settings(role="gateway"), redis, metrics)
    await start_bot(await make_engine(), intake=gateway)
    await start_bot(await make_engine(), intake=intake_of(make_settings, redis, "worker"), receives=False)
    question = mention(discord_emu, ada, "once please")
    await settled(discord_emu, CHANNEL, "You said: once please")
    discord_emu.deliver_again(question)

    def refused() -> bool:
        return (
            metrics.registry.get_sample_value(
                "herald_intake_events_total", {"platform": "discord", "what": "duplicate"}
            )
            == 1
        )

    await discord_emu.wait_until(refused, 10)
    assert [m.content for m in discord_emu.messages_in(CHANNEL)] == ["You said: once please"]
    assert len(tgi.prompts) == 1


async def test_when_the_intake_cannot_keep_an_event_the_person_is_told(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    make_engine: EngineFactory,
    make_settings: SettingsFactory,
    tgi: TGIEmulator,
) -> None:
    unreachable = connect_redis(f"redis://127.0.0.1:{free_port()}")
    try:
        await start_bot(await make_engine(), intake=build_intake(make_settings(role="gateway"), unreachable))
        question = mention(discord_emu, ada, "are you there?")
        await settled(discord_emu, CHANNEL, messages.STORE_DOWN)
        [told] = discord_emu.messages_in(CHANNEL)
        assert told.message_reference is not None and int(told.message_reference["message_id"]) == question
        asked = ask(discord_emu, ada, "and here?")
        await discord_emu.wait_until(lambda: response(discord_emu, asked) == messages.STORE_DOWN, 10)
        assert tgi.prompts == []
    finally:
        await unreachable.aclose()


async def test_an_event_that_cannot_be_read_is_dropped_unanswered(
    start_bot: BotFactory,
    discord_emu: DiscordEmulator,
    make_settings: SettingsFactory,
    redis: Redis,
    tgi: TGIEmulator,
) -> None:
    worker = intake_of(make_settings, redis, "worker")
    await start_bot(intake=worker, receives=False)
    await worker.put("discord", "odd1", {"event": {"platform": "discord"}, "reply": {"kind": "message"}})
    await worker.put("discord", "odd2", {"event": "nonsense"})

    async def finished() -> bool:
        return await worker.stream.depth(["discord"]) == (0, 0)

    await eventually(finished, "both taken and finished", timeout=10)
    assert discord_emu.messages_in(CHANNEL) == [] and tgi.prompts == []

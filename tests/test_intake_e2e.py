"""Replicas killed mid-answer, end to end: `herald run` processes on the Discord and
Telegram stand-ins, the TGI emulator streaming slowly, and a real Redis.

One replica receives the event and starts answering; it is SIGKILLed halfway; the other
replica (a worker) takes the event over once it has gone unrenewed for the visibility
timeout, and the person gets the whole answer in the same message, marked resumed,
with the turn saved once. The time from the kill to the finished answer is printed."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from bots.redis_server import free_port
from core import messages
from core.chat.memory import Turn
from tests.emulators.discord import DiscordEmulator
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import Fault, TGIEmulator
from tests.herald_process import herald_run
from tests.support import eventually

#: the visibility timeout of these replicas: short, so that the tests are; the default is 15 s
VISIBILITY = 4
STORY = " ".join(f"word{n}" for n in range(150))  # ~150 tokens: 4.5 s at the emulator's pace
GUILD, CHANNEL = 7_000_000_000_000_000, 7_000_000_000_000_002


def replica_env(redis_url: str, prefix: str, tgi: TGIEmulator) -> dict[str, str]:
    return {
        "HERALD_TGI_URL": tgi.url,
        "HERALD_REDIS_URL": redis_url,
        "HERALD_REDIS_PREFIX": prefix,
        "HERALD_RATE_LIMIT_BURST": "1000",
        "HERALD_INTAKE_VISIBILITY_SECONDS": str(VISIBILITY),
        "HERALD_MAX_NEW_TOKENS": "400",
    }


async def saved_turns(redis: Redis, prefix: str) -> list[list[Turn]]:
    """Every conversation's saved turns (the test has one conversation)."""
    histories = []
    async for key in redis.scan_iter(match=f"{prefix}:hist:*", count=500):
        if ":saved:" in key or ":hist-seq:" in key:
            continue
        raw = await redis.lrange(key, 0, -1)
        histories.append([t for t in map(Turn.decode, raw) if t is not None])
    return histories


async def assert_saved_once(redis: Redis, prefix: str) -> None:
    """The turn is saved once (just after the answer's last edit, so maybe not yet)."""

    async def saved() -> bool:
        return any(await saved_turns(redis, prefix))

    await eventually(saved, "the turn saved")
    [turns] = await saved_turns(redis, prefix)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].content == STORY


async def kill(proc: asyncio.subprocess.Process) -> float:
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    return time.monotonic()


async def within(seconds: float, check: Callable[[], bool], what: str) -> None:
    async def holds() -> bool:
        return check()

    await eventually(holds, what, seconds)


async def test_discord_answer_of_a_killed_replica_is_finished_by_the_other_in_the_same_message(
    redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator, tmp_path: Path
) -> None:
    tgi.token_delay = 0.03
    tgi.responder = lambda _messages: STORY
    async with DiscordEmulator() as discord:
        discord.guild(GUILD, "Team", channels=[CHANNEL])
        ada = discord.user(601, "ada")
        env = replica_env(redis_url, prefix, tgi) | {"HERALD_DISCORD_TOKEN": discord.token}
        launcher = [
            sys.executable,
            "-m",
            "tests.herald_on_discord_stand_in",
            discord.url,
            discord.gateway_url,
        ]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with (
            herald_run(
                [*launcher, "run", "--role", "all"], env, free_port(), tmp_path / "a" / "log"
            ) as first,
            herald_run([*launcher, "run", "--role", "worker"], env, free_port(), tmp_path / "b" / "log"),
        ):
            discord.user_message(CHANNEL, ada, f"<@{discord.bot_id}> tell me a story", guild_id=GUILD)

            def shown() -> str:
                said = [m for m in discord.messages_in(CHANNEL) if not m.deleted]
                return said[0].content if said else ""

            # the replica that received it streams: kill it halfway through the story
            await within(30, lambda: "word30" in shown(), "the answer half shown")
            [message] = discord.messages_in(CHANNEL)
            assert "word149" not in message.content
            killed_at = await kill(first)

            await within(30, lambda: shown().endswith(messages.RESUMED), "the answer finished")
            recovered = time.monotonic() - killed_at
            print(f"\nDiscord: answer finished {recovered:.1f} s after the kill (visibility {VISIBILITY} s)")
            assert recovered < 30
            [after] = [m for m in discord.messages_in(CHANNEL) if not m.deleted]
            assert after.id == message.id  # the same message: no second one
            assert after.content.startswith(STORY)
            await assert_saved_once(redis, prefix)


# -- Telegram ----------------------------------------------------------------------------

ADA = 501


def telegram_env(telegram: TelegramEmulator) -> dict[str, str]:
    return {"HERALD_TELEGRAM_TOKEN": telegram.token, "HERALD_TELEGRAM_API_URL": telegram.url}


async def test_telegram_webhook_answer_of_a_killed_replica_is_finished_by_the_other_in_the_same_message(
    redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator, tmp_path: Path
) -> None:
    tgi.token_delay = 0.03
    tgi.responder = lambda _messages: STORY
    hook = free_port()
    async with TelegramEmulator() as telegram:
        chat = telegram.private_chat(ADA, "Ada")
        env = replica_env(redis_url, prefix, tgi) | telegram_env(telegram)
        receiving = env | {
            "HERALD_TELEGRAM_WEBHOOK_URL": "https://herald.example/telegram/hook",
            "HERALD_TELEGRAM_WEBHOOK_SECRET": "s3cret_token-for-tests",
            "HERALD_TELEGRAM_WEBHOOK_LISTEN": f"127.0.0.1:{hook}",
        }
        herald = [sys.executable, "-m", "bots", "run", "--role"]
        async with (
            herald_run([*herald, "all"], receiving, free_port(), tmp_path / "a.log") as first,
            herald_run([*herald, "worker"], env, free_port(), tmp_path / "b.log"),
        ):
            telegram.deliver_webhooks(f"http://127.0.0.1:{hook}")
            telegram.send_user_message(chat, telegram.user(ADA), "tell me a story")

            def shown() -> str:
                said = [m for m in telegram.messages_in(ADA) if not m.deleted]
                return said[0].text if said else ""

            await within(30, lambda: "word30" in shown(), "the answer half shown")
            [message] = telegram.messages_in(ADA)
            assert "word149" not in message.text
            killed_at = await kill(first)

            await within(30, lambda: shown().endswith(messages.RESUMED), "the answer finished")
            recovered = time.monotonic() - killed_at
            print(f"\nTelegram webhook: answer finished {recovered:.1f} s after the kill")
            assert recovered < 30
            [after] = [m for m in telegram.messages_in(ADA) if not m.deleted]
            assert after.message_id == message.message_id
            assert after.text.startswith(STORY)
            await assert_saved_once(redis, prefix)


async def test_telegram_update_polled_by_a_replica_killed_before_answering_is_answered_by_the_other(
    redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator, tmp_path: Path
) -> None:
    """The poller has fetched the update and confirmed it to Telegram (it is kept), and
    is killed before any of the answer shows: Telegram won't deliver it again, and the
    worker answers it from the stream."""
    tgi.responder = lambda _messages: STORY
    tgi.inject(Fault(kind="stall", after_tokens=0))  # the first replica's answer never starts
    async with TelegramEmulator() as telegram:
        chat = telegram.private_chat(ADA, "Ada")
        env = replica_env(redis_url, prefix, tgi) | telegram_env(telegram)
        herald = [sys.executable, "-m", "bots", "run", "--role"]
        async with (
            herald_run([*herald, "all"], env, free_port(), tmp_path / "a.log") as first,
            herald_run([*herald, "worker"], env, free_port(), tmp_path / "b.log"),
        ):
            telegram.send_user_message(chat, telegram.user(ADA), "tell me a story")
            await within(30, lambda: tgi.in_flight == 1, "the first replica asking the model")
            assert telegram.messages_in(ADA) == []
            killed_at = await kill(first)

            def answered() -> list[str]:
                return [m.text for m in telegram.messages_in(ADA) if not m.deleted]

            await within(30, lambda: any(t.endswith(messages.RESUMED) for t in answered()), "answered")
            print(f"\nTelegram polling: answered {time.monotonic() - killed_at:.1f} s after the kill")
            assert answered() == [f"{STORY}\n\n{messages.RESUMED}"]
            assert len(telegram.confirmed) == 1  # Telegram was told: only the stream had it
            await assert_saved_once(redis, prefix)

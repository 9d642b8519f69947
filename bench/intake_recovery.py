"""How long a person waits for the rest of an answer when the replica writing it is killed.

    .venv/bin/python -m bench.intake_recovery [--kills 20] [--visibility 15] [--quick]

Two `herald run` processes on the Discord stand-in (`tests/emulators/discord.py`), the
TGI emulator streaming 30 tokens a second, and a private Redis: a replica of role
`all` receives each question and starts answering; once part of the answer is on
screen it is SIGKILLed, and a worker replica takes the event over after the visibility
timeout and finishes the answer in the same message. Recovery is the time from the
kill to the finished answer (marked resumed); a new `all` replica is started for the
next question. Printed: p50 and max over the kills, with the visibility timeout, which
is most of it (a worker claims what went unrenewed that long, looking every fifth of
it). A report, not a test: the exit status is 0 whatever the numbers say.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bots.redis_server import RedisServerProcess, free_port
from core import messages
from tests.emulators.discord import DiscordEmulator
from tests.emulators.tgi import TGIEmulator
from tests.herald_process import herald_run

GUILD, CHANNEL = 7_000_000_000_000_000, 7_000_000_000_000_002
STORY = " ".join(f"word{n}" for n in range(120))


async def measure(kills: int, visibility: float) -> list[float]:
    recoveries: list[float] = []
    with RedisServerProcess() as redis_server, tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        async with TGIEmulator(token_delay=1 / 30, record=False) as tgi, DiscordEmulator() as discord:
            tgi.responder = lambda _messages: STORY
            discord.guild(GUILD, "Team", channels=[CHANNEL])
            ada = discord.user(601, "ada")
            env = {
                "HERALD_TGI_URL": tgi.url,
                "HERALD_REDIS_URL": redis_server.url,
                "HERALD_RATE_LIMIT_BURST": "10000",
                "HERALD_INTAKE_VISIBILITY_SECONDS": str(visibility),
                "HERALD_DISCORD_TOKEN": discord.token,
                "HERALD_LOG_LEVEL": "WARNING",
            }
            stand_in = [
                sys.executable,
                "-m",
                "tests.herald_on_discord_stand_in",
                discord.url,
                discord.gateway_url,
            ]
            worker = [*stand_in, "run", "--role", "worker"]
            async with herald_run(worker, env, free_port(), work / "worker.log"):
                for kill in range(kills):
                    receiver = [*stand_in, "run", "--role", "all"]
                    async with herald_run(receiver, env, free_port(), work / f"all-{kill}.log") as first:
                        asked = discord.user_message(
                            CHANNEL, ada, f"<@{discord.bot_id}> story {kill}", guild_id=GUILD
                        )
                        answer = await _answer_to(discord, asked, lambda text: "word20" in text)
                        first.send_signal(signal.SIGKILL)
                        await first.wait()
                        killed = time.monotonic()
                        await _answer_to(discord, asked, lambda text: text.endswith(messages.RESUMED), answer)
                        recoveries.append(time.monotonic() - killed)
                        print(
                            f"  kill {kill + 1}: finished {recoveries[-1]:.2f} s after the kill", flush=True
                        )
    return recoveries


async def _answer_to(
    discord: DiscordEmulator, asked: int, shown: Callable[[str], bool], message_id: int | None = None
) -> int:
    """The bot's reply to `asked` once `shown(text)` holds (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for message in discord.messages_in(CHANNEL):
            reference = message.message_reference or {}
            if message.deleted or str(reference.get("message_id")) != str(asked):
                continue
            if (message_id is None or message.id == message_id) and shown(message.content):
                return message.id
        await asyncio.sleep(0.02)
    raise TimeoutError("no answer in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--visibility", type=float, default=15.0, help="HERALD_INTAKE_VISIBILITY_SECONDS")
    parser.add_argument("--quick", action="store_true", help="3 kills at a 4 s visibility timeout")
    args = parser.parse_args()
    kills, visibility = (3, 4.0) if args.quick else (args.kills, args.visibility)
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{kills} kills, visibility timeout {visibility:g} s"
    )
    recoveries = asyncio.run(measure(kills, visibility))
    print(
        f"recovery after SIGKILL: p50 {statistics.median(recoveries):.2f} s, max {max(recoveries):.2f} s, "
        f"min {min(recoveries):.2f} s over {len(recoveries)} kills (visibility timeout {visibility:g} s)"
    )


if __name__ == "__main__":
    main()

"""discord.py's adjustments for many answers at once (`adapters.discord.tuning`), against the
real library: its rate-limit buckets, and its gateway over a real socket to the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest

from adapters.discord.tuning import amortise_bucket_sweep, skip_own_messages
from tests.emulators.discord import DiscordEmulator
from tests.support import eventually
from tests.test_discord_emulator import ADA, CHANNEL, Bot, running, world


def _buckets_made(http: discord.http.HTTPClient, count: int) -> None:
    for number in range(count):
        http.get_ratelimit(f"POST /channels/{number}/messages:{number}")


async def test_discord_py_sweeps_its_buckets_in_amortised_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 buckets (two per channel, 1,000 channels answered at once): discord.py's own sweep looks at
    every bucket for each new one past 256, millions of looks; amortised, a few per bucket."""
    looks = 0
    inactive = discord.http.Ratelimit.is_inactive

    def counted(self: discord.http.Ratelimit) -> bool:
        nonlocal looks
        looks += 1
        return inactive(self)

    monkeypatch.setattr(discord.http.Ratelimit, "is_inactive", counted)
    loop = asyncio.get_running_loop()
    plain = discord.http.HTTPClient(loop)
    _buckets_made(plain, 2000)
    assert looks > 1_000_000
    looks = 0
    swept = discord.http.HTTPClient(loop)
    amortise_bucket_sweep(swept)
    _buckets_made(swept, 2000)
    assert len(swept._buckets) == 2000
    assert 0 < looks <= 4 * 2000


async def test_the_amortised_sweep_still_forgets_idle_buckets() -> None:
    """Buckets idle for discord.py's 5 minutes go at the next sweep; those in use stay."""
    loop = asyncio.get_running_loop()
    http = discord.http.HTTPClient(loop)
    amortise_bucket_sweep(http)
    _buckets_made(http, 255)
    for bucket in list(http._buckets.values())[:200]:
        bucket._last_request = loop.time() - 301
    http.get_ratelimit("in use")  # the 256th: a sweep
    assert len(http._buckets) == 56
    assert "in use" in http._buckets


class Watcher(Bot):
    """Records the messages and edits discord.py dispatches."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.messages: list[int] = []
        self.raw_edits: list[int] = []

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message.id)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.raw_edits.append(payload.message_id)


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        world(emulator)
        yield emulator


@pytest.mark.parametrize("skipping", [True, False])
async def test_the_bots_own_messages_and_edits_go_unparsed_and_everyone_elses_arrive(
    emu: DiscordEmulator, skipping: bool
) -> None:
    client = Watcher()
    if skipping:
        skip_own_messages(client)
    async with running(emu, client):
        own = await client.get_partial_messageable(CHANNEL).send("draft")
        await own.edit(content="final")
        theirs = emu.user_message(CHANNEL, emu.user(ADA), "a typo")
        emu.edit_message(theirs, "no typo")
        # a reply to the bot's message still carries the message it replies to
        reply = emu.user_message(CHANNEL, emu.user(ADA), "and?", reply_to=own.id)

        async def arrived() -> bool:
            return theirs in client.raw_edits and reply in client.messages

        await eventually(arrived, "the person's edit and reply")
        received = discord.utils.get(client.cached_messages, id=reply)
        assert received is not None and received.reference is not None
        resolved = received.reference.resolved
        assert isinstance(resolved, discord.Message) and resolved.author.id == client.user.id
    assert theirs in client.messages
    # the gateway keeps order: the bot's own message and edit came before the person's
    assert (own.id in client.messages) is not skipping
    assert (own.id in client.raw_edits) is not skipping

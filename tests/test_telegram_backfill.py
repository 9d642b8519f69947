"""`/history on backfill=…` on Telegram (issue 13), through python-telegram-bot and the
Bot API emulator: the Bot API has no history method, so Herald says that history
starts now, and recording still turns on."""

from __future__ import annotations

import asyncio

import pytest

from core.chat.engine import Engine
from tests import test_telegram
from tests.conftest import EngineFactory
from tests.emulators.telegram import TelegramEmulator
from tests.test_telegram import ADA, BOB, GROUP_ID, BotFactory, settled

telegram = test_telegram.telegram
start_bot = test_telegram.start_bot

pytestmark = pytest.mark.timeout(60)


async def test_telegram_says_it_cannot_read_the_past_and_records_from_now(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    telegram.can_read_all_group_messages = True  # privacy mode off
    engine: Engine = await make_engine()
    await start_bot(engine)
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.set_admin(GROUP_ID, ADA["id"])
    telegram.send_user_message(group, ADA, "/history on backfill=7d")
    await settled(
        telegram,
        GROUP_ID,
        "Recording is on: I keep this chat's messages for 30 days so that /search and /summary can "
        "use them. Telegram bots can't read past messages, so history starts now; /history off "
        "deletes it all.",
    )
    telegram.send_user_message(group, BOB, "the launch is on Friday")
    assert engine.chatlog is not None
    chatlog = engine.chatlog
    for _ in range(1000):
        seqs = await chatlog.span("telegram", str(GROUP_ID), 0)
        if seqs:
            break
        await asyncio.sleep(0.02)
    assert [m.text for m in await chatlog.messages("telegram", str(GROUP_ID), seqs)] == [
        "the launch is on Friday"
    ]

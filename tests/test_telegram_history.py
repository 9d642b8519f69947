"""Recording a Telegram group (issue 13), through the real python-telegram-bot client
and the Bot API emulator: with privacy mode off Herald sees every message and
records it once /history is on; an edit replaces the text everywhere."""

from __future__ import annotations

import pytest

from core.chat.engine import Engine
from core.chatlog.search import search
from core.chatlog.store import written_order
from tests import test_telegram
from tests.conftest import EngineFactory
from tests.emulators.telegram import TelegramEmulator
from tests.support import eventually
from tests.test_telegram import ADA, BOB, GROUP_ID, BotFactory, settled

# the Telegram emulator and the bot, as test_telegram starts them
telegram = test_telegram.telegram
start_bot = test_telegram.start_bot

pytestmark = pytest.mark.timeout(60)
ON = (
    "Recording is on: I keep this chat's messages for 30 days so that /search and /summary "
    "can use them. History starts now; /history off deletes it all."
)


async def texts(engine: Engine) -> list[str]:
    assert engine.chatlog is not None
    seqs = await engine.chatlog.span("telegram", str(GROUP_ID), 0)
    found = await engine.chatlog.messages("telegram", str(GROUP_ID), seqs)
    # in the order written: updates are handled concurrently, and Telegram's clock ticks in seconds
    return [m.text for m in sorted(found, key=written_order)]


async def test_a_group_with_privacy_off_is_recorded_and_follows_edits(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    telegram.can_read_all_group_messages = True  # privacy mode off (BotFather's /setprivacy)
    engine: Engine = await make_engine()
    await start_bot(engine)
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.send_user_message(group, BOB, "before recording: not kept")
    telegram.set_admin(GROUP_ID, ADA["id"])
    telegram.send_user_message(group, ADA, "/history on")
    await settled(telegram, GROUP_ID, ON)
    telegram.send_user_message(group, BOB, "the release moves to Thursday")
    fact = telegram.send_user_message(group, ADA, "the launch party is on Friday")

    async def both() -> bool:
        return await texts(engine) == ["the release moves to Thursday", "the launch party is on Friday"]

    await eventually(both)
    telegram.edit_user_message(group, fact, "the launch party is on Saturday")

    async def edited() -> bool:
        return "the launch party is on Saturday" in await texts(engine)

    await eventually(edited)
    assert "the launch party is on Friday" not in await texts(engine)
    assert engine.chatlog is not None
    [hit] = await search(
        engine.chatlog, "telegram", str(GROUP_ID), engine.chatlog.terms.query("party saturday")
    )
    assert (hit.message.message_id, hit.message.author_name) == (str(fact), "Ada")
    assert await search(engine.chatlog, "telegram", str(GROUP_ID), engine.chatlog.terms.query("friday")) == []

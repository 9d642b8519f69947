"""`/history status` in a Telegram group says what Herald can read there (issue 13),
measured through the real python-telegram-bot client from the Bot API emulator
(getMe's privacy mode, getChatMember of the bot), and what it says matches what
recording then really holds: with privacy mode on a plain group message never
reaches Herald, as an admin or with privacy mode off it is recorded."""

from __future__ import annotations

import logging

import pytest
from telegram import Bot, ChatMemberAdministrator, ChatMemberMember
from telegram.error import Forbidden

from adapters.telegram.surface import PRIVACY_ADVICE, REJOIN_ADVICE, TelegramSurface
from core.chat.engine import Engine
from core.commands.history import NO_EARLIER, SEES_ADDRESSED, SEES_ALL
from core.platform import Visibility
from tests import test_telegram
from tests.conftest import EngineFactory
from tests.emulators.telegram import TelegramEmulator
from tests.support import eventually
from tests.test_telegram import ADA, BOB, GROUP_ID, BotFactory, settled
from tests.test_telegram_history import ON, texts

# the Telegram emulator and the bot, as test_telegram starts them
telegram = test_telegram.telegram
start_bot = test_telegram.start_bot

pytestmark = pytest.mark.timeout(60)
OFF = "Recording is off in this chat. A chat manager can turn it on with /history on."
ADDRESSED_ONLY = f"{SEES_ADDRESSED} {PRIVACY_ADVICE} {NO_EARLIER}"


async def status(telegram: TelegramEmulator, expected: str) -> None:
    """Ask for /history status while recording is off and wait for exactly this answer."""
    telegram.send_user_message(telegram.group(GROUP_ID), BOB, "/history status")
    await settled(telegram, GROUP_ID, expected)


async def status_on(telegram: TelegramEmulator, ending: str) -> None:
    """Ask for /history status while recording and wait for the answer (its start time
    varies) that ends so."""
    telegram.send_user_message(telegram.group(GROUP_ID), BOB, "/history status")
    await telegram.wait_until(
        lambda: any(
            m.text.startswith("Recording is on since ") and m.text.endswith(ending)
            for m in telegram.messages_in(GROUP_ID)
        ),
        timeout=10,
    )


async def recording(telegram: TelegramEmulator) -> None:
    telegram.set_admin(GROUP_ID, ADA["id"])
    telegram.send_user_message(telegram.group(GROUP_ID), ADA, "/history on")
    await settled(telegram, GROUP_ID, ON)


async def plain_then_addressed(
    telegram: TelegramEmulator, engine: Engine, plain: str, asked: str = "what did I miss?"
) -> list[str]:
    """A plain group message, then a question to Herald; the recorded texts, sorted (one
    second's messages have no order), once the question and (where Telegram delivered
    it) the plain message are recorded. The emulator decides delivery when a message is
    written, so one it held back can never be recorded later."""
    group = telegram.group(GROUP_ID)
    queued = len(telegram.pending_updates) + len(telegram.deliveries)
    telegram.send_user_message(group, BOB, plain)
    delivered = len(telegram.pending_updates) + len(telegram.deliveries) > queued
    telegram.send_user_message(group, ADA, f"@HeraldBot {asked}")

    async def recorded() -> bool:
        found = await texts(engine)
        return asked in found and (plain in found or not delivered)

    await eventually(recorded)
    return sorted(await texts(engine))


async def test_privacy_mode_on_only_addressed_messages_are_seen_and_recorded(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    engine = await make_engine()
    await start_bot(engine)
    telegram.group(GROUP_ID, "Team", supergroup=True)
    await status(telegram, f"{OFF}\n\n{ADDRESSED_ONLY}")  # told before recording is on
    assert "I only receive the messages addressed to me here" in ADDRESSED_ONLY
    assert "/setprivacy" in ADDRESSED_ONLY and "make me an admin" in ADDRESSED_ONLY
    await recording(telegram)
    assert await plain_then_addressed(telegram, engine, "a plain remark") == ["what did I miss?"]
    await status_on(telegram, f"1 message recorded.\n\n{ADDRESSED_ONLY}")
    asked = [c for c in telegram.calls_to("getChatMember") if c.params.get("user_id") == telegram.bot_id]
    assert asked, "the bot's own membership is asked of Telegram"


async def test_an_admin_bot_sees_every_message_despite_privacy_mode(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    engine = await make_engine()
    bot = await start_bot(engine)
    telegram.group(GROUP_ID, "Team", supergroup=True)
    await status(telegram, f"{OFF}\n\n{ADDRESSED_ONLY}")
    telegram.set_admin(GROUP_ID, bot.identity.id)  # measured each time: no restart, no setting
    await status(telegram, f"{OFF}\n\n{SEES_ALL} {NO_EARLIER}")
    await recording(telegram)
    recorded = await plain_then_addressed(telegram, engine, "a plain remark")
    assert recorded == ["a plain remark", "what did I miss?"]


async def test_privacy_mode_off_every_message_is_seen_and_recorded(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    telegram.can_read_all_group_messages = True  # BotFather's /setprivacy → Disable
    engine = await make_engine()
    await start_bot(engine)
    telegram.group(GROUP_ID, "Team", supergroup=True)  # joined with privacy mode off
    await status(telegram, f"{OFF}\n\n{SEES_ALL} {REJOIN_ADVICE} {NO_EARLIER}")
    await recording(telegram)
    recorded = await plain_then_addressed(telegram, engine, "a plain remark")
    assert recorded == ["a plain remark", "what did I miss?"]


async def test_privacy_turned_off_after_joining_reaches_the_group_once_re_added(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    """Telegram applies a privacy change to a group when the bot joins it, and the Bot
    API can't tell which one a group got: status names the fix, and the fix works."""
    engine = await make_engine()
    await start_bot(engine)
    telegram.group(GROUP_ID, "Team", supergroup=True)  # joined with privacy mode on
    await recording(telegram)
    telegram.can_read_all_group_messages = True
    await status_on(telegram, f"0 messages recorded.\n\n{SEES_ALL} {REJOIN_ADVICE} {NO_EARLIER}")
    assert await plain_then_addressed(telegram, engine, "not seen yet") == ["what did I miss?"]
    telegram.readd_bot(GROUP_ID)  # as the advice says
    recorded = await plain_then_addressed(telegram, engine, "seen now", "and now?")
    assert recorded == ["and now?", "seen now", "what did I miss?"]


async def test_status_says_nothing_of_what_it_cannot_measure(
    start_bot: BotFactory,
    telegram: TelegramEmulator,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await start_bot(await make_engine())
    telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.fail_next("getMe", 500, "Internal Server Error")
    with caplog.at_level(logging.WARNING, logger="herald.telegram"):
        await status(telegram, OFF)
    assert "could not tell what the bot can read" in caplog.text


async def test_the_emulator_reports_the_bots_membership_and_privacy_as_telegram_does(
    telegram: TelegramEmulator,
) -> None:
    """What visibility() reads, through PTB's own parsing: getMe's privacy mode at once,
    the bot's ChatMember per chat, and a chat it was removed from refuses."""
    async with Bot(telegram.token, base_url=f"{telegram.url}/bot") as bot:
        telegram.group(GROUP_ID, "Team", supergroup=True)
        surface = TelegramSurface(bot, chat_id=GROUP_ID, thread_id=None, reply_to=None, private=False)
        assert isinstance(await bot.get_chat_member(GROUP_ID, telegram.bot_id), ChatMemberMember)
        assert await surface.visibility() == Visibility(reads_all=False, advice=PRIVACY_ADVICE)
        telegram.set_admin(GROUP_ID, telegram.bot_id)
        member = await bot.get_chat_member(GROUP_ID, telegram.bot_id)
        assert isinstance(member, ChatMemberAdministrator) and member.user.id == telegram.bot_id
        assert await surface.visibility() == Visibility(reads_all=True)
        telegram.can_read_all_group_messages = True
        assert (await bot.get_me()).can_read_all_group_messages is True
        telegram.kick_from(GROUP_ID)
        with pytest.raises(Forbidden, match="kicked"):
            await bot.get_chat_member(GROUP_ID, telegram.bot_id)
        assert await surface.visibility() is None  # unknown, logged
        telegram.readd_bot(GROUP_ID)  # a plain member again, with privacy mode off now
        assert isinstance(await bot.get_chat_member(GROUP_ID, telegram.bot_id), ChatMemberMember)
        assert await surface.visibility() == Visibility(reads_all=True, advice=REJOIN_ADVICE)
        calls = len(telegram.calls)
        dm = TelegramSurface(bot, chat_id=ADA["id"], thread_id=None, reply_to=None, private=True)
        assert await dm.visibility() == Visibility(reads_all=True)
        assert len(telegram.calls) == calls  # a private chat is read whole: nothing to ask

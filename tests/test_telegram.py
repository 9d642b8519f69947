"""Herald on Telegram end to end: the real python-telegram-bot client over real HTTP
against the Bot API emulator, the real engine, intake, Redis and the TGI emulator."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from adapters.telegram.bot import TelegramBot, WebhookConfig
from adapters.telegram.formatting import utf16_len
from bots.redis_server import RedisServerProcess, free_port
from bots.runtime import build_intake
from core.chat.engine import Engine
from core.intake.worker import Intake
from core.platform import ConversationKey
from tests.conftest import EngineFactory, SettingsFactory
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import COMMAND_NAMES, start_serving, stop_serving

pytestmark = pytest.mark.timeout(60)

ADA = {"id": 501, "is_bot": False, "first_name": "Ada", "username": "ada"}
BOB = {"id": 502, "is_bot": False, "first_name": "Bob", "username": "bob"}
GROUP_ID = -1001
IntakeFactory = Callable[..., Intake]


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator() as emulator:
        yield emulator


def intakes(make_settings: SettingsFactory, redis: Redis) -> IntakeFactory:
    """Intakes on the test's Redis and prefix, as `herald run` builds them (settings
    overrides: `role`, `intake_visibility_seconds`…)."""

    def make(**overrides: Any) -> Intake:
        return build_intake(make_settings(**overrides), redis)

    return make


@pytest.fixture
def make_intake(make_settings: SettingsFactory, redis: Redis) -> IntakeFactory:
    return intakes(make_settings, redis)


class BotFactory:
    """Herald's Telegram bots against the emulator, each with its own intake: a replica
    each. What is still running at the end of the test is stopped then."""

    def __init__(
        self, make_engine: EngineFactory, make_intake: IntakeFactory, telegram: TelegramEmulator
    ) -> None:
        self._make_engine = make_engine
        self._make_intake = make_intake
        self._telegram = telegram
        self.running: dict[TelegramBot, Intake] = {}

    async def __call__(
        self, engine: Engine | None = None, *, intake: Intake | None = None, **bot_options: Any
    ) -> TelegramBot:
        intake = intake or self._make_intake()
        bot = TelegramBot(
            engine or await self._make_engine(),
            self._telegram.token,
            intake=intake,
            api_url=self._telegram.url,
            poll_timeout=1,
            **bot_options,
        )
        await start_serving(bot, intake)
        self.running[bot] = intake
        return bot

    async def stop(self, bot: TelegramBot, grace: float = 10.0) -> None:
        """Stop one replica: its answers under way get `grace` to finish."""
        await stop_serving(bot, self.running.pop(bot), grace)

    async def close(self) -> None:
        while self.running:
            await self.stop(next(iter(self.running)))


@pytest.fixture
async def start_bot(
    make_engine: EngineFactory, make_settings: SettingsFactory, redis: Redis, telegram: TelegramEmulator
) -> AsyncIterator[BotFactory]:
    """Start Herald's Telegram bot against the emulator; stopped at the end of the test."""
    bots = BotFactory(make_engine, intakes(make_settings, redis), telegram)
    yield bots
    await bots.close()


async def settled(telegram: TelegramEmulator, chat_id: int, expected: str) -> None:
    await telegram.wait_until(
        lambda: any(m.text == expected for m in telegram.messages_in(chat_id)), timeout=10
    )


async def test_private_conversation_remembers(start_bot: BotFactory, telegram: TelegramEmulator) -> None:
    await start_bot()
    chat = telegram.private_chat(ADA["id"], "Ada")
    telegram.send_user_message(chat, ADA, "my name is Ada")
    await settled(telegram, chat["id"], "You said: my name is Ada")
    telegram.send_user_message(chat, ADA, "what is my name?")
    await settled(telegram, chat["id"], "Your name is Ada.")
    first = telegram.messages_in(chat["id"])[0]
    assert first.reply_to_message_id is not None  # answers reply to the question
    actions = [c for c in telegram.calls if c.method == "sendChatAction"]
    assert actions and actions[0].params["action"] == "typing"


async def test_group_answers_only_when_addressed(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.send_user_message(group, ADA, "HeraldBot is nice, but nobody asked it")
    telegram.send_user_message(group, ADA, "hello everyone")
    telegram.send_user_message(group, ADA, "/ask@OtherBot what now?")
    mention = telegram.send_user_message(group, ADA, "@HeraldBot what is 2+2?")
    await settled(telegram, GROUP_ID, "You said: what is 2+2?")
    answer = telegram.messages_in(GROUP_ID)[0]
    telegram.send_user_message(group, BOB, "thanks, and 3+3?", reply_to_message_id=answer.message_id)
    await settled(telegram, GROUP_ID, "You said: thanks, and 3+3?")
    telegram.send_user_message(group, BOB, "/ask@HeraldBot and 4+4?")
    await settled(telegram, GROUP_ID, "You said: and 4+4?")
    telegram.send_user_message(group, BOB, "/ask and 5+5?")
    await settled(telegram, GROUP_ID, "You said: and 5+5?")
    assert len(tgi.prompts) == 4  # the three unaddressed messages never reached the model
    assert answer.reply_to_message_id == mention


async def test_commands_reset_persona_cancel(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    chat = telegram.private_chat(ADA["id"])
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.send_user_message(chat, ADA, "my name is Ada")
    await settled(telegram, chat["id"], "You said: my name is Ada")
    telegram.send_user_message(chat, ADA, "/reset")
    await settled(telegram, chat["id"], "Done — I've forgotten this conversation.")
    telegram.send_user_message(chat, ADA, "what is my name")
    await settled(telegram, chat["id"], "I don't know your name yet.")

    telegram.send_user_message(group, BOB, "/persona set pirate")
    await settled(telegram, GROUP_ID, "Only chat admins can change that here.")
    telegram.set_admin(GROUP_ID, ADA["id"])
    telegram.send_user_message(group, ADA, "/persona@HeraldBot set pirate")
    await settled(telegram, GROUP_ID, "Persona set for this chat.")
    telegram.send_user_message(group, ADA, "@HeraldBot hello")
    await settled(telegram, GROUP_ID, "You said: hello")
    assert "talk like a pirate" in tgi.prompts[-1]

    tgi.responder = lambda messages: " ".join(f"w{i}" for i in range(300))
    tgi.token_delay = 0.02
    before = len(telegram.messages_in(chat["id"]))
    telegram.send_user_message(chat, ADA, "talk a lot")
    await telegram.wait_until(lambda: len(telegram.messages_in(chat["id"])) > before)
    telegram.send_user_message(chat, ADA, "/cancel")
    await settled(telegram, chat["id"], "Stopping the current answer.")
    await telegram.wait_until(
        lambda: any(m.text.endswith("⏹️ Stopped.") for m in telegram.messages_in(chat["id"]))
    )


async def test_streamed_answer_is_edited_a_bounded_number_of_times(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    answer = " ".join(f"word{i}" for i in range(60))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.05  # about 6 s of streaming
    chat = telegram.private_chat(ADA["id"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    telegram.send_user_message(chat, ADA, "stream please")
    await settled(telegram, chat["id"], answer)
    elapsed = loop.time() - started
    message = telegram.messages_in(chat["id"])[0]
    assert len(telegram.messages_in(chat["id"])) == 1
    assert message.edits >= 2  # it really streamed
    assert message.edits <= elapsed / 1.0 + 2  # at most one edit a second in a private chat
    assert message.history[0] != answer


async def test_long_answer_is_split_at_telegrams_limit(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator, make_engine: EngineFactory
) -> None:
    tgi.max_total_tokens = 16_000
    await start_bot(await make_engine(max_new_tokens=8000))
    sentence = "Herald 🚀 говорит 你好世界, and the 👩‍👩‍👧 family says hi. "
    answer = (sentence * 200)[:10_000].rstrip()
    tgi.responder = lambda messages: answer
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "a long one please")
    await telegram.wait_until(
        lambda: (
            "".join(m.text for m in telegram.messages_in(chat["id"])).replace(" ", "")
            == answer.replace(" ", "")
        ),
        timeout=20,
    )
    parts = telegram.messages_in(chat["id"])
    assert len(parts) >= 3
    assert all(utf16_len(p.text) <= 4096 for p in parts)
    for previous, part in itertools.pairwise(parts):
        assert part.reply_to_message_id == previous.message_id  # continuation parts chain


async def test_markdown_with_special_characters_is_formatted_safely(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    answer = (
        "**Bold** and _italic_, `x < y && y > z`, a [link](https://example.com/?a=1&b=2).\n\n"
        "```python\nif a < b and c > d:\n    print('<tag> & \"quote\"')\n```\n"
        "- 5 > 3 & 2 < 4\n- snake_case_name *not closed"
    )
    tgi.responder = lambda messages: answer
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "format please")
    await telegram.wait_until(lambda: bool(telegram.messages_in(chat["id"])), timeout=10)
    await telegram.wait_until(
        lambda: "snake_case_name *not closed" in telegram.messages_in(chat["id"])[0].text
    )
    message = telegram.messages_in(chat["id"])[0]
    assert message.parse_mode == "HTML"
    assert "<b>Bold</b>" in message.html and "&lt;tag&gt;" in message.html
    assert "x < y && y > z" in message.text
    assert "print('<tag> & \"quote\"')" in message.text


async def test_rejected_formatting_falls_back_to_plain_text(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    tgi.responder = lambda messages: "**bold** answer"
    telegram.fail_next("sendMessage", 400, "Bad Request: can't parse entities: unexpected")
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "hi")
    await telegram.wait_until(lambda: bool(telegram.messages_in(chat["id"])), timeout=10)
    first = telegram.messages_in(chat["id"])[0]
    assert first.history[0] == "**bold** answer" and first.parse_mode is None


async def test_flood_control_is_obeyed_without_losing_text(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    answer = " ".join(f"token{i}" for i in range(40))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.05
    telegram.fail_next("editMessageText", 429, "Too Many Requests: retry after 2", retry_after=2)
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "go")
    await settled(telegram, chat["id"], answer)
    edits = [c for c in telegram.calls if c.method == "editMessageText"]
    refused_at = edits[0].at
    assert all(c.at - refused_at >= 2.0 for c in edits[1:])  # waited out retry_after


async def test_model_server_down_and_redis_down_get_short_answers(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator, make_engine: EngineFactory
) -> None:
    server = await asyncio.to_thread(RedisServerProcess().start)  # a Redis this test may stop
    try:
        await start_bot(await make_engine(redis_url=server.url))
        chat = telegram.private_chat(ADA["id"])
        await tgi.stop()
        telegram.send_user_message(chat, ADA, "hello?")
        await settled(
            telegram, chat["id"], "I can't reach the model server right now — try again in a minute."
        )
        await asyncio.to_thread(server.stop)
        telegram.send_user_message(chat, ADA, "and now?")
        await settled(
            telegram, chat["id"], "My memory store is unavailable right now — try again in a minute."
        )
    finally:
        await asyncio.to_thread(server.stop)


async def test_restart_keeps_the_conversation(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    bot = await start_bot()
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "my name is Grace")
    await settled(telegram, chat["id"], "You said: my name is Grace")
    await start_bot.stop(bot)
    await start_bot(await make_engine())  # a new process: new engine, same Redis
    telegram.send_user_message(chat, ADA, "what is my name?")
    await settled(telegram, chat["id"], "Your name is Grace.")


async def test_forum_topics_and_group_migration(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    engine = await make_engine()
    await start_bot(engine)
    forum = telegram.group(GROUP_ID, "Forum", supergroup=True, forum=True)
    telegram.send_user_message(forum, ADA, "@HeraldBot my name is Ida", message_thread_id=11)
    await settled(telegram, GROUP_ID, "You said: my name is Ida")
    telegram.send_user_message(forum, ADA, "@HeraldBot what is my name", message_thread_id=22)
    await settled(telegram, GROUP_ID, "I don't know your name yet.")
    assert telegram.messages_in(GROUP_ID, 11)[0].thread_id == 11

    old = telegram.group(-42, "Small group")
    telegram.send_user_message(old, BOB, "@HeraldBot my name is Bob")
    await settled(telegram, -42, "You said: my name is Bob")
    old_conversation = ConversationKey("telegram", "-42", None)
    async with asyncio.timeout(5):
        while len(await engine.memory.history(old_conversation)) < 2:  # noqa: ASYNC110 - the turn is saved
            await asyncio.sleep(0.01)
    telegram.migrate_group(-42, -1009)
    new = telegram.group(-1009, "Small group", supergroup=True)
    async with asyncio.timeout(5):  # the service messages are handled: the memory moved
        while len(await engine.memory.history(ConversationKey("telegram", "-1009", None))) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    telegram.send_user_message(new, BOB, "@HeraldBot what is my name")
    await settled(telegram, -1009, "Your name is Bob.")


async def test_command_menu_is_registered(
    start_bot: BotFactory, telegram: TelegramEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    await start_bot()
    assert {c["command"] for c in telegram.my_commands} == COMMAND_NAMES


async def test_command_menu_failure_is_not_fatal(
    start_bot: BotFactory, telegram: TelegramEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    telegram.fail_next("setMyCommands", 400, "Bad Request: BOT_COMMAND_INVALID")
    with caplog.at_level(logging.WARNING, logger="herald.telegram"):
        await start_bot()
    assert "could not register the command menu" in caplog.text
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "still there?")
    await settled(telegram, chat["id"], "You said: still there?")


async def test_second_poller_conflict_is_logged(
    start_bot: BotFactory, telegram: TelegramEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="herald.telegram"):
        await start_bot()
        telegram.conflict(True)
        await telegram.wait_until(lambda: "another process is polling" in caplog.text, timeout=10)
        telegram.conflict(False)
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "back?")
    await settled(telegram, chat["id"], "You said: back?")


async def test_webhook_mode_checks_the_secret(start_bot: BotFactory, telegram: TelegramEmulator) -> None:
    port = free_port()
    await start_bot(webhook=WebhookConfig("https://bot.example.com/hook", "s3cret", "127.0.0.1", port))
    assert telegram.webhook is not None and telegram.webhook["url"] == "https://bot.example.com/hook"
    chat = telegram.private_chat(ADA["id"])
    update = telegram.make_update(chat, ADA, "via webhook")
    url = f"http://127.0.0.1:{port}/hook"  # the public URL's path, served locally
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update) as resp:
            assert resp.status == 403  # no secret
        headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
        async with http.post(url, json=update, headers=headers) as resp:
            assert resp.status == 200
    await settled(telegram, chat["id"], "You said: via webhook")


async def test_herald_run_finishes_answers_in_flight_on_sigterm(
    tmp_path: Any, telegram: TelegramEmulator, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    """The real `herald run` process: SIGTERM mid-answer lets the answer finish, exit 0."""
    import os
    import signal

    from tests.test_console import herald_command

    answer = " ".join(f"part{i}" for i in range(40))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.05  # two seconds of streaming
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
        HERALD_TELEGRAM_TOKEN=telegram.token,
        HERALD_TELEGRAM_API_URL=telegram.url,
    )
    proc = await asyncio.create_subprocess_exec(
        *herald_command(),
        "run",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await telegram.wait_until(lambda: bool(telegram.my_commands), timeout=20)  # started
        chat = telegram.private_chat(ADA["id"])
        telegram.send_user_message(chat, ADA, "tell me")
        await telegram.wait_until(lambda: bool(telegram.messages_in(chat["id"])), timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert telegram.messages_in(chat["id"])[0].text == answer
    assert b"Traceback" not in err


async def test_herald_run_without_a_platform_says_so(tmp_path: Any) -> None:
    from tests.test_console import run_herald

    code, _, err = await run_herald(["run"], "", tmp_path)
    assert code == 1
    assert "Nothing to run: set HERALD_TELEGRAM_TOKEN" in err


async def test_text_mention_of_the_bot_addresses_it(
    start_bot: BotFactory, telegram: TelegramEmulator
) -> None:
    bot = await start_bot()
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.set_admin(GROUP_ID, bot.identity.id)  # an admin bot receives every group message
    me = {"id": bot.identity.id, "is_bot": True, "first_name": "Herald"}
    mention = [{"type": "text_mention", "offset": 0, "length": 6, "user": me}]
    telegram.send_user_message(group, ADA, "Herald, how are you?", entities=mention)
    await settled(telegram, GROUP_ID, "You said: , how are you?")


async def test_blocked_chat_is_logged_and_others_still_answered(
    start_bot: BotFactory, telegram: TelegramEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    await start_bot()
    ada, bob = telegram.private_chat(ADA["id"]), telegram.private_chat(BOB["id"], "Bob")
    telegram.block_by(ada["id"])
    with caplog.at_level(logging.WARNING, logger="herald.telegram"):
        telegram.send_user_message(ada, ADA, "hello")
        await telegram.wait_until(lambda: "forbids writing to chat 501" in caplog.text, timeout=10)
    telegram.send_user_message(bob, BOB, "hello")
    await settled(telegram, bob["id"], "You said: hello")
    assert telegram.messages_in(ada["id"]) == []
    assert "Traceback" not in caplog.text


async def test_answer_follows_a_chat_that_migrated_while_answering(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory
) -> None:
    engine = await make_engine()
    await start_bot(engine)
    old = telegram.group(-42, "Small group")
    telegram.group(-1009, "Small group", supergroup=True)
    telegram.fail_next(
        "sendMessage",
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        migrate_to_chat_id=-1009,
    )
    telegram.send_user_message(old, BOB, "@HeraldBot my name is Bob")
    await settled(telegram, -1009, "You said: my name is Bob")
    new_conversation = ConversationKey("telegram", "-1009", None)
    async with asyncio.timeout(5):
        while len(await engine.memory.history(new_conversation)) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_model_output_mentions_ping_nobody(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    await start_bot()
    tgi.responder = lambda messages: "Ask @bob_smith or @admins about it."
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.send_user_message(group, ADA, "@HeraldBot who knows?")
    # a fullwidth "＠" is not a mention: Telegram notifies nobody
    await settled(telegram, GROUP_ID, "Ask ＠bob_smith or ＠admins about it.")


async def test_an_answer_cut_short_offers_continue(
    start_bot: BotFactory, telegram: TelegramEmulator, make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    await start_bot(await make_engine(max_new_tokens=12))
    answers = iter([" ".join(f"w{i}" for i in range(1, 41)), "and that is the end."])
    tgi.responder = lambda messages: next(answers)
    chat = telegram.private_chat(ADA["id"], "Ada")
    telegram.send_user_message(chat, ADA, "count to forty")
    note = "✂️ That answer reached my length limit and stops mid-way."
    await settled(telegram, chat["id"], note)
    shown = next(m for m in telegram.messages_in(chat["id"]) if m.text == note)
    keyboard = shown.reply_markup["inline_keyboard"]  # type: ignore[index]
    assert keyboard == [[{"text": "▶️ Continue", "callback_data": "cmd:continue"}]]
    telegram.send_callback_query(chat, ADA, shown.message_id, "cmd:continue")
    await settled(telegram, chat["id"], "and that is the end.")
    rest = telegram.messages_in(chat["id"])[-1]
    assert rest.reply_to_message_id == shown.message_id
    assert len(telegram.calls_to("answerCallbackQuery")) == 1  # the click's loading stopped

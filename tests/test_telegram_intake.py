"""Telegram on the durable intake (core/intake), through the real python-telegram-bot
client, the Bot API emulator and a real Redis: an update is acknowledged to Telegram
(a webhook's 200, a polling offset moved past it) only once it is in the stream; a
gateway only receives and a worker answers; an answer left unfinished by a replica
that died is finished by another in the same message; an update delivered twice is
answered once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from telegram import Bot, WebhookInfo

from adapters.platform import PlatformStartError
from adapters.telegram.bot import UPDATES, WebhookConfig
from bots.redis_server import RedisServerProcess, free_port
from bots.runtime import build_intake
from core import messages
from core.intake.worker import Intake
from core.platform import ConversationKey
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests import test_telegram
from tests.conftest import EngineFactory, SettingsFactory
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually
from tests.test_telegram import ADA, BOB, GROUP_ID, BotFactory, IntakeFactory, settled

telegram = test_telegram.telegram
start_bot = test_telegram.start_bot
make_intake = test_telegram.make_intake

pytestmark = pytest.mark.timeout(90)

SECRET = "s3cret_Token-1"
PUBLIC_URL = "https://bot.example.com/telegram/hook"
SECRET_HEADER = {"X-Telegram-Bot-Api-Secret-Token": SECRET}


async def stream_events(redis: Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """What the Telegram stream holds: the data put in, by event id (the update_id)."""
    entries = await redis.xrange(Keys(prefix).intake_stream("telegram"))
    return {fields["e"]: orjson.loads(fields["d"]) for _, fields in entries}


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServerProcess]:
    """A Redis server of the test's own, to stop and start again (same port)."""
    server = await asyncio.to_thread(RedisServerProcess().start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def restart(server: RedisServerProcess) -> RedisServerProcess:
    return await asyncio.to_thread(RedisServerProcess(port=server.port).start)


def webhook(port: int) -> WebhookConfig:
    return WebhookConfig(PUBLIC_URL, SECRET, "127.0.0.1", port)


# -- webhook ----------------------------------------------------------------------------


async def test_webhook_answers_200_only_once_the_update_is_in_the_stream(
    start_bot: BotFactory,
    make_intake: IntakeFactory,
    telegram: TelegramEmulator,
    redis: Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    await start_bot(intake=make_intake(role="gateway"), webhook=webhook(port))  # nothing is answered
    assert telegram.webhook is not None
    assert telegram.webhook["url"] == PUBLIC_URL and telegram.webhook["secret_token"] == SECRET
    assert telegram.webhook["allowed_updates"] == UPDATES
    chat = telegram.private_chat(ADA["id"])
    update = telegram.make_update(chat, ADA, "kept first")
    url = f"http://127.0.0.1:{port}/telegram/hook"  # the public URL's path, served locally
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update) as resp:
            assert resp.status == 403  # no secret
        async with http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "guess"}) as resp:
            assert resp.status == 403
        assert await stream_events(redis, prefix) == {}

        async with http.post(url, json=update, headers=SECRET_HEADER) as resp:
            assert resp.status == 200
        kept = await stream_events(redis, prefix)  # read right after the 200
        assert list(kept) == [str(update["update_id"])]
        assert kept[str(update["update_id"])]["event"]["text"] == "kept first"
        assert kept[str(update["update_id"])]["reply"]["chat"] == ADA["id"]

        with caplog.at_level(logging.WARNING, logger="herald.telegram"):
            broken = {**SECRET_HEADER, "Content-Type": "application/json"}
            async with http.post(url, data=b'{"update_id": 1, "message": ', headers=broken) as resp:
                assert resp.status == 400
            async with http.post(url, json={"no": "update"}, headers=SECRET_HEADER) as resp:
                assert resp.status == 400
        assert "refused a delivery that is not an update" in caplog.text
    assert len(await stream_events(redis, prefix)) == 1
    assert telegram.messages_in(ADA["id"]) == []  # a gateway only receives


async def test_webhook_says_503_while_redis_is_away_and_telegram_delivers_again(
    start_bot: BotFactory,
    make_settings: SettingsFactory,
    telegram: TelegramEmulator,
    private_redis: RedisServerProcess,
    prefix: str,
) -> None:
    client = connect_redis(private_redis.url)
    server = private_redis
    try:
        port = free_port()
        await start_bot(intake=build_intake(make_settings(role="gateway"), client), webhook=webhook(port))
        telegram.deliver_webhooks(f"http://127.0.0.1:{port}", retry_after=0.1)  # Telegram posts
        chat = telegram.private_chat(ADA["id"])
        telegram.send_user_message(chat, ADA, "before")
        await telegram.wait_until(lambda: [d.status for d in telegram.webhook_deliveries] == [200])
        await asyncio.to_thread(server.stop)

        update_id = telegram.push_update(telegram.make_update(chat, ADA, "while Redis is away"))
        await telegram.wait_until(lambda: [d.status for d in telegram.webhook_deliveries][1:3] == [503, 503])
        assert update_id in [u["update_id"] for u in telegram.pending_updates]  # Telegram keeps it
        info = await telegram_info(telegram)
        assert info.last_error_message == "Wrong response from the webhook: 503 Service Unavailable"

        server = await restart(private_redis)
        await telegram.wait_until(lambda: telegram.webhook_deliveries[-1].status == 200, timeout=20)
        assert telegram.pending_updates == []
        assert list(await stream_events(client, prefix)) == [str(update_id)]  # a new server: only it
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)


async def telegram_info(telegram: TelegramEmulator) -> WebhookInfo:
    async with Bot(telegram.token, base_url=f"{telegram.url}/bot") as bot:
        return await bot.get_webhook_info()


# -- polling ----------------------------------------------------------------------------


async def test_polling_confirms_an_update_only_once_it_is_in_the_stream(
    start_bot: BotFactory,
    make_settings: SettingsFactory,
    telegram: TelegramEmulator,
    private_redis: RedisServerProcess,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = connect_redis(private_redis.url)
    server = private_redis
    confirmed_before_kept: list[int] = []

    async def check(update_ids: list[int]) -> None:
        """When Telegram is told, each update must already be in the stream."""
        try:
            kept = await stream_events(client, prefix)
        except RedisError:
            kept = {}
        confirmed_before_kept.extend(i for i in update_ids if str(i) not in kept)

    telegram.on_confirm = check
    try:
        await start_bot(intake=build_intake(make_settings(role="gateway"), client))
        chat = telegram.private_chat(ADA["id"])
        first = telegram.push_update(telegram.make_update(chat, ADA, "first"))
        await telegram.wait_until(lambda: first in telegram.confirmed, timeout=10)

        await asyncio.to_thread(server.stop)
        with caplog.at_level(logging.WARNING, logger="herald.telegram"):
            second = telegram.push_update(telegram.make_update(chat, ADA, "second"))
            third = telegram.push_update(telegram.make_update(chat, ADA, "third"))
            await telegram.wait_until(lambda: f"could not keep update {second}" in caplog.text, timeout=10)
        assert second in telegram.deliveries and third in telegram.deliveries  # fetched, not kept
        asked = len(telegram.calls_to("getUpdates"))
        server = await restart(private_redis)
        await telegram.wait_until(lambda: third in telegram.confirmed, timeout=20)
        offsets = [c.params.get("offset") for c in telegram.calls_to("getUpdates")[asked:]]
        assert offsets[0] == third + 1  # the same batch was kept, then confirmed all at once
        assert confirmed_before_kept == []
        assert list(await stream_events(client, prefix)) == [str(second), str(third)]
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)


async def test_pause_stops_fetching(start_bot: BotFactory, telegram: TelegramEmulator) -> None:
    bot = await start_bot()
    await telegram.wait_until(lambda: len(telegram.calls_to("getUpdates")) >= 1)  # a poll held
    await bot.pause()
    assert not await bot.ready()
    asked = len(telegram.calls_to("getUpdates"))
    update_id = telegram.push_update(telegram.make_update(telegram.private_chat(ADA["id"]), ADA, "later"))
    await telegram_info(telegram)  # a round trip: time for a poller, were one left, to ask
    assert len(telegram.calls_to("getUpdates")) == asked
    assert [u["update_id"] for u in telegram.pending_updates] == [update_id]


async def test_a_webhook_telegram_refuses_stops_the_start_and_frees_the_port(
    start_bot: BotFactory, telegram: TelegramEmulator
) -> None:
    port = free_port()
    with pytest.raises(PlatformStartError, match="Secret token contains unallowed characters"):
        await start_bot(webhook=WebhookConfig(PUBLIC_URL, "not:allowed", "127.0.0.1", port))
    assert telegram.webhook is None
    await start_bot(webhook=webhook(port))  # the port was given back
    assert telegram.webhook is not None


# -- gateways and workers ---------------------------------------------------------------


async def test_a_gateway_receives_and_a_worker_answers(
    start_bot: BotFactory,
    make_intake: IntakeFactory,
    make_engine: EngineFactory,
    telegram: TelegramEmulator,
    tgi: TGIEmulator,
) -> None:
    await start_bot(intake=make_intake(role="gateway"))
    await start_bot(await make_engine(max_new_tokens=12), intake=make_intake(role="worker"), receives=False)
    group = telegram.group(GROUP_ID, "Team", supergroup=True)
    telegram.set_admin(GROUP_ID, telegram.bot_id)  # it receives every message of the group
    telegram.send_user_message(group, BOB, "hello everyone")  # handled at the gateway: not answered
    telegram.send_user_message(group, ADA, "@HeraldBot what is 2+2?")
    await settled(telegram, GROUP_ID, "You said: what is 2+2?")

    # a button under the worker's answer, clicked: the click goes the same way
    answers = iter([" ".join(f"w{i}" for i in range(1, 41)), "and that is the end."])
    tgi.responder = lambda messages: next(answers)
    telegram.send_user_message(group, ADA, "@HeraldBot count to forty")
    note = "✂️ That answer reached my length limit and stops mid-way."
    await settled(telegram, GROUP_ID, note)
    shown = next(m for m in telegram.messages_in(GROUP_ID) if m.text == note)
    query = telegram.send_callback_query(group, ADA, shown.message_id, "cmd:continue")
    await settled(telegram, GROUP_ID, "and that is the end.")
    assert telegram.messages_in(GROUP_ID)[-1].reply_to_message_id == shown.message_id
    assert telegram.callback_answers[query]["answered"]
    assert len(tgi.prompts) == 3  # the unaddressed message never reached the model
    assert len(telegram.calls_to("setMyCommands")) == 1  # by the gateway alone


async def test_an_answer_left_unfinished_is_finished_in_the_same_message(
    start_bot: BotFactory,
    make_intake: IntakeFactory,
    make_engine: EngineFactory,
    telegram: TelegramEmulator,
    tgi: TGIEmulator,
    redis: Redis,
    prefix: str,
) -> None:
    answer = " ".join(f"word{i}" for i in range(60))
    tgi.responder = lambda messages: answer
    tgi.token_delay = 0.1  # six seconds of streaming: the first worker dies in between
    await start_bot(intake=make_intake(role="gateway"))
    first = make_intake(role="worker", intake_visibility_seconds=2)
    dying = await start_bot(intake=first, receives=False)
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "tell me a long story")
    await telegram.wait_until(lambda: len(telegram.messages_in(ADA["id"])) == 1, timeout=10)
    [started] = telegram.messages_in(ADA["id"])
    [(entry_id, _)] = await redis.xrange(Keys(prefix).intake_stream("telegram"))

    async def recorded() -> bool:
        return len(await first.stream.recorded("telegram", entry_id)) == 1

    await eventually(recorded, "the first message recorded")
    await start_bot.stop(dying, grace=0)  # left unfinished, as by a replica that died
    assert started.text != answer

    tgi.token_delay = 0.0
    engine = await make_engine()
    await start_bot(engine, intake=make_intake(role="worker", intake_visibility_seconds=2), receives=False)
    resumed = f"{answer}\n\n{messages.RESUMED}"
    await telegram.wait_until(lambda: started.text == resumed, timeout=20)
    assert [m.message_id for m in telegram.messages_in(ADA["id"])] == [started.message_id]
    assert len(telegram.calls_to("sendMessage")) == 1  # no other message, not even deleted

    conversation = ConversationKey("telegram", str(ADA["id"]), None)

    async def saved() -> bool:
        return len(await engine.memory.history(conversation)) == 2

    await eventually(saved, "the turn saved")
    turns = await engine.memory.history(conversation)
    assert [t.content for t in turns] == ["tell me a long story", answer]


# -- duplicates -------------------------------------------------------------------------


async def test_an_update_delivered_twice_is_answered_once(
    start_bot: BotFactory, telegram: TelegramEmulator, redis: Redis, prefix: str
) -> None:
    port = free_port()
    await start_bot(webhook=webhook(port))
    chat = telegram.private_chat(ADA["id"])
    update = telegram.make_update(chat, ADA, "only once please")
    url = f"http://127.0.0.1:{port}/telegram/hook"
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # Telegram delivers again when it missed the first 200
            async with http.post(url, json=update, headers=SECRET_HEADER) as resp:
                assert resp.status == 200
    await settled(telegram, ADA["id"], "You said: only once please")
    assert len(telegram.calls_to("sendMessage")) == 1

    async def finished() -> bool:  # and gone from the stream: its text is kept no longer
        return await stream_events(redis, prefix) == {}

    await eventually(finished, "the event finished")


async def test_an_update_polled_again_is_answered_once(
    start_bot: BotFactory, telegram: TelegramEmulator
) -> None:
    bot = await start_bot()
    chat = telegram.private_chat(ADA["id"])
    update = telegram.make_update(chat, ADA, "once, by polling")
    telegram.push_update(update)
    await settled(telegram, ADA["id"], "You said: once, by polling")
    await start_bot.stop(bot)
    # a poller that died before confirming it: Telegram gives it to the next one
    telegram.push_update(update)
    await start_bot()
    await telegram.wait_until(lambda: telegram.confirmed.count(update["update_id"]) == 2)
    assert len(telegram.calls_to("sendMessage")) == 1


async def test_a_worker_drops_an_event_it_cannot_read(
    start_bot: BotFactory,
    make_intake: IntakeFactory,
    telegram: TelegramEmulator,
    redis: Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker: Intake = make_intake(role="worker")
    with caplog.at_level(logging.ERROR, logger="herald.telegram"):
        await start_bot(intake=worker, receives=False)
        await worker.put("telegram", "broken-1", {"event": {"text": "no author"}, "reply": {"chat": 1}})
        await worker.put("telegram", "broken-2", {"event": {}, "reply": "nowhere"})

        async def finished() -> bool:
            return (await worker.stream.depth(["telegram"])) == (0, 0)

        await eventually(finished, "both events finished")
    assert caplog.text.count("can't be answered") == 2
    assert telegram.calls_to("sendMessage") == []
    assert telegram.calls_to("getUpdates") == []  # a worker does not receive

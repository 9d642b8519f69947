"""Telegram's flood limits in the Bot API emulator (opt-in: ``flood_limits``), over its
real HTTP API, and Herald's real Telegram adapter streaming within them end to end."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.telegram.request import counts_overall
from core.pacing_share import RateShare, bot_tag
from core.storage.keys import Keys
from tests import test_telegram
from tests.emulators.telegram import FloodLimits, TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually
from tests.test_telegram import ADA, GROUP_ID, BotFactory, IntakeFactory
from tests.test_telegram_emulator import post

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(retry_after: int) -> dict[str, Any]:
    """Telegram's exact answer to a write over a flood limit."""
    return {
        "ok": False,
        "error_code": 429,
        "description": f"Too Many Requests: retry after {retry_after}",
        "parameters": {"retry_after": retry_after},
    }


async def send(emu: TelegramEmulator, chat_id: int, text: str = "hello") -> tuple[int, Any]:
    return await post(emu, "sendMessage", json={"chat_id": chat_id, "text": text})  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def limited(clock: Clock) -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator(flood_limits=FloodLimits(), clock=clock) as emulator:
        yield emulator


# --- the emulator ----------------------------------------------------------------------------


async def test_fourth_message_within_a_second_in_a_private_chat_is_refused(
    limited: TelegramEmulator, clock: Clock
) -> None:
    chat = limited.private_chat(ADA["id"])
    for i in range(3):  # the burst
        status, body = await send(limited, chat["id"], f"m{i}")
        assert (status, body["ok"]) == (200, True)
    clock.now += 0.5
    status, body = await send(limited, chat["id"], "one too many")
    assert status == 429
    assert body == refusal(1)
    assert limited.flood_refusals == Counter({"chat": 1})
    assert [m.text for m in limited.messages_in(chat["id"])] == ["m0", "m1", "m2"]
    assert limited.calls_to("sendMessage")[-1].error == "Too Many Requests: retry after 1"


async def test_edits_count_as_writes(limited: TelegramEmulator) -> None:
    chat = limited.private_chat(ADA["id"])
    _, sent = await send(limited, chat["id"], "draft")
    message_id = sent["result"]["message_id"]
    for text in ("draft 2", "draft 3", "draft 4"):
        status, body = await post(
            limited, "editMessageText", json={"chat_id": chat["id"], "message_id": message_id, "text": text}
        )
    assert (status, body) == (429, refusal(1))
    assert limited.messages_in(chat["id"])[0].text == "draft 3"
    assert limited.flood_refusals == Counter({"chat": 1})


async def test_a_refused_write_takes_no_token(limited: TelegramEmulator, clock: Clock) -> None:
    chat = limited.private_chat(ADA["id"])
    for _ in range(3):
        assert (await send(limited, chat["id"]))[0] == 200
    for _ in range(5):  # refused again and again within the second...
        clock.now += 0.125
        assert await send(limited, chat["id"]) == (429, refusal(1))
    clock.now += 0.375  # ...yet a second after the burst the one token regained is there
    assert (await send(limited, chat["id"]))[0] == 200
    assert await send(limited, chat["id"]) == (429, refusal(1))
    assert limited.flood_refusals == Counter({"chat": 6})
    assert len(limited.messages_in(chat["id"])) == 4


async def test_group_gets_twenty_messages_a_minute(limited: TelegramEmulator, clock: Clock) -> None:
    group = limited.group(GROUP_ID, "Team", supergroup=True)
    private = limited.private_chat(ADA["id"])
    for i in range(20):  # the burst
        assert (await send(limited, GROUP_ID, f"g{i}"))[0] == 200
    assert await send(limited, GROUP_ID) == (429, refusal(3))  # a token every 3 s
    assert (await send(limited, private["id"]))[0] == 200  # other chats have their own limit
    clock.now += 2.0
    assert await send(limited, GROUP_ID) == (429, refusal(1))
    clock.now += 1.0
    assert (await send(limited, GROUP_ID))[0] == 200
    assert limited.flood_refusals == Counter({"chat": 2})
    assert len(limited.messages_in(group["id"])) == 21


async def test_bot_wide_limit_over_all_chats(limited: TelegramEmulator, clock: Clock) -> None:
    chats = [limited.private_chat(600 + n)["id"] for n in range(11)]
    for chat_id in chats[:10]:
        for _ in range(3):
            assert (await send(limited, chat_id))[0] == 200  # 30 writes: the bot's burst
    assert await send(limited, chats[10]) == (429, refusal(1))
    assert limited.flood_refusals == Counter({"global": 1})
    clock.now += 0.1
    assert (await send(limited, chats[10]))[0] == 200


async def test_without_flood_limits_nothing_is_refused() -> None:
    async with TelegramEmulator() as emu:
        chat = emu.private_chat(ADA["id"])
        emu.group(GROUP_ID, "Team", supergroup=True)
        for chat_id in (chat["id"], GROUP_ID):
            for i in range(40):
                assert (await send(emu, chat_id, f"m{i}"))[0] == 200
        assert not emu.flood_refusals
        assert not any(c.error for c in emu.calls)
        assert len(emu.messages_in(GROUP_ID)) == 40


# --- Herald end to end -----------------------------------------------------------------------


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator(flood_limits=FloodLimits()) as emulator:
        yield emulator


#: Herald's bot, started against the emulator above (the fixture `test_telegram` defines)
start_bot = test_telegram.start_bot
make_intake = test_telegram.make_intake


async def test_herald_streams_two_answers_in_a_private_chat_within_the_flood_limits(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    def answer_to(question: str) -> str:
        return " ".join(f"{question}{i}" for i in range(50))

    def responder(messages: list[dict[str, str]]) -> str:
        asked = [m["content"] for m in messages if m.get("role") == "user"][-1]
        return answer_to(asked.split()[-1])

    tgi.responder = responder
    tgi.token_delay = 0.05  # 2.5 s of streaming each: several edits
    await start_bot()
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "stream alpha")
    telegram.send_user_message(chat, ADA, "stream beta")
    expected = {answer_to("alpha"), answer_to("beta")}

    async def both_answered() -> bool:
        return expected <= {m.text for m in telegram.messages_in(chat["id"])}

    await eventually(both_answered, "both answers complete in the chat", timeout=30)
    messages = [m for m in telegram.messages_in(chat["id"]) if m.text in expected]
    assert max(m.edits for m in messages) >= 2  # it really streamed
    assert telegram.flood_refusals == Counter()
    assert not [c for c in telegram.calls if c.error and c.error.startswith("Too Many Requests")]


class TwelveChats:
    """Twelve people who each ask at once, in a private chat, for an answer of 80 tokens
    of its own (the model streams it at 33 tokens a second)."""

    def __init__(self, telegram: TelegramEmulator, tgi: TGIEmulator, first_id: int) -> None:
        self._telegram = telegram
        self.people = [{"id": first_id + n, "is_bot": False, "first_name": f"P{n}"} for n in range(12)]
        self.answers = {p["id"]: " ".join(f"p{p['id']}w{i}" for i in range(80)) for p in self.people}
        tgi.responder = self._respond
        tgi.token_delay = 0.03

    def _respond(self, messages: list[dict[str, str]]) -> str:
        asked = [m["content"] for m in messages if m.get("role") == "user"][-1]
        return self.answers[int(asked.split()[-1])]

    def ask(self) -> None:
        for person in self.people:
            chat = self._telegram.private_chat(int(person["id"]), str(person["first_name"]))
            self._telegram.send_user_message(chat, person, f"answer {person['id']}")

    async def answered(self) -> None:
        async def all_answered() -> bool:
            return all(
                any(m.text == answer for m in self._telegram.messages_in(chat_id))
                for chat_id, answer in self.answers.items()
            )

        await eventually(all_answered, "every answer complete in its chat", timeout=40)


async def test_herald_keeps_answers_in_many_chats_within_the_bots_overall_limit(
    start_bot: BotFactory, telegram: TelegramEmulator, tgi: TGIEmulator
) -> None:
    """The bot's limit over all chats (Telegram: about 30 messages a second; here 10):
    twelve answers at once in twelve private chats write more than that, paced together
    so that Telegram refuses none, and every answer arrives whole. Herald is told 8 a
    second: the emulator counts writes when they arrive, and a busy machine delays some."""
    telegram.flood_limits = FloodLimits(global_per_second=10)
    chats = TwelveChats(telegram, tgi, 700)
    await start_bot(bot_limit=8)
    chats.ask()
    await chats.answered()
    assert telegram.flood_refusals == Counter()
    writes = [c for c in telegram.calls if c.method in ("sendMessage", "editMessageText")]
    assert len(writes) >= 2 * len(chats.people)  # a first message and a final text at least


async def test_replicas_of_one_bot_keep_within_its_overall_limit_together(
    start_bot: BotFactory,
    telegram: TelegramEmulator,
    tgi: TGIEmulator,
    make_intake: IntakeFactory,
    redis: Redis,
    prefix: str,
) -> None:
    """The bot's limit is the bot's, not each process's: a gateway and two workers of one
    bot, each told the bot's 8 a second, count each other and pace at a third each, so
    twelve answers streaming at once on the workers meet no refusal of the bot's 10
    (each pacing at all 8, the workers together met some: checked)."""
    telegram.flood_limits = FloodLimits(global_per_second=10)
    chats = TwelveChats(telegram, tgi, 800)
    tgi.max_concurrent_requests = 16  # each worker may stream up to what the model says
    key = Keys(prefix).rate_share("telegram", bot_tag(telegram.token))
    shares = [RateShare(redis, key, 8, period=0.1) for _ in range(3)]
    await start_bot(intake=make_intake(role="gateway"), share=shares[0], bot_limit=8)
    for share in shares[1:]:
        await start_bot(intake=make_intake(role="worker"), receives=False, share=share, bot_limit=8)
    chats.ask()
    await chats.answered()
    assert telegram.flood_refusals == Counter()
    assert all(share.present == 3 for share in shares)


@pytest.mark.parametrize(
    ("method", "counted"),
    [
        ("sendMessage", True),
        ("editMessageText", True),
        ("sendPhoto", True),
        ("sendChatAction", False),
        ("getUpdates", False),
        ("answerCallbackQuery", False),
        ("deleteMessage", False),
    ],
)
def test_which_bot_api_calls_count_against_the_bots_overall_limit(method: str, counted: bool) -> None:
    assert counts_overall(f"https://api.telegram.org/bot123:abc/{method}") is counted

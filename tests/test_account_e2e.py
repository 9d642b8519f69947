"""`/account` end to end (issue 14): the real python-telegram-bot client against the Bot API
emulator (and discord.py against the Discord emulator), the real engine, Redis and the TGI
emulator, with the Bluesky stand-in serving the account a chat connects.

A chat's manager begins in the group (`/account add bluesky`), finishes in a DM with the
credentials; Herald checks them once with Bluesky and answers with the handle it will post
as; an approved post `to=bluesky` then goes out once under that account. Credentials typed
in a group, or sent by someone who doesn't manage the chat, connect nothing and reach no
network. The app password is never in a message Herald sent, in Herald's log lines (DEBUG
included) or in Redis as typed. The chat libraries' own DEBUG lines do carry it: the two
tests below fail without Herald's logging policy (bots/logs.py quiets those loggers).

A chat's own server must be https at a public address; the stand-in is http on loopback,
so the engine's `Clients` allows 127.0.0.1 by name (`build_scheduling(..., clients=…)`).

Every wait is for a condition; slots are run with explicit times (`Runner.run_slot`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.telegram.bot import TelegramBot
from bots.logs import CHATTY, RETRYING, quiet_libraries
from bots.runtime import Scheduling, build_engine, build_intake, build_llm, build_scheduling
from core.chat.access import AccessPolicy
from core.chat.engine import Engine
from core.commands.accounts import MANAGERS_ONLY
from core.config import Settings
from core.posts.schedules.store import Post, PostState, Schedule
from core.search.addresses import AddressPolicy
from core.social.bluesky import post_url
from core.social.clients import Clients
from core.social.delivery import DeliveryState, DeliveryStore
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.conftest import SettingsFactory
from tests.emulators.bluesky import Account as BlueskyAccount
from tests.emulators.bluesky import BlueskyEmulator
from tests.emulators.telegram import BotMessage, TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually, start_serving, stop_serving

pytestmark = pytest.mark.timeout(90)

ADA: dict[str, Any] = {"id": 1501, "is_bot": False, "first_name": "Ada", "username": "ada"}
BOB: dict[str, Any] = {"id": 1502, "is_bot": False, "first_name": "Bob", "username": "bob"}
GROUP = -100150
HANDLE = "team.bsky.social"
APP_PASSWORD = "abcd-efgh-ijkl-mnop"
SECRET_KEY = "k" * 40
LOOPBACK = AddressPolicy(also_allowed=frozenset({ipaddress.ip_address("127.0.0.1")}))
CREATE_RECORD = "com.atproto.repo.createRecord"
#: always ahead (a time in the past is refused), never run by a clock: slots are given
DAY = dt.date.today() + dt.timedelta(days=40)
SLOT = dt.datetime.combine(DAY, dt.time(9, 0), tzinfo=dt.UTC)
AT = f'at="{DAY} 09:00" tz=UTC'
POST_TEXT = "Herald 2.0 is out: faster answers and fewer bugs. #herald"

BEGUN = "To connect a Bluesky account to this chat, send me a direct message within 15 minutes:"
NEVER_IN_A_GROUP = "Never type credentials in a group: I kept nothing."
START_IN_THE_CHAT = "Start in the chat the account is for: run /account add bluesky there"


# -- Herald wired with a `Clients` that may reach the loopback stand-in -------------------


@dataclasses.dataclass
class Herald:
    """One replica, wired as `herald run` wires it but with `Clients` that may reach the
    loopback stand-in."""

    settings: Settings
    redis: Redis
    scheduling: Scheduling
    engine: Engine

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)

    async def stored_accounts(self, platform: str, chat_id: str) -> dict[str, str]:
        """A chat's account hash in Redis, as kept."""
        raw = await self.redis.hgetall(self.keys.social_accounts(platform, chat_id))
        return {str(k): str(v) for k, v in raw.items()}

    async def connecting(self, platform: str, user_id: str) -> dict[str, str]:
        """What a person has begun connecting, network → chat."""
        raw = await self.redis.hgetall(self.keys.account_connecting(platform, user_id))
        return {str(k): str(v) for k, v in raw.items()}

    async def redis_values(self) -> list[str]:
        """Every key and value under this test's prefix, read by type (not DUMPed: an RDB
        dump may LZF-compress a value and hide its text), once the events answered have
        left the intake's streams (an acknowledgement may wait 50 ms for company)."""

        async def streams_empty() -> bool:
            streams = [k async for k in self.redis.scan_iter(match=f"{self.settings.redis_prefix}:intake:*")]
            for key in streams:
                if str(await self.redis.type(key)) == "stream" and await self.redis.xlen(key):
                    return False
            return True

        await eventually(streams_empty, "the answered events acknowledged", 10)
        found: list[str] = []
        async for key in self.redis.scan_iter(match=f"{self.settings.redis_prefix}:*"):
            found.append(str(key))
            kind = str(await self.redis.type(key))  # the connection decodes replies
            if kind == "string":
                found.append(str(await self.redis.get(key)))
            elif kind == "hash":
                found.extend(f"{k!s}={v!s}" for k, v in (await self.redis.hgetall(key)).items())
            elif kind == "list":
                found.extend(str(v) for v in await self.redis.lrange(key, 0, -1))
            elif kind == "set":
                found.extend(str(v) for v in await self.redis.smembers(key))
            elif kind == "zset":
                found.extend(str(v) for v in await self.redis.zrange(key, 0, -1))
            elif kind == "stream":
                found.extend(str(entry) for entry in (await self.redis.xrange(key)) or [])
            else:
                raise AssertionError(f"a key of a type this test doesn't read: {key} ({kind})")
        return found


@contextlib.asynccontextmanager
async def herald(settings: Settings) -> AsyncIterator[Herald]:
    redis = connect_redis(settings.redis_url or "")
    llm = build_llm(settings)
    await llm.start()
    clients = Clients(x_api_url=settings.x_api_url, policy=LOOPBACK)
    access = AccessPolicy.from_settings(settings)
    wired = build_scheduling(settings, redis, llm, access, Keys(settings.redis_prefix), clients=clients)
    engine = build_engine(settings, redis, llm, scheduling=wired)
    await engine.cancels.start()
    try:
        yield Herald(settings, redis, wired, engine)
    finally:
        await wired.runner.close()
        await engine.cancels.stop()
        await llm.close()
        await redis.aclose()


@dataclasses.dataclass
class Team:
    """A Telegram supergroup with Herald in it, Ada administering it and Bob a member;
    each of them also has a private chat with the bot."""

    telegram: TelegramEmulator
    bluesky: BlueskyEmulator
    account: BlueskyAccount
    herald: Herald
    group: dict[str, Any]

    @property
    def scheduling(self) -> Scheduling:
        return self.herald.scheduling

    def dm(self, person: dict[str, Any]) -> dict[str, Any]:
        return self.telegram.private_chat(int(person["id"]), str(person["first_name"]))

    def sent(self, chat_id: int) -> list[BotMessage]:
        return self.telegram.messages_in(chat_id)

    async def say(self, chat: dict[str, Any], person: dict[str, Any], text: str) -> str:
        """`person` writes `text` in `chat`; the text of Herald's first new message there."""
        chat_id = int(chat["id"])
        seen = len(self.sent(chat_id))
        self.telegram.send_user_message(chat, person, text)
        await self.telegram.wait_until(lambda: len(self.sent(chat_id)) > seen, 15)
        return self.sent(chat_id)[seen].text

    async def in_group(self, person: dict[str, Any], text: str) -> str:
        return await self.say(self.group, person, text)

    async def in_dm(self, person: dict[str, Any], text: str) -> str:
        return await self.say(self.dm(person), person, text)

    def credentials(self, password: str = APP_PASSWORD) -> str:
        return f"handle={HANDLE} app_password={password} service={self.bluesky.url}"

    async def message_starting(self, prefix: str | tuple[str, ...], timeout: float = 15.0) -> str:  # noqa: ASYNC109
        def found() -> BotMessage | None:
            return next((m for m in self.sent(GROUP) if m.text.startswith(prefix)), None)

        await self.telegram.wait_until(lambda: found() is not None, timeout)
        message = found()
        assert message is not None
        return message.text

    async def stored_accounts(self) -> dict[str, str]:
        return await self.herald.stored_accounts("telegram", str(GROUP))

    async def connecting(self, person: dict[str, Any]) -> dict[str, str]:
        return await self.herald.connecting("telegram", str(person["id"]))

    def everything_sent(self) -> list[str]:
        """Every text Herald sent to any Telegram chat, each edit included."""
        texts: list[str] = []
        for call in self.telegram.calls:
            if call.method.lower() in ("sendmessage", "editmessagetext"):
                texts.append(str(call.params.get("text", "")))
        for chat_id in (GROUP, int(ADA["id"]), int(BOB["id"])):
            for message in self.sent(chat_id):
                texts.extend([message.text, *message.history])
        return texts

    # -- scheduling a post for the networks, and approving it --

    async def draft(self, command: str) -> str:
        shown = await self.in_group(ADA, command)
        match = re.match(r"Draft (\w+) for ", shown)
        assert match is not None, shown
        return match[1]

    async def schedule(self, command: str) -> Schedule:
        answer = await self.in_group(ADA, command)
        match = re.match(r"Scheduled (\w+):", answer)
        assert match is not None, answer
        schedule = await self.scheduling.store.get(match[1])
        assert schedule is not None
        return schedule

    async def pending(self, schedule: Schedule) -> tuple[Post, BotMessage]:
        """The slot fires: its post and the approval request it sent to the group."""
        post = await self.scheduling.runner.run_slot(schedule, SLOT)
        assert post is not None and post.state is PostState.PENDING_APPROVAL
        await self.message_starting(f"Draft {post.id}")
        request = next(m for m in self.sent(GROUP) if m.text.startswith(f"Draft {post.id}"))
        return post, request


@pytest.fixture
async def bluesky() -> AsyncIterator[tuple[BlueskyEmulator, BlueskyAccount]]:
    async with BlueskyEmulator() as emulator:
        yield emulator, emulator.add_account(HANDLE, app_password=APP_PASSWORD)


@contextlib.asynccontextmanager
async def team_of(
    settings: Settings, bluesky: BlueskyEmulator, account: BlueskyAccount
) -> AsyncIterator[Team]:
    async with herald(settings) as replica, TelegramEmulator() as telegram:
        wired = replica.scheduling
        intake = build_intake(settings, replica.redis)
        bot = TelegramBot(
            replica.engine,
            telegram.token,
            intake=intake,
            api_url=telegram.url,
            poll_timeout=1,
            actions=wired.actions,
        )
        await start_serving(bot, intake)
        wired.publishers["telegram"] = bot.publisher()
        group = telegram.group(GROUP, "Social team", supergroup=True)
        telegram.set_admin(GROUP, int(ADA["id"]))
        telegram.user(int(BOB["id"]), "Bob", "bob")
        try:
            yield Team(telegram, bluesky, account, replica, group)
        finally:
            await stop_serving(bot, intake)


@pytest.fixture
async def team(
    make_settings: SettingsFactory, bluesky: tuple[BlueskyEmulator, BlueskyAccount], tgi: TGIEmulator
) -> AsyncIterator[Team]:
    async with team_of(make_settings(secret_key=SECRET_KEY), *bluesky) as started:
        yield started


# -- 1: begun in the group, finished in a DM, listed, and published to -------------------


async def test_an_admin_connects_bluesky_in_a_dm_and_an_approved_post_goes_out_under_it(
    team: Team, tgi: TGIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    begun = await team.in_group(ADA, "/account add bluesky")
    assert begun.startswith(BEGUN), begun
    assert "/account add bluesky handle=you.bsky.social app_password=" in begun  # how to finish
    assert await team.connecting(ADA) == {"bluesky": str(GROUP)}
    assert team.bluesky.calls == []  # nothing asked of the network yet

    finished = await team.in_dm(ADA, f"/account add bluesky {team.credentials()}")
    assert finished.startswith(
        f"Connected Bluesky {HANDLE} (https://bsky.app/profile/{HANDLE}) to that chat: its posts "
        "with to=bluesky go out as this account."
    ), finished
    # checked once with the network (who am I), as the account typed
    [login] = team.bluesky.calls_to("com.atproto.server.createSession")
    assert login.body["identifier"] == HANDLE and login.status == 200
    assert await team.connecting(ADA) == {}  # used up
    [kept] = (await team.stored_accounts()).values()
    assert HANDLE in kept and APP_PASSWORD not in kept  # the public part readable, the rest sealed

    listed = await team.in_group(BOB, "/account list")  # anyone in the chat may see where it posts
    assert listed.startswith("This chat publishes to:"), listed
    assert f"• Bluesky {HANDLE} (connected by {ADA['id']})" in listed

    # a post scheduled in the group for Bluesky, approved there, goes out once as that account
    tgi.responder = lambda messages: POST_TEXT
    draft_id = await team.draft("/draft x announce v2")
    schedule = await team.schedule(f"/schedule draft {draft_id} {AT} to=bluesky")
    assert schedule.destinations == ("bluesky",)
    post, request = await team.pending(schedule)
    assert team.bluesky.calls_to(CREATE_RECORD) == []  # nothing leaves before a person approves
    team.telegram.send_callback_query(team.group, ADA, request.message_id, f"cmd:schedule approve {post.id}")
    report = await team.message_starting(f"Post {post.id}:")
    await team.message_starting(f"Approved and published post {post.id}.")

    [record] = team.bluesky.records()
    assert record.did == team.account.did and record.value["text"] == POST_TEXT
    assert len(team.bluesky.calls_to(CREATE_RECORD)) == 1
    assert f"Bluesky ({HANDLE}): published {post_url(HANDLE, record.uri)}" in report
    stored = await team.scheduling.store.post(post.id)
    assert stored is not None and stored.state is PostState.PUBLISHED
    deliveries = await DeliveryStore(team.herald.redis, team.herald.keys).all(post.id)
    assert deliveries["bluesky"].state is DeliveryState.PUBLISHED
    assert POST_TEXT not in [m.text for m in team.sent(GROUP)]  # not published into the chat
    # approving again sends nothing more
    team.telegram.send_user_message(team.group, ADA, f"/schedule approve {post.id}")
    await team.message_starting(f"Post {post.id} is already published.")
    assert len(team.bluesky.calls_to(CREATE_RECORD)) == 1 and len(team.bluesky.records()) == 1

    # 4: the app password is in no message Herald sent, none of Herald's log lines, and
    # not in Redis as typed (the libraries' own DEBUG lines: the tests below)
    assert [t for t in team.everything_sent() if APP_PASSWORD in t] == []
    assert [v for v in await team.herald.redis_values() if APP_PASSWORD in v] == []
    herald_lines = [r for r in caplog.records if r.name.startswith("herald")]
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG lines were captured"
    assert herald_lines, "Herald's own loggers were captured"
    assert [r.getMessage() for r in herald_lines if APP_PASSWORD in r.getMessage()] == []


@pytest.fixture
def herald_logging() -> Iterator[None]:
    """The libraries' log levels as `herald run` sets them (bots/logs.py), restored after."""
    names = (*CHATTY, *RETRYING)
    saved = {name: logging.getLogger(name).level for name in names}
    quiet_libraries(logging.DEBUG)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


async def test_the_dm_holding_the_app_password_is_in_no_log_line_even_at_debug(
    team: Team, caplog: pytest.LogCaptureFixture, herald_logging: None
) -> None:
    caplog.set_level(logging.DEBUG)
    await team.in_group(ADA, "/account add bluesky")
    assert (await team.in_dm(ADA, f"/account add bluesky {team.credentials()}")).startswith("Connected ")
    assert sorted({r.name for r in caplog.records if APP_PASSWORD in r.getMessage()}) == []


# -- 2: credentials typed in the group ----------------------------------------------------


async def test_credentials_typed_in_the_group_are_refused_kept_nowhere_and_sent_nowhere(
    team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = await team.in_group(ADA, f"/account add bluesky {team.credentials()}")
    assert refused.startswith(NEVER_IN_A_GROUP), refused
    assert "revoke" in refused and APP_PASSWORD not in refused
    assert not await team.herald.redis.exists(team.herald.keys.social_accounts("telegram", str(GROUP)))
    assert await team.connecting(ADA) == {}  # nothing begun either
    assert team.bluesky.calls == []  # never sent to the network

    # nothing begun: the same credentials in a DM connect nothing, and still reach no network
    dm = await team.in_dm(ADA, f"/account add bluesky {team.credentials()}")
    assert dm.startswith(START_IN_THE_CHAT), dm
    assert team.bluesky.calls == []
    assert not await team.herald.redis.exists(team.herald.keys.social_accounts("telegram", str(GROUP)))
    listed = await team.in_group(ADA, "/account list")
    assert listed.startswith("This chat publishes to no network yet."), listed

    assert [t for t in team.everything_sent() if APP_PASSWORD in t] == []
    assert [v for v in await team.herald.redis_values() if APP_PASSWORD in v] == []
    assert [
        r.name for r in caplog.records if r.name.startswith("herald") and APP_PASSWORD in r.getMessage()
    ] == []


# -- 3: someone who doesn't manage the chat ----------------------------------------------


async def test_a_member_who_is_not_an_admin_connects_nothing(team: Team) -> None:
    refused = await team.in_group(BOB, "/account add bluesky")
    assert refused == MANAGERS_ONLY
    assert await team.connecting(BOB) == {}

    dm = await team.in_dm(BOB, f"/account add bluesky {team.credentials()}")
    assert dm.startswith(START_IN_THE_CHAT), dm
    assert team.bluesky.calls == []
    assert not await team.herald.redis.exists(team.herald.keys.social_accounts("telegram", str(GROUP)))
    # nor may they remove what an admin connected
    await team.in_group(ADA, "/account add bluesky")
    assert (await team.in_dm(ADA, f"/account add bluesky {team.credentials()}")).startswith("Connected ")
    assert await team.in_group(BOB, "/account remove bluesky") == MANAGERS_ONLY
    assert len(await team.stored_accounts()) == 1
    # and Bob's DM still connects nothing (Ada's begun connection was hers, and is used up)
    dm = await team.in_dm(BOB, f"/account add bluesky {team.credentials()}")
    assert dm.startswith(START_IN_THE_CHAT), dm
    assert len(team.bluesky.calls_to("com.atproto.server.createSession")) == 1  # Ada's only


# -- 4: a wrong app password: refused by the network, shown nowhere ------------------------


async def test_a_refused_app_password_is_shown_nowhere_and_kept_nowhere(
    team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wxyz-wxyz-wxyz-wxyz"
    await team.in_group(ADA, "/account add bluesky")
    answer = await team.in_dm(ADA, f"/account add bluesky {team.credentials(wrong)}")
    assert answer.startswith("Bluesky refused these credentials:"), answer
    [login] = team.bluesky.calls_to("com.atproto.server.createSession")
    assert login.status == 401
    assert not await team.herald.redis.exists(team.herald.keys.social_accounts("telegram", str(GROUP)))
    assert await team.connecting(ADA) == {"bluesky": str(GROUP)}  # she may try again
    assert [t for t in team.everything_sent() if wrong in t] == []
    assert [v for v in await team.herald.redis_values() if wrong in v] == []
    assert [r.name for r in caplog.records if r.name.startswith("herald") and wrong in r.getMessage()] == []


# -- the same through discord.py: slash commands in a guild channel and in a DM ---------------

DISCORD_GUILD, DISCORD_CHANNEL = 15000, 15001
MANAGE_GUILD = 1 << 5
DISCORD_ADA, DISCORD_BOB = 1901, 1902


@dataclasses.dataclass
class DiscordTeam:
    """A server with one channel and Herald in it; Ada manages the server, Bob is a member."""

    emu: Any  # tests.emulators.discord.DiscordEmulator (imported where discord.py is wanted)
    herald: Herald
    bluesky: BlueskyEmulator
    ada: dict[str, Any]
    bob: dict[str, Any]

    def dm(self, user: dict[str, Any]) -> int:
        return int(self.emu.dm_channel(int(user["id"])))

    async def account(self, user: dict[str, Any], sub: str, where: int, **values: str) -> str:
        """`user` runs `/account <sub>` in the channel or a DM; Herald's answer."""
        options = [{"name": name, "value": value} for name, value in values.items()]
        handle = self.emu.slash_command(
            "account",
            [{"name": sub, "type": 1, "options": options}],
            channel_id=where,
            user=user,
            guild_id=DISCORD_GUILD if where == DISCORD_CHANNEL else None,
        )

        def answered() -> bool:
            shown = self.emu.interaction_response(handle)
            return shown is not None and not shown.loading and bool(shown.content)

        await self.emu.wait_until(answered, 15)
        return str(self.emu.interaction_response(handle).content)

    def credentials(self) -> dict[str, str]:
        return {"handle": HANDLE, "app_password": APP_PASSWORD, "service": self.bluesky.url}

    def everything_sent(self) -> list[str]:
        """Every text the bot showed in the channel and in Ada's and Bob's DMs, edits included."""
        return [
            text
            for where in (DISCORD_CHANNEL, self.dm(self.ada), self.dm(self.bob))
            for message in self.emu.messages_in(where)
            for text in (message.content, *message.history)
        ]


@pytest.fixture
async def discord_team(
    make_settings: SettingsFactory, bluesky: tuple[BlueskyEmulator, BlueskyAccount], tgi: TGIEmulator
) -> AsyncIterator[DiscordTeam]:
    from adapters.discord.bot import DiscordBot
    from tests.emulators.discord import DiscordEmulator, point_discord_py_at

    async with DiscordEmulator() as emu, herald(make_settings(secret_key=SECRET_KEY)) as replica:
        with point_discord_py_at(emu):
            emu.guild(DISCORD_GUILD, "Team", channels=[DISCORD_CHANNEL])
            ada, bob = emu.user(DISCORD_ADA, "ada"), emu.user(DISCORD_BOB, "bob")
            emu.member(DISCORD_GUILD, DISCORD_ADA, permissions=MANAGE_GUILD)
            emu.member(DISCORD_GUILD, DISCORD_BOB)
            intake = build_intake(replica.settings, replica.redis)
            bot = DiscordBot(
                replica.engine,
                emu.token,
                redis=replica.redis,
                keys=replica.keys,
                intake=intake,
                ready_timeout=10,
                actions=replica.scheduling.actions,
            )
            await start_serving(bot, intake)
            try:
                yield DiscordTeam(emu, replica, bluesky[0], ada, bob)
            finally:
                await stop_serving(bot, intake)


async def test_discord_slash_commands_connect_bluesky_from_a_dm_for_the_channel(
    discord_team: DiscordTeam,
    bluesky: tuple[BlueskyEmulator, BlueskyAccount],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    team, (network, bluesky_account) = discord_team, bluesky
    replica, ada, bob, channel = team.herald, team.ada, team.bob, str(DISCORD_CHANNEL)

    # typed in the channel: refused; nothing begun, kept or sent
    refused = await team.account(ada, "add", DISCORD_CHANNEL, network="bluesky", **team.credentials())
    assert refused.startswith(NEVER_IN_A_GROUP), refused
    assert await replica.connecting("discord", str(DISCORD_ADA)) == {}
    assert not await replica.redis.exists(replica.keys.social_accounts("discord", channel))
    assert network.calls == []

    # a member who doesn't manage the server: refused, and their DM connects nothing
    assert await team.account(bob, "add", DISCORD_CHANNEL, network="bluesky") == MANAGERS_ONLY
    dm = await team.account(bob, "add", team.dm(bob), network="bluesky", **team.credentials())
    assert dm.startswith(START_IN_THE_CHAT), dm
    assert network.calls == []

    # begun in the channel by a manager, finished in her DM
    begun = await team.account(ada, "add", DISCORD_CHANNEL, network="bluesky")
    assert begun.startswith(BEGUN), begun
    assert await replica.connecting("discord", str(DISCORD_ADA)) == {"bluesky": channel}
    finished = await team.account(ada, "add", team.dm(ada), network="bluesky", **team.credentials())
    assert finished.startswith(
        f"Connected Bluesky {HANDLE} (https://bsky.app/profile/{HANDLE}) to that chat"
    ), finished
    assert len(network.calls_to("com.atproto.server.createSession")) == 1
    [kept] = (await replica.stored_accounts("discord", channel)).values()
    assert bluesky_account.did in kept and APP_PASSWORD not in kept

    listed = await team.account(bob, "list", DISCORD_CHANNEL)
    assert listed.startswith("This chat publishes to:"), listed
    assert f"Bluesky {HANDLE} (connected by {DISCORD_ADA})" in listed
    # /account list is about a chat: in a DM it says where to run it
    assert await team.account(ada, "list", team.dm(ada)) == "Run this in the chat whose accounts you mean."
    # Bob may not remove it
    assert await team.account(bob, "remove", DISCORD_CHANNEL, network="bluesky") == MANAGERS_ONLY
    assert len(await replica.stored_accounts("discord", channel)) == 1

    # the app password: in no message the bot made, none of Herald's log lines, not in Redis
    sent = team.everything_sent()
    assert sent and [t for t in sent if APP_PASSWORD in t] == []
    assert [v for v in await replica.redis_values() if APP_PASSWORD in v] == []
    herald_lines = [r.getMessage() for r in caplog.records if r.name.startswith("herald")]
    assert herald_lines and [line for line in herald_lines if APP_PASSWORD in line] == []


async def test_discord_the_app_password_is_in_no_log_line_even_at_debug(
    discord_team: DiscordTeam, caplog: pytest.LogCaptureFixture, herald_logging: None
) -> None:
    caplog.set_level(logging.DEBUG)
    team = discord_team
    assert (await team.account(team.ada, "add", DISCORD_CHANNEL, network="bluesky")).startswith(BEGUN)
    finished = await team.account(team.ada, "add", team.dm(team.ada), network="bluesky", **team.credentials())
    assert finished.startswith("Connected ")
    assert sorted({r.name for r in caplog.records if APP_PASSWORD in r.getMessage()}) == []

"""Issue 14 end to end: posts approved in a Discord or Telegram chat leave for X, Bluesky
and Mastodon, through the real discord.py and python-telegram-bot clients against the
platform emulators, with the install's own accounts served by the network stand-ins.

What is checked is what a team would see: each network's own records (one post, or one
reply chain cut by that network's counting), the links in the chat, the approver told in
plain words when a network refuses, and exactly once when approvals race, replicas race,
or the replica publishing is killed mid-publish (a `herald run` process, SIGKILLed while
the networks hold their answers).

No test waits on the wall clock for its outcome: slots are run with explicit times
(`Runner.run_slot`), faults are the stand-ins' hooks (holds, refusals), and every wait is
for a condition. Two waits are real time by nature and bounded: a Bluesky 429 whose reset
is one second away, and the killed leader's lease (15 s, not configurable) running out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.telegram.bot import TelegramBot
from bots.redis_server import free_port
from bots.runtime import Scheduling, build_engine, build_intake, build_llm, build_scheduling
from core.chat.access import AccessPolicy
from core.chat.engine import Engine
from core.config import Settings
from core.llm.base import LLMClient
from core.posts.schedules.leader import LeaderLease
from core.posts.schedules.runner import SchedulerService
from core.posts.schedules.social import SocialPublishing
from core.posts.schedules.store import Post, PostState, Schedule
from core.posts.targets import Target, split_to_fit
from core.social.bluesky import post_url
from core.social.bluesky_text import graphemes
from core.social.clients import identify_installed
from core.social.delivery import LEASE_SECONDS, Delivery, DeliveryState, DeliveryStore
from core.social.mastodon_text import MastodonMeasure
from core.social.x import DUPLICATE_MESSAGE
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.conftest import SettingsFactory
from tests.emulators.bluesky import Account as BlueskyAccount
from tests.emulators.bluesky import BlueskyEmulator
from tests.emulators.mastodon import EmulatedAccount, MastodonEmulator
from tests.emulators.telegram import BotMessage, TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.emulators.x import EmulatedTweet, XAccount, XEmulator
from tests.herald_process import herald_run
from tests.support import eventually, start_serving, stop_serving

pytestmark = pytest.mark.timeout(90)

ADMIN: dict[str, Any] = {"id": 1401, "is_bot": False, "first_name": "Ada", "username": "ada"}
GROUP = -100140
X_USER = "herald_hq"
BLUESKY_HANDLE = "herald.bsky.social"
BLUESKY_APP_PASSWORD = "abcd-efgh-ijkl-mnop"
MASTODON_USER = "herald"
MASTODON_TOKEN = "mastodon-token-of-herald"
MASTODON_DOMAIN = "social.example"
CREATE_RECORD = "com.atproto.repo.createRecord"
#: always ahead (a time in the past is refused), never run by a clock: slots are given
DAY = dt.date.today() + dt.timedelta(days=40)
SLOT = dt.datetime.combine(DAY, dt.time(9, 0), tzinfo=dt.UTC)
AT = f'at="{DAY} 09:00" tz=UTC'
EVERYWHERE = "x,bluesky,mastodon"

POST_TEXT = "Herald 2.0 is out: faster answers and fewer bugs. Read more at https://herald.example/2 #herald"
#: long enough for a thread everywhere; a link (23 on X and Mastodon, its length on
#: Bluesky), emoji (2 on X, 1 grapheme elsewhere) and CJK (2 on X) make the cuts differ
LONG_TEXT = " ".join(
    [
        "Herald 2.0 ships today after six months of work with our community 🎉🎉🎉.",
        "Answers now stream into every chat as they are written, so nobody waits for a wall of text.",
        "Drafts for X, Bluesky and Mastodon are measured the way each network counts them.",
        "Scheduled posts wait for a person's approval, and publish exactly once.",
        "日本語のチャットでも同じように動きます。",
        "The full list of changes is at https://herald.example/releases/2.0/notes-for-everyone.",
        "Thank you to everyone who reported bugs, wrote docs and tried the betas 🙏.",
        "Tell us what you build with it! #herald #release",
    ]
)


# -- the networks' stand-ins, serving the install's own accounts --------------------------


@dataclass
class Networks:
    x: XEmulator
    x_account: XAccount
    bluesky: BlueskyEmulator
    bluesky_account: BlueskyAccount
    mastodon: MastodonEmulator
    mastodon_account: EmulatedAccount

    def settings(self, *, x_oauth2: bool = False) -> dict[str, Any]:
        """HERALD_X_* (OAuth 1.0a, or an OAuth 2.0 user token), HERALD_BLUESKY_*, HERALD_MASTODON_*."""
        x: dict[str, Any] = (
            {"x_user_token": self.x_account.user_token}
            if x_oauth2
            else {
                "x_api_key": self.x.consumer_key,
                "x_api_secret": self.x.consumer_secret,
                "x_access_token": self.x_account.access_token,
                "x_access_token_secret": self.x_account.access_token_secret,
            }
        )
        return x | {
            "x_api_url": self.x.url,
            "bluesky_handle": BLUESKY_HANDLE,
            "bluesky_app_password": BLUESKY_APP_PASSWORD,
            "bluesky_service": self.bluesky.url,
            "mastodon_url": self.mastodon.url,
            "mastodon_token": MASTODON_TOKEN,
        }

    def secrets(self) -> list[str]:
        """What must never reach a log or a chat."""
        return [
            self.x.consumer_secret,
            self.x_account.access_token,
            self.x_account.access_token_secret,
            self.x_account.user_token,
            BLUESKY_APP_PASSWORD,
            MASTODON_TOKEN,
        ]

    def tweets(self) -> list[EmulatedTweet]:
        return self.x.tweets_by(self.x_account)

    def skeets(self) -> list[Any]:
        return self.bluesky.records(did=self.bluesky_account.did)

    def toots(self) -> list[Any]:
        return self.mastodon.statuses_of(MASTODON_USER)

    def counts(self) -> tuple[int, int, int]:
        return len(self.tweets()), len(self.skeets()), len(self.toots())

    def tweet_url(self, tweet: EmulatedTweet) -> str:
        return f"https://x.com/{X_USER}/status/{tweet.id}"

    def skeet_url(self, record: Any) -> str:
        return post_url(BLUESKY_HANDLE, record.uri)


@pytest.fixture
async def networks() -> AsyncIterator[Networks]:
    async with (
        XEmulator() as x,
        BlueskyEmulator() as bluesky,
        MastodonEmulator(domain=MASTODON_DOMAIN, max_characters=500) as mastodon,
    ):
        yield Networks(
            x,
            x.add_account(X_USER, "Herald HQ"),
            bluesky,
            bluesky.add_account(BLUESKY_HANDLE, app_password=BLUESKY_APP_PASSWORD),
            mastodon,
            mastodon.add_account(MASTODON_USER, MASTODON_TOKEN, display_name="Herald"),
        )


# -- a replica of Herald, wired as `herald run` wires it -----------------------------------


@dataclass
class Replica:
    settings: Settings
    redis: Redis
    llm: LLMClient
    scheduling: Scheduling
    engine: Engine

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)

    async def deliveries(self, post_id: str) -> dict[str, Delivery]:
        return await DeliveryStore(self.redis, self.keys).all(post_id)

    async def post(self, post_id: str) -> Post:
        post = await self.scheduling.store.post(post_id)
        assert post is not None
        return post


@contextlib.asynccontextmanager
async def replica(settings: Settings, *, clock: Callable[[], float] | None = None) -> AsyncIterator[Replica]:
    """One replica with its own Redis connection; the install's accounts checked once with
    their networks (`identify_installed`, as bots.runtime.open_runtime does). `clock`: the
    networks' publishing sees this time (a replica that comes after a dead one's hold)."""
    redis = connect_redis(settings.redis_url or "")
    llm = build_llm(settings)
    await llm.start()
    keys = Keys(settings.redis_prefix)
    scheduling = build_scheduling(settings, redis, llm, AccessPolicy.from_settings(settings), keys)
    if clock is not None:
        # SocialPublishing makes its Deliverer with the default lease (120 s) and takes no
        # other; its clock is the one injection there is
        scheduling.runner.social = SocialPublishing(
            scheduling.accounts,
            DeliveryStore(redis, keys),
            scheduling.clients,
            owner=f"after-{secrets.token_hex(4)}",
            clock=clock,
        )
    await identify_installed(scheduling.accounts, scheduling.clients)
    engine = build_engine(settings, redis, llm, scheduling=scheduling)
    await engine.cancels.start()
    try:
        yield Replica(settings, redis, llm, scheduling, engine)
    finally:
        await scheduling.runner.close()
        await engine.cancels.stop()
        await llm.close()
        await redis.aclose()


# -- Telegram --------------------------------------------------------------------------


@dataclass
class TelegramChat:
    """The team's Telegram group, with Herald in it and Ada managing it."""

    telegram: TelegramEmulator
    herald: Replica
    networks: Networks
    group: dict[str, Any]

    def texts(self) -> list[str]:
        """The bot's messages, with the mentions Herald quiets on Telegram (＠) read as @."""
        return [m.text.replace("\uff20", "@") for m in self.telegram.messages_in(GROUP)]

    async def say(self, text: str) -> BotMessage:
        """Ada writes `text`; the bot's first new message in answer."""
        seen = len(self.telegram.messages_in(GROUP))
        self.telegram.send_user_message(self.group, ADMIN, text)
        await self.telegram.wait_until(lambda: len(self.telegram.messages_in(GROUP)) > seen, 10)
        return self.telegram.messages_in(GROUP)[seen]

    async def message_starting(
        self,
        prefix: str | tuple[str, ...],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> BotMessage:
        def found() -> BotMessage | None:
            return next((m for m in self.telegram.messages_in(GROUP) if m.text.startswith(prefix)), None)

        await self.telegram.wait_until(lambda: found() is not None, timeout)
        message = found()
        assert message is not None
        return message

    async def draft(self, command: str) -> str:
        shown = await self.say(command)
        match = re.match(r"Draft (\w+) for ", shown.text)
        assert match is not None, shown.text
        return match[1]

    async def schedule(self, command: str) -> Schedule:
        answer = await self.say(command)
        match = re.match(r"Scheduled (\w+):", answer.text)
        assert match is not None, answer.text
        schedule = await self.herald.scheduling.store.get(match[1])
        assert schedule is not None
        return schedule

    async def pending(self, schedule: Schedule, slot: dt.datetime = SLOT) -> tuple[Post, BotMessage]:
        """The slot fires: its post and the approval request it sent to the chat."""
        post = await self.herald.scheduling.runner.run_slot(schedule, slot)
        assert post is not None and post.state is PostState.PENDING_APPROVAL
        return post, await self.message_starting(f"Draft {post.id}")

    async def decided(self, post_id: str) -> str:
        """The answer to an approval of `post_id`, once it is settled (after the report)."""
        done = (f"Approved and published post {post_id}.", f"Post {post_id} is ")
        return (await self.message_starting(done, 15)).text

    async def report(self, post_id: str, nth: int = 1) -> str:
        """The approver's account of where post `post_id` went (the `nth` one sent)."""

        def reports() -> list[str]:
            return [t for t in self.texts() if t.startswith(f"Post {post_id}:")]

        await self.telegram.wait_until(lambda: len(reports()) >= nth, 15)
        return reports()[nth - 1]

    def click(self, message: BotMessage, data: str) -> None:
        self.telegram.send_callback_query(self.group, ADMIN, message.message_id, data)


@pytest.fixture
async def chat(
    make_settings: SettingsFactory, networks: Networks, tgi: TGIEmulator
) -> AsyncIterator[TelegramChat]:
    settings = make_settings(**networks.settings())
    async with TelegramEmulator() as telegram, replica(settings) as herald:
        intake = build_intake(settings, herald.redis)
        bot = TelegramBot(
            herald.engine,
            telegram.token,
            intake=intake,
            api_url=telegram.url,
            poll_timeout=1,
            actions=herald.scheduling.actions,
        )
        await start_serving(bot, intake)
        herald.scheduling.publishers["telegram"] = bot.publisher()
        group = telegram.group(GROUP, "Social team", supergroup=True)
        telegram.set_admin(GROUP, ADMIN["id"])
        try:
            yield TelegramChat(telegram, herald, networks, group)
        finally:
            await stop_serving(bot, intake)


# -- 1 and 3: approved once, published once per network, linked in the chat --------------


async def test_telegram_approval_publishes_once_to_each_network_and_links_each_post(
    chat: TelegramChat, tgi: TGIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    networks = chat.networks
    tgi.responder = lambda m: POST_TEXT
    draft_id = await chat.draft("/draft x announce v2")
    schedule = await chat.schedule(f"/schedule draft {draft_id} {AT} to={EVERYWHERE}")
    assert schedule.destinations == ("x", "bluesky", "mastodon") and schedule.fixed_text == POST_TEXT
    post, request = await chat.pending(schedule)
    assert networks.counts() == (0, 0, 0)  # nothing leaves before a person approves

    # two clicks on Approve at once: Telegram hands both to the bot in one batch of updates,
    # which are handled concurrently
    chat.click(request, f"cmd:schedule approve {post.id}")
    chat.click(request, f"cmd:schedule approve {post.id}")
    report = await chat.report(post.id)
    await chat.message_starting(f"Approved and published post {post.id}.")
    assert (await chat.herald.post(post.id)).state is PostState.PUBLISHED

    [tweet], [skeet], [toot] = networks.tweets(), networks.skeets(), networks.toots()
    assert tweet.sent_text == POST_TEXT and tweet.in_reply_to is None
    assert skeet.value["text"] == POST_TEXT and "reply" not in skeet.value
    # Bluesky's rich text: the link and the hashtag as facets, in UTF-8 byte offsets
    features = [f["features"][0] for f in skeet.value["facets"]]
    assert {"$type": "app.bsky.richtext.facet#link", "uri": "https://herald.example/2"} in features
    assert {"$type": "app.bsky.richtext.facet#tag", "tag": "herald"} in features
    assert toot.text == POST_TEXT and toot.in_reply_to_id is None
    assert [r.headers.get("Idempotency-Key") for r in networks.mastodon.posts()] == [f"{post.id}-1"]

    assert f"X (@{X_USER}): published {networks.tweet_url(tweet)}" in report
    assert f"Bluesky ({BLUESKY_HANDLE}): published {networks.skeet_url(skeet)}" in report
    assert (
        f"Mastodon (@{MASTODON_USER}@{MASTODON_DOMAIN}): published {networks.mastodon.status_url(toot)}"
        in report
    )
    assert sum(t.startswith(f"Post {post.id}:") for t in chat.texts()) == 1  # one report
    assert POST_TEXT not in chat.texts()  # not published into the chat itself

    # approving once more publishes nothing
    await chat.say(f"/schedule approve {post.id}")
    await chat.message_starting(f"Post {post.id} is already published.")
    assert networks.counts() == (1, 1, 1)

    # without to=: published into the chat, as before; the networks see nothing more
    plain = await chat.schedule(f"/schedule draft {draft_id} {AT}")
    assert plain.destinations == ()
    post, request = await chat.pending(plain)
    chat.click(request, f"cmd:schedule approve {post.id}")
    await chat.message_starting(f"Approved and published post {post.id}.")
    assert chat.texts().count(POST_TEXT) == 1
    assert (await chat.herald.post(post.id)).state is PostState.PUBLISHED
    assert networks.counts() == (1, 1, 1)
    assert not any(t.startswith(f"Post {post.id}:") for t in chat.texts())

    # no credential in any log line (DEBUG included) or chat message
    seen = caplog.text + "\n".join(chat.texts())
    assert [secret for secret in networks.secrets() if secret in seen] == []


# -- 2: a long post becomes each network's own reply chain ---------------------------------


async def test_a_long_post_becomes_a_reply_chain_cut_by_each_networks_counting(
    chat: TelegramChat, tgi: TGIEmulator
) -> None:
    networks = chat.networks
    tgi.responder = lambda m: LONG_TEXT
    draft_id = await chat.draft("/draft x thread=yes announce v2 in detail")
    schedule = await chat.schedule(f"/schedule draft {draft_id} {AT} to={EVERYWHERE}")
    post, _ = await chat.pending(schedule)
    text = post.text  # the thread's text without X's numbering: each network cuts it again

    # Bluesky: the second part's createRecord waits while every access token expires, so the
    # client has to refresh its session in the middle of the thread; the third part then
    # fails (a 503, nothing written): Bluesky stops at part 3 of 3, the others go on
    second = networks.bluesky.hold(CREATE_RECORD, after=1)
    # through: part 1, part 2 (refused: expired token), part 2 again; then part 3 is held
    third = networks.bluesky.hold(CREATE_RECORD, after=3)
    chat.telegram.send_user_message(chat.group, ADMIN, f"/schedule approve {post.id}")
    await networks.bluesky.wait_until(lambda: len(second.waiting) == 1, 10)
    networks.bluesky.expire_access_tokens()
    second.release()
    await networks.bluesky.wait_until(lambda: len(third.waiting) == 1, 10)
    networks.bluesky.fail_next(CREATE_RECORD, status=503)
    third.release()
    first_report = await chat.report(post.id)
    assert (await chat.decided(post.id)) == f"Post {post.id} is failed: some networks failed for now"
    assert (
        f"Bluesky ({BLUESKY_HANDLE}): not published yet: Bluesky didn't confirm the post; it will be "
        "tried again." in first_report
    )
    assert first_report.endswith("\nI'll try again in 30 seconds.")
    failed = await chat.herald.post(post.id)
    assert failed.state is PostState.FAILED
    assert len((await chat.herald.deliveries(post.id))["bluesky"].parts) == 2
    counts = networks.counts()

    # the runner's retry (made here rather than waited for): Bluesky resumes at part 3;
    # nothing already published is sent again
    retried = await chat.herald.scheduling.runner.publish(failed, schedule)
    assert retried.state is PostState.PUBLISHED
    report = await chat.report(post.id, nth=2)
    assert networks.counts() == (counts[0], counts[1] + 1, counts[2])
    rkeys = [c.body["rkey"] for c in networks.bluesky.calls_to(CREATE_RECORD)]
    assert [rkeys.index(k) for k in rkeys] == [0, 1, 1, 3, 3]  # parts 1, 2 (refreshed), 3, 3

    expected = {
        "x": split_to_fit(text, 280, Target.X.measure),
        "bluesky": split_to_fit(text, 300, graphemes),
        "mastodon": split_to_fit(text, 500, MastodonMeasure(23)),
    }
    assert all(len(parts) > 1 for parts in expected.values())
    assert len({len(parts) for parts in expected.values()}) > 1, "the networks should cut differently"

    tweets = networks.tweets()
    assert [t.sent_text for t in tweets] == expected["x"]
    assert [t.in_reply_to for t in tweets] == [None, *(t.id for t in tweets[:-1])]

    skeets = networks.skeets()
    assert [r.value["text"] for r in skeets] == expected["bluesky"]
    root = {"uri": skeets[0].uri, "cid": skeets[0].cid}
    assert "reply" not in skeets[0].value
    for parent, child in itertools.pairwise(skeets):
        assert child.value["reply"] == {"root": root, "parent": {"uri": parent.uri, "cid": parent.cid}}
    assert [c.error for c in networks.bluesky.calls_to(CREATE_RECORD)].count("ExpiredToken") == 1
    assert networks.bluesky.calls_to("com.atproto.server.refreshSession")

    toots = networks.toots()
    assert [s.text for s in toots] == expected["mastodon"]
    assert [s.in_reply_to_id for s in toots] == [None, *(s.id for s in toots[:-1])]
    keys = [r.headers.get("Idempotency-Key") for r in networks.mastodon.posts()]
    assert keys == [f"{post.id}-{n}" for n in range(1, len(toots) + 1)]

    # every part linked, in order
    links = " ".join(
        [networks.tweet_url(t) for t in tweets]
        + [networks.skeet_url(r) for r in skeets]
        + [networks.mastodon.status_url(s) for s in toots]
    )
    for link in links.split():
        assert link in report
    assert f"published {' '.join(networks.tweet_url(t) for t in tweets)}" in report


# -- 5: refusals, explained in plain words ----------------------------------------------


async def test_refusals_are_explained_an_account_refused_is_told_once_and_a_short_429_is_waited_out(
    chat: TelegramChat, tgi: TGIEmulator
) -> None:
    networks = chat.networks
    texts = iter(
        [
            "Release day! Herald 2.0 is out. #herald",
            "Release day! Herald 2.0 is out. #herald",  # the same again: X refuses duplicates
            "Tip: approve posts with one click, publish them everywhere at once. #herald",
            "Herald now measures Mastodon posts the way your server counts them. #herald",
            "Week one: thank you for 1,000 stars! #herald",
            "Week two: a new release is on its way. #herald",
        ]
    )
    drafted: list[str] = []

    def respond(messages: object) -> str:
        drafted.append(next(texts))
        return drafted[-1]

    tgi.responder = respond
    schedule = await chat.schedule(
        f'/schedule add when="every day at 09:00" tz=UTC to={EVERYWHERE} mode=approve release news'
    )
    assert schedule.destinations == ("x", "bluesky", "mastodon")

    async def approved(day: int) -> tuple[Post, str]:
        post, _ = await chat.pending(schedule, SLOT + dt.timedelta(days=day))
        chat.telegram.send_user_message(chat.group, ADMIN, f"/schedule approve {post.id}")
        report = await chat.report(post.id)
        await chat.decided(post.id)
        return await chat.herald.post(post.id), report

    first, _ = await approved(0)
    assert first.state is PostState.PUBLISHED and networks.counts() == (1, 1, 1)

    # X's 403 for duplicate content, in plain words; the others take it
    second, report = await approved(1)
    assert f"X (@{X_USER}): not published: {DUPLICATE_MESSAGE}" in report  # X's 403, in plain words
    assert networks.counts() == (1, 2, 2) and second.state is PostState.PUBLISHED

    # Mastodon's 422: the instance lowered its limit after Herald read it
    networks.mastodon.hold_before_create()
    post, _ = await chat.pending(schedule, SLOT + dt.timedelta(days=2))
    chat.telegram.send_user_message(chat.group, ADMIN, f"/schedule approve {post.id}")
    await networks.mastodon.wait_until(lambda: networks.mastodon.held == 1, 10)
    networks.mastodon.max_characters = 50
    networks.mastodon.release()
    report = await chat.report(post.id)
    networks.mastodon.max_characters = 500
    assert (
        f"Mastodon (@{MASTODON_USER}@{MASTODON_DOMAIN}): not published: Mastodon refused this post: it is "
        "longer than this server allows (50 characters)." in report
    )
    assert networks.counts() == (2, 3, 2)

    # a 429 whose reset is within the misfire grace is waited out, then published
    networks.bluesky.rate_limit_next(CREATE_RECORD, reset_in=1.0)
    fourth, report = await approved(3)
    assert [c.status for c in networks.bluesky.calls_to(CREATE_RECORD)][-2:] == [429, 200]
    assert fourth.state is PostState.PUBLISHED and "Bluesky" in report and "not published" not in report
    assert networks.counts() == (3, 4, 3)

    # 401: the account is flagged and the chat told once; the next post doesn't tell again
    networks.x.revoke(networks.x_account)
    before = len(networks.x.requests)
    fifth, report = await approved(4)
    assert f"X (@{X_USER}): not published: X no longer accepts this account's credentials" in report
    told = [t for t in chat.texts() if "needs attention" in t]
    assert len(told) == 1 and told[0].startswith(f"X @{X_USER} needs attention: X no longer accepts")
    assert "/account add x" in told[0]
    sixth, report = await approved(5)
    assert "X no longer accepts this account's credentials" in report
    assert len([t for t in chat.texts() if "needs attention" in t]) == 1
    assert networks.counts() == (3, 6, 5)
    assert {fifth.state, sixth.state} == {PostState.PUBLISHED}  # Bluesky and Mastodon took them
    deliveries = await chat.herald.deliveries(sixth.id)
    assert deliveries["x"].state is DeliveryState.ATTENTION
    # one refused request a post (the account check before sending): never retried
    assert [r.status for r in networks.x.requests[before:]] == [401, 401]

    # while flagged, new schedules to X are refused with what to do
    answer = await chat.say('/schedule add when="every day at 10:00" tz=UTC to=x more news')
    assert answer.text.startswith("This chat has no working X account.")
    assert "/account add x" in answer.text


# -- 1 and 3 on Discord: two replicas on one Redis, two clicks at once ---------------------

DISCORD_GUILD, DISCORD_CHANNEL = 14000, 14001
MANAGE_GUILD = 1 << 5


@dataclass
class DiscordTeam:
    """The team's Discord channel, with one gateway session for each replica."""

    emu: Any  # tests.emulators.discord.DiscordEmulator (imported where discord.py is wanted)
    replicas: list[Replica]
    ada: dict[str, Any]

    def answer(self, handle: Any) -> str:
        response = self.emu.interaction_response(handle)
        return response.content if response is not None else ""

    async def command(
        self,
        name: str,
        options: list[dict[str, Any]],
        starts: str | tuple[str, ...] = "",
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> str:
        """Ada runs a slash command; its answer, once it shows and starts with `starts`."""
        handle = self.emu.slash_command(
            name, options, channel_id=DISCORD_CHANNEL, user=self.ada, guild_id=DISCORD_GUILD
        )

        def answered() -> bool:
            shown = self.answer(handle)
            return bool(shown) and shown.startswith(starts)

        await self.emu.wait_until(answered, timeout)
        return self.answer(handle)

    async def draft(self, *extra: dict[str, Any]) -> str:
        options = [{"name": "target", "value": "x"}, {"name": "prompt", "value": "announce v2"}, *extra]
        shown = await self.command("draft", options, "**Draft `")
        return re.match(r"\*\*Draft `(\w+)`", shown)[1]  # type: ignore[index]

    async def schedule_draft(self, draft_id: str, to: str) -> Schedule:
        options = [
            {"name": "id", "value": draft_id},
            {"name": "at", "value": f"{DAY} 09:00"},
            {"name": "tz", "value": "UTC"},
            {"name": "to", "value": to},
        ]
        answer = await self.command(
            "schedule", [{"name": "draft", "type": 1, "options": options}], "Scheduled `"
        )
        schedule = await self.replicas[0].scheduling.store.get(re.match(r"Scheduled `(\w+)`", answer)[1])  # type: ignore[index]
        assert schedule is not None
        return schedule

    def messages(self) -> list[str]:
        return [m.content for m in self.emu.messages_in(DISCORD_CHANNEL)]

    def reports(self, post_id: str) -> list[str]:
        return [m for m in self.messages() if m.startswith(f"Post `{post_id}`:")]


@contextlib.asynccontextmanager
async def discord_team(settings: Settings, replicas: int = 1) -> AsyncIterator[DiscordTeam]:
    from adapters.discord.bot import DiscordBot
    from tests.emulators.discord import DiscordEmulator, point_discord_py_at

    async with contextlib.AsyncExitStack() as stack:
        emu = await stack.enter_async_context(DiscordEmulator())
        started = [await stack.enter_async_context(replica(settings)) for _ in range(replicas)]
        stack.enter_context(point_discord_py_at(emu))
        emu.guild(DISCORD_GUILD, "Team", channels=[DISCORD_CHANNEL])
        ada = emu.user(1801, "ada")
        emu.member(DISCORD_GUILD, 1801, permissions=MANAGE_GUILD)
        for herald in started:  # each replica has its own gateway session
            intake = build_intake(settings, herald.redis)
            bot = DiscordBot(
                herald.engine,
                emu.token,
                redis=herald.redis,
                keys=herald.keys,
                intake=intake,
                ready_timeout=10,
                actions=herald.scheduling.actions,
            )
            await start_serving(bot, intake)
            stack.push_async_callback(stop_serving, bot, intake)
            herald.scheduling.publishers["discord"] = bot.publisher()
        yield DiscordTeam(emu, started, ada)


async def test_discord_two_replicas_and_two_clicks_publish_once_per_network(
    make_settings: SettingsFactory, networks: Networks, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: POST_TEXT
    settings = make_settings(**networks.settings(x_oauth2=True))
    async with discord_team(settings, replicas=2) as team:
        emu, (first, second) = team.emu, team.replicas
        assert len(emu.connected()) == 2  # one session a replica: both see every click
        schedule = await team.schedule_draft(await team.draft(), EVERYWHERE)
        assert schedule.destinations == ("x", "bluesky", "mastodon")

        post = await first.scheduling.runner.run_slot(schedule, SLOT)
        assert post is not None
        assert await second.scheduling.runner.run_slot(schedule, SLOT) is None  # claimed once
        request = next(
            m for m in emu.messages_in(DISCORD_CHANNEL) if m.content.startswith(f"Draft `{post.id}`")
        )
        approve = f"cmd:schedule approve {post.id}"
        # two clicks at once; every click reaches both replicas' gateways
        clicks = [
            emu.click_button(request.id, approve, user=team.ada, guild_id=DISCORD_GUILD) for _ in range(2)
        ]
        done = f"**Approved and published post `{post.id}`.**"

        def concluded() -> bool:
            message = emu.bot_message(request.id)
            return message is not None and any(h.endswith(done) for h in message.history)

        await emu.wait_until(lambda: bool(team.reports(post.id)) and concluded(), 15)
        await emu.wait_until(lambda: all(emu.interaction_callbacks(c) for c in clicks), 10)
        assert (await first.post(post.id)).state is PostState.PUBLISHED
        [tweet], [skeet], [toot] = networks.tweets(), networks.skeets(), networks.toots()
        [report] = team.reports(post.id)
        assert f"- X (@{X_USER}): published {networks.tweet_url(tweet)}" in report
        assert f"- Bluesky ({BLUESKY_HANDLE}): published {networks.skeet_url(skeet)}" in report
        assert f"published {networks.mastodon.status_url(toot)}" in report
        assert team.messages().count(POST_TEXT) == 0  # not published into the channel
        # each stand-in saw one post: the second approval never reached the networks
        assert len([r for r in networks.x.requests if r.method == "POST"]) == 1
        assert len(networks.mastodon.posts()) == 1
        assert len(networks.bluesky.calls_to(CREATE_RECORD)) == 1


# -- 4: the leader killed mid-publish ---------------------------------------------------


async def test_a_leader_killed_mid_publish_is_finished_by_the_next_once_per_network(
    make_settings: SettingsFactory,
    networks: Networks,
    tgi: TGIEmulator,
    redis: Redis,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """`herald run` leads and publishes; every network holds its answer (each post made on
    its side); the process is SIGKILLed; the next replica takes the lead once the dead
    one's lease runs out, and the deliveries once their holds have (its clock is moved past
    the hold: the lease can't be set shorter). Mastodon's key and Bluesky's record key make
    sending again harmless; X may have the post: UNCONFIRMED, the approver told where to
    check, never posted twice."""
    tgi.responder = lambda m: POST_TEXT
    # each network will make the post, then hold its answer (nothing before posts)
    x_hold = networks.x.hold_next()
    bluesky_hold = networks.bluesky.hold(CREATE_RECORD, after_write=True)
    networks.mastodon.hold_after_create()
    async with TelegramEmulator() as telegram:
        group = telegram.group(GROUP, "Social team", supergroup=True)
        telegram.set_admin(GROUP, ADMIN["id"])
        async with spawn_herald(tmp_path, telegram, tgi, redis_url, prefix, networks) as child:
            try:
                assert await redis.exists(Keys(prefix).scheduler_lease())  # it leads

                def texts() -> list[str]:
                    return [m.text.replace("\uff20", "@") for m in telegram.messages_in(GROUP)]

                async def say(text: str, answer: str) -> str:
                    telegram.send_user_message(group, ADMIN, text)
                    await telegram.wait_until(lambda: any(t.startswith(answer) for t in texts()), 20)
                    return next(t for t in texts() if t.startswith(answer))

                draft = await say("/draft x announce v2", "Draft ")
                draft_id = re.match(r"Draft (\w+)", draft)[1]  # type: ignore[index]
                scheduled = await say(f"/schedule draft {draft_id} {AT} to={EVERYWHERE}", "Scheduled ")
                schedule_id = re.match(r"Scheduled (\w+)", scheduled)[1]  # type: ignore[index]
                drafted = await say(f"/schedule run-now {schedule_id}", "Drafted post ")
                post_id = re.match(r"Drafted post (\w+)", drafted)[1]  # type: ignore[index]
                await telegram.wait_until(lambda: any(t.startswith(f"Draft {post_id}") for t in texts()), 10)
                request = next(
                    m for m in telegram.messages_in(GROUP) if m.text.startswith(f"Draft {post_id}")
                )

                telegram.send_callback_query(
                    group, ADMIN, request.message_id, f"cmd:schedule approve {post_id}"
                )
                await wait_for(x_hold.created.is_set)
                await networks.bluesky.wait_until(lambda: len(bluesky_hold.waiting) == 1, 20)
                await networks.mastodon.wait_until(lambda: networks.mastodon.held == 1, 20)
                assert networks.counts() == (1, 1, 1)  # each network made the post; none has answered
                store = DeliveryStore(redis, Keys(prefix))
                held = await store.all(post_id)
                assert {d.state for d in held.values()} == {DeliveryState.PUBLISHING}
                assert {d.sending for d in held.values()} == {1}

                child.send_signal(signal.SIGKILL)
                assert await child.wait() == -signal.SIGKILL
                logged = (tmp_path / "herald.log").read_text()
                assert "publishing as @herald_hq" in logged  # the install's accounts were checked at start
                assert [secret for secret in networks.secrets() if secret in logged] == []
            finally:
                x_hold.release()
                bluesky_hold.release()
                networks.mastodon.release()

        # the next replica: its networks' clock is past the dead one's hold on the deliveries
        settings = make_settings(**networks.settings())
        async with replica(settings, clock=lambda: time.time() + LEASE_SECONDS + 5) as after:
            intake = build_intake(settings, after.redis)
            bot = TelegramBot(
                after.engine,
                telegram.token,
                intake=intake,
                api_url=telegram.url,
                poll_timeout=1,
                actions=after.scheduling.actions,
            )
            await start_serving(bot, intake)
            after.scheduling.publishers["telegram"] = bot.publisher()
            service = SchedulerService(
                after.scheduling.runner,
                after.redis,
                after.keys,
                lease=LeaderLease(after.redis, after.keys, poll=0.05),
            )
            await service.start()
            try:
                report_start = f"Post {post_id}:"
                # the dead leader's lease (15 s) runs out; the new leader resumes the post
                await telegram.wait_until(lambda: any(t.startswith(report_start) for t in texts()), 40)
                report = next(t for t in texts() if t.startswith(report_start))
                deliveries = await after.deliveries(post_id)
                assert deliveries["x"].state is DeliveryState.UNCONFIRMED
                assert deliveries["bluesky"].state is DeliveryState.PUBLISHED
                assert deliveries["mastodon"].state is DeliveryState.PUBLISHED
                assert (await after.post(post_id)).state is PostState.UNCONFIRMED
                assert f"X (@{X_USER}): may or may not be published" in report
                assert f"Check https://x.com/{X_USER} before publishing it again." in report
                [skeet], [toot] = networks.skeets(), networks.toots()
                assert f"published {networks.skeet_url(skeet)}" in report
                assert f"published {networks.mastodon.status_url(toot)}" in report

                # sent again, each with the same key: harmless
                assert networks.counts() == (1, 1, 1)
                keys = [r.headers.get("Idempotency-Key") for r in networks.mastodon.posts()]
                assert keys == [f"{post_id}-1", f"{post_id}-1"]
                rkeys = [c.body["rkey"] for c in networks.bluesky.calls_to(CREATE_RECORD)]
                assert len(rkeys) == 2 and len(set(rkeys)) == 1
                assert len([r for r in networks.x.requests if r.method == "POST"]) == 1  # never resent

                # approving again sends nothing anywhere
                telegram.send_callback_query(
                    group, ADMIN, request.message_id, f"cmd:schedule approve {post_id}"
                )
                await telegram.wait_until(
                    lambda: any(t == f"Post {post_id} is already unconfirmed." for t in texts()), 10
                )
                assert len([r for r in networks.x.requests if r.method == "POST"]) == 1
                assert networks.counts() == (1, 1, 1)
            finally:
                await service.stop(drain=5)
                await stop_serving(bot, intake)


# -- defects found, now fixed (each of these failed before its fix) --

#: a thread of 22 posts on X (about 4,000 characters)
VERY_LONG_TEXT = " ".join(
    ["Herald keeps your team's posts on schedule and in one voice across every network we support."] * 44
)


async def test_discord_a_long_thread_for_the_networks_reaches_its_approver(
    make_settings: SettingsFactory, networks: Networks, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: VERY_LONG_TEXT
    settings = make_settings(**networks.settings(), max_new_tokens=3000)
    async with discord_team(settings) as team:
        schedule = await team.schedule_draft(await team.draft({"name": "thread", "value": "yes"}), EVERYWHERE)
        post = await team.replicas[0].scheduling.runner.run_slot(schedule, SLOT)
        assert post is not None and post.state is PostState.PENDING_APPROVAL
        assert any(m.startswith(f"Draft `{post.id}`") for m in team.messages())


async def test_discord_the_links_of_a_long_thread_reach_the_chat(
    make_settings: SettingsFactory, networks: Networks, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: VERY_LONG_TEXT
    settings = make_settings(**networks.settings(), max_new_tokens=3000)
    async with discord_team(settings) as team:
        herald = team.replicas[0]
        schedule = await team.schedule_draft(await team.draft({"name": "thread", "value": "yes"}), EVERYWHERE)
        with contextlib.suppress(Exception):  # the approval request may fail (the defect above)
            await herald.scheduling.runner.run_slot(schedule, SLOT)
        [post] = await herald.scheduling.store.posts_of(schedule.id)
        options = [{"name": "approve", "type": 1, "options": [{"name": "id", "value": post.id}]}]
        answer = await team.command("schedule", options, timeout=20)
        assert len(networks.tweets()) > 10  # the networks got the thread
        links = [networks.tweet_url(t) for t in networks.tweets()]
        links += [networks.skeet_url(r) for r in networks.skeets()]
        links += [networks.mastodon.status_url(s) for s in networks.toots()]
        shown = "\n".join(team.messages())
        assert [link for link in links if link not in shown] == []
        assert (await herald.post(post.id)).state is PostState.PUBLISHED
        assert answer == f"Approved and published post `{post.id}`."


async def test_an_edited_thread_for_the_networks_is_published_as_a_thread(
    chat: TelegramChat, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: LONG_TEXT
    draft_id = await chat.draft("/draft x thread=yes announce v2 in detail")
    schedule = await chat.schedule(f"/schedule draft {draft_id} {AT} to={EVERYWHERE}")
    post, _ = await chat.pending(schedule)
    edited = post.text.replace("Herald 2.0 ships today", "Herald 2.0 shipped today")
    chat.telegram.send_user_message(chat.group, ADMIN, f"/schedule approve {post.id} {edited}")
    answer = await chat.message_starting(
        (f"Approved and published post {post.id}.", f"Post {post.id} is ", "That text is "), 15
    )
    assert answer.text == f"Approved and published post {post.id}."
    assert [t.sent_text for t in chat.networks.tweets()] == split_to_fit(edited, 280, Target.X.measure)


async def test_a_new_leader_leaves_a_live_replicas_publishing_alone(
    chat: TelegramChat, tgi: TGIEmulator, make_settings: SettingsFactory
) -> None:
    networks = chat.networks
    tgi.responder = lambda m: POST_TEXT
    draft_id = await chat.draft("/draft x announce v2")
    schedule = await chat.schedule(f"/schedule draft {draft_id} {AT} to={EVERYWHERE}")
    post, request = await chat.pending(schedule)
    networks.mastodon.hold_after_create()
    chat.click(request, f"cmd:schedule approve {post.id}")
    await networks.mastodon.wait_until(lambda: networks.mastodon.held == 1, 10)
    # another replica takes the lead meanwhile (a rolling restart of the old leader) and
    # resumes what it finds; it posts to the chat through the same bot
    async with replica(make_settings(**networks.settings())) as leader:
        leader.scheduling.publishers["telegram"] = chat.herald.scheduling.publishers["telegram"]
        await leader.scheduling.runner.resume(since=dt.datetime.now(dt.UTC))
        networks.mastodon.release()
        answer = await chat.decided(post.id)
        assert networks.counts() == (1, 1, 1)
        assert answer == f"Approved and published post {post.id}."
        assert (await chat.herald.post(post.id)).state is PostState.PUBLISHED


async def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:  # noqa: ASYNC109
    async def holds() -> bool:
        return check()

    await eventually(holds, getattr(check, "__qualname__", "condition"), timeout)


def spawn_herald(
    tmp_path: Path,
    telegram: TelegramEmulator,
    tgi: TGIEmulator,
    redis_url: str,
    prefix: str,
    networks: Networks,
) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """`herald run` in a child process, with the install's accounts from HERALD_* settings;
    entered once it answers /readyz and leads the scheduler."""
    values = {
        "HERALD_TELEGRAM_TOKEN": telegram.token,
        "HERALD_TELEGRAM_API_URL": telegram.url,
        "HERALD_TGI_URL": tgi.url,
        "HERALD_REDIS_URL": redis_url,
        "HERALD_REDIS_PREFIX": prefix,
        "HERALD_RATE_LIMIT_BURST": "1000",
    } | {f"HERALD_{name.upper()}": str(value) for name, value in networks.settings().items()}
    command = [sys.executable, "-m", "bots", "run"]
    return herald_run(command, values, free_port(), tmp_path / "herald.log")

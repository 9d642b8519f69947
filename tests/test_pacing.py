"""Rate-limit buckets (`core.pacing`) and what Discord's responses tell them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import discord
import pytest

from adapters.discord.limits import (
    bucket_key,
    channel_bucket,
    counts_globally,
    observe,
    rate_limit_trace,
    webhook_bucket,
)
from core.intake.journal import JournaledSurface
from core.metrics import MeteredSurface, Metrics
from core.pacing import Bucket, Buckets, Rate
from core.platform import CallKind
from tests.emulators.discord import DiscordEmulator, point_discord_py_at
from tests.support import RecordingSurface


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_window_opens_with_its_first_call_and_a_reserve_holds_streaming_calls() -> None:
    clock = Clock()
    bucket = Bucket(5, 5.0, clock=clock)
    assert bucket.wait(keep=1) == 0.0 and bucket.remaining == 5
    for _ in range(4):
        bucket.spend()
        clock.now += 0.5
    assert bucket.remaining == 1
    assert bucket.wait(keep=1) == pytest.approx(3.0)  # the last call is kept for the final text
    assert bucket.wait(keep=0) == 0.0
    bucket.spend()
    assert bucket.wait(keep=0) == pytest.approx(3.0)
    clock.now += 3.0
    assert bucket.remaining == 5 and bucket.wait(keep=1) == 0.0


def test_a_bucket_of_one_still_lets_streaming_calls_through() -> None:
    clock = Clock()
    bucket = Bucket(1, 1.0, clock=clock)
    assert bucket.wait(keep=1) == 0.0
    bucket.spend()
    assert bucket.wait(keep=1) == pytest.approx(1.0)


def test_the_platforms_word_replaces_the_guess_but_never_forgets_calls_in_flight() -> None:
    clock = Clock()
    bucket = Bucket(5, 5.0, clock=clock)
    bucket.spend()
    bucket.spend()  # two calls made; the first one's response comes now
    bucket.observe(limit=5, remaining=4, reset_after=4.9)
    assert bucket.remaining == 3
    bucket.observe(limit=10, remaining=9, reset_after=2.0)  # a fresh window, larger bucket
    assert bucket.limit == 10
    clock.now += 2.0
    assert bucket.remaining == 10


def test_a_refusal_empties_the_bucket_until_retry_after() -> None:
    clock = Clock()
    bucket = Bucket(5, 5.0, clock=clock)
    bucket.refused(2.5)
    assert bucket.remaining == 0 and bucket.wait() == pytest.approx(2.5)
    clock.now += 2.5
    assert bucket.wait() == 0.0


def test_buckets_are_shared_per_key_and_the_oldest_forgotten() -> None:
    buckets = Buckets(kept=2)
    first = buckets.get("a", 5, 5.0)
    assert buckets.get("a", 1, 1.0) is first and first.limit == 5
    buckets.get("b", 5, 5.0)
    buckets.get("c", 5, 5.0)
    assert buckets.known("a") is None and buckets.known("c") is not None


def test_a_bots_rate_lets_a_burst_through_then_paces_and_keeps_a_reserve_from_streaming() -> None:
    clock = Clock()
    rate = Rate.within(50, clock=clock)  # Discord's global limit
    assert (rate.per_second, rate.burst, rate.reserve) == (45, 45, 22)
    for _ in range(rate.burst - rate.reserve):
        assert rate.wait() == 0.0
        rate.spend()
    # the reserve is left: a streaming call waits, an answer's first or last message does not
    assert rate.wait(keep=rate.reserve) == pytest.approx(1 / 45)
    chat = Bucket(5, 5.0, overall=rate, clock=clock)
    assert chat.wait(keep=1) == pytest.approx(1 / 45) and chat.wait(keep=0) == 0.0
    for _ in range(rate.reserve):
        rate.spend()
    assert rate.wait() == pytest.approx(1 / 45)
    clock.now += 1.0
    assert rate.wait(keep=rate.reserve) == 0.0  # full again
    rate.refused(2.0)  # Discord's global 429
    assert rate.wait() == pytest.approx(2.0 + 1 / 45) and chat.wait() > 2.0


async def test_a_platform_allowing_the_limit_never_refuses_calls_taken_from_a_rate() -> None:
    """`Rate.within(limit)` against a platform that allows `limit` calls a second and
    `limit` at once (a token bucket, the emulators' reading): however the calls come,
    none is refused, even when every other one arrives a ninth of a second late; and
    the calls still go at nine tenths of the limit."""
    clock = Clock()

    async def sleep(delay: float) -> None:
        clock.now += delay

    limit = 50
    rate = Rate.within(limit, clock=clock)
    made: list[float] = []
    for n in range(500):
        await rate.take(sleep)
        made.append(clock.now)
        if n % 7 == 0:
            clock.now += 0.05  # calls also come unevenly
    arrived = sorted(at + (1 / 9 if i % 2 else 0.0) for i, at in enumerate(made))
    tokens, last, refused = float(limit), arrived[0], 0
    for at in arrived:
        tokens = min(float(limit), tokens + (at - last) * limit)
        last = at
        if tokens >= 1.0 - 1e-9:
            tokens -= 1.0
        else:
            refused += 1
    assert refused == 0
    assert len(made) / (made[-1] - made[0]) >= 0.85 * limit


async def test_callers_waiting_for_a_rate_go_in_the_order_they_came() -> None:
    clock = Clock()

    async def sleep(delay: float) -> None:
        clock.now += delay
        await asyncio.sleep(0)

    rate = Rate(10.0, 2, clock=clock)
    went: list[tuple[int, float]] = []

    async def call(n: int) -> None:
        await rate.take(sleep)
        went.append((n, clock.now))

    await asyncio.gather(*(call(n) for n in range(8)))
    assert [n for n, _ in went] == list(range(8))
    assert [round(at - 100.0, 6) for _, at in went] == [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_an_interactions_follow_ups_are_outside_the_bots_overall_budget() -> None:
    buckets = Buckets(overall=Rate.within(50))
    assert channel_bucket(buckets, "send", 42).overall is buckets.overall
    assert webhook_bucket(buckets, "send", "tok").overall is None


@pytest.mark.parametrize(
    ("path", "counted"),
    [
        ("/api/v10/channels/42/messages", True),
        ("/api/v10/channels/42/typing", True),
        ("/api/v10/gateway/bot", True),
        ("/api/v10/interactions/77/tok-en/callback", False),
        ("/api/v10/webhooks/900/tok-en", False),
        ("/api/v10/webhooks/900/tok-en/messages/@original", False),
        ("/gateway", False),
    ],
)
def test_which_discord_requests_count_in_the_global_limit(path: str, counted: bool) -> None:
    assert counts_globally(path) is counted


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("POST", "/api/v10/channels/42/messages", ("send", "42")),
        ("PATCH", "/api/v10/channels/42/messages/7", ("edit", "42")),
        ("POST", "/api/v10/webhooks/900/tok-en/", None),
        ("POST", "/api/v10/webhooks/900/tok-en", ("send", "tok-en")),
        ("PATCH", "/api/v10/webhooks/900/tok-en/messages/@original", ("edit", "tok-en")),
        ("DELETE", "/api/v10/channels/42/messages/7", None),
        ("POST", "/api/v10/channels/42/typing", None),
        ("PATCH", "/api/v10/channels/42/messages", None),
        ("POST", "/api/v10/channels/42/messages/7", None),
    ],
)
def test_which_discord_requests_count_against_an_answers_bucket(
    method: str, path: str, key: tuple[str, str] | None
) -> None:
    assert bucket_key(method, path) == key


def test_discord_headers_update_the_bucket_an_answer_uses() -> None:
    clock = Clock()
    buckets = Buckets(clock=clock)
    edits = channel_bucket(buckets, "edit", 42)
    sends = webhook_bucket(buckets, "send", "tok")
    headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset-After": "3.250"}
    observe(buckets, "PATCH", "/api/v10/channels/42/messages/7", headers)
    assert edits.remaining == 1 and edits.wait(keep=1) == pytest.approx(3.25)
    observe(buckets, "POST", "/api/v10/webhooks/900/tok", {**headers, "X-RateLimit-Remaining": "0"})
    assert sends.remaining == 0
    # a bucket nobody uses is not made by a response; bad headers change nothing
    observe(buckets, "PATCH", "/api/v10/channels/43/messages/7", headers)
    assert buckets.known(("edit", "43")) is None
    observe(buckets, "PATCH", "/api/v10/channels/42/messages/7", {"X-RateLimit-Remaining": "x"})
    assert edits.remaining == 1


async def test_discord_py_responses_feed_the_buckets_over_a_real_socket() -> None:
    """The trace on discord.py's own session: a message sent to a channel whose bucket
    holds 3 (not the 5 guessed) leaves 2, as the emulator's headers say."""
    async with DiscordEmulator(bucket_limit=3, bucket_window=5.0) as emulator:
        with point_discord_py_at(emulator):
            emulator.guild(5000, "Team", channels=[5001])
            buckets = Buckets()
            sends = channel_bucket(buckets, "send", 5001)
            client = discord.Client(intents=discord.Intents.none(), http_trace=rate_limit_trace(buckets))
            await client.login(emulator.token)
            try:
                await client.get_partial_messageable(5001).send("hello")
            finally:
                await client.close()
    assert sends.limit == 3 and sends.remaining == 2


async def test_the_emulators_global_limit_answers_discords_global_429() -> None:
    """Over the bot's global limit the emulator answers as Discord documents, and counts
    neither the refused request nor interaction endpoints."""
    async with DiscordEmulator(global_limit=3, bucket_limit=0) as emulator:
        emulator.guild(5000, "Team", channels=[5001])
        auth = {"Authorization": f"Bot {emulator.token}"}
        url = f"{emulator.url}/api/v10/channels/5001/messages"
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(url, json={"content": "hi"}, headers=auth) as response:
                    assert response.status == 200
            async with http.post(url, json={"content": "hi"}, headers=auth) as response:
                assert response.status == 429
                assert response.headers["X-RateLimit-Global"] == "true"
                assert response.headers["X-RateLimit-Scope"] == "global"
                body = await response.json()
                assert body["global"] is True and 0 < body["retry_after"] <= 1.0
                assert int(response.headers["Retry-After"]) >= body["retry_after"]
            # an interaction's callback is not counted (an unknown one: 404, not 429)
            callback = f"{emulator.url}/api/v10/interactions/1/tok/callback"
            async with http.post(callback, json={"type": 1}) as response:
                assert response.status != 429


@pytest.mark.parametrize("paced", [True, False])
async def test_discord_py_paced_by_the_trace_stays_within_the_global_limit(paced: bool) -> None:
    """Thirty messages to thirty channels at once: taken from the bot's overall rate by the
    trace, none meets the global 429 and all are sent; without it, some meet it (and
    discord.py, retrying them all together, gives some up). The emulator allows a little
    more than Herald paces at, for the delays a busy machine adds between a call and its
    arrival."""
    channels = list(range(5001, 5031))
    async with DiscordEmulator(global_limit=12) as emulator:
        with point_discord_py_at(emulator):
            emulator.guild(5000, "Team", channels=channels)
            buckets = Buckets(overall=Rate.within(10) if paced else None)
            client = discord.Client(intents=discord.Intents.none(), http_trace=rate_limit_trace(buckets))
            await client.login(emulator.token)
            try:
                sends = [client.get_partial_messageable(c).send("hello") for c in channels]
                sent = await asyncio.gather(*sends, return_exceptions=True)
            finally:
                await client.close()
            refused = emulator.throttled()
            delivered = sum(len(emulator.messages_in(c)) for c in channels)
    assert all(call.path.startswith("/channels/") for call in refused)
    if paced:
        assert refused == [] and delivered == len(channels)
        assert not [result for result in sent if isinstance(result, BaseException)]
    else:
        assert refused


def test_wrapped_surfaces_tell_the_renderer_their_platforms_bucket() -> None:
    """Metering and the intake's journal wrap every answer's surface: the bucket passes
    through both (it didn't at first, and answers fell back to a fixed interval)."""
    chat = Bucket(5, 5.0)

    class Chat(RecordingSurface):
        def bucket(self, kind: CallKind) -> Bucket | None:
            return chat

    wrapped = MeteredSurface(JournaledSurface(Chat(), cast(Any, None), cast(Any, None)), "x", Metrics())
    assert wrapped.bucket("edit") is chat and wrapped.bucket("send") is chat

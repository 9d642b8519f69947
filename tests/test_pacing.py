"""Rate-limit buckets (`core.pacing`) and what Discord's responses tell them."""

from __future__ import annotations

from typing import Any, cast

import discord
import pytest

from adapters.discord.limits import (
    bucket_key,
    channel_bucket,
    observe,
    rate_limit_trace,
    webhook_bucket,
)
from core.intake.journal import JournaledSurface
from core.metrics import MeteredSurface, Metrics
from core.pacing import Bucket, Buckets
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


def test_wrapped_surfaces_tell_the_renderer_their_platforms_bucket() -> None:
    """Metering and the intake's journal wrap every answer's surface: the bucket passes
    through both (it didn't at first, and answers fell back to a fixed interval)."""
    chat = Bucket(5, 5.0)

    class Chat(RecordingSurface):
        def bucket(self, kind: CallKind) -> Bucket | None:
            return chat

    wrapped = MeteredSurface(JournaledSurface(Chat(), cast(Any, None), cast(Any, None)), "x", Metrics())
    assert wrapped.bucket("edit") is chat and wrapped.bucket("send") is chat

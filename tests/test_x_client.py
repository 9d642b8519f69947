"""Herald's X client against the X API stand-in, over real sockets (issue 14)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from core.social.network import (
    Identity,
    PublishedPart,
    PublishFailed,
    PublishUnknown,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
    thread_keys,
)
from core.social.x import DUPLICATE_MESSAGE, XClient, XCredentials
from tests.emulators.x import TWEETS, RateLimit, XAccount, XEmulator


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    # pinned on a whole second, near real time so that OAuth timestamps stay fresh
    return Clock(float(int(time.time())))


@pytest.fixture
async def x(clock: Clock) -> AsyncIterator[XEmulator]:
    async with XEmulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def account(x: XEmulator) -> XAccount:
    return x.add_account("herald_team", "Herald Team")


def oauth1(x: XEmulator, account: XAccount) -> XCredentials:
    return XCredentials(
        consumer_key=x.consumer_key,
        consumer_secret=x.consumer_secret,
        access_token=account.access_token,
        access_token_secret=account.access_token_secret,
    )


@pytest.fixture
async def client(x: XEmulator, account: XAccount) -> AsyncIterator[XClient]:
    client = XClient(oauth1(x, account), api_url=x.url)
    yield client
    await client.close()


async def test_whoami_says_who_the_account_posts_as(client: XClient, account: XAccount) -> None:
    assert client.network == "x"
    assert await client.whoami() == Identity(
        network="x", account_id=account.user_id, handle="@herald_team", url="https://x.com/herald_team"
    )


async def test_publish_links_the_post(client: XClient, x: XEmulator, account: XAccount) -> None:
    part = await client.publish("Hello from Herald https://example.com", key="post-1")
    [created] = x.tweets_by(account)
    assert created.sent_text == "Hello from Herald https://example.com"
    assert part == PublishedPart(post_id=created.id, url=f"https://x.com/herald_team/status/{created.id}")
    assert [r.auth for r in x.requests] == ["oauth1", "oauth1"]  # whoami first, for the link


async def test_an_oauth2_user_token_publishes_too(x: XEmulator, account: XAccount) -> None:
    client = XClient(XCredentials(user_token=account.user_token), api_url=x.url)
    try:
        part = await client.publish("With a bearer token", key="p")
    finally:
        await client.close()
    assert [t.id for t in x.tweets_by(account)] == [part.post_id]
    assert {r.auth for r in x.requests} == {"oauth2"}


async def test_a_thread_of_three_is_a_reply_chain(client: XClient, x: XEmulator, account: XAccount) -> None:
    texts = ["The plan, in three posts. 1/3", "Second, we draft. 2/3", "Third, we publish. 3/3"]
    parts: list[PublishedPart] = []
    for text, key in zip(texts, thread_keys("post-7", 3), strict=True):
        reply_to = ReplyTo(root=parts[0], parent=parts[-1]) if parts else None
        parts.append(await client.publish(text, key=key, reply_to=reply_to))
    chain = x.tweets_by(account)
    assert [t.sent_text for t in chain] == texts
    assert [t.id for t in chain] == [p.post_id for p in parts]
    assert [t.in_reply_to for t in chain] == [None, chain[0].id, chain[1].id]


async def test_duplicate_content_is_rejected_in_plain_words(
    client: XClient, x: XEmulator, account: XAccount
) -> None:
    await client.publish("Same again", key="a")
    with pytest.raises(Rejected) as refused:
        await client.publish("Same again", key="b")
    assert refused.value.user_message == DUPLICATE_MESSAGE
    assert DUPLICATE_MESSAGE == "X refused this post because the account already posted the same text."
    assert len(x.tweets_by(account)) == 1


async def test_a_reply_to_a_deleted_post_is_rejected(client: XClient, x: XEmulator) -> None:
    first = await client.publish("1/2", key="k-1")
    x.delete_tweet(first.post_id)
    with pytest.raises(Rejected) as refused:
        await client.publish("2/2", key="k-2", reply_to=ReplyTo(root=first, parent=first))
    assert "the post it replies to was deleted" in refused.value.user_message


async def test_too_long_is_rejected_before_sending(client: XClient, x: XEmulator) -> None:
    limits = await client.limits()
    assert (limits.max_length, limits.unit) == (280, "weighted characters")
    assert limits.measure("日本") == 4
    with pytest.raises(Rejected) as refused:
        await client.publish("語" * 141, key="long")
    assert "longer than X allows (282 of 280" in refused.value.user_message
    assert x.requests == []


async def test_429_is_rate_limited_until_xs_reset(
    client: XClient, x: XEmulator, account: XAccount, clock: Clock
) -> None:
    x.rate_limits[TWEETS] = RateLimit(1, 900)
    await client.publish("one", key="1")
    clock.now += 100  # X's clock, in its Date header, is what counts
    with pytest.raises(RateLimited) as limited:
        await client.publish("two", key="2")
    assert limited.value.retry_after == 800
    assert "about 14 minutes" in limited.value.user_message
    assert isinstance(limited.value, PublishFailed)  # nothing was posted
    assert [t.sent_text for t in x.tweets_by(account)] == ["one"]


async def test_the_24_hour_cap_sets_the_wait(client: XClient, x: XEmulator, clock: Clock) -> None:
    x.user_day_limit = 1
    await client.publish("one", key="1")
    with pytest.raises(RateLimited) as limited:
        await client.publish("two", key="2")
    assert limited.value.retry_after == 86400
    assert "24 hours" in limited.value.user_message


async def test_401_is_unauthorized(client: XClient, x: XEmulator, account: XAccount) -> None:
    await client.whoami()
    x.revoke(account)
    with pytest.raises(Unauthorized) as refused:
        await client.publish("after revoking", key="r")
    assert "reconnect" in refused.value.user_message
    with pytest.raises(Unauthorized):
        await client.whoami()
    assert x.tweets == []


@pytest.mark.parametrize("wrong", ["consumer_secret", "access_token_secret"])
async def test_a_wrong_secret_is_unauthorized_at_connecting(
    x: XEmulator, account: XAccount, wrong: str
) -> None:
    good = oauth1(x, account).as_mapping()
    client = XClient(XCredentials.from_mapping({**good, wrong: good[wrong] + "x"}), api_url=x.url)
    try:
        with pytest.raises(Unauthorized):
            await client.whoami()
    finally:
        await client.close()


async def test_403_for_the_app_is_unauthorized(x: XEmulator) -> None:
    reader = x.add_account("reader", scopes={"tweet.read", "users.read"})
    client = XClient(XCredentials(user_token=reader.user_token), api_url=x.url)
    try:
        await client.whoami()
        with pytest.raises(Unauthorized):
            await client.publish("no write scope", key="w")
        app_only = XClient(XCredentials(user_token=x.app_bearer_token), api_url=x.url)
        with pytest.raises(Unauthorized):
            await app_only.whoami()
        await app_only.close()
    finally:
        await client.close()


async def test_a_timeout_after_the_post_was_created_is_unknown(
    client: XClient, x: XEmulator, account: XAccount
) -> None:
    await client.whoami()
    hold = x.hold_next()  # X creates the post, then its answer waits for the test
    client.timeout = 0.5
    try:
        with pytest.raises(PublishUnknown) as unknown:
            await client.publish("Slow network day", key="post-3-1")
        assert hold.created.is_set()
    finally:
        hold.release()
    assert "https://x.com/herald_team" in unknown.value.user_message
    assert [t.sent_text for t in x.tweets_by(account)] == ["Slow network day"]
    assert [r.path for r in x.requests].count("/2/tweets") == 1  # never retried


async def test_a_dropped_connection_after_sending_is_unknown(
    client: XClient, x: XEmulator, account: XAccount
) -> None:
    await client.whoami()
    x.drop_next(after_create=True)
    with pytest.raises(PublishUnknown):
        await client.publish("Dropped", key="d")
    assert [t.sent_text for t in x.tweets_by(account)] == ["Dropped"]


async def test_server_errors(client: XClient, x: XEmulator, account: XAccount) -> None:
    x.fail_next(503)
    with pytest.raises(PublishFailed) as overloaded:
        await client.publish("Busy", key="1")
    assert "overloaded" in overloaded.value.user_message
    assert not isinstance(overloaded.value, RateLimited)
    assert x.tweets == []
    x.fail_next(500, after_create=True)
    with pytest.raises(PublishUnknown):
        await client.publish("Half done", key="2")
    assert [t.sent_text for t in x.tweets_by(account)] == ["Half done"]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting is refused, and no
    other process can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_refused_before_sending_is_failed(
    client: XClient, x: XEmulator, account: XAccount, closed_port: int
) -> None:
    identity = await client.whoami()
    unreachable = XClient(oauth1(x, account), api_url=f"http://127.0.0.1:{closed_port}", identity=identity)
    try:
        with pytest.raises(PublishFailed) as failed:
            await unreachable.publish("Never sent", key="n")
        assert not isinstance(failed.value, PublishUnknown)
        with pytest.raises(PublishFailed):
            await unreachable.whoami()
    finally:
        await unreachable.close()
    assert x.tweets == []


async def test_a_connect_timeout_is_failed(x: XEmulator, account: XAccount) -> None:
    """A listener whose backlog is full never completes the handshake: connecting times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (Linux lets backlog + 1 through)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            identity = Identity("x", account.user_id, "@herald_team", "https://x.com/herald_team")
            url = f"http://127.0.0.1:{port}"
            client = XClient(oauth1(x, account), api_url=url, identity=identity, connect_timeout=0.3)
            try:
                with pytest.raises(PublishFailed) as failed:
                    await client.publish("Never sent", key="n")
                assert not isinstance(failed.value, PublishUnknown)
            finally:
                await client.close()
        finally:
            for filler in fillers:
                filler.close()


def test_credentials_hide_their_secrets() -> None:
    creds = XCredentials(
        consumer_key="ck-123", consumer_secret="cs-456", access_token="at-789", access_token_secret="ats-000"
    )
    assert creds.kind == "oauth1"
    shown = f"{creds!r} {creds!s} {XClient(creds)!r}"
    assert not any(secret in shown for secret in ("ck-123", "cs-456", "at-789", "ats-000")), shown
    assert XCredentials.from_mapping(creds.as_mapping()) == creds
    token = XCredentials(user_token="ut-secret")
    assert token.kind == "oauth2" and "ut-secret" not in repr(token)
    with pytest.raises(ValueError, match="not both"):
        XCredentials(
            consumer_key="a", consumer_secret="b", access_token="c", access_token_secret="d", user_token="e"
        )
    with pytest.raises(ValueError, match="needs"):
        XCredentials(consumer_key="a", consumer_secret="b")


async def test_tokens_never_reach_the_logs(
    x: XEmulator, account: XAccount, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = oauth1(x, account)
    client = XClient(creds, api_url=x.url)
    try:
        await client.publish("Logged?", key="l")
        x.hold_next()
        client.timeout = 0.3
        with pytest.raises(PublishUnknown):
            await client.publish("Logged again?", key="m")
    finally:
        await client.close()
    secrets = [creds.consumer_secret, creds.access_token, creds.access_token_secret, account.user_token]
    assert caplog.records  # something was logged (the unknown outcome)
    assert not [s for s in secrets if s in caplog.text]


async def test_close_is_idempotent(client: XClient) -> None:
    await client.whoami()
    await client.close()
    await client.close()

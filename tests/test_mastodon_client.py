"""Herald's Mastodon client against the Mastodon emulator over real HTTP: who it posts
as, the instance's limits, posts and threads, exactly once through Idempotency-Key
(retried with the same key after a timeout, a dropped connection or a 5xx), and every
refusal in plain words. Timeouts are made certain by holding the emulator's answer."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from core.social.mastodon import MastodonClient, MastodonCredentials
from core.social.network import (
    Identity,
    NetworkClient,
    PublishedPart,
    PublishFailed,
    PublishUnknown,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
    thread_keys,
)
from tests.emulators.mastodon import MastodonEmulator

TOKEN = "alice-secret-token"
#: for a held answer, which always outlasts it
SHORT_TIMEOUT = 2.0
#: for the rest, which no busy machine makes time out
TIMEOUT = 30.0


@pytest.fixture
async def server() -> AsyncIterator[MastodonEmulator]:
    async with MastodonEmulator() as emulator:
        emulator.add_account("alice", TOKEN)
        yield emulator


def make_client(server: MastodonEmulator, token: str = TOKEN, timeout: float = TIMEOUT) -> MastodonClient:
    return MastodonClient(
        MastodonCredentials(server.url, token), timeout=timeout, retry_delay=0.0, attempts=3
    )


@pytest.fixture
async def client(server: MastodonEmulator) -> AsyncIterator[MastodonClient]:
    client = make_client(server)
    yield client
    await client.close()


def test_the_credentials_never_show_the_token() -> None:
    credentials = MastodonCredentials("https://social.example/", TOKEN)
    assert TOKEN not in repr(credentials)
    assert TOKEN not in str(credentials)
    assert credentials.instance_url == "https://social.example"
    with pytest.raises(ValueError):
        MastodonCredentials("social.example", TOKEN)


def test_it_is_a_network_client(client: MastodonClient) -> None:
    network: NetworkClient = client  # mypy checks the protocol
    assert network.network == "mastodon"


async def test_whoami_names_the_account(server: MastodonEmulator) -> None:
    bob = server.add_account("bob", "bob-token")
    client = make_client(server, token="bob-token")
    try:
        me = await client.whoami()
    finally:
        await client.close()
    assert me == Identity(
        network="mastodon", account_id=bob.id, handle="@bob@social.example", url="https://social.example/@bob"
    )


async def test_limits_come_from_the_instance_once() -> None:
    async with MastodonEmulator(max_characters=1000) as custom:
        custom.add_account("alice", TOKEN)
        client = make_client(custom)
        try:
            limits = await client.limits()
            again = await client.limits()
        finally:
            await client.close()
        assert (limits.max_length, limits.unit) == (1000, "characters")
        assert again.max_length == 1000
        assert len([r for r in custom.requests if r.path == "/api/v2/instance"]) == 1
    assert limits.measure("read https://example.com/" + "p" * 200) == len("read ") + 23


async def test_publish_sends_the_key_and_links_the_post(
    server: MastodonEmulator, client: MastodonClient
) -> None:
    part = await client.publish("Hello, fediverse!", key="post-7-1")
    [status] = server.statuses_of("alice")
    assert part == PublishedPart(post_id=status.id, url=server.status_url(status))
    assert (status.text, status.visibility, status.idempotency_key) == (
        "Hello, fediverse!",
        "public",
        "post-7-1",
    )
    [request] = server.posts()
    assert request.headers["Idempotency-Key"] == "post-7-1"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_a_thread_is_a_chain_of_replies(server: MastodonEmulator, client: MastodonClient) -> None:
    parts: list[PublishedPart] = []
    for text, key in zip(["one", "two", "three"], thread_keys("post-9", 3), strict=True):
        reply_to = ReplyTo(root=parts[0], parent=parts[-1]) if parts else None
        parts.append(await client.publish(text, key=key, reply_to=reply_to))
    statuses = server.statuses_of("alice")
    assert [s.text for s in statuses] == ["one", "two", "three"]
    assert [s.in_reply_to_id for s in statuses] == [None, parts[0].post_id, parts[1].post_id]
    assert [s.idempotency_key for s in statuses] == ["post-9-1", "post-9-2", "post-9-3"]


async def test_the_same_key_twice_is_one_post(server: MastodonEmulator, client: MastodonClient) -> None:
    first = await client.publish("once", key="post-1-1")
    second = await client.publish("once", key="post-1-1")
    assert first == second
    assert len(server.statuses) == 1


async def test_a_timeout_after_creation_is_retried_with_the_same_key(server: MastodonEmulator) -> None:
    server.hold_after_create()  # created, then the answer never comes in time
    client = make_client(server, timeout=SHORT_TIMEOUT)
    try:
        part = await client.publish("slow server", key="post-2-1")
    finally:
        await client.close()
    [status] = server.statuses
    assert part.post_id == status.id
    posts = server.posts()
    assert len(posts) >= 2
    assert {r.headers["Idempotency-Key"] for r in posts} == {"post-2-1"}


async def test_a_dropped_connection_or_a_5xx_is_retried_with_the_same_key(
    server: MastodonEmulator, client: MastodonClient
) -> None:
    server.drop_after_create()
    dropped = await client.publish("dropped", key="post-3-1")
    server.fail_after_create(500)
    errored = await client.publish("errored", key="post-3-2")
    server.fail_next(502)
    proxied = await client.publish("proxied", key="post-3-3")
    assert [s.id for s in server.statuses] == [dropped.post_id, errored.post_id, proxied.post_id]
    keys = [r.headers["Idempotency-Key"] for r in server.posts()]
    assert keys == ["post-3-1", "post-3-1", "post-3-2", "post-3-2", "post-3-3", "post-3-3"]


async def test_no_confirmation_at_all_is_unknown_and_never_a_second_post(
    server: MastodonEmulator, client: MastodonClient
) -> None:
    server.hold_before_create()  # the first try holds the key's lock; the others get 503
    impatient = make_client(server, timeout=SHORT_TIMEOUT)
    try:
        with pytest.raises(PublishUnknown) as unknown:
            await impatient.publish("stuck", key="post-4-1")
    finally:
        await impatient.close()
    assert "may already be up" in unknown.value.user_message
    assert len(server.posts()) == 3
    server.release()
    await server.wait_until(lambda: len(server.statuses) == 1)  # the first try finished after all
    again = await client.publish("stuck", key="post-4-1")
    assert again.post_id == server.statuses[0].id
    assert len(server.statuses) == 1


async def test_over_the_instance_limit_is_rejected_in_plain_words() -> None:
    async with MastodonEmulator(max_characters=1000) as custom:
        custom.add_account("alice", TOKEN)
        client = make_client(custom)
        try:
            limits = await client.limits()
            text = "word " * 201
            assert limits.measure(text) > limits.max_length
            with pytest.raises(Rejected) as rejected:
                await client.publish(text, key="post-5-1")
        finally:
            await client.close()
        assert rejected.value.user_message == (
            "Mastodon refused this post: it is longer than this server allows (1000 characters)."
        )
        assert custom.statuses == []
        assert len(custom.posts()) == 1  # a refusal is not retried


async def test_a_reply_to_a_missing_post_is_rejected(client: MastodonClient) -> None:
    gone = PublishedPart(post_id="12345", url="https://social.example/@alice/12345")
    with pytest.raises(Rejected) as rejected:
        await client.publish("late reply", key="post-6-2", reply_to=ReplyTo(root=gone, parent=gone))
    assert "the post it replies to is gone" in rejected.value.user_message


async def test_429_is_rate_limited_until_the_reset() -> None:
    now = 1_800_000_000.5
    async with MastodonEmulator(clock=lambda: now, status_limit=1) as limited:
        limited.add_account("alice", TOKEN)
        client = make_client(limited)
        try:
            await client.publish("first", key="post-8-1")
            with pytest.raises(RateLimited) as limit:
                await client.publish("second", key="post-8-2")
        finally:
            await client.close()
        assert len(limited.statuses) == 1
    # reset: the end of the 3-hour window, on the server's clock (its Date header, whole seconds)
    reset = now + (10800 - int(now) % 10800)
    assert limit.value.retry_after == pytest.approx(reset - int(now))
    assert "60 minutes" in limit.value.user_message


async def test_a_rate_limit_that_outlasts_the_key_after_an_unconfirmed_try_is_unknown() -> None:
    now = 1_800_000_000.5  # the start of a 2-hour window: its reset is 2 hours away
    async with MastodonEmulator(clock=lambda: now, api_limit=1, api_period=7200) as limited:
        limited.add_account("alice", TOKEN)
        limited.drop_after_create()
        client = make_client(limited)
        try:
            with pytest.raises(PublishUnknown):
                await client.publish("first", key="post-9-1")
        finally:
            await client.close()
        assert len(limited.statuses) == 1
        assert len(limited.posts()) == 2  # waiting 2 hours could outlive the key: not retried


async def test_a_bad_token_is_unauthorized(server: MastodonEmulator) -> None:
    client = make_client(server, token="wrong")
    try:
        with pytest.raises(Unauthorized) as on_whoami:
            await client.whoami()
        with pytest.raises(Unauthorized) as on_publish:
            await client.publish("hi", key="post-10-1")
    finally:
        await client.close()
    assert "connect the account again" in on_whoami.value.user_message
    assert "wrong" not in on_publish.value.user_message
    assert server.statuses == []
    assert len(server.posts()) == 1  # never retried


async def test_a_token_that_may_not_write_is_unauthorized(server: MastodonEmulator) -> None:
    server.add_account("reader", "read-only", scopes=frozenset({"read"}))
    client = make_client(server, token="read-only")
    try:
        assert (await client.whoami()).handle == "@reader@social.example"
        with pytest.raises(Unauthorized):
            await client.publish("hi", key="post-11-1")
    finally:
        await client.close()


async def test_a_server_that_cannot_be_reached_published_nothing() -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = MastodonClient(MastodonCredentials(f"http://127.0.0.1:{port}", TOKEN), retry_delay=0.0)
    try:
        with pytest.raises(PublishFailed) as failed:
            await client.publish("hi", key="post-12-1")
    finally:
        await client.close()
    assert not isinstance(failed.value, PublishUnknown)
    assert "nothing was published" in failed.value.user_message

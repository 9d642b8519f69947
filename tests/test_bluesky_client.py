"""Herald's Bluesky client against the PDS emulator, over real HTTP: sessions, rich text,
threads, and exactly once (a record key per part, read back whenever an answer is lost).

Timeouts are made certain, not likely: the emulator holds the answer until released, and
only the call under test has a short timeout.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from core.social.bluesky import BlueskyClient, BlueskyCredentials, record_key
from core.social.network import (
    NetworkClient,
    PublishedPart,
    PublishFailed,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
    thread_keys,
)
from tests.emulators.bluesky import BlueskyEmulator

HANDLE = "herald.bsky.social"
APP_PASSWORD = "abcd-efgh-ijkl-mnop"
CREATE = "com.atproto.repo.createRecord"


@pytest.fixture
async def emu() -> AsyncIterator[BlueskyEmulator]:
    async with BlueskyEmulator() as emulator:
        emulator.add_account(HANDLE, app_password=APP_PASSWORD)
        yield emulator


def make_client(emu: BlueskyEmulator, *, password: str = APP_PASSWORD, **options: float) -> BlueskyClient:
    return BlueskyClient(BlueskyCredentials(HANDLE, password, service=emu.url), **options)


@pytest.fixture
async def client(emu: BlueskyEmulator) -> AsyncIterator[BlueskyClient]:
    bluesky = make_client(emu)
    yield bluesky
    await bluesky.close()


def rkey_of(part: PublishedPart) -> str:
    return part.post_id.rsplit("/", 1)[1]


# -- the account ----------------------------------------------------------------------------


async def test_whoami_says_who_the_account_posts_as(emu: BlueskyEmulator, client: BlueskyClient) -> None:
    checked: NetworkClient = client
    identity = await checked.whoami()
    account = emu.account(HANDLE)
    assert account is not None
    assert (identity.network, identity.account_id, identity.handle) == ("bluesky", account.did, HANDLE)
    assert identity.url == f"https://bsky.app/profile/{HANDLE}"
    assert len(emu.calls_to("com.atproto.server.createSession")) == 1


def test_credentials_never_show_the_app_password() -> None:
    credentials = BlueskyCredentials(HANDLE, APP_PASSWORD)
    assert APP_PASSWORD not in repr(credentials) and APP_PASSWORD not in str(credentials)
    assert HANDLE in repr(credentials)


async def test_a_bad_app_password_is_unauthorized(emu: BlueskyEmulator) -> None:
    bluesky = make_client(emu, password="wrong-wrong-wrong-wrong")
    try:
        with pytest.raises(Unauthorized) as caught:
            await bluesky.whoami()
        assert "app password" in caught.value.user_message
        with pytest.raises(Unauthorized):
            await bluesky.publish("hello", key="post-1-1")
    finally:
        await bluesky.close()
    assert emu.records() == []


async def test_limits_are_300_graphemes(client: BlueskyClient) -> None:
    limits = await client.limits()
    assert (limits.max_length, limits.unit) == (300, "graphemes")
    assert limits.measure("👨\u200d👩\u200d👧\u200d👦 e\u0301") == 3


# -- publishing -------------------------------------------------------------------------------


async def test_a_post_is_published_with_its_facets(emu: BlueskyEmulator, client: BlueskyClient) -> None:
    alice = emu.add_identity("alice.bsky.social")
    text = "Déjà vu 🦋 with @alice.bsky.social and @ghost.bsky.social: see bsky.app/about #atproto"
    part = await client.publish(text, key="post-7-1")

    [stored] = emu.records()
    assert (part.post_id, part.ref) == (stored.uri, stored.cid)
    assert part.url == f"https://bsky.app/profile/{HANDLE}/post/{stored.rkey}"
    assert stored.validation_status == "valid" and stored.value["text"] == text
    created = datetime.fromisoformat(stored.value["createdAt"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    data = text.encode()
    features = [
        (data[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode(), f["features"][0])
        for f in stored.value["facets"]
    ]
    assert features == [
        ("@alice.bsky.social", {"$type": "app.bsky.richtext.facet#mention", "did": alice}),
        ("bsky.app/about", {"$type": "app.bsky.richtext.facet#link", "uri": "https://bsky.app/about"}),
        ("#atproto", {"$type": "app.bsky.richtext.facet#tag", "tag": "atproto"}),
    ]  # the unresolvable @ghost stays plain text


async def test_a_thread_of_three_replies_with_root_and_parent(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    parts: list[PublishedPart] = []
    for n, key in enumerate(thread_keys("post-9", 3), start=1):
        reply = ReplyTo(root=parts[0], parent=parts[-1]) if parts else None
        parts.append(await client.publish(f"part {n}/3", key=key, reply_to=reply))

    first, second, third = emu.records()
    assert "reply" not in first.value
    assert second.value["reply"] == {
        "root": {"uri": first.uri, "cid": first.cid},
        "parent": {"uri": first.uri, "cid": first.cid},
    }
    assert third.value["reply"] == {
        "root": {"uri": first.uri, "cid": first.cid},
        "parent": {"uri": second.uri, "cid": second.cid},
    }
    assert [p.post_id for p in parts] == [first.uri, second.uri, third.uri]


async def test_an_empty_or_too_long_post_is_rejected_before_sending(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    with pytest.raises(Rejected) as caught:
        await client.publish("x" * 301, key="post-1-1")
    assert "301 characters" in caught.value.user_message and "300" in caught.value.user_message
    with pytest.raises(Rejected):
        await client.publish("  \n", key="post-1-1")
    assert emu.calls_to(CREATE) == []


# -- sessions ---------------------------------------------------------------------------------


async def test_an_access_token_expiring_mid_run_is_refreshed(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    await client.publish("one", key="post-1-1")
    emu.expire_access_tokens()
    await client.publish("two", key="post-2-1")
    await client.publish("three", key="post-3-1")

    assert [r.value["text"] for r in emu.records()] == ["one", "two", "three"]
    assert [(c.status, c.error) for c in emu.calls_to(CREATE)] == [
        (200, ""),
        (400, "ExpiredToken"),
        (200, ""),
        (200, ""),
    ]
    assert len(emu.calls_to("com.atproto.server.refreshSession")) == 1
    assert len(emu.calls_to("com.atproto.server.createSession")) == 1


async def test_a_dead_refresh_token_means_a_new_session(emu: BlueskyEmulator, client: BlueskyClient) -> None:
    await client.whoami()
    emu.expire_access_tokens()
    emu.revoke_refresh_tokens()
    await client.publish("still here", key="post-1-1")
    assert [r.value["text"] for r in emu.records()] == ["still here"]
    refreshes = emu.calls_to("com.atproto.server.refreshSession")
    assert [(c.status, c.error) for c in refreshes] == [(400, "ExpiredToken")]
    assert len(emu.calls_to("com.atproto.server.createSession")) == 2


async def test_two_posts_at_once_refresh_the_session_once(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    await client.whoami()
    emu.expire_access_tokens()
    await asyncio.gather(client.publish("left", key="post-1-1"), client.publish("right", key="post-2-1"))
    assert sorted(r.value["text"] for r in emu.records()) == ["left", "right"]
    # the emulator revokes a refresh token at its first use: a second refresh would have failed
    assert [c.status for c in emu.calls_to("com.atproto.server.refreshSession")] == [200]
    assert len(emu.calls_to("com.atproto.server.createSession")) == 1


async def test_a_revoked_app_password_is_unauthorized_once_the_session_ends(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    await client.publish("before", key="post-1-1")
    account = emu.account(HANDLE)
    assert account is not None
    account.app_passwords.clear()  # revoked in the app's settings: its sessions end
    emu.expire_access_tokens()
    emu.revoke_refresh_tokens()
    with pytest.raises(Unauthorized):
        await client.publish("after", key="post-2-1")
    assert [r.value["text"] for r in emu.records()] == ["before"]


# -- exactly once -----------------------------------------------------------------------------


def test_record_keys_are_tids_derived_from_the_key() -> None:
    keys = [record_key(f"post-{n}-1") for n in range(200)]
    assert all(re.fullmatch(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}", k) for k in keys)
    assert len(set(keys)) == 200 and record_key("post-3-1") == keys[3]
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    micros = [int("".join(f"{alphabet.index(c):05b}" for c in k), 2) >> 10 for k in keys]
    assert all(m < datetime.now(UTC).timestamp() * 1_000_000 for m in micros)  # never in the future


async def test_a_retry_with_the_same_key_creates_no_second_record(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    first = await client.publish("once", key="post-4-1")
    again = await client.publish("once", key="post-4-1")
    other_replica = make_client(emu)
    try:
        third = await other_replica.publish("once", key="post-4-1")
    finally:
        await other_replica.close()

    assert first == again == third
    assert [r.value["text"] for r in emu.records()] == ["once"]
    # the PDS refused the key twice (a bare 500), and each time the post was read back
    assert [c.status for c in emu.calls_to(CREATE)] == [200, 500, 500]
    assert [c.status for c in emu.calls_to("com.atproto.repo.getRecord")] == [200, 200]


async def test_a_timeout_after_the_record_was_created_reads_it_back(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    held = emu.hold(CREATE, after_write=True)
    impatient = make_client(emu, create_timeout=0.2)  # only the held create is short
    try:
        part = await impatient.publish("slow but there", key="post-5-1")
    finally:
        await impatient.close()
    [stored] = emu.records()
    assert (part.post_id, part.ref) == (stored.uri, stored.cid)
    assert rkey_of(part) == record_key("post-5-1")
    assert len(held.waiting) == 1 and emu.calls_to("com.atproto.repo.getRecord")[-1].status == 200
    held.release()
    assert await client.publish("slow but there", key="post-5-1") == part  # a later retry
    assert len(emu.records()) == 1


async def test_a_timeout_before_anything_was_written_is_safe_to_retry(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    held = emu.hold(CREATE)
    impatient = make_client(emu, create_timeout=0.2)
    try:
        with pytest.raises(PublishFailed) as caught:
            await impatient.publish("not yet", key="post-6-1")
    finally:
        await impatient.close()
    assert "tried again" in caught.value.user_message
    assert emu.records() == [] and emu.calls_to("com.atproto.repo.getRecord")[-1].error == "RecordNotFound"
    held.release()
    part = await client.publish("not yet", key="post-6-1")
    assert [r.uri for r in emu.records()] == [part.post_id]


async def test_a_5xx_after_the_write_is_published_and_before_it_is_failed(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    emu.fail_next(CREATE, status=500, after_write=True)
    kept = await client.publish("written", key="post-8-1")
    emu.fail_next(CREATE, status=502)
    with pytest.raises(PublishFailed):
        await client.publish("lost", key="post-8-2")
    assert [r.uri for r in emu.records()] == [kept.post_id]
    retried = await client.publish("lost", key="post-8-2")
    assert [r.uri for r in emu.records()] == [kept.post_id, retried.post_id]


async def test_a_rate_limit_is_rate_limited_with_the_reset(
    emu: BlueskyEmulator, client: BlueskyClient
) -> None:
    emu.rate_limit_next(CREATE, reset_in=45)
    with pytest.raises(RateLimited) as caught:
        await client.publish("later", key="post-2-1")
    assert 40 <= caught.value.retry_after <= 45
    assert emu.records() == []
    await client.publish("later", key="post-2-1")
    assert len(emu.records()) == 1

"""Social accounts (issue 14): a chat's own, encrypted at rest with a key from
HERALD_SECRET_KEY (rotatable), before the install's own; an account that needs
attention is flagged once for every replica."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from core.social.accounts import Account, AccountError, AccountStore, secret_box
from core.social.network import Identity
from core.storage.keys import Keys

KEY = "k" * 40
OTHER_KEY = "o" * 40
PASSWORD = "app-password-abcd-efgh-ijkl"


def bluesky(handle: str = "team.bsky.social", password: str = PASSWORD, by: str = "u1") -> Account:
    return Account(
        id="",
        network="bluesky",
        handle=handle,
        url=f"https://bsky.app/profile/{handle}",
        account_id="did:plc:abc",
        connected_by=by,
        credentials={"handle": handle, "app_password": password},
    )


INSTALLED = {"x": {"user_token": "t"}}


@pytest.fixture
def store(redis: Redis, prefix: str) -> AccountStore:
    return AccountStore(redis, Keys(prefix), secret_box(KEY), installed=INSTALLED)


async def every_value(redis: Redis, prefix: str) -> str:
    parts = []
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        kind = await redis.type(key)
        if kind == "hash":
            parts += [f"{k}={v}" for k, v in (await redis.hgetall(key)).items()]
    return "\n".join(parts)


async def test_credentials_are_encrypted_at_rest_and_read_back(
    store: AccountStore, redis: Redis, prefix: str
) -> None:
    kept = await store.add("discord", "c1", bluesky())
    assert kept.id and kept.id != "bluesky"
    stored = await every_value(redis, prefix)
    assert "team.bsky.social" in stored  # the public part is readable for listing
    assert PASSWORD not in stored and "app_password" not in stored
    [found] = await store.stored("discord", "c1")
    assert found.credentials == {"handle": "team.bsky.social", "app_password": PASSWORD}
    assert PASSWORD not in repr(found)
    assert await store.stored("discord", "c2") == []  # another chat's accounts are its own


async def test_a_chats_own_account_comes_before_the_installs(store: AccountStore) -> None:
    usable = await store.usable("discord", "c1")
    assert sorted(usable) == ["x"] and usable["x"].installed
    assert usable["x"].handle == "(not checked yet)" and usable["x"].credentials == {"user_token": "t"}
    await store.identify_installed("x", Identity("x", "42", "@herald", "https://x.com/herald"))
    assert (await store.usable("telegram", "t9"))["x"].handle == "@herald"  # every chat, every replica
    await store.add("discord", "c1", bluesky())
    mine = Account("", "x", "@team", "https://x.com/team", connected_by="u1", credentials={"a": "b"})
    await store.add("discord", "c1", mine)
    usable = await store.usable("discord", "c1")
    assert usable["x"].handle == "@team" and not usable["x"].installed
    assert usable["bluesky"].handle == "team.bsky.social"
    # connecting a network again replaces the chat's earlier account there
    await store.add("discord", "c1", bluesky("new.bsky.social"))
    assert [a.handle for a in await store.stored("discord", "c1")] == ["new.bsky.social", "@team"]


async def test_a_rotated_key_still_reads_and_a_lost_key_reads_nothing(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = AccountStore(redis, Keys(prefix), secret_box(KEY))
    await old.add("telegram", "-100", bluesky())
    rotated = AccountStore(redis, Keys(prefix), secret_box(f"{OTHER_KEY},{KEY}"))
    assert [a.credentials["app_password"] for a in await rotated.stored("telegram", "-100")] == [PASSWORD]
    await rotated.add("telegram", "-200", bluesky())  # written with the newest key
    caplog.set_level(logging.ERROR, logger="herald.accounts")
    lost = AccountStore(redis, Keys(prefix), secret_box(OTHER_KEY))
    assert await lost.stored("telegram", "-100") == []
    assert "can't be decrypted" in caplog.text and PASSWORD not in caplog.text
    assert len(await lost.stored("telegram", "-200")) == 1


async def test_without_a_secret_key_chats_connect_nothing(redis: Redis, prefix: str) -> None:
    store = AccountStore(redis, Keys(prefix), None, installed=INSTALLED)
    assert not store.can_store
    with pytest.raises(AccountError, match="HERALD_SECRET_KEY"):
        await store.add("discord", "c1", bluesky())
    assert sorted(await store.usable("discord", "c1")) == ["x"]


def test_a_short_or_empty_secret_key_is_refused() -> None:
    with pytest.raises(AccountError, match="at least 32"):
        secret_box("short")
    with pytest.raises(AccountError, match="empty"):
        secret_box(" , ")


async def test_needing_attention_is_flagged_once_for_every_replica(
    store: AccountStore, redis: Redis, prefix: str
) -> None:
    kept = await store.add("discord", "c1", bluesky())
    replica = AccountStore(redis, Keys(prefix), secret_box(KEY), installed=INSTALLED)
    assert await store.mark("discord", "c1", kept, "Bluesky refused the app password") is True
    assert await replica.mark("discord", "c1", kept, "Bluesky refused the app password") is False
    usable = await replica.usable("discord", "c1")
    assert usable["bluesky"].attention == "Bluesky refused the app password"
    assert usable["x"].attention == ""
    # the install's account is one for every chat
    assert await store.mark("telegram", "t1", usable["x"], "X: 401") is True
    assert (await replica.usable("discord", "c9"))["x"].attention == "X: 401"
    await store.clear("discord", "c1", kept)
    assert (await store.usable("discord", "c1"))["bluesky"].attention == ""

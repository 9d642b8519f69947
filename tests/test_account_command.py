"""`/account` (issue 14): begun by a chat's manager in the chat, finished in a DM so that
no credential is typed in a group; checked once with the network (Bluesky and Mastodon
stand-ins here), kept encrypted, shown by handle; a chat's own server must be public."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from core.chat.access import AccessPolicy
from core.commands.accounts import MANAGERS_ONLY, AccountCommands
from core.commands.context import CommandContext
from core.config import load_settings
from core.platform import Inbound
from core.search.addresses import AddressPolicy
from core.social.accounts import AccountStore, secret_box
from core.social.clients import Clients
from core.storage.keys import Keys
from tests.emulators.bluesky import BlueskyEmulator
from tests.emulators.mastodon import MastodonEmulator
from tests.support import RecordingSurface, event

LOOPBACK = AddressPolicy(also_allowed=frozenset({ipaddress.ip_address("127.0.0.1")}))
PASSWORD = "abcd-efgh-ijkl-mnop"


@pytest.fixture
async def bluesky() -> AsyncIterator[BlueskyEmulator]:
    async with BlueskyEmulator() as emulator:
        emulator.add_account("team.bsky.social", app_password=PASSWORD)
        yield emulator


@pytest.fixture
async def mastodon() -> AsyncIterator[MastodonEmulator]:
    async with MastodonEmulator() as emulator:
        emulator.add_account("team", "token-1")
        yield emulator


@pytest.fixture
def store(redis: Redis, prefix: str) -> AccountStore:
    return AccountStore(redis, Keys(prefix), secret_box("s" * 40))


def commands(store: AccountStore, policy: AddressPolicy = LOOPBACK) -> AccountCommands:
    access = AccessPolicy.from_settings(load_settings(env_file=None))
    return AccountCommands(store, Clients(policy=policy), access)


async def run(commands: AccountCommands, said: Inbound, sub: str, **args: Any) -> RecordingSurface:
    """One `/account <sub>` as the registry would hand it over."""
    surface = RecordingSurface()
    ctx = CommandContext(said, surface, conversation=None)  # type: ignore[arg-type]
    handler = {"add": commands.add, "list": commands.spec().subcommands[1].handler}
    handler |= {"remove": commands.spec().subcommands[2].handler}
    await handler[sub](ctx, args)
    return surface


def in_group(*, admin: bool = True, user: str = "ada") -> Inbound:
    return event("/account", user=user, chat="-100", platform="telegram", private=False, chat_admin=admin)


def in_dm(user: str = "ada") -> Inbound:
    return event("/account", user=user, chat=user, platform="telegram", private=True)


async def test_connecting_starts_in_the_chat_and_ends_in_a_dm(
    store: AccountStore, bluesky: BlueskyEmulator, redis: Redis, prefix: str
) -> None:
    account = commands(store)
    begun = await run(account, in_group(), "add", network="bluesky")
    assert begun.last.startswith("To connect a Bluesky account to this chat, send me a direct message")
    finished = await run(
        account,
        in_dm(),
        "add",
        network="bluesky",
        handle="team.bsky.social",
        app_password=PASSWORD,
        service=bluesky.url,
    )
    assert finished.last.startswith(
        "Connected Bluesky team.bsky.social (https://bsky.app/profile/team.bsky.social)"
    )
    [kept] = await store.stored("telegram", "-100")
    assert kept.handle == "team.bsky.social" and kept.connected_by == "ada"
    # encrypted at rest: the app password is nowhere in Redis as it was typed
    stored = [
        f"{field}={value}"
        async for key in redis.scan_iter(match=f"{prefix}:*")
        if await redis.type(key) == "hash"
        for field, value in (await redis.hgetall(key)).items()
    ]
    assert any("team.bsky.social" in item for item in stored)  # the account is there…
    assert all(PASSWORD not in item for item in stored)  # …its app password is not, as typed
    listed = await run(account, in_group(admin=False, user="bob"), "list")
    assert "- Bluesky team.bsky.social (connected by ada)" in listed.last
    # the connection was used up: credentials sent again connect nothing
    again = await run(account, in_dm(), "add", network="bluesky", handle="x", app_password="y")
    assert again.last.startswith("Start in the chat the account is for")


async def test_credentials_typed_in_a_group_are_refused_and_never_kept(
    store: AccountStore, bluesky: BlueskyEmulator
) -> None:
    said = await run(commands(store), in_group(), "add", network="bluesky", app_password=PASSWORD)
    assert said.last.startswith("Never type credentials in a group: I kept nothing.")
    assert PASSWORD not in said.last
    assert await store.stored("telegram", "-100") == []
    assert bluesky.calls == []  # nothing was sent to the network either


async def test_only_managers_connect_or_remove(store: AccountStore) -> None:
    account = commands(store)
    assert (await run(account, in_group(admin=False), "add", network="x")).last == MANAGERS_ONLY
    assert (await run(account, in_group(admin=False), "remove", network="x")).last == MANAGERS_ONLY
    # nothing was begun for them: their DM connects nothing
    dm = await run(account, in_dm(), "add", network="x", user_token="t")
    assert dm.last.startswith("Start in the chat the account is for")


async def test_refused_credentials_say_so_and_keep_nothing(
    store: AccountStore, mastodon: MastodonEmulator
) -> None:
    account = commands(store)
    await run(account, in_group(), "add", network="mastodon")
    wrong = await run(account, in_dm(), "add", network="mastodon", url=mastodon.url, token="not-it")
    assert wrong.last.startswith("Mastodon refused these credentials:")
    assert "not-it" not in wrong.last
    assert await store.stored("telegram", "-100") == []
    right = await run(account, in_dm(), "add", network="mastodon", url=mastodon.url, token="token-1")
    assert right.last.startswith("Connected Mastodon @team@social.example")
    removed = await run(account, in_group(), "remove", network="mastodon")
    assert removed.last.startswith("Removed Mastodon @team@social.example from this chat")
    assert await store.stored("telegram", "-100") == []


async def test_a_chats_own_server_must_be_a_public_address_over_https(
    store: AccountStore, mastodon: MastodonEmulator
) -> None:
    account = commands(store, AddressPolicy())  # public addresses only, as deployed
    await run(account, in_group(), "add", network="mastodon")
    said = await run(account, in_dm(), "add", network="mastodon", url=mastodon.url, token="token-1")
    assert said.last.startswith("The server's address must start with https://")
    # https to a loopback address: refused before any connection is made
    https = mastodon.url.replace("http://", "https://")
    said = await run(account, in_dm(), "add", network="mastodon", url=https, token="token-1")
    assert said.last.startswith("I couldn't check these credentials: Mastodon at 127.0.0.1 could not be")
    assert mastodon.statuses == [] and await store.stored("telegram", "-100") == []


async def test_without_a_secret_key_chats_connect_nothing(redis: Redis, prefix: str) -> None:
    account = commands(AccountStore(redis, Keys(prefix), None))
    said = await run(account, in_group(), "add", network="bluesky")
    assert "HERALD_SECRET_KEY" in said.last

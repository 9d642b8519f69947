"""The Mastodon emulator is as strict as Mastodon: tokens and scopes, the length counted
Mastodon's way, replies, Idempotency-Key (per account, one hour, under a lock), rate
limits and their headers, and the faults tests inject. Raw HTTP, no Herald code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.emulators.mastodon import MastodonEmulator

TOKEN = "alice-token"
STATUSES = "/api/v1/statuses"


class Clock:
    """The emulator's time, moved by the test."""

    def __init__(self, now: float = 1_800_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[MastodonEmulator]:
    async with MastodonEmulator(clock=Clock()) as emulator:
        emulator.add_account("alice", TOKEN, display_name="Alice")
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    server: MastodonEmulator,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    key: str | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with http.request(method, server.url + path, headers=headers, **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, body, dict(response.headers)


def clock(server: MastodonEmulator) -> Clock:
    assert isinstance(server.clock, Clock)
    return server.clock


async def test_tokens_are_checked_as_doorkeeper_does(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await call(http, server, "GET", "/api/v1/accounts/verify_credentials", token=None)
    assert (status, body) == (401, {"error": "The access token is invalid"})
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, body, _ = await call(http, server, "GET", "/api/v1/accounts/verify_credentials", token="nope")
    assert (status, body) == (401, {"error": "The access token is invalid"})

    status, body, _ = await call(http, server, "GET", "/api/v1/accounts/verify_credentials")
    assert status == 200
    assert (body["username"], body["acct"], body["url"]) == (
        "alice",
        "alice",
        "https://social.example/@alice",
    )
    assert "source" in body

    server.revoke(TOKEN)
    status, body, _ = await call(http, server, "GET", "/api/v1/accounts/verify_credentials")
    assert (status, body) == (401, {"error": "The access token was revoked"})


async def test_posting_needs_the_write_scope(server: MastodonEmulator, http: aiohttp.ClientSession) -> None:
    server.add_account("reader", "read-only", scopes=frozenset({"read"}))
    status, body, _ = await call(http, server, "POST", STATUSES, token="read-only", data={"status": "hi"})
    assert (status, body) == (403, {"error": "This action is outside the authorized scopes"})
    assert server.statuses == []


async def test_the_instance_tells_its_limits(http: aiohttp.ClientSession) -> None:
    async with MastodonEmulator(max_characters=1000, domain="long.example") as server:
        status, body, _ = await call(http, server, "GET", "/api/v2/instance", token=None)
    assert status == 200
    assert body["domain"] == "long.example"
    assert body["configuration"]["statuses"]["max_characters"] == 1000
    assert body["configuration"]["statuses"]["characters_reserved_per_url"] == 23


async def test_a_status_is_created_from_a_form_or_json(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    status, first, _ = await call(http, server, "POST", STATUSES, data={"status": "from a form"})
    assert status == 200
    assert isinstance(first["id"], str)
    assert first["url"] == f"https://social.example/@alice/{first['id']}"
    assert (first["visibility"], first["in_reply_to_id"]) == ("public", None)
    assert first["content"] == "<p>from a form</p>"

    status, reply, _ = await call(
        http,
        server,
        "POST",
        STATUSES,
        json={"status": "from JSON", "in_reply_to_id": first["id"], "visibility": "unlisted"},
    )
    assert status == 200
    assert (reply["in_reply_to_id"], reply["in_reply_to_account_id"]) == (first["id"], first["account"]["id"])
    assert [s.text for s in server.statuses_of("alice")] == ["from a form", "from JSON"]


async def test_length_is_counted_mastodons_way(server: MastodonEmulator, http: aiohttp.ClientSession) -> None:
    long_link = "https://example.com/" + "p" * 600
    status, _, _ = await call(http, server, "POST", STATUSES, data={"status": "a" * 476 + " " + long_link})
    assert status == 200  # 476 + 1 + 23 = 500

    status, body, _ = await call(http, server, "POST", STATUSES, data={"status": "a" * 501})
    assert (status, body) == (422, {"error": "Validation failed: Text character limit of 500 exceeded"})
    status, body, _ = await call(http, server, "POST", STATUSES, data={"status": "  "})
    assert (status, body) == (422, {"error": "Validation failed: Text can't be blank"})
    status, body, _ = await call(http, server, "POST", STATUSES, data={"status": "hi", "visibility": "loud"})
    assert (status, body) == (422, {"error": "Validation failed: Visibility is not included in the list"})
    assert len(server.statuses) == 1


async def test_a_reply_to_a_missing_status_is_refused(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        http, server, "POST", STATUSES, data={"status": "hi", "in_reply_to_id": "404"}
    )
    assert (status, body) == (404, {"error": "The post you are trying to reply to does not appear to exist."})
    assert server.statuses == []


async def test_an_idempotency_key_returns_the_same_status_for_an_hour(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    _, first, _ = await call(http, server, "POST", STATUSES, key="post-1", data={"status": "once"})
    _, again, _ = await call(http, server, "POST", STATUSES, key="post-1", data={"status": "changed text"})
    assert again["id"] == first["id"]
    assert again["content"] == "<p>once</p>"  # the first status, whatever the new text
    assert len(server.statuses) == 1

    server.add_account("bob", "bob-token")
    _, bobs, _ = await call(
        http, server, "POST", STATUSES, token="bob-token", key="post-1", data={"status": "b"}
    )
    assert bobs["id"] != first["id"]  # keys are per account

    clock(server).now += 3600  # PostStatusService keeps a key 3,600 s
    _, later, _ = await call(http, server, "POST", STATUSES, key="post-1", data={"status": "once"})
    assert later["id"] != first["id"]
    assert len(server.statuses_of("alice")) == 2


async def test_a_key_in_use_answers_503_until_its_status_exists(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    server.hold_before_create()
    first = asyncio.create_task(call(http, server, "POST", STATUSES, key="k", data={"status": "slow"}))
    await server.wait_until(lambda: server.held == 1)
    status, body, _ = await call(http, server, "POST", STATUSES, key="k", data={"status": "slow"})
    assert (status, body["error"]) == (
        503,
        "There was a temporary problem serving your request, please try again",
    )
    server.release()
    status, created, _ = await first
    assert status == 200
    _, replayed, _ = await call(http, server, "POST", STATUSES, key="k", data={"status": "slow"})
    assert replayed["id"] == created["id"]
    assert len(server.statuses) == 1


async def test_a_client_that_hangs_up_does_not_stop_the_creation(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    server.hold_before_create()
    gone = asyncio.create_task(call(http, server, "POST", STATUSES, key="k", data={"status": "still"}))
    await server.wait_until(lambda: server.held == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    server.release()
    await server.wait_until(lambda: len(server.statuses) == 1)


async def test_rate_limit_headers_and_429(http: aiohttp.ClientSession) -> None:
    async with MastodonEmulator(clock=Clock(1_800_000_000.25), api_limit=3, status_limit=1) as server:
        server.add_account("alice", TOKEN)
        status, _, headers = await call(http, server, "POST", STATUSES, data={"status": "one"})
        assert status == 200
        # the statuses family: 1 per 3 hours, the window aligned to the epoch
        assert headers["X-RateLimit-Limit"] == "1"
        assert headers["X-RateLimit-Remaining"] == "0"
        reset = datetime.fromisoformat(headers["X-RateLimit-Reset"]).timestamp()
        assert reset == pytest.approx(1_800_000_000.25 + 10800 - 1_800_000_000 % 10800)
        assert headers["X-RateLimit-Reset"].endswith(".250000Z")

        status, body, headers = await call(http, server, "POST", STATUSES, data={"status": "two"})
        assert (status, body) == (429, {"error": "Too many requests"})
        assert headers["X-RateLimit-Remaining"] == "0"
        assert len(server.statuses) == 1

        # the API throttle: 3 requests per 5 minutes per token; this is the third
        status, _, headers = await call(http, server, "GET", "/api/v1/accounts/verify_credentials")
        assert (status, headers["X-RateLimit-Remaining"]) == (200, "0")
        status, body, headers = await call(http, server, "GET", "/api/v1/accounts/verify_credentials")
        assert (status, body) == (429, {"error": "Too many requests"})
        assert headers["X-RateLimit-Limit"] == "3"
        reset = datetime.fromisoformat(headers["X-RateLimit-Reset"]).timestamp()
        assert reset == pytest.approx(1_800_000_000.25 + 300 - 1_800_000_000 % 300)


async def test_faults_before_and_after_creation(
    server: MastodonEmulator, http: aiohttp.ClientSession
) -> None:
    server.fail_next(502)
    async with http.post(server.url + STATUSES, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 502
        assert "Bad Gateway" in await response.text()
    assert server.statuses == []

    server.fail_after_create(500)
    status, _, _ = await call(http, server, "POST", STATUSES, key="a", data={"status": "made"})
    assert status == 500
    assert len(server.statuses) == 1

    server.drop_after_create()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, server, "POST", STATUSES, key="b", data={"status": "dropped"})
    assert len(server.statuses) == 2

    server.hold_after_create()
    held = asyncio.create_task(call(http, server, "POST", STATUSES, key="c", data={"status": "slow answer"}))
    await server.wait_until(lambda: server.held == 1)
    assert len(server.statuses) == 3  # created before the answer is held
    server.release()
    status, body, _ = await held
    assert (status, body["id"]) == (200, server.statuses[-1].id)
    assert [r.headers.get("Idempotency-Key") for r in server.posts()] == [None, "a", "b", "c"]

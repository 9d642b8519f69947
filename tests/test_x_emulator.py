"""The X API stand-in is as strict as X (issue 14): raw requests, signed with oauthlib
(a library independent of the emulator's own RFC 5849 code), some of them forged."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

import aiohttp
import pytest
from oauthlib.oauth1 import Client as OAuth1Signer

from tests.emulators.x import (
    DUPLICATE,
    REPLY_GONE,
    TOO_LONG,
    TWEETS,
    UNAUTHORIZED,
    UNSUPPORTED_AUTHENTICATION,
    RateLimit,
    XAccount,
    XEmulator,
    base_string_uri,
    hmac_sha1_signature,
    signature_base_string,
)


@dataclass
class Clock:
    """The emulator's clock, moved by the test (starts on a whole second, now)."""

    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@pytest.fixture
def clock() -> Clock:
    return Clock(float(int(time.time())))


@pytest.fixture
async def x(clock: Clock) -> AsyncIterator[XEmulator]:
    async with XEmulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def oauth1(
    x: XEmulator,
    account: XAccount,
    method: Literal["GET", "POST"],
    url: str,
    *,
    consumer_secret: str | None = None,
    token_secret: str | None = None,
    timestamp: float | None = None,
    nonce: str | None = None,
    signature_method: str = "HMAC-SHA1",
) -> str:
    """An ``Authorization: OAuth …`` header as a client library would send it."""
    signer = OAuth1Signer(
        x.consumer_key,
        client_secret=consumer_secret if consumer_secret is not None else x.consumer_secret,
        resource_owner_key=account.access_token,
        resource_owner_secret=token_secret if token_secret is not None else account.access_token_secret,
        signature_method=signature_method,
        timestamp=str(int(timestamp if timestamp is not None else x.clock())),
        nonce=nonce,
    )
    _, headers, _ = signer.sign(url, http_method=method)
    return str(headers["Authorization"])


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    authorization: str | None,
    body: Any = None,
    *,
    content_type: str = "application/json",
) -> Answer:
    headers = {"Authorization": authorization} if authorization else {}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    async with http.request(method, url, data=data, headers=headers) as resp:
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        return Answer(resp.status, dict(resp.headers), await resp.json())


async def me(http: aiohttp.ClientSession, x: XEmulator, account: XAccount, **signing: Any) -> Answer:
    url = f"{x.url}/2/users/me"
    return await call(http, "GET", url, oauth1(x, account, "GET", url, **signing))


async def tweet(http: aiohttp.ClientSession, x: XEmulator, account: XAccount, body: Any) -> Answer:
    url = f"{x.url}/2/tweets"
    return await call(http, "POST", url, oauth1(x, account, "POST", url), body)


# -- the signature, against published examples


def test_the_signature_matches_xs_documented_example() -> None:
    """docs.x.com, "Creating a signature": the example request and its signature."""
    params = [
        ("status", "Hello Ladies + Gentlemen, a signed OAuth request!"),
        ("include_entities", "true"),
        ("oauth_consumer_key", "xvz1evFS4wEEPTGEFPHBog"),
        ("oauth_nonce", "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1318622958"),
        ("oauth_token", "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb"),
        ("oauth_version", "1.0"),
    ]
    uri = base_string_uri("HTTPS", "API.twitter.com:443", "/1.1/statuses/update.json")
    base = signature_base_string("post", uri, params)
    assert base.startswith(
        "POST&https%3A%2F%2Fapi.twitter.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities"
    )
    secret, token_secret = (
        "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
        "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
    )
    assert hmac_sha1_signature(base, secret, token_secret) == "hCtSmYh+iHYCEqBWrE7C7hYmtUk="


def test_the_base_string_matches_rfc_5849s_example() -> None:
    """RFC 5849 §3.4.1.1: repeated names, empty values, "+" in a form body, %-escapes."""
    params = [
        *parse_qsl("b5=%3D%253D&a3=a&c%40=&a2=r%20b", keep_blank_values=True),
        *parse_qsl("c2&a3=2+q", keep_blank_values=True),
        ("oauth_consumer_key", "9djdj82h48djs9d2"),
        ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"),
    ]
    assert signature_base_string("POST", base_string_uri("http", "example.com:80", "/request"), params) == (
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D"
        "%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26"
        "oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
    )


# -- who am I, and who is refused


async def test_users_me_answers_the_accounts_id_name_and_username(
    x: XEmulator, http: aiohttp.ClientSession, clock: Clock
) -> None:
    account = x.add_account("herald_team", "Herald Team")
    answer = await me(http, x, account)
    assert answer.status == 200
    assert answer.body == {"data": {"id": account.user_id, "name": "Herald Team", "username": "herald_team"}}
    assert answer.headers["x-rate-limit-limit"] == "75"
    assert answer.headers["x-rate-limit-remaining"] == "74"
    assert answer.headers["x-rate-limit-reset"] == str(int(clock.now) + 900)
    assert parsedate_to_datetime(answer.headers["Date"]).timestamp() == clock.now
    # an OAuth 2.0 user-context token for the same account
    bearer = await call(http, "GET", f"{x.url}/2/users/me", f"Bearer {account.user_token}")
    assert bearer.status == 200 and bearer.body["data"]["id"] == account.user_id


@pytest.mark.parametrize(
    "forgery",
    [
        "wrong consumer secret",
        "wrong token secret",
        "tampered signature",
        "stale timestamp",
        "future timestamp",
        "HMAC-SHA256",
        "unknown token",
        "unknown consumer key",
        "no authorization",
        "unknown bearer token",
        "parameter given twice",
    ],
)
async def test_a_forged_or_wrong_request_is_refused_with_xs_401(
    x: XEmulator, http: aiohttp.ClientSession, clock: Clock, forgery: str
) -> None:
    account = x.add_account("herald_team")
    url = f"{x.url}/2/users/me"
    forgeries: dict[str, dict[str, Any]] = {
        "wrong consumer secret": {"consumer_secret": x.consumer_secret + "x"},
        "wrong token secret": {"token_secret": "not-" + account.access_token_secret},
        "stale timestamp": {"timestamp": clock.now - 301},
        "future timestamp": {"timestamp": clock.now + 301},
        "HMAC-SHA256": {"signature_method": "HMAC-SHA256"},
    }
    signing = forgeries.get(forgery, {})
    header: str | None = oauth1(x, account, "GET", url, **signing)
    assert header is not None
    if forgery == "tampered signature":
        header = header.replace('oauth_signature="', 'oauth_signature="A')
    elif forgery == "unknown token":
        header = header.replace(account.access_token, account.access_token + "0")
    elif forgery == "unknown consumer key":
        header = header.replace(x.consumer_key, "someone-else")
    elif forgery == "no authorization":
        header = None
    elif forgery == "unknown bearer token":
        header = "Bearer " + account.user_token[::-1]
    elif forgery == "parameter given twice":
        header += ', oauth_nonce="another"'
    answer = await call(http, "GET", url, header)
    assert (answer.status, answer.body) == (401, UNAUTHORIZED)
    assert "x-rate-limit-remaining" not in answer.headers


async def test_the_query_is_part_of_the_signature(x: XEmulator, http: aiohttp.ClientSession) -> None:
    account = x.add_account("herald_team")
    signed = f"{x.url}/2/users/me?user.fields=created_at"
    header = oauth1(x, account, "GET", signed)
    assert (await call(http, "GET", signed, header)).status == 200
    other = oauth1(x, account, "GET", signed)
    answer = await call(http, "GET", f"{x.url}/2/users/me?user.fields=description", other)
    assert (answer.status, answer.body) == (401, UNAUTHORIZED)


async def test_a_nonce_is_refused_the_second_time(x: XEmulator, http: aiohttp.ClientSession) -> None:
    account = x.add_account("herald_team")
    assert (await me(http, x, account, nonce="abc123")).status == 200
    again = await me(http, x, account, nonce="abc123")
    assert (again.status, again.body) == (401, UNAUTHORIZED)
    assert (await me(http, x, account, nonce="abc124")).status == 200


async def test_revoked_tokens_app_only_tokens_and_missing_scopes_are_refused(
    x: XEmulator, http: aiohttp.ClientSession
) -> None:
    account = x.add_account("herald_team")
    reader = x.add_account("reader", scopes={"tweet.read", "users.read"})
    app_only = await call(http, "POST", f"{x.url}/2/tweets", f"Bearer {x.app_bearer_token}", {"text": "hi"})
    assert (app_only.status, app_only.body) == (403, UNSUPPORTED_AUTHENTICATION)
    no_write = await call(http, "POST", f"{x.url}/2/tweets", f"Bearer {reader.user_token}", {"text": "hi"})
    assert no_write.status == 403
    assert (await call(http, "GET", f"{x.url}/2/users/me", f"Bearer {reader.user_token}")).status == 200
    x.revoke(account)
    assert (await me(http, x, account)).body == UNAUTHORIZED
    revoked = await call(http, "GET", f"{x.url}/2/users/me", f"Bearer {account.user_token}")
    assert (revoked.status, revoked.body) == (401, UNAUTHORIZED)
    assert x.tweets == []


# -- posting


async def test_a_post_is_created_with_xs_answer(x: XEmulator, http: aiohttp.ClientSession) -> None:
    account = x.add_account("herald_team")
    text = "Launch day! Read more at https://example.com/launch"
    answer = await tweet(http, x, account, {"text": text})
    assert answer.status == 201
    data = answer.body["data"]
    assert set(data) == {"id", "text", "edit_history_tweet_ids"}
    assert data["edit_history_tweet_ids"] == [data["id"]]
    # X keeps links as t.co links, in the answer too
    assert data["text"].startswith("Launch day! Read more at https://t.co/")
    assert "example.com" not in data["text"]
    [created] = x.tweets_by(account)
    assert (created.id, created.sent_text, created.in_reply_to) == (data["id"], text, None)
    assert answer.headers["x-rate-limit-limit"] == "100"
    assert answer.headers["x-rate-limit-remaining"] == "99"
    second = await tweet(http, x, account, {"text": "Another one"})
    assert int(second.body["data"]["id"]) > int(data["id"])


async def test_the_same_text_twice_is_refused_as_duplicate_content(
    x: XEmulator, http: aiohttp.ClientSession
) -> None:
    account, other = x.add_account("herald_team"), x.add_account("other")
    assert (await tweet(http, x, account, {"text": "Same words"})).status == 201
    again = await tweet(http, x, account, {"text": "Same words"})
    assert again.status == 403
    assert again.body == {"detail": DUPLICATE, "type": "about:blank", "title": "Forbidden", "status": 403}
    assert DUPLICATE == "You are not allowed to create a Tweet with duplicate content."
    # another account may say the same
    assert (await tweet(http, x, other, {"text": "Same words"})).status == 201
    assert len(x.tweets_by(account)) == 1


async def test_replies_chain_and_a_reply_to_a_missing_post_is_refused(
    x: XEmulator, http: aiohttp.ClientSession
) -> None:
    account = x.add_account("herald_team")
    first = (await tweet(http, x, account, {"text": "1/2"})).body["data"]["id"]
    reply = await tweet(http, x, account, {"text": "2/2", "reply": {"in_reply_to_tweet_id": first}})
    assert reply.status == 201
    assert x.tweets[-1].in_reply_to == first
    missing = await tweet(http, x, account, {"text": "lost", "reply": {"in_reply_to_tweet_id": "12345"}})
    assert (missing.status, missing.body["detail"]) == (403, REPLY_GONE)
    x.delete_tweet(first)
    gone = await tweet(http, x, account, {"text": "late", "reply": {"in_reply_to_tweet_id": first}})
    assert (gone.status, gone.body["detail"]) == (403, REPLY_GONE)
    assert [t.sent_text for t in x.tweets_by(account)] == ["2/2"]


async def test_length_is_counted_the_way_x_counts_it(x: XEmulator, http: aiohttp.ClientSession) -> None:
    account = x.add_account("herald_team")
    # CJK characters weigh 2: 140 of them fill a post, 141 are too many
    assert (await tweet(http, x, account, {"text": "日" * 140})).status == 201
    long = await tweet(http, x, account, {"text": "本" * 141})
    assert (long.status, long.body["detail"]) == (400, TOO_LONG)
    # a link counts 23 whatever its length
    link = "https://example.com/" + "a" * 300
    assert (await tweet(http, x, account, {"text": "x" * 256 + " " + link})).status == 201
    assert (await tweet(http, x, account, {"text": "y" * 257 + " " + link})).status == 400


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ({"status": "v1.1 style"}, "application/json"),
        ({"text": "hi", "unknown": 1}, "application/json"),
        ({"text": 5}, "application/json"),
        ({"text": "   "}, "application/json"),
        ({"text": "hi", "reply": {"in_reply_to_tweet_id": 12}}, "application/json"),
        ({"text": "hi", "reply": "12"}, "application/json"),
        (b"text=hi", "application/x-www-form-urlencoded"),
        (b"{not json", "application/json"),
        (["hi"], "application/json"),
    ],
)
async def test_a_malformed_post_is_an_invalid_request(
    x: XEmulator, http: aiohttp.ClientSession, body: Any, content_type: str
) -> None:
    account = x.add_account("herald_team")
    url = f"{x.url}/2/tweets"
    # a form body is signed (RFC 5849 §3.4.1.3.1), a JSON one is not
    form = body if content_type == "application/x-www-form-urlencoded" else None
    signer = OAuth1Signer(
        x.consumer_key,
        client_secret=x.consumer_secret,
        resource_owner_key=account.access_token,
        resource_owner_secret=account.access_token_secret,
        timestamp=str(int(x.clock())),
    )
    _, signed, _ = signer.sign(
        url, http_method="POST", body=form.decode() if form else None, headers={"Content-Type": content_type}
    )
    answer = await call(http, "POST", url, signed["Authorization"], body, content_type=content_type)
    assert answer.status == 400, answer.body
    assert answer.body["title"] == "Invalid Request"
    assert answer.body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert x.tweets == []


# -- rate limits


async def test_past_the_window_x_answers_429_until_it_resets(
    x: XEmulator, http: aiohttp.ClientSession, clock: Clock
) -> None:
    x.rate_limits[TWEETS] = RateLimit(2, 900)
    account, other = x.add_account("herald_team"), x.add_account("other")
    reset = str(int(clock.now) + 900)
    assert (await tweet(http, x, account, {"text": "one"})).headers["x-rate-limit-remaining"] == "1"
    clock.now += 10
    assert (await tweet(http, x, account, {"text": "two"})).headers["x-rate-limit-remaining"] == "0"
    limited = await tweet(http, x, account, {"text": "three"})
    assert limited.status == 429
    assert limited.body == {
        "title": "Too Many Requests",
        "detail": "Too Many Requests",
        "type": "about:blank",
        "status": 429,
    }
    assert (limited.headers["x-rate-limit-remaining"], limited.headers["x-rate-limit-reset"]) == ("0", reset)
    # per account
    assert (await tweet(http, x, other, {"text": "three"})).status == 201
    clock.now = int(reset)
    fresh = await tweet(http, x, account, {"text": "three"})
    assert (fresh.status, fresh.headers["x-rate-limit-remaining"]) == (201, "1")
    assert [t.sent_text for t in x.tweets_by(account)] == ["one", "two", "three"]


async def test_the_24_hour_user_limit_has_its_own_headers(
    x: XEmulator, http: aiohttp.ClientSession, clock: Clock
) -> None:
    x.user_day_limit = 1
    account = x.add_account("herald_team")
    first = await tweet(http, x, account, {"text": "one"})
    assert first.headers["x-user-limit-24hour-limit"] == "1"
    assert first.headers["x-user-limit-24hour-remaining"] == "0"
    limited = await tweet(http, x, account, {"text": "two"})
    assert limited.status == 429
    assert limited.headers["x-rate-limit-remaining"] == "98"
    assert limited.headers["x-user-limit-24hour-reset"] == str(math.ceil(clock.now + 86400))


# -- faults


async def test_faults_before_and_after_the_post_is_created(x: XEmulator, http: aiohttp.ClientSession) -> None:
    account = x.add_account("herald_team")
    x.fail_next(503)
    refused = await tweet(http, x, account, {"text": "overloaded"})
    assert (refused.status, refused.body["title"]) == (503, "Service Unavailable")
    assert x.tweets == []
    x.fail_next(500, after_create=True)
    failed = await tweet(http, x, account, {"text": "half done"})
    assert failed.status == 500
    assert [t.sent_text for t in x.tweets] == ["half done"]
    x.drop_next()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await tweet(http, x, account, {"text": "dropped"})
    assert [t.sent_text for t in x.tweets] == ["half done", "dropped"]
    assert [r.status for r in x.requests] == [503, 500, 0]


async def test_a_held_answer_comes_when_the_test_releases_it(
    x: XEmulator, http: aiohttp.ClientSession
) -> None:
    account = x.add_account("herald_team")
    hold = x.hold_next()
    url = f"{x.url}/2/tweets"

    async def post() -> int:
        headers = {"Authorization": oauth1(x, account, "POST", url)}
        async with http.post(url, json={"text": "slow"}, headers=headers) as response:
            return response.status

    pending = asyncio.create_task(post())
    async with asyncio.timeout(30):
        await hold.created.wait()
    assert [t.sent_text for t in x.tweets] == ["slow"]
    assert not pending.done()
    hold.release()
    assert await pending == 201

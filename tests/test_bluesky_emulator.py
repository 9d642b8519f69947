"""The Bluesky PDS emulator is as strict as a PDS, and stricter where Bluesky would show a post wrong.

Raw XRPC over real HTTP, so that the wire answers themselves (status, error body,
headers) are what is checked.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from tests.emulators.bluesky import POST, BlueskyEmulator, tid

HANDLE = "herald.bsky.social"
APP_PASSWORD = "abcd-efgh-ijkl-mnop"
FAMILY = "👨\u200d👩\u200d👧\u200d👦"


@pytest.fixture
async def emu() -> AsyncIterator[BlueskyEmulator]:
    async with BlueskyEmulator() as emulator:
        emulator.add_account(HANDLE, app_password=APP_PASSWORD)
        yield emulator


async def xrpc(
    emu: BlueskyEmulator,
    method: str,
    nsid: str,
    *,
    token: str | None = None,
    body: Any = None,
    params: dict[str, str] | None = None,
    seconds: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{emu.url}/xrpc/{nsid}",
            json=body,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response,
    ):
        return response.status, json.loads(await response.read()), dict(response.headers)


async def login(emu: BlueskyEmulator) -> dict[str, Any]:
    status, body, _ = await xrpc(
        emu,
        "POST",
        "com.atproto.server.createSession",
        body={"identifier": HANDLE, "password": APP_PASSWORD},
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_rkeys = itertools.count(1)


def next_rkey() -> str:
    """A valid record key not used yet (a TID from 2023)."""
    return tid(1_700_000_000_000_000 + next(_rkeys), 7)


async def create(
    emu: BlueskyEmulator, session: dict[str, Any], record: dict[str, Any], rkey: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    body: dict[str, Any] = {
        "repo": session["did"],
        "collection": POST,
        "record": {"createdAt": now(), **record},
    }
    if rkey is not None:
        body["rkey"] = rkey
    return await xrpc(emu, "POST", "com.atproto.repo.createRecord", token=session["accessJwt"], body=body)


def facet(start: int, end: int, feature: dict[str, Any]) -> dict[str, Any]:
    return {"index": {"byteStart": start, "byteEnd": end}, "features": [feature]}


def link(uri: str) -> dict[str, Any]:
    return {"$type": "app.bsky.richtext.facet#link", "uri": uri}


# -- sessions -------------------------------------------------------------------------------


async def test_a_session_has_the_pds_shape(emu: BlueskyEmulator) -> None:
    body = await login(emu)
    account = emu.account(HANDLE)
    assert account is not None
    assert body["did"] == account.did and body["handle"] == HANDLE and body["active"] is True
    assert body["didDoc"]["service"][0]["serviceEndpoint"] == emu.url
    header, claims = (json.loads(_unb64(part)) for part in body["accessJwt"].split(".")[:2])
    assert (
        header["typ"] == "at+jwt"
        and claims["scope"] == "com.atproto.appPass"
        and claims["sub"] == account.did
    )


async def test_a_wrong_password_is_401_in_the_pds_words(emu: BlueskyEmulator) -> None:
    status, body, _ = await xrpc(
        emu, "POST", "com.atproto.server.createSession", body={"identifier": HANDLE, "password": "nope"}
    )
    assert (status, body) == (
        401,
        {"error": "AuthenticationRequired", "message": "Invalid identifier or password"},
    )
    status, body, _ = await xrpc(emu, "POST", "com.atproto.server.createSession", body={"identifier": HANDLE})
    assert (status, body["error"]) == (400, "InvalidRequest")


async def test_an_expired_access_token_is_400_expired_token_and_refresh_rotates(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    emu.expire_access_tokens()
    status, body, _ = await xrpc(emu, "GET", "com.atproto.server.getSession", token=session["accessJwt"])
    assert (status, body) == (400, {"error": "ExpiredToken", "message": "Token has expired"})

    # the access token can't refresh, the refresh token can't call methods
    status, body, _ = await xrpc(emu, "POST", "com.atproto.server.refreshSession", token=session["accessJwt"])
    assert (status, body["error"]) == (400, "InvalidToken")
    status, fresh, _ = await xrpc(
        emu, "POST", "com.atproto.server.refreshSession", token=session["refreshJwt"]
    )
    assert status == 200 and fresh["did"] == session["did"]
    status, body, _ = await xrpc(emu, "GET", "com.atproto.server.getSession", token=fresh["refreshJwt"])
    assert (status, body["error"]) == (400, "InvalidToken")
    status, body, _ = await xrpc(emu, "GET", "com.atproto.server.getSession", token=fresh["accessJwt"])
    assert status == 200 and body["handle"] == HANDLE

    # the old refresh token was rotated away
    status, body, _ = await xrpc(
        emu, "POST", "com.atproto.server.refreshSession", token=session["refreshJwt"]
    )
    assert (status, body) == (400, {"error": "ExpiredToken", "message": "Token has been revoked"})


async def test_calls_without_a_token_are_401_auth_missing(emu: BlueskyEmulator) -> None:
    status, body, _ = await xrpc(emu, "POST", "com.atproto.repo.createRecord", body={})
    assert (status, body) == (401, {"error": "AuthMissing", "message": "Authentication Required"})
    status, body, _ = await xrpc(emu, "GET", "com.atproto.server.getSession", token="not.a.jwt")
    assert (status, body["error"]) == (400, "InvalidToken")


# -- handles ----------------------------------------------------------------------------------


async def test_resolve_handle(emu: BlueskyEmulator) -> None:
    did = emu.add_identity("alice.example.com")
    status, body, _ = await xrpc(
        emu, "GET", "com.atproto.identity.resolveHandle", params={"handle": "Alice.Example.com"}
    )
    assert (status, body) == (200, {"did": did})
    status, body, _ = await xrpc(
        emu, "GET", "com.atproto.identity.resolveHandle", params={"handle": "ghost.bsky.social"}
    )
    assert (status, body) == (400, {"error": "HandleNotFound", "message": "Unable to resolve handle"})
    status, body, _ = await xrpc(
        emu, "GET", "com.atproto.identity.resolveHandle", params={"handle": "ghost.org"}
    )
    assert (status, body) == (400, {"error": "InvalidRequest", "message": "Unable to resolve handle"})
    status, body, _ = await xrpc(
        emu, "GET", "com.atproto.identity.resolveHandle", params={"handle": "no_way"}
    )
    assert (status, body["error"]) == (400, "InvalidHandle")


# -- records: the lexicon ---------------------------------------------------------------------


async def test_a_post_is_created_and_read_back(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    status, body, headers = await create(emu, session, {"text": "hello"})
    assert status == 200 and body["validationStatus"] == "valid"
    assert body["uri"].startswith(f"at://{session['did']}/{POST}/") and body["cid"].startswith("bafyrei")
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"} <= set(headers)
    rkey = body["uri"].rsplit("/", 1)[1]
    params = {"repo": HANDLE, "collection": POST, "rkey": rkey}
    status, got, _ = await xrpc(emu, "GET", "com.atproto.repo.getRecord", params=params)
    assert status == 200 and (got["uri"], got["cid"]) == (body["uri"], body["cid"])
    assert got["value"]["text"] == "hello" and got["value"]["$type"] == POST
    missing = {**params, "rkey": next_rkey()}
    status, got, _ = await xrpc(emu, "GET", "com.atproto.repo.getRecord", params=missing)
    assert (status, got["error"]) == (400, "RecordNotFound")
    assert got["message"] == f"Could not locate record: at://{session['did']}/{POST}/{missing['rkey']}"


async def test_text_is_limited_to_300_graphemes_and_3000_bytes(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    status, _, _ = await create(emu, session, {"text": "e\u0301" * 300})  # 600 code points
    assert status == 200
    status, body, _ = await create(emu, session, {"text": "e\u0301" * 301})
    assert (status, body) == (
        400,
        {
            "error": "InvalidRequest",
            "message": f"Invalid {POST} record: grapheme too big (maximum 300, got 301) at $.record.text",
        },
    )
    status, body, _ = await create(emu, session, {"text": FAMILY * 121})  # 121 graphemes, 3025 bytes
    assert status == 400
    assert (
        body["message"] == f"Invalid {POST} record: string too big (maximum 3000, got 3025) at $.record.text"
    )


async def test_created_at_is_required(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    body = {"repo": session["did"], "collection": POST, "record": {"text": "when?"}}
    status, answer, _ = await xrpc(
        emu, "POST", "com.atproto.repo.createRecord", token=session["accessJwt"], body=body
    )
    assert (status, answer["message"]) == (
        400,
        f'Invalid {POST} record: Missing required key "createdAt" at $.record',
    )
    status, answer, _ = await create(emu, session, {"text": "when?", "createdAt": "yesterday"})
    assert status == 400 and "Invalid datetime" in answer["message"]


async def test_the_record_key_must_be_a_tid_and_never_reused(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    status, body, _ = await create(emu, session, {"text": "x"}, rkey="hello")
    assert (status, body["message"]) == (
        400,
        f'Invalid record key for {POST}: Invalid TID string (got "hello") at $',
    )
    status, body, _ = await create(emu, session, {"text": "x"}, rkey="a/b")
    assert (status, body["message"]) == (400, "Invalid record key: a/b")
    rkey = next_rkey()
    status, first, _ = await create(emu, session, {"text": "once"}, rkey=rkey)
    assert status == 200 and first["uri"].endswith(f"/{rkey}")
    status, body, _ = await create(emu, session, {"text": "twice"}, rkey=rkey)
    assert (status, body) == (500, {"error": "InternalServerError", "message": "Internal Server Error"})
    assert [r.value["text"] for r in emu.records()] == ["once"]


# -- records: stricter than a PDS -------------------------------------------------------------


async def test_facets_must_cover_what_they_claim_in_utf8_bytes(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    text = "café https://example.com"  # "é" is two bytes: the link starts at byte 6, not 5
    alice = emu.add_identity("alice.bsky.social")
    cases: list[tuple[dict[str, Any], str]] = [
        (facet(5, 24, link("https://example.com")), "does not show"),  # code points, not bytes
        (facet(4, 25, link("https://example.com")), "split a character"),
        (facet(6, 99, link("https://example.com")), "outside the text"),
        (facet(6, 6, link("https://example.com")), "outside the text"),
        (facet(6, 25, link("not a uri")), "Invalid uri"),
        (facet(6, 25, {"$type": "app.bsky.richtext.facet#mention", "did": alice}), "is not @alice"),
        (
            facet(6, 25, {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:nobody"}),
            "does not exist",
        ),
        (facet(6, 25, {"$type": "app.bsky.richtext.facet#tag", "tag": "example"}), "is not #example"),
    ]
    for bad, problem in cases:
        status, body, _ = await create(emu, session, {"text": text, "facets": [bad]})
        assert status == 400 and body["error"] == "InvalidRequest", (bad, body)
        assert problem in body["message"], (bad, body)
    status, body, _ = await create(
        emu, session, {"text": text, "facets": [facet(6, 25, link("https://example.com"))]}
    )
    assert status == 200, body
    assert len(emu.records()) == 1


async def test_a_mention_and_a_tag_are_checked_against_their_text(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    alice = emu.add_identity("alice.bsky.social")
    text = "hi @alice.bsky.social #日本"
    mention = facet(3, 21, {"$type": "app.bsky.richtext.facet#mention", "did": alice})
    tag = facet(22, 29, {"$type": "app.bsky.richtext.facet#tag", "tag": "日本"})
    status, body, _ = await create(emu, session, {"text": text, "facets": [mention, tag]})
    assert status == 200, body
    status, body, _ = await create(emu, session, {"text": text, "facets": [tag, mention]})
    assert status == 400 and "out of order or overlapping" in body["message"]


async def test_replies_must_point_at_existing_records_of_one_thread(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    _, root, _ = await create(emu, session, {"text": "1/3"})
    ref = {"uri": root["uri"], "cid": root["cid"]}
    status, second, _ = await create(emu, session, {"text": "2/3", "reply": {"root": ref, "parent": ref}})
    assert status == 200, second
    ref2 = {"uri": second["uri"], "cid": second["cid"]}

    wrong_cid = {"uri": root["uri"], "cid": second["cid"]}
    missing = {"uri": f"at://{session['did']}/{POST}/{next_rkey()}", "cid": root["cid"]}
    for reply, problem in [
        ({"root": ref, "parent": wrong_cid}, "is not"),
        ({"root": ref, "parent": missing}, "is not an existing record"),
        ({"root": ref2, "parent": ref2}, "not the parent's thread root"),
        ({"root": ref}, 'Missing required key "parent"'),
        ({"root": {"uri": "https://x", "cid": root["cid"]}, "parent": ref}, "Invalid AT URI"),
    ]:
        status, body, _ = await create(emu, session, {"text": "3/3", "reply": reply})
        assert status == 400 and problem in body["message"], (reply, body)
    status, body, _ = await create(emu, session, {"text": "3/3", "reply": {"root": ref, "parent": ref2}})
    assert status == 200, body


# -- limits, faults, holds --------------------------------------------------------------------


async def test_a_rate_limit_answers_429_with_its_reset(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    emu.rate_limit_next("com.atproto.repo.createRecord", reset_in=30)
    before = time.time()
    status, body, headers = await create(emu, session, {"text": "slow down"})
    assert (status, body) == (429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"})
    assert headers["RateLimit-Remaining"] == "0" and headers["Retry-After"] == "30"
    assert before + 28 <= int(headers["RateLimit-Reset"]) <= time.time() + 30
    assert emu.records() == []
    status, _, _ = await create(emu, session, {"text": "slow down"})
    assert status == 200


async def test_a_fault_before_or_after_the_write(emu: BlueskyEmulator) -> None:
    session = await login(emu)
    emu.fail_next("com.atproto.repo.createRecord", status=502)
    status, body, _ = await create(emu, session, {"text": "lost"})
    assert (status, body) == (502, {"error": "UpstreamFailure", "message": "Upstream Failure"})
    assert emu.records() == []
    emu.fail_next("com.atproto.repo.createRecord", after_write=True)
    status, body, _ = await create(emu, session, {"text": "kept"})
    assert (status, body["error"]) == (500, "InternalServerError")
    assert [r.value["text"] for r in emu.records()] == ["kept"]


async def test_a_held_answer_after_the_write_times_the_client_out_and_the_record_stays(
    emu: BlueskyEmulator,
) -> None:
    session = await login(emu)
    held = emu.hold("com.atproto.repo.createRecord", after_write=True)
    with pytest.raises(TimeoutError):
        await create_with_timeout(emu, session, "slow", seconds=0.2)
    await emu.wait_until(lambda: emu.calls_to("com.atproto.repo.createRecord")[-1].status == 499)
    assert len(held.waiting) == 1 and [r.value["text"] for r in emu.records()] == ["slow"]
    held.release()
    status, _, _ = await create(emu, session, {"text": "fast again"})
    assert status == 200


async def create_with_timeout(
    emu: BlueskyEmulator, session: dict[str, Any], text: str, seconds: float
) -> None:
    body = {"repo": session["did"], "collection": POST, "record": {"text": text, "createdAt": now()}}
    await xrpc(
        emu, "POST", "com.atproto.repo.createRecord", token=session["accessJwt"], body=body, seconds=seconds
    )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

"""Approved posts published to networks through the scheduler (issue 14): each network
once, however many approvals come at once; the approver gets each network's link;
a network that failed for now is tried again alone; a refused account is flagged
and the chat told once; a post left publishing by a dead leader goes on."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping

import pytest
from redis.asyncio import Redis

from core.posts.drafting import Drafter
from core.posts.schedules.runner import Runner
from core.posts.schedules.social import SocialPublishing
from core.posts.schedules.store import Post, PostState, ScheduleStore
from core.social.accounts import Account, AccountStore
from core.social.delivery import DeliveryState, DeliveryStore
from core.social.network import Identity, NetworkClient, PublishFailed, RateLimited, Unauthorized
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.support import eventually
from tests.test_scheduler import RecordingPublisher, schedule
from tests.test_social_delivery import Network

INSTALLED = {"x": {"user_token": "t"}, "mastodon": {"url": "https://social.test", "token": "t"}}


def runner_for(
    redis: Redis, prefix: str, networks: Mapping[str, Network], publisher: RecordingPublisher, owner: str
) -> Runner:
    keys = Keys(prefix)
    accounts = AccountStore(redis, keys, None, installed=INSTALLED)

    def client(account: Account) -> NetworkClient:
        return networks[account.network]

    social = SocialPublishing(accounts, DeliveryStore(redis, keys), client, owner=owner)
    drafter: Drafter = None  # type: ignore[assignment]  # these posts are approved, not drafted
    return Runner(
        ScheduleStore(redis, keys),
        drafter,
        {"test": publisher},
        owner=owner,
        retry_delays=(0.05, 0.05, 0.05),
        social=social,
    )


async def pending(runner: Runner, text: str = "Herald 2.0 is out") -> Post:
    """A post of a `to=x,mastodon` schedule, waiting for approval (the install's accounts
    checked)."""
    assert runner.social is not None
    accounts = runner.social.accounts
    await accounts.identify_installed("x", Identity("x", "1", "@team", "https://x.com/team"))
    mastodon = Identity("mastodon", "2", "@team@social.test", "https://social.test/@team")
    await accounts.identify_installed("mastodon", mastodon)
    definition = schedule(destinations=("x", "mastodon"))
    await runner.store.save(definition)
    post = Post("p1", definition.id, "2026-12-01T09:00:00+00:00", "test", "channel", text)
    await runner.store.save_post(post)
    return await runner.store.move(post, PostState.PENDING_APPROVAL)


@pytest.fixture
def networks() -> dict[str, Network]:
    return {"x": Network(network="x", limit=280), "mastodon": Network(network="mastodon")}


async def test_approving_publishes_to_each_network_once_and_links_them(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    publisher = RecordingPublisher()
    runner = runner_for(redis, prefix, networks, publisher, "a")
    await pending(runner)
    done = await runner.approve("p1")
    assert done.state is PostState.PUBLISHED
    assert [text for text, _, _ in networks["x"].published] == ["Herald 2.0 is out"]
    assert [text for text, _, _ in networks["mastodon"].published] == ["Herald 2.0 is out"]
    assert publisher.published == []  # nothing went into the chat itself
    [report] = publisher.notices
    assert "- X (@team): published https://example.test/1" in report
    assert "- Mastodon (@team@social.test): published https://example.test/1" in report


async def test_two_approvals_at_once_publish_once_per_network(
    redis: Redis, redis_url: str, prefix: str, networks: dict[str, Network]
) -> None:
    other = connect_redis(redis_url)
    try:
        a = runner_for(redis, prefix, networks, RecordingPublisher(), "a")
        b = runner_for(other, prefix, networks, RecordingPublisher(), "b")
        await pending(a)
        results = await asyncio.gather(a.approve("p1"), b.approve("p1"), return_exceptions=True)
    finally:
        await other.aclose()
    assert sum(isinstance(r, Post) and r.state is PostState.PUBLISHED for r in results) == 1
    assert len(networks["x"].published) == 1 and len(networks["mastodon"].published) == 1


async def test_a_network_that_failed_is_tried_again_alone(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    networks["mastodon"].outcomes = [PublishFailed("Mastodon is down for now.")]
    publisher = RecordingPublisher()
    runner = runner_for(redis, prefix, networks, publisher, "a")
    await pending(runner)
    first = await runner.approve("p1")
    assert first.state is PostState.FAILED
    waiting = "- Mastodon (@team@social.test): not published yet: Mastodon is down for now."
    assert waiting in publisher.notices[0]
    assert publisher.notices[0].endswith("\nI'll try again in 1 second.")

    async def published() -> bool:
        post = await runner.store.post("p1")
        return post is not None and post.state is PostState.PUBLISHED

    await eventually(published, "the retry published it")
    assert len(networks["x"].published) == 1  # X was not sent again
    assert len(networks["mastodon"].published) == 1
    await runner.close()


async def test_a_refused_account_is_flagged_and_the_chat_told_once(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    refused = "X refused Herald's access to @team (401)."
    networks["x"].outcomes = [Unauthorized(refused)]
    publisher = RecordingPublisher()
    runner = runner_for(redis, prefix, networks, publisher, "a")
    await pending(runner)
    done = await runner.approve("p1")
    assert done.state is PostState.PUBLISHED  # Mastodon took it; X is settled as refused
    told = [n for n in publisher.notices if "needs attention" in n]
    assert told == [
        f"X @team needs attention: {refused} A chat manager can connect it again "
        "(/account add x, in a DM with me)."
    ]
    assert runner.social is not None
    assert await runner.social.missing("test", "channel", ("x", "mastodon")) == ["x"]


async def test_a_post_every_network_refused_is_cancelled(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    networks["x"].outcomes = [Unauthorized("no")]
    networks["mastodon"].outcomes = [Unauthorized("no")]
    runner = runner_for(redis, prefix, networks, RecordingPublisher(), "a")
    await pending(runner)
    assert (await runner.approve("p1")).state is PostState.CANCELLED


async def test_a_post_left_publishing_by_a_dead_leader_goes_on(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    dead = runner_for(redis, prefix, networks, RecordingPublisher(), "dead")
    post = await pending(dead)
    post = await dead.store.move(post, PostState.SCHEDULED)
    await dead.store.move(post, PostState.PUBLISHING, attempts=1)
    store = DeliveryStore(redis, Keys(prefix))
    planned = await store.plan("p1", {"x": "x", "mastodon": "mastodon"})
    # the dead leader held X's delivery, its hold now over, before it sent anything
    await store.change("p1", planned["x"], state=DeliveryState.PUBLISHING, owner="dead", until=1.0)
    publisher = RecordingPublisher()
    leader = runner_for(redis, prefix, networks, publisher, "next")
    await leader.resume(since=dt.datetime.now(dt.UTC))
    after = await leader.store.post("p1")
    assert after is not None and after.state is PostState.PUBLISHED
    assert len(networks["x"].published) == 1 and len(networks["mastodon"].published) == 1


async def test_a_rate_limit_past_the_grace_is_tried_again_after_the_networks_reset(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    networks["mastodon"].outcomes = [RateLimited("Mastodon asks me to wait.", retry_after=600.0)]
    publisher = RecordingPublisher()
    runner = runner_for(redis, prefix, networks, publisher, "a")
    await pending(runner)
    assert (await runner.approve("p1")).state is PostState.FAILED
    assert publisher.notices[0].endswith("\nI'll try again in 10 minutes.")  # not in 0.05 s
    await runner.close()


async def test_when_the_tries_are_used_up_the_approver_is_told(
    redis: Redis, prefix: str, networks: dict[str, Network]
) -> None:
    networks["mastodon"].outcomes = [PublishFailed("Mastodon is down.") for _ in range(4)]
    publisher = RecordingPublisher()
    runner = runner_for(redis, prefix, networks, publisher, "a")
    await pending(runner)
    await runner.approve("p1")

    async def given_up() -> bool:
        return any("I won't try again on my own" in notice for notice in publisher.notices)

    await eventually(given_up, "the last try's report")
    post = await runner.store.post("p1")
    assert post is not None and post.state is PostState.FAILED and post.attempts == 4
    assert len(networks["x"].published) == 1 and networks["mastodon"].published == []

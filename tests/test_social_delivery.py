"""A post's delivery to one network (issue 14), on a real Redis: once per network
whoever approves at the same time, a thread that failed at part 3 resumes at 3, a
sender that died mid-send leaves X unconfirmed and Mastodon/Bluesky resent with
the same key, rate limits waited out within the grace, refusals settled.

The network here is a scripted client (its wire protocol is each network's own
test's business: tests/test_x_client.py and the others); what is tested is the
lifecycle around it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from core.social.delivery import Deliverer, Delivery, DeliveryState, DeliveryStore
from core.social.network import (
    Identity,
    Limits,
    NetworkError,
    PublishedPart,
    PublishFailed,
    PublishUnknown,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
)
from core.storage.keys import Keys

POST = "p1"


@dataclass
class Network:
    """A network that records what it published, under which key and in reply to what;
    `outcomes` scripts the next calls (an error to raise, or None to publish)."""

    network: str = "mastodon"
    limit: int = 500
    outcomes: list[NetworkError | None] = field(default_factory=list)
    published: list[tuple[str, str, str | None]] = field(default_factory=list)  # text, key, parent
    by_key: dict[str, PublishedPart] = field(default_factory=dict)
    gate: asyncio.Event | None = None  # when set, a publish waits for it
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def whoami(self) -> Identity:
        return Identity(self.network, "1", "@team", "https://example.test/@team")

    async def limits(self) -> Limits:
        return Limits(self.limit, len, "characters")

    async def publish(self, text: str, *, key: str, reply_to: ReplyTo | None = None) -> PublishedPart:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        if key in self.by_key and self.network != "x":  # the network's own idempotency
            return self.by_key[key]
        part = PublishedPart(str(len(self.published) + 1), f"https://example.test/{len(self.published) + 1}")
        self.published.append((text, key, reply_to.parent.post_id if reply_to else None))
        self.by_key[key] = part
        return part

    async def close(self) -> None:
        return None


@pytest.fixture
def store(redis: Redis, prefix: str) -> DeliveryStore:
    return DeliveryStore(redis, Keys(prefix))


def deliverer(store: DeliveryStore, owner: str = "r1", **options: object) -> Deliverer:
    return Deliverer(store, owner=owner, **options)  # type: ignore[arg-type]


SENTENCES = " ".join(f"Sentence number {n} says something worth reading." for n in range(1, 11))


async def test_a_post_is_published_once_with_its_link(store: DeliveryStore) -> None:
    network = Network()
    await store.plan(POST, {"mastodon": "acct1"})
    done = await deliverer(store).deliver(POST, "Hello, world", network)
    assert done.state is DeliveryState.PUBLISHED and done.account == "acct1"
    assert done.links == ["https://example.test/1"]
    again = await deliverer(store, "r2").deliver(POST, "Hello, world", network)
    assert again == done and len(network.published) == 1
    # the routes fixed at the first approval stay
    assert (await store.plan(POST, {"mastodon": "other"}))["mastodon"].account == "acct1"


async def test_a_thread_is_a_reply_chain_and_resumes_where_it_failed(store: DeliveryStore) -> None:
    network = Network(limit=120, outcomes=[None, None, PublishFailed("Mastodon is down")])
    await store.plan(POST, {"mastodon": "acct1"})
    failed = await deliverer(store).deliver(POST, SENTENCES, network)
    assert failed.state is DeliveryState.FAILED and failed.reason == "Mastodon is down"
    assert len(failed.texts) == 5 and len(failed.parts) == 2 and failed.sending == 0
    done = await deliverer(store, "r2").deliver(POST, SENTENCES, network)
    assert done.state is DeliveryState.PUBLISHED and len(done.parts) == 5
    texts = [text for text, _, _ in network.published]
    assert texts == list(done.texts)  # parts 1–2 were not sent again
    assert all(text.endswith(f" {n}/5") for n, text in enumerate(texts, 1))
    assert [parent for _, _, parent in network.published] == [None, "1", "2", "3", "4"]
    assert [key for _, key, _ in network.published] == [f"{POST}-{n}" for n in range(1, 6)]


async def test_two_approvals_at_once_publish_once(store: DeliveryStore, redis: Redis, prefix: str) -> None:
    network = Network(gate=asyncio.Event())
    await store.plan(POST, {"mastodon": "acct1"})
    other = DeliveryStore(redis, Keys(prefix))  # as another replica would have
    first = asyncio.create_task(deliverer(store, "r1").deliver(POST, "Once", network))
    await network.entered.wait()  # r1 holds it and is sending
    second = await deliverer(other, "r2").deliver(POST, "Once", network)
    assert second.state is DeliveryState.PUBLISHING and second.owner == "r1"
    network.gate.set()
    assert (await first).state is DeliveryState.PUBLISHED
    assert len(network.published) == 1


async def died_mid_send(store: DeliveryStore, network: str, now: float) -> Delivery:
    """A delivery whose owner marked part 2 as being sent, then died (its hold ran out)."""
    [planned] = (await store.plan(POST, {network: "acct1"})).values()
    sent = PublishedPart("1", "https://example.test/1")
    return await store.change(
        POST,
        planned,
        state=DeliveryState.PUBLISHING,
        texts=("one 1/2", "two 2/2"),
        parts=(sent,),
        sending=2,
        sending_since=now - 60,
        owner="dead",
        until=now - 1,
    )


async def test_x_is_never_resent_after_a_sender_died_mid_send(store: DeliveryStore) -> None:
    network = Network(network="x")
    await died_mid_send(store, "x", now=1000.0)
    done = await deliverer(store, clock=lambda: 1000.0).deliver(POST, "one two", network)
    assert done.state is DeliveryState.UNCONFIRMED and "may have published" in done.reason
    assert network.published == []
    # settled: nothing automatic sends it again
    assert (await deliverer(store, "r3").deliver(POST, "one two", network)).state is DeliveryState.UNCONFIRMED


async def test_mastodon_is_resent_with_the_same_key_after_a_sender_died(store: DeliveryStore) -> None:
    network = Network(network="mastodon")
    network.by_key[f"{POST}-2"] = PublishedPart("2", "https://example.test/2")  # it had arrived
    await died_mid_send(store, "mastodon", now=1000.0)
    done = await deliverer(store, clock=lambda: 1000.0).deliver(POST, "one two", network)
    assert done.state is DeliveryState.PUBLISHED and done.links[1] == "https://example.test/2"
    assert network.published == []  # the network answered with the status it already had


async def test_mastodon_is_not_resent_once_it_forgot_the_key(store: DeliveryStore) -> None:
    network = Network(network="mastodon")
    await died_mid_send(store, "mastodon", now=1000.0)
    # Mastodon keeps an Idempotency-Key for an hour: past that, a resend could post twice
    done = await deliverer(store, clock=lambda: 1000.0 + 3600).deliver(POST, "one two", network)
    assert done.state is DeliveryState.UNCONFIRMED and network.published == []


async def test_a_live_holder_is_left_alone(store: DeliveryStore) -> None:
    network = Network()
    planned = (await store.plan(POST, {"mastodon": "acct1"}))["mastodon"]
    await store.change(POST, planned, state=DeliveryState.PUBLISHING, owner="alive", until=2000.0)
    found = await deliverer(store, clock=lambda: 1000.0).deliver(POST, "text", network)
    assert found.owner == "alive" and network.published == []


async def test_rate_limits_are_waited_out_within_the_grace_only(store: DeliveryStore) -> None:
    now = [1000.0]
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    network = Network(outcomes=[RateLimited("slow down", retry_after=30.0)])
    await store.plan(POST, {"mastodon": "acct1"})
    done = await deliverer(store, clock=clock, sleep=sleep).deliver(POST, "text", network, wait_until=1100.0)
    assert done.state is DeliveryState.PUBLISHED and waited == [30.0]

    network = Network(outcomes=[RateLimited("Mastodon asks me to wait", retry_after=600.0)])
    await store.plan("p2", {"mastodon": "acct1"})
    late = await deliverer(store, clock=clock, sleep=sleep).deliver("p2", "text", network, wait_until=1100.0)
    assert late.state is DeliveryState.FAILED and late.reason == "Mastodon asks me to wait"
    assert waited == [30.0] and network.published == []


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (Unauthorized("Bluesky refused the app password."), DeliveryState.ATTENTION),
        (Rejected("Mastodon refused this post: it is too long."), DeliveryState.REJECTED),
        (PublishUnknown("X did not answer in time."), DeliveryState.UNCONFIRMED),
    ],
)
async def test_refusals_settle_with_the_networks_words(
    store: DeliveryStore, error: NetworkError, state: DeliveryState
) -> None:
    network = Network(network="x" if isinstance(error, PublishUnknown) else "mastodon", outcomes=[error])
    await store.plan(POST, {network.network: "acct1"})
    done = await deliverer(store).deliver(POST, "text", network)
    assert done.state is state and done.reason == error.user_message
    assert (await deliverer(store, "r2").deliver(POST, "text", network)) == done  # not retried


async def test_an_unknown_outcome_on_mastodon_is_tried_again_with_the_same_key(store: DeliveryStore) -> None:
    network = Network(outcomes=[PublishUnknown("Mastodon did not answer in time.")])
    await store.plan(POST, {"mastodon": "acct1"})
    first = await deliverer(store).deliver(POST, "text", network)
    assert first.state is DeliveryState.FAILED and first.sending == 1
    done = await deliverer(store).deliver(POST, "text", network)
    assert done.state is DeliveryState.PUBLISHED and [k for _, k, _ in network.published] == [f"{POST}-1"]

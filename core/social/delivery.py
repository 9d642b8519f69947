"""One approved post's delivery to one network: once per network, resumable.

A delivery's state is a JSON value per network in the hash `deliveries:<post>`,
changed only by compare-and-set on its version, so two approvals at once, or a
replica that outlived its lease, can't both send. The replica that takes a
delivery holds it for `lease` seconds, renewed at every step; one that dies
leaves it to whoever comes after the lease, which goes on from the last part
the network confirmed (a thread that failed at part 3 of 5 resumes at 3 and
never sends 1–2 again).

A part is marked as being sent before it is sent. Finding such a mark means
its sender died or timed out mid-send: on Mastodon and Bluesky the part is sent
again with the same key, which the network makes harmless (`Idempotency-Key`,
the record key); X has no such thing, so the delivery becomes UNCONFIRMED and
is never retried automatically: a person checks the account.

    PENDING → PUBLISHING → PUBLISHED
    FAILED       nothing of the current part was sent; tried again later
    UNCONFIRMED  X may have published a part: a person checks
    REJECTED     the network refused the post as it is (explained to the chat)
    ATTENTION    the account was refused (401/403): a person reconnects it
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from core.posts.targets import ThreadTooLong, split_to_fit
from core.social.network import (
    NetworkClient,
    NetworkError,
    PublishedPart,
    PublishUnknown,
    RateLimited,
    Rejected,
    ReplyTo,
    Unauthorized,
)
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

#: networks where sending a part again with its key can't publish it twice
IDEMPOTENT = frozenset({"bluesky", "mastodon"})
#: how long after a part was first sent a network still knows its key (Mastodon keeps an
#: Idempotency-Key for an hour; a Bluesky record key is for ever), with a margin
KEY_KEPT = {"mastodon": 3300.0}
#: how long a replica holds a delivery without a step (longer than any one call takes)
LEASE_SECONDS = 120.0


class DeliveryState(enum.Enum):
    PENDING = "pending"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"
    REJECTED = "rejected"
    ATTENTION = "attention"


#: states nothing automatic leaves
SETTLED = frozenset(
    {DeliveryState.PUBLISHED, DeliveryState.UNCONFIRMED, DeliveryState.REJECTED, DeliveryState.ATTENTION}
)


@dataclass(frozen=True, slots=True)
class Delivery:
    network: str
    account: str  # the account it goes to, fixed when the post was approved
    state: DeliveryState = DeliveryState.PENDING
    #: the thread's parts as this network counts and cuts them (fixed once cut)
    texts: tuple[str, ...] = ()
    parts: tuple[PublishedPart, ...] = ()  # those the network confirmed, in order
    sending: int = 0  # the part being sent (1-based), 0 when none
    sending_since: float = 0.0  # when that part was first sent
    owner: str = ""
    until: float = 0.0  # the owner's hold ends (seconds since the epoch)
    reason: str = ""  # for the chat: why it stopped
    retry_at: float = 0.0  # a network's reset time: not tried again before it
    attempts: int = 0
    version: int = 0

    def encode(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, ensure_ascii=False)

    @staticmethod
    def decode(raw: str) -> Delivery:
        data = json.loads(raw)
        data["state"] = DeliveryState(data["state"])
        data["texts"] = tuple(data["texts"])
        data["parts"] = tuple(PublishedPart(**part) for part in data["parts"])
        return Delivery(**data)

    @property
    def links(self) -> list[str]:
        return [part.url for part in self.parts]


class Taken(Exception):
    """Another actor changed the delivery since it was read."""


_SWAP = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw or cjson.decode(raw).version ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class DeliveryStore:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._swap = redis.register_script(_SWAP)

    async def plan(self, post_id: str, routes: Mapping[str, str]) -> dict[str, Delivery]:
        """Each network's delivery of a post (network → account), created once: the
        routes fixed at the first approval stay."""
        key = self._keys.deliveries(post_id)
        pipe = self._redis.pipeline(transaction=True)
        for network, account in routes.items():
            pipe.hsetnx(key, network, Delivery(network, account).encode())
        await pipe.execute()
        return await self.all(post_id)

    async def all(self, post_id: str) -> dict[str, Delivery]:
        raw = await self._redis.hgetall(self._keys.deliveries(post_id))
        return {str(network): Delivery.decode(str(value)) for network, value in raw.items()}

    async def change(self, post_id: str, delivery: Delivery, **changes: Any) -> Delivery:
        """The delivery with `changes`, if nobody changed it since it was read."""
        moved = replace(delivery, version=delivery.version + 1, **changes)
        args: list[str | int] = [delivery.network, delivery.version, moved.encode()]
        if not await self._swap(keys=[self._keys.deliveries(post_id)], args=args):
            raise Taken(f"{post_id}/{delivery.network}")
        return moved


class Deliverer:
    """Sends a post's parts to one network for as long as this replica holds it."""

    def __init__(
        self,
        store: DeliveryStore,
        *,
        owner: str,
        lease: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._owner = owner
        self._lease = lease
        self._clock = clock
        self._sleep = sleep

    async def deliver(
        self, post_id: str, text: str, client: NetworkClient, *, wait_until: float = 0.0
    ) -> Delivery:
        """Publish `text` (as a thread where the network needs one) unless it is settled
        or another replica holds it; a rate limit is waited out until `wait_until`
        (the schedule's misfire grace), not beyond. The delivery as it stands after."""
        network = client.network
        delivery = (await self._store.all(post_id))[network]
        if delivery.state in SETTLED:
            return delivery
        now = self._clock()
        if delivery.state is DeliveryState.PUBLISHING and delivery.until > now:
            return delivery  # another replica is on it
        try:
            return await self._work(post_id, text, client, delivery, wait_until)
        except Taken:
            return (await self._store.all(post_id))[network]

    async def _work(
        self, post_id: str, text: str, client: NetworkClient, delivery: Delivery, wait_until: float
    ) -> Delivery:
        change = self._store.change
        delivery = await change(
            post_id,
            delivery,
            state=DeliveryState.PUBLISHING,
            owner=self._owner,
            until=self._clock() + self._lease,
            attempts=delivery.attempts + 1,
        )
        if not delivery.texts:
            limits = await client.limits()
            try:
                texts = split_to_fit(text, limits.max_length, limits.measure)
            except ThreadTooLong as exc:
                return await change(
                    post_id, delivery, state=DeliveryState.REJECTED, reason=f"too long: {exc}"
                )
            delivery = await change(post_id, delivery, texts=tuple(texts))
        for number in range(len(delivery.parts) + 1, len(delivery.texts) + 1):
            now = self._clock()
            if delivery.sending == number and not self._resendable(delivery, now):
                why = "an earlier try may have published this part, and it can't be sent again safely"
                return await change(post_id, delivery, state=DeliveryState.UNCONFIRMED, reason=why)
            since = delivery.sending_since if delivery.sending == number else now
            delivery = await change(
                post_id, delivery, sending=number, sending_since=since, until=now + self._lease
            )
            reply = ReplyTo(delivery.parts[0], delivery.parts[-1]) if delivery.parts else None
            while True:  # a rate limit is waited out while it ends before `wait_until`
                try:
                    text = delivery.texts[number - 1]
                    part = await client.publish(text, key=f"{post_id}-{number}", reply_to=reply)
                    break
                except RateLimited as exc:
                    ready = self._clock() + exc.retry_after
                    if ready > wait_until:
                        return await self._failed(post_id, delivery, exc.user_message, retry_at=ready)
                    delivery = await change(post_id, delivery, until=ready + self._lease)
                    await self._sleep(exc.retry_after)
                except NetworkError as exc:
                    return await self._stopped(post_id, delivery, exc)
            delivery = await change(
                post_id, delivery, parts=(*delivery.parts, part), sending=0, sending_since=0.0
            )
        return await change(post_id, delivery, state=DeliveryState.PUBLISHED, owner="", until=0.0, reason="")

    @staticmethod
    def _resendable(delivery: Delivery, now: float) -> bool:
        """Whether a part an earlier try may have published can be sent again: on a
        network that knows its key, while it still does."""
        if delivery.network not in IDEMPOTENT:
            return False
        kept = KEY_KEPT.get(delivery.network)
        return kept is None or now - delivery.sending_since < kept

    async def _stopped(self, post_id: str, delivery: Delivery, exc: NetworkError) -> Delivery:
        """Where a refusal or failure leaves the delivery, by what the network said."""
        change = self._store.change
        reason = exc.user_message
        if isinstance(exc, PublishUnknown):
            # Mastodon and Bluesky: sent again later with the same key; X: a person checks
            state = DeliveryState.FAILED if delivery.network in IDEMPOTENT else DeliveryState.UNCONFIRMED
            return await change(post_id, delivery, state=state, owner="", until=0.0, reason=reason)
        if isinstance(exc, Unauthorized):
            return await change(post_id, delivery, state=DeliveryState.ATTENTION, reason=reason)
        if isinstance(exc, Rejected):
            return await change(post_id, delivery, state=DeliveryState.REJECTED, reason=reason)
        return await self._failed(post_id, delivery, reason)  # nothing was sent: PublishFailed

    async def _failed(
        self, post_id: str, delivery: Delivery, reason: str, *, retry_at: float = 0.0
    ) -> Delivery:
        """Nothing of the current part was sent: tried again later (not before `retry_at`),
        from that part."""
        return await self._store.change(
            post_id,
            delivery,
            state=DeliveryState.FAILED,
            sending=0,
            sending_since=0.0,
            owner="",
            until=0.0,
            reason=reason,
            retry_at=retry_at,
        )

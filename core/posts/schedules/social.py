"""Publishing an approved post to the networks its schedule names (`to=x,bluesky`).

The accounts are looked up when the post is first published and then fixed with
its deliveries (`core.social.delivery`), one per network, each sent at most once
whatever happens to the replicas. What became of each network is told to the
approver in plain words, with the link of each published post; an account that
the network refused is flagged and the chat told once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from core.social.accounts import NETWORK_NAMES, Account, AccountStore
from core.social.delivery import Deliverer, Delivery, DeliveryState, DeliveryStore
from core.social.network import NetworkClient, in_words

log = logging.getLogger("herald.scheduler")

ClientFactory = Callable[[Account], NetworkClient]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a post's deliveries stand after a round of publishing."""

    deliveries: Mapping[str, Delivery]

    @property
    def settled(self) -> bool:
        return all(d.state in _SETTLED for d in self.deliveries.values())

    @property
    def published(self) -> list[Delivery]:
        return [d for d in self.deliveries.values() if d.state is DeliveryState.PUBLISHED]

    @property
    def failed(self) -> list[Delivery]:
        """Deliveries that failed for now (nothing of their current part was sent)."""
        return [d for d in self.deliveries.values() if d.state is DeliveryState.FAILED]

    @property
    def held_elsewhere(self) -> bool:
        """Some delivery is still being sent (by another replica)."""
        return any(d.state is DeliveryState.PUBLISHING for d in self.deliveries.values())

    @property
    def retry_at(self) -> float:
        """The earliest a failed delivery may be tried again (a network's reset time)."""
        return max((d.retry_at for d in self.failed), default=0.0)

    def report(self, post_id: str, accounts: Mapping[str, Account], retry_in: float | None = None) -> str:
        """For the approver: each network's outcome with its links, and whether and when
        the networks that failed for now are tried again."""
        lines = [f"Post `{post_id}`:"]
        for network, delivery in sorted(self.deliveries.items()):
            name = NETWORK_NAMES.get(network, network)
            account = accounts.get(network)
            where = f"{name} ({account.handle})" if account is not None else name
            state = delivery.state
            if state is DeliveryState.PUBLISHED:
                lines.append(f"- {where}: published {' '.join(delivery.links)}")
            elif state is DeliveryState.UNCONFIRMED:
                check = f" Check {account.url} before publishing it again." if account is not None else ""
                lines.append(f"- {where}: may or may not be published ({delivery.reason}).{check}")
            elif state is DeliveryState.FAILED:
                lines.append(f"- {where}: not published yet: {delivery.reason}")
            elif state is DeliveryState.PUBLISHING:
                lines.append(f"- {where}: being published.")
            else:
                lines.append(f"- {where}: not published: {delivery.reason}")
        if self.failed:
            if retry_in is None:
                lines.append("I won't try again on my own: those tries are used up.")
            else:
                lines.append(f"I'll try again in {in_words(retry_in)}.")
        return "\n".join(lines)


_SETTLED = frozenset(
    {
        DeliveryState.PUBLISHED,
        DeliveryState.UNCONFIRMED,
        DeliveryState.REJECTED,
        DeliveryState.ATTENTION,
    }
)


class SocialPublishing:
    """Delivers posts to their networks through the chat's accounts."""

    def __init__(
        self,
        accounts: AccountStore,
        deliveries: DeliveryStore,
        clients: ClientFactory,
        *,
        owner: str,
        grace: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self._deliveries = deliveries
        self._clients = clients
        self._deliverer = Deliverer(deliveries, owner=owner, clock=clock)
        self._grace = grace
        self._clock = clock

    async def held(self, post_id: str) -> bool:
        """Whether a replica holds one of the post's deliveries right now."""
        now = self._clock()
        deliveries = await self._deliveries.all(post_id)
        return any(d.state is DeliveryState.PUBLISHING and d.until > now for d in deliveries.values())

    async def missing(self, platform: str, chat_id: str, networks: tuple[str, ...]) -> list[str]:
        """The networks among `networks` this chat has no usable account on."""
        usable = await self.accounts.usable(platform, chat_id)
        return [n for n in networks if n not in usable or usable[n].attention]

    async def publish(
        self, post_id: str, text: str, platform: str, chat_id: str, networks: tuple[str, ...]
    ) -> tuple[Outcome, dict[str, Account], list[str]]:
        """Publish to every network not settled yet, together. The outcome, the accounts
        used, and what the chat must be told once (accounts refused just now)."""
        usable = await self.accounts.usable(platform, chat_id)
        planned = await self._deliveries.plan(post_id, {n: usable[n].id for n in networks if n in usable})
        accounts = {n: a for n, a in usable.items() if n in planned and a.id == planned[n].account}
        wait_until = self._clock() + self._grace
        work = [
            self._one(post_id, text, account, wait_until)
            for network, account in accounts.items()
            if planned[network].state not in _SETTLED
        ]
        await asyncio.gather(*work)
        deliveries = await self._deliveries.all(post_id)
        for network in networks:
            if network not in deliveries:  # no account at all: nothing can be sent there
                deliveries[network] = Delivery(
                    network,
                    "",
                    DeliveryState.REJECTED,
                    reason=f"no {NETWORK_NAMES.get(network, network)} account is connected to this chat",
                )
        tell = []
        for network, account in accounts.items():
            delivery = deliveries[network]
            if delivery.state is DeliveryState.ATTENTION:
                if await self.accounts.mark(platform, chat_id, account, delivery.reason):
                    tell.append(
                        f"{account.label} needs attention: {delivery.reason} A chat manager can "
                        f"connect it again (/account add {network}, in a DM with me)."
                    )
            elif delivery.state is DeliveryState.PUBLISHED and account.attention:
                await self.accounts.clear(platform, chat_id, account)
        return Outcome(deliveries), accounts, tell

    async def _one(self, post_id: str, text: str, account: Account, wait_until: float) -> None:
        client = self._clients(account)
        try:
            await self._deliverer.deliver(post_id, text, client, wait_until=wait_until)
        except Exception:  # one network's fault never stops the others
            log.exception("delivering post %s to %s failed", post_id, account.network)
        finally:
            await client.close()

"""From an account to a client of its network, and the install's own accounts.

A chat's own accounts name their servers (a Mastodon instance, a Bluesky PDS)
themselves: their clients connect only to public addresses, checked on the
address resolved and on the one connected (`core.search.addresses`), so that an
account can't point Herald at its own network. The install's accounts come from
the operator and are trusted as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from core.config import Settings
from core.search.addresses import (
    PUBLIC_ONLY,
    AddressPolicy,
    PolicyResolver,
    guarded_socket_factory,
    parse_ip,
    system_resolver,
)
from core.social.accounts import Account, AccountError, AccountStore
from core.social.bluesky import BlueskyClient, BlueskyCredentials
from core.social.mastodon import MastodonClient, MastodonCredentials
from core.social.network import Identity, NetworkClient, NetworkError
from core.social.x import API_URL, XClient, XCredentials

log = logging.getLogger("herald.accounts")

#: what each network's credentials are called where people type them (`/account add`)
CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "x": ("consumer_key", "consumer_secret", "access_token", "access_token_secret", "user_token"),
    "bluesky": ("handle", "app_password", "service"),
    "mastodon": ("url", "token"),
}


class Clients:
    """Makes the client of an account (`ClientFactory`)."""

    def __init__(self, *, x_api_url: str = API_URL, policy: AddressPolicy = PUBLIC_ONLY) -> None:
        self._x_api_url = x_api_url
        self._policy = policy

    def __call__(self, account: Account) -> NetworkClient:
        known = Identity(account.network, account.account_id, account.handle, account.url)
        identity = known if account.account_id else None
        return self.client(
            account.network, account.credentials, guarded=not account.installed, identity=identity
        )

    def client(
        self,
        network: str,
        credentials: Mapping[str, str],
        *,
        guarded: bool,
        identity: Identity | None = None,
    ) -> NetworkClient:
        """A client for `credentials` (`identity`: who they post as, when known already:
        X then needs no `whoami` before posting); AccountError when they are incomplete."""
        connector = self._guarded_connector if guarded else None
        if guarded:
            self._require_https(network, credentials)
        try:
            if network == "x":
                x = XCredentials.from_mapping(credentials)
                return XClient(x, api_url=self._x_api_url, identity=identity)
            if network == "bluesky":
                bluesky = BlueskyCredentials(
                    handle=credentials["handle"],
                    app_password=credentials["app_password"],
                    service=credentials.get("service") or "https://bsky.social",
                )
                return BlueskyClient(bluesky, connector=connector)
            if network == "mastodon":
                mastodon = MastodonCredentials(
                    instance_url=credentials["url"], access_token=credentials["token"]
                )
                return MastodonClient(mastodon, connector=connector)
        except KeyError as exc:
            raise AccountError(f"Missing {exc.args[0]} for {network}.") from None
        except ValueError as exc:
            raise AccountError(str(exc)) from None
        raise AccountError(f"Herald can't publish to {network!r}.")

    def _require_https(self, network: str, credentials: Mapping[str, str]) -> None:
        """A chat's own server is reached over https only (its token travels with every
        request), except an address the policy names on purpose (a test's stand-in)."""
        url = credentials.get("url") if network == "mastodon" else credentials.get("service")
        if not url:
            return
        parsed = URL(url)
        host = parse_ip(parsed.host or "")
        if parsed.scheme != "https" and (host is None or host not in self._policy.also_allowed):
            raise AccountError(f"The server's address must start with https:// (got {url!r}).")

    def _guarded_connector(self) -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(
            resolver=PolicyResolver(system_resolver, self._policy),
            socket_factory=guarded_socket_factory(self._policy),
        )


async def check(client: NetworkClient) -> Identity:
    """Who the credentials post as (asked once, when they are connected); the client is
    closed after. NetworkError with words for the chat when the network refuses them."""
    try:
        return await client.whoami()
    finally:
        await client.close()


def installed_credentials(settings: Settings) -> dict[str, dict[str, str]]:
    """The install's own accounts from settings, network → credentials (secrets unwrapped
    here only, to hand to the clients)."""

    def secret(value: object) -> str:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else ""

    found: dict[str, dict[str, str]] = {}
    if settings.x_user_token is not None:
        found["x"] = {"user_token": secret(settings.x_user_token)}
    elif settings.x_api_key is not None:
        found["x"] = {
            "consumer_key": secret(settings.x_api_key),
            "consumer_secret": secret(settings.x_api_secret),
            "access_token": secret(settings.x_access_token),
            "access_token_secret": secret(settings.x_access_token_secret),
        }
    if settings.bluesky_handle and settings.bluesky_app_password is not None:
        found["bluesky"] = {
            "handle": settings.bluesky_handle,
            "app_password": secret(settings.bluesky_app_password),
            "service": settings.bluesky_service,
        }
    if settings.mastodon_url and settings.mastodon_token is not None:
        found["mastodon"] = {"url": settings.mastodon_url, "token": secret(settings.mastodon_token)}
    return found


async def identify_installed(accounts: AccountStore, clients: Clients) -> None:
    """Check each of the install's accounts once with its network and remember who it
    posts as (for every replica); one that fails is logged and kept, so that its posts
    say what is wrong rather than vanish."""
    for network, credentials in accounts.installed_networks.items():
        try:
            identity = await check(clients.client(network, credentials, guarded=False))
        except (NetworkError, AccountError) as exc:
            why = exc.user_message if isinstance(exc, NetworkError) else str(exc)
            log.error("%s: the configured account can't be used: %s", network, why)
            continue
        await accounts.identify_installed(network, identity)
        log.info("%s: publishing as %s", network, identity.handle)


ClientFactory = Callable[[Account], NetworkClient]

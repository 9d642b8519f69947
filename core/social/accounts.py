"""Social accounts a chat publishes to, with their credentials encrypted at rest.

Two sources, one shape (`Account`):

- the install's own, one per network, from settings (`HERALD_X_*`,
  `HERALD_BLUESKY_*`, `HERALD_MASTODON_*`): every chat's managers may publish to
  them (simple installs);
- a chat's own, connected by its managers (`/account add`, in a DM with Herald
  so that no credential is typed in a group), kept in Redis per chat.

A chat's own account of a network comes before the install's. Stored accounts are
one Redis hash per chat: the account's public part (network, handle, who
connected it, whether it needs attention) as JSON, and its credentials as a
Fernet token (AES-128-CBC with HMAC-SHA256, from `cryptography`), whose key is
derived with HKDF-SHA256 from `HERALD_SECRET_KEY`. Several keys, comma-separated
and newest first, let an operator rotate it: every key decrypts, the newest
encrypts. Without the setting, chats can't connect accounts of their own; a key
that no longer decrypts an account leaves it listed as unreadable, never fatal.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.posts.schedules.store import new_id
from core.social.network import Identity
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

NETWORKS = ("x", "bluesky", "mastodon")
NETWORK_NAMES = {"x": "X", "bluesky": "Bluesky", "mastodon": "Mastodon"}
#: how long a connection begun in a chat waits for its credentials in a DM
CONNECT_SECONDS = 15 * 60
#: the least length of a secret key (HKDF stretches it; a short one is guessable)
MIN_SECRET_CHARS = 32

log = logging.getLogger("herald.accounts")


class AccountError(ValueError):
    """An account can't be used or kept as asked; the message is for the user."""


@dataclass(frozen=True, slots=True)
class Account:
    """A connected account; `credentials` never appear in its repr, logs or chats."""

    id: str  # "x", "bluesky", "mastodon" for the install's own; a short id for a chat's
    network: str
    handle: str
    url: str
    account_id: str = ""  # the network's own id
    connected_by: str = ""  # who connected it ("" for the install's own)
    #: why it can't be used until someone looks at it (a 401/403, kept in Redis for every
    #: replica): "" while it can
    attention: str = ""
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def installed(self) -> bool:
        """One of the install's own accounts, from settings."""
        return not self.connected_by

    @property
    def label(self) -> str:
        return f"{NETWORK_NAMES.get(self.network, self.network)} {self.handle}"


def secret_box(secret: str) -> MultiFernet:
    """The cipher for stored credentials: one Fernet key per comma-separated secret,
    derived with HKDF-SHA256, the first one encrypting."""
    secrets = [part.strip() for part in secret.split(",") if part.strip()]
    if not secrets:
        raise AccountError("HERALD_SECRET_KEY is empty.")
    keys = []
    for part in secrets:
        if len(part) < MIN_SECRET_CHARS:
            raise AccountError(f"Each key in HERALD_SECRET_KEY needs at least {MIN_SECRET_CHARS} characters.")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"herald accounts", info=b"fernet").derive(
            part.encode()
        )
        keys.append(Fernet(base64.urlsafe_b64encode(derived)))
    return MultiFernet(keys)


class AccountStore:
    """A chat's own accounts in Redis (encrypted), and the install's from settings."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        box: MultiFernet | None,
        installed: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._box = box
        #: the install's own accounts: network → credentials (from settings)
        self._installed = dict(installed or {})

    @property
    def can_store(self) -> bool:
        """Whether chats may connect accounts of their own (a secret key is set)."""
        return self._box is not None

    async def add(self, platform: str, chat_id: str, account: Account) -> Account:
        """Keep a chat's account (replacing its earlier one of the same network)."""
        if self._box is None:
            raise AccountError(
                "Connecting accounts needs HERALD_SECRET_KEY set on the server, to encrypt them."
            )
        stored = replace(account, id=new_id())
        key = self._keys.social_accounts(platform, chat_id)
        pipe = self._redis.pipeline(transaction=True)
        for earlier in await self.stored(platform, chat_id):
            if earlier.network == account.network:
                pipe.hdel(key, earlier.id)
        pipe.hset(key, stored.id, self._encode(stored))
        await pipe.execute()
        return stored

    async def begin_connecting(self, platform: str, user_id: str, network: str, chat_id: str) -> None:
        """A chat's manager asked, in the chat, to connect an account of `network`: their
        credentials, sent in a DM within `CONNECT_SECONDS`, connect it to that chat."""
        key = self._keys.account_connecting(platform, user_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, network, chat_id)
        pipe.expire(key, CONNECT_SECONDS)
        await pipe.execute()

    async def connecting(self, platform: str, user_id: str, network: str) -> str | None:
        """The chat a person is connecting an account of `network` to, if they began lately."""
        chat = await self._redis.hget(self._keys.account_connecting(platform, user_id), network)
        return None if chat is None else str(chat)

    async def connected(self, platform: str, user_id: str, network: str) -> None:
        await self._redis.hdel(self._keys.account_connecting(platform, user_id), network)

    async def remove(self, platform: str, chat_id: str, account_id: str) -> bool:
        return bool(await self._redis.hdel(self._keys.social_accounts(platform, chat_id), account_id))

    async def stored(self, platform: str, chat_id: str) -> list[Account]:
        """The chat's own accounts that can be read (one that can't is logged and left out)."""
        raw = await self._redis.hgetall(self._keys.social_accounts(platform, chat_id))
        found = (self._decode(str(key), str(value)) for key, value in raw.items())
        return sorted((account for account in found if account is not None), key=lambda a: a.network)

    async def usable(self, platform: str, chat_id: str) -> dict[str, Account]:
        """Network → the account a chat publishes to there: its own, else the install's,
        with whether it needs attention."""
        found = await self._installed_accounts()
        for account in await self.stored(platform, chat_id):
            found[account.network] = account
        fields = [self._flag(platform, chat_id, account) for account in found.values()]
        flags = await self._redis.hmget(self._keys.social_attention(), fields) if fields else []
        return {
            network: replace(account, attention=str(flag)) if flag else account
            for (network, account), flag in zip(found.items(), flags, strict=True)
        }

    async def identify_installed(self, network: str, identity: Identity) -> None:
        """Remember who the install's account of `network` posts as (checked at start),
        for every replica."""
        data = {"handle": identity.handle, "url": identity.url, "account_id": identity.account_id}
        await self._redis.hset(self._keys.installed_identities(), network, json.dumps(data))

    @property
    def installed_networks(self) -> dict[str, Mapping[str, str]]:
        return dict(self._installed)

    async def _installed_accounts(self) -> dict[str, Account]:
        if not self._installed:
            return {}
        networks = list(self._installed)
        known = await self._redis.hmget(self._keys.installed_identities(), networks)
        found = {}
        for network, raw in zip(networks, known, strict=True):
            seen = json.loads(raw) if raw else {}
            found[network] = Account(
                id=network,
                network=network,
                handle=str(seen.get("handle", "(not checked yet)")),
                url=str(seen.get("url", "")),
                account_id=str(seen.get("account_id", "")),
                credentials=self._installed[network],
            )
        return found

    async def mark(self, platform: str, chat_id: str, account: Account, attention: str) -> bool:
        """Flag an account as needing attention (a 401/403), for every replica: True only
        the first time, so that the chat is told once."""
        field_name = self._flag(platform, chat_id, account)
        return bool(await self._redis.hsetnx(self._keys.social_attention(), field_name, attention))

    async def clear(self, platform: str, chat_id: str, account: Account) -> None:
        """The account works (it published, or was connected again)."""
        await self._redis.hdel(self._keys.social_attention(), self._flag(platform, chat_id, account))

    @staticmethod
    def _flag(platform: str, chat_id: str, account: Account) -> str:
        """An account's field in the attention hash: the install's are shared by every chat."""
        return f"installed:{account.network}" if account.installed else f"{platform}:{chat_id}:{account.id}"

    def _encode(self, account: Account) -> str:
        assert self._box is not None
        sealed = self._box.encrypt(json.dumps(dict(account.credentials)).encode()).decode()
        public = {
            "network": account.network,
            "handle": account.handle,
            "url": account.url,
            "account_id": account.account_id,
            "connected_by": account.connected_by,
        }
        return json.dumps(public | {"sealed": sealed})

    def _decode(self, account_id: str, raw: str) -> Account | None:
        try:
            data = json.loads(raw)
            if self._box is None:
                raise InvalidToken
            credentials = json.loads(self._box.decrypt(str(data.pop("sealed")).encode()))
            return Account(id=account_id, credentials=credentials, **data)
        except InvalidToken:
            log.error("account %s can't be decrypted (HERALD_SECRET_KEY changed?); left out", account_id)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("account %s is unreadable: %r; left out", account_id, exc)
        return None

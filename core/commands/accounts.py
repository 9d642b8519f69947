"""`/account`: the social accounts a chat publishes to (`to=x,bluesky,mastodon`).

Connecting takes two steps, so that no credential is ever typed in a group: a
chat's manager runs `/account add bluesky` in the chat, then sends the
credentials to Herald in a direct message within 15 minutes. Herald checks them
once with the network (who do they post as), keeps them encrypted
(`core.social.accounts`) and answers with the handle it will post as. Credentials
typed in a group are refused and never kept.
"""

from __future__ import annotations

import logging
from typing import Any

from core.chat.access import AccessPolicy
from core.commands.context import CommandContext
from core.commands.guards import in_chats_only, managers_only
from core.commands.registry import ArgSpec, ArgType, CommandSpec, Handler
from core.social.accounts import CONNECT_SECONDS, NETWORK_NAMES, NETWORKS, Account, AccountError, AccountStore
from core.social.clients import CREDENTIAL_FIELDS, Clients, check
from core.social.network import NetworkError, Unauthorized

log = logging.getLogger("herald.accounts")

MANAGERS_ONLY = "Only the people who manage this chat can connect or remove its accounts."
IN_A_CHAT = "Run this in the chat whose accounts you mean."
#: how each network's credentials are typed in the DM
HOW = {
    "x": (
        "/account add x consumer_key=… consumer_secret=… access_token=… access_token_secret=… "
        "(OAuth 1.0a, from the X developer portal), or /account add x user_token=… (an OAuth 2.0 "
        "user token with tweet.write)"
    ),
    "bluesky": "/account add bluesky handle=you.bsky.social app_password=xxxx-xxxx-xxxx-xxxx "
    "(an app password from Bluesky's settings, never your real password)",
    "mastodon": "/account add mastodon url=https://your.instance token=… (an access token with "
    "the write:statuses scope, from Preferences → Development)",
}
SECRET = 500


def _secret_args() -> tuple[ArgSpec, ...]:
    names = dict.fromkeys(name for fields in CREDENTIAL_FIELDS.values() for name in fields)
    return tuple(
        ArgSpec(name, f"{name.replace('_', ' ')} (in a DM only)", keyword_only=True, max_length=SECRET)
        for name in names
    )


class AccountCommands:
    def __init__(self, accounts: AccountStore, clients: Clients, access: AccessPolicy) -> None:
        self._accounts = accounts
        self._clients = clients
        self._access = access

    def spec(self) -> CommandSpec:
        network = ArgSpec(
            "network", "x, bluesky or mastodon", type=ArgType.CHOICE, choices=NETWORKS, required=True
        )
        return CommandSpec(
            "account",
            "The X, Bluesky and Mastodon accounts this chat publishes to",
            subcommands=(
                CommandSpec(
                    "add",
                    "Connect an account (start in the chat, finish in a DM with me)",
                    self.add,
                    args=(network, *_secret_args()),
                ),
                CommandSpec("list", "The accounts this chat publishes to", self._in_chat(self.list_accounts)),
                CommandSpec(
                    "remove",
                    "Disconnect this chat's account of a network (managers)",
                    self._in_chat(self._managed(self.remove)),
                    args=(network,),
                ),
            ),
        )

    def _in_chat(self, handler: Handler) -> Handler:
        return in_chats_only(handler, IN_A_CHAT)

    def _managed(self, handler: Handler) -> Handler:
        return managers_only(self._access, handler, MANAGERS_ONLY)

    async def add(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        network = str(args["network"])
        typed = {name: str(value) for name, value in args.items() if name != "network" and value is not None}
        if not self._accounts.can_store:
            await ctx.reply(
                "Chats can't connect accounts of their own here: the server needs HERALD_SECRET_KEY "
                "set, to keep credentials encrypted."
            )
        elif not ctx.event.is_private:
            await self._begin(ctx, network, typed)
        else:
            await self._finish(ctx, network, typed)

    async def _begin(self, ctx: CommandContext, network: str, typed: dict[str, str]) -> None:
        """In the chat: never take credentials here; remember who is connecting what."""
        event = ctx.event
        if typed:
            await ctx.reply(
                "Never type credentials in a group: I kept nothing. Delete that message, and revoke "
                f"what it showed (a new app password or token). Then run /account add {network} here "
                "without them, and send them to me in a direct message."
            )
            return
        if not self._access.may_manage_chat(event):
            await ctx.reply(MANAGERS_ONLY)
            return
        await self._accounts.begin_connecting(event.platform, event.author.user_id, network, event.chat_id)
        minutes = CONNECT_SECONDS // 60
        await ctx.reply(
            f"To connect a {NETWORK_NAMES[network]} account to this chat, send me a direct message "
            f"within {minutes} minutes: {HOW[network]}."
        )

    async def _finish(self, ctx: CommandContext, network: str, typed: dict[str, str]) -> None:
        """In a DM: check the credentials with the network, then keep them for the chat."""
        event = ctx.event
        chat_id = await self._accounts.connecting(event.platform, event.author.user_id, network)
        if chat_id is None:
            await ctx.reply(
                f"Start in the chat the account is for: run /account add {network} there (as one of "
                f"its managers), then send me the credentials here within {CONNECT_SECONDS // 60} minutes."
            )
            return
        unknown = sorted(set(typed) - set(CREDENTIAL_FIELDS[network]))
        if unknown or not typed:
            await ctx.reply(f"For {NETWORK_NAMES[network]}, write: {HOW[network]}.")
            return
        try:
            client = self._clients.client(network, typed, guarded=True)
            identity = await check(client)
        except AccountError as exc:
            await ctx.reply(f"{exc} For {NETWORK_NAMES[network]}, write: {HOW[network]}.")
            return
        except Unauthorized as exc:
            log.info("connecting a %s account: refused: %s", network, exc)
            await ctx.reply(f"{NETWORK_NAMES[network]} refused these credentials: {exc.user_message}")
            return
        except NetworkError as exc:  # unreachable, or not a public address
            log.info("connecting a %s account failed: %s", network, exc)
            await ctx.reply(f"I couldn't check these credentials: {exc.user_message} Nothing was kept.")
            return
        account = Account(
            id="",
            network=network,
            handle=identity.handle,
            url=identity.url,
            account_id=identity.account_id,
            connected_by=event.author.user_id,
            credentials=typed,
        )
        kept = await self._accounts.add(event.platform, chat_id, account)
        await self._accounts.clear(event.platform, chat_id, kept)
        await self._accounts.connected(event.platform, event.author.user_id, network)
        await ctx.reply(
            f"Connected {kept.label} ({kept.url}) to that chat: its posts with to={network} go out "
            "as this account. You can delete your message with the credentials now."
        )

    async def list_accounts(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        event = ctx.event
        usable = await self._accounts.usable(event.platform, event.chat_id)
        if not usable:
            await ctx.reply(
                "This chat publishes to no network yet. A chat manager connects one with "
                "/account add x|bluesky|mastodon."
            )
            return
        lines = ["This chat publishes to:"]
        for network in NETWORKS:
            account = usable.get(network)
            if account is None:
                continue
            whose = "the server's account" if account.installed else f"connected by {account.connected_by}"
            trouble = f" ⚠️ needs attention: {account.attention}" if account.attention else ""
            lines.append(f"- {account.label} ({whose}){trouble}")
        await ctx.reply("\n".join(lines))

    async def remove(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        event = ctx.event
        network = str(args["network"])
        mine = [a for a in await self._accounts.stored(event.platform, event.chat_id) if a.network == network]
        if not mine:
            await ctx.reply(f"This chat has no {NETWORK_NAMES[network]} account of its own to remove.")
            return
        for account in mine:
            await self._accounts.remove(event.platform, event.chat_id, account.id)
        await ctx.reply(f"Removed {mine[0].label} from this chat; its credentials are deleted.")

"""A loopback emulator of Discord (REST v10 and the gateway) for tests that run the real discord.py.

discord.py is pointed at it with :func:`point_discord_py_at` (``Route.BASE`` for REST and
interaction webhooks, ``DiscordWebSocket.DEFAULT_GATEWAY`` for the socket;
``AutoShardedClient`` asks ``GET /gateway/bot`` and gets this emulator's URL and shard count).
Every request crosses real HTTP and every event a real WebSocket, so discord.py's own
encoding, rate limiting, parsing, caching and error mapping are part of what a test checks.

It keeps the Discord rules that a bot's code can get wrong:

* the 2000-character limit, empty messages, unknown channels/messages, 401 on a bad token,
  all with Discord's JSON error bodies (``{"code", "message"[, "errors"]}``);
* per-route rate-limit windows announced in ``X-RateLimit-*`` headers (discord.py paces itself
  from them) and 429s when a client ignores them, plus injected 429s (``rate_limit_next``);
  channel history has its own, tighter window (``history_bucket_limit`` per
  ``history_bucket_window``); the bot's global limit when ``global_limit`` is set:
  that many requests a second over every authenticated route (interaction endpoints
  are not counted, as documented), read as a token bucket of that many a second and
  that many at once (Discord does not say how it counts; the Telegram emulator reads
  its bot-wide limit the same way), a request over it answered Discord's global 429
  (``X-RateLimit-Global: true``, ``X-RateLimit-Scope: global``, ``"global": true``);
  ``throttled()`` lists every 429 served; ``hold`` keeps matching
  requests unanswered until released, so a test can stop a client at a known point;
* channel history (``GET /channels/{id}/messages``) with ``around``/``before``/``after`` and
  ``limit`` as documented (newest first, ``after`` pages from the oldest), over messages seeded
  cheaply into the past (``seed_history``) or written live; people edit and delete messages
  (``edit_message``, ``delete_message``, ``bulk_delete``: MESSAGE_UPDATE, MESSAGE_DELETE,
  MESSAGE_DELETE_BULK) and the history follows;
* channel permission overwrites (``overwrite``) computed as Discord documents, with threads
  inheriting their parent's: without VIEW_CHANNEL the read routes answer 403 50001, without
  READ_MESSAGE_HISTORY history is empty (as documented) and a single message 403 50013, and
  the bot gets no message events from a channel it cannot view;
* what ``allowed_mentions`` really pings (``BotMessage.pinged_*``): absent, everything in the
  content pings, replies ping their author, ``@everyone`` needs MENTION_EVERYONE;
* gateway intents: no MESSAGE_CREATE without GUILD_MESSAGES / DIRECT_MESSAGES, empty
  ``content``/``embeds``/``attachments``/``components`` without MESSAGE_CONTENT except Discord's
  documented cases (DMs, the bot's own messages, @mentions of the bot user, ping-replies to its
  regular messages; a mention of its managed role only with ``role_mention_reveals_content``),
  only the bot's own member in GUILD_CREATE without GUILD_PRESENCES, close 4014 for privileged
  intents not enabled. Over REST (history, single messages) content depends only on whether
  the app has MESSAGE_CONTENT (``privileged_intents``), never on what IDENTIFY asked for:
  Discord documents HTTP restrictions as independent of the gateway's;
* permissions only from roles (``member(permissions=...)`` adds a role of the member's own),
  so discord.py's ``Member.guild_permissions`` agrees with the interaction's ``permissions``;
* interactions: 3 s to acknowledge, one acknowledgement only, a deferred "thinking" message
  that the first follow-up fills in, 15-minute webhook tokens, webhook message routes that
  reach by id only what their token sent (the clicked message only as ``@original``);
* sharding by ``(guild_id >> 22) % shard_count`` (DMs on shard 0), RESUME with replay of
  what was missed, the bot's own messages echoed back as MESSAGE_CREATE, and delivery at
  least once (``deliver_again``).

Deliberate simplifications: no voice, reactions, components interactions, stickers or polls;
permission overwrites gate only reading (history, single messages, message events), not
sending; no THREAD_STARTER_MESSAGE inside threads. REST message objects carry no ``guild_id``
(as on Discord), gateway ones do. Interaction-token webhook routes need no Authorization (as on
Discord).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.emulators.token_bucket import TokenBucket

__all__ = [
    "ApiError",
    "BotMessage",
    "Call",
    "DiscordEmulator",
    "Hold",
    "Interaction",
    "PastMessage",
    "point_discord_py_at",
]

_Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_CONTENT = 2000

# Gateway intents (the ones the emulator looks at).
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
ALL_INTENTS = (1 << 26) - 1

# Permissions.
ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
MANAGE_MESSAGES = 1 << 13
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
ALL_PERMISSIONS = (1 << 51) - 1
_TEXT_BASICS = (
    (1 << 6)  # add reactions
    | (1 << 10)  # view channel
    | (1 << 11)  # send messages
    | (1 << 14)  # embed links
    | (1 << 15)  # attach files
    | (1 << 16)  # read message history
    | (1 << 31)  # use application commands
    | (1 << 35)  # create public threads
    | (1 << 38)  # send messages in threads
)
EVERYONE_PERMISSIONS = _TEXT_BASICS
BOT_ROLE_PERMISSIONS = _TEXT_BASICS

# Message flags.
SUPPRESS_EMBEDS = 1 << 2
HAS_THREAD = 1 << 5
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_NOTIFICATIONS = 1 << 12
_SENDABLE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS
_WEBHOOK_FLAGS = _SENDABLE_FLAGS | EPHEMERAL

# Application flags for the limited (under 100 guilds) privileged-intent toggles.
_APP_FLAG_FOR_INTENT = {GUILD_PRESENCES: 1 << 13, GUILD_MEMBERS: 1 << 15, MESSAGE_CONTENT: 1 << 19}

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_EVERYONE = re.compile(r"@(everyone|here)\b")
_COMMAND_NAME = re.compile(r"[-_'\w]{1,32}")
_OPTION_TYPES = {str: 3, bool: 5, int: 4, float: 10}
_SNOWFLAKE_OPTIONS = {6, 7, 8, 9, 11}
_RATE_LIMITED = "You are being rate limited."
_HISTORY_ROUTE = ("GET", "/channels/{channel_id}/messages")
_MAX_SNOWFLAKE = (1 << 64) - 1
_BULK_DELETE_MAX_AGE = dt.timedelta(days=14)
_POSIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# --- records -----------------------------------------------------------------------------


@dataclass
class Call:
    """One REST request as received; ``json`` is the decoded body (``payload_json`` for multipart).

    ``at`` is the event loop's time on arrival, so tests can check pacing; ``status`` and
    ``error_code`` are filled in once answered.
    """

    method: str
    path: str
    json: Any
    at: float
    status: int = 0
    query: dict[str, str] = field(default_factory=dict)
    error_code: int | None = None
    files: list[str] = field(default_factory=list)

    @property
    def body(self) -> Any:
        """Alias of ``json``."""
        return self.json


@dataclass
class BotMessage:
    """A message the bot created (REST or interaction), in its current state.

    ``history`` lists every content the message showed, the current last (a deferred
    "thinking" placeholder shows nothing, so it starts empty); ``edits`` counts PATCHes.
    ``pinged_*`` is who Discord notified on creation after applying ``allowed_mentions``.
    """

    id: int
    channel_id: int
    content: str
    guild_id: int | None = None
    edits: int = 0
    history: list[str] = field(default_factory=list)
    allowed_mentions: _Json | None = None
    message_reference: _Json | None = None
    interaction_token: str | None = None
    flags: int = 0
    embeds: list[_Json] = field(default_factory=list)
    components: list[_Json] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)
    pinged_users: list[int] = field(default_factory=list)
    pinged_roles: list[int] = field(default_factory=list)
    pinged_everyone: bool = False
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Still the deferred "thinking" placeholder."""
        return bool(self.flags & LOADING)


@dataclass
class PastMessage:
    """A message written before the test began, for ``seed_history``.

    ``at`` (an aware datetime, or POSIX seconds) becomes the message's timestamp and the time in
    its snowflake; ``reply_to`` names an existing, older message; ``embeds`` are stored as given
    (they vanish, like ``content``, for an app without MESSAGE_CONTENT).
    """

    author: _Json | int
    content: str
    at: dt.datetime | float
    reply_to: int | None = None
    edited_at: dt.datetime | float | None = None
    embeds: Sequence[_Json] = ()


@dataclass
class Interaction:
    """An interaction the emulator dispatched, and what the bot did with it.

    ``type`` 2 is a slash command (``name``, ``options``); 3 a button click, with
    ``custom_id`` and the clicked ``message_id`` (``name`` is the custom_id too).
    """

    id: int
    token: str
    name: str
    channel_id: int
    guild_id: int | None
    user: _Json
    options: list[_Json]
    created_at: float
    command_id: int
    type: int = 2
    callbacks: list[_Json] = field(default_factory=list)
    response_type: int | None = None
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    custom_id: str | None = None
    message_id: int | None = None
    modal: _Json | None = None  # the form the bot opened in answer (callback type 9)


@dataclass
class Hold:
    """Requests kept waiting, unanswered, as a slow Discord would keep them (``hold``).

    The first ``passes`` matching requests go through; later ones wait in ``waiting`` until
    ``release()``, so a test can stop a client at a known point of its work. A held request
    counts as still on its way: one whose client went away meanwhile is dropped (``status``
    499), never served and never counted in a rate-limit window.
    """

    method: str
    path: re.Pattern[str]
    passes: int = 0
    waiting: list[Call] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()

    def matches(self, method: str, path: str) -> bool:
        return not self.released.is_set() and method == self.method and bool(self.path.search(path))


class ApiError(Exception):
    """A refusal in Discord's shape: HTTP ``status`` with ``{"code", "message"[, "errors"]}``."""

    def __init__(self, status: int, code: int, message: str, errors: _Json | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> _Json:
        body: _Json = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _field_error(path: Sequence[str | int], code: str, message: str) -> _Json:
    """Discord's nested error tree: ``{"a": {"0": {"b": {"_errors": [{code, message}]}}}}``."""
    tree: _Json = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        tree = {str(key): tree}
    return tree


def _invalid_form(path: Sequence[str | int], code: str, message: str) -> ApiError:
    return ApiError(400, 50035, "Invalid Form Body", _field_error(path, code, message))


def _too_long(path: Sequence[str | int], limit: int) -> ApiError:
    return _invalid_form(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _not_found(code: int, message: str) -> ApiError:
    return ApiError(404, code, message)


_UNKNOWN_CHANNEL = (10003, "Unknown Channel")
_UNKNOWN_GUILD = (10004, "Unknown Guild")
_UNKNOWN_MEMBER = (10007, "Unknown Member")
_UNKNOWN_MESSAGE = (10008, "Unknown Message")
_UNKNOWN_USER = (10013, "Unknown User")
_UNKNOWN_WEBHOOK = (10015, "Unknown Webhook")
_UNKNOWN_INTERACTION = (10062, "Unknown interaction")
_UNKNOWN_COMMAND = (10063, "Unknown application command")


# --- internals ---------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    query: Mapping[str, str]
    files: list[tuple[str, int, str]]


_Handler = Callable[[_Request], tuple[int, Any]]


@dataclass(frozen=True)
class _Route:
    method: str
    regex: re.Pattern[str]
    template: str
    handler: _Handler
    auth: bool
    bucket: str


@dataclass
class _InjectedLimit:
    method: str
    path: re.Pattern[str]
    retry_after: float
    remaining: int
    global_: bool


@dataclass
class _InjectedFault:
    method: str
    path: re.Pattern[str]
    error: ApiError
    remaining: int


@dataclass
class _Window:
    reset_at: float
    limit: int
    count: int = 0


@dataclass
class _StoredMessage:
    wire: _Json  # REST shape, without referenced_message
    guild_id: int | None
    reference_id: int | None = None
    reference_unfetched: bool = False  # referenced_message left out, as Discord may
    ephemeral: bool = False
    deleted: bool = False


@dataclass
class _Guild:
    id: int
    name: str
    owner_id: int
    joined_at: str
    roles: dict[int, _Json] = field(default_factory=dict)
    channels: dict[int, _Json] = field(default_factory=dict)
    threads: dict[int, _Json] = field(default_factory=dict)
    members: dict[int, _Json] = field(default_factory=dict)  # without "user"
    personal_roles: dict[int, int] = field(default_factory=dict)  # user -> role granting member(permissions=)


@dataclass
class _Close:
    code: int
    reason: str


@dataclass
class _Conn:
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[str | _Close | None] = field(default_factory=asyncio.Queue)
    session: _Session | None = None
    server_closing: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, op: int, d: Any) -> None:
        self.outbox.put_nowait(json.dumps({"op": op, "d": d, "s": None, "t": None}))

    def close(self, code: int, reason: str) -> None:
        self.outbox.put_nowait(_Close(code, reason))


def _dumps(value: Any) -> str:
    """JSON text of wire data; orjson, because the emulator serves hundreds of bots' calls
    a second in the streaming benchmarks (the same JSON as `json.dumps`, without spaces)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_copy(value: Any) -> Any:
    """A deep copy of wire data (JSON types only), several times faster than `copy.deepcopy`."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


@dataclass
class _Session:
    id: str
    shard: tuple[int, int]
    intents: int
    seq: int = 0
    log: list[tuple[int, str]] = field(default_factory=list)
    conn: _Conn | None = None
    ended: bool = False

    def dispatch(self, event: str, data: Any) -> None:
        """Number and send (or buffer, while disconnected) one event, kept for a RESUME."""
        self.seq += 1
        text = _dumps({"op": 0, "s": self.seq, "t": event, "d": data})
        self.log.append((self.seq, text))
        del self.log[:-1000]
        if self.conn is not None:
            self.conn.outbox.put_nowait(text)

    def serves(self, guild_id: int | None) -> bool:
        shard_id, count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % count == shard_id


class _Snowflakes:
    """Time-based, strictly increasing ids: discord.py reads creation times from them."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(self._last + 1, candidate)
        return self._last

    def at_least(self, taken: int) -> None:
        """Make every later id larger than ``taken`` (an id made up elsewhere)."""
        self._last = max(self._last, taken)


def _iso(snowflake: int | None = None) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS if snowflake is not None else int(time.time() * 1000)
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _epoch_ms(at: dt.datetime | float) -> int:
    """POSIX milliseconds (truncated) of an aware datetime or of POSIX seconds, exactly."""
    if not isinstance(at, dt.datetime):
        at = dt.datetime.fromtimestamp(at, dt.UTC)
    elif at.tzinfo is None:
        raise ValueError(f"{at!r} is naive; give a timezone (e.g. datetime.UTC)")
    return (at - _POSIX_EPOCH) // dt.timedelta(milliseconds=1)


def _snowflake_for(at: dt.datetime) -> int:
    """The smallest snowflake of that millisecond."""
    return max(_epoch_ms(at) - DISCORD_EPOCH_MS, 0) << 22


def _ids(values: Any) -> list[int]:
    return [int(v) for v in values or [] if str(v).isdigit()]


def _unique(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def _walk_components(components: Any) -> Iterator[_Json]:
    """Every component, depth first (action rows, containers and sections hold others)."""
    for component in components if isinstance(components, list) else []:
        if isinstance(component, dict):
            yield component
            yield from _walk_components(component.get("components"))
            accessory = component.get("accessory")
            if isinstance(accessory, dict):
                yield accessory


# --- the emulator ------------------------------------------------------------------------


class DiscordEmulator:
    """Discord's REST API (v10) and gateway on 127.0.0.1, holding one bot and its world.

    Tests build the world (``guild``, ``user``, ``member``, ``thread``, ``dm_channel``,
    ``overwrite``, ``seed_history``), make people act (``user_message``, ``edit_message``,
    ``delete_message``, ``bulk_delete``, ``slash_command``) and observe the bot (``calls``,
    ``throttled``, ``messages_in``, ``history``, ``interaction_response``, ``global_commands``,
    ``identifies``).
    """

    def __init__(
        self,
        *,
        token: str = "TEST.TOKEN.discord",
        bot_id: int = 900,
        bot_name: str = "Herald",
        application_id: int = 900,
        shards: int = 1,
        heartbeat_interval_ms: int = 41250,
        privileged_intents: int = PRIVILEGED_INTENTS,
        bucket_limit: int = 5,
        bucket_window: float = 1.0,
        global_limit: int = 0,
        history_bucket_limit: int = 5,
        history_bucket_window: float = 5.0,
        interaction_deadline: float = 3.0,
        webhook_ttl: float = 900.0,
        echo_bot_messages: bool = True,
        strict_commands: bool = True,
    ) -> None:
        self.token = token
        self.bot_id = bot_id
        self.bot_name = bot_name
        self.application_id = application_id
        self.shards = shards
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Privileged intents switched on for the application in the developer portal.
        self.privileged_intents = privileged_intents
        # X-RateLimit-Limit per route bucket and window length; 0 turns windows off.
        self.bucket_limit = bucket_limit
        self.bucket_window = bucket_window
        # Requests a second over all routes but interaction endpoints (Discord: 50); 0: off.
        self.global_limit = global_limit
        self._global_bucket: TokenBucket | None = None
        # GET /channels/{id}/messages has its own window (per channel, like every route); 0 turns it off.
        self.history_bucket_limit = history_bucket_limit
        self.history_bucket_window = history_bucket_window
        self.interaction_deadline = interaction_deadline
        self.webhook_ttl = webhook_ttl
        self.echo_bot_messages = echo_bot_messages
        # Refuse to dispatch slash commands the bot never registered (Discord can't show them).
        self.strict_commands = strict_commands
        self.ack_heartbeats = True
        # Discord documents content for @mentions of the bot user; whether a mention of its
        # managed role also lifts the MESSAGE_CONTENT gate is unverified, so it is a switch.
        self.role_mention_reveals_content = False
        self.bot_user: _Json = self._user_object(bot_id, bot_name, bot=True)
        self.url = ""
        self.gateway_url = ""
        # observation
        self.calls: list[Call] = []
        self.global_commands: list[_Json] = []
        self.guild_commands: dict[int, list[_Json]] = {}
        self.command_puts = 0
        self.identifies: list[_Json] = []
        self.resumes: list[_Json] = []
        self.presence_updates: list[_Json] = []
        self.heartbeats = 0
        self.heartbeat_acks = 0
        self.gateway_closes: list[tuple[int, str]] = []  # (code, reason) the emulator closed with
        # world
        self._users: dict[int, _Json] = {bot_id: self.bot_user}
        self._guilds: dict[int, _Guild] = {}
        self._channel_guild: dict[int, int] = {}  # guild channels and threads
        self._dm_channels: dict[int, int] = {}  # channel -> user
        self._dm_by_user: dict[int, int] = {}
        self._blocked_dms: set[int] = set()
        self._messages: dict[int, _StoredMessage] = {}
        self._by_channel: dict[int, list[int]] = {}  # channel -> visible message ids, ascending
        self._bot_messages: dict[int, BotMessage] = {}
        self._nonces: dict[tuple[int, str], int] = {}
        self._interactions: dict[int, Interaction] = {}
        self._by_token: dict[str, Interaction] = {}
        self._ids = _Snowflakes()
        # faults and limits
        self._limits: list[_InjectedLimit] = []
        self._faults: list[_InjectedFault] = []
        self._holds: list[Hold] = []
        self._windows: dict[tuple[str, str], _Window] = {}
        # plumbing
        self._sessions: dict[str, _Session] = {}
        self._conns: list[_Conn] = []
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._routes: list[_Route] = []
        self._add_routes()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, port: int = 0) -> str:
        """Bind 127.0.0.1 (a free port unless one is given); return the base URL."""
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._stopping = False
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"
        return self.url

    async def stop(self) -> None:
        """Close every gateway socket (1001, as a server going away would) and the listener.

        Connected clients try to reconnect and find nothing; closing them is the test's job.
        """
        self._stopping = True
        for hold in self._holds:
            hold.release()
        conns = list(self._conns)
        for conn in conns:
            self._close(conn, 1001, "Emulator stopping")
        if conns:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.finished.wait() for c in conns)), 2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- world ----------------------------------------------------------------------------

    @staticmethod
    def _user_object(user_id: int, name: str, *, bot: bool = False) -> _Json:
        user: _Json = {
            "id": str(user_id),
            "username": name,
            "global_name": None if bot else name.capitalize(),
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        if bot:
            user.update(bot=True, verified=True, mfa_enabled=False, email=None, locale="en-US")
        return user

    def user(self, user_id: int, name: str | None = None, *, bot: bool = False) -> _Json:
        """A User object, remembered for mentions, DMs and members.

        A new user is named ``name`` (default "ada"); for a known one, ``user(id)`` just
        returns it and a ``name`` replaces it.
        """
        if name is not None or user_id not in self._users:
            self._users[user_id] = self._user_object(user_id, name or "ada", bot=bot)
        return copy.deepcopy(self._users[user_id])

    def _known_user(self, user: _Json | int) -> _Json:
        user_id = int(user["id"]) if isinstance(user, dict) else user
        if user_id not in self._users:
            if isinstance(user, dict):
                self._users[user_id] = copy.deepcopy(user)
            else:
                self.user(user_id, f"user{user_id}")
        return self._users[user_id]

    def guild(
        self,
        guild_id: int,
        name: str = "Guild",
        *,
        channels: Sequence[int] | None = None,
        owner_id: int = 1,
    ) -> _Json:
        """A guild the bot is in, with text ``channels`` (default: one, ``guild_id + 2``).

        The @everyone role has id ``guild_id``; the bot's managed role ``guild_id + 1``. Added
        while clients are connected, it arrives as GUILD_CREATE (the bot joined).
        """
        existing = self._guilds.get(guild_id)
        guild = existing or _Guild(guild_id, name, owner_id, _iso())
        if existing is None:
            self._guilds[guild_id] = guild
            self._known_user(owner_id)
            guild.roles[guild_id] = self._role_object(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
            bot_role = self._role_object(
                guild_id + 1, str(self.bot_user["username"]), BOT_ROLE_PERMISSIONS, 1
            )
            bot_role.update(managed=True, tags={"bot_id": str(self.bot_id)})
            guild.roles[guild_id + 1] = bot_role
            guild.members[self.bot_id] = self._member_object([guild_id + 1], guild.joined_at)
            guild.members.setdefault(owner_id, self._member_object([], guild.joined_at))
        for index, channel_id in enumerate(channels if channels is not None else [guild_id + 2]):
            if channel_id not in guild.channels:
                self._add_channel(guild, channel_id, "general" if index == 0 else f"channel-{index}")
                if existing is not None:
                    self._dispatch(
                        "CHANNEL_CREATE", guild.channels[channel_id], guild_id=guild_id, intent=GUILDS
                    )
        if existing is None:
            self._dispatch(
                "GUILD_CREATE", lambda s: self._guild_create(guild, s), guild_id=guild_id, intent=GUILDS
            )
        return self._guild_create(guild, None)

    def text_channel(self, guild_id: int, channel_id: int, name: str = "channel") -> None:
        """Another text channel (CHANNEL_CREATE for connected clients)."""
        guild = self._need_guild(guild_id)
        self._add_channel(guild, channel_id, name)
        self._dispatch("CHANNEL_CREATE", guild.channels[channel_id], guild_id=guild_id, intent=GUILDS)

    def _add_channel(self, guild: _Guild, channel_id: int, name: str) -> None:
        guild.channels[channel_id] = {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild.id),
            "name": name,
            "position": len(guild.channels),
            "permission_overwrites": [],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        self._channel_guild[channel_id] = guild.id

    def role(
        self,
        guild_id: int,
        role_id: int,
        name: str = "role",
        *,
        permissions: int = 0,
        mentionable: bool = False,
    ) -> _Json:
        """A plain role in a guild (for ``member(roles=...)`` and role mentions); GUILD_ROLE_CREATE."""
        guild = self._need_guild(guild_id)
        event = "GUILD_ROLE_UPDATE" if role_id in guild.roles else "GUILD_ROLE_CREATE"
        role = self._role_object(role_id, name, permissions, len(guild.roles))
        role["mentionable"] = mentionable
        guild.roles[role_id] = role
        self._dispatch(event, {"guild_id": str(guild_id), "role": role}, guild_id=guild_id, intent=GUILDS)
        return copy.deepcopy(role)

    @staticmethod
    def _role_object(role_id: int, name: str, permissions: int, position: int) -> _Json:
        return {
            "id": str(role_id),
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }

    @staticmethod
    def _member_object(roles: Sequence[int], joined_at: str) -> _Json:
        return {
            "roles": [str(r) for r in roles],
            "joined_at": joined_at,
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }

    def member(self, guild_id: int, user_id: int, *, permissions: int = 0, roles: Sequence[int] = ()) -> None:
        """Make a user a member with ``roles``; ``permissions`` adds to what @everyone and they grant.

        As on Discord, permissions only come from roles: ``permissions`` is granted through a
        role of the member's own (announced with GUILD_ROLE_CREATE/UPDATE, so discord.py's
        ``Member.guild_permissions`` sees it). Unknown role ids become roles without permissions.
        """
        guild = self._need_guild(guild_id)
        self._known_user(user_id)
        for role_id in roles:
            if role_id not in guild.roles:
                self.role(guild_id, role_id, f"role-{role_id}")
        event = "GUILD_MEMBER_UPDATE" if user_id in guild.members else "GUILD_MEMBER_ADD"
        joined_at = guild.members[user_id]["joined_at"] if user_id in guild.members else _iso()
        guild.members[user_id] = self._member_object(roles, joined_at)
        personal = guild.personal_roles.get(user_id)
        if permissions or personal is not None:
            self._grant(guild, user_id, permissions, replace=True)
        self._dispatch_member(guild, user_id, event)

    def _grant(self, guild: _Guild, user_id: int, permissions: int, *, replace: bool = False) -> None:
        """Give a member ``permissions`` through their personal role."""
        role_id = guild.personal_roles.get(user_id)
        if role_id is None:
            role_id = guild.personal_roles[user_id] = self._ids.next()
            current = 0
        else:
            current = int(guild.roles[role_id]["permissions"])
        value = permissions if replace else current | permissions
        self.role(guild.id, role_id, f"perms-{user_id}", permissions=value)
        member_roles = guild.members[user_id]["roles"]
        if str(role_id) not in member_roles:
            member_roles.append(str(role_id))

    def _dispatch_member(self, guild: _Guild, user_id: int, event: str) -> None:
        data = {**copy.deepcopy(guild.members[user_id]), "user": copy.deepcopy(self._users[user_id])}
        data["guild_id"] = str(guild.id)
        self._dispatch(event, data, guild_id=guild.id, intent=GUILD_MEMBERS)

    def thread(self, guild_id: int, parent_id: int, thread_id: int, name: str = "thread") -> None:
        """A public thread (type 11) under a text channel (THREAD_CREATE for connected clients).

        As on Discord, a thread started from a message has that message's id: give ``thread_id``
        a message of ``parent_id`` and the message carries the thread (``thread``, HAS_THREAD).
        Its messages live under the thread's own id (``user_message(thread_id, ...)``, history).
        """
        guild = self._need_guild(guild_id)
        if parent_id not in guild.channels:
            raise ValueError(f"channel {parent_id} is not a text channel of guild {guild_id}")
        guild.threads[thread_id] = {
            "id": str(thread_id),
            "type": 11,
            "guild_id": str(guild_id),
            "parent_id": str(parent_id),
            "owner_id": str(guild.owner_id),
            "name": name,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(),
                "locked": False,
                "create_timestamp": _iso(),
            },
        }
        self._channel_guild[thread_id] = guild_id
        self._dispatch(
            "THREAD_CREATE",
            {**guild.threads[thread_id], "newly_created": True},
            guild_id=guild_id,
            intent=GUILDS,
        )

    def dm_channel(self, user_id: int) -> int:
        """The DM channel id between the bot and this user (the one POST /users/@me/channels returns)."""
        self._known_user(user_id)
        if user_id not in self._dm_by_user:
            channel_id = self._ids.next()
            self._dm_by_user[user_id] = channel_id
            self._dm_channels[channel_id] = user_id
        return self._dm_by_user[user_id]

    def block_dms(self, user_id: int) -> None:
        """The user no longer accepts DMs from the bot: sends there answer 403 50007."""
        self._blocked_dms.add(user_id)

    def _need_guild(self, guild_id: int) -> _Guild:
        if guild_id not in self._guilds:
            raise ValueError(f"unknown guild {guild_id}; create it with guild()")
        return self._guilds[guild_id]

    def _guild_of_channel(self, channel_id: int) -> int | None:
        """The guild a channel is in; None for a DM; ApiError 10003 for an unknown channel."""
        if channel_id in self._channel_guild:
            return self._channel_guild[channel_id]
        if channel_id in self._dm_channels:
            return None
        raise _not_found(*_UNKNOWN_CHANNEL)

    def _channel_object(self, channel_id: int) -> _Json:
        guild_id = self._guild_of_channel(channel_id)
        if guild_id is None:
            recipient = self._users[self._dm_channels[channel_id]]
            return {
                "id": str(channel_id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [recipient],
            }
        guild = self._guilds[guild_id]
        return copy.deepcopy(guild.channels.get(channel_id) or guild.threads[channel_id])

    def permissions(self, guild_id: int, user_id: int) -> int:
        """A member's guild-level permissions (owner and ADMINISTRATOR get everything)."""
        guild = self._need_guild(guild_id)
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        value = int(guild.roles[guild_id]["permissions"])
        for role_id in guild.members.get(user_id, {}).get("roles", []):
            value |= int(guild.roles.get(int(role_id), {}).get("permissions", 0))
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def overwrite(self, channel_id: int, target_id: int, *, allow: int = 0, deny: int = 0) -> None:
        """Set a permission overwrite on a guild text channel (CHANNEL_UPDATE for connected clients).

        ``target_id`` is a role of the guild (the guild's own id for @everyone, ``guild_id + 1``
        for the bot's managed role) or else a member. ``allow=deny=0`` removes the overwrite.
        Threads have none of their own: they inherit their parent's.
        """
        guild_id = self._guild_of_channel(channel_id)
        if guild_id is None or channel_id not in self._guilds[guild_id].channels:
            raise ValueError(f"channel {channel_id} is not a guild text channel")
        guild = self._guilds[guild_id]
        channel = guild.channels[channel_id]
        kept = [o for o in channel["permission_overwrites"] if o["id"] != str(target_id)]
        if allow or deny:
            kind = 0 if target_id in guild.roles else 1
            if kind == 1:
                self._known_user(target_id)
            kept.append({"id": str(target_id), "type": kind, "allow": str(allow), "deny": str(deny)})
        channel["permission_overwrites"] = kept
        self._dispatch("CHANNEL_UPDATE", channel, guild_id=guild_id, intent=GUILDS)

    def channel_permissions(self, channel_id: int, user_id: int) -> int:
        """A member's permissions in a channel: guild permissions, then overwrites as Discord
        documents them (@everyone, then the member's roles together, then the member), and no
        channel permission at all without VIEW_CHANNEL. Threads use their parent's overwrites;
        a DM allows what a text channel does by default."""
        guild_id = self._guild_of_channel(channel_id)
        if guild_id is None:
            return _TEXT_BASICS
        guild = self._guilds[guild_id]
        value = self.permissions(guild_id, user_id)
        if value & ADMINISTRATOR or user_id == guild.owner_id:
            return ALL_PERMISSIONS
        channel = guild.channels.get(channel_id)
        if channel is None:
            channel = guild.channels[int(guild.threads[channel_id]["parent_id"])]
        roles = {int(r) for r in guild.members.get(user_id, {}).get("roles", [])}
        everyone, by_roles, member = (0, 0), (0, 0), (0, 0)
        for entry in channel["permission_overwrites"]:
            target, allow, deny = int(entry["id"]), int(entry["allow"]), int(entry["deny"])
            if entry["type"] == 0 and target == guild_id:
                everyone = (allow, deny)
            elif entry["type"] == 0 and target in roles:
                by_roles = (by_roles[0] | allow, by_roles[1] | deny)
            elif entry["type"] == 1 and target == user_id:
                member = (allow, deny)
        for allow, deny in (everyone, by_roles, member):
            value = (value & ~deny) | allow
        return value if value & VIEW_CHANNEL else 0

    def _bot_sees(self, channel_id: int) -> bool:
        return bool(self.channel_permissions(channel_id, self.bot_id) & VIEW_CHANNEL)

    def _guild_create(self, guild: _Guild, session: _Session | None) -> _Json:
        """GUILD_CREATE as that session sees it (members only with GUILD_PRESENCES)."""
        everyone = session is None or bool(session.intents & GUILD_PRESENCES)
        members = [
            {**copy.deepcopy(m), "user": copy.deepcopy(self._users[uid])}
            for uid, m in guild.members.items()
            if everyone or uid == self.bot_id
        ]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "system_channel_id": next((str(c) for c in guild.channels), None),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "features": [],
            "roles": copy.deepcopy(list(guild.roles.values())),
            "emojis": [],
            "stickers": [],
            "joined_at": guild.joined_at,
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(guild.members),
            "members": members,
            "channels": copy.deepcopy(list(guild.channels.values())),
            "threads": copy.deepcopy(list(guild.threads.values())),
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "incidents_data": None,
        }

    # -- incoming traffic -----------------------------------------------------------------

    def user_message(
        self,
        channel_id: int,
        author: _Json,
        content: str,
        *,
        guild_id: int | None = None,
        mentions: Sequence[_Json] = (),
        mention_roles: Sequence[int] = (),
        mention_everyone: bool = False,
        reply_to: int | None = None,
        ping_reply: bool = True,
        reference_fetched: bool = True,
    ) -> int:
        """A person writes in a channel, thread or DM; dispatch MESSAGE_CREATE; return its id.

        Mentions are what ``content`` mentions (``<@id>``, ``<@&id>``) plus the explicit ones;
        a reply carries ``message_reference`` and the full ``referenced_message`` and, with
        ``ping_reply`` (the client default), mentions the replied-to author. With
        ``reference_fetched=False`` the reply has no ``referenced_message`` at all, as Discord
        documents for when "the backend did not attempt to fetch the message".
        """
        actual_guild = self._guild_of_channel(channel_id)
        if guild_id is not None and guild_id != actual_guild:
            raise ValueError(f"channel {channel_id} is not in guild {guild_id}")
        author = self._known_user(author)
        author_id = int(author["id"])
        if actual_guild is not None and author_id not in self._guilds[actual_guild].members:
            self.member(actual_guild, author_id)
        user_ids = _ids(_USER_MENTION.findall(content)) + [int(self._known_user(m)["id"]) for m in mentions]
        reference: _Json | None = None
        if reply_to is not None:
            target = self._messages.get(reply_to)
            if target is None or target.deleted:
                raise ValueError(f"no message {reply_to} to reply to")
            reference = self._reference(reply_to)
            if ping_reply:
                user_ids.append(int(target.wire["author"]["id"]))
        for user_id in user_ids:
            self._known_user(user_id)
        role_ids = _unique(_ids(_ROLE_MENTION.findall(content)) + list(mention_roles))
        can_ping_all = actual_guild is not None and bool(
            self.permissions(actual_guild, author_id) & MENTION_EVERYONE
        )
        message_id = self._ids.next()
        wire = self._person_wire(
            message_id,
            channel_id,
            author,
            content,
            user_ids=user_ids,
            role_ids=role_ids,
            mention_everyone=mention_everyone or (can_ping_all and bool(_EVERYONE.search(content))),
            reference=reference,
        )
        self._store(wire, actual_guild, reply_to)
        self._messages[message_id].reference_unfetched = reply_to is not None and not reference_fetched
        self._dispatch_message("MESSAGE_CREATE", message_id)
        return message_id

    def _person_wire(
        self,
        message_id: int,
        channel_id: int,
        author: _Json,
        content: str,
        *,
        user_ids: list[int],
        role_ids: list[int],
        mention_everyone: bool,
        reference: _Json | None,
        embeds: Sequence[_Json] = (),
        edited_timestamp: str | None = None,
    ) -> _Json:
        """A person's message in REST shape (DEFAULT, or REPLY with ``message_reference``)."""
        wire: _Json = {
            "id": str(message_id),
            "type": 19 if reference else 0,
            "channel_id": str(channel_id),
            "author": copy.deepcopy(author),
            "content": content,
            "timestamp": _iso(message_id),
            "edited_timestamp": edited_timestamp,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [copy.deepcopy(self._users[u]) for u in _unique(user_ids)],
            "mention_roles": [str(r) for r in role_ids],
            "attachments": [],
            "embeds": copy.deepcopy(list(embeds)),
            "pinned": False,
            "flags": 0,
            "components": [],
        }
        if reference is not None:
            wire["message_reference"] = reference
        return wire

    def seed_history(self, channel_id: int, messages: Iterable[PastMessage | tuple[Any, ...]]) -> list[int]:
        """Store messages written before now, cheaply and silently; return their ids in order.

        Each is a :class:`PastMessage` or an ``(author, content, at)`` tuple. Its id is the
        snowflake of ``at`` (millisecond precision; messages of one millisecond count up in the
        low 22 bits, in the order given), so history orders them by time and discord.py's
        ``created_at`` is ``at``. Authors (user objects or ids) become members of a guild
        channel's guild; ``<@id>``/``<@&id>`` in the content are mentions; nothing is dispatched
        (the bot was not listening then). Live messages written later still get larger ids.
        """
        guild_id = self._guild_of_channel(channel_id)
        now_ms = int(time.time() * 1000)
        ids: list[int] = []
        for item in messages:
            past = item if isinstance(item, PastMessage) else PastMessage(*item)
            ms = _epoch_ms(past.at)
            if not DISCORD_EPOCH_MS <= ms <= now_ms:
                raise ValueError(f"{past.at!r} is not between Discord's epoch (2015) and now")
            message_id = (ms - DISCORD_EPOCH_MS) << 22
            while message_id in self._messages:
                message_id += 1
            if message_id >> 22 != ms - DISCORD_EPOCH_MS:
                raise ValueError(f"more than {1 << 22} messages at {past.at!r}")
            author = self._known_user(past.author)
            author_id = int(author["id"])
            if guild_id is not None and author_id not in self._guilds[guild_id].members:
                self.member(guild_id, author_id)
            user_ids = _ids(_USER_MENTION.findall(past.content))
            reference = None
            if past.reply_to is not None:
                target = self._messages.get(past.reply_to)
                if target is None or target.deleted or past.reply_to >= message_id:
                    raise ValueError(f"no older message {past.reply_to} to reply to")
                reference = self._reference(past.reply_to)
                user_ids.append(int(target.wire["author"]["id"]))
            for user_id in user_ids:
                self._known_user(user_id)
            edited = None
            if past.edited_at is not None:
                edited_ms = _epoch_ms(past.edited_at)
                if not ms <= edited_ms <= now_ms:
                    raise ValueError(
                        f"edited_at {past.edited_at!r} is not between the message's time and now"
                    )
                edited = dt.datetime.fromtimestamp(edited_ms / 1000, dt.UTC).isoformat()
            wire = self._person_wire(
                message_id,
                channel_id,
                author,
                past.content,
                user_ids=user_ids,
                role_ids=_unique(_ids(_ROLE_MENTION.findall(past.content))),
                mention_everyone=guild_id is not None
                and bool(self.permissions(guild_id, author_id) & MENTION_EVERYONE)
                and bool(_EVERYONE.search(past.content)),
                reference=reference,
                embeds=past.embeds,
                edited_timestamp=edited,
            )
            self._store(wire, guild_id, past.reply_to)
            ids.append(message_id)
        if ids:
            self._ids.at_least(max(ids))
        return ids

    def edit_message(self, message_id: int, content: str, *, embeds: Sequence[_Json] | None = None) -> None:
        """A person edits their message: new ``content`` (and ``embeds`` when given), an
        ``edited_timestamp`` of now, mentions read again from the content (a reply keeps pinging
        its author); MESSAGE_UPDATE carries the full message (``tts`` false, as documented).
        The bot edits its own messages over REST, not with this."""
        stored = self._live_message(message_id)
        wire = stored.wire
        author_id = int(wire["author"]["id"])
        if author_id == self.bot_id:
            raise ValueError(f"message {message_id} is the bot's own; edit it through the REST API")
        new_embeds = list(embeds) if embeds is not None else wire["embeds"]
        if len(content) > MAX_CONTENT or (not content.strip() and not new_embeds and not wire["attachments"]):
            raise ValueError("Discord would refuse that edit (empty, or over 2000 characters)")
        user_ids = _ids(_USER_MENTION.findall(content))
        if stored.reference_id is not None and stored.reference_id in self._messages:
            replied = self._messages[stored.reference_id].wire["author"]["id"]
            user_ids += [int(m["id"]) for m in wire["mentions"] if m["id"] == replied]
        for user_id in user_ids:
            self._known_user(user_id)
        guild_id = stored.guild_id
        can_ping_all = guild_id is not None and bool(self.permissions(guild_id, author_id) & MENTION_EVERYONE)
        says_everyone = bool(_EVERYONE.search(content))
        wire.update(
            content=content,
            edited_timestamp=_iso(),
            mentions=[copy.deepcopy(self._users[u]) for u in _unique(user_ids)],
            mention_roles=[str(r) for r in _unique(_ids(_ROLE_MENTION.findall(content)))],
            mention_everyone=says_everyone and (can_ping_all or wire["mention_everyone"]),
            embeds=copy.deepcopy(new_embeds),
        )
        self._dispatch_message("MESSAGE_UPDATE", message_id)

    def deliver_again(self, message_id: int) -> None:
        """Discord delivers a MESSAGE_CREATE again (at-least-once: a resumed session's replay,
        two sessions of one shard while a replica hands over)."""
        self._live_message(message_id)
        self._dispatch_message("MESSAGE_CREATE", message_id)

    def delete_message(self, message_id: int) -> None:
        """Its author or a moderator deletes a message: MESSAGE_DELETE ``{id, channel_id[, guild_id]}``;
        it leaves history (and a reply to it shows ``referenced_message: null``)."""
        self._live_message(message_id)
        self._delete_message(message_id)

    def bulk_delete(self, channel_id: int, message_ids: Sequence[int]) -> None:
        """A moderator bulk-deletes messages of a guild channel: one MESSAGE_DELETE_BULK
        ``{ids, channel_id, guild_id}``. Discord's Bulk Delete rules hold: 2-100 distinct live
        messages of that channel, none older than two weeks."""
        guild_id = self._guild_of_channel(channel_id)
        if guild_id is None:
            raise ValueError("bulk delete works in guild channels only")
        wanted = _unique(list(message_ids))
        if not 2 <= len(wanted) <= 100:
            raise ValueError("bulk delete takes 2 to 100 distinct messages")
        oldest = _snowflake_for(dt.datetime.now(dt.UTC) - _BULK_DELETE_MAX_AGE)
        for message_id in wanted:
            stored = self._live_message(message_id)
            if int(stored.wire["channel_id"]) != channel_id:
                raise ValueError(f"message {message_id} is not in channel {channel_id}")
            if message_id < oldest:
                raise ValueError(f"message {message_id} is older than two weeks")
        for message_id in wanted:
            self._mark_deleted(message_id)
        if self._bot_sees(channel_id):
            data = {"ids": [str(m) for m in wanted], "channel_id": str(channel_id), "guild_id": str(guild_id)}
            self._dispatch("MESSAGE_DELETE_BULK", data, guild_id=guild_id, intent=GUILD_MESSAGES)

    def _live_message(self, message_id: int) -> _StoredMessage:
        stored = self._messages.get(message_id)
        if stored is None or stored.deleted or stored.ephemeral:
            raise ValueError(f"message {message_id} does not exist")
        return stored

    def slash_command(
        self,
        name: str,
        options: Sequence[_Json] = (),
        *,
        channel_id: int,
        user: _Json,
        guild_id: int | None = None,
        permissions: int = 0,
    ) -> Interaction:
        """A person runs ``/name``; dispatch INTERACTION_CREATE (type 2) and return its handle.

        ``options`` are ``{"name", "value"}`` (``type`` is filled in from the registered
        command, or guessed from the value); user/channel/role options get ``resolved`` data.
        ``permissions`` are granted to the invoking member first (see ``member``).
        """
        actual_guild = self._guild_of_channel(channel_id)
        if guild_id is not None and guild_id != actual_guild:
            raise ValueError(f"channel {channel_id} is not in guild {guild_id}")
        command, command_guild = self._registered(name, actual_guild)
        if command is None and self.strict_commands:
            raise ValueError(
                f"/{name} is not registered (globally or for this guild); sync the command tree first"
            )
        if command is not None and actual_guild is None and command.get("dm_permission") is False:
            raise ValueError(f"/{name} is guild-only")
        user = self._acting_user(user, actual_guild, permissions)
        filled = self._fill_options(list(options), (command or {}).get("options", []), name)
        command_id = int(command["id"]) if command else self._ids.next()
        data: _Json = {"id": str(command_id), "name": name, "type": 1}
        if filled:
            data["options"] = filled
        resolved = self._resolve_options(filled, actual_guild)
        if resolved:
            data["resolved"] = resolved
        if command_guild is not None:
            data["guild_id"] = str(command_guild)
        interaction_id = self._ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(60)
        loop = asyncio.get_running_loop()
        handle = Interaction(
            interaction_id, token, name, channel_id, actual_guild, user, filled, loop.time(), command_id
        )
        return self._dispatch_interaction(handle, data)

    def click_button(
        self,
        message_id: int,
        custom_id: str,
        *,
        user: _Json,
        guild_id: int | None = None,
        permissions: int = 0,
    ) -> Interaction:
        """A person clicks a button on a message; dispatch INTERACTION_CREATE (type 3, MESSAGE_COMPONENT).

        The message must exist and carry an enabled button with this ``custom_id`` (else
        ValueError). ``permissions`` are granted to the clicking member first (see ``member``).
        """
        stored = self._messages.get(message_id)
        if stored is None or stored.deleted:
            raise ValueError(f"message {message_id} does not exist")
        channel_id = int(stored.wire["channel_id"])
        actual_guild = self._guild_of_channel(channel_id)
        if guild_id is not None and guild_id != actual_guild:
            raise ValueError(f"message {message_id} is not in guild {guild_id}")
        buttons = [
            c
            for c in _walk_components(stored.wire.get("components") or [])
            if c.get("type") == 2 and c.get("custom_id") == custom_id
        ]
        if not buttons:
            raise ValueError(f"message {message_id} has no button with custom_id {custom_id!r}")
        if all(b.get("disabled") for b in buttons):
            raise ValueError(f"button {custom_id!r} on message {message_id} is disabled")
        user = self._acting_user(user, actual_guild, permissions)
        interaction_id = self._ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(60)
        handle = Interaction(
            interaction_id,
            token,
            custom_id,
            channel_id,
            actual_guild,
            user,
            [],
            asyncio.get_running_loop().time(),
            0,
            type=3,
            custom_id=custom_id,
            message_id=message_id,
        )
        data: _Json = {"custom_id": custom_id, "component_type": 2}
        return self._dispatch_interaction(handle, data, message=self._rest_message(message_id))

    @staticmethod
    def _check_modal(data: _Json) -> _Json:
        """A modal as Discord accepts it: a title (≤ 45), a custom_id (≤ 100) and 1-5 rows of
        one text input each (label ≤ 45, value ≤ 4000)."""
        title, custom_id, rows = data.get("title"), data.get("custom_id"), data.get("components")
        if not isinstance(title, str) or not 1 <= len(title) <= 45:
            raise _invalid_form(
                ["data", "title"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
            )
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
            raise _invalid_form(
                ["data", "custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        if not isinstance(rows, list) or not 1 <= len(rows) <= 5:
            raise _invalid_form(
                ["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        for i, row in enumerate(rows):
            inputs = row.get("components") if isinstance(row, dict) else None
            if (
                row.get("type") != 1
                or not isinstance(inputs, list)
                or len(inputs) != 1
                or inputs[0].get("type") != 4
            ):
                raise _invalid_form(
                    ["data", "components", i], "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "Invalid row."
                )
            field_ = inputs[0]
            if not 1 <= len(str(field_.get("label", ""))) <= 45:
                raise _invalid_form(
                    ["data", "components", i, "components", 0, "label"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 45 in length.",
                )
            if len(str(field_.get("value") or "")) > 4000:
                raise _too_long(["data", "components", i, "components", 0, "value"], 4000)
        return copy.deepcopy(data)

    def submit_modal(self, opened_by: Interaction, values: dict[str, str]) -> Interaction:
        """The person who got the modal fills it in (``values`` by text input custom_id) and
        submits it: INTERACTION_CREATE type 5, MODAL_SUBMIT, from the clicked message."""
        modal = opened_by.modal
        if modal is None:
            raise ValueError(f"interaction {opened_by.id} opened no modal")
        known = {row["components"][0]["custom_id"] for row in modal["components"]}
        if set(values) - known:
            raise ValueError(f"the modal has no inputs {sorted(set(values) - known)}")
        handle = Interaction(
            self._ids.next(),
            "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(60),
            str(modal["custom_id"]),
            opened_by.channel_id,
            opened_by.guild_id,
            opened_by.user,
            [],
            asyncio.get_running_loop().time(),
            0,
            type=5,
            custom_id=str(modal["custom_id"]),
            message_id=opened_by.message_id,
        )
        data: _Json = {
            "custom_id": modal["custom_id"],
            "components": [
                {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
                for key, value in values.items()
            ],
        }
        message = self._rest_message(opened_by.message_id) if opened_by.message_id is not None else None
        return self._dispatch_interaction(handle, data, message=message)

    def _acting_user(self, user: _Json, guild_id: int | None, permissions: int) -> _Json:
        """The user behind an interaction; in a guild, made a member holding ``permissions``."""
        user = self._known_user(user)
        user_id = int(user["id"])
        if guild_id is not None:
            guild = self._guilds[guild_id]
            if user_id not in guild.members:
                self.member(guild_id, user_id)
            if permissions and permissions & ~self.permissions(guild_id, user_id):
                self._grant(guild, user_id, permissions)
                self._dispatch_member(guild, user_id, "GUILD_MEMBER_UPDATE")
        return user

    def _dispatch_interaction(
        self, handle: Interaction, data: _Json, *, message: _Json | None = None
    ) -> Interaction:
        channel_id, actual_guild, user = handle.channel_id, handle.guild_id, handle.user
        payload: _Json = {
            "id": str(handle.id),
            "application_id": str(self.application_id),
            "type": handle.type,
            "data": data,
            "channel_id": str(channel_id),
            "channel": self._channel_object(channel_id),
            "token": handle.token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if message is not None:
            payload["message"] = message
        if actual_guild is not None:
            guild = self._guilds[actual_guild]
            user_id = int(user["id"])
            member = copy.deepcopy(guild.members[user_id])
            member["user"] = copy.deepcopy(user)
            member["permissions"] = str(self.permissions(actual_guild, user_id))
            payload.update(
                guild_id=str(actual_guild),
                guild={"id": str(actual_guild), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member,
                app_permissions=str(self.permissions(actual_guild, self.bot_id)),
                authorizing_integration_owners={"0": str(actual_guild)},
                context=0,
            )
            payload["channel"]["permissions"] = member["permissions"]
        else:
            payload.update(
                user=copy.deepcopy(user),
                app_permissions=str(_TEXT_BASICS),
                authorizing_integration_owners={"0": "0"},  # guild install, used in the bot's DM
                context=1,
            )
        self._interactions[handle.id] = handle
        self._by_token[handle.token] = handle
        self._dispatch("INTERACTION_CREATE", payload, guild_id=actual_guild)
        return handle

    def _registered(self, name: str, guild_id: int | None) -> tuple[_Json | None, int | None]:
        if guild_id is not None:
            for command in self.guild_commands.get(guild_id, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return command, guild_id
        for command in self.global_commands:
            if command["name"] == name and command.get("type", 1) == 1:
                return command, None
        return None, None

    def _fill_options(self, options: list[_Json], defined: list[_Json], where: str) -> list[_Json]:
        """Give options their registered type (stringify snowflakes) and check them against it."""
        by_name = {d["name"]: d for d in defined}
        filled = []
        for option in options:
            option = copy.deepcopy(option)
            spec = by_name.get(option["name"])
            if spec is None and defined:
                raise ValueError(f"/{where} has no option {option['name']!r}")
            if "type" not in option:
                if spec is not None:
                    option["type"] = spec["type"]
                else:
                    option["type"] = _OPTION_TYPES.get(type(option.get("value")), 3)
            if option["type"] in (1, 2):
                option["options"] = self._fill_options(
                    option.get("options", []), (spec or {}).get("options", []), f"{where} {option['name']}"
                )
            elif option["type"] in _SNOWFLAKE_OPTIONS:
                option["value"] = str(option["value"])
            filled.append(option)
        given = {o["name"] for o in options}
        if any(d.get("type") in (1, 2) for d in defined):
            # a client can only run one of a command's subcommands, and must pick one
            if len(filled) != 1 or filled[0]["type"] not in (1, 2):
                raise ValueError(f"/{where} must be run as exactly one of its subcommands")
            return filled
        missing = [d["name"] for d in defined if d.get("required") and d["name"] not in given]
        if missing:
            raise ValueError(f"/{where} misses required options {missing}")
        return filled

    def _resolve_options(self, options: list[_Json], guild_id: int | None) -> _Json:
        resolved: dict[str, _Json] = {}
        for option in options:
            if option["type"] in (1, 2):
                for kind, found in self._resolve_options(option.get("options", []), guild_id).items():
                    resolved.setdefault(kind, {}).update(found)
                continue
            value = str(option.get("value"))
            if option["type"] in (6, 9) and value.isdigit() and int(value) in self._users:
                resolved.setdefault("users", {})[value] = copy.deepcopy(self._users[int(value)])
                if guild_id is not None and int(value) in self._guilds[guild_id].members:
                    member = copy.deepcopy(self._guilds[guild_id].members[int(value)])
                    member["permissions"] = str(self.permissions(guild_id, int(value)))
                    resolved.setdefault("members", {})[value] = member
            if option["type"] in (8, 9) and guild_id is not None and value.isdigit():
                role = self._guilds[guild_id].roles.get(int(value))
                if role is not None:
                    resolved.setdefault("roles", {})[value] = copy.deepcopy(role)
            if option["type"] == 7 and value.isdigit():
                with contextlib.suppress(ApiError):
                    channel = self._channel_object(int(value))
                    channel["permissions"] = str(ALL_PERMISSIONS)
                    resolved.setdefault("channels", {})[value] = channel
        return resolved

    # -- observation ----------------------------------------------------------------------

    def messages_in(self, channel_id: int) -> list[BotMessage]:
        """Messages the bot created in a channel (REST and interactions), not deleted, oldest first."""
        found = [m for m in self._bot_messages.values() if m.channel_id == channel_id and not m.deleted]
        return sorted(found, key=lambda m: m.id)

    def bot_message(self, message_id: int) -> BotMessage | None:
        return self._bot_messages.get(message_id)

    def message(self, message_id: int) -> _Json | None:
        """Any stored message (REST shape, with ``referenced_message``), or None once deleted."""
        stored = self._messages.get(message_id)
        return None if stored is None or stored.deleted else self._rest_message(message_id)

    def interaction_response(self, interaction: Interaction | int) -> BotMessage | None:
        """The original response message (a deferral, filled in by later edits or the first follow-up)."""
        handle = self._handle(interaction)
        return None if handle.original_id is None else self._bot_messages.get(handle.original_id)

    def interaction_callbacks(self, interaction: Interaction | int) -> list[_Json]:
        """Callback bodies the bot posted for this interaction (accepted or not)."""
        return copy.deepcopy(self._handle(interaction).callbacks)

    def followups(self, interaction: Interaction | int) -> list[BotMessage]:
        """Follow-up messages that became messages of their own."""
        return [self._bot_messages[m] for m in self._handle(interaction).followup_ids]

    def throttled(self, path_regex: str | None = None) -> list[Call]:
        """Requests answered 429 (window exceeded or injected), optionally only paths matching
        ``path_regex`` (searched after /api/v10): a client that paces itself gets none."""
        pattern = re.compile(path_regex) if path_regex is not None else None
        return [c for c in self.calls if c.status == 429 and (pattern is None or pattern.search(c.path))]

    def history(self, channel_id: int) -> list[_Json]:
        """Every live message of a channel or thread, oldest first, as the app reads it over REST."""
        return [self._app_message(m) for m in self._live_ids(channel_id)]

    def _handle(self, interaction: Interaction | int) -> Interaction:
        return self._interactions[interaction if isinstance(interaction, int) else interaction.id]

    def connected(self) -> list[tuple[int, int]]:
        """``(shard_id, shard_count)`` of every identified, connected gateway session."""
        return sorted(s.shard for s in self._sessions.values() if s.conn is not None and not s.ended)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the predicate, not for I/O
    ) -> None:
        """Poll every 10 ms until ``predicate()`` is true; fail with recent calls and messages if never."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                recent = ", ".join(
                    f"{c.method} {c.path} {c.status}{f' ({c.error_code})' if c.error_code else ''}"
                    for c in self.calls[-10:]
                )
                sent = sorted(self._bot_messages.values(), key=lambda m: m.id)[-3:]
                texts = "; ".join(f"{m.channel_id}/{m.id}: {m.content[:60]!r}" for m in sent)
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise AssertionError(
                    f"{name} still false after {timeout}s; last calls: [{recent}]; "
                    f"last bot messages: [{texts}]; connected shards: {self.connected()}"
                )
            await asyncio.sleep(0.01)

    # -- faults and limits ----------------------------------------------------------------

    def hold(self, method: str, path_regex: str, *, after: int = 0) -> Hold:
        """Let ``after`` matching requests through, then keep the next ones unanswered until
        the returned hold is released (``path_regex``: searched after /api/v10)."""
        held = Hold(method.upper(), re.compile(path_regex), after)
        self._holds.append(held)
        return held

    def rate_limit_next(
        self, method: str, path_regex: str, *, retry_after: float = 1.0, times: int = 1, global_: bool = False
    ) -> None:
        """Answer the next ``times`` matching requests 429 (``path_regex``: searched after /api/v10)."""
        if times > 0:
            self._limits.append(
                _InjectedLimit(method.upper(), re.compile(path_regex), retry_after, times, global_)
            )

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        code: int,
        message: str,
        errors: _Json | None = None,
        times: int = 1,
    ) -> None:
        """Refuse the next ``times`` matching requests with this Discord error (e.g. 403 50013)."""
        if times > 0:
            error = ApiError(status, code, message, errors)
            self._faults.append(_InjectedFault(method.upper(), re.compile(path_regex), error, times))

    def drop_gateway(self, *, shard_id: int | None = None, code: int = 4000, resumable: bool = True) -> None:
        """Close gateway sockets (4000: discord.py reconnects and RESUMEs unless ``resumable`` is off)."""
        for session in self._live_sessions(shard_id):
            if not resumable:
                session.ended = True
            if session.conn is not None:
                self._close(session.conn, code, "Dropped by the emulator")

    def request_reconnect(self, *, shard_id: int | None = None) -> None:
        """Send op 7 RECONNECT: the client closes and RESUMEs."""
        for session in self._live_sessions(shard_id):
            if session.conn is not None:
                session.conn.send(7, None)

    def invalidate_session(self, *, shard_id: int | None = None, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION (a fresh IDENTIFY follows unless ``resumable``)."""
        for session in self._live_sessions(shard_id):
            session.ended = not resumable
            if session.conn is not None:
                session.conn.send(9, resumable)

    def _live_sessions(self, shard_id: int | None) -> list[_Session]:
        return [
            s for s in self._sessions.values() if not s.ended and (shard_id is None or s.shard[0] == shard_id)
        ]

    # -- gateway --------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="stopping")
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        conn = _Conn(ws)
        self._conns.append(conn)
        writer = asyncio.create_task(self._write(conn))
        if request.query.get("v") != "10":
            self._close(conn, 4012, "Invalid API version")
        elif request.query.get("encoding", "json") != "json":
            self._close(conn, 4002, "Error while decoding payload.")
        else:
            conn.send(
                10, {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ['["discord-emulator"]']}
            )
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self._on_frame(conn, frame.data)
                elif frame.type == aiohttp.WSMsgType.BINARY:
                    self._close(conn, 4002, "Error while decoding payload.")
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                # A client that closes with 1000/1001 ends its session (no RESUME after that).
                if not conn.server_closing and ws.close_code in (1000, 1001):
                    session.ended = True
            conn.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
            self._conns.remove(conn)
            conn.finished.set()
        return ws

    async def _write(self, conn: _Conn) -> None:
        """Send queued frames in order, so synchronous test calls can dispatch events."""
        while True:
            item = await conn.outbox.get()
            if item is None:
                return
            if isinstance(item, _Close):
                conn.server_closing = True
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=item.code, message=item.reason.encode())
                return
            try:
                await conn.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return

    def _close(self, conn: _Conn, code: int, reason: str) -> None:
        self.gateway_closes.append((code, reason))
        conn.close(code, reason)

    def _on_frame(self, conn: _Conn, text: str) -> None:
        try:
            payload = json.loads(text)
            op = payload["op"]
            data = payload.get("d")
        except (ValueError, KeyError, TypeError):
            self._close(conn, 4002, "Error while decoding payload.")
            return
        if op == 1:
            self.heartbeats += 1
            if self.ack_heartbeats:
                self.heartbeat_acks += 1
                conn.send(11, None)
        elif op == 2:
            self._identify(conn, data)
        elif op == 6:
            self._resume(conn, data)
        elif conn.session is None:
            self._close(conn, 4003, "Not authenticated.")
        elif op == 3:
            self.presence_updates.append(copy.deepcopy(data))
        elif op == 4:
            pass  # voice state: no voice here
        elif op == 8:
            self._request_members(conn.session, data)
        else:
            self._close(conn, 4001, "Unknown opcode.")

    def _identify(self, conn: _Conn, data: Any) -> None:
        if not isinstance(data, dict):
            self._close(conn, 4002, "Error while decoding payload.")
            return
        self.identifies.append(copy.deepcopy(data))
        if conn.session is not None:
            self._close(conn, 4005, "Already authenticated.")
            return
        if data.get("token") != self.token:
            self._close(conn, 4004, "Authentication failed.")
            return
        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents & ~ALL_INTENTS:
            self._close(conn, 4013, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            self._close(conn, 4014, "Disallowed intent(s).")
            return
        shard = data.get("shard", [0, 1])
        if (
            not isinstance(shard, list)
            or len(shard) != 2
            or not all(isinstance(x, int) for x in shard)
            or shard[1] < 1
            or not 0 <= shard[0] < shard[1]
        ):
            self._close(conn, 4010, "Invalid shard.")
            return
        session = _Session(secrets.token_hex(16), (shard[0], shard[1]), intents, conn=conn)
        self._sessions[session.id] = session
        conn.session = session
        guilds = [g for g in self._guilds.values() if session.serves(g.id)]
        ready: _Json = {
            "v": 10,
            "user": copy.deepcopy(self.bot_user),
            "user_settings": {},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ['["discord-emulator"]'],
        }
        if "shard" in data:
            ready["shard"] = list(session.shard)
        session.dispatch("READY", ready)
        for guild in guilds:
            session.dispatch("GUILD_CREATE", self._guild_create(guild, session))

    def _resume(self, conn: _Conn, data: Any) -> None:
        if not isinstance(data, dict):
            self._close(conn, 4002, "Error while decoding payload.")
            return
        self.resumes.append(copy.deepcopy(data))
        if data.get("token") != self.token:
            self._close(conn, 4004, "Authentication failed.")
            return
        session = self._sessions.get(str(data.get("session_id")))
        if session is None or session.ended or session.conn is not None:
            conn.send(9, False)
            return
        seq = data.get("seq") or 0
        if seq > session.seq:
            self._close(conn, 4007, "Invalid seq.")
            return
        session.conn = conn
        conn.session = session
        for number, text in session.log:
            if number > seq:
                conn.outbox.put_nowait(text)
        session.dispatch("RESUMED", {"_trace": ['["discord-emulator"]']})

    def _request_members(self, session: _Session, data: Any) -> None:
        """Answer op 8 with one GUILD_MEMBERS_CHUNK per guild (what discord.py's chunker waits for)."""
        if not isinstance(data, dict):
            return
        raw = data.get("guild_id")
        for guild_id in _ids(raw if isinstance(raw, list) else [raw]):
            guild = self._guilds.get(guild_id)
            if guild is None:
                continue
            wanted = _ids(data.get("user_ids"))
            query = str(data.get("query") or "").lower()
            limit = int(data.get("limit") or 0)
            found = [
                {**copy.deepcopy(m), "user": copy.deepcopy(self._users[uid])}
                for uid, m in guild.members.items()
                if (uid in wanted if wanted else str(self._users[uid]["username"]).lower().startswith(query))
            ]
            if limit and not wanted:
                found = found[:limit]
            chunk: _Json = {
                "guild_id": str(guild_id),
                "members": found,
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [str(u) for u in wanted if u not in guild.members],
            }
            if data.get("nonce") is not None:
                chunk["nonce"] = data["nonce"]
            session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def _application_flags(self) -> int:
        return sum(flag for intent, flag in _APP_FLAG_FOR_INTENT.items() if self.privileged_intents & intent)

    def _dispatch(
        self,
        event: str,
        data: _Json | Callable[[_Session], _Json | None],
        *,
        guild_id: int | None,
        intent: int = 0,
    ) -> None:
        """Send an event to every live session whose shard owns ``guild_id`` and that has ``intent``."""
        for session in list(self._sessions.values()):
            if session.ended or not session.serves(guild_id) or (intent and not session.intents & intent):
                continue
            payload = data(session) if callable(data) else _json_copy(data)
            if payload is not None:
                session.dispatch(event, payload)

    def _dispatch_message(self, event: str, message_id: int) -> None:
        """MESSAGE_CREATE/UPDATE (both carry the full message) to sessions that may see it."""
        stored = self._messages[message_id]
        if stored.guild_id is not None and not self._bot_sees(int(stored.wire["channel_id"])):
            return
        intent = GUILD_MESSAGES if stored.guild_id is not None else DIRECT_MESSAGES

        def payload(session: _Session) -> _Json:
            wire = self._gateway_message(message_id, session)
            if event == "MESSAGE_UPDATE":
                wire["tts"] = False  # documented: always false in updates
            return wire

        self._dispatch(event, payload, guild_id=stored.guild_id, intent=intent)

    def _app_has_content(self) -> bool:
        """Whether the application is approved for (and has switched on) MESSAGE_CONTENT."""
        return bool(self.privileged_intents & MESSAGE_CONTENT)

    def _gateway_message(self, message_id: int, session: _Session) -> _Json:
        """A message as a session sees it: guild_id and members added, content hidden without the intent."""
        stored = self._messages[message_id]
        wire = self._rest_message(message_id)
        if stored.guild_id is not None:
            guild = self._guilds[stored.guild_id]
            wire["guild_id"] = str(stored.guild_id)
            author_id = int(wire["author"]["id"])
            if "webhook_id" not in wire and author_id in guild.members:
                wire["member"] = copy.deepcopy(guild.members[author_id])
            for mention in wire["mentions"]:
                if int(mention["id"]) in guild.members:
                    mention["member"] = copy.deepcopy(guild.members[int(mention["id"])])
        sees_content = bool(session.intents & MESSAGE_CONTENT) and self._app_has_content()
        self._gate_content(wire, stored.guild_id, sees_content)
        return wire

    def _app_message(self, message_id: int) -> _Json:
        """A message as the REST API shows it to the app: content only with MESSAGE_CONTENT approved
        (what IDENTIFY asked for does not matter over HTTP)."""
        wire = self._rest_message(message_id)
        self._gate_content(wire, self._messages[message_id].guild_id, self._app_has_content())
        return wire

    def _gate_content(self, wire: _Json, guild_id: int | None, sees_content: bool) -> None:
        """Empty the content fields of a guild message (and of the one it replies to) unless exempt."""
        if sees_content or guild_id is None:
            return
        referenced = wire.get("referenced_message")
        if not self._content_exempt(wire, guild_id):
            self._hide_content(wire)
        if isinstance(referenced, dict) and not self._content_exempt(referenced, guild_id):
            self._hide_content(referenced)

    def _content_exempt(self, wire: _Json, guild_id: int) -> bool:
        """Discord's documented exceptions to MESSAGE_CONTENT for a guild message.

        The bot's own messages, messages that @mention it, and replies that ping it, except
        replies to an interaction response (those need an explicit mention).
        """
        if int(wire["author"]["id"]) == self.bot_id:
            return True
        content = str(wire.get("content") or "")
        if f"<@{self.bot_id}>" in content or f"<@!{self.bot_id}>" in content:
            return True
        if self.role_mention_reveals_content and str(guild_id + 1) in wire.get("mention_roles", []):
            return True
        if not any(int(m["id"]) == self.bot_id for m in wire["mentions"]):
            return False
        referenced = wire.get("referenced_message")
        if isinstance(referenced, dict) and int(referenced["author"]["id"]) == self.bot_id:
            return "interaction_metadata" not in referenced
        return True

    @staticmethod
    def _hide_content(wire: _Json) -> None:
        wire.update(content="", embeds=[], attachments=[], components=[])
        wire.pop("poll", None)

    # -- messages -------------------------------------------------------------------------

    def _store(
        self, wire: _Json, guild_id: int | None, reference_id: int | None, *, ephemeral: bool = False
    ) -> None:
        message_id = int(wire["id"])
        self._messages[message_id] = _StoredMessage(wire, guild_id, reference_id, ephemeral)
        channel_id = int(wire["channel_id"])
        if ephemeral:
            return
        bisect.insort(self._by_channel.setdefault(channel_id, []), message_id)
        if guild_id is not None:
            guild = self._guilds[guild_id]
            channel = guild.channels.get(channel_id) or guild.threads.get(channel_id)
            if channel is not None:
                last = int(channel["last_message_id"] or 0)
                channel["last_message_id"] = str(max(last, message_id))
                if channel_id in guild.threads:
                    wire["position"] = channel["total_message_sent"]  # approximate, as documented
                    channel["message_count"] += 1
                    channel["total_message_sent"] += 1

    def _reference(self, message_id: int) -> _Json:
        target = self._messages[message_id]
        reference: _Json = {"type": 0, "message_id": str(message_id), "channel_id": target.wire["channel_id"]}
        if target.guild_id is not None:
            reference["guild_id"] = str(target.guild_id)
        return reference

    def _rest_message(self, message_id: int) -> _Json:
        stored = self._messages[message_id]
        wire: _Json = _json_copy(stored.wire)
        if stored.reference_id is not None and not stored.reference_unfetched:
            target = self._messages.get(stored.reference_id)
            alive = target is not None and not target.deleted
            wire["referenced_message"] = copy.deepcopy(target.wire) if target is not None and alive else None
        if stored.guild_id is not None:
            thread = self._guilds[stored.guild_id].threads.get(message_id)
            if thread is not None and thread["parent_id"] == wire["channel_id"]:
                wire["thread"] = copy.deepcopy(thread)  # the thread started from this message
                wire["flags"] |= HAS_THREAD
        return wire

    def _channel_message(self, channel_id: int, message_id: int) -> _StoredMessage:
        stored = self._messages.get(message_id)
        if (
            stored is None
            or stored.deleted
            or stored.ephemeral
            or int(stored.wire["channel_id"]) != channel_id
        ):
            raise _not_found(*_UNKNOWN_MESSAGE)
        return stored

    def _check_body(
        self, body: Any, prefix: Sequence[str | int] = (), *, files: int = 0, partial: bool = False
    ) -> _Json:
        """Validate a message body like Discord (field errors first, then emptiness)."""
        if not isinstance(body, dict):
            raise ApiError(400, 50109, "The request body contains invalid JSON.")
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            raise _invalid_form(
                [*prefix, "content"], "STRING_TYPE_CONVERT", "Could not interpret value as string."
            )
        if content is not None and len(content) > MAX_CONTENT:
            raise _too_long([*prefix, "content"], MAX_CONTENT)
        embeds = body.get("embeds") or []
        if len(embeds) > 10:
            raise _too_long([*prefix, "embeds"], 10)
        for index, embed in enumerate(embeds):
            for key, limit in (("title", 256), ("description", 4096)):
                if len(str(embed.get(key) or "")) > limit:
                    raise _too_long([*prefix, "embeds", index, key], limit)
        allowed = body.get("allowed_mentions")
        if isinstance(allowed, dict):
            parse = allowed.get("parse") or []
            for kind in ("users", "roles"):
                if kind in parse and allowed.get(kind):
                    raise _invalid_form(
                        [*prefix, "allowed_mentions"],
                        "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                        f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
                    )
        if not partial:
            empty = not (content or "").strip() and not embeds and not files
            if empty and not body.get("sticker_ids") and not body.get("components") and not body.get("poll"):
                raise ApiError(400, 50006, "Cannot send an empty message")
        return body

    def _pings(
        self, body: _Json, guild_id: int | None, reply_author: int | None
    ) -> tuple[list[int], list[int], bool]:
        """Who Discord notifies for a new bot message, after ``allowed_mentions``."""
        content = str(body.get("content") or "")
        allowed = body.get("allowed_mentions")
        if isinstance(allowed, dict):
            parse = set(allowed.get("parse") or [])
            listed_users = set(_ids(allowed.get("users")))
            listed_roles = set(_ids(allowed.get("roles")))
            replied = bool(allowed.get("replied_user", False))
        else:
            parse, listed_users, listed_roles, replied = {"users", "roles", "everyone"}, set(), set(), True
        users = [u for u in _ids(_USER_MENTION.findall(content)) if "users" in parse or u in listed_users]
        if reply_author is not None and replied and reply_author != self.bot_id:
            users.append(reply_author)
        users = [u for u in _unique(users) if u in self._users]
        roles: list[int] = []
        everyone = False
        if guild_id is not None:
            guild = self._guilds[guild_id]
            may_ping_all = bool(self.permissions(guild_id, self.bot_id) & MENTION_EVERYONE)
            for role_id in _unique(_ids(_ROLE_MENTION.findall(content))):
                role = guild.roles.get(role_id)
                wanted = "roles" in parse or role_id in listed_roles
                if role is not None and wanted and (role["mentionable"] or may_ping_all):
                    roles.append(role_id)
            everyone = bool(_EVERYONE.search(content)) and "everyone" in parse and may_ping_all
        return users, roles, everyone

    def _create_bot_message(
        self,
        channel_id: int,
        body: _Json,
        *,
        files: Sequence[tuple[str, int, str]] = (),
        interaction: Interaction | None = None,
        loading: bool = False,
        reference_id: int | None = None,
        followup_of: int | None = None,
    ) -> BotMessage:
        guild_id = self._guild_of_channel(channel_id)
        message_id = self._ids.next()
        allowed_flags = _WEBHOOK_FLAGS if interaction is not None else _SENDABLE_FLAGS
        flags = int(body.get("flags") or 0) & allowed_flags
        if loading:
            flags |= LOADING
        reply_author = None
        if reference_id is not None:
            reply_author = int(self._messages[reference_id].wire["author"]["id"])
        users, roles, everyone = ([], [], False) if loading else self._pings(body, guild_id, reply_author)
        content = "" if loading else str(body.get("content") or "")
        attachments = [self._attachment(channel_id, name, size, kind) for name, size, kind in files]
        wire: _Json = {
            "id": str(message_id),
            "type": 0,
            "channel_id": str(channel_id),
            "author": copy.deepcopy(self.bot_user),
            "content": content,
            "timestamp": _iso(message_id),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": everyone,
            "mentions": [copy.deepcopy(self._users[u]) for u in users],
            "mention_roles": [str(r) for r in roles],
            "attachments": attachments,
            "embeds": copy.deepcopy(body.get("embeds") or []),
            "pinned": False,
            "flags": flags,
            "components": copy.deepcopy(body.get("components") or []),
        }
        if body.get("nonce") is not None:
            wire["nonce"] = body["nonce"]
        if reference_id is not None:
            wire["type"] = 19
            wire["message_reference"] = self._reference(reference_id)
        if interaction is not None:
            wire["type"] = 19 if reference_id is not None else 20
            wire["webhook_id"] = str(self.application_id)
            wire["application_id"] = str(self.application_id)
            metadata: _Json = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": copy.deepcopy(interaction.user),
                "authorizing_integration_owners": {"0": str(interaction.guild_id or 0)},
            }
            if interaction.type == 2:
                metadata.update(name=interaction.name, command_type=1)
                wire["interaction"] = {
                    "id": str(interaction.id),
                    "type": interaction.type,
                    "name": interaction.name,
                    "user": copy.deepcopy(interaction.user),
                }
            else:
                metadata["interacted_message_id"] = str(interaction.message_id)
            if followup_of is not None:
                metadata["original_response_message_id"] = str(followup_of)
            wire["interaction_metadata"] = metadata
        ephemeral = bool(flags & EPHEMERAL)
        self._store(wire, guild_id, reference_id, ephemeral=ephemeral)
        message = BotMessage(
            id=message_id,
            channel_id=channel_id,
            content=content,
            guild_id=guild_id,
            history=[] if loading else [content],
            allowed_mentions=copy.deepcopy(body.get("allowed_mentions")),
            message_reference=copy.deepcopy(body.get("message_reference")),
            interaction_token=interaction.token if interaction is not None else None,
            flags=flags,
            embeds=copy.deepcopy(wire["embeds"]),
            components=copy.deepcopy(wire["components"]),
            attachments=[name for name, _, _ in files],
            pinged_users=users,
            pinged_roles=roles,
            pinged_everyone=everyone,
        )
        self._bot_messages[message_id] = message
        if self.echo_bot_messages and not ephemeral:
            self._dispatch_message("MESSAGE_CREATE", message_id)
        return message

    def _attachment(self, channel_id: int, name: str, size: int, kind: str) -> _Json:
        attachment_id = self._ids.next()
        url = f"{self.url}/attachments/{channel_id}/{attachment_id}/{name}"
        return {
            "id": str(attachment_id),
            "filename": name,
            "size": size,
            "url": url,
            "proxy_url": url,
            "content_type": kind,
        }

    def _edit_bot_message(self, message_id: int, body: Any, prefix: Sequence[str | int] = ()) -> _Json:
        """PATCH semantics: only fields present change; the result must not be empty."""
        body = self._check_body(body, prefix, partial=True)
        stored = self._messages[message_id]
        wire = stored.wire
        if int(wire["author"]["id"]) != self.bot_id and ("content" in body or "embeds" in body):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        content = str(body["content"] or "") if "content" in body else str(wire["content"])
        embeds = (body.get("embeds") or []) if "embeds" in body else wire["embeds"]
        components = (body.get("components") or []) if "components" in body else wire["components"]
        has_files = bool(wire["attachments"] or body.get("attachments"))
        if not content.strip() and not embeds and not components and not has_files:
            raise ApiError(400, 50006, "Cannot send an empty message")
        was_loading = bool(wire["flags"] & LOADING)
        wire["content"] = content
        wire["embeds"] = copy.deepcopy(embeds)
        if "components" in body:
            wire["components"] = copy.deepcopy(body["components"] or [])
        if "flags" in body and body["flags"] is not None:
            wire["flags"] = (wire["flags"] & EPHEMERAL) | (int(body["flags"]) & SUPPRESS_EMBEDS)
        wire["flags"] &= ~LOADING
        if not was_loading:  # filling in a deferral does not show as "(edited)"
            wire["edited_timestamp"] = _iso()
        message = self._bot_messages.get(message_id)
        if message is not None:
            message.content = content
            message.embeds = copy.deepcopy(wire["embeds"])
            message.components = copy.deepcopy(wire["components"])
            message.flags = wire["flags"]
            message.edits += 1
            message.history.append(content)
            if "allowed_mentions" in body:
                message.allowed_mentions = copy.deepcopy(body["allowed_mentions"])
        if self.echo_bot_messages and not stored.ephemeral:
            self._dispatch_message("MESSAGE_UPDATE", message_id)
        return self._rest_message(message_id)

    def _mark_deleted(self, message_id: int) -> None:
        self._messages[message_id].deleted = True
        if message_id in self._bot_messages:
            self._bot_messages[message_id].deleted = True

    def _delete_message(self, message_id: int) -> None:
        stored = self._messages[message_id]
        self._mark_deleted(message_id)
        visible = stored.guild_id is None or self._bot_sees(int(stored.wire["channel_id"]))
        if not stored.ephemeral and visible:
            data: _Json = {"id": str(message_id), "channel_id": stored.wire["channel_id"]}
            if stored.guild_id is not None:
                data["guild_id"] = str(stored.guild_id)
            intent = GUILD_MESSAGES if stored.guild_id is not None else DIRECT_MESSAGES
            self._dispatch("MESSAGE_DELETE", data, guild_id=stored.guild_id, intent=intent)

    # -- REST plumbing --------------------------------------------------------------------

    def _add_routes(self) -> None:
        def add(method: str, template: str, handler: _Handler, *, auth: bool = True) -> None:
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            bucket = hashlib.sha1(f"{method} {template}".encode()).hexdigest()[:32]
            self._routes.append(_Route(method, re.compile(pattern), template, handler, auth, bucket))

        add("GET", "/users/@me", self._get_me)
        add("POST", "/users/@me/channels", self._create_dm)
        add("GET", "/users/{user_id}", self._get_user)
        add("GET", "/oauth2/applications/@me", self._get_application)
        add("GET", "/applications/@me", self._get_application)
        add("GET", "/gateway", self._get_gateway, auth=False)
        add("GET", "/gateway/bot", self._get_gateway_bot)
        add("GET", "/guilds/{guild_id}", self._get_guild)
        add("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member)
        add("GET", "/channels/{channel_id}", self._get_channel)
        add("GET", "/channels/{channel_id}/messages", self._get_messages)
        add("POST", "/channels/{channel_id}/messages", self._post_message)
        add("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message)
        add("PATCH", "/channels/{channel_id}/messages/{message_id}", self._patch_message)
        add("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_channel_message)
        add("POST", "/channels/{channel_id}/typing", self._typing)
        add("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, auth=False)
        add("POST", "/webhooks/{application_id}/{token}", self._followup, auth=False)
        for method in ("GET", "PATCH", "DELETE"):
            add(
                method,
                "/webhooks/{application_id}/{token}/messages/{message_id}",
                self._webhook_message,
                auth=False,
            )
        for base in ("/applications/{application_id}", "/applications/{application_id}/guilds/{guild_id}"):
            add("GET", base + "/commands", self._get_commands)
            add("PUT", base + "/commands", self._put_commands)
            add("POST", base + "/commands", self._post_command)
            add("GET", base + "/commands/{command_id}", self._command)
            add("PATCH", base + "/commands/{command_id}", self._command)
            add("DELETE", base + "/commands/{command_id}", self._command)

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        path_matched = False
        for route in self._routes:
            found = route.regex.fullmatch(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict()
            path_matched = True
        if path_matched:
            raise ApiError(405, 0, "405: Method Not Allowed")
        raise ApiError(404, 0, "404: Not Found")

    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, int, str]], bool]:
        """The JSON body (``payload_json`` of a multipart form) and attached files; flag bad JSON."""
        files: list[tuple[str, int, str]] = []
        if not request.body_exists:
            return None, files, False
        if request.content_type == "multipart/form-data":
            payload: Any = None
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                raw = await part.read()
                if part.name == "payload_json":
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        return None, files, True
                elif part.filename:
                    kind = part.headers.get("Content-Type", "application/octet-stream")
                    files.append((part.filename, len(raw), kind))
            return payload, files, False
        raw = await request.read()
        if not raw:
            return None, files, False
        try:
            return json.loads(raw), files, False
        except ValueError:
            return None, files, True

    async def _api(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="stopping")
        loop = asyncio.get_running_loop()
        path = "/" + request.match_info["tail"]
        body, files, bad_json = await self._read_body(request)
        call = Call(
            request.method, path, body, loop.time(), query=dict(request.query), files=[f[0] for f in files]
        )
        self.calls.append(call)
        for hold in self._holds:
            if hold.matches(request.method, path):
                if hold.passes > 0:
                    hold.passes -= 1
                    continue
                hold.waiting.append(call)
                await hold.released.wait()
                if request.transport is None or request.transport.is_closing():
                    call.status = 499  # the client gave up meanwhile: never served, never counted
                    return web.Response(status=499)
        headers: dict[str, str] = {}
        try:
            route, params = self._match(request.method, path)
            if route.auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            limited = self._injected_limit(request.method, path, route)
            if limited is not None:
                return self._respond(call, 429, *limited)
            if route.auth and "token" not in params:
                limited = self._take_global()
                if limited is not None:
                    return self._respond(call, 429, *limited)
            for fault in self._faults:
                if fault.remaining > 0 and fault.method == request.method and fault.path.search(path):
                    fault.remaining -= 1
                    raise fault.error
            headers, over = self._take_bucket(route, params)
            if over is not None:
                return self._respond(call, 429, over, headers)
            if bad_json:
                raise ApiError(400, 50109, "The request body contains invalid JSON.")
            status, payload = route.handler(
                _Request(request.method, path, params, body, request.query, files)
            )
        except ApiError as exc:
            status, payload = exc.status, exc.body()
            call.error_code = exc.code
        return self._respond(call, status, payload, headers)

    @staticmethod
    def _respond(call: Call, status: int, payload: Any, headers: Mapping[str, str]) -> web.Response:
        """JSON with ``Content-Type: application/json`` exactly (discord.py compares the string)."""
        call.status = status
        # discord.py treats a 429 without a Via header as a Cloudflare ban and gives up.
        out = {"Via": "1.1 google", **headers}
        if payload is None:
            return web.Response(status=status, headers=out)
        out["Content-Type"] = "application/json"
        return web.Response(status=status, body=_dumps(payload).encode(), headers=out)

    def _injected_limit(self, method: str, path: str, route: _Route) -> tuple[_Json, dict[str, str]] | None:
        for limit in self._limits:
            if limit.remaining > 0 and limit.method == method and limit.path.search(path):
                limit.remaining -= 1
                body = {"message": _RATE_LIMITED, "retry_after": limit.retry_after, "global": limit.global_}
                headers = {"Retry-After": str(math.ceil(limit.retry_after))}
                if limit.global_:
                    headers.update({"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"})
                else:
                    limit_value = max(self._bucket_size(route)[0], 1)
                    headers.update(self._limit_headers(route.bucket, limit_value, 0, limit.retry_after))
                    headers["X-RateLimit-Scope"] = "user"
                return body, headers
        return None

    def _take_global(self) -> tuple[_Json, dict[str, str]] | None:
        """Take a request from the bot's global limit (a token bucket, ``global_limit``
        a second and at once); when it is empty, the global 429. A refused request takes
        nothing."""
        limit = self.global_limit
        if limit <= 0:
            return None
        now = asyncio.get_running_loop().time()
        if self._global_bucket is None:
            self._global_bucket = TokenBucket.full(limit, limit, now)
        wait = self._global_bucket.wait(now)
        if wait <= 0:
            self._global_bucket.take(now)
            return None
        retry_after = math.ceil(wait * 1000) / 1000
        body = {"message": _RATE_LIMITED, "retry_after": retry_after, "global": True}
        headers = {
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Global": "true",
            "X-RateLimit-Scope": "global",
        }
        return body, headers

    def _bucket_size(self, route: _Route) -> tuple[int, float]:
        """(requests, seconds) of a route's window: history has its own, the rest share one."""
        if (route.method, route.template) == _HISTORY_ROUTE:
            return self.history_bucket_limit, self.history_bucket_window
        return self.bucket_limit, self.bucket_window

    def _take_bucket(self, route: _Route, params: Mapping[str, str]) -> tuple[dict[str, str], _Json | None]:
        """Count the request in its per-route window; a request over the limit gets a 429 body."""
        size, span = self._bucket_size(route)
        if size <= 0:
            return {}, None
        if "token" in params:
            major = f"{params.get('interaction_id') or params.get('application_id')}:{params['token']}"
        else:
            major = params.get("channel_id") or params.get("guild_id") or ""
        now = asyncio.get_running_loop().time()
        key = (route.bucket, major)
        window = self._windows.get(key)
        if window is None or now >= window.reset_at:
            window = self._windows[key] = _Window(now + span, size)
        reset_after = window.reset_at - now
        if window.count >= window.limit:
            headers = self._limit_headers(route.bucket, window.limit, 0, reset_after)
            headers.update({"Retry-After": str(math.ceil(reset_after)), "X-RateLimit-Scope": "user"})
            return headers, {"message": _RATE_LIMITED, "retry_after": round(reset_after, 3), "global": False}
        window.count += 1
        return self._limit_headers(route.bucket, window.limit, window.limit - window.count, reset_after), None

    @staticmethod
    def _limit_headers(bucket: str, limit: int, remaining: int, reset_after: float) -> dict[str, str]:
        # Rounded up: a client that waits Reset-After must never be early. (The rounding
        # first drops float noise: a fresh 5 s window is 5.000, never 5.001.)
        after = math.ceil(round(reset_after * 1000, 6)) / 1000
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + after:.3f}",
            "X-RateLimit-Reset-After": f"{after:.3f}",
            "X-RateLimit-Bucket": bucket,
        }

    @staticmethod
    def _id(req: _Request, name: str, missing: tuple[int, str]) -> int:
        value = req.params[name]
        if not value.isdigit():
            raise _not_found(*missing)
        return int(value)

    # -- REST handlers: identity and channels ---------------------------------------------

    def _get_me(self, req: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self.bot_user)

    def _get_user(self, req: _Request) -> tuple[int, Any]:
        user_id = self._id(req, "user_id", _UNKNOWN_USER)
        if user_id not in self._users:
            raise _not_found(*_UNKNOWN_USER)
        return 200, copy.deepcopy(self._users[user_id])

    def _get_application(self, req: _Request) -> tuple[int, Any]:
        owner = self._known_user(1)
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user["username"],
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": hashlib.sha256(self.token.encode()).hexdigest(),
            "flags": self._application_flags(),
            "owner": copy.deepcopy(owner),
            "team": None,
            "bot": copy.deepcopy(self.bot_user),
            "hook": True,
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
            "approximate_guild_count": len(self._guilds),
            "integration_types_config": {"0": {}},
        }

    def _get_gateway(self, req: _Request) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    def _get_gateway_bot(self, req: _Request) -> tuple[int, Any]:
        used = len(self.identifies)
        return 200, {
            "url": self.gateway_url,
            "shards": self.shards,
            "session_start_limit": {
                "total": 1000,
                "remaining": max(1000 - used, 0),
                "reset_after": 86_400_000,
                "max_concurrency": 1,
            },
        }

    def _get_guild(self, req: _Request) -> tuple[int, Any]:
        guild_id = self._id(req, "guild_id", _UNKNOWN_GUILD)
        if guild_id not in self._guilds:
            raise _not_found(*_UNKNOWN_GUILD)
        full = self._guild_create(self._guilds[guild_id], None)
        for key in ("members", "channels", "threads", "voice_states", "presences", "joined_at", "large"):
            full.pop(key, None)
        return 200, full

    def _get_member(self, req: _Request) -> tuple[int, Any]:
        guild_id = self._id(req, "guild_id", _UNKNOWN_GUILD)
        user_id = self._id(req, "user_id", _UNKNOWN_MEMBER)
        guild = self._guilds.get(guild_id)
        if guild is None:
            raise _not_found(*_UNKNOWN_GUILD)
        if user_id not in guild.members:
            raise _not_found(*_UNKNOWN_MEMBER)
        return 200, {**copy.deepcopy(guild.members[user_id]), "user": copy.deepcopy(self._users[user_id])}

    def _create_dm(self, req: _Request) -> tuple[int, Any]:
        body = req.body if isinstance(req.body, dict) else {}
        recipient = str(body.get("recipient_id", ""))
        if not recipient.isdigit() or int(recipient) not in self._users:
            raise _invalid_form(["recipient_id"], "USER_UNKNOWN", "Unknown user")
        return 200, self._channel_object(self.dm_channel(int(recipient)))

    def _get_channel(self, req: _Request) -> tuple[int, Any]:
        return 200, self._channel_object(self._id(req, "channel_id", _UNKNOWN_CHANNEL))

    def _typing(self, req: _Request) -> tuple[int, Any]:
        self._guild_of_channel(self._id(req, "channel_id", _UNKNOWN_CHANNEL))
        return 204, None

    def _get_messages(self, req: _Request) -> tuple[int, Any]:
        """Get Channel Messages: up to ``limit`` (1-100, default 50) messages, newest first.

        ``around``, ``before`` and ``after`` (snowflakes) are mutually exclusive. ``before``
        gives the newest messages older than it; ``after`` the oldest ones newer than it, still
        newest first (discord.py's oldest-first paging continues after the first element);
        ``around`` gives ``limit // 2`` older ones, the message itself and ``limit // 2`` newer
        ones (so an even limit yields up to ``limit + 1``, as discord.py documents). In a guild
        channel or thread: no VIEW_CHANNEL is 403 50001, no READ_MESSAGE_HISTORY an empty list
        (as documented). Threads' messages are served by the thread's id, not the parent's.
        """
        limit = self._limit_query(req.query)
        anchors = {
            name: self._snowflake_query(req.query, name)
            for name in ("around", "before", "after")
            if name in req.query
        }
        if len(anchors) > 1:
            message = "around, before and after are mutually exclusive: pass one."
            raise ApiError(
                400,
                50035,
                "Invalid Form Body",
                {name: {"_errors": [{"code": "MUTUALLY_EXCLUSIVE", "message": message}]} for name in anchors},
            )
        channel_id = self._id(req, "channel_id", _UNKNOWN_CHANNEL)
        guild_id = self._guild_of_channel(channel_id)
        if guild_id is not None:
            allowed = self.channel_permissions(channel_id, self.bot_id)
            if not allowed & VIEW_CHANNEL:
                raise ApiError(403, 50001, "Missing Access")
            if not allowed & READ_MESSAGE_HISTORY:
                return 200, []
        ids = self._by_channel.get(channel_id, [])
        if "around" in anchors:
            anchor = anchors["around"]
            start = bisect.bisect_left(ids, anchor)
            here = [anchor] if start < len(ids) and ids[start] == anchor and self._live(anchor) else []
            newer_start = start + 1 if start < len(ids) and ids[start] == anchor else start
            older = self._walk(ids, start - 1, -1, limit // 2)
            picked = older + here + self._walk(ids, newer_start, 1, limit // 2)
        elif "after" in anchors:
            picked = self._walk(ids, bisect.bisect_right(ids, anchors["after"]), 1, limit)
        else:
            end = bisect.bisect_left(ids, anchors["before"]) if "before" in anchors else len(ids)
            picked = self._walk(ids, end - 1, -1, limit)
        return 200, [self._app_message(m) for m in sorted(picked, reverse=True)]

    def _live(self, message_id: int) -> bool:
        return not self._messages[message_id].deleted

    def _live_ids(self, channel_id: int) -> list[int]:
        return [m for m in self._by_channel.get(channel_id, []) if self._live(m)]

    def _walk(self, ids: list[int], start: int, step: int, count: int) -> list[int]:
        """Up to ``count`` live ids from index ``start`` on, one ``step`` at a time."""
        found: list[int] = []
        index = start
        while len(found) < count and 0 <= index < len(ids):
            if self._live(ids[index]):
                found.append(ids[index])
            index += step
        return found

    @staticmethod
    def _limit_query(query: Mapping[str, str]) -> int:
        raw = query.get("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            raise _invalid_form(["limit"], "NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.') from None
        if limit < 1:
            raise _invalid_form(
                ["limit"], "NUMBER_TYPE_MIN", "int value should be greater than or equal to 1."
            )
        if limit > 100:
            raise _invalid_form(
                ["limit"], "NUMBER_TYPE_MAX", "int value should be less than or equal to 100."
            )
        return limit

    @staticmethod
    def _snowflake_query(query: Mapping[str, str], name: str) -> int:
        raw = query[name]
        if not raw.isdigit() or int(raw) > _MAX_SNOWFLAKE:
            raise _invalid_form([name], "NUMBER_TYPE_COERCE", f'Value "{raw}" is not snowflake.')
        return int(raw)

    def _post_message(self, req: _Request) -> tuple[int, Any]:
        channel_id = self._id(req, "channel_id", _UNKNOWN_CHANNEL)
        guild_id = self._guild_of_channel(channel_id)
        if guild_id is None and self._dm_channels[channel_id] in self._blocked_dms:
            raise ApiError(403, 50007, "Cannot send messages to this user")
        body = self._check_body(req.body, files=len(req.files))
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce") and (channel_id, str(nonce)) in self._nonces:
            return 200, self._rest_message(self._nonces[(channel_id, str(nonce))])
        reference_id = None
        reference = body.get("message_reference")
        if isinstance(reference, dict) and reference.get("message_id") is not None:
            target_id = int(reference["message_id"])
            target = self._messages.get(target_id)
            same_place = target is not None and (
                int(target.wire["channel_id"]) == channel_id
                or (guild_id is not None and target.guild_id == guild_id)
            )
            if target is not None and not target.deleted and not target.ephemeral and same_place:
                reference_id = target_id
            elif reference.get("fail_if_not_exists", True):
                raise _invalid_form(
                    ["message_reference"], "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                )
        message = self._create_bot_message(channel_id, body, files=req.files, reference_id=reference_id)
        if nonce is not None:
            self._nonces[(channel_id, str(nonce))] = message.id
        return 200, self._rest_message(message.id)

    def _get_message(self, req: _Request) -> tuple[int, Any]:
        """Get Channel Message: needs VIEW_CHANNEL (else 403 50001) and READ_MESSAGE_HISTORY (50013)."""
        channel_id = self._id(req, "channel_id", _UNKNOWN_CHANNEL)
        if self._guild_of_channel(channel_id) is not None:
            allowed = self.channel_permissions(channel_id, self.bot_id)
            if not allowed & VIEW_CHANNEL:
                raise ApiError(403, 50001, "Missing Access")
            if not allowed & READ_MESSAGE_HISTORY:
                raise ApiError(403, 50013, "Missing Permissions")
        message_id = self._id(req, "message_id", _UNKNOWN_MESSAGE)
        self._channel_message(channel_id, message_id)
        return 200, self._app_message(message_id)

    def _patch_message(self, req: _Request) -> tuple[int, Any]:
        channel_id = self._id(req, "channel_id", _UNKNOWN_CHANNEL)
        self._guild_of_channel(channel_id)
        message_id = self._id(req, "message_id", _UNKNOWN_MESSAGE)
        self._channel_message(channel_id, message_id)
        return 200, self._edit_bot_message(message_id, req.body)

    def _delete_channel_message(self, req: _Request) -> tuple[int, Any]:
        channel_id = self._id(req, "channel_id", _UNKNOWN_CHANNEL)
        guild_id = self._guild_of_channel(channel_id)
        message_id = self._id(req, "message_id", _UNKNOWN_MESSAGE)
        stored = self._channel_message(channel_id, message_id)
        may_manage = guild_id is not None and bool(self.permissions(guild_id, self.bot_id) & MANAGE_MESSAGES)
        if int(stored.wire["author"]["id"]) != self.bot_id and not may_manage:
            raise ApiError(403, 50013, "Missing Permissions")
        self._delete_message(message_id)
        return 204, None

    # -- REST handlers: interactions ------------------------------------------------------

    def _callback(self, req: _Request) -> tuple[int, Any]:
        """POST /interactions/{id}/{token}/callback: the one acknowledgement, within the deadline."""
        interaction = self._interactions.get(
            int(req.params["interaction_id"]) if req.params["interaction_id"].isdigit() else 0
        )
        if interaction is None or interaction.token != req.params["token"]:
            raise _not_found(*_UNKNOWN_INTERACTION)
        if isinstance(req.body, dict):
            interaction.callbacks.append(copy.deepcopy(req.body))
        if interaction.response_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if asyncio.get_running_loop().time() - interaction.created_at > self.interaction_deadline:
            raise _not_found(*_UNKNOWN_INTERACTION)
        if not isinstance(req.body, dict):
            raise ApiError(400, 50109, "The request body contains invalid JSON.")
        kind = req.body.get("type")
        data = req.body.get("data") or {}
        allowed = (4, 5, 9) if interaction.type == 2 else (4, 5, 6, 7, 9)
        if kind not in allowed or not isinstance(data, dict):
            choices = "{" + ", ".join(map(str, allowed)) + "}"
            raise _invalid_form(["type"], "BASE_TYPE_CHOICES", f"Value must be one of {choices}.")
        message: BotMessage | None = None
        if kind in (6, 7):  # the clicked message becomes @original
            clicked = self._messages.get(interaction.message_id or 0)
            if clicked is None or clicked.deleted:
                raise _not_found(*_UNKNOWN_MESSAGE)
            clicked_id = int(clicked.wire["id"])
            if kind == 7:
                self._edit_bot_message(clicked_id, data, ["data"])
            message = self._bot_messages.get(clicked_id)
            interaction.original_id = clicked_id
        elif kind == 4:
            self._check_body(data, ["data"], files=len(req.files))
            message = self._create_bot_message(
                interaction.channel_id, data, files=req.files, interaction=interaction
            )
        elif kind == 9:
            interaction.modal = self._check_modal(data)
        elif kind == 5:
            flags = int(data.get("flags") or 0) & EPHEMERAL
            message = self._create_bot_message(
                interaction.channel_id, {"flags": flags}, interaction=interaction, loading=True
            )
        interaction.response_type = kind
        if message is not None and kind in (4, 5):
            interaction.original_id = message.id
        if req.query.get("with_response", "").lower() not in ("1", "true"):
            return 204, None
        answer: _Json = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_id": str(interaction.original_id) if kind in (4, 5, 7) else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message and message.ephemeral),
            },
            "resource": {"type": kind},
        }
        if interaction.original_id is not None and kind in (4, 5, 7):
            answer["resource"]["message"] = self._rest_message(interaction.original_id)
        return 200, answer

    def _webhook_interaction(self, req: _Request) -> Interaction:
        """The interaction behind an interaction webhook URL (``/webhooks/{app_id}/{token}``)."""
        interaction = self._by_token.get(req.params["token"])
        if interaction is None or req.params["application_id"] != str(self.application_id):
            raise _not_found(*_UNKNOWN_WEBHOOK)
        if asyncio.get_running_loop().time() - interaction.created_at > self.webhook_ttl:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if interaction.response_type is None:
            raise _not_found(*_UNKNOWN_WEBHOOK)
        return interaction

    def _followup(self, req: _Request) -> tuple[int, Any]:
        """A follow-up; the first one after a deferral fills in the "thinking" message instead."""
        interaction = self._webhook_interaction(req)
        body = self._check_body(req.body, files=len(req.files))
        original = self._bot_messages.get(interaction.original_id or 0)
        if original is not None and original.loading and not original.deleted:
            wire = self._edit_bot_message(original.id, {k: v for k, v in body.items() if k != "flags"})
            message_id = original.id
        else:
            message = self._create_bot_message(
                interaction.channel_id,
                body,
                files=req.files,
                interaction=interaction,
                # a reply to the interaction's own response, not to a clicked message
                reference_id=interaction.original_id
                if original is not None and not original.deleted and interaction.response_type in (4, 5)
                else None,
                followup_of=interaction.original_id,
            )
            interaction.followup_ids.append(message.id)
            message_id = message.id
            wire = self._rest_message(message_id)
        if req.query.get("wait", "").lower() in ("1", "true"):
            return 200, wire
        return 204, None

    def _webhook_message(self, req: _Request) -> tuple[int, Any]:
        """GET/PATCH/DELETE a message of an interaction's webhook. ``@original`` is the
        response, the clicked message too after an update (types 6, 7); by id, only a
        message sent from this token (the response it created, or a follow-up): Discord
        answers Unknown Message for any other, the clicked one included."""
        interaction = self._webhook_interaction(req)
        raw = req.params["message_id"]
        if raw == "@original":
            message_id = interaction.original_id
        elif raw.isdigit() and (sent := self._bot_messages.get(int(raw))) is not None:
            message_id = sent.id if sent.interaction_token == interaction.token else None
        else:
            message_id = None
        stored = self._messages.get(message_id or 0)
        if message_id is None or stored is None or stored.deleted:
            raise _not_found(*_UNKNOWN_MESSAGE)
        if req.method == "GET":
            return 200, self._rest_message(message_id)
        if req.method == "DELETE":
            self._delete_message(message_id)
            return 204, None
        return 200, self._edit_bot_message(message_id, req.body)

    # -- REST handlers: application commands ----------------------------------------------

    def _command_scope(self, req: _Request) -> tuple[int | None, list[_Json]]:
        if req.params["application_id"] != str(self.application_id):
            raise ApiError(403, 50001, "Missing Access")
        if "guild_id" not in req.params:
            return None, self.global_commands
        guild_id = self._id(req, "guild_id", _UNKNOWN_GUILD)
        if guild_id not in self._guilds:
            raise ApiError(403, 50001, "Missing Access")
        return guild_id, self.guild_commands.setdefault(guild_id, [])

    def _get_commands(self, req: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._command_scope(req)[1])

    def _put_commands(self, req: _Request) -> tuple[int, Any]:
        """Bulk overwrite: commands keep their ids by (name, type); the rest are dropped."""
        guild_id, current = self._command_scope(req)
        if not isinstance(req.body, list):
            raise _invalid_form([], "BASE_TYPE_ARRAY", "Must be an array.")
        seen: set[tuple[str, int]] = set()
        for index, command in enumerate(req.body):
            self._check_command(command, [index])
            key = (command["name"], command.get("type", 1))
            if key in seen:
                raise _invalid_form(
                    [index, "name"],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    "Application command names must be unique",
                )
            seen.add(key)
        existing = {(c["name"], c.get("type", 1)): c for c in current}
        stored = [
            self._stored_command(c, guild_id, existing.get((c["name"], c.get("type", 1)))) for c in req.body
        ]
        current[:] = stored
        self.command_puts += 1
        return 200, copy.deepcopy(stored)

    def _post_command(self, req: _Request) -> tuple[int, Any]:
        """Upsert one command: 201 when new, 200 when it replaced one with the same name and type."""
        guild_id, current = self._command_scope(req)
        self._check_command(req.body, [])
        key = (req.body["name"], req.body.get("type", 1))
        for index, command in enumerate(current):
            if (command["name"], command.get("type", 1)) == key:
                current[index] = self._stored_command(req.body, guild_id, command)
                return 200, copy.deepcopy(current[index])
        current.append(self._stored_command(req.body, guild_id, None))
        return 201, copy.deepcopy(current[-1])

    def _command(self, req: _Request) -> tuple[int, Any]:
        guild_id, current = self._command_scope(req)
        command_id = req.params["command_id"]
        for index, command in enumerate(current):
            if command["id"] == command_id:
                if req.method == "GET":
                    return 200, copy.deepcopy(command)
                if req.method == "DELETE":
                    del current[index]
                    return 204, None
                merged = {**command, **(req.body if isinstance(req.body, dict) else {})}
                self._check_command(merged, [])
                current[index] = self._stored_command(merged, guild_id, command)
                return 200, copy.deepcopy(current[index])
        raise _not_found(*_UNKNOWN_COMMAND)

    def _stored_command(self, command: _Json, guild_id: int | None, previous: _Json | None) -> _Json:
        stored: _Json = {
            "type": 1,
            "name_localizations": None,
            "description_localizations": None,
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            "integration_types": [0],
            "contexts": None,
            "options": [],
            **copy.deepcopy(command),
        }
        stored["id"] = previous["id"] if previous else str(self._ids.next())
        stored["application_id"] = str(self.application_id)
        stored["version"] = str(self._ids.next())
        if stored["type"] != 1:
            stored["description"] = ""
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
            stored.pop("dm_permission", None)
        return stored

    def _check_command(self, command: Any, path: list[str | int]) -> None:
        """Discord's checks that a bot's command definitions most often trip."""
        if not isinstance(command, dict):
            raise _invalid_form(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        kind = command.get("type", 1)
        name = command.get("name")
        if (
            not isinstance(name, str)
            or not _COMMAND_NAME.fullmatch(name)
            or (kind == 1 and name != name.lower())
        ):
            raise _invalid_form(
                [*path, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        if kind == 1:
            self._check_description(command, path)
            self._check_options(command.get("options") or [], [*path, "options"])

    @staticmethod
    def _check_description(item: _Json, path: list[str | int]) -> None:
        description = item.get("description")
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            raise _invalid_form(
                [*path, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )

    def _check_options(self, options: list[Any], path: list[str | int]) -> None:
        if len(options) > 25:
            raise _too_long(path, 25)
        kinds = {option.get("type") in (1, 2) for option in options if isinstance(option, dict)}
        if len(kinds) > 1:
            raise _invalid_form(
                path,
                "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                "Sub-command and sub-command group option types are mutually exclusive to all other types",
            )
        names: set[str] = set()
        optional_seen = False
        for index, option in enumerate(options):
            name = option.get("name") if isinstance(option, dict) else None
            if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name) or name != name.lower():
                raise _invalid_form(
                    [*path, index, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            if name in names:
                raise _invalid_form(
                    [*path, index, "name"],
                    "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                    "Option names must be unique",
                )
            names.add(name)
            self._check_description(option, [*path, index])
            if len(option.get("choices") or []) > 25:
                raise _too_long([*path, index, "choices"], 25)
            if option.get("type") in (1, 2):
                self._check_options(option.get("options") or [], [*path, index, "options"])
            elif option.get("required"):
                if optional_seen:
                    raise _invalid_form(
                        path,
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                optional_seen = True


@contextlib.contextmanager
def point_discord_py_at(emu: DiscordEmulator) -> Iterator[None]:
    """Send discord.py's REST (and interaction webhooks) and gateway to the emulator, then restore.

    ``Route.BASE`` is read when each Route is built, so clients already running keep working
    until they build their next request; ``DEFAULT_GATEWAY`` is read at every fresh connect.
    """
    import discord.gateway
    import discord.http
    import yarl

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{emu.url}{API_PREFIX}"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

"""Backfill (`/history on backfill=7d`): a chat's past messages, read from its platform's
history into the chat log, oldest first, with the progress shown in the chat.

A backfill belongs to the chat, not to a replica. Its state (the cursor: the last
message id done; the end; counts; where its progress message is) is a hash under the
chat's log keys, so /history off deletes it with everything else and the job stops at
its next step; the chats with an unfinished backfill are a sorted set that every
replica serving the platform sweeps when it starts and now and then after. One replica
works a chat at a time: it holds the chat's lease (SET NX PX with its own token,
renewed while it works) and moves the cursor only while it holds it, after the page is
recorded. A restart therefore goes on after the last page done and never reads a page
twice; a page recorded but not yet committed is read again, and the store records a
message id once (a message already recorded live is not recorded twice either).

The platform provides a `HistorySource`: pages of messages after a cursor, oldest
first, up to an end, paced within its rate limits, and a surface in the chat for the
progress message, which is edited no more often than that surface allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from core.chat.progress import ProgressMessage
from core.chatlog.store import ChatLog, LoggedMessage
from core.chatlog.unreadable import UnreadableNotice
from core.platform import (
    MessageRef,
    PlatformError,
    Surface,
)
from core.storage.keys import Keys
from core.storage.lease import Lease
from core.storage.redis_client import RedisClient, honour_cancellation

log = logging.getLogger("herald.backfill")

#: how long a replica's hold on a chat's backfill lasts unless renewed (a third of it)
LEASE_SECONDS = 30.0
#: how often a replica looks for unfinished backfills that nobody works
SWEEP_SECONDS = 60.0
#: waits before reading a page again after the platform failed (then the next sweep)
RETRY_WAITS = (1.0, 2.0, 4.0, 8.0)

_BEGIN = """
-- KEYS: state, cfg; ARGV: seconds to keep the state, then its field/value pairs
if redis.call('HGET', KEYS[2], 'on') ~= '1' then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

_STEP = """
-- KEYS: state, lease, cfg; ARGV: owner, then field/value pairs ('+field' adds to it)
-- -1: the backfill is gone (/history off), 0: another replica holds it, 1: done
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[3], 'on') ~= '1' then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 1) == '+' then
    redis.call('HINCRBY', KEYS[1], string.sub(ARGV[i], 2), ARGV[i + 1])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""

_FINISH = """
-- KEYS: state, lease; ARGV: owner
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a chat's past."""

    #: what to record, oldest first (the platform leaves out bots' messages, Herald's,
    #: and those with no text)
    messages: Sequence[LoggedMessage]
    #: the last message id read: the next page starts after it
    cursor: str
    #: messages whose text the platform withheld (`core.chatlog.unreadable`)
    withheld: int = 0
    #: nothing more up to the end
    last: bool = False


class HistoryUnavailable(Exception):
    """The platform refuses the chat's history for good (no access, no such channel);
    the message is for the people in the chat."""


class HistorySource(Protocol):
    """What a platform with a history API provides for backfills (Discord)."""

    def cursor(self, at: float) -> str:
        """A cursor before every message written at `at` (seconds since the epoch) or later."""
        ...

    async def page(self, chat_id: str, after: str, end: str) -> Page:
        """The chat's next messages after `after`, none after `end`, oldest first, within
        the platform's rate limits. `HistoryUnavailable` for good; `PlatformError` for now."""
        ...

    async def surface(self, where: str) -> Surface:
        """Where the progress message goes: the channel or thread /history on was run in."""
        ...


class _NotYet(Exception):
    """The job can't go on here for now; the next sweep tries again."""


class Begun(enum.Enum):
    STARTED = "started"
    RUNNING = "running"  # this chat's backfill is not finished yet
    OFF = "off"  # recording was turned off meanwhile


@dataclass(frozen=True, slots=True)
class _State:
    cursor: str
    end: str
    span: float  # seconds back from when it began
    where: str
    progress: str  # the progress message's id, once sent
    recorded: int
    withheld: int

    @classmethod
    def read(cls, raw: Mapping[str, str]) -> _State | None:
        try:
            return cls(
                cursor=raw["cursor"],
                end=raw["end"],
                span=float(raw["span"]),
                where=raw["where"],
                progress=raw.get("progress", ""),
                recorded=int(raw.get("recorded", 0)),
                withheld=int(raw.get("withheld", 0)),
            )
        except (KeyError, ValueError):
            return None


def last_span(seconds: float) -> str:
    """`the last 7 days`, `the last day`, `the last 12 hours`: how far back a backfill reads."""
    days = round(seconds / 86400, 1)
    if days >= 1:
        return "the last day" if days == 1 else f"the last {days:g} days"
    hours = round(seconds / 3600, 1)
    return "the last hour" if hours == 1 else f"the last {hours:g} hours"


def _messages(count: int) -> str:
    return f"{count} message{'s' if count != 1 else ''}"


def started_text(span: float) -> str:
    return f"Backfill: reading {last_span(span)} of this chat…"


def running_text(state: _State) -> str:
    return f"Backfill: {_messages(state.recorded)} from {last_span(state.span)} recorded so far…"


def done_text(state: _State) -> str:
    text = f"Backfill done: {_messages(state.recorded)} from {last_span(state.span)} recorded."
    if state.withheld:
        text += f" {state.withheld} more had no text I could read."
    return text


STOPPED_OFF = "Backfill stopped: recording was turned off."


class Backfills:
    """A process's part in backfills: starts them, works the chats it holds the lease
    of, and resumes unfinished ones for the platforms it serves. Made with the engine;
    `/history` starts backfills through it, and each platform bot that can read
    history `provide`s its source when it starts."""

    def __init__(
        self,
        chatlog: ChatLog,
        redis: RedisClient,
        keys: Keys,
        *,
        lease_seconds: float = LEASE_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = chatlog
        self._redis = redis
        self._keys = keys
        self._lease_s = lease_seconds
        self._sweep_seconds = sweep_seconds
        self._clock = clock
        self._unreadable = UnreadableNotice(chatlog, redis, keys)
        self._sources: dict[str, HistorySource] = {}
        #: (platform, chat) → the job working it here, and the source it reads
        self._jobs: dict[tuple[str, str], tuple[asyncio.Task[None], HistorySource]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._begin = redis.register_script(_BEGIN)
        self._step = redis.register_script(_STEP)
        self._finish = redis.register_script(_FINISH)

    # -- platforms ----------------------------------------------------------------------

    def provide(self, platform: str, source: HistorySource) -> None:
        """`platform` can read history here (through `source`): its unfinished backfills
        are resumed now and looked for every `sweep_seconds`."""
        self._sources[platform] = source
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="backfill-sweeps")

    def reads(self, platform: str) -> bool:
        return platform in self._sources

    async def withdraw(self, platform: str, source: HistorySource) -> None:
        """`source` stops here (its bot stops): the jobs reading it stop, their leases
        given back so that another replica, or this one restarted, goes on at once."""
        if self._sources.get(platform) is source:
            del self._sources[platform]
        tasks = [task for task, used in self._jobs.values() if used is source]
        if not self._sources and self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- starting -----------------------------------------------------------------------

    async def begin(self, platform: str, chat_id: str, where: str, span: float) -> Begun:
        """Plan a backfill of the last `span` seconds (the caller answers, then `kick`s it).
        The end is now: what comes later is recorded live."""
        source = self._sources[platform]
        now = self._clock()
        fields = {
            "cursor": source.cursor(now - span),
            "end": source.cursor(now),
            "span": str(span),
            "where": where,
            "recorded": "0",
            "withheld": "0",
        }
        keys = [self._key(platform, chat_id), self._keys.chat_log(platform, chat_id, "cfg")]
        args: list[str | int] = [math.ceil(span) + 86400, *(item for pair in fields.items() for item in pair)]
        begun = int(await self._begin(keys=keys, args=args))
        if begun == 1:
            await self._redis.zadd(self._keys.backfills(), {_member(platform, chat_id): now})
            return Begun.STARTED
        return Begun.RUNNING if begun == 0 else Begun.OFF

    def kick(self, platform: str, chat_id: str) -> None:
        """Work the chat's backfill here, unless this process already does (or another
        replica holds it: the job then ends at once)."""
        source = self._sources.get(platform)
        if source is None or (platform, chat_id) in self._jobs:
            return
        task = asyncio.create_task(
            self._run(platform, chat_id, source), name=f"backfill-{platform}-{chat_id}"
        )
        self._jobs[(platform, chat_id)] = (task, source)
        task.add_done_callback(lambda done: self._ended(platform, chat_id, done))

    def _ended(self, platform: str, chat_id: str, task: asyncio.Task[None]) -> None:
        if self._jobs.get((platform, chat_id), (None,))[0] is task:
            del self._jobs[(platform, chat_id)]

    async def unfinished(self) -> list[tuple[str, str]]:
        """(platform, chat) of every unfinished backfill, whoever works it."""
        members = await self._redis.zrange(self._keys.backfills(), 0, -1)
        return [_split(str(member)) for member in members]

    async def _sweep_forever(self) -> None:
        while True:
            try:
                for platform, chat_id in await self.unfinished():
                    if platform in self._sources:
                        self.kick(platform, chat_id)
            except RedisError as exc:
                log.warning("could not look for unfinished backfills: %s", exc)
            honour_cancellation()
            await asyncio.sleep(self._sweep_seconds)

    # -- working ------------------------------------------------------------------------

    async def _run(self, platform: str, chat_id: str, source: HistorySource) -> None:
        lease = Lease(self._redis, self._keys.chat_log(platform, chat_id, "backfill-lease"), self._lease_s)
        try:
            if not await lease.acquire():
                return  # another replica works it
        except RedisError as exc:
            log.warning("backfill of %s:%s: Redis failed: %s", platform, chat_id, exc)
            return
        keeper = asyncio.create_task(self._keep(lease))
        try:
            await self._work(platform, chat_id, lease.owner, source)
        except (PlatformError, RedisError, _NotYet) as exc:
            log.warning("backfill of %s:%s paused until the next sweep: %s", platform, chat_id, exc)
        except Exception:
            log.exception("backfill of %s:%s failed; it is tried again at the next sweep", platform, chat_id)
        finally:
            keeper.cancel()
            with contextlib.suppress(RedisError, asyncio.CancelledError):
                await lease.release()

    async def _keep(self, lease: Lease) -> None:
        """Renew the lease while the job works. A job that lost it (turned off, or held
        too long without a word) finds out at its next step, before it records anything."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                if not await lease.renew():
                    return
            except RedisError as exc:
                log.warning("could not renew a backfill's lease: %s", exc)

    async def _work(self, platform: str, chat_id: str, owner: str, source: HistorySource) -> None:
        state = await self._state(platform, chat_id)
        if state is None:  # turned off, or finished: nothing is left to do
            await self._redis.zrem(self._keys.backfills(), _member(platform, chat_id))
            return
        try:
            surface = await source.surface(state.where)
        except HistoryUnavailable as exc:
            log.warning("backfill of %s:%s ends: %s", platform, chat_id, exc)
            await self._done(platform, chat_id, owner)
            return

        async def sent(ref: MessageRef) -> None:
            await self._advance(platform, chat_id, owner, {"progress": ref.id})

        progress = ProgressMessage(surface, MessageRef(state.progress) if state.progress else None, sent)
        try:
            if not state.progress:
                progress.show(started_text(state.span))
            while True:
                honour_cancellation()
                try:
                    page = await self._page(source, chat_id, state)
                except HistoryUnavailable as exc:
                    await progress.final(f"Backfill stopped: {exc}")
                    await self._done(platform, chat_id, owner)
                    return
                step = await self._record(platform, chat_id, owner, page, surface)
                if step < 0:
                    await progress.final(STOPPED_OFF)
                    await self._redis.zrem(self._keys.backfills(), _member(platform, chat_id))
                    return
                if step == 0:
                    return  # another replica holds it now
                previous = state.cursor
                state = _State(
                    cursor=page.cursor,
                    end=state.end,
                    span=state.span,
                    where=state.where,
                    progress=state.progress,
                    recorded=state.recorded + len(page.messages),
                    withheld=state.withheld + page.withheld,
                )
                if page.last or page.cursor in (previous, state.end):
                    await progress.final(done_text(state))
                    await self._done(platform, chat_id, owner)
                    return
                progress.show(running_text(state))
        finally:
            progress.close()

    async def _page(self, source: HistorySource, chat_id: str, state: _State) -> Page:
        """The next page, read again after a short wait when the platform failed."""
        for wait in (*RETRY_WAITS, None):
            try:
                return await source.page(chat_id, state.cursor, state.end)
            except PlatformError as exc:
                if wait is None:
                    raise
                log.info("backfill of %s: reading a page failed (%s); again in %gs", chat_id, exc, wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _record(self, platform: str, chat_id: str, owner: str, page: Page, surface: Surface) -> int:
        """Record a page, then move the cursor past it: 1, or what `_STEP` says stopped it."""
        step = await self._advance(platform, chat_id, owner, {})  # still on, still ours?
        if step <= 0:
            return step
        for message in page.messages:
            if await self._log.record(platform, chat_id, message) == 0:
                # turned off meanwhile (nothing more is recorded), or this replica still
                # trusts what it read of the chat before it was turned on: later, then
                step = await self._advance(platform, chat_id, owner, {})
                if step == 1:
                    raise _NotYet("this replica does not see the chat recording yet")
                return step
        if page.withheld:
            await self._unreadable.withheld(platform, chat_id, surface)
        counts = {
            "cursor": page.cursor,
            "+recorded": str(len(page.messages)),
            "+withheld": str(page.withheld),
        }
        return await self._advance(platform, chat_id, owner, counts)

    async def _advance(self, platform: str, chat_id: str, owner: str, fields: Mapping[str, str]) -> int:
        keys = [
            self._key(platform, chat_id),
            self._keys.chat_log(platform, chat_id, "backfill-lease"),
            self._keys.chat_log(platform, chat_id, "cfg"),
        ]
        args = [owner, *(item for pair in fields.items() for item in pair)]
        return int(await self._step(keys=keys, args=args))

    async def _done(self, platform: str, chat_id: str, owner: str) -> None:
        keys = [self._key(platform, chat_id), self._keys.chat_log(platform, chat_id, "backfill-lease")]
        if await self._finish(keys=keys, args=[owner]):
            await self._redis.zrem(self._keys.backfills(), _member(platform, chat_id))

    async def _state(self, platform: str, chat_id: str) -> _State | None:
        raw = await self._redis.hgetall(self._key(platform, chat_id))
        return _State.read({str(field): str(value) for field, value in raw.items()})

    def _key(self, platform: str, chat_id: str) -> str:
        return self._keys.chat_log(platform, chat_id, "backfill")


def _member(platform: str, chat_id: str) -> str:
    return f"{platform}:{chat_id}"


def _split(member: str) -> tuple[str, str]:
    platform, _, chat_id = member.partition(":")
    return platform, chat_id

"""Schedules and their posts, stored in Redis as data.

A schedule is a definition (where, what, when, how); every run of it produces
at most one post, whose lifecycle is recorded:

    DRAFT → PENDING_APPROVAL → SCHEDULED → PUBLISHING → PUBLISHED
    FAILED       nothing was sent; retried with backoff
    UNCONFIRMED  the send's outcome is unknown; never retried automatically
    CANCELLED    rejected for good or its schedule was deleted

A rejection sends a post back to DRAFT with the reason.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

R = TypeVar("R")


class Mode(enum.Enum):
    APPROVE = "approve"
    AUTO = "auto"


class PostState(enum.Enum):
    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    SCHEDULED = "scheduled"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"
    CANCELLED = "cancelled"


#: which states a post may move to from each state
TRANSITIONS: dict[PostState, frozenset[PostState]] = {
    PostState.DRAFT: frozenset({PostState.PENDING_APPROVAL, PostState.SCHEDULED, PostState.CANCELLED}),
    PostState.PENDING_APPROVAL: frozenset({PostState.SCHEDULED, PostState.DRAFT, PostState.CANCELLED}),
    PostState.SCHEDULED: frozenset({PostState.PUBLISHING, PostState.CANCELLED}),
    # to networks: CANCELLED when every one of them refused it
    PostState.PUBLISHING: frozenset(
        {PostState.PUBLISHED, PostState.FAILED, PostState.UNCONFIRMED, PostState.CANCELLED}
    ),
    PostState.FAILED: frozenset({PostState.PUBLISHING, PostState.CANCELLED}),
    PostState.UNCONFIRMED: frozenset({PostState.PUBLISHED, PostState.CANCELLED}),
    PostState.PUBLISHED: frozenset(),
    PostState.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    pass


class BadRecord(ValueError):
    """A stored schedule or post that cannot be read (corrupt, or written by another
    version): skipped and logged, never allowed to stop the others."""


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    platform: str
    chat_id: str  # where posts are published
    prompt: str
    target: str  # a core.posts.targets.Target value
    recurrence: str
    timezone: str
    created_by: str
    mode: Mode = Mode.APPROVE
    tone: str = "friendly"
    thread_id: str | None = None
    approver_chat: str | None = None  # review channel or DM; default: where it was created
    end_date: str | None = None  # ISO date, inclusive
    max_runs: int | None = None
    paused: bool = False
    created_at: str | None = None  # ISO time; anchors "every N hours/days" across restarts
    fixed_text: str | None = None  # publish this text (a saved draft) instead of drafting one
    #: social networks to publish to (`to=x,bluesky`) instead of the chat itself
    destinations: tuple[str, ...] = ()

    def encode(self) -> str:
        data = asdict(self)
        data["mode"] = self.mode.value
        return json.dumps(data)

    @staticmethod
    def decode(raw: str | bytes) -> Schedule:
        try:
            data = json.loads(raw)
            data["mode"] = Mode(data["mode"])
            data["destinations"] = tuple(data.get("destinations", ()))
            schedule = Schedule(**data)
            if schedule.end_date is not None:
                dt.date.fromisoformat(schedule.end_date)
        except (ValueError, TypeError, KeyError) as exc:
            raise BadRecord(f"unreadable schedule: {exc!r}") from None
        return schedule

    def ends_before(self, slot: dt.datetime) -> bool:
        return self.end_date is not None and slot.date() > dt.date.fromisoformat(self.end_date)


@dataclass(frozen=True, slots=True)
class Post:
    id: str
    schedule_id: str
    slot: str  # ISO time of the run that produced it
    platform: str
    chat_id: str
    text: str
    state: PostState = PostState.DRAFT
    message_id: str | None = None
    reason: str | None = None
    attempts: int = 0
    history: tuple[str, ...] = field(default=())

    def encode(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["state"] = self.state.value
        data["history"] = list(self.history)
        return json.dumps(data, ensure_ascii=False)

    @staticmethod
    def decode(raw: str | bytes) -> Post:
        try:
            data = json.loads(raw)
            data["state"] = PostState(data["state"])
            data["history"] = tuple(data.get("history", ()))
            return Post(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise BadRecord(f"unreadable post: {exc!r}") from None


def new_id() -> str:
    return secrets.token_hex(4)


#: a post moves only from the state (and history length) its mover read: two replicas
#: approving the same post at once cannot both publish it
_MOVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local stored = cjson.decode(raw)
if stored.state ~= ARGV[2] or #stored.history ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
"""


#: a schedule changed and the change announced at once (the leader reloads on the
#: announcement); a script, not MULTI: redis-py refuses PUBLISH in a cluster's pipelines
_CHANGE = """
local changed
if ARGV[3] then changed = redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else changed = redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return changed
"""


class ScheduleStore:
    def __init__(self, redis: RedisClient, keys: Keys, *, logger: logging.Logger | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._move = redis.register_script(_MOVE)
        self._change = redis.register_script(_CHANGE)
        self._log = logger or logging.getLogger("herald.scheduler")

    async def save(self, schedule: Schedule) -> None:
        args = [self._keys.schedules_changed(), schedule.id, schedule.encode()]
        await self._change(keys=[self._keys.schedules()], args=args)

    async def get(self, schedule_id: str) -> Schedule | None:
        raw = await self._redis.hget(self._keys.schedules(), schedule_id)
        return None if raw is None else self._readable(Schedule.decode, schedule_id, raw)

    async def all(self) -> list[Schedule]:
        """Every readable schedule; one that cannot be read is logged and left out."""
        raw = await self._redis.hgetall(self._keys.schedules())
        found = (self._readable(Schedule.decode, key, value) for key, value in raw.items())
        return sorted((s for s in found if s is not None), key=lambda s: s.id)

    def _readable(self, decode: Callable[[str | bytes], R], key: object, raw: str | bytes) -> R | None:
        try:
            return decode(raw)
        except BadRecord as exc:
            self._log.error("skipping stored record %s: %s (the others are unaffected)", key, exc)
            return None

    async def count(self) -> int:
        """How many schedules are stored, readable or not."""
        return int(await self._redis.hlen(self._keys.schedules()))

    async def in_chat(self, platform: str, chat_id: str) -> list[Schedule]:
        return [s for s in await self.all() if (s.platform, s.chat_id) == (platform, chat_id)]

    async def delete(self, schedule_id: str) -> bool:
        args = [self._keys.schedules_changed(), schedule_id]
        return bool(await self._change(keys=[self._keys.schedules()], args=args))

    async def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        schedule = await self.get(schedule_id)
        if schedule is None:
            return None
        schedule = replace(schedule, paused=paused)
        await self.save(schedule)
        return schedule

    async def chat_timezone(self, platform: str, chat_id: str) -> str | None:
        raw = await self._redis.get(self._keys.chat_timezone(platform, chat_id))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def set_chat_timezone(self, platform: str, chat_id: str, zone: str) -> None:
        await self._redis.set(self._keys.chat_timezone(platform, chat_id), zone)

    async def claim_slot(self, schedule_id: str, slot: dt.datetime, owner: str) -> bool:
        """True for exactly one caller per (schedule, fire time), across replicas and restarts."""
        key = self._keys.schedule_slot(schedule_id, slot.isoformat())
        return bool(await self._redis.set(key, owner, nx=True, ex=60 * 86400))

    async def count_run(self, schedule_id: str) -> int:
        return int(await self._redis.incr(self._keys.schedule_runs(schedule_id)))

    async def save_post(self, post: Post) -> None:
        await self._redis.hset(self._keys.posts(), post.id, post.encode())

    async def post(self, post_id: str) -> Post | None:
        raw = await self._redis.hget(self._keys.posts(), post_id)
        return None if raw is None else self._readable(Post.decode, post_id, raw)

    async def _posts(self) -> list[Post]:
        raw = await self._redis.hgetall(self._keys.posts())
        found = (self._readable(Post.decode, key, value) for key, value in raw.items())
        return [post for post in found if post is not None]

    async def posts_of(self, schedule_id: str) -> list[Post]:
        posts = await self._posts()
        return sorted((p for p in posts if p.schedule_id == schedule_id), key=lambda p: p.slot)

    async def count_by_state(self) -> dict[str, int]:
        """How many posts are in each lifecycle state (reads every post: for metrics)."""
        counts = dict.fromkeys((s.value for s in PostState), 0)
        for post in await self._posts():
            counts[post.state.value] += 1
        return counts

    async def move(self, post: Post, state: PostState, **changes: Any) -> Post:
        """Change a post's state, refusing moves the lifecycle does not allow, and moves
        from a state that another actor (another click, another replica) already left."""
        if state not in TRANSITIONS[post.state]:
            raise InvalidTransition(f"{post.state.value} → {state.value}")
        moved = replace(post, state=state, history=(*post.history, state.value), **changes)
        return await self._swap(post, moved)

    async def retake(self, post: Post) -> Post:
        """Take over an unwritten draft (its writer stopped): it is drafted again, and the
        writer, should it still be alive, can no longer move it."""
        return await self._swap(post, replace(post, history=(*post.history, PostState.DRAFT.value)))

    async def in_state(self, state: PostState) -> list[Post]:
        return [post for post in await self._posts() if post.state is state]

    async def unwritten(self) -> list[Post]:
        """Claimed posts still waiting for their first draft."""
        return [post for post in await self.in_state(PostState.DRAFT) if not post.text]

    async def _swap(self, post: Post, moved: Post) -> Post:
        args = [post.id, post.state.value, len(post.history), moved.encode()]
        if not await self._move(keys=[self._keys.posts()], args=args):
            raise InvalidTransition(f"{post.id} left {post.state.value} meanwhile")
        return moved

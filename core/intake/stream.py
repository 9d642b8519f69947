"""The intake's Redis Streams: every event Herald answers is kept here before the
platform is told it arrived, and stays until a worker has finished it.

One stream per platform (`Keys.intake_stream`), consumed by one consumer group,
`workers`. An event is put in with its id marked seen (platforms deliver some twice)
in one script, which can also take it at once for the replica that received it (the
fast path: it answers without a second round trip through the stream). A replica
that takes an event renews it while it works (`renew`); one that dies leaves it
pending, and another takes it over once it has gone unrenewed for the visibility
timeout (`claim`, XAUTOCLAIM). The messages an answer sent are recorded beside the
event (`record`), so whoever finishes it edits them rather than sending new ones.

Redis Cluster: a stream, its seen marks and its jobs share the platform's hash slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from core.platform import MessageRef
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

GROUP = "workers"

#: KEYS: stream, seen mark. ARGV: group, consumer ('' = only put it in), max length,
#: seen ttl (s), event id, data. → {0}: seen before; {1, id}: kept; {2, id, taken entry}
_PUT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then return {0} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[5], 'd', ARGV[6])
if ARGV[2] == '' then return {1, id} end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
return {2, id, got[1][2][1]}
"""

#: KEYS: stream. ARGV: group, consumer, ids… → the ids this consumer no longer holds
#: (another replica took them over while this one was not renewing them)
_RENEW = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p == 0 then lost[#lost + 1] = ARGV[i]
  else redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID') end
end
return lost
"""

#: KEYS: stream, job. ARGV: group, id. The entry goes too: an event's text (which may
#: carry what a person must not leave in Redis, e.g. /account credentials) is kept only
#: until it is answered
_FINISH = """
for i = 2, #ARGV do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  redis.call('DEL', KEYS[i])
end
"""

#: KEYS: job. ARGV: index, message, ttl (s)
_RECORD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One event in a platform's stream, as a worker took it."""

    platform: str
    entry_id: str
    event_id: str
    #: what the platform's adapter put in (`core.intake` never reads it)
    data: dict[str, Any]
    #: taken over from a replica that stopped renewing it
    resumed: bool = False
    #: it could not be read (written by something else, or damaged): finished unanswered
    unreadable: bool = False


@dataclass(frozen=True, slots=True)
class Arriving:
    """An event to keep: `take` when this replica answers it at once."""

    platform: str
    event_id: str
    data: dict[str, Any]
    take: bool = False


@dataclass(frozen=True, slots=True)
class Put:
    """What became of an event put in: `kept` unless its id was seen before; `taken`:
    the entry the putting replica now holds (its own, or an older one still waiting)."""

    kept: bool
    entry_id: str | None = None
    taken: Entry | None = None


class IntakeStream:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        consumer: str,
        max_length: int = 100_000,
        visibility: float = 15.0,
        seen_ttl: int = 86_400,
        logger: logging.Logger | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.consumer = consumer
        self._max_length = max_length
        self.visibility = visibility
        self._seen_ttl = seen_ttl
        self._log = logger or logging.getLogger("herald.intake")
        self._put = redis.register_script(_PUT)
        self._renew = redis.register_script(_RENEW)
        self._finish = redis.register_script(_FINISH)
        self._record = redis.register_script(_RECORD)

    async def prepare(self, platforms: Iterable[str]) -> None:
        """Create each platform's stream and its workers' group, where missing."""
        for platform in platforms:
            try:
                await self._redis.xgroup_create(
                    self._keys.intake_stream(platform), GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def put(self, platform: str, event_id: str, data: dict[str, Any], *, take: bool) -> Put:
        """Keep an event (one round trip). `take`: this replica answers it now, so the
        stream hands it (or an older event still waiting, first come first served) to
        this consumer in the same step."""
        [put] = await self.put_many([Arriving(platform, event_id, data, take)])
        if isinstance(put, BaseException):
            raise put
        return put

    async def put_many(self, events: Sequence[Arriving]) -> list[Put | BaseException]:
        """Keep several events in one round trip (the put script, pipelined); a result
        for each, or its error."""
        puts, _ = await self.put_and_finish(events, {})
        return puts

    async def put_and_finish(
        self, events: Sequence[Arriving], finishing: Mapping[str, Sequence[str]]
    ) -> tuple[list[Put | BaseException], BaseException | None]:
        """Keep `events` and finish the `finishing` events (by platform), in one round trip:
        a result for each event, and the finishing's error, if any. On a cluster, a call
        each, all at once: its pipelines run no scripts, and the streams may be on
        different primaries anyway."""
        calls = [(self._put, self._put_keys(e), self._put_args(e)) for e in events]
        calls += [(self._finish, *self._finish_call(p, ids)) for p, ids in finishing.items() if ids]
        raws: list[Any]
        if isinstance(self._redis, RedisCluster) or len(calls) == 1:
            raws = await asyncio.gather(
                *(script(keys=keys, args=args) for script, keys, args in calls), return_exceptions=True
            )
        else:
            # EVALSHA itself: a pipeline given the script would ask first whether the
            # server knows it, a second round trip every time
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                raws = await pipe.execute(raise_on_error=False)
            for index, raw in enumerate(raws):
                if isinstance(raw, NoScriptError):  # a restarted server: the script loads again
                    script, keys, args = calls[index]
                    raws[index] = await script(keys=keys, args=args)
        puts = [
            raw if isinstance(raw, BaseException) else self._read_put(e.platform, raw)
            for e, raw in zip(events, raws, strict=False)
        ]
        failed = next((raw for raw in raws[len(events) :] if isinstance(raw, BaseException)), None)
        return puts, failed

    def _put_keys(self, event: Arriving) -> list[str]:
        return [
            self._keys.intake_stream(event.platform),
            self._keys.intake_seen(event.platform, event.event_id),
        ]

    def _put_args(self, event: Arriving) -> list[str | int | bytes]:
        take = self.consumer if event.take else ""
        return [GROUP, take, self._max_length, self._seen_ttl, event.event_id, orjson.dumps(event.data)]

    def _read_put(self, platform: str, raw: Any) -> Put:
        if int(raw[0]) == 0:
            return Put(kept=False)
        entry_id = str(raw[1])
        if int(raw[0]) == 1:
            return Put(kept=True, entry_id=entry_id)
        taken_id, fields = raw[2]
        return Put(kept=True, entry_id=entry_id, taken=self._entry(platform, str(taken_id), fields, False))

    async def read(self, platform: str, count: int, block: float) -> list[Entry]:
        """Take up to `count` of the platform's waiting events, waiting up to `block`
        seconds for one. One stream a call: on a cluster, each is in its own slot."""
        streams: dict[Any, Any] = {self._keys.intake_stream(platform): ">"}
        raw = await self._redis.xreadgroup(
            GROUP, self.consumer, streams, count=count, block=max(1, int(block * 1000))
        )
        return self._entries(platform, raw)

    async def claim(self, platform: str, count: int) -> list[Entry]:
        """Take over up to `count` events whose replica has not renewed them for the
        visibility timeout (it died, or hangs)."""
        stream = self._keys.intake_stream(platform)
        raw = await self._redis.xautoclaim(
            stream, GROUP, self.consumer, min_idle_time=int(self.visibility * 1000), count=count
        )
        claimed, deleted = raw[1], raw[2] if len(raw) > 2 else []
        if deleted:
            # trimmed away (the stream's length bound) while pending: nothing left to answer
            self._log.error(
                "intake: %d taken %s events were trimmed before being finished", len(deleted), platform
            )
            await self._redis.xack(stream, GROUP, *deleted)
        return [self._entry(platform, str(i), fields, True) for i, fields in claimed if fields is not None]

    async def renew(self, platform: str, entry_ids: Sequence[str]) -> list[str]:
        """Keep holding these events; the ids another replica took over meanwhile."""
        if not entry_ids:
            return []
        lost = await self._renew(
            keys=[self._keys.intake_stream(platform)], args=[GROUP, self.consumer, *entry_ids]
        )
        return [str(entry_id) for entry_id in lost]

    async def finish(self, platform: str, entry_ids: Sequence[str]) -> None:
        """These events are done with (one round trip for all): they leave the pending
        list and the stream, and their records go."""
        if entry_ids:
            keys, args = self._finish_call(platform, entry_ids)
            await self._finish(keys=keys, args=args)

    def _finish_call(
        self, platform: str, entry_ids: Sequence[str]
    ) -> tuple[list[str], list[str | int | bytes]]:
        jobs = [self._keys.intake_job(platform, entry_id) for entry_id in entry_ids]
        return [self._keys.intake_stream(platform), *jobs], [GROUP, *entry_ids]

    async def record(self, platform: str, entry_id: str, index: int, ref: MessageRef) -> None:
        """The answer to this event sent its `index`-th message (one round trip)."""
        value = orjson.dumps({"id": ref.id, "x": dict(ref.extra)} if ref.extra else {"id": ref.id})
        await self._record(
            keys=[self._keys.intake_job(platform, entry_id)], args=[index, value, self._seen_ttl]
        )

    async def recorded(self, platform: str, entry_id: str) -> list[MessageRef]:
        """The messages the answer to this event sent so far, in order."""
        raw = _fields((await self._redis.hgetall(self._keys.intake_job(platform, entry_id))).items())
        refs: list[MessageRef] = []
        for index in sorted((k for k in raw if k.isdigit()), key=int):
            try:
                value = orjson.loads(raw[index])
                refs.append(
                    MessageRef(str(value["id"]), {str(k): str(v) for k, v in value.get("x", {}).items()})
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                self._log.warning("intake: unreadable message record %s of %s", index, entry_id)
        return refs

    async def forget_consumers(self, platform: str, idle: float) -> int:
        """Remove the group's consumers that hold nothing and were idle `idle` seconds:
        every process start adds one (its name is new), and the group would keep them all."""
        stream = self._keys.intake_stream(platform)
        forgotten = 0
        for consumer in await self._redis.xinfo_consumers(stream, GROUP):
            name = _text(consumer.get("name"))
            holds = int(consumer.get("pending") or 0)
            if name != self.consumer and not holds and int(consumer.get("idle") or 0) >= idle * 1000:
                # DELCONSUMER answers how many events the consumer still held: 0 here
                forgotten += int(await self._redis.xgroup_delconsumer(stream, GROUP, name) == 0)
        return forgotten

    async def depth(self, platforms: Iterable[str]) -> tuple[int, int]:
        """(waiting: not yet taken by any worker, in progress: taken and not finished),
        over every platform's stream."""
        waiting = in_progress = 0
        for platform in platforms:
            try:
                groups = await self._redis.xinfo_groups(self._keys.intake_stream(platform))
            except ResponseError:  # no stream yet
                continue
            for group in groups:
                if _text(group.get("name")) != GROUP:
                    continue
                in_progress += int(group.get("pending") or 0)
                lag = group.get("lag")
                if lag is None:  # unknown after trimming: count what lies past the last taken
                    last = _text(group.get("last-delivered-id")) or "0-0"
                    lag = len(
                        await self._redis.xrange(self._keys.intake_stream(platform), f"({last}", "+") or ()
                    )
                waiting += int(lag)
        return waiting, in_progress

    def _entries(self, platform: str, raw: Any) -> list[Entry]:
        """The entries of one stream's XREADGROUP reply (RESP2: [[stream, messages]];
        RESP3: {stream: [messages]})."""
        if not raw:
            return []
        [batch] = raw.values() if isinstance(raw, dict) else [messages for _, messages in raw]
        messages = batch[0] if isinstance(raw, dict) else batch
        return [self._entry(platform, str(i), fields, False) for i, fields in messages]

    def _entry(self, platform: str, entry_id: str, fields: Any, resumed: bool) -> Entry:
        """The entry; marked unreadable (and logged) when it isn't an event."""
        try:
            values = _fields(fields)
            data = orjson.loads(values["d"])
            if isinstance(data, dict):
                return Entry(platform, entry_id, values["e"], data, resumed)
            problem = "its data is not an object"
        except (KeyError, ValueError, TypeError) as exc:
            problem = repr(exc)
        self._log.error("intake: %s entry %s is unreadable (%s); dropped", platform, entry_id, problem)
        return Entry(platform, entry_id, "", {}, resumed, unreadable=True)


def _fields(fields: Any) -> dict[str, str]:
    """Field → value, from a mapping, (field, value) pairs, or Lua's flat list."""
    if isinstance(fields, dict):
        return {_text(k): _text(v) for k, v in fields.items()}
    pairs = list(fields)
    if pairs and isinstance(pairs[0], tuple):
        return {_text(k): _text(v) for k, v in pairs}
    return {_text(pairs[i]): _text(pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)

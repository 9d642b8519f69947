"""A chat's recorded messages in Redis, shared by every replica, with their index.

Layout (every key of one chat carries the hash tag `{platform:chat}`, so a
Redis Cluster keeps a chat's keys in one slot):

- `log:{chat}:cfg` hash: `on`, `retention` (seconds), `since` (when recording began),
  and `docs` / `words`, what was ever recorded and not removed (the index's average
  message length);
- `log:{chat}:seq` counter: each recorded message gets the next number;
- `log:{chat}:m:{seq}` string: the message as compact JSON (platform id, author id
  and name, text, time, reply-to, thread, its index word count), expiring
  `retention` after the message's time;
- `log:{chat}:time` sorted set: seq by time, for spans (`since=`, /summary);
- `log:{chat}:ids:{day}` hash: the platform's message id → seq, per UTC day of
  the message (edits and deletes name the message; both platforms give its day);
- `log:{chat}:p:{day}` hash: term → the postings of that term on that day, five
  bytes each (seq as a big-endian uint32, then the term's count, at most 255);
  the term `@<author id>` lists what one person wrote, `#<thread id>` what was
  written in one thread or forum topic (filters).

A day's keys expire together once the last message of that day is past the
retention, so retention costs no sweeping (a day's words outlive its earliest
messages by at most that day: the postings then name a message that is gone,
and searching skips it). Postings packed in one hash per day, rather than a
sorted set or a key per word, keep the index at a few bytes per word plus a
field per distinct word and day (measured in `bench.chatlog`). Recording is one
script call: one round trip on the event path.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from core.chatlog.terms import Terms
from core.platform import Inbound
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

DAY = 86400
#: how long a replica trusts what it read of whether a chat records
STATE_SECONDS = 10.0
#: chats whose recording state a replica remembers at most
STATE_CHATS = 10_000
#: postings of one message in one term: seq (4 bytes, big-endian) + count (1 byte)
_ENTRY = struct.Struct(">IB")
POSTING = _ENTRY.size

_RECORD = """
-- KEYS: cfg, seq, time, ids(day), postings(day)
-- ARGV: message id, the message (JSON), at, day, words, then term and count pairs
--       (the author's `@id` term among them)
local on = redis.call('HGET', KEYS[1], 'on')
if on ~= '1' then return 0 end
local known = redis.call('HGET', KEYS[4], ARGV[1])
if known then return tonumber(known) end  -- delivered twice: recorded once
local retention = tonumber(redis.call('HGET', KEYS[1], 'retention'))
local at = tonumber(ARGV[3])
local day_end = (tonumber(ARGV[4]) + 1) * 86400
local seq = redis.call('INCR', KEYS[2])
local msg = string.sub(KEYS[2], 1, -4) .. 'm:' .. seq
redis.call('SET', msg, ARGV[2])
redis.call('EXPIREAT', msg, math.ceil(at + retention))
redis.call('ZADD', KEYS[3], at, seq)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (redis.call('TIME')[1] - retention))
redis.call('HINCRBY', KEYS[1], 'docs', 1)
redis.call('HINCRBY', KEYS[1], 'words', ARGV[5])
redis.call('HSET', KEYS[4], ARGV[1], seq)
redis.call('EXPIREAT', KEYS[4], day_end + retention)
local packed = string.char(math.floor(seq / 16777216) % 256, math.floor(seq / 65536) % 256,
  math.floor(seq / 256) % 256, seq % 256)
for i = 6, #ARGV, 2 do
  local before = redis.call('HGET', KEYS[5], ARGV[i]) or ''
  redis.call('HSET', KEYS[5], ARGV[i], before .. packed .. string.char(tonumber(ARGV[i + 1])))
end
redis.call('EXPIREAT', KEYS[5], day_end + retention)
return seq
"""

_UNPOST = """
-- KEYS[1]: a day's postings; ARGV[1]: seq whose postings go; ARGV[2..]: its terms
local packed = string.char(math.floor(ARGV[1] / 16777216) % 256, math.floor(ARGV[1] / 65536) % 256,
  math.floor(ARGV[1] / 256) % 256, ARGV[1] % 256)
for i = 2, #ARGV do
  local s = redis.call('HGET', KEYS[1], ARGV[i])
  if s then
    local kept = {}
    for j = 1, #s, 5 do
      if string.sub(s, j, j + 3) ~= packed then kept[#kept + 1] = string.sub(s, j, j + 4) end
    end
    if #kept == 0 then redis.call('HDEL', KEYS[1], ARGV[i])
    else redis.call('HSET', KEYS[1], ARGV[i], table.concat(kept)) end
  end
end
return #ARGV - 1
"""


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """One recorded message, as the platform described it."""

    message_id: str
    author_id: str
    author_name: str
    text: str
    at: float  # seconds since the epoch, the platform's time of the message
    reply_to: str | None = None
    thread_id: str | None = None
    seq: int = 0  # its number in this chat's log (0 before it is recorded)
    words: int = 0  # index words in its text (BM25's length), once recorded

    @property
    def day(self) -> int:
        return int(self.at // DAY)


@dataclass(frozen=True, slots=True)
class LogSettings:
    on: bool
    retention: float  # seconds
    since: float | None  # when recording began
    #: messages ever recorded and not removed, and their index words: BM25's average
    #: length (expiry doesn't count them down; their ratio stays the average)
    docs: int = 0
    words: int = 0
    #: messages in the log now (the timeline, trimmed to the retention as messages
    #: are recorded): BM25's collection size
    live: int = 0


class ChatLog:
    """Record, change and forget one chat's messages; read them back by number or time."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        terms: Terms,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.terms = terms
        self._clock = clock
        self._monotonic = monotonic
        self._record = redis.register_script(_RECORD)
        self._unpost = redis.register_script(_UNPOST)
        #: (platform, chat) → (trusted until, records?): most chats never record, and
        #: their messages then cost neither stemming nor a round trip
        self._recording: OrderedDict[tuple[str, str], tuple[float, bool]] = OrderedDict()

    async def records(self, platform: str, chat_id: str) -> bool:
        """Whether the chat records, as read at most `STATE_SECONDS` ago. The record
        script checks again, so a chat turned off elsewhere never records a message;
        one turned on elsewhere starts within `STATE_SECONDS` here."""
        key = (platform, chat_id)
        known = self._recording.get(key)
        if known is not None and known[0] > self._monotonic():
            return known[1]
        on = await self._redis.hget(self._key(platform, chat_id, "cfg"), "on") == "1"
        self._remember(platform, chat_id, on)
        return on

    def _remember(self, platform: str, chat_id: str, on: bool) -> None:
        key = (platform, chat_id)
        self._recording[key] = (self._monotonic() + STATE_SECONDS, on)
        self._recording.move_to_end(key)
        while len(self._recording) > STATE_CHATS:
            self._recording.popitem(last=False)

    def _key(self, platform: str, chat_id: str, *parts: object) -> str:
        return self._keys.chat_log(platform, chat_id, *parts)

    async def settings(self, platform: str, chat_id: str) -> LogSettings | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key(platform, chat_id, "cfg"))
        pipe.zcard(self._key(platform, chat_id, "time"))
        raw, live = await pipe.execute()
        if not raw:
            return None
        since = raw.get("since")
        return LogSettings(
            on=raw.get("on") == "1",
            retention=float(raw.get("retention", 0)),
            since=float(since) if since else None,
            docs=max(0, int(raw.get("docs", 0))),
            words=max(0, int(raw.get("words", 0))),
            live=int(live),
        )

    async def turn_on(self, platform: str, chat_id: str, retention: float) -> LogSettings:
        """Start recording (or change the retention of what is recorded from now on)."""
        key = self._key(platform, chat_id, "cfg")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"on": "1", "retention": str(retention)})
        pipe.hsetnx(key, "since", str(self._clock()))
        await pipe.execute()
        self._remember(platform, chat_id, True)
        found = await self.settings(platform, chat_id)
        assert found is not None
        return found

    async def turn_off(self, platform: str, chat_id: str) -> int:
        """Stop recording and delete everything recorded in the chat; how many keys went."""
        self._remember(platform, chat_id, False)
        deleted = 0
        batch: list[str] = []
        pattern = self._keys.chat_log_pattern(platform, chat_id)
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self._redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self._redis.unlink(*batch)
        return deleted

    async def record(self, platform: str, chat_id: str, message: LoggedMessage) -> int:
        """Record one message in one round trip; its seq, or 0 when the chat is not recorded."""
        if not await self.records(platform, chat_id):
            return 0
        counts = self.terms.counts(message.text)
        words = sum(counts.values())
        postings = {term: min(255, n) for term, n in counts.items()}
        postings.update(dict.fromkeys(place_terms(message), 1))
        keys = [
            self._key(platform, chat_id, "cfg"),
            self._key(platform, chat_id, "seq"),
            self._key(platform, chat_id, "time"),
            self._key(platform, chat_id, "ids", message.day),
            self._key(platform, chat_id, "p", message.day),
        ]
        args: list[str | int | float] = [
            message.message_id,
            _encode(message, words),
            message.at,
            message.day,
            words,
            *(item for pair in postings.items() for item in pair),
        ]
        return int(await self._record(keys=keys, args=args))

    async def find(self, platform: str, chat_id: str, message_id: str, at: float) -> LoggedMessage | None:
        """A recorded message by the platform's id (`at`: any time on its day)."""
        if not await self.records(platform, chat_id):
            return None
        seq = await self._redis.hget(self._key(platform, chat_id, "ids", int(at // DAY)), message_id)
        if seq is None:
            return None
        found = await self.messages(platform, chat_id, [int(seq)])
        return found[0] if found else None

    async def remove(self, platform: str, chat_id: str, message: LoggedMessage) -> None:
        """Remove a recorded message everywhere: its text, its place in time, its index."""
        terms = [*self.terms.counts(message.text), *place_terms(message)]
        await self._unpost(keys=[self._key(platform, chat_id, "p", message.day)], args=[message.seq, *terms])
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(self._key(platform, chat_id, "cfg"), "docs", -1)
        pipe.hincrby(
            self._key(platform, chat_id, "cfg"), "words", -sum(self.terms.counts(message.text).values())
        )
        pipe.delete(self._key(platform, chat_id, "m", message.seq))
        pipe.zrem(self._key(platform, chat_id, "time"), message.seq)
        pipe.hdel(self._key(platform, chat_id, "ids", message.day), message.message_id)
        await pipe.execute()

    async def delete(self, platform: str, chat_id: str, message_id: str, at: float) -> bool:
        """The platform deleted a message: it is forgotten. False when it was not recorded."""
        found = await self.find(platform, chat_id, message_id, at)
        if found is None:
            return False
        await self.remove(platform, chat_id, found)
        return True

    async def edit(self, platform: str, chat_id: str, message_id: str, at: float, text: str) -> bool:
        """The platform edited a message: its new text replaces the old, in the index too."""
        found = await self.find(platform, chat_id, message_id, at)
        if found is None:
            return False
        await self.remove(platform, chat_id, found)
        changed = replace(found, text=text, seq=0)
        return await self.record(platform, chat_id, changed) > 0

    async def forget_user(self, platform: str, chat_id: str, author_id: str) -> int:
        """Remove every recorded message of one person (found by their `@id` postings
        over the retention); how many."""
        settings = await self.settings(platform, chat_id)
        if settings is None:
            return 0
        now = self._clock()
        days = range(int((now - settings.retention) // DAY), int(now // DAY) + 1)
        mine = await self.postings(platform, chat_id, days, [author_term(author_id)])
        seqs = sorted({seq for _, packed in mine for seq, _ in entries(packed)})
        forgotten = 0
        for start in range(0, len(seqs), 500):
            for message in await self.messages(platform, chat_id, seqs[start : start + 500]):
                if message.author_id == author_id:
                    await self.remove(platform, chat_id, message)
                    forgotten += 1
        return forgotten

    async def last_from(
        self, platform: str, chat_id: str, author_id: str, thread: str | None = None
    ) -> LoggedMessage | None:
        """The newest recorded message of one person (/catchup): the newest day with
        their `@id` postings, read in one round trip, then that day's messages of theirs
        (by time: a backfill records old messages with new numbers), in `thread` (see
        `in_place`)."""
        settings = await self.settings(platform, chat_id)
        if settings is None:
            return None
        now = self._clock()
        days = list(range(int(now // DAY), int((now - settings.retention) // DAY) - 1, -1))
        pipe = self._redis.pipeline(transaction=False)
        for day in days:
            pipe.execute_command(
                "HGET", self._key(platform, chat_id, "p", day), author_term(author_id), NEVER_DECODE=True
            )
        for packed in await pipe.execute():
            if not packed:
                continue
            found = await self.messages(platform, chat_id, [seq for seq, _ in entries(packed)])
            mine = [m for m in found if m.author_id == author_id and in_place(m, thread)]
            if mine:
                return max(mine, key=written_order)
        return None

    async def count(self, platform: str, chat_id: str, since: float) -> int:
        """How many recorded messages were written since `since`."""
        return int(await self._redis.zcount(self._key(platform, chat_id, "time"), since, "+inf"))

    async def postings(
        self, platform: str, chat_id: str, days: Iterable[int], terms: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        """The packed postings of `terms` on `days`, in one round trip (empty ones left out)."""
        if not terms:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for day in days:
            pipe.execute_command("HMGET", self._key(platform, chat_id, "p", day), *terms, NEVER_DECODE=True)
        found: list[tuple[str, bytes]] = []
        for values in await pipe.execute():
            found += [(term, packed) for term, packed in zip(terms, values, strict=True) if packed]
        return found

    async def span(self, platform: str, chat_id: str, since: float, until: float = math.inf) -> list[int]:
        """Seqs of the messages recorded between two times, oldest first (messages of
        the same time in no particular order: `written_order` sorts them)."""
        raw = await self._redis.zrangebyscore(self._key(platform, chat_id, "time"), since, until)
        return [int(str(s)) for s in raw]

    async def newest_time(self, platform: str, chat_id: str, count: int) -> float | None:
        """The time of the `count`-th newest recorded message (None: fewer are recorded);
        the span from it holds the newest `count`, and any written in the same tick."""
        found = await self._redis.zrevrange(
            self._key(platform, chat_id, "time"), count - 1, count - 1, withscores=True
        )
        return float(found[0][1]) if found else None

    async def messages(self, platform: str, chat_id: str, seqs: Sequence[int]) -> list[LoggedMessage]:
        """The recorded messages with these numbers, in that order (gone ones left out)."""
        if not seqs:
            return []
        raw = await self._redis.mget([self._key(platform, chat_id, "m", seq) for seq in seqs])
        found = (_decode(seq, str(value)) for seq, value in zip(seqs, raw, strict=True) if value is not None)
        return [message for message in found if message is not None]


def loggable(event: Inbound) -> LoggedMessage | None:
    """A message as the chat log keeps it, written live or read from the platform's
    history (None when there is no text to keep)."""
    posted = event.posted
    if posted is None or not event.text or event.command is not None:
        return None
    return LoggedMessage(
        message_id=posted.message_id,
        author_id=event.author.user_id,
        author_name=event.author.display_name,
        text=event.text,
        at=posted.at,
        reply_to=posted.reply_to,
        thread_id=event.thread_id,
    )


def written_order(message: LoggedMessage) -> tuple[float, int, int]:
    """The order messages were written in: by time, then, within one tick of the
    platform's clock (Telegram's is a second), by the platform's message id, which
    grows on both platforms; the log's own number (recording order) last."""
    number = int(message.message_id) if message.message_id.isdigit() else 0
    return (message.at, number, message.seq)


def entries(packed: bytes) -> Iterator[tuple[int, int]]:
    """(seq, count) of each posting in a postings string (written by `_RECORD`)."""
    return _ENTRY.iter_unpack(packed)


def author_term(author_id: str) -> str:
    """The postings term of everything one person wrote (a word can't start with @)."""
    return "@" + author_id


def thread_term(thread_id: str) -> str:
    """The postings term of everything written in one thread or forum topic (a word
    can't start with #): a thread is a chat of its own for /search and /summary."""
    return "#" + thread_id


def place_terms(message: LoggedMessage) -> list[str]:
    """The terms that say who wrote a message and where, besides its words."""
    where = [thread_term(message.thread_id)] if message.thread_id else []
    return [author_term(message.author_id), *where]


def in_place(message: LoggedMessage, thread: str | None) -> bool:
    """Whether a message belongs to a place: a thread's id, "" for the chat outside
    its threads, None for anywhere in the chat."""
    return thread is None or (message.thread_id or "") == thread


def _encode(message: LoggedMessage, words: int) -> str:
    """A message as one compact JSON string: a hash per message costs hundreds of
    bytes more once its text is longer than Redis's small-hash limit."""
    fields: dict[str, object] = {"id": message.message_id, "a": message.author_id, "n": message.author_name}
    fields |= {"t": message.text, "at": message.at, "w": words}
    if message.reply_to:
        fields["r"] = message.reply_to
    if message.thread_id:
        fields["th"] = message.thread_id
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _decode(seq: int, raw: str) -> LoggedMessage | None:
    """None for an unreadable record (one bad record never stops the rest)."""
    try:
        data = json.loads(raw)
        return LoggedMessage(
            message_id=str(data["id"]),
            author_id=str(data["a"]),
            author_name=str(data.get("n", "")),
            text=str(data["t"]),
            at=float(data["at"]),
            reply_to=data.get("r") or None,
            thread_id=data.get("th") or None,
            seq=seq,
            words=int(data.get("w", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None

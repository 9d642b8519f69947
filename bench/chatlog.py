"""The chat log's cost (issue 13): recording, /search over 100,000 messages, memory.

    .venv/bin/python -m bench.chatlog [--messages 100000] [--small 10000] [--queries 300]
                                      [--servers valkey,redis] [--profile] [--json out.json]

Each server (the Valkey that Herald embeds, and the `redis-server` on PATH) is
started privately with no persistence (`bots.redis_server.RedisServerProcess`)
and gets, in order:

1. **Search at `--small` messages, then at `--messages` messages**, each in a
   chat of its own. The chat text is generated (`Chatter`): a 5,000-word
   Zipf–Mandelbrot vocabulary (a few hundred real chat words at its head,
   pronounceable made-up words after them, some inflected), English function
   words for about 40 % of the tokens, a 20,000-word tail of rare words
   (names, typos, jargon: 2 % of the tokens), a few numbers, messages of
   120–280 characters (200 on average) spread evenly over 30 days, 500
   authors of Zipf-distributed activity, Discord-like snowflake ids, 15 % of
   messages replying to a recent one. The chat is filled through the record
   path itself: a `ChatLog` whose script object only captures the keys and
   arguments `ChatLog.record` sends, which are then replayed as `EVALSHA` of
   the very same script, 500 to a pipeline (the server does exactly the work
   of one `record()` per message; only the round trips are batched). Stems
   are memoised per word while filling (`MemoTerms`: same terms, faster).
   Queries (the same set on every server): 1–6 words, each a common one
   (drawn from the text's own distribution) or a rare one (vocabulary rank
   ≥ 1,000, or the rare tail); half with no filter, the rest with an
   author, a `since` (1–14 days back), or both. After a warm-up, each query's
   `search()` call (core + Redis, no model) is timed alone, one at a time, with
   the real `Terms` (Snowball stemming, as deployed).
2. **Memory** of each chat: used_memory (`INFO memory`) less the client
   buffers (`MEMORY STATS` clients.normal) before and after its fill, over
   the messages; for the large chat a breakdown by `MEMORY USAGE … SAMPLES 0`
   (messages and postings: a random 3,000 of each, scaled up by
   their exact count; every other key), the rest being the key-space and
   expires tables and allocator rounding. (The two layout what-ifs this bench
   first measured, a message as one string and one postings hash per day, are
   now the store's layout.)
3. **Recording cost**: `--records` messages recorded one after another with
   the real `Terms` (time per `record()` call, commands per call counted by a
   counting client subclass as `tests/test_chatlog_store.py` does, round trips
   by a counting connection that leaves a new connection's handshake out),
   then as many again by `--recorders` concurrent tasks (throughput); the
   server's CPU per record comes from `INFO cpu`, the script's wall-clock
   time from `INFO commandstats`. A what-if row repeats the sequential run
   with memoised stems.

Searches also run once more (`--no-what-if` skips it) with the candidates'
lengths looked up instead of re-stemmed (what storing the length with the
message would give). `--profile` runs 100 of the large chat's queries again
under cProfile (first server only) and prints the top functions by own time.
Expect about 2½ minutes with the defaults on 2 CPUs.

The exit status is 0 whatever the numbers say: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import gc
import io
import itertools
import json
import math
import os
import platform
import pstats
import random
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, KeyT

from bench.stream_probe import cpu_model
from bots.redis_server import RedisServerProcess, find_server_binary
from core.chatlog.search import Hit, SearchFilter, search
from core.chatlog.store import DAY, POSTING, ChatLog, LoggedMessage, LogSettings
from core.chatlog.terms import STOPWORDS, Terms
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis

COMMAND = ".venv/bin/python -m bench.chatlog"
PLATFORM = "discord"
PREFIX = "herald"
SPREAD = 30 * DAY  # the messages' span
RETENTION = 35 * DAY  # longer than the span: nothing is trimmed while measuring
LIMIT = 8  # /search's default number of hits
TARGET_P99_MS = 50.0
PROFILED = 100  # queries run again under cProfile with --profile
TARGET_BYTES = 1024.0
FILL_BATCH = 500  # EVALSHA per pipeline while filling
FILL_DEPTH = 2  # pipelines in flight while filling
DISCORD_EPOCH_MS = 1420070400000

# --------------------------------------------------------------------------- the chat's text

#: the head of the vocabulary: common chat words that are not stop words, most common first
_HEAD = """
just like get can think know good time people would now see also work yeah ok lol thanks need make
want going really back still right well even way new day today tomorrow yesterday week thing things
look one two three got go said say much more some any all out up about only sure maybe probably
actually pretty nice great cool fine bad better best last next first before after again already yes
help please sorry hey hi hello morning night tonight later soon fix bug issue test build deploy
release server update change code review merge branch version error problem working broken check
try use used using run running call meeting lunch coffee game play watch read write send sent
file files link page site app phone message chat team project plan idea question answer reason
point part place home office remote weekend monday friday month year hour minute minutes hours
days weeks money price cost free paid buy sell order ship store data database query cache queue
log logs alert alerts dashboard metric metrics latency memory disk cpu network config settings
user users account login password email docs guide note notes list item items task tasks ticket
done start started stop stopped wait waiting move moved open close closed feel felt love hate
funny weird strange crazy awesome amazing terrible easy hard simple quick slow fast big small
"""
HEAD = _HEAD.split()

_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fr gr pr tr bl cl fl gl pl sl st sp sh ch th"
ONSETS = _ONSETS.split()
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou", "ie", "oo")
CODAS = ["", "", "", "n", "r", "l", "s", "t", "m", "nd", "st", "ck", "ng", "rt", "x"]
SUFFIXES = ("s", "s", "ed", "ing", "er", "ly", "es")
STOP_SHARE = 0.40  # of the tokens: function words (the index drops them)
TAIL_SHARE = 0.02  # of the tokens: the rare tail
NUMBER_SHARE = 0.015
INFLECTED = 0.25  # of the made-up words: with a suffix that the stemmer strips
VOCABULARY = 5000
TAIL = 20000
AUTHORS = 500
ZIPF_S = 1.0
ZIPF_Q = 10.0  # Zipf–Mandelbrot offset: the top word is ~1.5 % of the content words
RARE_RANK = 1000


def _cumulative(count: int, s: float, q: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + q) ** s for rank in range(1, count + 1)))


def _made_up(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        syllables = rng.choice((1, 2, 2, 2, 3, 3))
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        if 3 <= len(word) <= 12 and word not in taken and word not in STOPWORDS:
            taken.add(word)
            words.append(word)
    return words


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    terms: list[str]
    kind: str  # "none", "author", "since", "author+since"
    where: SearchFilter
    words: int
    rare: int  # how many of its words were drawn as rare


class Chatter:
    """Generated chat messages and questions, reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        taken = set(HEAD)
        self.words = HEAD + _made_up(rng, VOCABULARY - len(HEAD), taken)
        self.tail = _made_up(rng, TAIL, taken)
        self.cumulative = _cumulative(len(self.words), ZIPF_S, ZIPF_Q)
        self.stop = sorted(STOPWORDS)
        rng.shuffle(self.stop)
        self.stop_cumulative = _cumulative(len(self.stop), 1.0, 1.0)
        self.authors = [
            (
                str(rng.randrange(10**17, 10**18)),
                rng.choice(self.words[300:]).capitalize() + str(rng.randrange(100)),
            )
            for _ in range(AUTHORS)
        ]
        self.author_cumulative = _cumulative(AUTHORS, 1.0, 5.0)

    def text(self, rng: random.Random) -> str:
        target = rng.randint(120, 280)
        content = rng.choices(self.words, cum_weights=self.cumulative, k=64)
        stop = rng.choices(self.stop, cum_weights=self.stop_cumulative, k=64)
        parts: list[str] = []
        length = -1
        i = 0
        while length < target and i < 64:
            r = rng.random()
            if r < STOP_SHARE:
                word = stop[i]
            elif r < STOP_SHARE + TAIL_SHARE:
                word = rng.choice(self.tail)
            elif r < STOP_SHARE + TAIL_SHARE + NUMBER_SHARE:
                word = str(rng.choice((rng.randrange(2, 60), rng.randrange(100, 5000), 2024, 2025, 2026)))
            else:
                word = content[i]
                if word not in HEAD and rng.random() < INFLECTED:
                    word += rng.choice(SUFFIXES)
            if rng.random() < 0.08:
                word += rng.choice(",.?!")
            parts.append(word)
            length += len(word) + 1
            i += 1
        parts[0] = parts[0].capitalize()
        return " ".join(parts)

    def author(self, rng: random.Random) -> tuple[str, str]:
        return rng.choices(self.authors, cum_weights=self.author_cumulative)[0]

    def messages(self, count: int, now: float, seed: int) -> list[LoggedMessage]:
        """`count` messages spread evenly over the `SPREAD` before `now`, oldest first."""
        rng = random.Random(seed)
        step = SPREAD / count
        out: list[LoggedMessage] = []
        for n in range(count):
            at = round(now - SPREAD + (n + rng.random()) * step, 3)
            snowflake = str(((int(at * 1000) - DISCORD_EPOCH_MS) << 22) | (n % 4096))
            reply = out[-rng.randint(1, min(50, n))].message_id if n and rng.random() < 0.15 else None
            author_id, name = self.author(rng)
            out.append(LoggedMessage(snowflake, author_id, name, self.text(rng), at, reply_to=reply))
        return out

    def queries(self, count: int, now: float, seed: int, terms: Terms) -> list[Query]:
        rng = random.Random(seed)
        out: list[Query] = []
        while len(out) < count:
            words: list[str] = []
            rare = 0
            for _ in range(rng.randint(1, 6)):
                if rng.random() < 0.5:
                    words.append(rng.choices(self.words, cum_weights=self.cumulative)[0])
                elif rng.random() < 0.75:
                    words.append(rng.choice(self.words[RARE_RANK:]))
                    rare += 1
                else:
                    words.append(rng.choice(self.tail))
                    rare += 1
            kind = rng.choices(("none", "author", "since", "author+since"), weights=(50, 20, 20, 10))[0]
            author = self.author(rng)[0] if "author" in kind else None
            since = round(now - rng.uniform(1, 14) * DAY, 3) if "since" in kind else None
            text = " ".join(words)
            query_terms = terms.query(text)
            if query_terms:
                where = SearchFilter(since=since, author_id=author)
                out.append(Query(text, query_terms, kind, where, len(words), rare))
        return out


# --------------------------------------------------------------------------- instrumented pieces


class MemoTerms(Terms):
    """`Terms` with every word's stem remembered: the same terms, without re-stemming."""

    def __init__(self, language: str = "english") -> None:
        super().__init__(language)
        self._memo: dict[str, str] = {}

    def stems(self, words: Iterable[str]) -> list[str]:
        words = list(words)
        memo = self._memo
        missing = [w for w in dict.fromkeys(words) if w not in memo]
        if missing:
            memo.update(zip(missing, super().stems(missing), strict=True))
        return [memo[w] for w in words]


class TimedTerms(Terms):
    """`Terms` that adds up the time spent in `counts` (search re-derives candidates' lengths)."""

    def __init__(self, inner: Terms) -> None:
        super().__init__(inner.language)
        self._inner = inner
        self.spent = 0.0
        self.calls = 0

    def counts(self, text: str) -> Counter[str]:
        started = time.perf_counter()
        try:
            return self._inner.counts(text)
        finally:
            self.spent += time.perf_counter() - started
            self.calls += 1

    def query(self, text: str) -> list[str]:
        return self._inner.query(text)


class TimedLog(ChatLog):
    """A `ChatLog` that adds up the time awaiting its reads, and the postings they return."""

    redis_s = 0.0
    postings_read = 0
    candidates_read = 0

    async def settings(self, platform: str, chat_id: str) -> LogSettings | None:
        started = time.perf_counter()
        try:
            return await super().settings(platform, chat_id)
        finally:
            self.redis_s += time.perf_counter() - started

    async def postings(
        self, platform: str, chat_id: str, days: Iterable[int], terms: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        started = time.perf_counter()
        found = await super().postings(platform, chat_id, days, terms)
        self.redis_s += time.perf_counter() - started
        self.postings_read += sum(len(packed) for _, packed in found) // POSTING
        return found

    async def messages(self, platform: str, chat_id: str, seqs: Sequence[int]) -> list[LoggedMessage]:
        started = time.perf_counter()
        self.candidates_read += len(seqs)
        try:
            return await super().messages(platform, chat_id, seqs)
        finally:
            self.redis_s += time.perf_counter() - started


class _CaptureScript(AsyncScript):
    """Stands for the record script: keeps what `ChatLog.record` would send, sends nothing."""

    def __init__(self, registered_client: Redis, script: str) -> None:
        super().__init__(registered_client, script)
        self.source = script
        self.calls: list[tuple[list[KeyT], list[EncodableT]]] = []

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Any = None,
    ) -> int:
        self.calls.append((list(keys or []), list(args or [])))
        return len(self.calls)


class _CaptureRedis(Redis):
    """A client never connected: its scripts only capture (see `capture`)."""

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        return _CaptureScript(self, str(script))

    async def hget(self, name: Any, key: Any) -> Any:
        """Every chat records (`ChatLog.records` asks whether the chat's `on` is "1")."""
        return "1"


class Counting(Redis):
    """A client that counts the commands it sends, as tests/test_chatlog_store.py does (a
    pipeline's commands are not counted here; `RoundTrips` counts a pipeline as one)."""

    sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        Counting.sent += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class RoundTrips(Connection):
    """A connection that counts what it writes: one per command or per pipeline (the handshake
    of a new connection, HELLO and CLIENT SETINFO, is counted apart, as `opened`)."""

    sent = 0
    opened = 0
    _handshake = False

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        RoundTrips.opened += 1
        self._handshake = True
        try:
            await super().on_connect_check_health(check_health=check_health)
        finally:
            self._handshake = False

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._handshake:
            RoundTrips.sent += 1
        await super().send_packed_command(command, check_health)


def counting_client(url: str) -> Counting:
    """Herald's client configuration (`connect_redis`), counting commands and round trips."""
    client = connect_redis(url)
    assert isinstance(client, Redis), "round trips are counted on one server"
    pool = client.connection_pool
    pool.connection_class = RoundTrips
    return cast(Counting, Counting.from_pool(pool))


# --------------------------------------------------------------------------- filling


@dataclass(slots=True)
class Fill:
    chat: str
    messages: list[LoggedMessage]
    calls: list[tuple[list[KeyT], list[EncodableT]]]
    source: str
    terms: list[frozenset[str]]  # each message's index terms (for the expected hits of filtered queries)
    postings: int  # (message, term) pairs
    postings_keys: list[str]  # distinct (day, term) keys


async def capture(messages: Sequence[LoggedMessage], chat: str, terms: Terms) -> Fill:
    """What `ChatLog.record` sends for each message, captured (no server involved)."""
    stand_in = _CaptureRedis()
    log = ChatLog(stand_in, Keys(PREFIX), terms)
    for message in messages:
        await log.record(PLATFORM, chat, message)
    script = log._record
    assert isinstance(script, _CaptureScript)
    # the record script's arguments after the first five are its term and count pairs
    sets = [frozenset(str(term) for term in args[5::2]) for _, args in script.calls]
    postings_keys = sorted({str(k) for keys, _ in script.calls for k in keys[4:]})
    await stand_in.aclose()
    return Fill(chat, list(messages), script.calls, script.source, sets, sum(map(len, sets)), postings_keys)


async def replay(client: Redis, fill: Fill) -> float:
    """Every captured record call as EVALSHA of the same script, pipelined; seconds taken."""
    log = ChatLog(client, Keys(PREFIX), Terms())
    await log.turn_on(PLATFORM, fill.chat, RETENTION)
    sha = await client.script_load(fill.source)
    batches = [fill.calls[i : i + FILL_BATCH] for i in range(0, len(fill.calls), FILL_BATCH)]
    queue: asyncio.Queue[list[tuple[list[KeyT], list[EncodableT]]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            pipe = client.pipeline(transaction=False)
            for keys, args in batch:
                pipe.evalsha(sha, len(keys), *keys, *args)
            results = await pipe.execute()
            if not all(int(r) > 0 for r in results):
                raise RuntimeError("a record call recorded nothing")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(FILL_DEPTH)))
    return time.perf_counter() - started


# --------------------------------------------------------------------------- memory

SAMPLE_KEYS = 3000  # messages and postings keys measured one by one (MEMORY USAGE)
MESSAGE_FIELDS = ("id", "a", "n", "t", "at", "r", "th", "d")  # the record script's message hash


@dataclass(frozen=True, slots=True)
class Snapshot:
    used: int  # used_memory
    clients: int  # client buffers (MEMORY STATS clients.normal): not data
    main_table: int  # the key space's hash tables (MEMORY STATS db.0)
    expires_table: int
    keys: int  # DBSIZE

    @property
    def data(self) -> int:
        return self.used - self.clients


async def snapshot(client: Redis) -> Snapshot:
    info = await client.info("memory")
    stats = await client.memory_stats()
    db = stats.get("db.0") or {}
    return Snapshot(
        int(info["used_memory"]),
        int(stats.get("clients.normal", 0)),
        int(db.get("overhead.hashtable.main", 0)),
        int(db.get("overhead.hashtable.expires", 0)),
        int(await client.dbsize()),
    )


@dataclass(slots=True)
class Memory:
    messages: int
    before: Snapshot
    after: Snapshot
    groups: dict[str, tuple[int, float]]  # group → (keys, bytes by MEMORY USAGE, sampled groups scaled up)
    encodings: dict[str, str]
    listpack_config: dict[str, str]
    postings_payload: int  # bytes of packed postings (5 per message and term)
    what_ifs: list[tuple[str, float, float]] = field(default_factory=list)  # layout, now, then (B/message)

    @property
    def delta(self) -> int:
        return self.after.data - self.before.data

    @property
    def per_message(self) -> float:
        return self.delta / self.messages


async def memory_usage(client: Redis, keys: Sequence[str]) -> list[int]:
    found: list[int] = []
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 1000]:
            pipe.memory_usage(key, samples=0)
        found += [int(n or 0) for n in await pipe.execute()]
    return found


async def measure_memory(client: Redis, fill: Fill, before: Snapshot, after: Snapshot) -> Memory:
    """MEMORY USAGE of every key of the chat but the messages and postings, of
    which a random sample is measured and scaled up by their exact count."""
    keys = Keys(PREFIX)
    rng = random.Random(len(fill.messages))
    n = len(fill.messages)
    days = sorted({m.day for m in fill.messages})
    messages = [keys.chat_log(PLATFORM, fill.chat, "m", seq) for seq in range(1, n + 1)]
    plan = {
        "messages": messages,
        "timeline zset": [keys.chat_log(PLATFORM, fill.chat, "time")],
        "id maps (per day)": [keys.chat_log(PLATFORM, fill.chat, "ids", day) for day in days],
        "postings (a hash per day)": fill.postings_keys,
        "cfg + seq": [keys.chat_log(PLATFORM, fill.chat, "cfg"), keys.chat_log(PLATFORM, fill.chat, "seq")],
    }
    groups: dict[str, tuple[int, float]] = {}
    encodings: dict[str, str] = {}
    for group, members in plan.items():
        sample = rng.sample(members, SAMPLE_KEYS) if len(members) > SAMPLE_KEYS else list(members)
        used = await memory_usage(client, sample)
        groups[group] = (len(members), sum(used) * len(members) / len(sample))
        encodings[group] = str(await client.object("encoding", sample[0]))
    config = await client.config_get("*-max-listpack-*")
    return Memory(
        n,
        before,
        after,
        groups,
        encodings,
        {str(k): str(v) for k, v in sorted(config.items()) if str(k).startswith(("hash", "zset"))},
        fill.postings * POSTING,
    )


async def _grown(client: Redis, commands: Sequence[tuple[EncodableT, ...]]) -> int:
    """used_memory growth (client buffers left out) of running these commands, pipelined."""
    before = await snapshot(client)
    for start in range(0, len(commands), 1000):
        pipe = client.pipeline(transaction=False)
        for command in commands[start : start + 1000]:
            pipe.execute_command(*command)
        await pipe.execute()
    return (await snapshot(client)).data - before.data


async def _flush(client: Redis) -> None:
    """FLUSHDB, freeing at once (Valkey 8 frees in the background by default: lazyfree-lazy-user-flush)."""
    await client.execute_command("FLUSHDB", "SYNC")  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- search


@dataclass(frozen=True, slots=True)
class QuerySample:
    seconds: float
    redis_s: float  # awaiting the ChatLog's reads (client and server)
    stem_s: float  # re-deriving candidates' lengths (Terms.counts)
    postings: int  # postings decoded
    candidates: int  # messages read for the exact BM25
    round_trips: int
    hits: int
    expected: int  # min(limit, messages that match and pass the filter)
    kind: str
    words: int
    rare: int


@dataclass(slots=True)
class SearchRun:
    messages: int
    samples: list[QuerySample]
    server_us_per_query: float
    profile: str = ""
    what_if: list[QuerySample] = field(default_factory=list)


def expected_hits(fill: Fill, query: Query, by_author: dict[str, list[int]], times: list[float]) -> int:
    """How many hits a search could give: messages passing the filter that hold a query term."""
    wanted = set(query.terms)
    where = query.where
    if where.author_id is not None:
        pool: Iterable[int] = by_author.get(where.author_id, [])
    elif where.since is not None:
        pool = range(bisect.bisect_left(times, where.since), len(times))
    else:
        pool = range(len(times))
    found = 0
    for i in pool:
        if (where.since is None or times[i] >= where.since) and not wanted.isdisjoint(fill.terms[i]):
            found += 1
            if found >= LIMIT:
                break
    return found


async def run_queries(
    log: TimedLog,
    terms: TimedTerms,
    fill: Fill,
    queries: Sequence[Query],
    now: float,
    *,
    warmup: int,
    check: bool = True,
) -> list[QuerySample]:
    by_author: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(fill.messages):
        by_author[m.author_id].append(i)
    times = [m.at for m in fill.messages]
    samples: list[QuerySample] = []
    gc.collect()
    for n, query in enumerate(queries):
        log.redis_s, log.postings_read, log.candidates_read = 0.0, 0, 0
        terms.spent = 0.0
        trips = RoundTrips.sent
        started = time.perf_counter()
        hits: list[Hit] = await search(
            log, PLATFORM, fill.chat, query.terms, limit=LIMIT, where=query.where, now=now
        )
        seconds = time.perf_counter() - started
        if n < warmup:
            continue
        expected = expected_hits(fill, query, by_author, times) if check and query.kind != "none" else -1
        samples.append(
            QuerySample(
                seconds,
                log.redis_s,
                terms.spent,
                log.postings_read,
                log.candidates_read,
                RoundTrips.sent - trips,
                len(hits),
                expected if expected >= 0 else min(LIMIT, len(hits)),
                query.kind,
                query.words,
                query.rare,
            )
        )
    return samples


async def server_cpu_s(client: Redis) -> float:
    """CPU seconds the server process has used (INFO cpu): unlike commandstats' wall-clock
    microseconds, not inflated when other processes take the server's CPU away."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def server_usec(client: Redis) -> float:
    """Microseconds the server spent in commands since the last CONFIG RESETSTAT (not INFO, CONFIG)."""
    stats = await client.info("commandstats")
    return float(
        sum(v["usec"] for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config")))
    )


async def search_at(
    client: Redis,
    fill: Fill,
    queries: Sequence[Query],
    now: float,
    warmup: int,
    *,
    profile: bool,
    what_if: bool,
) -> SearchRun:
    terms = TimedTerms(Terms())
    log = TimedLog(client, Keys(PREFIX), terms)
    await client.config_resetstat()
    samples = await run_queries(log, terms, fill, [*queries[:warmup], *queries], now, warmup=warmup)
    # the warm-up queries' server time is in the total too: share it out over all of them
    usec = await server_usec(client) / (len(queries) + warmup)
    run = SearchRun(len(fill.messages), samples, usec)
    if what_if:
        # Candidates' lengths at no cost (as if stored at record time): a dict lookup replaces stemming.
        # search() only adds up the counts: one entry holding the message's length (ARGV 9) will do
        lengths = {
            m.text: Counter({"": int(args[8])})
            for m, (_, args) in zip(fill.messages, fill.calls, strict=True)
        }
        free = TimedTerms(_Lookup(lengths))
        free_log = TimedLog(client, Keys(PREFIX), free)
        run.what_if = await run_queries(
            free_log, free, fill, [*queries[:warmup], *queries], now, warmup=warmup
        )
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await run_queries(log, terms, fill, queries[:PROFILED], now, warmup=0, check=False)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(14)
        run.profile = _trim_profile(stream.getvalue())
    return run


class _Lookup(Terms):
    """Candidates' term counts from a table (stands for a length stored with the message)."""

    def __init__(self, table: dict[str, Counter[str]]) -> None:
        super().__init__()
        self._table = table

    def counts(self, text: str) -> Counter[str]:
        found = self._table.get(text)
        return found if found is not None else super().counts(text)


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    head = [line for line in lines[:start] if "function calls" in line]
    return "\n".join(head + [line.rstrip() for line in lines[start:] if line.strip()])


# --------------------------------------------------------------------------- recording


@dataclass(slots=True)
class RecordRun:
    name: str
    latencies: list[float]
    wall: float
    cpu: float  # this process's CPU time over the run
    commands: int
    round_trips: int
    server_us: float  # the script's own time in the server, per call (INFO commandstats: wall clock)
    server_cpu_us: float  # the server's CPU time per record (INFO cpu)

    @property
    def count(self) -> int:
        return len(self.latencies)


async def record_run(
    client: Redis, name: str, chat: str, messages: Sequence[LoggedMessage], terms: Terms, concurrency: int
) -> RecordRun:
    log = ChatLog(client, Keys(PREFIX), terms)
    await log.turn_on(PLATFORM, chat, RETENTION)
    await log.record(PLATFORM, chat, messages[0])  # the script is loaded on the first call
    await client.config_resetstat()
    latencies: list[float] = []
    commands, trips = Counting.sent, RoundTrips.sent
    server_cpu = await server_cpu_s(client)

    async def recorder(part: Sequence[LoggedMessage]) -> None:
        for message in part:
            started = time.perf_counter()
            seq = await log.record(PLATFORM, chat, message)
            latencies.append(time.perf_counter() - started)
            assert seq > 0

    rest = list(messages[1:])
    parts = [rest[i::concurrency] for i in range(concurrency)]
    gc.collect()
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(recorder(part) for part in parts))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    commands, trips = Counting.sent - commands, RoundTrips.sent - trips
    server_cpu = await server_cpu_s(client) - server_cpu
    stats = await client.info("commandstats")
    script = stats.get("cmdstat_evalsha", {})
    usec = float(script.get("usec_per_call", math.nan))
    return RecordRun(name, latencies, wall, cpu, commands, trips, usec, 1e6 * server_cpu / len(latencies))


# --------------------------------------------------------------------------- one server


@dataclass(slots=True)
class ServerResult:
    name: str
    version: str
    #: messages, seconds, the script's µs per call (commandstats), the server's CPU µs per message
    fills: list[tuple[int, float, float, float]] = field(default_factory=list)
    searches: list[SearchRun] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    records: list[RecordRun] = field(default_factory=list)
    first_record_commands: int = 0


_STARTED = time.perf_counter()


def _progress(text: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


async def bench_server(
    name: str,
    url: str,
    fills: Sequence[Fill],
    queries: Sequence[Sequence[Query]],
    now: float,
    args: argparse.Namespace,
    record_messages: Sequence[LoggedMessage],
    memo: Terms,
) -> ServerResult:
    client = counting_client(url)
    try:
        info = await client.info("server")
        version = (
            f"{info.get('server_name', 'redis')} {info.get('valkey_version', info.get('redis_version', '?'))}"
        )
        result = ServerResult(name, version)
        for fill, chat_queries in zip(fills, queries, strict=True):
            _progress(f"{name}: filling {len(fill.messages):,} messages …")
            before = await snapshot(client)
            await client.config_resetstat()
            cpu = await server_cpu_s(client)
            seconds = await replay(client, fill)
            cpu = 1e6 * (await server_cpu_s(client) - cpu) / len(fill.messages)
            script = (await client.info("commandstats")).get("cmdstat_evalsha", {})
            usec = float(script.get("usec_per_call", math.nan))
            result.fills.append((len(fill.messages), seconds, usec, cpu))
            after = await snapshot(client)
            _progress(f"{name}: memory of {len(fill.messages):,} messages …")
            memory = await measure_memory(client, fill, before, after)
            big = fill is fills[-1]
            result.memory.append(memory)
            _progress(f"{name}: {len(chat_queries)} queries over {len(fill.messages):,} messages …")
            result.searches.append(
                await search_at(
                    client,
                    fill,
                    chat_queries,
                    now,
                    args.warmup,
                    profile=args.profile and big and name == args.servers[0],
                    what_if=args.what_if and big,
                )
            )
        _progress(f"{name}: recording {args.records} messages, sequential then {args.recorders} at once …")
        # The first call on a fresh client: EVALSHA fails (NOSCRIPT) unless the script is loaded.
        await client.script_flush()
        fresh = ChatLog(client, Keys(PREFIX), memo)
        await fresh.turn_on(PLATFORM, "first", RETENTION)
        sent = Counting.sent
        await fresh.record(PLATFORM, "first", record_messages[0])
        result.first_record_commands = Counting.sent - sent
        n = args.records + 1
        real = Terms()
        result.records.append(await record_run(client, "sequential", "rec-1", record_messages[:n], real, 1))
        result.records.append(
            await record_run(
                client,
                f"{args.recorders} concurrent",
                "rec-2",
                record_messages[n : 2 * n],
                real,
                args.recorders,
            )
        )
        result.records.append(
            await record_run(
                client, "sequential, stems memoised (what-if)", "rec-3", record_messages[2 * n :], memo, 1
            )
        )
        return result
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- report


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return math.nan
    return values[max(0, math.ceil(q * len(values)) - 1)]


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def _stats(values: Iterable[float]) -> tuple[float, float, float, float, float]:
    s = sorted(values)
    mean = sum(s) / len(s) if s else math.nan
    return percentile(s, 0.5), percentile(s, 0.95), percentile(s, 0.99), s[-1] if s else math.nan, mean


def _row(label: str, values: Sequence[float], extra: str = "") -> str:
    p50, p95, p99, top, mean = _stats(values)
    cells = " | ".join(_ms(v) for v in (p50, p95, p99, top, mean))
    return f"| {label} | {len(values)} | {cells} |{extra}"


def machine() -> str:
    model = cpu_model()
    usable = len(os.sched_getaffinity(0))
    return (
        f"{model}, {usable} usable CPUs, Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _bucket(postings: int) -> str:
    for top, label in ((1000, "< 1k"), (10000, "1k–10k"), (30000, "10k–30k"), (60000, "30k–60k")):
        if postings < top:
            return label
    return "≥ 60k"


def corpus_line(fills: Sequence[Fill]) -> str:
    big = fills[-1]
    chars = sum(len(m.text) for m in big.messages) / len(big.messages)
    terms = big.postings / len(big.messages)
    authors = len({m.author_id for m in big.messages})
    return (
        f"Corpus: {len(big.messages):,} messages of {chars:.0f} characters on average, {terms:.1f} distinct "
        f"index terms each, {authors} authors, over 30 days; {len(big.postings_keys):,} postings keys "
        f"(one per day), {len(big.postings_keys) / len(big.messages):.2f} per message."
    )


def report(
    results: Sequence[ServerResult],
    fills: Sequence[Fill],
    command: str,
    elapsed: float,
    loads: tuple[str, str],
) -> str:
    out: list[str] = []
    w = out.append
    w("## Chat log: recording, /search and memory (issue 13)\n")
    w(
        f"Command: `{command}` ({elapsed:.0f} s). Machine: {machine()}; load average {loads[0]} before, "
        f"{loads[1]} after (2 CPUs: above ~1, other processes competed with the bench and the server)."
    )
    w(corpus_line(fills) + "\n")

    w("### Recording (`ChatLog.record`, real `Terms`)\n")
    w(
        "| server | run | records | commands / record | round trips / record | p50 ms | p99 ms | max ms "
        "| records/s | bench CPU ms / record | server CPU µs / record | script µs (commandstats) |"
    )
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for run in r.records:
            p50, _, p99, top, _ = _stats(run.latencies)
            w(
                f"| {r.version} | {run.name} | {run.count} | {run.commands / run.count:.2f} "
                f"| {run.round_trips / run.count:.2f} | {_ms(p50)} | {_ms(p99)} | {_ms(top)} "
                f"| {run.count / run.wall:,.0f} | {1000 * run.cpu / run.count:.2f} | {run.server_cpu_us:.0f} "
                f"| {run.server_us:.0f} |"
            )
    firsts = ", ".join(f"{r.version}: {r.first_record_commands}" for r in results)
    w(f"\nFirst `record()` after `SCRIPT FLUSH` (NOSCRIPT, SCRIPT LOAD, EVALSHA): {firsts} commands.")
    fill_rates = "; ".join(
        f"{r.version}: "
        + ", ".join(
            f"{n:,} in {s:.1f} s ({cpu:.0f} µs server CPU, {us:.0f} µs/script)" for n, s, us, cpu in r.fills
        )
        for r in results
    )
    w(f"Fills (same script, {FILL_BATCH} EVALSHA per pipeline, {FILL_DEPTH} in flight): {fill_rates}.\n")

    w(f"### /search: the `search()` call (core + Redis, no model), limit {LIMIT}\n")
    w("Milliseconds per query, one at a time, after the warm-up.\n")
    w("| server | messages | queries | p50 | p95 | p99 | max | mean | verdict (p99 ≤ 50 ms) |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for s in r.searches:
            p99 = _stats(q.seconds for q in s.samples)[2] * 1000
            verdict = "PASS" if p99 <= TARGET_P99_MS else "FAIL"
            w(_row(f"{r.version} | {s.messages:,}", [q.seconds for q in s.samples], f" {verdict} |"))
    w(
        "\nWhere the time goes (means, ms per query; Redis = awaiting the ChatLog's reads, client and "
        "server; stemming = `Terms.counts` on the candidates; the rest is Python in `search()`: "
        "decoding postings, BM25, sorting):\n"
    )
    w(
        "| server | messages | total | Redis | server's own | stemming | rest (Python) | postings decoded "
        "| candidates read | round trips |"
    )
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for s in r.searches:
            n = len(s.samples)
            total = sum(q.seconds for q in s.samples) / n
            rds = sum(q.redis_s for q in s.samples) / n
            stem = sum(q.stem_s for q in s.samples) / n
            postings = sum(q.postings for q in s.samples) / n
            candidates = sum(q.candidates for q in s.samples) / n
            w(
                f"| {r.version} | {s.messages:,} | {_ms(total)} | {_ms(rds)} "
                f"| {s.server_us_per_query / 1000:.2f} | {_ms(stem)} | {_ms(total - rds - stem)} "
                f"| {postings:,.0f} | {candidates:.0f} | {sum(q.round_trips for q in s.samples) / n:.1f} |"
            )
    for r in results:
        for s in r.searches:
            if s.messages != fills[-1].messages.__len__():
                continue
            w(f"\nBy query, {r.version}, {s.messages:,} messages (ms):\n")
            w("| slice | queries | p50 | p95 | p99 | max | mean |")
            w("| --- | --- | --- | --- | --- | --- | --- |")
            groups: dict[str, list[float]] = defaultdict(list)
            for q in s.samples:
                groups[f"filter: {q.kind}"].append(q.seconds)
                groups[f"words: {q.words}"].append(q.seconds)
                groups[f"postings decoded: {_bucket(q.postings)}"].append(q.seconds)
                groups["all rare words" if q.rare == q.words else "some common words"].append(q.seconds)
            order = ("filter", "words", "postings", "all", "some")
            for label in sorted(groups, key=lambda g: (order.index(g.split()[0].rstrip(":")), g)):
                w(_row(label, groups[label]))
            if s.what_if:
                w(_row("what-if: candidates' lengths not re-stemmed", [q.seconds for q in s.what_if]))
    w("\nFilters (the rough cut to the best candidates happens before the filter):\n")
    for r in results:
        for s in r.searches:
            filtered = [q for q in s.samples if q.kind != "none"]
            short = [q for q in filtered if q.hits < q.expected]
            empty = [q for q in short if q.hits == 0]
            w(
                f"- {r.version}, {s.messages:,} messages: {len(short)} of {len(filtered)} filtered queries "
                f"returned fewer hits than exist ({len(empty)} returned none although a match exists)."
            )

    w("\n### Memory per recorded message, index included\n")
    w("used_memory growth over the fill, client buffers (MEMORY STATS clients.normal) left out.\n")
    w("| server | messages | keys added | used_memory Δ | per message | verdict (≤ 1 KB) |")
    w("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        for m in r.memory:
            verdict = "PASS" if m.per_message <= TARGET_BYTES else "FAIL"
            added = m.after.keys - m.before.keys
            w(
                f"| {r.version} | {m.messages:,} | {added:,} | {m.delta / 2**20:.1f} MiB "
                f"| {m.per_message:.0f} B | {verdict} |"
            )
    for r in results:
        m = r.memory[-1]
        w(
            f"\nBreakdown, {r.version}, {m.messages:,} messages (MEMORY USAGE … SAMPLES 0: every key, but "
            f"messages and postings are a random {SAMPLE_KEYS:,} of each, scaled up):\n"
        )
        w("| part | keys | bytes | per message | per key | encoding (of one) |")
        w("| --- | --- | --- | --- | --- | --- |")
        seen = 0.0
        for group, (keys, used) in m.groups.items():
            seen += used
            encoding = m.encodings.get(group, "")
            per = f"{used / m.messages:.0f} | {used / keys:.0f}"
            w(f"| {group} | {keys:,} | {used:,.0f} | {per} | {encoding} |")
        rest = m.delta - seen
        w(
            f"| not in MEMORY USAGE (key-space and expires tables, allocator) | | {rest:,.0f} "
            f"| {rest / m.messages:.0f} | | |"
        )
        added = m.after.keys - m.before.keys
        w(f"| **total (used_memory Δ)** | {added:,} | {m.delta:,} | {m.per_message:.0f} | | |")
        payload = m.postings_payload
        used = m.groups["postings (a hash per day)"][1]
        w(
            f"\nPostings: {payload:,} bytes of packed postings ({payload / m.messages:.0f} per message) in "
            f"{used:,.0f} bytes of hashes. MEMORY STATS growth: main key table "
            f"{m.after.main_table - m.before.main_table:,} B, expires table "
            f"{m.after.expires_table - m.before.expires_table:,} B (they partly overlap MEMORY USAGE). "
            "Listpack limits: " + ", ".join(f"{k} {v}" for k, v in m.listpack_config.items()) + "."
        )
        if m.what_ifs:
            w(
                f"\nLayout what-ifs, {r.version} (the same data written again, each layout alone in an "
                "empty database; used_memory Δ less client buffers, per message):\n"
            )
            w("| change | bytes per message now | then | saved |")
            w("| --- | --- | --- | --- |")
            for label, now, then in m.what_ifs:
                w(f"| {label} | {now:.0f} | {then:.0f} | {now - then:.0f} |")
    for r in results:
        for s in r.searches:
            if s.profile:
                w(f"\n### cProfile of the {s.messages:,}-message queries, {r.version} (top by own time)\n")
                w("```\n" + s.profile + "\n```")
    return "\n".join(out) + "\n"


def numbers(
    results: Sequence[ServerResult], fills: Sequence[Fill], command: str, elapsed: float
) -> dict[str, Any]:
    def dist(values: Iterable[float]) -> dict[str, float]:
        p50, p95, p99, top, mean = _stats(values)
        return {
            "p50_ms": p50 * 1000,
            "p95_ms": p95 * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": top * 1000,
            "mean_ms": mean * 1000,
        }

    return {
        "command": command,
        "machine": machine(),
        "elapsed_s": elapsed,
        "messages": [len(f.messages) for f in fills],
        "servers": [
            {
                "server": r.version,
                "records": [
                    {
                        "run": run.name,
                        "count": run.count,
                        "commands_per_record": run.commands / run.count,
                        "round_trips_per_record": run.round_trips / run.count,
                        "per_second": run.count / run.wall,
                        "cpu_ms_per_record": 1000 * run.cpu / run.count,
                        "server_us_per_script": run.server_us,
                        "server_cpu_us_per_record": run.server_cpu_us,
                        **dist(run.latencies),
                    }
                    for run in r.records
                ],
                "searches": [
                    {
                        "messages": s.messages,
                        "queries": len(s.samples),
                        **dist(q.seconds for q in s.samples),
                        "what_if_no_restem": dist(q.seconds for q in s.what_if) if s.what_if else None,
                        "server_ms_per_query": s.server_us_per_query / 1000,
                    }
                    for s in r.searches
                ],
                "memory": [
                    {
                        "messages": m.messages,
                        "used_memory_delta": m.delta,
                        "bytes_per_message": m.per_message,
                        "groups": {k: {"keys": v[0], "bytes": v[1]} for k, v in m.groups.items()},
                        "keys_added": m.after.keys - m.before.keys,
                        "what_ifs": [
                            {"change": label, "bytes_per_message_now": now, "then": then}
                            for label, now, then in m.what_ifs
                        ],
                    }
                    for m in r.memory
                ],
            }
            for r in results
        ],
    }


# --------------------------------------------------------------------------- main


def servers() -> dict[str, str | None]:
    return {"valkey": find_server_binary(), "redis": shutil.which("redis-server")}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the large chat (100,000)")
    parser.add_argument(
        "--small", type=int, default=10_000, help="messages in the small chat (10,000; 0: none)"
    )
    parser.add_argument("--queries", type=int, default=300, help="measured queries per chat (300)")
    parser.add_argument("--warmup", type=int, default=30, help="queries run first and not measured (30)")
    parser.add_argument("--records", type=int, default=1000, help="messages per recording run (1000)")
    parser.add_argument("--recorders", type=int, default=50, help="concurrent recorders (50)")
    parser.add_argument("--servers", default="valkey,redis", help="valkey, redis or both (valkey,redis)")
    parser.add_argument(
        "--no-what-if", dest="what_if", action="store_false", help="skip the search run without re-stemming"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the large chat's queries (first server)"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(servers())
    if unknown or not args.servers:
        parser.error(f"--servers: choose among {', '.join(servers())}")
    return args


async def prepare(
    args: argparse.Namespace, now: float
) -> tuple[list[Fill], list[list[Query]], list[LoggedMessage], Terms]:
    _progress("generating and capturing the chats …")
    chatter = Chatter(args.seed)
    memo = MemoTerms()
    sizes = [n for n in (args.small, args.messages) if n > 0]
    fills = [
        await capture(chatter.messages(n, now, args.seed + i), f"{900000000000000000 + i}", memo)
        for i, n in enumerate(sizes)
    ]
    queries = [chatter.queries(args.queries, now, args.seed + 100 + i, Terms()) for i in range(len(sizes))]
    records = chatter.messages(3 * (args.records + 1), now, args.seed + 50)
    return fills, queries, records, memo


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    began = time.perf_counter()
    load_before = loadavg()
    now = time.time()
    fills, queries, records, memo = asyncio.run(prepare(args, now))
    results: list[ServerResult] = []
    for name in args.servers:
        binary = servers()[name]
        if binary is None:
            _progress(f"{name}: no server binary on this machine; skipped")
            continue
        with RedisServerProcess(binary=binary) as server:
            results.append(
                asyncio.run(bench_server(name, server.url, fills, queries, now, args, records, memo))
            )
    elapsed = time.perf_counter() - began
    print(report(results, fills, command, elapsed, (load_before, loadavg())), end="")
    if args.json is not None:
        args.json.write_text(json.dumps(numbers(results, fills, command, elapsed), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

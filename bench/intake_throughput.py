"""How many events one gateway replica keeps per second: the intake's `put`, alone.

    .venv/bin/python -m bench.intake_throughput [--quick] [--aof] [--binary PATH]   (~70 s; --quick ~10 s)

One process holds a gateway-only `Intake` (works=False: what `bots.runtime.build_intake`
wires for role gateway) on Herald's Redis client (`connect_redis`: a pool of 64
connections that makes callers wait beyond) and puts events into a private server
(`bots.redis_server.RedisServerProcess`: the embedded Valkey unless `--binary`; no
persistence, or with `--aof` an append-only file synced every second, as `herald` runs
its own server). The workers' group exists, as a worker made it; nobody reads.

An event is what a gateway keeps: `{"event": inbound_data(event), "reply": {six ids}}`,
for a Discord-like `Inbound` (snowflake ids, an author with roles, ~150 characters of
text, posted). Building the `Inbound` is the adapter's part and is left out of the
latency; `inbound_data` and `Intake.put` (one script: seen mark + XADD) are in it.

A gateway receiving a burst has many events in flight (each one's handler awaits its
put before the platform is acknowledged), so each concurrency C runs C tasks that
put events back to back for `--seconds`. Reported per run: puts/s, put latency
p50/p99/max, this process's CPU per put and use, the server's CPU use; then the
memory the server holds per event (its stream entry and its seen mark, kept a day).
Every concurrency runs `--repeat` times, interleaved, for the spread. The exit
status is 0 whatever the numbers say: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.core_overhead import Meter, _ms, _progress, machine, percentile
from bench.intake_overhead import machine_busy
from bots.redis_server import RedisServerProcess
from bots.runtime import build_intake, settle_heap
from core.config import load_settings
from core.intake.events import inbound_data
from core.intake.worker import Intake
from core.platform import Author, Inbound, Posted
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis

COMMAND = ".venv/bin/python -m bench.intake_throughput"
PLATFORM = "discord"
AIM_PER_S = 5000.0
#: chat words the texts are drawn from
_VOCABULARY = """
the a to and is it you that of in for this on I what with have be can we just not so but Herald
please tell me about how does work why could would my your our there here think know today
tomorrow meeting deploy server model answer question again thanks
"""
WORDS = _VOCABULARY.split()


class Events:
    """Discord-like events, all different (ids from a counter). Their parts (chat, author,
    text) are drawn beforehand, from a fixed seed, so making one costs the loop little."""

    def __init__(self, seed: int = 1, variety: int = 1000) -> None:
        rng = random.Random(seed)
        self._ids = itertools.count(1_250_000_000_000_000_000)
        roles = [self.snowflake() for _ in range(12)]
        self._guild, self._application = roles[0], roles[1]
        chats = [self.snowflake() for _ in range(500)]
        self._parts: list[tuple[str, Author, str]] = []
        for _ in range(variety):
            words: list[str] = []
            while sum(len(word) + 1 for word in words) < 150:
                words.append(rng.choice(WORDS))
            user = str(1_100_000_000_000_000_000 + rng.randrange(10**17))
            author = Author(user, f"user{user[-4:]}", False, frozenset(rng.sample(roles, 3)))
            text = f"<@1234567890123456789> {' '.join(words)}?"
            self._parts.append((rng.choice(chats), author, text))
        self._next = itertools.cycle(self._parts)

    def snowflake(self) -> str:
        return str(next(self._ids))

    def next(self) -> tuple[Inbound, dict[str, str]]:
        """An event and what a gateway keeps beside it to answer it (six ids)."""
        chat, author, text = next(self._next)
        event_id = self.snowflake()
        event = Inbound(
            platform=PLATFORM,
            event_id=event_id,
            chat_id=chat,
            author=author,
            text=text,
            addressed=True,
            posted=Posted(event_id, time.time(), None),
        )
        reply = {
            "channel": chat,
            "guild": self._guild,
            "message": event_id,
            "author": author.user_id,
            "application": self._application,
            "interaction": self.snowflake(),
        }
        return event, reply


@dataclass(slots=True)
class Result:
    concurrency: int
    repeat: int
    puts: int
    latencies: list[float]  # sorted, seconds
    meter: Meter
    busy: float  # CPU-seconds the whole machine was busy meanwhile

    @property
    def others(self) -> float:
        """Other processes' CPU use, fraction of one core: was the machine quiet?"""
        m = self.meter
        return max(0.0, self.busy - m.cpu - sum(m.others.values())) / m.wall

    @property
    def rate(self) -> float:
        return self.puts / self.meter.wall


async def closed_loop(
    intake: Intake, events: Events, concurrency: int, seconds: float, pids: dict[str, int], repeat: int
) -> Result:
    """Events arrive as soon as fewer than `concurrency` are in flight, for `seconds`; each
    is put by a task of its own, as a platform library dispatches each event to a handler."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    room = asyncio.Semaphore(concurrency)

    async def handle(event: Inbound, reply: dict[str, str]) -> None:
        try:
            started = time.perf_counter()
            kept = await intake.put(PLATFORM, event.event_id, {"event": inbound_data(event), "reply": reply})
            latencies.append(time.perf_counter() - started)
            if not kept:
                raise RuntimeError(f"event {event.event_id} refused as seen before")
        except Exception as exc:
            failures.append(exc)
        finally:
            room.release()

    tasks: set[asyncio.Task[None]] = set()
    busy = machine_busy()
    with Meter(pids).measure() as meter:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await room.acquire()
            task = asyncio.create_task(handle(*events.next()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{len(failures)} puts failed, the first: {failures[0]!r}")
    busy = machine_busy() - busy
    return Result(concurrency, repeat, len(latencies), sorted(latencies), meter, busy)


async def memory_per_event(client: Redis, keys: Keys) -> tuple[float, float, int]:
    """(bytes per stream entry, bytes per seen mark, entries in the stream)."""
    stream = keys.intake_stream(PLATFORM)
    length = int(await client.xlen(stream))
    stream_bytes = int(await client.memory_usage(stream, samples=0) or 0)
    seen: list[int] = []
    async for key in client.scan_iter(match=keys.intake_seen(PLATFORM, "*"), count=1000):
        seen.append(int(await client.memory_usage(key) or 0))
        if len(seen) >= 200:
            break
    return stream_bytes / max(1, length), sum(seen) / max(1, len(seen)), length


async def bench(url: str, pids: dict[str, int], plan: Plan) -> tuple[list[Result], str, str]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = load_settings(env_file=None, redis_url=url, redis_prefix=prefix, role="gateway")
    client = connect_redis(url)
    assert isinstance(client, Redis), "the bench runs on one server"
    info = await client.info()
    version = info.get("valkey_version", info.get("redis_version", "?"))
    server = f"{info.get('server_name', 'redis')} {version}"
    try:
        intake = build_intake(settings, client)
        assert not intake.works
        await intake.stream.prepare([PLATFORM])  # the workers' group, as a worker made it
        events = Events()
        _progress("warming up …")
        await closed_loop(intake, events, 64, plan.seconds / 4, pids, 0)
        settle_heap()
        results: list[Result] = []
        for repeat in range(1, plan.repeat + 1):
            for concurrency in plan.concurrency:
                _progress(f"{concurrency} in flight for {plan.seconds:g}s ({repeat}/{plan.repeat}) …")
                results.append(await closed_loop(intake, events, concurrency, plan.seconds, pids, repeat))
        per_entry, per_seen, length = await memory_per_event(client, Keys(prefix))
        memory = (
            f"{per_entry:.0f} B per stream entry (MEMORY USAGE of the stream / its {length:,} entries; "
            f"the stream is trimmed near {settings.intake_max_length:,}), {per_seen:.0f} B per seen mark "
            f"(kept {86_400 // 3600} h): about {(per_entry + per_seen) / 1024:.1f} KiB per event"
        )
    finally:
        await client.aclose()
    return results, server, memory


def report(results: list[Result], server: str, memory: str, persistence: str, command: str) -> str:
    out = io.StringIO()
    w = out.write
    w("## Intake throughput of one gateway replica\n\n")
    w(f"Machine: {machine()}, hiredis {_hiredis()}; {server} ({persistence}), its own process; ")
    w("the gateway on one asyncio loop.\n\n")
    w(f"Command: `{command}`\n\n")
    w(f"Puts per second (aim ≥ {AIM_PER_S:,.0f}) and put latency, ms. CPU use: % of one core; ")
    w("CPU per put: this process's CPU time / puts (what a gateway replica spends per event).\n\n")
    w("| in flight | run | puts | puts/s | p50 | p99 | max | CPU per put, µs | CPU use gateway / server ")
    w("| other processes' CPU, % | full GCs (longest, ms) | aim |\n")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |\n")
    for r in sorted(results, key=lambda r: (r.concurrency, r.repeat)):
        lat = r.latencies
        m = r.meter
        gc_note = f"{len(m.full_gc)} ({_ms(max(m.full_gc))})" if m.full_gc else "0"
        use = f"{100 * m.cpu / m.wall:.0f} / {100 * m.others.get('redis', 0.0) / m.wall:.0f}"
        verdict = "PASS" if r.rate >= AIM_PER_S else "FAIL"
        w(f"| {r.concurrency} | {r.repeat} | {r.puts:,} | {r.rate:,.0f} | {_ms(percentile(lat, 0.5))} ")
        w(f"| {_ms(percentile(lat, 0.99))} | {_ms(lat[-1])} | {1e6 * m.cpu / r.puts:.0f} | {use} ")
        w(f"| {100 * r.others:.0f} | {gc_note} | {verdict} |\n")
    w(f"\nMemory held by the server: {memory}.\n")
    return out.getvalue()


def _hiredis() -> str:
    try:
        import hiredis

        return str(hiredis.__version__)
    except ImportError:
        return "absent (redis-py parses replies in Python)"


@dataclass(frozen=True, slots=True)
class Plan:
    concurrency: list[int]
    seconds: float
    repeat: int


@contextlib.contextmanager
def server(aof: bool, binary: str | None) -> Iterator[tuple[RedisServerProcess, str]]:
    """The private server: throw-away, or with an append-only file in a scratch folder."""
    with contextlib.ExitStack() as stack:
        data_dir: Path | None = None
        persistence = "private, no persistence"
        if aof:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="herald-bench-")))
            persistence = "private, append-only file, fsync every second"
        yield stack.enter_context(RedisServerProcess(data_dir=data_dir, binary=binary)), persistence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (~10 s)")
    parser.add_argument("--concurrency", default="1,16,64,256", help="events in flight, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per concurrency, interleaved")
    parser.add_argument("--aof", action="store_true", help="the server keeps an append-only file")
    parser.add_argument("--binary", default=None, help="the server to run (default: as `herald` finds one)")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    plan = Plan(concurrency, args.seconds, args.repeat)
    if args.quick:
        plan = Plan([1, 64, 256], 2.0, 1)
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    try:
        with server(args.aof, args.binary) as (proc, persistence):
            pids: dict[str, int] = {}
            redis_proc: Any = getattr(proc, "_proc", None)  # for its CPU use only
            if redis_proc is not None:
                pids["redis"] = int(redis_proc.pid)
            results, name, memory = asyncio.run(bench(proc.url, pids, plan))
    except KeyboardInterrupt:
        _progress("interrupted; the Redis server was stopped")
        return 130
    print(report(results, name, memory, persistence, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the durable intake adds to the event path: the same load, direct and through the intake.

    .venv/bin/python -m bench.intake_overhead [--quick]     (~2½ min on 2 CPUs; --quick ~30 s)

`bench.core_overhead`'s machinery, imported, not copied: a private Redis and the TGI
emulator (streaming instantly) in their own processes, Herald's engine wired by
`bots.runtime` on one asyncio loop, its wrappers stamping each message and counting
its Redis round trips. Every scenario is run twice in one process, against the same
engine and servers, each run with conversations of its own:

* direct: `Engine.handle(event, surface)`, as before the intake;
* intake: `Intake.put` with the fast path (this replica works: the put script keeps
  the event, marks its id seen and hands it back in one round trip) → the handler
  decodes the event from the stream's data (`{"event": inbound_data(…), "reply": {six
  ids}}`, what a gateway keeps) → `engine.handle(replace(event, arrival=job.arrival),
  job.surface(bench surface))`, every message sent recorded → finished (XACK: it goes
  with the next events put in, or after 50 ms with whatever others finished meanwhile,
  from the intake's own task; each such round trip is counted once, with its first
  event, so the mean is the true share). A message counts as done once it is finished.

Per message, as in `core_overhead`: ``in`` = generation request sent − event in (for
the intake, event in is just before `Intake.put`), ``out`` = first send − first
token; Redis round trips are counted in the message's own tasks (the job's task
inherits them); puts and acknowledgements go out in batches from the intake's own
tasks, and each batch's round trip is counted once, with its first event; the intake's
background loops (a blocking XREADGROUP every 2 s, a
renewal script every 5 s over every held event, an XAUTOCLAIM every 3 s: per
replica, not per event) are left out. Scenarios: one conversation, sequential; 200
conversations saturated (each path's capacity); 200 conversations with Poisson
arrivals at `--load` of the lower of the two capacities (the same offered load for
both: where the issue's aims, ≤ 2 more round trips and p99 ≤ 1 ms more core time, are
checked), direct then intake, and again intake then direct unless `--quick`.

Last, the intake alone: an engine stand-in that answers each event with one message
at once, called directly and through the intake, 1 and 200 events in flight, gives
the intake's own CPU per event and its own time per event, which the engine's much
larger and noisier cost hides in the runs above. The exit status is 0 whatever the
numbers say: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from bench.core_overhead import (
    CURRENT,
    Bench,
    BenchSurface,
    Message,
    Run,
    Services,
    _close,
    _engine,
    _latency,
    _ms,
    _notes,
    _progress,
    _redis_commands,
    _where_in_goes,
    instrumented,
    machine,
    not_answered,
    percentile,
    round_trips,
    services,
)
from core.chat.engine import Engine, Outcome
from core.intake.events import inbound_data, inbound_from_data
from core.intake.stream import Arriving, IntakeStream, Put
from core.intake.worker import Intake, Job
from core.platform import Author, Inbound, Surface
from core.storage.keys import Keys

COMMAND = ".venv/bin/python -m bench.intake_overhead"
AIM_ROUND_TRIPS = 2.0  # at most this many more per message
AIM_P99_MS = 1.0  # core time (in+out) p99, at most this much more
ALONE = "alone"  # the platform of the events through the intake alone


def reply_ids(event: Inbound) -> dict[str, str]:
    """What a gateway keeps beside the event to answer it later (Discord-sized snowflakes)."""
    base = 1_200_000_000_000_000_000 + zlib.crc32(event.event_id.encode()) * 10**7
    names = ("channel", "guild", "message", "author", "application", "interaction")
    return {name: str(base + i) for i, name in enumerate(names)}


def payload(event: Inbound) -> dict[str, Any]:
    """The data a gateway puts in the intake for one event."""
    return {"event": inbound_data(event), "reply": reply_ids(event)}


@dataclass(slots=True)
class _Pending:
    surface: Surface
    done: asyncio.Future[None]
    #: the measured message, whose round trips this event's are
    message: Message | None = None
    outcome: Outcome | None = None


class TrackedStream(IntakeStream):
    """The intake's stream, telling the bench when an event was finished (acknowledged)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        on_put: Callable[[Sequence[str]], None],
        on_finish: Callable[..., None],
    ) -> None:
        super().__init__(redis, keys, consumer=f"bench-{os.getpid()}")  # the settings' defaults
        self._on_put = on_put
        self._on_finish = on_finish

    async def put_and_finish(
        self, events: Sequence[Arriving], finishing: Mapping[str, Sequence[str]]
    ) -> tuple[list[Put | BaseException], BaseException | None]:
        """One round trip: counted with the first event put, else the first finished."""
        finished = [entry_id for ids in finishing.values() for entry_id in ids]
        try:
            return await super().put_and_finish(events, finishing)
        finally:
            if events:
                self._on_put([event.event_id for event in events])
            self._on_finish(finished, counted=bool(events))


class IntakeRoute:
    """`Engine.handle`'s shape, through the intake: what `Bench` calls instead of the engine.
    Returns once the event is finished, so the XACK is counted with its message."""

    def __init__(self, engine: Engine, redis: Redis, keys: Keys) -> None:
        self.engine = engine
        self.intake = Intake(TrackedStream(redis, keys, self._put, self._finished), works=True)
        self._pending: dict[str, _Pending] = {}  # by event id, until finished
        self._taken: dict[str, _Pending] = {}  # by stream entry id, while answered

    async def start(self, platform: str) -> None:
        self.intake.serve(platform, self._answer)
        await self.intake.start()

    async def handle(self, event: Inbound, surface: Surface) -> Outcome:
        pending = _Pending(surface, asyncio.get_running_loop().create_future(), CURRENT.get())
        self._pending[event.event_id] = pending
        try:
            if not await self.intake.put(event.platform, event.event_id, payload(event)):
                return Outcome.DUPLICATE
            await pending.done
        finally:
            self._pending.pop(event.event_id, None)
        return pending.outcome or Outcome.FAILED  # None: the handler raised (logged by the intake)

    async def _answer(self, job: Job) -> None:
        pending = self._pending.get(job.entry.event_id)
        if pending is None:  # the bench gave up on it
            return
        self._taken[job.entry.entry_id] = pending
        event = inbound_from_data(job.entry.data["event"])
        surface = job.surface(pending.surface)
        pending.outcome = await self.engine.handle(replace(event, arrival=job.arrival), surface)

    def _put(self, event_ids: Sequence[str]) -> None:
        """Events put in together, in one round trip made by the intake's own task: it is
        counted once, with the first of them (the mean per message is the true share)."""
        pending = self._pending.get(event_ids[0]) if event_ids else None
        if pending is not None and pending.message is not None:
            pending.message.packets.append(b"put (batched)")

    def _finished(self, entry_ids: Sequence[str], *, counted: bool) -> None:
        """Events acknowledged together, in one round trip made by the intake's own task
        (so counted by no message): it is counted once, with the first of them, so that
        the mean per message is the true share; `counted` when it went with events put
        in, whose round trip it is."""
        for number, entry_id in enumerate(entry_ids):
            pending = self._taken.pop(entry_id, None)
            if pending is None:
                continue
            if number == 0 and not counted and pending.message is not None:
                pending.message.packets.append(b"finish (batched)")
            if not pending.done.done():
                pending.done.set_result(None)


# --------------------------------------------------------------------------- the intake alone


class OneMessage:
    """An engine stand-in that answers every event with one message at once: with it,
    what is measured is the intake's own part (put → handler → record → finish)."""

    async def handle(self, event: Inbound, surface: Surface) -> Outcome:
        await surface.send("ok")
        return Outcome.ANSWERED


@dataclass(slots=True)
class Alone:
    path: str
    in_flight: int
    latencies: list[float]  # event in → done, sorted
    round_trips: float  # per event
    cpu: float  # this process's, seconds
    wall: float
    busy: float  # CPU-seconds the whole machine was busy meanwhile

    @property
    def others(self) -> float:
        return max(0.0, self.busy - self.cpu) / self.wall


async def alone(route: OneMessage | IntakeRoute, path: str, events: int, in_flight: int) -> Alone:
    """`events` events through `route`, `in_flight` at a time, each in a task of its own."""
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    trips: list[int] = []

    async def one(n: int) -> None:
        async with gate:
            msg = Message()
            CURRENT.set(msg)  # counts this event's round trips, and its job's
            conv = f"{path}{n % 200:03d}"
            event = Inbound(ALONE, f"{path}-{in_flight}-{n}", conv, Author(conv, conv), "hello", True)
            started = time.perf_counter()
            if await route.handle(event, BenchSurface(msg)) is Outcome.ANSWERED:
                latencies.append(time.perf_counter() - started)
                trips.append(len(msg.packets))

    busy, cpu, wall = machine_busy(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(events)))
    busy, cpu, wall = machine_busy() - busy, time.process_time() - cpu, time.perf_counter() - wall
    return Alone(path, in_flight, sorted(latencies), sum(trips) / max(1, len(trips)), cpu, wall, busy)


def _alone_report(w: Callable[[str], object], results: list[Alone]) -> None:
    w("\nThe intake alone: an engine stand-in answers each event with one message at once, so ")
    w("what remains is the intake's own part (put → handler → the message recorded → finish) against ")
    w("the stand-in called directly. Time per event: event in → done (finished), ms; with 200 in ")
    w("flight it is mostly waiting for the loop (events/s is then the intake's capacity).\n\n")
    w("| in flight | path | events | events/s | round trips/event | time p50 | time p99 | CPU per event, µs ")
    w("| other processes' CPU, % |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    for r in results:
        lat = r.latencies
        w(f"| {r.in_flight} | {r.path} | {len(lat)} | {len(lat) / r.wall:,.0f} | {r.round_trips:.2f} ")
        w(f"| {_ms(percentile(lat, 0.5))} ")
        w(f"| {_ms(percentile(lat, 0.99))} | {1e6 * r.cpu / max(1, len(lat)):.0f} | {100 * r.others:.0f} |\n")


# --------------------------------------------------------------------------- report


@dataclass(slots=True)
class Pair:
    """One scenario run both ways."""

    scenario: str
    direct: Run
    intake: Run
    target: bool = False  # the row the aims are checked on

    def others(self, run: Run) -> str:
        """The rest of the machine's CPU use meanwhile, % of one core (other processes)."""
        busy = OTHERS.get(id(run))
        if busy is None:
            return "–"
        return f"{100 * max(0.0, busy - run.cpu - sum(run.meter.others.values())) / run.wall:.0f}"


def _core(run: Run) -> list[float]:
    return sorted(m.overhead_in + m.overhead_out for m in run.answered)


def _side_by_side(w: Callable[[str], object], pairs: list[Pair]) -> None:
    w("| scenario | path | msgs | not answered | Redis round trips/msg | in+out p50 | in+out p99 ")
    w("| in p50 | in p99 | out p99 | msgs/s (wall) | msgs per CPU-second | other processes' CPU, % |\n")
    w("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    for pair in pairs:
        for path, run in (("direct", pair.direct), ("intake", pair.intake)):
            ok = run.answered
            core, ins = _core(run), sorted(m.overhead_in for m in ok)
            outs = sorted(m.overhead_out for m in ok)
            cells = [
                percentile(core, 0.5),
                percentile(core, 0.99),
                percentile(ins, 0.5),
                percentile(ins, 0.99),
            ]
            w(f"| {pair.scenario} | {path} | {len(ok)} | {not_answered(run)} | {round_trips(run):.2f} | ")
            w(" | ".join(_ms(v) for v in [*cells, percentile(outs, 0.99)]))
            w(f" | {len(ok) / run.wall:.0f} ")
            w(f"| {len(ok) / run.cpu:.0f} | {pair.others(run)} |\n")


def _added(w: Callable[[str], object], pairs: list[Pair]) -> None:
    w("\nAdded by the intake (intake − direct). Aims, checked on the open-loop rows: ")
    w(f"≤ {AIM_ROUND_TRIPS:g} more round trips, core time (in+out) p99 ≤ {AIM_P99_MS:g} ms more. ")
    w("CPU per message (Herald's process CPU / messages answered) is the steadiest measure of the ")
    w("core's added time where the machine is not quiet: latencies there include waiting for a CPU.\n\n")
    w("| scenario | round trips/msg | CPU per message, ms | in+out p50, ms | in+out p99, ms | aims |\n")
    w("| --- | ---: | ---: | ---: | ---: | --- |\n")
    for pair in pairs:
        d, i = pair.direct, pair.intake
        rt = round_trips(i) - round_trips(d)
        dc, ic = _core(d), _core(i)
        p50 = (percentile(ic, 0.5) - percentile(dc, 0.5)) * 1000
        p99 = (percentile(ic, 0.99) - percentile(dc, 0.99)) * 1000
        cpu_d, cpu_i = 1000 * d.cpu / len(d.answered), 1000 * i.cpu / len(i.answered)
        verdict = "–"
        if pair.target:
            rt_ok, p99_ok = rt <= AIM_ROUND_TRIPS, p99 <= AIM_P99_MS
            verdict = (
                f"round trips {'PASS' if rt_ok else 'FAIL'} ({rt:+.2f}), "
                f"p99 {'PASS' if p99_ok else 'FAIL'} ({p99:+.2f} ms)"
            )
        w(f"| {pair.scenario} | {rt:+.2f} | {cpu_i - cpu_d:+.2f} ({cpu_d:.2f} → {cpu_i:.2f}) ")
        w(f"| {p50:+.2f} | {p99:+.2f} | {verdict} |\n")


def report(pairs: list[Pair], isolated: list[Alone], server: str, command: str) -> str:
    out = io.StringIO()
    w = out.write
    w("## Intake overhead: the direct path against the intake's, one run\n\n")
    w(f"Machine: {machine()}; {server} (private, no persistence); TGI emulator streaming instantly ")
    w("(`bench.tgi_server`) in its own process; Herald on one asyncio loop.\n\n")
    w(f"Command: `{command}`\n\n")
    w("Core time, ms (in: event in → generation request sent, the intake's put included; out: ")
    w("first token → first send):\n\n")
    _side_by_side(w, pairs)
    _added(w, pairs)
    _alone_report(w, isolated)
    runs = [run for pair in pairs for run in (pair.direct, pair.intake)]
    w("\nEvery run in detail (`bench.core_overhead`'s tables):\n\n")
    _latency(w, runs)
    _where_in_goes(w, runs)
    _redis_commands(w, runs)
    _notes(w, runs)
    return out.getvalue()


# --------------------------------------------------------------------------- orchestration


@dataclass(frozen=True, slots=True)
class Plan:
    sequential: int
    saturated_s: float
    open_s: float
    repeats: int  # open-loop pairs: direct/intake, then intake/direct, …
    conversations: int
    load: float
    patience: float
    alone: int  # events through the intake alone, per run


#: id(run) → CPU-seconds the whole machine was busy during it
OTHERS: dict[int, float] = {}


def machine_busy() -> float:
    """CPU-seconds the whole machine has been busy so far (/proc/stat); 0 where missing.
    Less the measured processes' CPU, it tells whether the machine was quiet."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


async def measured(run: Awaitable[Run], path: str) -> Run:
    """The run, named after its path, with the machine's busy time during it noted."""
    busy = machine_busy()
    done = await run
    OTHERS[id(done)] = machine_busy() - busy
    done.name = f"{path}: {done.name}"
    return done


async def bench(svc: Services, plan: Plan) -> tuple[list[Pair], list[Alone], str]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    engine, client, llm = await _engine(svc, prefix)
    assert isinstance(client, Redis), "the bench runs on one server"
    info = await client.info("server")
    server = (
        f"{info.get('server_name', 'redis')} {info.get('valkey_version', info.get('redis_version', '?'))}"
    )
    route = IntakeRoute(engine, client, Keys(prefix))
    await route.start("bench")  # `Bench`'s events come from platform "bench"
    stand_in = OneMessage()
    bare = IntakeRoute(cast(Engine, stand_in), client, Keys(prefix))  # it calls only `handle`
    await bare.start(ALONE)
    try:
        direct = Bench(engine, svc.pids, patience=plan.patience)
        # `Bench` calls only `handle`
        intake = Bench(cast(Engine, route), svc.pids, patience=plan.patience)
        n = plan.conversations
        opens = [("direct", "intake") if k % 2 == 0 else ("intake", "direct") for k in range(plan.repeats)]
        sets: dict[str, list[str]] = {}
        for path in ("direct", "intake"):
            sets[f"sat-{path}"] = [f"s{path[0]}{i:03d}" for i in range(n)]
            for k in range(plan.repeats):
                sets[f"open{k}-{path}"] = [f"o{k}{path[0]}{i:03d}" for i in range(n)]
        benches = {"direct": direct, "intake": intake}
        _progress("warming up …")
        for path, bench_ in benches.items():
            await bench_.sequential(f"warmup-{path}", 20)
            await bench_.prime([c for name, convs in sets.items() if name.endswith(path) for c in convs])

        pairs: list[Pair] = []
        _progress(f"1 conversation, {plan.sequential} sequential messages, each way …")
        solo = {p: await measured(b.sequential(f"solo-{p}", plan.sequential), p) for p, b in benches.items()}
        pairs.append(Pair("1 conversation, sequential", solo["direct"], solo["intake"]))
        _progress(f"{n} conversations saturated for {plan.saturated_s:g}s, each way …")
        sat = {
            p: await measured(b.saturated(sets[f"sat-{p}"], plan.saturated_s), p) for p, b in benches.items()
        }
        pairs.append(Pair(f"{n} conversations, saturated", sat["direct"], sat["intake"]))
        capacity = min(len(run.answered) / run.wall for run in sat.values())
        rate = max(1.0, plan.load * capacity)
        for k, order in enumerate(opens):
            runs: dict[str, Run] = {}
            for path in order:
                _progress(f"{n} conversations, open loop at {rate:.0f} msg/s for {plan.open_s:g}s, {path} …")
                runs[path] = await measured(
                    benches[path].open_loop(sets[f"open{k}-{path}"], rate, plan.open_s), path
                )
            scenario = f"{n} conversations, open loop at {rate:.0f} msg/s ({plan.load:.0%} of the lower "
            scenario += f"capacity), {' then '.join(order)}"
            pairs.append(Pair(scenario, runs["direct"], runs["intake"], target=True))

        _progress(f"the intake alone, {plan.alone} events, 1 and {n} in flight …")
        await alone(bare, "warm", 200, 50)
        isolated: list[Alone] = []
        for in_flight in (1, n):
            isolated.append(await alone(stand_in, "direct", plan.alone, in_flight))
            isolated.append(await alone(bare, "intake", plan.alone, in_flight))
    finally:
        await bare.intake.stop(5.0)
        await route.intake.stop(5.0)
        await _close(engine, client, llm)
    return pairs, isolated, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (~30 s)")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--load", type=float, default=0.5, help="open-loop rate, fraction of capacity")
    args = parser.parse_args(argv)
    if args.quick:
        plan = Plan(50, 3.0, 5.0, 1, args.conversations, args.load, 5.0, 500)
    else:
        plan = Plan(300, 10.0, 20.0, 2, args.conversations, args.load, 10.0, 3000)
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    # A bot logs one INFO line per event: part of the core's cost, so kept (to nowhere).
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    problems = logging.StreamHandler(sys.stderr)  # but the intake's warnings are shown
    problems.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[handler, problems], force=True)
    try:
        with services() as svc, instrumented():
            pairs, isolated, server = asyncio.run(bench(svc, plan))
    except KeyboardInterrupt:
        _progress("interrupted; the Redis server and the emulator were stopped")
        return 130
    print(report(pairs, isolated, server, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Answers per second with 1, 2 and 4 worker processes against a model server of fixed capacity.

    .venv/bin/python -m bench.intake_workers [--quick]     (~1½ min on 2 CPUs; --quick ~25 s)

A private Redis and the TGI emulator (`bench.tgi_server`) run in their own processes,
the emulator as a model server with a fixed number of slots (`--slots`, 16): that many
answers generate at once, one token per `--token-delay` seconds each, and up to 128
requests in all are admitted, the rest of them waiting in order as TGI's router
queues them. Its ceiling, `slots / (tokens per answer × token delay)`, is measured
first with Herald's own model client and no engine (twice the slots in flight).

Then worker processes (`multiprocessing`, spawned), each wired as `herald run --role
worker` wires one: `bots.runtime.build_llm` / `build_engine`, an `Intake` on
`build_intake`'s stream with works=True, its handler answering with
`engine.handle(replace(event, arrival=job.arrival), job.surface(counting surface))`.
This process is the gateway: a gateway-only `Intake` puts `--events` events (a
burst, 64 in flight; `{"event": inbound_data(…), "reply": {…}}`, 200 conversations)
and the workers report every answer. The pool grows between runs (1, then 2, then 4
workers), each run with conversations of its own. Reported per run: answers/s, over
the whole burst and over its middle 80 % (without the start and the tail), against
the model server's ceiling; the model server's mean requests in flight
(`/metrics`); CPU use per process; outcomes; the workers' warnings.

Each worker takes at most `--capacity` (6) events at once (`Intake(capacity=…)`):
one worker alone holds 6 of the 16 slots, two hold 12, four would hold 24 and find
the model server the limit, so the runs show workers scaling until it is. With a
capacity at or above the slots, one worker would saturate the model server alone and
more workers could add nothing. The exit status is 0 whatever the numbers say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.core_overhead import Meter, Services, _progress, machine, services
from bench.intake_overhead import machine_busy, payload
from bots.child_process import die_with_parent
from bots.runtime import build_engine, build_intake, build_llm, generation_params, settle_heap
from core.config import Settings, load_settings
from core.intake.events import inbound_from_data
from core.intake.worker import Intake, Job
from core.llm.base import ChatMessage, Finished
from core.platform import Author, Button, Capabilities, Inbound, MessageRef, Surface
from core.storage.redis_client import connect_redis

COMMAND = ".venv/bin/python -m bench.intake_workers"
PLATFORM = "discord"
ADMITTED = 128  # the emulator's max_concurrent_requests (TGI's default): slots + its queue
GATEWAY_IN_FLIGHT = 64


def herald_settings(redis_url: str, tgi_url: str, prefix: str, role: str) -> Settings:
    """A bot's settings, with the rate limits and quotas out of the way."""
    return load_settings(
        env_file=None,
        tgi_url=tgi_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        role=role,
        rate_limit_burst=1_000_000_000,
        rate_limit_per_minute=1e12,
        daily_token_quota=0,
    )


def question(n: int, conv: str) -> str:
    """Always the same length, so every answer (the emulator echoes it) has as many tokens."""
    return f"Hello Herald, this is message {n:05d} in {conv}. How are you today?"


def make_event(n: int, run: int, conversations: int) -> Inbound:
    conv = f"r{run}c{n % conversations:03d}"
    return Inbound(
        platform=PLATFORM,
        event_id=f"r{run}e{n:06d}",
        chat_id=conv,
        author=Author(f"user-{conv}", conv),
        text=question(n, conv),
        addressed=True,
        is_private=True,
    )


# --------------------------------------------------------------------------- a worker process


class CountingSurface(Surface):
    """A chat that answers at once (Discord-like limits) and counts what it was asked."""

    def __init__(self, edit_interval: float) -> None:
        self.sent = 0
        self.edits = 0
        self._caps = Capabilities(max_length=2000, min_edit_interval=edit_interval)

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def typing(self) -> None:
        return None

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        self.sent += 1
        return MessageRef(str(self.sent))

    async def edit(self, ref: MessageRef, text: str) -> None:
        self.edits += 1


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    redis_url: str
    tgi_url: str
    prefix: str
    capacity: int
    edit_interval: float
    read_block: float
    log_path: str


def worker_process(cfg: WorkerConfig, reports: Any, stop: multiprocessing.synchronize.Event) -> None:
    """A worker replica: answers what the intake hands it until `stop` is set."""
    die_with_parent()
    # A bot logs one INFO line per event: part of its cost, so kept (in a file).
    logging.basicConfig(
        level=logging.INFO,
        filename=cfg.log_path,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_work(cfg, reports, stop))


async def _work(cfg: WorkerConfig, reports: Any, stop: multiprocessing.synchronize.Event) -> None:
    settings = herald_settings(cfg.redis_url, cfg.tgi_url, cfg.prefix, "worker")
    client = connect_redis(cfg.redis_url)
    assert isinstance(client, Redis), "the bench runs on one server"
    llm = build_llm(settings)
    await llm.start()
    engine = build_engine(settings, client, llm)
    await engine.cancels.start()
    stream = build_intake(settings, client).stream
    intake = Intake(stream, works=True, capacity=cfg.capacity, read_block=cfg.read_block)

    async def answer(job: Job) -> None:
        event = inbound_from_data(job.entry.data["event"])
        surface = CountingSurface(cfg.edit_interval)
        outcome = await engine.handle(replace(event, arrival=job.arrival), job.surface(surface))
        reports.put(("done", cfg.index, job.entry.event_id, outcome.value, time.monotonic(), surface.sent))

    intake.serve(PLATFORM, answer)
    await intake.start()
    settle_heap()
    reports.put(("ready", cfg.index, os.getpid()))
    try:
        await asyncio.to_thread(stop.wait)
    finally:
        await intake.stop(5.0)
        await engine.cancels.stop()
        await llm.close()
        await client.aclose()


# --------------------------------------------------------------------------- the gateway's side


@dataclass(slots=True)
class Ceiling:
    answers_per_s: float
    tokens: float  # generated per answer
    seconds: float  # per answer, queueing at the server included
    slots: int
    token_delay: float

    @property
    def expected(self) -> float:
        return self.slots / (self.tokens * self.token_delay)


@dataclass(slots=True)
class RunResult:
    workers: int
    events: int
    finishes: list[float]  # monotonic, sorted
    started: float
    outcomes: Counter[str]
    per_worker: Counter[int]
    sends: Counter[int]  # messages sent per answer → answers
    meter: Meter
    in_flight: list[int]  # the model server's requests in flight, sampled
    depth: tuple[int, int]  # the stream after the run: (waiting, in progress)
    late: int  # events not answered in time
    busy: float  # CPU-seconds the whole machine was busy meanwhile

    @property
    def others(self) -> float:
        """Other processes' CPU use, fraction of one core: was the machine quiet?"""
        m = self.meter
        return max(0.0, self.busy - m.cpu - sum(m.others.values())) / m.wall

    @property
    def whole(self) -> float:
        return len(self.finishes) / (self.finishes[-1] - self.started) if self.finishes else 0.0

    @property
    def middle(self) -> float:
        """Answers/s between the 10th and the 90th percentile answer: the steady state."""
        n = len(self.finishes)
        lo, hi = int(0.1 * n), max(int(0.9 * n) - 1, 0)
        if hi <= lo:
            return self.whole
        return (hi - lo) / (self.finishes[hi] - self.finishes[lo])


async def measure_ceiling(svc: Services, slots: int, token_delay: float, seconds: float) -> Ceiling:
    """Herald's model client alone, 2 × slots in flight: what the model server can give."""
    settings = herald_settings(svc.redis_url, svc.tgi_url, "ceiling", "worker")
    llm = build_llm(settings)
    await llm.start()
    params = generation_params(settings)
    answers: list[tuple[float, int]] = []
    deadline = time.monotonic() + seconds

    async def loop(k: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            conv = f"c{k:03d}"
            messages = [ChatMessage("system", settings.system_prompt), ChatMessage("user", question(n, conv))]
            started = time.monotonic()
            prompt = await llm.prepare(messages)
            tokens = 0
            async for event in llm.stream(prompt, params):
                if isinstance(event, Finished):
                    tokens = event.generated_tokens
            answers.append((time.monotonic() - started, tokens))
            n += 1

    try:
        begun = time.monotonic()
        await asyncio.gather(*(loop(k) for k in range(2 * slots)))
        wall = time.monotonic() - begun
    finally:
        await llm.close()
    return Ceiling(
        len(answers) / wall,
        sum(t for _, t in answers) / len(answers),
        sum(s for s, _ in answers) / len(answers),
        slots,
        token_delay,
    )


@dataclass
class Pool:
    """The worker processes, and the reports they send."""

    svc: Services
    prefix: str
    capacity: int
    edit_interval: float
    read_block: float
    logs: Path
    ctx: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    procs: list[BaseProcess] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reports: Any = self.ctx.Queue()
        self.stop: multiprocessing.synchronize.Event = self.ctx.Event()

    async def grow(self, size: int) -> None:
        """Start workers until there are `size`, and wait until they all take events."""
        new = range(len(self.procs), size)
        for index in new:
            cfg = WorkerConfig(
                index,
                self.svc.redis_url,
                self.svc.tgi_url,
                self.prefix,
                self.capacity,
                self.edit_interval,
                self.read_block,
                str(self.logs / f"worker-{index}.log"),
            )
            proc = self.ctx.Process(
                target=worker_process, args=(cfg, self.reports, self.stop), name=f"worker-{index}"
            )
            proc.start()
            self.procs.append(proc)
        waiting = set(new)
        deadline = time.monotonic() + 120
        while waiting:
            report = await self.next(deadline - time.monotonic())
            if report is None:
                raise RuntimeError(f"workers {sorted(waiting)} did not start (see {self.logs})")
            if report[0] == "ready":
                waiting.discard(report[1])
                self.pids[f"worker {report[1]}"] = report[2]

    async def next(self, wait: float) -> tuple[Any, ...] | None:
        """The next report, or None after `wait` seconds."""
        try:
            return tuple(await asyncio.to_thread(self.reports.get, True, max(0.01, wait)))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


async def _sample_in_flight(url: str, into: list[int], every: float = 0.1) -> None:
    """The model server's requests in flight (generating or queued), from its /metrics."""
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/metrics") as resp:
                    match = re.search(r"^tgi_batch_current_size (\d+)", await resp.text(), re.M)
                    if match:
                        into.append(int(match.group(1)))
            await asyncio.sleep(every)


async def burst(pool: Pool, gateway: Intake, run: int, events: int, patience: float) -> RunResult:
    """Put `events` events, GATEWAY_IN_FLIGHT at a time, and wait for every answer."""
    todo = [make_event(n, run, 200) for n in range(events)]
    pending = {event.event_id for event in todo}
    finishes: list[float] = []
    outcomes: Counter[str] = Counter()
    per_worker: Counter[int] = Counter()
    sends: Counter[int] = Counter()
    in_flight: list[int] = []
    gate = asyncio.Semaphore(GATEWAY_IN_FLIGHT)

    async def put(event: Inbound) -> None:
        async with gate:
            if not await gateway.put(PLATFORM, event.event_id, payload(event)):
                raise RuntimeError(f"{event.event_id} refused as seen before")

    busy = machine_busy()
    with Meter(pool.pids | pool.svc.pids).measure() as meter:
        started = time.monotonic()
        sampler = asyncio.create_task(_sample_in_flight(pool.svc.tgi_url, in_flight))
        putting = asyncio.gather(*(put(event) for event in todo))
        deadline = started + patience
        while pending and time.monotonic() < deadline:
            report = await pool.next(min(1.0, deadline - time.monotonic()))
            if report is None or report[0] != "done":
                continue
            _, index, event_id, outcome, at, sent = report
            if event_id in pending:
                pending.discard(event_id)
                finishes.append(at)
                outcomes[outcome] += 1
                per_worker[index] += 1
                sends[sent] += 1
        await putting
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    busy = machine_busy() - busy
    await asyncio.sleep(0.5)  # the last finishes (XACK) land
    depth = await gateway.stream.depth([PLATFORM])
    answered = sorted(finishes)
    return RunResult(
        len(pool.procs),
        events,
        answered,
        started,
        outcomes,
        per_worker,
        sends,
        meter,
        in_flight,
        depth,
        len(pending),
        busy,
    )


# --------------------------------------------------------------------------- report


def _log_lines(logs: Path) -> Counter[str]:
    """The workers' warnings and errors, by message with the numbers taken out."""
    found: Counter[str] = Counter()
    for path in sorted(logs.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                found[f"{parts[2]} {re.sub(r'[0-9][0-9a-f-]*', 'N', parts[3])}"] += 1
    return found


def report(
    ceiling: Ceiling,
    runs: list[RunResult],
    server: str,
    logs: Counter[str],
    args: argparse.Namespace,
    command: str,
) -> str:
    out = io.StringIO()
    w = out.write
    w("## Answers per second by worker processes, against a model server of fixed capacity\n\n")
    w(f"Machine: {machine()}; {server} (private, no persistence); the TGI emulator (`bench.tgi_server`) ")
    w(f"with {args.slots} slots, {1000 * args.token_delay:g} ms per token, {ADMITTED} requests admitted ")
    w("(the rest of them queued); each in its own process.\n\n")
    w(f"Command: `{command}`\n\n")
    w(f"Model server's ceiling: {ceiling.answers_per_s:.1f} answers/s measured (Herald's model client, ")
    w(f"{2 * args.slots} in flight, no engine); {ceiling.tokens:.1f} tokens per answer, so ")
    w(f"{args.slots} / ({ceiling.tokens:.1f} × {1000 * args.token_delay:g} ms) = {ceiling.expected:.1f} ")
    w("answers/s in theory.\n\n")
    w(f"Each worker takes at most {args.capacity} events at once; the gateway puts {args.events} events, ")
    w(f"{GATEWAY_IN_FLIGHT} in flight. CPU use: % of one core, over the burst.\n\n")
    w("| workers | worker slots (workers × capacity) | answers | answers/s, whole burst | answers/s, middle ")
    w("80 % | of the ceiling | model server in flight, mean | outcomes | CPU use: workers / gateway / ")
    w("emulator / Redis | other processes' CPU, % | stream after |\n")
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |\n")
    for r in runs:
        m = r.meter
        workers = sum(v for k, v in m.others.items() if k.startswith("worker"))
        cpu = [workers, m.cpu, m.others.get("emulator", 0.0), m.others.get("redis", 0.0)]
        use = " / ".join(f"{100 * c / m.wall:.0f}" for c in cpu)
        mean_in_flight = sum(r.in_flight) / len(r.in_flight) if r.in_flight else float("nan")
        outcomes = ", ".join(f"{k} {v}" for k, v in r.outcomes.most_common())
        if r.late:
            outcomes += f", not answered in time {r.late}"
        share = ", ".join(f"{r.per_worker[i]}" for i in range(r.workers))
        w(f"| {r.workers} | {r.workers * args.capacity} | {len(r.finishes)} (per worker: {share}) ")
        w(f"| {r.whole:.1f} | {r.middle:.1f} | {100 * r.middle / ceiling.answers_per_s:.0f} % ")
        w(f"| {mean_in_flight:.1f} | {outcomes} | {use} | {100 * r.others:.0f} ")
        w(f"| waiting {r.depth[0]}, in progress {r.depth[1]} |\n")
    base = runs[0].middle if runs else 0.0
    if base:
        w("\nScaling (middle 80 %, against 1 worker): ")
        w(", ".join(f"{r.workers} workers ×{r.middle / base:.2f}" for r in runs))
        w(f"; the ceiling is ×{ceiling.answers_per_s / base:.2f}.\n")
    answers = Counter[int]()
    for r in runs:
        answers.update(r.sends)
    w(f"\nMessages sent per answer: {dict(sorted(answers.items()))}.\n")
    if logs:
        w("\nThe workers' warnings and errors (numbers replaced by N):\n\n")
        for line, n in logs.most_common(8):
            w(f"- {n} × `{line[:200]}`\n")
    else:
        w("\nThe workers logged no warnings.\n")
    return out.getvalue()


# --------------------------------------------------------------------------- orchestration


async def bench(svc: Services, args: argparse.Namespace, logs: Path) -> tuple[Ceiling, list[RunResult], str]:
    _progress("the model server's ceiling …")
    ceiling = await measure_ceiling(svc, args.slots, args.token_delay, args.probe)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    client = connect_redis(svc.redis_url)
    assert isinstance(client, Redis), "the bench runs on one server"
    info = await client.info("server")
    server = (
        f"{info.get('server_name', 'redis')} {info.get('valkey_version', info.get('redis_version', '?'))}"
    )
    gateway = build_intake(herald_settings(svc.redis_url, svc.tgi_url, prefix, "gateway"), client)
    pool = Pool(svc, prefix, args.capacity, args.edit_interval, args.read_block, logs)
    runs: list[RunResult] = []
    try:
        for run, size in enumerate(args.workers, 1):
            _progress(f"{size} worker(s): starting …")
            await pool.grow(size)
            expected = ceiling.answers_per_s * min(1.0, size * args.capacity / args.slots)
            patience = 30 + 3 * args.events / max(expected, 1.0)
            _progress(f"{size} worker(s): {args.events} events …")
            runs.append(await burst(pool, gateway, run, args.events, patience))
    finally:
        await asyncio.to_thread(pool.close)
        await client.aclose()
    return ceiling, runs, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (~25 s)")
    parser.add_argument("--workers", default="1,2,4", help="worker processes per run, growing")
    parser.add_argument("--events", type=int, default=400, help="put per run")
    parser.add_argument("--slots", type=int, default=16, help="the model server's")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds per token")
    parser.add_argument("--capacity", type=int, default=6, help="events a worker takes at once")
    parser.add_argument(
        "--edit-interval", type=float, default=0.0, help="the surface's min_edit_interval (Discord: 1)"
    )
    parser.add_argument(
        "--read-block",
        type=float,
        default=2.0,
        help="Intake(read_block=…): a full worker looks for room every read_block / 4 s",
    )
    parser.add_argument("--probe", type=float, default=6.0, help="seconds measuring the ceiling")
    args = parser.parse_args(argv)
    args.workers = sorted({int(n) for n in args.workers.split(",")})
    if args.quick:
        args.events, args.probe = 60, 2.0
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING)
    emulator = ["--max-concurrent-requests", str(ADMITTED), "--slots", str(args.slots)]
    emulator += ["--token-delay", str(args.token_delay)]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="herald-workers-") as tmp,
            services(emulator_args=emulator) as svc,
        ):
            ceiling, runs, server = asyncio.run(bench(svc, args, Path(tmp)))
            logs = _log_lines(Path(tmp))
    except KeyboardInterrupt:
        _progress("interrupted; the workers, the Redis server and the emulator were stopped")
        return 130
    print(report(ceiling, runs, server, logs, args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

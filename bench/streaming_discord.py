"""Streaming on Discord, side by side: Herald and llmcord on the same emulators and workloads.

    .venv/bin/python -m bench.streaming_discord --llmcord /path/to/llmcord-checkout \
        [--llmcord-python /path/to/python] [--quick] [--profile DIR [--profile-workload NAME]] \
        [--bots herald,llmcord] \
        [--only short,long,long32,c200,c1000] [--runs N]

Each bot runs in a process of its own, as the real bot (Herald: `herald run --role all` through
`bench.herald_launcher`; llmcord: its ``llmcord.py`` from its checkout through
`bench.llmcord_launcher`), both with the event-loop lag probe of `bench.stream_probe` inside.
Beside it, in processes of their own: the Discord emulator (`bench.discord_server`: one guild,
a text channel per answer, Discord's message bucket of 5 requests per 5 s per channel and
route), the model (`bench.tgi_server --bench-answers --record-times`: each answer exactly
``n`` tokens at ``r`` tokens per second, with the time each token left it), and for Herald a
private Redis. Every bot gets fresh emulators; the workloads then run one after the other, the
same for each bot.

Per answer (times are `time.monotonic()` from the emulators' processes):

* first visible: the answer's first message created at Discord − the model's first token;
  and − the person's message (what the person waits: Herald's intake, the model's queue and
  first token, and the send);
* first answer text: the first create/edit showing answer text − the model's first token;
* final text after the model's last token: the create/edit from which a message of the
  channel ends with the answer's last words (and still does at the end) − the model's last
  text token (the EOS with the finish reason follows it one token later);
* edits per message per second: the answer's edits / (final text − first visible);
* REST calls per answer (and by kind), 429s served (Herald must have none), counted at the
  emulator; CPU per answer of the bot's process (utime + stime over the workload / answers
  asked, the same denominator for both bots whether or not they finished);
  loop lag p50/p99/max from the probe; RSS before and at peak (sampled, and VmHWM), per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.discord_server import BOT_ID, channel_id, user_id
from bench.stream_probe import (
    RssSampler,
    cpu_seconds,
    fmt_bytes,
    fmt_ms,
    free_port,
    lags_between,
    machine,
    most_at_once,
    peak_rss_bytes,
    read_lag_samples,
    reset_peak_rss,
    start_child,
    stop_child,
    summary,
    wait_for_log_line,
    wait_http_ok,
)
from bench.tgi_server import bench_answer
from tests.emulators.tgi import TGIEmulator

ROOT = Path(__file__).resolve().parent.parent
API_PREFIX = "/api/v10"
TOKEN = "TEST.TOKEN.discord"  # the emulator's default
TAIL_CHARS = 16
STALL = 30.0  # seconds the bot neither writes nor works (see `drive`): give up on the rest


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    answers: int
    at_once: int
    tokens: int
    rate: float  # tokens per second from the model

    @property
    def stream_seconds(self) -> float:
        return self.tokens / self.rate

    @property
    def timeout(self) -> float:
        rounds = math.ceil(self.answers / self.at_once)
        return rounds * (self.stream_seconds + 20) + 60 + self.answers * 0.25


FULL = [
    Workload("short", "16 short answers (~15 tokens), 8 at a time", 16, 8, 15, 50),
    Workload("long", "4 long answers (~670 tokens), 4 at a time", 4, 4, 670, 50),
    Workload("long32", "32 long answers (~340 tokens), 32 at a time", 32, 32, 340, 50),
    Workload("c200", "200 concurrent short-ish answers (~60 tokens)", 200, 200, 60, 50),
    Workload(
        "c1000",
        "1,000 concurrent streams (~100 tokens at 20 tokens/s), each in its channel",
        1000,
        1000,
        100,
        20,
    ),
]
QUICK = [
    Workload("short", "8 short answers (~15 tokens), 4 at a time", 8, 4, 15, 50),
    Workload("long", "2 long answers (~670 tokens), 2 at a time", 2, 2, 670, 50),
    Workload("long32", "16 long answers (~340 tokens), 16 at a time", 16, 16, 340, 50),
    Workload("c200", "100 concurrent short-ish answers (~60 tokens)", 100, 100, 60, 50),
    Workload("c1000", "250 concurrent streams (~100 tokens at 20 tokens/s)", 250, 250, 100, 20),
]
#: Discord's global limit in the emulator (and told to Herald): a bot whose limit Discord
#: raised, as 1,000 answers streaming at an edit a second each need (Discord's default: 50)
GLOBAL_LIMIT = 10_000
BIG = "c1000"  # the workload --profile profiles unless --profile-workload says another


# --- results ----------------------------------------------------------------------------


@dataclass
class Result:
    """One bot's numbers for one workload (lists are per answer)."""

    answers: int = 0
    finished: int = 0
    first_visible: list[float] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)  # first visible − the person's message
    sign: list[float] = field(default_factory=list)  # typing or first visible − the message
    to_model: list[float] = field(default_factory=list)  # the model's request − the message
    model_first: list[float] = field(default_factory=list)  # its first token − its request
    first_text: list[float] = field(default_factory=list)
    final_after_end: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    edits_per_s: list[float] = field(default_factory=list)
    messages_per_answer: list[float] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    cpu: float = math.nan
    wall: float = math.nan
    lag: list[float] = field(default_factory=list)
    rss_before: float = math.nan
    rss_peak: float = math.nan
    model_at_once: int = 0  # the most model streams open at one instant
    on_screen_at_once: int = 0  # the most answers between first visible and final text
    emulator_cpu: float = math.nan
    model_cpu: float = math.nan
    log_problems: list[str] = field(default_factory=list)
    missing_model_times: int = 0


# --- the servers --------------------------------------------------------------------------


class Servers:
    """A fresh Discord emulator and model emulator for one bot (and their logs)."""

    def __init__(self, work: Path, channels: int, global_limit: int) -> None:
        self.work = work
        self.global_limit = global_limit
        self.discord_port = free_port()
        self.tgi_port = free_port()
        self.times = work / "tgi-times.jsonl"
        self.discord = start_child(
            [
                sys.executable,
                "-m",
                "bench.discord_server",
                "--port",
                str(self.discord_port),
                "--channels",
                str(channels),
                "--bucket-limit",
                "5",
                "--bucket-window",
                "5.0",
                "--global-limit",
                str(global_limit),
            ],
            work / "discord.log",
            cwd=ROOT,
        )
        self.tgi = start_child(
            [
                sys.executable,
                "-m",
                "bench.tgi_server",
                "--port",
                str(self.tgi_port),
                "--max-concurrent-requests",
                "5000",
                "--token-delay",
                "0.02",
                "--bench-answers",
                "--record-times",
                str(self.times),
            ],
            work / "tgi.log",
            cwd=ROOT,
        )
        try:
            wait_for_log_line(self.discord, work / "discord.log", "Discord emulator (bench) at", 120)
            wait_for_log_line(self.tgi, work / "tgi.log", "TGI emulator (bench) at", 60)
        except RuntimeError:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.discord_port}"
        self.rest = self.url + API_PREFIX
        self.gateway = f"ws://127.0.0.1:{self.discord_port}/gateway"
        self.tgi_url = f"http://127.0.0.1:{self.tgi_port}"

    def stop(self) -> None:
        for proc in (self.discord, self.tgi):
            stop_child(proc, signal.SIGTERM, 5)

    def model_times(self) -> dict[int, dict[str, Any]]:
        """Channel id → the last finished stream asked there."""
        out: dict[int, dict[str, Any]] = {}
        if not self.times.exists():
            return out
        for line in self.times.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if row.get("tag") and row.get("end") is not None:
                    out[int(row["tag"])] = row
        return out


# --- the bots -------------------------------------------------------------------------------


class Bot:
    name = ""
    proc: subprocess.Popen[bytes]
    log: Path
    lag_file: Path

    def stop(self) -> None:
        raise NotImplementedError

    def launcher(self, module: str, servers: Servers, python: str = sys.executable) -> list[str]:
        """The command that starts `module` (a `bench` launcher) on the emulators, probed."""
        return [
            python,
            "-m",
            module,
            "--rest",
            servers.rest,
            "--gateway",
            servers.gateway,
            "--lag-file",
            str(self.lag_file),
        ]

    def snapshot_lag(self) -> list[tuple[float, float]]:
        """Ask the probe for its samples (SIGUSR2) and read them."""
        before = self.lag_file.stat().st_mtime_ns if self.lag_file.exists() else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.lag_file.exists() and self.lag_file.stat().st_mtime_ns != before:
                break
            time.sleep(0.05)
        time.sleep(0.1)
        return read_lag_samples(self.lag_file)


class Herald(Bot):
    name = "Herald"

    def __init__(
        self,
        servers: Servers,
        work: Path,
        redis_url: str,
        profile: Path | None,
        settings: list[str],
        python: str,
    ) -> None:
        self.log = work / "herald.log"
        self.lag_file = work / "herald-lag.json"
        self.profile = profile
        self.http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env |= {
            "PYTHONPATH": str(ROOT),
            "HERALD_TGI_URL": servers.tgi_url,
            "HERALD_LLM_API": "tgi",
            "HERALD_LLM_MAX_CONCURRENCY": "2000",
            "HERALD_LLM_MAX_INPUT_TOKENS": "3000",
            "HERALD_MAX_NEW_TOKENS": "1024",
            "HERALD_REDIS_URL": redis_url,
            "HERALD_REDIS_PREFIX": f"bench{os.getpid()}x{int(time.time())}",
            "HERALD_DISCORD_TOKEN": TOKEN,
            "HERALD_DISCORD_GLOBAL_RATE_LIMIT": str(servers.global_limit),
            "HERALD_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "HERALD_RATE_LIMIT_BURST": "100000",
            "HERALD_RATE_LIMIT_PER_MINUTE": "100000",
            "HERALD_DAILY_TOKEN_QUOTA": "0",
            "HERALD_INTAKE_CAPACITY": "2000",
            "HERALD_SCHEDULER": "false",
            "HERALD_SHUTDOWN_GRACE_SECONDS": "5",
        }
        env |= dict(setting.split("=", 1) for setting in settings)
        argv = self.launcher("bench.herald_launcher", servers, python)
        if profile is not None:
            argv += ["--profile-file", str(profile)]
        argv += ["--", "run", "--role", "all"]
        self.proc = start_child(argv, self.log, env=env, cwd=work)
        wait_http_ok(f"http://127.0.0.1:{self.http_port}/readyz", 120, self.proc)

    def toggle_profile(self) -> None:
        os.kill(self.proc.pid, signal.SIGUSR1)

    def stop(self) -> None:
        stop_child(self.proc, signal.SIGTERM, 20)


LLMCORD_CONFIG = """\
bot_token: {token}
client_id: {bot_id}
status_message:
max_text: 100000
max_images: 0
max_messages: 25
use_plain_responses: false
allow_dms: true
permissions:
  users: {{admin_ids: [], allowed_ids: [], blocked_ids: []}}
  roles: {{allowed_ids: [], blocked_ids: []}}
  channels: {{allowed_ids: [], blocked_ids: []}}
providers:
  bench:
    base_url: {tgi}/v1
    api_key: none
models:
  bench/tgi:
system_prompt: |
  You are a helpful Discord chatbot.
"""


class Llmcord(Bot):
    name = "llmcord"

    def __init__(self, servers: Servers, work: Path, checkout: Path, python: str) -> None:
        self.log = work / "llmcord.log"
        self.lag_file = work / "llmcord-lag.json"
        cwd = work / "llmcord-run"  # llmcord reads ./config.yaml
        cwd.mkdir()
        (cwd / "config.yaml").write_text(
            LLMCORD_CONFIG.format(token=TOKEN, bot_id=BOT_ID, tgi=servers.tgi_url)
        )
        env = dict(os.environ) | {"PYTHONPATH": str(ROOT)}
        argv = [*self.launcher("bench.llmcord_launcher", servers, python), "--checkout", str(checkout)]
        self.proc = start_child(argv, self.log, env=env, cwd=cwd)
        wait_for_log_line(self.proc, self.log, "has connected to Gateway", 120)

    def stop(self) -> None:
        stop_child(self.proc, signal.SIGINT, 20)


# --- driving a workload ---------------------------------------------------------------------


def expected_tail(tokens: int) -> str:
    """How the model's answer of `tokens` tokens (EOS included) ends."""
    emulator = TGIEmulator(record=False)
    return bench_answer(max(tokens - 1, 1), emulator.tokenize)[-TAIL_CHARS:].strip()


def prompt(channel: int, workload: Workload) -> str:
    return f"<@{BOT_ID}> bench c={channel} n={workload.tokens} r={workload.rate:g}"


async def say(http: aiohttp.ClientSession, url: str, items: list[dict[str, Any]]) -> list[float]:
    async with http.post(f"{url}/_bench/say", json={"messages": items}) as response:
        response.raise_for_status()
        data = await response.json()
        return [float(t) for t in data["at"]]


async def done(http: aiohttp.ClientSession, url: str, channels: Sequence[int]) -> tuple[set[int], int]:
    """The channels among `channels` whose answer is finished, and the bot's creates/edits so far."""
    async with http.post(f"{url}/_bench/done", json={"channels": list(channels)}) as response:
        response.raise_for_status()
        data = await response.json()
        return {int(c) for c in data["done"]}, int(data["noted"])


async def drive(
    http: aiohttp.ClientSession,
    url: str,
    workload: Workload,
    channels: list[int],
    tail: str,
    bot_cpu: Callable[[], float],
) -> tuple[dict[int, float], bool]:
    """Ask in `channels`, `at_once` answers in flight; return when each was asked, and
    whether all finished (not if the workload's timeout passed, or for `STALL` seconds the
    bot created or edited nothing and used less than a quarter of a core)."""
    asked: dict[int, float] = {}
    pending = list(channels)
    flying: set[int] = set()
    deadline = time.monotonic() + workload.timeout
    poll = 0.1 if workload.at_once <= 50 else 0.5
    last_progress = time.monotonic()
    noted = -1
    cpu_seen, cpu_at = bot_cpu(), time.monotonic()
    while pending or flying:
        room = workload.at_once - len(flying)
        if room > 0 and pending:
            batch, pending = pending[:room], pending[room:]
            items = [
                {
                    "channel": c,
                    "user": user_id(c - channel_id(0)),
                    "content": prompt(c, workload),
                    "tail": tail,
                }
                for c in batch
            ]
            for c, at in zip(batch, await say(http, url, items), strict=True):
                asked[c] = at
            flying.update(batch)
            last_progress = time.monotonic()
        await asyncio.sleep(poll)
        if flying:
            finished, count = await done(http, url, sorted(flying))
            if finished or count != noted:
                flying -= finished
                noted = count
                last_progress = time.monotonic()
        now = time.monotonic()
        if now - cpu_at >= 1.0:  # a bot still busy at a quarter of a core is still working
            cpu = bot_cpu()
            if cpu - cpu_seen > 0.25 * (now - cpu_at):
                last_progress = now
            cpu_seen, cpu_at = cpu, now
        if now > deadline or now - last_progress > STALL:
            return asked, False
    return asked, True


async def report(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/_bench/report", timeout=aiohttp.ClientTimeout(total=300)) as response:
        response.raise_for_status()
        data: dict[str, Any] = await response.json()
    async with http.post(f"{url}/_bench/forget") as response:
        response.raise_for_status()
    return data


def log_problems(log: Path, offset: int) -> list[str]:
    """Lines from `offset` on that look like errors or warnings (tracebacks count once)."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out = []
    for line in text.splitlines():
        if any(
            word in line for word in (" ERROR", "ERROR:", " WARNING", "WARNING:", "Traceback", "CRITICAL")
        ):
            out.append(line.strip())
    return out


async def run_workload(
    bot: Bot,
    servers: Servers,
    workload: Workload,
    channels: list[int],
    *,
    profile: Path | None = None,
) -> Result:
    result = Result(answers=len(channels))
    tail = expected_tail(workload.tokens)
    pid = bot.proc.pid
    log_offset = bot.log.stat().st_size if bot.log.exists() else 0
    async with aiohttp.ClientSession() as http:
        await report(http, servers.url)  # forget the warm-up's and earlier workloads' records
        reset_peak_rss(pid)
        cpu0 = cpu_seconds(pid)
        emu0, model0 = cpu_seconds(servers.discord.pid), cpu_seconds(servers.tgi.pid)
        herald = bot if isinstance(bot, Herald) else None
        if profile is not None and herald is not None:
            herald.toggle_profile()
        with RssSampler(pid) as rss:
            t0 = time.monotonic()
            asked, finished = await drive(
                http, servers.url, workload, channels, tail, lambda: cpu_seconds(pid)
            )
            await asyncio.sleep(1.5)  # trailing edits and the bots' bookkeeping after the end
            t1 = time.monotonic()
        if profile is not None and herald is not None:
            herald.toggle_profile()
        result.cpu = cpu_seconds(pid) - cpu0
        result.emulator_cpu = cpu_seconds(servers.discord.pid) - emu0
        result.model_cpu = cpu_seconds(servers.tgi.pid) - model0
        result.wall = t1 - t0
        result.rss_before = rss.start_rss
        result.rss_peak = max(rss.peak, peak_rss_bytes(pid))
        data = await report(http, servers.url)
    if not finished:
        print(f"  {bot.name} {workload.name}: gave up waiting after {t1 - t0:.0f} s", flush=True)
    model = servers.model_times()
    lag = bot.snapshot_lag()
    result.lag = lags_between(lag, t0, t1)
    result.log_problems = log_problems(bot.log, log_offset)

    wanted = set(channels)
    by_channel: dict[int, list[tuple[str, list[list[Any]]]]] = {}
    for message_id, channel, events in data["messages"]:
        if channel in wanted:
            by_channel.setdefault(channel, []).append((message_id, events))
    done_at = {int(c): float(t) for c, t in data["done"].items()}
    first_created: dict[int, float] = {}
    for channel in channels:
        messages = by_channel.get(channel, [])
        times = model.get(channel)
        final = done_at.get(channel)
        if final is not None:
            result.finished += 1
        if not messages:
            continue
        if times is None or times.get("first") is None:
            result.missing_model_times += 1
            continue
        created = first_created[channel] = min(events[0][0] for _, events in messages)
        texts = [e[0] for _, events in messages for e in events if e[3]]
        result.first_visible.append(created - times["first"])
        if channel in asked:
            result.waited.append(created - asked[channel])
            if times.get("received") is not None:
                result.to_model.append(times["received"] - asked[channel])
                result.model_first.append(times["first"] - times["received"])
        if texts:
            result.first_text.append(min(texts) - times["first"])
        result.messages_per_answer.append(len(messages))
        if final is not None:
            result.final_after_end.append(final - times["last_text"])
            span = final - created
            result.duration.append(span)
            edits = sum(len(events) - 1 for _, events in messages)
            if span > 0:
                result.edits_per_s.append(edits / span)
    result.model_at_once = most_at_once(
        (t["received"], t["end"])
        for c, t in model.items()
        if c in wanted and t.get("received") is not None and t.get("end") is not None
    )
    result.on_screen_at_once = most_at_once(
        (created, done_at[c]) for c, created in first_created.items() if c in done_at
    )
    typing_at: dict[int, float] = {}  # channel → its first typing accepted (calls come in order)
    for at, method, route, status, channel in data["calls"]:
        if not t0 <= at <= t1:
            continue
        if channel is not None and channel not in wanted:
            continue
        if status == 429:
            result.throttled += 1
        if channel is None:
            result.calls["other"] += 1
        elif route.endswith("/typing"):
            result.calls["typing"] += 1
            if status < 300:
                typing_at.setdefault(channel, at)
        elif method == "POST" and route.endswith("/messages"):
            result.calls["create"] += 1
        elif method == "PATCH":
            result.calls["edit"] += 1
        else:
            result.calls[f"{method} {route}"] += 1
    for channel, created in first_created.items():
        if channel in asked:
            result.sign.append(min(created, typing_at.get(channel, created)) - asked[channel])
    return result


async def warm_up(bot: Bot, servers: Servers) -> None:
    """One answer in channel 0, so that connections and caches exist before measuring."""
    workload = Workload("warm-up", "", 1, 1, 8, 200)
    async with aiohttp.ClientSession() as http:
        tail = expected_tail(workload.tokens)
        _, ok = await drive(
            http, servers.url, workload, [channel_id(0)], tail, lambda: cpu_seconds(bot.proc.pid)
        )
    if not ok:
        raise RuntimeError(f"{bot.name} did not answer the warm-up message:\n{bot.log.read_text()[-3000:]}")


# --- reporting --------------------------------------------------------------------------------


def _triple(values: Sequence[float], fmt: Callable[[float], str] = fmt_ms) -> str:
    if not values:
        return "–"
    s = summary(values)
    return f"{fmt(s['p50'])} / {fmt(s['p90'])} / {fmt(s['max'])}"


def _number(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def rows_for(result: Result) -> dict[str, str]:
    replies = max(result.answers, 1)  # per answer asked: the same denominator for both bots
    calls = sum(result.calls.values())
    breakdown = ", ".join(f"{k} {v / replies:.1f}" for k, v in sorted(result.calls.items()))
    lag = summary(result.lag)
    return {
        "answers finished": f"{result.finished}/{result.answers}",
        "first visible − model's first token, ms (p50 / p90 / max)": _triple(result.first_visible),
        "first answer text − model's first token, ms (p50 / p90 / max)": _triple(result.first_text),
        "first visible − the person's message, ms (p50 / p90 / max)": _triple(result.waited),
        "  first sign (typing or text) − the message, ms (p50 / p90 / max)": _triple(result.sign),
        "  of which: model asked − the message, ms (p50 / p90 / max)": _triple(result.to_model),
        "  and: model's first token − its request, ms (p50 / p90 / max)": _triple(result.model_first),
        "final text − model's last token, ms (p50 / p90 / max)": _triple(result.final_after_end),
        "answer on screen, s (first visible → final; p50 / max)": (
            "–"
            if not result.duration
            else f"{summary(result.duration)['p50']:.1f} / {summary(result.duration)['max']:.1f}"
        ),
        "messages per answer (max)": "–"
        if not result.messages_per_answer
        else f"{max(result.messages_per_answer):.0f}",
        "edits per message per second (p50 / max)": (
            "–"
            if not result.edits_per_s
            else f"{summary(result.edits_per_s)['p50']:.2f} / {summary(result.edits_per_s)['max']:.2f}"
        ),
        "REST calls per answer": f"{calls / replies:.1f} ({breakdown})" if calls else "0",
        "429s served": str(result.throttled),
        "CPU per answer, ms": _number(result.cpu / replies * 1000),
        "bot CPU, % of one core over the workload": _number(result.cpu / result.wall * 100, 0),
        "loop lag, ms (p50 / p99 / max)": (
            "–" if not result.lag else f"{fmt_ms(lag['p50'])} / {fmt_ms(lag['p99'])} / {fmt_ms(lag['max'])}"
        ),
        "RSS before → peak": f"{fmt_bytes(result.rss_before)} → {fmt_bytes(result.rss_peak)}",
        "model streams open at once, peak": str(result.model_at_once),
        "answers streaming on screen at once, peak": str(result.on_screen_at_once),
        "RSS per stream (peak − before) / model streams at once": fmt_bytes(
            (result.rss_peak - result.rss_before) / max(result.model_at_once, 1)
        ),
        "emulators' CPU, s (Discord / model)": (
            f"{_number(result.emulator_cpu, 2)} / {_number(result.model_cpu, 2)}"
        ),
        "wall time, s": _number(result.wall),
        "error/warning lines in the bot's log": str(len(result.log_problems)),
    }


def table(workload: Workload, results: dict[str, list[Result]]) -> str:
    bots = list(results)
    per_bot = {bot: [rows_for(r) for r in runs] for bot, runs in results.items()}
    metrics = list(next(iter(per_bot.values()))[0])
    lines = [
        f"### {workload.title}",
        "",
        "| metric | " + " | ".join(bots) + " |",
        "| --- |" + " --- |" * len(bots),
    ]
    for metric in metrics:
        cells = []
        for bot in bots:
            values = [rows[metric] for rows in per_bot[bot]]
            cells.append(values[0] if len(values) == 1 else " ‖ ".join(values))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _output(argv: list[str], timeout: float) -> str:
    """What `argv` prints, stripped; raises if it fails to run or exits non-zero."""
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=timeout
    ).stdout.strip()


def herald_version() -> str:
    """The checkout's commit, and whether Herald's code has changes not committed (read only)."""
    try:
        head = _output(["git", "log", "-1", "--format=%h %cd", "--date=iso"], 10)
        dirty = _output(["git", "status", "--porcelain", "--", "core", "adapters", "bots"], 10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes in core/adapters/bots" if dirty else "")


def python_version(python: str) -> str:
    """The version of the Python at `python` ("unknown" if it does not run)."""
    try:
        return _output([python, "-c", "import platform; print(platform.python_version())"], 30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def profile_top(path: Path, count: int = 25) -> str:
    """The top `count` functions by cumulative time, then by own time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(count)
    stats.sort_stats("tottime").print_stats(count)
    return out.getvalue()


# --- main -------------------------------------------------------------------------------------


async def run_bot(
    name: str, args: argparse.Namespace, workloads: list[Workload], work: Path, redis_url: str | None
) -> dict[str, Result]:
    plan: list[tuple[Workload, list[int]]] = []
    next_index = 1
    for w in workloads:
        plan.append((w, [channel_id(i) for i in range(next_index, next_index + w.answers)]))
        next_index += w.answers
    bot_work = work / name
    bot_work.mkdir(parents=True)
    servers = Servers(bot_work, next_index, args.global_limit)
    results: dict[str, Result] = {}
    bot: Bot | None = None
    try:
        profile = None
        if name == "Herald":
            assert redis_url is not None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile = args.profile.resolve() / f"herald-{args.profile_workload}.prof"
            bot = Herald(servers, bot_work, redis_url, profile, args.herald_env, args.herald_python)
        else:
            bot = Llmcord(servers, bot_work, args.llmcord, args.llmcord_python)
        print(f"{name}: started (pid {bot.proc.pid}), warming up", flush=True)
        await warm_up(bot, servers)
        for workload, channels in plan:
            if bot.proc.poll() is not None:
                print(f"{name}: exited ({bot.proc.returncode}) before {workload.name}", flush=True)
                break
            print(
                f"{name}: {workload.name} ({workload.answers} answers, {workload.at_once} at once)",
                flush=True,
            )
            use_profile = profile if workload.name == args.profile_workload else None
            results[workload.name] = await run_workload(bot, servers, workload, channels, profile=use_profile)
            r = results[workload.name]
            print(
                f"  finished {r.finished}/{r.answers}, 429s {r.throttled}, "
                f"CPU {r.cpu:.1f} s over {r.wall:.1f} s, log problems {len(r.log_problems)}",
                flush=True,
            )
            if use_profile is not None and use_profile.exists():
                print(f"\nHerald's profile for {workload.name}: {use_profile}\n", flush=True)
                print(profile_top(use_profile), flush=True)
    finally:
        if bot is not None:
            bot.stop()
        servers.stop()
    return results


async def main_async(args: argparse.Namespace) -> None:
    workloads = QUICK if args.quick else FULL
    if args.only:
        names = set(args.only.split(","))
        workloads = [w for w in workloads if w.name in names]
    bots = [b.strip() for b in args.bots.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="herald-streaming-discord-"))
    version = herald_version()
    print(f"work directory (logs): {work}; Herald at {version}", flush=True)
    redis = None
    if "herald" in bots:
        from bots.redis_server import RedisServerProcess

        redis = RedisServerProcess().start()
    all_results: dict[str, dict[str, list[Result]]] = {w.name: {} for w in workloads}
    try:
        for run in range(args.runs):
            for bot in bots:
                name = "Herald" if bot == "herald" else "llmcord"
                try:
                    results = await run_bot(
                        name, args, workloads, work / f"run{run + 1}", redis.url if redis else None
                    )
                except RuntimeError as exc:
                    print(f"{name}: failed: {exc}", flush=True)
                    results = {}
                for w in workloads:
                    if w.name in results:
                        all_results[w.name].setdefault(name, []).append(results[w.name])
    finally:
        if redis is not None:
            redis.stop()
    print()
    print("## Streaming on Discord: Herald vs llmcord")
    print()
    print(
        f"Machine: {machine()}. Runs: {args.runs}{' (quick)' if args.quick else ''}. "
        "Discord emulator: 5 requests per 5 s per channel and route. Logs: " + str(work)
    )
    print(
        f"Herald at {version}, on Python {python_version(args.herald_python)}. "
        f"Discord's global limit: {args.global_limit} requests a second."
    )
    if args.runs > 1:
        print("With several runs, each cell lists every run's value, separated by ‖.")
    for w in workloads:
        if all_results[w.name]:
            print()
            print(table(w, all_results[w.name]))
    problems = [
        (name, w.name, r.log_problems)
        for w in workloads
        for name, runs in all_results[w.name].items()
        for r in runs
        if r.log_problems
    ]
    if problems:
        print("\n### Problems in the bots' logs (first lines)\n")
        for name, wname, lines in problems:
            distinct = list(dict.fromkeys(line[:200] for line in lines))
            print(f"- {name}, {wname}: {len(lines)} lines; " + " | ".join(distinct[:3]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llmcord", type=Path, default=None, help="llmcord's checkout (holds llmcord.py)")
    parser.add_argument("--llmcord-python", default=None, help="python with llmcord's requirements")
    parser.add_argument("--quick", action="store_true", help="reduced workloads, a couple of minutes")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile Herald into DIR")
    parser.add_argument("--profile-workload", default=BIG, help=f"the workload --profile profiles ({BIG})")
    parser.add_argument("--bots", default="herald,llmcord", help="which, in order (herald,llmcord)")
    parser.add_argument(
        "--global-limit",
        type=int,
        default=GLOBAL_LIMIT,
        help=f"Discord's global limit on the bot, requests a second, for the emulator and Herald "
        f"(default {GLOBAL_LIMIT}: a bot whose limit Discord raised; Discord's own default is 50)",
    )
    parser.add_argument(
        "--only", default="", help="workloads to run, comma-separated: " + ",".join(w.name for w in FULL)
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--herald-python",
        default=sys.executable,
        help="the Python that runs Herald (default: this one); Herald must be installed in it, "
        "e.g. a venv of the deployment's Python (the image's is 3.12)",
    )
    parser.add_argument(
        "--herald-env",
        action="append",
        default=[],
        metavar="HERALD_X=VALUE",
        help="a setting for Herald's process (repeatable), e.g. HERALD_EVENT_LOOP=asyncio",
    )
    args = parser.parse_args(argv)
    if os.sep in args.herald_python:  # a path: Herald's process starts in a directory of its own
        args.herald_python = os.path.abspath(args.herald_python)
    if "llmcord" in args.bots:
        if args.llmcord is None:
            parser.error("--llmcord is needed to run llmcord (or --bots herald)")
        if args.llmcord_python is None:
            venv = args.llmcord.resolve().parent / "llmcord-venv" / "bin" / "python"
            args.llmcord_python = str(venv) if venv.exists() else sys.executable
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

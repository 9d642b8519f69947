"""Streaming on Telegram, side by side: Herald against n3d1117/chatgpt-telegram-bot (the anchor).

    .venv/bin/python -m bench.streaming_telegram --anchor /work/anchors/chatgpt-telegram-bot \
        [--anchor-python /work/anchors/ctb-venv/bin/python] [--quick] [--runs N]

Each bot runs as the real bot in a process of its own (Herald: `herald run` through
`bench.herald_telegram_launcher`; the anchor: its `bot/main.py` through
`bench.telegram_anchor_launcher`, with its own interpreter), against the Bot API emulator
(`bench.telegram_server`, Telegram's flood limits on) and the TGI emulator (this module's
`--serve-tgi`: `tests.emulators.tgi.TGIEmulator` at 50 tokens/s, recording when each
answer's first and last token went out), each in a process of its own. Herald's Redis is
a private server (`bots.redis_server.RedisServerProcess`). Both bots read the same
OpenAI-compatible route, `/v1/chat/completions`, streaming (`--herald-api tgi` gives
Herald its native TGI route instead).

The workload, the same for both: N people each DM the bot at once (a private chat each),
N = 8 and 32; answers of ~15 tokens (short) and ~340 tokens (long). A run starts each bot
afresh (after one warm-up question) and goes through the four scenarios; runs alternate
which bot goes first. Per answer: first visible (the first sendMessage of the answer at
the emulator − the model's first token), final text (the write after which the chat shows
the whole answer − the model's last token), Bot API writes, 429s, edits per message and
per second; per scenario: the bot process's CPU per reply (/proc/PID/stat), all Bot API
calls per reply, loop lag p50/p99 (a 10 ms sleeper in the bot's loop), RSS per stream
(peak during the scenario − before it, / N). The exit status is 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.stream_probe import cpu_seconds, free_port, machine, percentile, read_lag_samples, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123456:BENCH-TOKEN"
TOKEN_DELAY = 0.02  # 50 tokens/s
SHORT_TOKENS = 15
LONG_TOKENS = 340
SETTLE = 2.0  # seconds after the last answer is final, still in the scenario's window
QUIET = 6.0  # seconds without a write, the model done, after which an answer is incomplete
_TAG = re.compile(r"bq(\d+)x (short|long)")
_WORDS = [
    "the",
    "team",
    "will",
    "post",
    "the",
    "update",
    "on",
    "friday",
    "after",
    "the",
    "review",
    "and",
    "the",
    "launch",
    "notes",
    "are",
    "ready",
    "for",
    "every",
    "channel",
    "so",
    "people",
    "can",
    "read",
    "them",
    "before",
    "the",
    "call",
    "starts",
]

# -- the model server ---------------------------------------------------------------------


def answer_text(kind: str, tokens: int) -> str:
    """The emulated model's answer: `tokens` tokens of plain words (one token each, as the
    emulator's tokenizer splits them) in sentences of nine words and a full stop."""
    words: list[str] = []
    count = 0
    i = 0
    while count < tokens - 1:
        words.append(_WORDS[i % len(_WORDS)])
        count += 1
        i += 1
        if i % 9 == 0 and count < tokens - 1:
            words[-1] += "."
            count += 1
    text = " ".join(words) + "."
    return text[0].upper() + text[1:]


def _responder_for(short: int, long: int) -> Any:
    def respond(messages: list[dict[str, str]]) -> str:
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        match = _TAG.search(users[-1] if users else "")
        kind = match.group(2) if match else "short"
        return answer_text(kind, long if kind == "long" else short)

    return respond


async def serve_tgi(port: int, token_delay: float, log_path: Path, short: int, long: int) -> None:
    """The TGI emulator (no request recording) that logs each answer's token times as JSON lines:
    {"user": id, "first": t, "last": t, "tokens": n}, `t` time.monotonic() just after the
    token's SSE event was written."""
    from aiohttp import web

    from tests.emulators.tgi import TGIEmulator

    log = log_path.open("a", buffering=1)

    class TimedTGI(TGIEmulator):
        times: dict[int, list[float]]

        async def _stream(
            self, request: web.Request, response: web.StreamResponse, spec: Any, plan: Any, fault: Any
        ) -> None:
            stamps: list[float] = []
            self.times[id(response)] = stamps
            try:
                await super()._stream(request, response, spec, plan, fault)
            finally:
                del self.times[id(response)]
                found = _TAG.findall(str(spec.inputs))
                if found and stamps:
                    user = int(found[-1][0])
                    line = {"user": user, "first": stamps[0], "last": stamps[-1], "tokens": len(stamps)}
                    log.write(json.dumps(line) + "\n")

        async def _sse(self, response: web.StreamResponse, spec: Any, data: Any) -> None:
            await super()._sse(response, spec, data)
            stamps = self.times.get(id(response))
            if stamps is not None and isinstance(data, dict) and _has_text(data):
                stamps.append(time.monotonic())

    emulator = TimedTGI(
        max_concurrent_requests=1024,
        token_delay=token_delay,
        record=False,
        responder=_responder_for(short, long),
        max_total_tokens=8192,
    )
    emulator.times = {}
    url = await emulator.start(port=port)
    print(f"TGI emulator at {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def _has_text(event: dict[str, Any]) -> bool:
    """An SSE event carrying visible text: an OpenAI chunk's delta content, or a native
    TGI token that is not special."""
    choices = event.get("choices")
    if isinstance(choices, list):
        return any((c.get("delta") or {}).get("content") for c in choices)
    token = event.get("token")
    return isinstance(token, dict) and not token.get("special") and bool(token.get("text"))


# -- processes ------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


async def spawn(
    name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Child:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=env if env is not None else os.environ | {"PYTHONPATH": str(ROOT)},
        )
    return Child(name, proc, log)


async def first_line(child: Child, pattern: str, within: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited: {_tail(child.log)}")
        match = re.search(pattern, _read(child.log))
        if match:
            return match
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready after {within}s: {_tail(child.log)}")


async def stop(child: Child, grace: float = 8.0) -> None:
    if child.proc.returncode is None:
        child.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.proc.wait(), grace)
        except TimeoutError:
            child.proc.kill()
            await child.proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(_read(path).splitlines()[-lines:])


# -- /proc ------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    parts = [int(x) for x in _read(Path("/proc/stat")).splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / _TICK, sum(parts) / _TICK


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Answer:
    first_visible: float
    final_after_last: float
    writes: int
    edits: int
    messages: int
    edits_per_message_per_s: float
    refused: int
    correct: bool


@dataclass
class ScenarioRun:
    bot: str
    run: int
    n: int
    kind: str
    answers: list[Answer] = field(default_factory=list)
    missing: int = 0
    wall: float = 0.0
    cpu_per_reply_ms: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    lag: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    machine_busy: float = 0.0  # machine CPU use in the window, in CPUs
    refused_by: Counter[str] = field(default_factory=Counter)  # 429s by the limit hit

    @property
    def replies(self) -> int:
        return len(self.answers)

    def calls_per_reply(self, method: str | None = None) -> float:
        total = sum(v for k, v in self.calls.items() if method is None or k.split("|")[0] == method)
        return total / max(1, self.replies)

    @property
    def refused_429(self) -> int:
        return sum(v for k, v in self.calls.items() if k.endswith("|Too Many Requests"))


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.token_log = work / "tokens.jsonl"
        self.next_user = 7_000_000 + (int(time.time()) % 10_000) * 100
        self.results: list[ScenarioRun] = []
        self.logs: dict[str, list[Path]] = {"herald": [], "anchor": []}
        self.tgi_url = ""
        self.redis_url = ""
        self._token_offset = 0
        self.tokens: dict[int, dict[str, float]] = {}

    def fresh_users(self, n: int) -> list[int]:
        users = list(range(self.next_user, self.next_user + n))
        self.next_user += n
        return users

    def read_tokens(self) -> None:
        with self.token_log.open() as log:
            log.seek(self._token_offset)
            data = log.read()
        complete = data[: data.rfind("\n") + 1]
        self._token_offset += len(complete.encode())
        for line in complete.splitlines():
            item = json.loads(line)
            self.tokens[int(item["user"])] = item

    async def run_bot(self, bot: str, run: int, http: aiohttp.ClientSession) -> None:
        tag = f"{bot}-{run}"
        telegram = await spawn(
            f"telegram emulator ({tag})",
            [
                sys.executable,
                "-m",
                "bench.telegram_server",
                "--token",
                TOKEN,
                *(["--no-limits"] if self.args.no_limits else []),
            ],
            self.work / f"telegram-{tag}.log",
        )
        child: Child | None = None
        try:
            match = await first_line(telegram, r"telegram emulator at (\S+) control at (\S+)")
            api_url, control = match.group(1), match.group(2)
            probe = self.work / f"{tag}.lag"
            child = await (self.start_herald if bot == "herald" else self.start_anchor)(tag, api_url, probe)
            self.logs[bot].append(child.log)
            await self.until_polling(http, control, child)
            # warm-up: one question, not measured
            await self.scenario(http, control, child, probe, bot, run, 1, "short", measure=False)
            for n, kind in self.args.scenarios:
                result = await self.scenario(http, control, child, probe, bot, run, n, kind)
                self.results.append(result)
                print(f"  {bot:6} run {run} n={n:<2} {kind:5}: {_brief(result)}", file=sys.stderr, flush=True)
        finally:
            if child is not None:
                await stop(child)
            await stop(telegram, 2.0)

    async def start_herald(self, tag: str, api_url: str, probe: Path) -> Child:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {
            "PYTHONPATH": str(ROOT),
            "HERALD_TELEGRAM_TOKEN": TOKEN,
            "HERALD_TELEGRAM_API_URL": api_url,
            "HERALD_TGI_URL": self.tgi_url,
            "HERALD_LLM_API": self.args.herald_api,
            "HERALD_REDIS_URL": self.redis_url,
            "HERALD_REDIS_PREFIX": f"bench{tag.replace('-', '')}{os.getpid()}",
            "HERALD_HTTP_ADDR": f"127.0.0.1:{port}",
            "HERALD_RATE_LIMIT_BURST": "100000",
            "HERALD_RATE_LIMIT_PER_MINUTE": "100000",
            "HERALD_LOG_LEVEL": "WARNING",
            "HERALD_SHUTDOWN_GRACE_SECONDS": "3",
            "HERALD_SCHEDULER": "false",
        }
        workdir = self.work / f"herald-{tag}"
        workdir.mkdir()
        return await spawn(
            f"herald ({tag})",
            [sys.executable, "-m", "bench.herald_telegram_launcher", "--probe-file", str(probe), "run"],
            self.work / f"herald-{tag}.log",
            env=env,
            cwd=workdir,
        )

    async def start_anchor(self, tag: str, api_url: str, probe: Path) -> Child:
        workdir = self.work / f"anchor-{tag}"
        workdir.mkdir()
        config = {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "OPENAI_API_KEY": "sk-bench-not-a-key",
            "OPENAI_BASE_URL": f"{self.tgi_url}/v1",
            # gpt-4: its tokenizer (cl100k_base, counted by the anchor with tiktoken) is in
            # the offline cache; gpt-4o's o200k_base would be downloaded at start.
            "OPENAI_MODEL": "gpt-4",
            "MAX_TOKENS": "1200",
            "STREAM": "true",
            "ENABLE_FUNCTIONS": "false",
            "PLUGINS": "",
            "ENABLE_IMAGE_GENERATION": "false",
            "ENABLE_TTS_GENERATION": "false",
            "ENABLE_TRANSCRIPTION": "false",
            "ENABLE_VISION": "false",
            "ALLOWED_TELEGRAM_USER_IDS": "*",
            "ADMIN_USER_IDS": "-",
            "BUDGET_PERIOD": "monthly",
            "USER_BUDGETS": "*",
            "GUEST_BUDGET": "100.0",
        }
        if self.args.tiktoken_cache:
            config["TIKTOKEN_CACHE_DIR"] = str(self.args.tiktoken_cache)
        (workdir / ".env").write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "PYTHON", "VIRTUAL_ENV"))}
        return await spawn(
            f"anchor ({tag})",
            [
                str(self.args.anchor_python),
                str(ROOT / "bench" / "telegram_anchor_launcher.py"),
                "--checkout",
                str(self.args.anchor),
                "--api-url",
                api_url,
                "--probe-file",
                str(probe),
                "--workdir",
                str(workdir),
            ],
            self.work / f"anchor-{tag}.log",
            env=env | config,
            cwd=workdir,
        )

    async def until_polling(self, http: aiohttp.ClientSession, control: str, child: Child) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited: {_tail(child.log)}")
            async with http.get(f"{control}/control/calls") as response:
                calls = await response.json()
            if calls.get("getUpdates", 0) >= 2:  # the second poll: the first batch was confirmed
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{child.name} never polled: {_tail(child.log)}")

    async def scenario(
        self,
        http: aiohttp.ClientSession,
        control: str,
        child: Child,
        probe: Path,
        bot: str,
        run: int,
        n: int,
        kind: str,
        measure: bool = True,
    ) -> ScenarioRun:
        result = ScenarioRun(bot, run, n, kind)
        users = self.fresh_users(n)
        expected = _normal(answer_text(kind, self.args.long if kind == "long" else self.args.short))
        messages = [
            {"user_id": u, "first_name": f"P{u % 1000}", "text": f"bq{u}x {kind} please, tell me"}
            for u in users
        ]
        rss: list[int] = []
        sampling = asyncio.create_task(_sample_rss(child.pid, rss))
        await asyncio.sleep(0.3)
        result.rss_before = rss_bytes(child.pid)
        cpu0 = cpu_seconds(child.pid)
        busy0 = busy_seconds()
        async with http.post(f"{control}/control/messages", json={"messages": messages}) as response:
            t0 = float((await response.json())["pushed_at"])
        report: dict[str, Any] = {}
        done_at = None
        while time.monotonic() - t0 < self.args.timeout:
            await asyncio.sleep(0.5)
            async with http.post(f"{control}/control/report", json={"chats": users}) as response:
                report = await response.json()
            if _finished(report, users, expected) == n:
                done_at = time.monotonic()
                break
            # The model is done with every answer and the bot has written nothing for QUIET
            # seconds: what is not complete by now stays so (counted as incomplete).
            self.read_tokens()
            last_write = max((w[0] for w in report["writes"]), default=t0)
            if all(u in self.tokens for u in users) and time.monotonic() - last_write > self.args.quiet:
                done_at = last_write
                break
        await asyncio.sleep(self.args.settle)
        t1 = time.monotonic()
        cpu1 = cpu_seconds(child.pid)
        busy1 = busy_seconds()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        async with http.post(f"{control}/control/report", json={"chats": users, "t0": t0, "t1": t1}) as r:
            report = await r.json()
        if not measure:
            if done_at is None:
                raise RuntimeError(f"{child.name}: the warm-up was never answered: {_tail(child.log)}")
            return result
        self.read_tokens()
        result.wall = (done_at or t1) - t0
        result.calls = Counter(report["calls"])
        result.refused_by = Counter(w[7] for w in report["writes"] if w[4] == 429)
        result.rss_peak = max(rss, default=result.rss_before)
        result.machine_busy = (busy1[0] - busy0[0]) / max(1e-9, t1 - t0)
        result.lag = [lag for start, lag in read_lag_samples(probe) if t0 <= start <= t1]
        for user in users:
            answer = _answer(user, report, self.tokens.get(user), expected)
            if answer is None:
                result.missing += 1
            else:
                result.answers.append(answer)
        result.cpu_per_reply_ms = (cpu1 - cpu0) * 1000 / max(1, result.replies)
        return result


async def _sample_rss(pid: int, into: list[int]) -> None:
    while True:
        with contextlib.suppress(OSError):
            into.append(rss_bytes(pid))
        await asyncio.sleep(0.1)


def _normal(text: str) -> str:
    return " ".join(text.split())


def _finals(report: dict[str, Any], user: int) -> list[dict[str, Any]]:
    return sorted(
        (f for f in report["finals"] if f["chat_id"] == user and not f["deleted"]),
        key=lambda f: int(f["message_id"]),
    )


def _finished(report: dict[str, Any], users: Sequence[int], expected: str) -> int:
    return sum(1 for u in users if _normal(" ".join(f["text"] for f in _finals(report, u))) == expected)


def _answer(
    user: int, report: dict[str, Any], tokens: dict[str, float] | None, expected: str
) -> Answer | None:
    finals = _finals(report, user)
    writes = sorted((w for w in report["writes"] if w[2] == user), key=lambda w: w[0])
    ok = [w for w in writes if w[4] == 0 and w[1] in ("sendmessage", "editmessagetext")]
    sends = [w for w in ok if w[1] == "sendmessage"]
    if tokens is None or not sends or not finals:
        return None
    final_at = 0.0
    for message in finals:
        crc = zlib.crc32(message["text"].encode())
        previous = None
        at = None
        for w in ok:
            if w[3] != message["message_id"]:
                continue
            if w[6] == crc and previous != crc:
                at = w[0]
            previous = w[6]
        final_at = max(final_at, at or 0.0)
    edits = sum(1 for w in ok if w[1] == "editmessagetext")
    span = final_at - sends[0][0]
    correct = _normal(" ".join(f["text"] for f in finals)) == expected
    return Answer(
        first_visible=sends[0][0] - tokens["first"],
        final_after_last=final_at - tokens["last"] if correct else math.nan,
        writes=len([w for w in writes if w[1] in ("sendmessage", "editmessagetext")]),
        edits=edits,
        messages=len(finals),
        edits_per_message_per_s=(edits / len(finals)) / span if span > 0 else 0.0,
        refused=sum(1 for w in writes if w[4] == 429),
        correct=correct,
    )


def _brief(r: ScenarioRun) -> str:
    fv = [a.first_visible for a in r.answers]
    fl = [a.final_after_last for a in r.answers if a.correct]
    wrong = sum(1 for a in r.answers if not a.correct)
    return (
        f"{r.replies} answered ({wrong} incomplete), {r.missing} missing, "
        f"first visible p50 {_ms(percentile(fv, 50))}, "
        f"final p50 {_ms(percentile(fl, 50))}, 429s {r.refused_429}, CPU/reply {r.cpu_per_reply_ms:.1f} ms"
    )


# -- statistics and the report ------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def _num(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def report(bench: Bench, started: float) -> str:
    args = bench.args
    limits = "none" if args.no_limits else "1 write/s per private chat (burst 3), 30 writes/s per bot"
    out = [
        "# Streaming on Telegram: Herald vs n3d1117/chatgpt-telegram-bot",
        "",
        f"Machine: {machine()}, Python {sys.version.split()[0]}; "
        f"load average at the end {os.getloadavg()[0]:.2f}.",
        f"Runs: {args.runs} (each bot started afresh per run, order alternating), "
        f"{(time.monotonic() - started) / 60:.1f} min in all. Model: {1 / args.token_delay:.0f} tokens/s, "
        f"short = {args.short} tokens, long = {args.long} tokens. Herald on its `{args.herald_api}` route; "
        f"anchor: {args.anchor_commit}. Telegram limits: {limits}.",
        "",
        "Per-answer rows pool every answer of every run (p50, p90); per-scenario rows (CPU, calls, "
        "429s, lag, RSS) take each scenario run's value, then the median and the highest over runs "
        "(in the p50 and p90 columns).",
    ]
    for n, kind in args.scenarios:
        runs = {
            bot: [r for r in bench.results if r.n == n and r.kind == kind and r.bot == bot]
            for bot in ("herald", "anchor")
        }
        tokens = args.long if kind == "long" else args.short
        out += ["", f"## {n} concurrent answers, {kind} ({tokens} tokens)", "", *_table(runs), ""]
        for bot in ("herald", "anchor"):
            out.append(
                f"- {bot}, per run (first visible p50 / final p50): " + "; ".join(map(_run_line, runs[bot]))
            )
    out += ["", "## Logs", ""]
    for bot, logs in bench.logs.items():
        out.append(f"- {bot}: " + _log_summary(logs))
    return "\n".join(out)


def _run_line(r: ScenarioRun) -> str:
    wrong = sum(1 for a in r.answers if not a.correct)
    return (
        f"run {r.run}: {_ms(percentile([a.first_visible for a in r.answers], 50))} / "
        f"{_ms(percentile([a.final_after_last for a in r.answers if a.correct], 50))}, "
        f"{r.replies}/{r.n} answered, {wrong} incomplete, "
        f"429s by limit {dict(r.refused_by) or 0}, calls {dict(sorted(_by_method(r.calls).items()))}, "
        f"machine busy {r.machine_busy:.2f} CPUs"
    )


_ANSWER_ROWS: list[tuple[str, str, Any]] = [
    ("first visible − first token", "first_visible", lambda v: _ms(v)),
    ("final text − last token (complete answers)", "final_after_last", lambda v: _ms(v)),
    ("edits per message", "edits", lambda v: _num(v, 1)),
    ("edits per message per second", "edits_per_message_per_s", lambda v: _num(v, 2)),
    ("message writes per answer (sent + edits, 429s included)", "writes", lambda v: _num(v, 1)),
    ("429s per answer", "refused", lambda v: _num(v, 1)),
]
_RUN_ROWS: list[tuple[str, Any, Any]] = [
    (
        "answers never complete (of all, summed over runs)",
        lambda r: sum(not a.correct for a in r.answers) + r.missing,
        None,
    ),
    ("CPU per reply, bot process", lambda r: r.cpu_per_reply_ms, lambda v: _num(v, 1) + " ms"),
    ("Bot API calls per reply, all", lambda r: r.calls_per_reply(), lambda v: _num(v, 1)),
    ("429s served in the scenario", lambda r: r.refused_429, lambda v: _num(v, 0)),
    ("loop lag p50", lambda r: percentile(r.lag, 50), lambda v: _num(v * 1000, 2) + " ms"),
    ("loop lag p99", lambda r: percentile(r.lag, 99), lambda v: _num(v * 1000, 1) + " ms"),
    (
        "RSS per stream, (peak − before) / N",
        lambda r: (r.rss_peak - r.rss_before) / 1024 / r.n,
        lambda v: _num(v, 0) + " KiB",
    ),
    ("RSS peak", lambda r: r.rss_peak / 2**20, lambda v: _num(v, 1) + " MiB"),
]


def _table(runs: dict[str, list[ScenarioRun]]) -> list[str]:
    lines = [
        "| metric | Herald p50 | Herald p90 | anchor p50 | anchor p90 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, attr, fmt in _ANSWER_ROWS:
        cells = []
        for bot in ("herald", "anchor"):
            values = [float(getattr(a, attr)) for r in runs[bot] for a in r.answers]
            values = [v for v in values if not math.isnan(v)]
            cells += [fmt(percentile(values, 50)), fmt(percentile(values, 90))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, get, fmt in _RUN_ROWS:
        cells = []
        for bot in ("herald", "anchor"):
            values = [float(get(r)) for r in runs[bot]]
            if fmt is None:  # a count: the total, and of how many
                total = sum(len(r.answers) + r.missing for r in runs[bot])
                cells += [f"{sum(values):.0f} of {total}", ""]
            else:
                cells += [fmt(percentile(values, 50)), fmt(max(values, default=math.nan))]
        lines.append(f"| {name} [median, max over runs] | " + " | ".join(cells) + " |")
    return lines


def _by_method(calls: Counter[str]) -> Counter[str]:
    by: Counter[str] = Counter()
    for key, value in calls.items():
        method, code = key.split("|", 1)
        by[method if code == "ok" else f"{method}!{code.split(' ')[0]}"] += value
    return by


def _log_summary(logs: Sequence[Path]) -> str:
    levels: Counter[str] = Counter()
    samples: list[str] = []
    for path in logs:
        for line in _read(path).splitlines():
            for level in ("ERROR", "WARNING", "CRITICAL", "Traceback"):
                if level in line:
                    levels[level] += 1
                    short = re.sub(r"\d+", "N", line)[:200]
                    if short not in samples and len(samples) < 8:
                        samples.append(short)
                    break
    if not levels:
        return "no errors or warnings"
    counts = ", ".join(f"{k}: {v}" for k, v in levels.items())
    return counts + "; e.g. " + " | ".join(f"`{s}`" for s in samples)


# -- main -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def servers(bench: Bench) -> AsyncIterator[None]:
    from bots.redis_server import RedisServerProcess

    args = bench.args
    bench.token_log.write_text("")
    tgi = await spawn(
        "tgi",
        [
            sys.executable,
            "-m",
            "bench.streaming_telegram",
            "--serve-tgi",
            "--port",
            "0",
            "--token-delay",
            str(args.token_delay),
            "--token-log",
            str(bench.token_log),
            "--short",
            str(args.short),
            "--long",
            str(args.long),
        ],
        bench.work / "tgi.log",
    )
    try:
        bench.tgi_url = (await first_line(tgi, r"TGI emulator at (\S+)")).group(1)
        with RedisServerProcess() as redis:
            bench.redis_url = redis.url
            yield
    finally:
        await stop(tgi, 2.0)


async def main_async(args: argparse.Namespace) -> None:
    started = time.monotonic()
    keep = args.keep
    work = Path(tempfile.mkdtemp(prefix="herald-bench-tg-"))
    bench = Bench(args, work)
    print(f"bench.streaming_telegram: work folder {work}", file=sys.stderr, flush=True)
    try:
        async with servers(bench), aiohttp.ClientSession() as http:
            for run in range(1, args.runs + 1):
                order = ("herald", "anchor") if run % 2 else ("anchor", "herald")
                for bot in order:
                    await bench.run_bot(bot, run, http)
        print(report(bench, started))
    finally:
        if keep:
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _commit(checkout: Path) -> str:
    marker = checkout / ".bench-commit"
    return marker.read_text().strip() if marker.exists() else str(checkout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--anchor", type=Path, help="checkout of n3d1117/chatgpt-telegram-bot")
    parser.add_argument("--anchor-python", type=Path, default=Path("/work/anchors/ctb-venv/bin/python"))
    parser.add_argument(
        "--tiktoken-cache",
        type=Path,
        default=Path("/work/anchors/tiktoken-cache"),
        help="TIKTOKEN_CACHE_DIR for the anchor (holds cl100k_base)",
    )
    parser.add_argument("--quick", action="store_true", help="one run, answers of 15 and 120 tokens (<2 min)")
    parser.add_argument("--settle", type=float, default=None, help="seconds measured after the answers")
    parser.add_argument("--quiet", type=float, default=None, help="seconds without a write: incomplete")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--herald-api", choices=("openai", "tgi"), default="openai")
    parser.add_argument("--no-limits", action="store_true", help="the emulator enforces no flood limits")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, probes)")
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds a scenario may take")
    # the model server process
    parser.add_argument("--serve-tgi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token-delay", type=float, default=TOKEN_DELAY)
    parser.add_argument("--token-log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--short", type=int, default=SHORT_TOKENS)
    parser.add_argument("--long", type=int, default=None)
    args = parser.parse_args(argv)
    if args.long is None:
        args.long = 120 if args.quick else LONG_TOKENS
    if args.serve_tgi:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_tgi(args.port, args.token_delay, args.token_log, args.short, args.long))
        return
    if args.anchor is None:
        parser.error("--anchor is required")
    args.runs = args.runs or (1 if args.quick else 3)
    if args.settle is None:
        args.settle = 1.0 if args.quick else SETTLE
    if args.quiet is None:
        args.quiet = 4.0 if args.quick else QUIET
    args.scenarios = [(int(n), kind) for n in args.concurrency.split(",") for kind in ("short", "long")]
    args.anchor_commit = _commit(args.anchor)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

"""The built-in model's cost over llama.cpp itself: speed, memory and start-up.

    .venv/bin/python -m bench.local_model [--reps 5] [--threads 2] [--json out.json]

Random-weight GGUF models are written to a temporary folder at start
(`tests.tiny_model`: the ~48 MB "bench" model, and the 0.45 MB "tiny" one for
reference); both write only printable ASCII and never end, so every generation
runs to `--max-tokens`. For each model, the same prompt (a short ChatML
conversation) and the same sampling settings go, one generation at a time, to:

* **direct**: `llama_cpp.Llama` in this process, `create_completion(stream=True)`;
* **Herald**: `BuiltInModel`, built as `bots.runtime.build_local_model` builds it
  (its own child process, `bots.local_model.server`, behind `core.llm.llamacpp`),
  `prepare()` then `stream()`.

Repetitions are paired and interleaved (direct/Herald, then Herald/direct, …)
so that drift (another process, thermal, page cache) falls on both alike.
Each pair has its own prompt (a different session line at the top of the
system message): both paths then evaluate the whole prompt, as neither can reuse
the previous pair's KV cache. The direct run shares this process' CPU (it runs on one
thread of its own); Herald's runs in its child. They never generate at the same
time: one awaits the other, and the child's CPU time while the direct path
generates is reported (a few ms: the server winding down its previous answer).

Per generation: TTFT (the call → the first text), tokens/s after the first
token ((tokens − 1) / (last − first)), total time, and CPU time per token (this
process, plus the child's from /proc for Herald). Herald's `prepare()` (the
chat template and exact count, one HTTP round trip) is timed apart and not
in its TTFT. Memory and start-up times come from fresh processes
(`--memory-probe`, run by the bench itself, one at a time). The exit status
is 0 whatever the numbers say: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from core.llm.base import ChatMessage, Finished, GenerationParams, LLMClient, TextDelta

REPO = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python -m bench.local_model"
#: the conversation every generation answers; a session line goes in front of the system message
CONVERSATION: tuple[tuple[Literal["system", "user", "assistant"], str], ...] = (
    ("system", "You are Herald, a friendly assistant in a group chat. Answer briefly and kindly."),
    ("user", "Hi! Could you suggest a name for our weekly book club?"),
    ("assistant", 'Sure: how about "Chapter & Verse" or "The Page Turners"?'),
    ("user", "Nice. Now write a two-line invitation for Thursday's meeting, please."),
)
PROBE_TIMEOUT = 180.0
Kind = Literal["tgi", "builtin", "direct"]


# --------------------------------------------------------------------------- settings and records


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    repeat_penalty: float
    seed: int

    def params(self) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repeat_penalty,
            seed=self.seed,
        )


@dataclass(slots=True)
class Generation:
    """One generation; times in seconds from the call (for Herald: from `stream()`)."""

    path: str  # "direct" or "herald"
    pair: int
    ttft: float
    last_token: float
    total: float
    tokens: int  # text chunks (direct) / TextDelta events (Herald): one per token here
    cpu: float  # CPU seconds, every process involved
    client_cpu: float  # of which this process'
    other_cpu: float  # CPU seconds of every other process on the machine meanwhile (and steal)
    text: str = field(repr=False)
    prepare: float | None = None  # Herald's prepare(), before the stream
    reported_tokens: int | None = None  # Herald's Finished.generated_tokens
    finish_reason: str = ""

    @property
    def tokens_per_s(self) -> float:
        span = self.last_token - self.ttft
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else float("nan")

    @property
    def other_cores(self) -> float:
        """Cores that other processes kept busy, on average, during this generation."""
        return self.other_cpu / self.total if self.total > 0 else float("nan")

    @property
    def cpu_ms_per_token(self) -> float:
        return 1000 * self.cpu / self.tokens if self.tokens else float("nan")

    @property
    def client_cpu_ms_per_token(self) -> float:
        return 1000 * self.client_cpu / self.tokens if self.tokens else float("nan")


@dataclass(slots=True)
class ModelRun:
    name: str
    size_mb: float
    reps: int
    direct_load_s: float
    herald_start_s: float
    generations: list[Generation] = field(default_factory=list)
    child_cpu_during_direct_s: float = 0.0
    #: the model process' CPU seconds per thread over the measured pairs: its main thread
    #: (the server's event loop), then the others, busiest first
    child_main_thread_s: float = 0.0
    child_threads_s: list[float] = field(default_factory=list)
    rendered_matches: bool = True

    def of(self, path: str) -> list[Generation]:
        return [g for g in self.generations if g.path == path]

    def pairs(self) -> list[tuple[Generation, Generation]]:
        direct = {g.pair: g for g in self.of("direct")}
        return [(direct[h.pair], h) for h in self.of("herald") if h.pair in direct]


# --------------------------------------------------------------------------- /proc


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile, VmLck of `pid`, in MB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmLck")
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0]) / 1024
    return found


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` (all its threads), from /proc/<pid>/stat."""
    return proc_cpu_of(Path(f"/proc/{pid}/stat"))


def proc_cpu_of(stat_file: Path) -> float:
    stat = stat_file.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid`."""
    found: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found[int(task.name)] = proc_cpu_of(task / "stat")
    return found


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O; steal
    counts as busy), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------- the two paths


def conversation(session: str) -> list[ChatMessage]:
    first, *rest = CONVERSATION
    messages = [ChatMessage(first[0], f"Session {session}. {first[1]}")]
    return messages + [ChatMessage(role, content) for role, content in rest]


def chatml(messages: Sequence[ChatMessage]) -> str:
    """The prompt as the models' ChatML template renders it, with the generation prompt."""
    turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def load_direct(model: Path, context: int, threads: int) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model),
        n_ctx=context,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
        logits_all=False,
    )


def generate_direct(llama: Any, prompt: str, sampling: Sampling, pair: int) -> Generation:
    parts: list[str] = []
    first = last = 0.0
    busy0, cpu0 = machine_busy(), time.process_time()
    start = time.perf_counter()
    chunks = cast(
        Iterator[dict[str, Any]],
        llama.create_completion(
            prompt,
            stream=True,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            repeat_penalty=sampling.repeat_penalty,
            seed=sampling.seed,
        ),
    )
    reason = ""
    for chunk in chunks:
        choice = chunk["choices"][0]
        text = choice["text"]
        if text:
            last = time.perf_counter() - start
            if not parts:
                first = last
            parts.append(text)
        reason = choice.get("finish_reason") or reason
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    other = machine_busy() - busy0 - cpu
    text = "".join(parts)
    return Generation(
        "direct", pair, first, last, total, len(parts), cpu, cpu, other, text, finish_reason=reason
    )


async def generate_herald(
    llm: LLMClient, pid: int, messages: Sequence[ChatMessage], sampling: Sampling, pair: int
) -> tuple[Generation, str]:
    """One generation through Herald, and the prompt `prepare()` rendered."""
    parts: list[str] = []
    first = last = 0.0
    finished: Finished | None = None
    cpu0, child0 = time.process_time(), proc_cpu(pid)
    begin = time.perf_counter()
    prepared = await llm.prepare(messages)
    start = time.perf_counter()
    busy0, cpu1, child1 = machine_busy(), time.process_time(), proc_cpu(pid)
    async for event in llm.stream(prepared, sampling.params()):
        if isinstance(event, TextDelta):
            last = time.perf_counter() - start
            if not parts:
                first = last
            parts.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    total = time.perf_counter() - start
    busy, client_now, child_now = machine_busy(), time.process_time(), proc_cpu(pid)
    client = client_now - cpu0
    cpu = client + child_now - child0
    other = busy - busy0 - (client_now - cpu1) - (child_now - child1)  # during the stream only
    generation = Generation(
        "herald",
        pair,
        first,
        last,
        total,
        finished.generated_tokens if finished else len(parts),  # an event may carry several
        cpu,
        client,
        other,
        "".join(parts),
        prepare=start - begin,
        reported_tokens=finished.generated_tokens if finished else None,
        finish_reason=finished.finish_reason if finished else "",
    )
    return generation, prepared.rendered or ""


def build_model(model: Path, context: int, threads: int) -> Any:
    """`BuiltInModel` as `bots.runtime.build_local_model` builds it."""
    from bots.local_model.backend import BuiltInModel
    from bots.local_model.process import ModelProcessConfig
    from core.llm.model_source import parse_model_source

    config = ModelProcessConfig(context=context, threads=threads)
    return BuiltInModel(parse_model_source(str(model)), config)


def file_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


async def measure_model(
    name: str, model: Path, reps: int, args: argparse.Namespace, sampling: Sampling
) -> ModelRun:
    started = time.perf_counter()
    llama = load_direct(model, args.context, args.threads)
    direct_load = time.perf_counter() - started
    # One thread of its own for the direct path: the loop stays free meanwhile (to see the
    # model process' idle connections close), and llama.cpp is always called from the same
    # thread, as OpenMP starts a team of threads per calling thread (see the notes).
    direct = ThreadPoolExecutor(1, thread_name_prefix="direct")
    loop = asyncio.get_running_loop()
    llm = build_model(model, args.context, args.threads)
    try:
        started = time.perf_counter()
        await llm.start()
        herald_start = time.perf_counter() - started
        pid = llm.process.pid
        assert pid is not None
        run = ModelRun(name, file_mb(model), reps, direct_load, herald_start)
        # one short warm-up each (first-call costs: page faults, thread start), not counted
        warm = Sampling(8, sampling.temperature, sampling.top_p, sampling.repeat_penalty, sampling.seed)
        await loop.run_in_executor(direct, generate_direct, llama, chatml(conversation("warm-up")), warm, -1)
        await generate_herald(llm, pid, conversation("warm-up"), warm, -1)
        threads0 = thread_cpu(pid)
        for pair in range(reps):
            messages = conversation(uuid.uuid4().hex[:12])
            prompt = chatml(messages)
            order = ("direct", "herald") if pair % 2 == 0 else ("herald", "direct")
            for path in order:
                if path == "direct":
                    child0 = proc_cpu(pid)
                    generation = await loop.run_in_executor(
                        direct, generate_direct, llama, prompt, sampling, pair
                    )
                    run.generations.append(generation)
                    run.child_cpu_during_direct_s += proc_cpu(pid) - child0
                else:
                    herald, rendered = await generate_herald(llm, pid, messages, sampling, pair)
                    run.generations.append(herald)
                    run.rendered_matches &= rendered == prompt
        threads = {tid: cpu - threads0.get(tid, 0.0) for tid, cpu in thread_cpu(pid).items()}
        run.child_main_thread_s = threads.pop(pid, 0.0)
        run.child_threads_s = sorted((cpu for cpu in threads.values() if cpu >= 0.01), reverse=True)
        return run
    finally:
        await llm.close()
        direct.shutdown()
        del llama


# --------------------------------------------------------------------------- memory probes (fresh processes)


async def probe(kind: Kind, model: Path, context: int, threads: int) -> dict[str, Any]:
    """Run in a fresh `--memory-probe` process: import what the `herald` command imports,
    start one model client of `kind`, generate once, and read /proc."""
    import bots.cli  # noqa: F401 - what a bot process has loaded
    from bots.redis_server import free_port
    from core.llm import create_llm_client

    report: dict[str, Any] = {"kind": kind, "imports": proc_memory(os.getpid())}
    messages = conversation("probe")
    sampling = Sampling(32, 0.7, 0.95, 1.1, 1)
    if kind == "direct":
        started = time.perf_counter()
        llama = load_direct(model, context, threads)
        report["start_s"] = time.perf_counter() - started
        generate_direct(llama, chatml(messages), sampling, 0)
        report["self"] = proc_memory(os.getpid())
        return report
    server: subprocess.Popen[bytes] | None = None
    llm: Any
    if kind == "tgi":
        port = free_port()
        server = await asyncio.to_thread(start_tgi_emulator, port)
        llm = create_llm_client("tgi", f"http://127.0.0.1:{port}")
    else:
        llm = build_model(model, context, threads)
    try:
        started = time.perf_counter()
        await llm.start()
        report["start_s"] = time.perf_counter() - started
        pid = llm.process.pid if kind == "builtin" else None
        prepared = await llm.prepare(messages)
        async for _ in llm.stream(prepared, sampling.params()):
            pass
        report["self"] = proc_memory(os.getpid())
        if pid is not None:
            report["child"] = proc_memory(pid)
        report["llama_cpp_in_bot"] = "llama_cpp" in sys.modules
        return report
    finally:
        await llm.close()
        if server is not None:
            server.terminate()
            server.wait(10)


def start_tgi_emulator(port: int) -> subprocess.Popen[bytes]:
    """`bench.tgi_server` in its own process (its memory is not the bot's), once it listens."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.tgi_server", "--port", str(port)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    assert server.stdout is not None
    server.stdout.readline()  # "TGI emulator (bench) at …", printed once it listens
    return server


def _die_with_parent() -> None:
    from bots.child_process import die_with_parent

    die_with_parent()


def run_probe(kind: Kind, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.local_model", "--memory-probe", kind, "--model", str(model)]
    command += ["--threads", str(args.threads), "--context", str(args.context)]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        return {"kind": kind, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- report


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(herald: float, direct: float) -> float:
    return 100 * (herald / direct - 1) if direct else float("nan")


def summary(run: ModelRun) -> dict[str, Any]:
    metrics: dict[str, Callable[[Generation], float]] = {
        "ttft_ms": lambda g: 1000 * g.ttft,
        "tokens_per_s": lambda g: g.tokens_per_s,
        "total_ms": lambda g: 1000 * g.total,
        "cpu_ms_per_token": lambda g: g.cpu_ms_per_token,
        "client_cpu_ms_per_token": lambda g: g.client_cpu_ms_per_token,
        "other_cores": lambda g: g.other_cores,
    }
    out: dict[str, Any] = {}
    for metric, of in metrics.items():
        entry: dict[str, Any] = {}
        for path in ("direct", "herald"):
            values = [of(g) for g in run.of(path)]
            entry[path] = {"median": med(values), "min": min(values), "max": max(values), "all": values}
        pairwise = [pct(of(h), of(d)) for d, h in run.pairs()]
        entry["overhead_pct"] = pct(entry["herald"]["median"], entry["direct"]["median"])
        entry["pairwise_pct"] = {"median": med(pairwise), "min": min(pairwise), "max": max(pairwise)}
        out[metric] = entry
    herald = run.of("herald")
    prepare = [1000 * (g.prepare or 0.0) for g in herald]
    out["prepare_ms"] = {"median": med(prepare), "min": min(prepare), "max": max(prepare), "all": prepare}
    direct_tps = out["tokens_per_s"]["direct"]["median"]
    herald_tps = out["tokens_per_s"]["herald"]["median"]
    out["extra_ms_per_token"] = 1000 * (1 / herald_tps - 1 / direct_tps)
    out["same_text"] = sum(d.text == h.text for d, h in run.pairs())
    out["tokens"] = sorted({g.tokens for g in run.generations})
    out["reported_tokens"] = sorted({g.reported_tokens for g in herald if g.reported_tokens is not None})
    out["finish_reasons"] = sorted({g.finish_reason for g in run.generations})
    return out


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    return f"{platform.machine()}, {cpus} CPUs, Python {platform.python_version()}"


def report(
    runs: list[tuple[ModelRun, dict[str, Any]]],
    probes: list[dict[str, Any]],
    args: argparse.Namespace,
    sampling: Sampling,
    loads: tuple[str, str],
    elapsed: float,
) -> str:
    lines: list[str] = []
    w = lines.append
    w("## Built-in model (Herald) vs llama.cpp direct\n")
    w(f"Machine: {machine()}; llama.cpp threads {args.threads}, context {args.context}.")
    w(
        f"Sampling: max_tokens {sampling.max_tokens}, temperature {sampling.temperature}, "
        f"top_p {sampling.top_p}, repeat_penalty {sampling.repeat_penalty}, seed {sampling.seed}."
    )
    w(f"Load average before / after: {loads[0]} / {loads[1]}; run time {elapsed:.0f} s.\n")
    for run, s in runs:
        w(f"### {run.name} model ({run.size_mb:.1f} MB), {run.reps} pairs, interleaved\n")
        w("| metric | direct, median (min–max) | Herald, median (min–max) | Herald vs direct | pairwise |")
        w("| --- | ---: | ---: | ---: | ---: |")
        for metric, title, digits in (
            ("ttft_ms", "TTFT, ms", 1),
            ("tokens_per_s", "tokens/s after the first", 0),
            ("total_ms", "total, ms", 0),
            ("cpu_ms_per_token", "CPU ms/token, all processes", 2),
            ("client_cpu_ms_per_token", "CPU ms/token, this process", 2),
            ("other_cores", "other processes' CPU, cores (±0.1)", 2),
        ):
            e = s[metric]
            d, h, p = e["direct"], e["herald"], e["pairwise_pct"]
            versus = f"{e['overhead_pct']:+.1f} % | {p['median']:+.1f} % ({p['min']:+.1f}–{p['max']:+.1f})"
            w(
                f"| {title} | {d['median']:.{digits}f} ({d['min']:.{digits}f}–{d['max']:.{digits}f}) "
                f"| {h['median']:.{digits}f} ({h['min']:.{digits}f}–{h['max']:.{digits}f}) "
                f"| {versus if metric != 'other_cores' else ' | '} |"
            )
        prep = s["prepare_ms"]
        w(f"| prepare(), ms | — | {prep['median']:.1f} ({prep['min']:.1f}–{prep['max']:.1f}) | | |")
        w("")
        w(
            f"Herald's extra time per generated token: {s['extra_ms_per_token']:.3f} ms. "
            f"Tokens per generation: {s['tokens']}; Finished.generated_tokens: {s['reported_tokens']}; "
            f"finish reasons: {s['finish_reasons']}; same text on both paths: {s['same_text']}/{run.reps}; "
            f"prepare() rendered the same prompt as the bench: {'yes' if run.rendered_matches else 'NO'}."
        )
        w(
            f"Start: BuiltInModel.start() {run.herald_start_s:.2f} s (spawn + imports + load + /props); "
            f"direct Llama() load {1000 * run.direct_load_s:.0f} ms. Model process CPU while the direct "
            f"path generated: {1000 * run.child_cpu_during_direct_s:.0f} ms (no generation: the server "
            "winding down its previous answer, its OpenMP threads spinning before they sleep).\n"
        )
        w(
            f"Model process CPU by thread over the pairs: main thread (the server's event loop) "
            f"{run.child_main_thread_s:.2f} s; others {[round(x, 2) for x in run.child_threads_s]} s. "
            f"llama.cpp computes on the thread that calls it plus {args.threads - 1} OpenMP worker(s): "
            f"more than {args.threads} busy threads means generation moved between the server's "
            "worker threads.\n"
        )
    if probes:
        w("### Memory and start-up, each in a fresh process (`--memory-probe`)\n")
        w("Each probe imports `bots.cli` (what `herald` loads), starts one model client, generates 32 tokens")
        w("and reads /proc/<pid>/status, in MiB (kB / 1024). VmHWM: peak RSS; RssFile: mapped file")
        w("pages (the model's weights, mmapped, and the libraries); RssAnon: heap, stacks; VmLck: mlocked.\n")
        w("| probe | process | VmRSS | VmHWM | RssAnon | RssFile | VmLck | start, s |")
        w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for p in probes:
            label = p["label"]
            if "error" in p:
                w(f"| {label} | failed: {p['error']} | | | | | | |")
                continue
            rows = [
                ("bot, after imports", p["imports"], None),
                ("bot, model client started", p["self"], p["start_s"]),
            ]
            if "child" in p:
                rows.append(("model child process", p["child"], None))
            for what, mem, start in rows:
                took = "" if start is None else f"{start:.2f}"
                w(
                    f"| {label} | {what} | {mem['VmRSS']:.1f} | {mem['VmHWM']:.1f} | {mem['RssAnon']:.1f} "
                    f"| {mem['RssFile']:.1f} | {mem['VmLck']:.1f} | {took} |"
                )
        w("")
    w("### Reading the numbers\n")
    w(interpretation(runs, probes, args.threads))
    return "\n".join(lines) + "\n"


def interpretation(
    runs: list[tuple[ModelRun, dict[str, Any]]], probes: list[dict[str, Any]], threads: int
) -> str:
    notes: list[str] = []
    for run, s in runs:
        ttft, tps = s["ttft_ms"], s["tokens_per_s"]
        per_token = s["extra_ms_per_token"]
        herald_tokens = sum(g.tokens for g in run.of("herald"))
        loop_ms = 1000 * run.child_main_thread_s / herald_tokens if herald_tokens else float("nan")
        client_ms = s["client_cpu_ms_per_token"]["herald"]["median"]
        notes.append(
            f"- {run.name}: Herald's TTFT is {ttft['herald']['median'] - ttft['direct']['median']:+.1f} ms "
            f"({ttft['overhead_pct']:+.0f} %) and its generation speed {tps['overhead_pct']:+.1f} % against "
            f"llama.cpp direct, i.e. {per_token:.3f} ms more per token. Per token, the model server's event "
            f"loop spent {loop_ms:.2f} ms of CPU and Herald's client (this process) {client_ms:.2f} ms. "
            f"At a real model's 20 tokens/s (50 ms/token) {per_token:.2f} ms would be "
            f"{100 * per_token / 50:.1f} %."
        )
        if len(run.child_threads_s) > threads:
            notes.append(
                f"  More than {threads} threads of the model process computed: generation moved between "
                "the server's worker threads (the thread line above), which slows it."
            )
        if s["other_cores"]["direct"]["median"] > 0.2 or s["other_cores"]["herald"]["median"] > 0.2:
            notes.append(
                "  Other processes kept at least a fifth of a core busy: the machine was not quiet, so "
                "these numbers are noisy (run again)."
            )
    notes.append(
        "- Where the difference comes from: Herald's model process generates on one dedicated thread "
        "and hands tokens to its event loop without waiting, then sends at most one event per 10 ms "
        "after the first token; what remains is the CPU of that event loop and of Herald's client "
        "(aiohttp, SSE, JSON), which, with as many llama.cpp threads as CPUs, competes with llama.cpp "
        "for the same cores, and one loopback HTTP round trip before the first token."
    )
    notes.append(
        "- The direct path generates in this process; Herald's in its child. Both call the same "
        "llama-cpp-python `create_completion` generator, so its own per-token cost (it detokenizes the "
        "whole completion after every token: quadratic in the answer's length) is in both and cancels."
    )
    by_label = {p["label"]: p for p in probes if "error" not in p}
    tgi = by_label.get("TGI backend")
    for run, _ in runs:
        builtin, direct = by_label.get(f"built-in, {run.name}"), by_label.get(f"in-process, {run.name}")
        if tgi and builtin:
            bot_delta = builtin["self"]["VmRSS"] - tgi["self"]["VmRSS"]
            child = builtin["child"]
            inside = ""
            if direct:
                grown = direct["self"]["VmRSS"] - direct["imports"]["VmRSS"]
                inside = f" llama.cpp inside the bot instead would have grown it by {grown:.0f} MiB."
            notes.append(
                f"- Memory, {run.name} model: the bot process is {bot_delta:+.1f} MiB against a TGI bot "
                f"(llama_cpp imported in the bot: {builtin.get('llama_cpp_in_bot')}); the model child "
                f"holds {child['VmRSS']:.0f} MiB RSS (peak {child['VmHWM']:.0f} MiB), of which "
                f"{child['RssFile']:.0f} MiB are file pages (mmapped model, libraries) and "
                f"{child['VmLck']:.0f} MiB are locked in RAM.{inside}"
            )
    return "\n".join(notes)


# --------------------------------------------------------------------------- main


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5, help="pairs of generations on the bench model (5)")
    parser.add_argument("--tiny-reps", type=int, default=3, help="pairs on the tiny model (3; 0 skips it)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads on both paths (2)")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument(
        "--repeat-penalty", type=float, default=1.1, help="sent on both paths (1.1: the server's default)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory / start-up probes")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--memory-probe", choices=("tgi", "builtin", "direct"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def bench(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    load_before = loadavg()
    sampling = Sampling(args.max_tokens, args.temperature, args.top_p, args.repeat_penalty, args.seed)
    from tests.tiny_model import write_bench_model, write_tiny_model

    with tempfile.TemporaryDirectory(prefix="herald-bench-") as folder:
        models = [("bench", write_bench_model(Path(folder) / "bench.gguf"), args.reps)]
        if args.tiny_reps > 0:
            models.append(("tiny", write_tiny_model(Path(folder) / "tiny.gguf"), args.tiny_reps))
        runs: list[tuple[ModelRun, dict[str, Any]]] = []
        for name, path, reps in models:
            run = await measure_model(name, path, reps, args, sampling)
            runs.append((run, summary(run)))
        probes: list[dict[str, Any]] = []
        if not args.no_memory:
            plan: list[tuple[str, Kind, Path]] = [("TGI backend", "tgi", models[0][1])]
            for name, path, _ in models:
                plan += [(f"built-in, {name}", "builtin", path), (f"in-process, {name}", "direct", path)]
            for label, kind, path in plan:
                result = await asyncio.to_thread(run_probe, kind, path, args)
                probes.append({"label": label, **result})
    loads = (load_before, loadavg())
    elapsed = time.perf_counter() - began
    print(report(runs, probes, args, sampling, loads, elapsed), end="")
    if args.json is not None:
        numbers = {
            "command": " ".join([COMMAND, *sys.argv[1:]]),
            "machine": machine(),
            "threads": args.threads,
            "context": args.context,
            "sampling": asdict(sampling),
            "loadavg": {"before": loads[0], "after": loads[1]},
            "elapsed_s": elapsed,
            "models": [
                {
                    "name": run.name,
                    "size_mb": run.size_mb,
                    "pairs": run.reps,
                    "direct_load_s": run.direct_load_s,
                    "herald_start_s": run.herald_start_s,
                    "child_cpu_during_direct_s": run.child_cpu_during_direct_s,
                    "child_main_thread_s": run.child_main_thread_s,
                    "child_threads_s": run.child_threads_s,
                    "rendered_matches": run.rendered_matches,
                    "summary": s,
                }
                for run, s in runs
            ],
            "memory_probes": probes,
        }
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.memory_probe is not None:
        if args.model is None:
            raise SystemExit("--memory-probe needs --model")
        result = asyncio.run(probe(args.memory_probe, args.model, args.context, args.threads))
        print(json.dumps(result), flush=True)
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()

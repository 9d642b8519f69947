"""Shared helpers for the streaming benchmarks (`bench.streaming_discord`, and the Telegram one).

Standard library only: the launchers import this module inside a bot's own process, and
that process may run in another virtualenv (llmcord's), where Herald's dependencies are not
installed.

What is here:

* **The event-loop lag probe**: `install_loop_probe(path)` makes every asyncio loop of
  the process (``asyncio.run``/``asyncio.Runner`` with any loop factory, or an asyncio loop
  run by hand) run a task that sleeps `interval` (10 ms) over and over and records by how
  much each sleep overshot (`time.monotonic()` pairs). The samples are written to `path`
  every second, when the loop's task is cancelled (``asyncio.run`` ending), at interpreter
  exit, on SIGUSR2 (a snapshot, the process keeps running), and by `dump_probe()`.
  `read_lag_samples(path)` reads them back as ``[(at, lag_seconds)]``.
* **A process's CPU and memory from /proc**: `cpu_seconds(pid)` (utime + stime),
  `rss_bytes(pid)`, `peak_rss_bytes(pid)` (VmHWM) and `reset_peak_rss(pid)` (writes 5 to
  ``/proc/<pid>/clear_refs``, so VmHWM restarts from the current RSS), and `RssSampler`, an
  asyncio task that polls RSS and keeps the peak (VmHWM only counts resident pages the kernel
  saw at once; the sampler shows when).
* **Summaries**: `percentile(values, q)` (linear interpolation, q in 0..100) and `summary`
  (n, mean, p50, p90, p99, max); `fmt_ms`, `fmt_bytes`.
* **Child processes**: `start_child` (its own process group, stdout+stderr to a log file,
  killed with its parent on Linux), `wait_for_log_line`, `wait_http_ok`, `stop_child` (a
  signal, then SIGKILL after a grace period), `free_port`.
* `machine()`: CPU model and core count, for the report.

Every time is ``time.monotonic()``: CLOCK_MONOTONIC is system-wide on Linux, so times taken
in different processes on one machine compare.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

# --- the event-loop lag probe (runs inside the bot's process) -------------------------

PROBE_INTERVAL = 0.010
#: seconds between writes of the samples while the probe runs (a killed bot loses at most this)
FLUSH_EVERY = 1.0


class LoopLagProbe:
    """Sleeps `interval` in a loop and records each overshoot: ``(monotonic at wake, lag)``.

    Samples live in two `array('d')` (about 16 bytes a sample, 100 samples a second). It
    runs on every event loop it is started on: a bot may close a short-lived loop before
    its main one (python-telegram-bot does).
    """

    def __init__(self, path: Path | None = None, interval: float = PROBE_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.at = array("d")
        self.lag = array("d")
        # loops by identity, held strongly (uvloop's loops take no weak references)
        self._loops: list[asyncio.AbstractEventLoop] = []

    async def run(self) -> None:
        sleep, now, interval = asyncio.sleep, time.monotonic, self.interval
        at, lag = self.at, self.lag
        flushed = now()
        try:
            while True:
                before = now()
                await sleep(interval)
                woke = now()
                at.append(woke)
                lag.append(max(0.0, woke - before - interval))
                if woke - flushed >= FLUSH_EVERY:
                    flushed = woke
                    self.dump()
        finally:
            self.dump()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on `loop` too (once per loop)."""
        if any(seen is loop for seen in self._loops):
            return
        self._loops.append(loop)
        task = loop.create_task(self.run(), name="bench-loop-lag-probe")
        # a loop may be closed with the probe still pending: expected, not worth a log line
        task._log_destroy_pending = False  # type: ignore[attr-defined]

    def dump(self) -> None:
        """Write every sample so far to `path` (JSON: ``{"interval", "at", "lag"}``)."""
        if self.path is None:
            return
        data = {"interval": self.interval, "pid": os.getpid(), "at": list(self.at), "lag": list(self.lag)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


_probe: LoopLagProbe | None = None


def install_loop_probe(path: Path | str, interval: float = PROBE_INTERVAL) -> LoopLagProbe:
    """Start a `LoopLagProbe` on every asyncio loop of this process when it first runs code.

    Two hooks, so that the bot's code needs no change: ``BaseEventLoop.run_forever`` (every
    asyncio loop, ``run_until_complete`` included) and ``asyncio.Runner.run`` (which
    ``asyncio.run`` uses too, whatever ``loop_factory`` makes the loop: uvloop's included),
    whose main coroutine starts it first. Also dumps at exit and on SIGUSR2.
    """
    global _probe
    probe = _probe = LoopLagProbe(Path(path), interval)
    run_forever = asyncio.base_events.BaseEventLoop.run_forever
    runner_run = asyncio.Runner.run

    def forever(self: asyncio.base_events.BaseEventLoop) -> None:
        probe.start(self)
        run_forever(self)

    async def probed(coro: Any) -> Any:
        probe.start(asyncio.get_running_loop())
        return await coro

    def run(self: asyncio.Runner, coro: Any, *, context: Any = None) -> Any:
        if not asyncio.iscoroutine(coro):
            return runner_run(self, coro, context=context)
        return runner_run(self, probed(coro), context=context)

    asyncio.base_events.BaseEventLoop.run_forever = forever  # type: ignore[method-assign]
    asyncio.Runner.run = run  # type: ignore[method-assign]
    atexit.register(probe.dump)
    signal.signal(signal.SIGUSR2, lambda _sig, _frame: probe.dump())
    return probe


def dump_probe() -> None:
    """Write the installed probe's samples now (no-op without one)."""
    if _probe is not None:
        _probe.dump()


def read_lag_samples(path: Path) -> list[tuple[float, float]]:
    """``[(monotonic at, lag seconds)]`` as written by the probe; [] if there is no file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(zip(data["at"], data["lag"], strict=True))


def lags_between(samples: Iterable[tuple[float, float]], start: float, end: float) -> list[float]:
    """The lags of the samples taken in ``[start, end]``."""
    return [lag for at, lag in samples if start <= at <= end]


# --- /proc ------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (not its children), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) since start or the last `reset_peak_rss`."""
    return _status_kb(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS (needs to own the process); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Polls a process's RSS every `interval` seconds in an asyncio task; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.start_rss = rss_bytes(pid)
        self.peak = self.start_rss
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                value = rss_bytes(self.pid)
                self.samples.append((time.monotonic(), value))
                self.peak = max(self.peak, value)
            await asyncio.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss_bytes(self.pid))


# --- summaries ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99 and max of `values` (NaN for an empty list)."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def most_at_once(spans: Iterable[tuple[float, float]]) -> int:
    """The most of `spans` (start, end) open at one instant: how many were really concurrent."""
    edges = sorted(edge for start, end in spans for edge in ((start, 1), (end, -1)))
    open_now = peak = 0
    for _, step in edges:  # at a tie an end (-1) sorts first: touching spans do not overlap
        open_now += step
        peak = max(peak, open_now)
    return peak


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds for a table: ``12.3`` (``–`` for NaN)."""
    if math.isnan(seconds):
        return "–"
    ms = seconds * 1000
    return f"{ms:.0f}" if abs(ms) >= 100 else f"{ms:.1f}"


def fmt_bytes(value: float) -> str:
    if math.isnan(value):
        return "–"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


# --- child processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    os.setpgrp()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_child(
    argv: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, stdout and stderr appended to `log`.

    The child gets SIGTERM when this process dies (Linux), so a crashed benchmark leaves
    no servers behind.
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )


def wait_for_log_line(proc: subprocess.Popen[bytes], log: Path, needle: str, timeout: float = 60.0) -> str:
    """Wait until `log` holds a line containing `needle`; return that line.

    Raises RuntimeError (with the log's tail) if the child exits or the time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"no {needle!r} in {log} after {timeout:.0f} s:\n{tail}")


def wait_http_ok(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until GET `url` answers 2xx (raises RuntimeError on timeout or child exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}) before {url} answered")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as r:
            if 200 <= r.status < 300:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop_child(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
    """Send `sig` to the child, wait `grace` seconds, then SIGKILL its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


# --- the machine ------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> str:
    """``"<CPU model>, <n> cores (<m> usable), <RAM> RAM"`` from /proc."""
    model = cpu_model()
    usable = len(os.sched_getaffinity(0))
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / (1 << 20):.1f} GiB RAM"
    return f"{model}, {os.cpu_count()} cores ({usable} usable){memory}"


def write_json_lines(out: IO[str], rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, flushed."""
    for row in rows:
        out.write(json.dumps(row, separators=(",", ":")) + "\n")
    out.flush()


def first(items: Iterable[Any], key: Callable[[Any], bool]) -> Any | None:
    """The first item for which `key` holds, else None."""
    return next((item for item in items if key(item)), None)

"""`herald` in its own process, pointed at the Discord emulator, with the loop-lag probe.

    python -m bench.herald_launcher --rest URL --gateway WS_URL --lag-file F [--profile-file P] \
        -- run --role all

What `tests/herald_on_discord_stand_in.py` does (discord.py's REST base and gateway set to the
emulator's), plus `bench.stream_probe.install_loop_probe` (samples written at exit, on
SIGTERM/SIGINT through Herald's own graceful stop, and on SIGUSR2). With `--profile-file`,
SIGUSR1 starts cProfile in the process's main thread (the event loop's) and a second SIGUSR1
stops it and writes the stats there (also written at exit if still running).
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import signal
import sys
from pathlib import Path
from typing import Any

import discord.gateway
import discord.http
import yarl

from bench.stream_probe import install_loop_probe


def install_profile_toggle(path: Path) -> None:
    """SIGUSR1: start profiling; again: stop and write `path` (pstats format)."""
    profiler = cProfile.Profile()
    state = {"on": False}

    def stop() -> None:
        if state["on"]:
            profiler.disable()
            state["on"] = False
            profiler.dump_stats(str(path))

    def toggle(_sig: int, _frame: Any) -> None:
        if state["on"]:
            stop()
        else:
            state["on"] = True
            profiler.enable()

    signal.signal(signal.SIGUSR1, toggle)
    atexit.register(stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rest", required=True, help="REST base, e.g. http://127.0.0.1:N/api/v10")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--lag-file", type=Path, required=True)
    parser.add_argument("--profile-file", type=Path, default=None)
    parser.add_argument("herald", nargs=argparse.REMAINDER, help="herald's arguments, after --")
    args = parser.parse_args(argv)
    herald_args = args.herald[1:] if args.herald[:1] == ["--"] else args.herald
    discord.http.Route.BASE = args.rest
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)
    install_loop_probe(args.lag_file)
    if args.profile_file is not None:
        install_profile_toggle(args.profile_file)
    from bots.cli import main as herald_main

    sys.argv = ["herald", *herald_args]
    herald_main()


if __name__ == "__main__":
    main()

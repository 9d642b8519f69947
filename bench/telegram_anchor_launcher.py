"""Run n3d1117/chatgpt-telegram-bot (the anchor) against the Bot API emulator, with a loop-lag probe.

Run with the anchor's own interpreter (its virtualenv), never Herald's:

    /work/anchors/ctb-venv/bin/python bench/telegram_anchor_launcher.py \
        --checkout /work/anchors/chatgpt-telegram-bot --api-url http://127.0.0.1:PORT \
        --probe-file /tmp/x/anchor.lag [--workdir /tmp/x]

Nothing of the anchor is copied: its `bot/` folder goes on `sys.path` and its `bot/main.py`
runs as `__main__`, unchanged, with its configuration from the environment (the bench
writes it). Two things are patched before its code runs, both from the outside:

* python-telegram-bot's `ApplicationBuilder.build` first sets `base_url` and
  `base_file_url` to the emulator (`--api-url`), as `ApplicationBuilder().base_url(...)`
  would; the anchor's builder chain is otherwise its own.
* the loop-lag probe (`bench.stream_probe.install_loop_probe`) starts on every event loop
  that runs.

It uses the standard library and `bench.stream_probe` (standard library only) alone: it
runs under the anchor's interpreter, with this repository put on `sys.path` by itself.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _point_ptb_at(api_url: str) -> None:
    from telegram.ext import ApplicationBuilder  # the anchor's interpreter has it

    original = ApplicationBuilder.build

    def build(self: Any) -> Any:
        self.base_url(f"{api_url}/bot")
        self.base_file_url(f"{api_url}/file/bot")
        return original(self)

    ApplicationBuilder.build = build  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checkout", type=Path, required=True, help="the anchor's checkout (bot/main.py)")
    parser.add_argument("--api-url", required=True, help="the Bot API emulator, http://127.0.0.1:PORT")
    parser.add_argument("--probe-file", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=None, help="cwd: its usage_logs go there")
    args = parser.parse_args(argv)
    bot_dir = args.checkout.resolve() / "bot"
    if args.workdir is not None:
        os.chdir(args.workdir)
    sys.path.insert(0, str(ROOT))
    from bench.stream_probe import install_loop_probe

    install_loop_probe(args.probe_file)
    _point_ptb_at(args.api_url.rstrip("/"))
    sys.path.insert(0, str(bot_dir))
    sys.argv = [str(bot_dir / "main.py")]
    runpy.run_path(str(bot_dir / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()

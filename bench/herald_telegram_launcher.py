"""`herald run` with the loop-lag probe of `bench.stream_probe` in its process.

    .venv/bin/python -m bench.herald_telegram_launcher --probe-file /tmp/x/herald.lag [run ...]

Everything after the options is handed to Herald's command line (`bots.cli.main`), `run`
by default; Herald reads its settings from the environment (`HERALD_*`) as always. The
probe starts when Herald's event loop does and its samples are written every second and
at exit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.stream_probe import install_loop_probe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--probe-file", type=Path, required=True)
    args, rest = parser.parse_known_args(argv)
    install_loop_probe(args.probe_file)
    from bots.cli import main as herald

    herald(rest or ["run"])


if __name__ == "__main__":
    main()

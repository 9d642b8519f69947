"""llmcord (github.com/jakobdylanc/llmcord) run from its own checkout, against the emulators.

    <llmcord's venv>/bin/python -m bench.llmcord_launcher --checkout DIR --rest URL \
        --gateway WS_URL --lag-file F

Run with the current directory holding llmcord's ``config.yaml`` (llmcord reads it from
there) and with this repository on PYTHONPATH. Points discord.py at the Discord emulator
(``Route.BASE`` and the plain client's ``DEFAULT_GATEWAY``, as
``tests/herald_on_discord_stand_in.py`` does for Herald), installs
`bench.stream_probe.install_loop_probe`, then runs ``DIR/llmcord.py`` unchanged as
``__main__``. llmcord stops on SIGINT (its KeyboardInterrupt handler), and the probe's
samples are written at exit. Nothing of llmcord is copied here: only its path is used.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import discord.gateway
import discord.http
import yarl

from bench.stream_probe import install_loop_probe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkout", type=Path, required=True, help="llmcord's checkout (holds llmcord.py)")
    parser.add_argument("--rest", required=True, help="REST base, e.g. http://127.0.0.1:N/api/v10")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--lag-file", type=Path, required=True)
    args = parser.parse_args(argv)
    script = args.checkout.resolve() / "llmcord.py"
    discord.http.Route.BASE = args.rest
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)
    install_loop_probe(args.lag_file)
    sys.argv = [str(script)]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()

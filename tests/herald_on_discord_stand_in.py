"""`herald` in a child process with discord.py pointed at the Discord stand-in: what
`tests/emulators/discord.py`'s `point_discord_py_at` does in the test process, done here
before the command line runs, since a child can't be reached from the test.

    python -m tests.herald_on_discord_stand_in <stand-in url> <gateway url> run --role all
"""

from __future__ import annotations

import sys

import discord.gateway
import discord.http
import yarl

from bots.cli import main
from tests.emulators.discord import API_PREFIX

if __name__ == "__main__":
    url, gateway, *arguments = sys.argv[1:]
    discord.http.Route.BASE = f"{url}{API_PREFIX}"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    sys.argv = ["herald", *arguments]
    main()

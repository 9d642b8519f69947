"""`python -m bots` is the same as the `herald` command."""

from bots.cli import main

main()

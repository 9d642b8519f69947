"""The `herald` command line.

Configuration problems and missing services end the command with one clear
message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from adapters.console import ConsoleAdapter, read_lines
from bots.doctor import run_doctor
from bots.logs import setup_logging
from bots.run import run as run_bots
from bots.run import sync_discord_commands
from bots.runtime import StartupError, open_runtime
from core.config import ConfigError, Settings, load_settings

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def _settings(env_file: Path | None) -> Settings:
    try:
        return load_settings(env_file=env_file or ".env")
    except ConfigError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read settings from this file instead of ./.env.",
)
@click.pass_context
def main(ctx: click.Context, env_file: Path | None) -> None:
    """Herald: a generative-AI assistant for Discord and Telegram communities."""
    ctx.obj = env_file


@main.command()
@click.option("--user", default="you", show_default=True, help="Who is speaking.")
@click.option("--chat", default="terminal", show_default=True, help="Which conversation to use.")
@click.option("--verbose", is_flag=True, help="Show Herald's log on standard error.")
@click.pass_obj
def console(env_file: Path | None, user: str, chat: str, verbose: bool) -> None:
    """Chat with Herald in the terminal (one message per line when piped)."""
    settings = _settings(env_file)
    setup_logging(settings, None if verbose else "WARNING")
    interactive = sys.stdin.isatty()
    try:
        asyncio.run(_console(settings, user, chat, interactive))
    except StartupError as exc:
        click.echo(f"Herald cannot start: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
    except KeyboardInterrupt:
        click.echo("", err=True)


async def _console(settings: Settings, user: str, chat: str, interactive: bool) -> None:
    async with open_runtime(settings) as runtime:
        if interactive:
            click.echo(
                f"Herald on {runtime.llm.info.model_id}. Type a message, /help for commands, Ctrl-D to leave."
            )
        adapter = ConsoleAdapter(runtime.engine, user=user, chat=chat)
        prompt = "› " if interactive else None
        await adapter.run(read_lines(sys.stdin, prompt, sys.stdout))


@main.command()
@click.pass_obj
def run(env_file: Path | None) -> None:
    """Run the platform bots that have tokens configured (Telegram), until stopped."""
    settings = _settings(env_file)
    setup_logging(settings)
    try:
        asyncio.run(run_bots(settings))
    except StartupError as exc:
        click.echo(f"Herald cannot start: {exc}", err=True)
        sys.exit(EXIT_STARTUP)


@main.group()
def discord() -> None:
    """Discord-specific maintenance."""


@discord.command("sync-commands")
@click.option("--guild", type=int, default=None, help="Write to one guild (instant) instead of globally.")
@click.pass_obj
def sync_commands(env_file: Path | None, guild: int | None) -> None:
    """Write Herald's slash commands to Discord now."""
    settings = _settings(env_file)
    setup_logging(settings, "WARNING")
    try:
        count = asyncio.run(sync_discord_commands(settings, guild))
    except StartupError as exc:
        click.echo(f"Herald cannot sync commands: {exc}", err=True)
        sys.exit(EXIT_STARTUP)
    click.echo(f"Wrote {count} commands {'to guild ' + str(guild) if guild else 'globally'}.")


@main.command()
@click.pass_obj
def doctor(env_file: Path | None) -> None:
    """Check the configuration, Redis and the model server, and say what was found."""
    settings = _settings(env_file)
    setup_logging(settings, "WARNING")
    ok = asyncio.run(run_doctor(settings, click.echo))
    sys.exit(0 if ok else 1)

"""The `herald` command line.

Configuration problems and missing services end the command with one clear
message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from adapters.console import ConsoleAdapter, printable, read_lines
from adapters.platform import Platform, PlatformStartError, WithBot
from adapters.registry import PLATFORMS
from bots.config import Config, load_config
from bots.doctor import run_doctor
from bots.event_loop import loop_factory
from bots.logs import setup_logging
from bots.run import run as run_bots
from bots.runtime import StartupError, open_runtime
from core.config import ConfigError, Settings

EXIT_CONFIG = 2
EXIT_STARTUP = 1
T = TypeVar("T")


def _config(env_file: Path | None, **core_overrides: Any) -> Config:
    try:
        return load_config(env_file=env_file or ".env", **core_overrides)
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
    config = _config(env_file)
    setup_logging(config, None if verbose else "WARNING")
    interactive = sys.stdin.isatty()
    if isinstance(sys.stdout, io.TextIOWrapper):  # a character the terminal lacks prints as "?"
        sys.stdout.reconfigure(errors="replace")
    try:
        asyncio.run(_console(config.core, user, chat, interactive))
    except StartupError as exc:
        click.echo(printable(f"Herald cannot start: {exc}"), err=True)
        sys.exit(EXIT_STARTUP)
    except KeyboardInterrupt:  # while starting or stopping; the console handles Ctrl-C itself
        click.echo("", err=True)


async def _console(settings: Settings, user: str, chat: str, interactive: bool) -> None:
    async with open_runtime(settings) as runtime:
        if interactive:
            click.echo(
                printable(
                    f"Herald on {runtime.llm.info.model_id}. Type a message, /help for commands, "
                    "Ctrl-C to stop an answer, Ctrl-D to leave."
                )
            )
        adapter = ConsoleAdapter(runtime.engine, user=user, chat=chat, interactive=interactive)
        await adapter.run(read_lines(sys.stdin.fileno(), sys.stdin.encoding or "utf-8"))


@main.command()
@click.option(
    "--role",
    type=click.Choice(["gateway", "worker", "all"]),
    default=None,
    help="gateway: receive events and only keep them; worker: answer kept events; "
    "all: both (default: HERALD_ROLE, else all).",
)
@click.pass_obj
def run(env_file: Path | None, role: str | None) -> None:
    """Run every platform bot that has its token set, until stopped (Ctrl-C or SIGTERM)."""
    config = _config(env_file, **({"role": role} if role else {}))
    setup_logging(config)
    try:
        with asyncio.Runner(loop_factory=loop_factory(config.core.event_loop)) as runner:
            runner.run(run_bots(config))
    except StartupError as exc:
        click.echo(f"Herald cannot start: {exc}", err=True)
        sys.exit(EXIT_STARTUP)


def _with_bot(platform: Platform[Any]) -> WithBot[Any]:
    """Runs a platform's maintenance action with its bot, built in a running core."""

    def run_with(action: Callable[[Any], Awaitable[T]]) -> T:
        config = _config(click.get_current_context().find_root().obj)
        setup_logging(config, "WARNING")
        settings = config.platforms[platform.name]
        if not platform.enabled(settings):
            click.echo(f"Herald cannot do that: {platform.switch} is not set.", err=True)
            sys.exit(EXIT_CONFIG)

        async def go() -> T:
            async with open_runtime(config.core) as runtime:
                return await action(platform.build(settings, runtime.bot_deps()))

        try:
            return asyncio.run(go())
        except (StartupError, PlatformStartError) as exc:
            click.echo(f"Herald cannot do that: {exc}", err=True)
            sys.exit(EXIT_STARTUP)

    return run_with


def _add_platform_commands(group: click.Group) -> None:
    """`herald <platform> …`: each platform's own maintenance commands."""
    for platform in PLATFORMS:
        if platform.cli is not None:
            group.add_command(platform.cli(_with_bot(platform)))


_add_platform_commands(main)


@main.command()
@click.pass_obj
def doctor(env_file: Path | None) -> None:
    """Check the configuration, Redis, the model server and each platform, and say what was found."""
    config = _config(env_file)
    setup_logging(config, "WARNING")
    ok = asyncio.run(run_doctor(config, click.echo))
    sys.exit(0 if ok else 1)

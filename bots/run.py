"""`herald run`: every configured platform bot in one process, until SIGINT/SIGTERM.

Shutdown is graceful: the bots stop taking updates, the answers in flight
finish, then Redis and the model client are closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from adapters.discord.bot import DiscordBot, DiscordStartError
from adapters.telegram.bot import TelegramBot, TelegramStartError, WebhookConfig
from bots.runtime import Runtime, StartupError, open_runtime
from core.config import Settings
from core.keys import Keys
from core.schedules.runner import Publisher

log = logging.getLogger("herald")


class PlatformBot(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def publisher(self) -> tuple[str, Publisher]:
        """The platform's name and what publishes scheduled posts there (after start)."""


def configured_platforms(settings: Settings) -> list[str]:
    tokens = (("telegram", settings.telegram_token), ("discord", settings.discord_token))
    return [name for name, token in tokens if token]


def build_discord(settings: Settings, runtime: Runtime) -> DiscordBot:
    assert settings.discord_token is not None
    return DiscordBot(
        runtime.engine,
        settings.discord_token.get_secret_value(),
        redis=runtime.redis,
        keys=Keys(settings.redis_prefix),
        shard_ids=[int(i) for i in settings.discord_shard_ids] or None,
        shard_count=settings.discord_shard_count,
        message_content=settings.discord_message_content,
        actions=runtime.scheduling.actions,
    )


def build_bots(settings: Settings, runtime: Runtime) -> list[PlatformBot]:
    engine = runtime.engine
    bots: list[PlatformBot] = []
    if settings.telegram_token:
        webhook = None
        if settings.telegram_webhook_url and settings.telegram_webhook_secret:
            host, _, port = settings.telegram_webhook_listen.rpartition(":")
            webhook = WebhookConfig(
                url=settings.telegram_webhook_url,
                secret=settings.telegram_webhook_secret.get_secret_value(),
                host=host,
                port=int(port),
            )
        bots.append(
            TelegramBot(
                engine,
                settings.telegram_token.get_secret_value(),
                api_url=settings.telegram_api_url,
                webhook=webhook,
                actions=runtime.scheduling.actions,
            )
        )
    if settings.discord_token:
        bots.append(build_discord(settings, runtime))
    return bots


async def sync_discord_commands(settings: Settings, guild_id: int | None) -> int:
    """`herald discord sync-commands`: write the command set now (REST only, no gateway)."""
    if settings.discord_token is None:
        raise StartupError("HERALD_DISCORD_TOKEN is not set.")
    async with open_runtime(settings) as runtime:
        bot = build_discord(settings, runtime)
        try:
            await bot.login()
            return await bot.sync_commands(guild_id)
        except DiscordStartError as exc:
            raise StartupError(str(exc)) from None
        finally:
            await bot.client.close()


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set or a SIGINT/SIGTERM arrives."""
    if not configured_platforms(settings):
        raise StartupError(
            "Nothing to run: set HERALD_TELEGRAM_TOKEN or HERALD_DISCORD_TOKEN (see README). "
            "To chat in the terminal, use `herald console`."
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_runtime(settings) as runtime:
            started: list[PlatformBot] = []
            try:
                for bot in build_bots(settings, runtime):
                    await bot.start()
                    started.append(bot)
                    platform, publisher = bot.publisher()
                    runtime.scheduling.publishers[platform] = publisher
                await runtime.scheduling.service.start()
                log.info("Herald is running; stop it with Ctrl-C or SIGTERM")
                try:
                    await stop.wait()
                finally:
                    log.info("stopping: finishing the answers in flight")
                    await runtime.scheduling.service.stop()
            except (TelegramStartError, DiscordStartError) as exc:
                raise StartupError(str(exc)) from None
            finally:
                for bot in reversed(started):
                    await bot.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

"""`herald run`: every configured platform bot, the scheduler and the HTTP
endpoints in one process, until SIGINT/SIGTERM.

Shutdown is graceful: /readyz turns 503, the bots stop taking events, answers
in flight get `HERALD_SHUTDOWN_GRACE_SECONDS` to finish (then are marked
interrupted for the user), the bots close, the scheduler gives up its lease,
conversation locks are released, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Protocol

from adapters.discord.bot import DiscordBot, DiscordStartError
from adapters.telegram.bot import TelegramBot, TelegramStartError, WebhookConfig
from bots.http_server import Check, HttpServer
from bots.runtime import Runtime, StartupError, open_runtime
from core.config import Settings
from core.posts.schedules.runner import Publisher
from core.posts.schedules.store import PostState
from core.storage.keys import Keys

log = logging.getLogger("herald")
#: after the grace period, what still runs (a draft being written) gets this long
STOP_TIMEOUT = 10.0


class PlatformBot(Protocol):
    async def start(self) -> None: ...
    async def pause(self) -> None:
        """Stop taking new events."""

    async def ready(self) -> bool:
        """Connected to the platform and taking events."""

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
        gateway=settings.discord_gateway,
        actions=runtime.scheduling.actions,
    )


def build_bots(settings: Settings, runtime: Runtime) -> list[tuple[str, PlatformBot]]:
    """Each configured platform's bot, by platform name."""
    engine = runtime.engine
    bots: list[tuple[str, PlatformBot]] = []
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
            (
                "telegram",
                TelegramBot(
                    engine,
                    settings.telegram_token.get_secret_value(),
                    api_url=settings.telegram_api_url,
                    webhook=webhook,
                    actions=runtime.scheduling.actions,
                ),
            )
        )
    if settings.discord_token:
        bots.append(("discord", build_discord(settings, runtime)))
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


def readiness_checks(runtime: Runtime, bots: Sequence[tuple[str, PlatformBot]]) -> dict[str, Check]:
    """What /readyz asks: Redis, the model server, and each platform."""

    async def redis() -> bool:
        return bool(await runtime.redis.ping())

    checks: dict[str, Check] = {"redis": redis, "model": runtime.llm.health}
    for name, bot in bots:
        checks[name] = bot.ready
    return checks


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
            await _serve(settings, runtime, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(settings: Settings, runtime: Runtime, stop: asyncio.Event) -> None:
    named = build_bots(settings, runtime)
    scheduling = runtime.scheduling

    async def refresh_posts() -> None:
        runtime.metrics.set_posts(await scheduling.store.count_by_state(), [s.value for s in PostState])

    http = HttpServer(
        settings.http_addr,
        runtime.metrics,
        readiness_checks(runtime, named),
        before_scrape=refresh_posts,
    )
    try:
        await http.start()  # first, so /healthz answers while the platforms connect
    except OSError as exc:
        raise StartupError(f"Cannot listen on HERALD_HTTP_ADDR={settings.http_addr}: {exc}") from None
    started: list[PlatformBot] = []
    try:
        for _, bot in named:
            await bot.start()
            started.append(bot)
            platform, publisher = bot.publisher()
            scheduling.publishers[platform] = publisher
        if settings.scheduler:
            await scheduling.service.start()
        log.info("Herald is running; stop it with Ctrl-C or SIGTERM")
        await stop.wait()
    except (TelegramStartError, DiscordStartError) as exc:
        raise StartupError(str(exc)) from None
    finally:
        log.info("stopping: finishing the answers in flight (up to %.0f s)", settings.shutdown_grace_seconds)
        http.stopping = True
        for bot in started:
            await bot.pause()
        # Answers and scheduled runs under way finish (a claimed slot gets its post)
        # while the bots can still send; then the scheduler's lease is given up, so
        # another replica takes over at once.
        await asyncio.gather(
            runtime.engine.drain(settings.shutdown_grace_seconds),
            scheduling.service.stop(drain=settings.shutdown_grace_seconds),
        )
        for bot in reversed(started):
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await bot.stop()
            except TimeoutError:
                log.warning("a platform bot did not stop within %.0f s; leaving it", STOP_TIMEOUT)
        await http.stop()
        log.info("stopped")

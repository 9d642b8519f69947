"""`herald run`: every configured platform bot, the scheduler and the HTTP
endpoints in one process, until SIGINT/SIGTERM.

Its role (`--role`, HERALD_ROLE) says what it does with events: a gateway holds the
platforms' connections and keeps what arrives in the intake's streams; a worker
answers what is kept there (and runs the scheduler); `all` does both, answering what
it received at once. Gateways and workers scale apart.

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
from typing import Any

from adapters.platform import Platform, PlatformBot, PlatformStartError
from adapters.registry import PLATFORMS
from bots.config import Config
from bots.http_server import Check, HttpServer
from bots.runtime import Runtime, StartupError, open_runtime
from core.config import Settings
from core.posts.schedules.store import PostState

log = logging.getLogger("herald")
#: after the grace period, what still runs (a draft being written) gets this long
STOP_TIMEOUT = 10.0


Bots = list[tuple[str, PlatformBot]]


def build_bots(config: Config, runtime: Runtime, platforms: Sequence[Platform[Any]] = PLATFORMS) -> Bots:
    """Each enabled platform's bot, by platform name."""
    deps = runtime.bot_deps()
    bots: Bots = []
    for platform in platforms:
        settings = config.platforms[platform.name]
        if platform.enabled(settings):
            bots.append((platform.name, platform.build(settings, deps)))
    return bots


def readiness_checks(runtime: Runtime, bots: Bots) -> dict[str, Check]:
    """What /readyz asks: Redis, the model server, each platform, and the scheduler
    where this replica runs one."""

    async def redis() -> bool:
        return bool(await runtime.redis.ping())

    async def scheduler() -> bool:
        return runtime.scheduling.service.healthy

    checks: dict[str, Check] = {"redis": redis}
    if runtime.settings.role != "gateway":  # a gateway never calls the model
        checks["model"] = runtime.llm.health
    for name, bot in bots:
        checks[name] = bot.ready
    if schedules(runtime.settings):
        checks["scheduler"] = scheduler
    return checks


def schedules(settings: Settings) -> bool:
    """Whether this replica may run the scheduler: workers do, gateways never (they
    neither draft with the model nor publish)."""
    return settings.scheduler and settings.role != "gateway"


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set or a SIGINT/SIGTERM arrives."""
    if not any(p.enabled(config.platforms[p.name]) for p in PLATFORMS):
        switches = " or ".join(p.switch for p in PLATFORMS)
        raise StartupError(
            f"Nothing to run: set {switches} (see README). To chat in the terminal, use `herald console`."
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with open_runtime(config.core) as runtime:
            await _serve(config, runtime, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(config: Config, runtime: Runtime, stop: asyncio.Event) -> None:
    settings = config.core
    named = build_bots(config, runtime)
    scheduling = runtime.scheduling

    async def refresh_gauges() -> None:
        runtime.metrics.set_posts(await scheduling.store.count_by_state(), [s.value for s in PostState])
        runtime.metrics.set_intake(*await runtime.intake.stream.depth(name for name, _ in named))

    http = HttpServer(
        settings.http_addr,
        runtime.metrics,
        readiness_checks(runtime, named),
        before_scrape=refresh_gauges,
    )
    try:
        await http.start()  # first, so /healthz answers while the platforms connect
    except OSError as exc:
        raise StartupError(f"Cannot listen on HERALD_HTTP_ADDR={settings.http_addr}: {exc}") from None
    started: list[PlatformBot] = []
    try:
        for name, bot in named:
            await bot.start()
            started.append(bot)
            scheduling.publishers[name] = bot.publisher()
        await runtime.intake.start()  # the bots have said which platforms they answer
        if schedules(settings):
            await scheduling.service.start()
        log.info("Herald is running as %s; stop it with Ctrl-C or SIGTERM", settings.role)
        await stop.wait()
    except PlatformStartError as exc:
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
            runtime.intake.stop(settings.shutdown_grace_seconds + STOP_TIMEOUT),
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

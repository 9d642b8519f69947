"""How a platform package describes itself to Herald, once.

Each `adapters/<platform>/` package exports one `Platform`: its name, its own
settings (its `HERALD_<PLATFORM>_…` variables), how to build its bot from the
running core, what `herald doctor` checks, and any maintenance commands of its
own. `adapters.registry` lists them; `herald run`, `doctor`, the command line
and the logs' secret masking loop over that list and know no platform by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import click

from core.chat.engine import Engine
from core.config import HeraldSettings
from core.intake.worker import Intake
from core.pacing_share import RateShare, bot_tag
from core.posts.schedules.actions import PostActions
from core.posts.schedules.runner import Publisher
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient


class PlatformStartError(Exception):
    """A bot could not start (bad token, unreachable API); the message says why and what to do."""


class PlatformBot(Protocol):
    async def start(self) -> None:
        """Connect and take events; raise `PlatformStartError` with a clear reason."""

    async def pause(self) -> None:
        """Stop taking new events; what is running goes on."""

    async def ready(self) -> bool:
        """Connected to the platform and taking events."""

    async def stop(self) -> None:
        """Let the answers in flight finish, then disconnect."""

    def publisher(self) -> Publisher:
        """What publishes scheduled posts on this platform (after `start`)."""


@dataclass(frozen=True, slots=True)
class BotDeps:
    """What a platform's bot is built from: the running core. `intake.works`: this
    replica answers events; `receives`: it holds the platform's connection (a Discord
    gateway, Telegram's polling or webhook) and puts what arrives in the intake."""

    engine: Engine
    redis: RedisClient
    keys: Keys
    actions: PostActions
    intake: Intake
    receives: bool = True

    def rate_share(self, platform: str, token: str, limit: int) -> RateShare:
        """This process's share of the bot's overall `limit` calls a second: every process
        of the same bot (the same `token`) counts in it."""
        return RateShare(self.redis, self.keys.rate_share(platform, bot_tag(token)), limit)


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """What `herald doctor` says of a platform: one line each, and whether it works."""

    lines: tuple[str, ...]
    ok: bool = True


S = TypeVar("S", bound=HeraldSettings)
T = TypeVar("T")

#: runs `action` with the platform's bot, built in a running core (for maintenance commands)
WithBot = Callable[[Callable[[Any], Awaitable[T]]], T]


@dataclass(frozen=True, slots=True)
class Platform(Generic[S]):
    name: str
    settings: type[S]
    #: the setting that turns the platform on, named for people ("HERALD_TELEGRAM_TOKEN")
    switch: str
    enabled: Callable[[S], bool]
    build: Callable[[S, BotDeps], PlatformBot]
    doctor: Callable[[S], Awaitable[DoctorReport]]
    #: `herald <name> …` maintenance commands, given a way to run them with the bot
    cli: Callable[[WithBot[Any]], click.Group] | None = None

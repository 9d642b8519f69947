"""Discord, described once for Herald: its settings, its bot, its doctor check and
its maintenance command (`herald discord sync-commands`)."""

from __future__ import annotations

from typing import Any

import click
import discord
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from adapters.discord.bot import DiscordBot
from adapters.discord.limits import GLOBAL_LIMIT
from adapters.discord.translate import PLATFORM
from adapters.platform import BotDeps, DoctorReport, Platform, WithBot
from core.config import CsvList, HeraldSettings, split_csv


class DiscordSettings(HeraldSettings):
    """`HERALD_DISCORD_*`: see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="HERALD_DISCORD_")

    token: SecretStr | None = None
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: CsvList = Field(default_factory=list)
    message_content: bool = False
    gateway: bool = True
    #: requests a second Discord allows the bot over all routes (50, unless Discord raised it)
    global_rate_limit: int = Field(default=GLOBAL_LIMIT, ge=1)

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids(cls, value: list[str]) -> list[str]:
        if any(not item.isdigit() for item in value):
            raise ValueError("must be shard numbers separated by commas, e.g. 0,1")
        return value

    @model_validator(mode="after")
    def _fits_together(self) -> DiscordSettings:
        count = self.shard_count
        if self.shard_ids and (count is None or any(int(i) >= count for i in self.shard_ids)):
            raise ValueError(
                "HERALD_DISCORD_SHARD_IDS needs HERALD_DISCORD_SHARD_COUNT, and every id below it"
            )
        return self


def build(settings: DiscordSettings, deps: BotDeps) -> DiscordBot:
    assert settings.token is not None  # built only when enabled
    return DiscordBot(
        deps.engine,
        settings.token.get_secret_value(),
        redis=deps.redis,
        keys=deps.keys,
        intake=deps.intake,
        # HERALD_DISCORD_GATEWAY=false: publishing only (no shards, no answers)
        receives=deps.receives,
        answers=settings.gateway,
        shard_ids=[int(i) for i in settings.shard_ids] or None,
        shard_count=settings.shard_count,
        message_content=settings.message_content,
        global_limit=settings.global_rate_limit,
        share=deps.rate_share(PLATFORM, settings.token.get_secret_value(), settings.global_rate_limit),
        actions=deps.actions,
    )


async def doctor(settings: DiscordSettings) -> DoctorReport:
    """The token, checked by logging in over REST (no gateway connection)."""
    if settings.token is None:
        return DoctorReport(("Discord: not configured (set HERALD_DISCORD_TOKEN to run it)",))
    shards = ",".join(settings.shard_ids) or "all"
    mode = "gateway" if settings.gateway else "REST only (publishing)"
    client = discord.Client(intents=discord.Intents.default())
    try:
        await client.login(settings.token.get_secret_value())
        user = client.user
    except discord.LoginFailure:
        return DoctorReport(("Discord: FAILED — Discord refused HERALD_DISCORD_TOKEN",), ok=False)
    except (discord.HTTPException, OSError) as exc:
        return DoctorReport((f"Discord: FAILED — cannot reach Discord: {exc}",), ok=False)
    finally:
        await client.close()
    return DoctorReport((f"Discord: OK — {user}, {mode}, shards {shards}",))


def cli(with_bot: WithBot[Any]) -> click.Group:
    @click.group("discord")
    def group() -> None:
        """Discord-specific maintenance."""

    @group.command("sync-commands")
    @click.option("--guild", type=int, default=None, help="Write to one guild (instant) instead of globally.")
    def sync_commands(guild: int | None) -> None:
        """Write Herald's slash commands to Discord now."""

        async def sync(bot: DiscordBot) -> int:
            await bot.login()
            try:
                return await bot.sync_commands(guild)
            finally:
                await bot.client.close()

        count = with_bot(sync)
        click.echo(f"Wrote {count} commands {'to guild ' + str(guild) if guild else 'globally'}.")

    return group


DISCORD = Platform(
    name="discord",
    settings=DiscordSettings,
    switch="HERALD_DISCORD_TOKEN",
    enabled=lambda settings: settings.token is not None,
    build=build,
    doctor=doctor,
    cli=cli,
)

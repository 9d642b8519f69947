"""Telegram, described once for Herald: its settings, its bot, its doctor check."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from telegram import Bot
from telegram.error import InvalidToken, TelegramError

from adapters.platform import BotDeps, DoctorReport, Platform
from adapters.telegram.bot import TelegramBot, WebhookConfig
from adapters.telegram.request import BOT_LIMIT
from adapters.telegram.translate import PLATFORM
from core.config import HeraldSettings, host_port, http_url


class TelegramSettings(HeraldSettings):
    """`HERALD_TELEGRAM_*`: see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="HERALD_TELEGRAM_")

    token: SecretStr | None = None
    api_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_listen: str = "0.0.0.0:8443"
    #: messages a second Telegram allows the bot over all its chats (about 30)
    bot_rate_limit: int = Field(default=BOT_LIMIT, ge=1)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        return None if not value else http_url(value, "the Telegram Bot API URL")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme != "https":
            raise ValueError("must be the public https:// URL Telegram will post updates to")
        return value or None

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("webhook_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return host_port(value)

    @model_validator(mode="after")
    def _fits_together(self) -> TelegramSettings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("HERALD_TELEGRAM_WEBHOOK_SECRET is required with HERALD_TELEGRAM_WEBHOOK_URL")
        return self

    def webhook(self) -> WebhookConfig | None:
        if not (self.webhook_url and self.webhook_secret):
            return None
        host, _, port = self.webhook_listen.rpartition(":")
        return WebhookConfig(self.webhook_url, self.webhook_secret.get_secret_value(), host, int(port))


def build(settings: TelegramSettings, deps: BotDeps) -> TelegramBot:
    assert settings.token is not None  # built only when enabled
    return TelegramBot(
        deps.engine,
        settings.token.get_secret_value(),
        intake=deps.intake,
        receives=deps.receives,
        api_url=settings.api_url,
        webhook=settings.webhook(),
        bot_limit=settings.bot_rate_limit,
        share=deps.rate_share(PLATFORM, settings.token.get_secret_value(), settings.bot_rate_limit),
        actions=deps.actions,
    )


async def doctor(settings: TelegramSettings) -> DoctorReport:
    """The token and the Bot API, asked who the bot is (`getMe`)."""
    if settings.token is None:
        return DoctorReport(("Telegram: not configured (set HERALD_TELEGRAM_TOKEN to run it)",))
    mode = f"webhook at {settings.webhook_url}" if settings.webhook_url else "long polling"
    options: dict[str, Any] = {}
    if settings.api_url:
        options = {"base_url": f"{settings.api_url}/bot", "base_file_url": f"{settings.api_url}/file/bot"}
    bot = Bot(settings.token.get_secret_value(), **options)
    try:
        async with bot:
            me = bot.bot
    except InvalidToken:
        return DoctorReport(("Telegram: FAILED — the Bot API refused HERALD_TELEGRAM_TOKEN",), ok=False)
    except TelegramError as exc:
        reason = str(exc).replace(settings.token.get_secret_value(), "***")
        return DoctorReport((f"Telegram: FAILED — cannot reach the Bot API: {reason}",), ok=False)
    privacy = "off (sees every group message)" if me.can_read_all_group_messages else "on"
    return DoctorReport((f"Telegram: OK — @{me.username}, {mode}, privacy mode {privacy}",))


TELEGRAM = Platform(
    name="telegram",
    settings=TelegramSettings,
    switch="HERALD_TELEGRAM_TOKEN",
    enabled=lambda settings: settings.token is not None,
    build=build,
    doctor=doctor,
)

"""Settings: defaults, lists, and one clear message naming every problem."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from adapters.discord.platform import DiscordSettings
from adapters.platform import Platform
from adapters.registry import PLATFORMS
from adapters.telegram.platform import TelegramSettings
from bots.config import load_config
from bots.logs import setup_logging
from core.config import ConfigError, HeraldSettings, Settings, is_secret, load_settings


def test_defaults_are_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file=None)
    assert settings.tgi_url is None and settings.llm_api is None
    assert settings.llm_backend == "local"  # no model server: the built-in model
    assert settings.local_model == "Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    assert settings.redis_url is None  # the embedded server
    assert settings.history_ttl_seconds == 7 * 86400


@pytest.mark.parametrize(
    ("env", "backend"),
    [
        ({}, "local"),
        ({"HERALD_LLM_API": "local"}, "local"),
        ({"HERALD_LLM_API": ""}, "local"),
        ({"HERALD_TGI_URL": "http://tgi:80"}, "tgi"),
        ({"HERALD_TGI_URL": "http://tgi:80", "HERALD_LLM_API": "tgi"}, "tgi"),
        ({"HERALD_TGI_URL": "http://vllm:8000/v1", "HERALD_LLM_API": "OpenAI"}, "openai"),
    ],
)
def test_the_model_in_use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], backend: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(env_file=None).llm_backend == backend


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"HERALD_LLM_API": "openai"},
            "HERALD_LLM_API=openai needs HERALD_TGI_URL (the server's URL); "
            "unset both to use the built-in model",
        ),
        (
            {"HERALD_LLM_API": "local", "HERALD_TGI_URL": "http://tgi:80"},
            "HERALD_LLM_API=local runs the built-in model: unset HERALD_TGI_URL, or set HERALD_LLM_API "
            "to tgi or openai to use that server",
        ),
        (
            {"HERALD_LOCAL_CONTEXT": "1024", "HERALD_MAX_NEW_TOKENS": "1024"},
            "HERALD_MAX_NEW_TOKENS must be smaller than HERALD_LOCAL_CONTEXT",
        ),
    ],
)
def test_model_settings_that_do_not_fit_together(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert caught.value.problems == [f"configuration: {problem}"]


@pytest.mark.parametrize("value", ["qwen", "owner/repo", "owner/repo/model.bin", "/no/such/model.txt"])
def test_a_wrong_local_model_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HERALD_LOCAL_MODEL", value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    [problem] = caught.value.problems
    assert problem.startswith("HERALD_LOCAL_MODEL: ") and problem.endswith(f"(got {value!r})")


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_ALLOWED_CHATS", "telegram:-100123, discord:*")
    monkeypatch.setenv("HERALD_TGI_URL", "http://tgi:80/")
    settings = load_settings(env_file=None)
    assert settings.allowed_chats == ["telegram:-100123", "discord:*"]
    assert settings.tgi_url == "http://tgi:80"


def test_every_problem_is_named_and_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's and the platforms' problems, in one message."""
    monkeypatch.setenv("HERALD_TOP_P", "1")
    monkeypatch.setenv("HERALD_LLM_API", "bard")
    monkeypatch.setenv("HERALD_REDIS_URL", "http://redis")
    monkeypatch.setenv("HERALD_TELEGRAM_API_URL", "not a url")
    monkeypatch.setenv("HERALD_LLM_API_KEY", "")
    with pytest.raises(ConfigError) as caught:
        load_config(env_file=None)
    text = caught.value.render()
    for name in ("HERALD_TOP_P", "HERALD_LLM_API", "HERALD_REDIS_URL", "HERALD_TELEGRAM_API_URL"):
        assert name in text
    assert len(caught.value.problems) == 4


def test_dotenv_file(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"  # type: ignore[operator]
    env.write_text("HERALD_MAX_NEW_TOKENS=64\nHERALD_DISCORD_TOKEN=abc.def\n")
    config = load_config(env_file=env)
    assert config.core.max_new_tokens == 64
    discord = config.platforms["discord"]
    assert isinstance(discord, DiscordSettings) and discord.token is not None
    assert "abc.def" not in repr(config)


def test_operations_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file=None)
    assert (settings.http_addr, settings.log_format, settings.shutdown_grace_seconds) == (
        "0.0.0.0:8787",
        "text",
        20.0,
    )
    assert settings.scheduler
    monkeypatch.setenv("HERALD_HTTP_ADDR", "8787")
    monkeypatch.setenv("HERALD_LOG_FORMAT", "yaml")
    monkeypatch.setenv("HERALD_SHUTDOWN_GRACE_SECONDS", "-1")
    monkeypatch.setenv("HERALD_MANAGER_ROLES", "12345")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    problems = "\n".join(caught.value.problems)
    assert "HERALD_HTTP_ADDR: must be host:port" in problems
    assert "HERALD_LOG_FORMAT: Input should be 'text' or 'json'" in problems
    assert "HERALD_SHUTDOWN_GRACE_SECONDS" in problems
    assert "HERALD_MANAGER_ROLES: '12345' must be written platform:id" in problems
    assert len(caught.value.problems) == 4


def test_platform_settings_are_the_platforms_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_TELEGRAM_WEBHOOK_URL", "http://example.org/hook")
    monkeypatch.setenv("HERALD_DISCORD_SHARD_IDS", "0,3")
    monkeypatch.setenv("HERALD_DISCORD_SHARD_COUNT", "2")
    with pytest.raises(ConfigError) as caught:
        load_config(env_file=None)
    problems = caught.value.problems
    assert "HERALD_TELEGRAM_WEBHOOK_URL: must be the public https:// URL Telegram will post updates to" in (
        " ".join(problems)
    )
    assert any("HERALD_DISCORD_SHARD_IDS needs HERALD_DISCORD_SHARD_COUNT" in p for p in problems)
    assert "discord_shard_ids" not in Settings.model_fields  # the core knows no platform's settings
    monkeypatch.delenv("HERALD_DISCORD_SHARD_IDS")
    monkeypatch.setenv("HERALD_TELEGRAM_WEBHOOK_URL", "https://example.org/hook")
    monkeypatch.setenv("HERALD_TELEGRAM_WEBHOOK_SECRET", "s3cr3t-value")
    telegram = load_config(env_file=None).platforms["telegram"]
    assert isinstance(telegram, TelegramSettings)
    webhook = telegram.webhook()
    assert webhook is not None and (webhook.url, webhook.port) == ("https://example.org/hook", 8443)


class ShopSettings(HeraldSettings):
    """A platform added later, declaring a secret of its own."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SHOP_")

    signing_key: SecretStr | None = None
    store_name: str = "herald"


def test_a_secret_setting_is_masked_wherever_it_is_declared(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logs mask every SecretStr setting by its type: a new platform's secret is masked
    without the logging code naming it."""
    shop = Platform(
        name="shop",
        settings=ShopSettings,
        switch="HERALD_SHOP_SIGNING_KEY",
        enabled=lambda settings: False,
        build=lambda settings, deps: None,  # type: ignore[arg-type,return-value]
        doctor=lambda settings: None,  # type: ignore[arg-type,return-value]
    )
    monkeypatch.setenv("HERALD_SHOP_SIGNING_KEY", "sk-live-4242424242")
    monkeypatch.setenv("HERALD_SHOP_STORE_NAME", "corner-shop")
    monkeypatch.setenv("HERALD_TELEGRAM_TOKEN", "123456:telegram-token-value")
    monkeypatch.setenv("HERALD_LLM_API_KEY", "model-key-value")
    config = load_config(env_file=None, platforms=(*PLATFORMS, shop))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging(config)
    try:
        logging.getLogger("herald.test").warning(
            "calling https://api.example/sk-live-4242424242/123456:telegram-token-value with "
            "model-key-value for corner-shop"
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logged = capsys.readouterr().err
    assert "corner-shop" in logged  # not a secret: shown
    for secret in ("sk-live-4242424242", "telegram-token-value", "model-key-value"):
        assert secret not in logged
    assert logged.count("***") == 3
    assert is_secret(ShopSettings, "signing_key") and not is_secret(ShopSettings, "store_name")

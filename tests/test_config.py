"""Settings: defaults, lists, and one clear message naming every problem."""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_settings


def test_defaults_are_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file=None)
    assert settings.tgi_url == "http://localhost:8080"
    assert settings.llm_api == "tgi"
    assert settings.redis_url is None  # the embedded server
    assert settings.history_ttl_seconds == 7 * 86400


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_ALLOWED_CHATS", "telegram:-100123, discord:*")
    monkeypatch.setenv("HERALD_TGI_URL", "http://tgi:80/")
    settings = load_settings(env_file=None)
    assert settings.allowed_chats == ["telegram:-100123", "discord:*"]
    assert settings.tgi_url == "http://tgi:80"


def test_every_problem_is_named_and_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_TOP_P", "1")
    monkeypatch.setenv("HERALD_LLM_API", "bard")
    monkeypatch.setenv("HERALD_REDIS_URL", "http://redis")
    monkeypatch.setenv("HERALD_TELEGRAM_API_URL", "not a url")
    monkeypatch.setenv("HERALD_LLM_API_KEY", "")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    text = caught.value.render()
    for name in ("HERALD_TOP_P", "HERALD_LLM_API", "HERALD_REDIS_URL", "HERALD_TELEGRAM_API_URL"):
        assert name in text
    assert len(caught.value.problems) == 4


def test_dotenv_file(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"  # type: ignore[operator]
    env.write_text("HERALD_MAX_NEW_TOKENS=64\nHERALD_DISCORD_TOKEN=abc.def\n")
    settings = load_settings(env_file=env)
    assert settings.max_new_tokens == 64
    assert settings.discord_token is not None
    assert "abc.def" not in repr(settings)


def test_operations_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file=None)
    assert (settings.http_addr, settings.log_format, settings.shutdown_grace_seconds) == (
        "0.0.0.0:8787",
        "text",
        20.0,
    )
    assert settings.discord_gateway and settings.scheduler
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

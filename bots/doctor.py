"""`herald doctor`: what the configuration says, and whether Redis, the model server
and each configured platform answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from adapters.platform import Platform
from adapters.registry import PLATFORMS
from bots.config import Config
from bots.runtime import StartupError, build_llm, start_redis
from core.config import Settings
from core.llm.errors import LLMError


async def run_doctor(
    config: Config, echo: Callable[[str], None], platforms: Sequence[Platform[Any]] = PLATFORMS
) -> bool:
    """Print one line per check; True when everything needed answered."""
    settings = config.core
    echo("Configuration: valid")
    echo(f"  model API: {settings.llm_api} at {settings.tgi_url}")
    echo(f"  Redis: {settings.redis_url or 'embedded (private server)'}")
    ok = await _redis(settings, echo)
    ok = await _model(settings, echo) and ok
    for platform in platforms:
        report = await platform.doctor(config.platforms[platform.name])
        for line in report.lines:
            echo(line)
        ok = ok and report.ok
    return ok


async def _redis(settings: Settings, echo: Callable[[str], None]) -> bool:
    try:
        redis, server = await start_redis(settings)
    except StartupError as exc:
        echo(f"Redis: FAILED — {exc}")
        return False
    try:
        info = await redis.info("server")
        version = info.get("valkey_version") or info.get("redis_version", "?")
        echo(f"Redis: OK (server {version})")
        return True
    except RedisError as exc:
        echo(f"Redis: FAILED — {exc}")
        return False
    finally:
        await redis.aclose()
        if server is not None:
            server.stop()


async def _model(settings: Settings, echo: Callable[[str], None]) -> bool:
    llm = build_llm(settings)
    try:
        model = await llm.start()
        healthy = await llm.health()
        echo(f"Model server: {'OK' if healthy else 'UNHEALTHY'} — {model.model_id}")
        echo(
            f"  max input tokens {model.max_input_tokens}, max total tokens "
            f"{model.max_total_tokens}, max concurrent requests {model.max_concurrent_requests}"
        )
        return healthy
    except LLMError as exc:
        echo(f"Model server: FAILED — {type(exc).__name__}: {exc}")
        return False
    finally:
        await llm.close()

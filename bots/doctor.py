"""`herald doctor`: what the configuration says, and whether Redis and the model answer."""

from __future__ import annotations

from collections.abc import Callable

from redis.exceptions import RedisError

from bots.runtime import StartupError, build_llm, start_redis
from core.config import Settings
from core.llm.errors import LLMError


def _secret_state(value: object) -> str:
    return "set" if value else "not set"


async def run_doctor(settings: Settings, echo: Callable[[str], None]) -> bool:
    """Print one line per check; True when everything needed answered."""
    ok = True
    echo("Configuration: valid")
    echo(f"  model API: {settings.llm_api} at {settings.tgi_url}")
    echo(f"  Redis: {settings.redis_url or 'embedded (private server)'}")
    echo(f"  Discord token: {_secret_state(settings.discord_token)}")
    echo(f"  Telegram token: {_secret_state(settings.telegram_token)}")

    try:
        redis, server = await start_redis(settings)
    except StartupError as exc:
        echo(f"Redis: FAILED — {exc}")
        ok = False
    else:
        try:
            info = await redis.info("server")
            version = info.get("valkey_version") or info.get("redis_version", "?")
            echo(f"Redis: OK (server {version})")
        except RedisError as exc:
            echo(f"Redis: FAILED — {exc}")
            ok = False
        finally:
            await redis.aclose()
            if server is not None:
                server.stop()

    llm = build_llm(settings)
    try:
        model = await llm.start()
        healthy = await llm.health()
        echo(f"Model server: {'OK' if healthy else 'UNHEALTHY'} — {model.model_id}")
        echo(
            f"  max input tokens {model.max_input_tokens}, max total tokens "
            f"{model.max_total_tokens}, max concurrent requests {model.max_concurrent_requests}"
        )
        ok = ok and healthy
    except LLMError as exc:
        echo(f"Model server: FAILED — {type(exc).__name__}: {exc}")
        ok = False
    finally:
        await llm.close()
    return ok

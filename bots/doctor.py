"""`herald doctor`: what the configuration says, and whether Redis, the model server
and each configured platform answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from adapters.platform import Platform
from adapters.registry import PLATFORMS
from bots.config import Config
from bots.local_model.backend import BuiltInModel, LocalModelError
from bots.runtime import StartupError, build_llm, start_redis
from core.config import Settings
from core.llm.errors import LLMError
from core.social.accounts import NETWORK_NAMES, AccountError
from core.social.clients import Clients, check, installed_credentials
from core.social.network import NetworkError


async def run_doctor(
    config: Config, echo: Callable[[str], None], platforms: Sequence[Platform[Any]] = PLATFORMS
) -> bool:
    """Print one line per check; True when everything needed answered."""
    settings = config.core
    echo("Configuration: valid")
    if settings.llm_backend == "local":
        echo(f"  model: built-in (llama.cpp on this machine's CPU): {settings.local_model}")
    else:
        echo(f"  model API: {settings.llm_backend} at {settings.tgi_url}")
    echo(f"  Redis: {settings.redis_url or 'embedded (private server)'}")
    ok = await _redis(settings, echo)
    ok = await _model(settings, echo) and ok
    ok = await _networks(settings, echo) and ok
    for platform in platforms:
        report = await platform.doctor(config.platforms[platform.name])
        for line in report.lines:
            echo(line)
        ok = ok and report.ok
    return ok


async def _networks(settings: Settings, echo: Callable[[str], None]) -> bool:
    """The install's own social accounts: who each posts as, asked of its network."""
    if settings.secret_key:
        echo("Social accounts of chats: can be connected (HERALD_SECRET_KEY set)")
    else:
        echo("Social accounts of chats: off (no HERALD_SECRET_KEY)")
    clients = Clients(x_api_url=settings.x_api_url)
    ok = True
    for network, credentials in installed_credentials(settings).items():
        name = NETWORK_NAMES[network]
        try:
            identity = await check(clients.client(network, credentials, guarded=False))
        except NetworkError as exc:
            echo(f"{name}: FAILED — {exc.user_message}")
            ok = False
        except AccountError as exc:
            echo(f"{name}: FAILED — {exc}")
            ok = False
        else:
            echo(f"{name}: OK, publishing as {identity.handle}")
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
        shape = ""
        if isinstance(redis, RedisCluster):
            shape = f", a cluster of {len(redis.get_primaries())} primaries"
        echo(f"Redis: OK (server {version}{shape})")
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
    if isinstance(llm, BuiltInModel):
        return await _built_in(llm, echo)
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


async def _built_in(llm: BuiltInModel, echo: Callable[[str], None]) -> bool:
    """The built-in model, loaded and asked once; never downloaded from here."""
    threads, context = llm.process.config.threads, llm.process.config.context
    if llm.file is None:
        echo(f"Model: built-in, not downloaded yet — {llm.source.describe()} is fetched on first use")
        echo(f"  {threads} threads, context {context} tokens")
        await llm.close()
        return True
    try:
        model = await llm.start()
        healthy = await llm.health()
        echo(f"Model: {'OK' if healthy else 'UNHEALTHY'} — built-in llama.cpp, {model.model_id}")
        echo(f"  file {llm.file}")
        echo(f"  {threads} threads, context {context} tokens, one answer at a time")
        return healthy
    except (LocalModelError, LLMError) as exc:
        echo(f"Model: FAILED — built-in {llm.source.describe()}: {exc}")
        return False
    finally:
        await llm.close()

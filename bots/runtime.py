"""Wiring: settings → Redis → model client → engine, started and stopped as one.

Every `herald` command (and the end-to-end tests) builds its engine here, so
there is one way to assemble Herald.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs
from redis.exceptions import RedisError

from adapters.platform import BotDeps
from bots.event_loop import watch_loop_lag
from bots.local_model.backend import BuiltInModel, LocalModelError
from bots.local_model.process import ModelProcessConfig, default_threads
from bots.redis_server import RedisServerError, RedisServerProcess
from core.chat.access import AccessPolicy
from core.chat.admission import Admitter, Limits
from core.chat.cancel import CancelBus
from core.chat.context import ContextBuilder
from core.chat.engine import Engine, EnginePolicy
from core.chat.locks import ConversationLocks
from core.chat.memory import ConversationStore
from core.chatlog.backfill import Backfills
from core.chatlog.store import ChatLog
from core.chatlog.summary import Summariser
from core.chatlog.terms import Terms
from core.commands.accounts import AccountCommands
from core.commands.chat import ChatCommands
from core.commands.drafts import DraftCommands
from core.commands.herald import herald_commands
from core.commands.history import HistoryCommands
from core.commands.registry import CommandRegistry
from core.commands.schedule import ScheduleCommands
from core.commands.search import SearchCommands
from core.commands.summary import SummaryCommands
from core.commands.web import WebCommands, WebTools
from core.config import Settings
from core.intake.stream import IntakeStream
from core.intake.worker import Intake
from core.llm import TransportOptions, create_llm_client
from core.llm.base import GenerationParams, LLMClient
from core.llm.errors import LLMError
from core.llm.metered import MeteredLLM
from core.llm.model_source import parse_model_source
from core.metrics import Metrics
from core.posts.campaigns import PLAN_TOKENS, Planner
from core.posts.drafting import Drafter
from core.posts.saved import SavedContent
from core.posts.schedules.actions import PostActions
from core.posts.schedules.leader import LeaderLease
from core.posts.schedules.runner import Publisher, Runner, SchedulerService
from core.posts.schedules.social import SocialPublishing
from core.posts.schedules.store import ScheduleStore
from core.search.pages import PageFetcher
from core.search.searxng import SearxngClient
from core.social.accounts import AccountStore, secret_box
from core.social.clients import Clients, identify_installed, installed_credentials
from core.social.delivery import DeliveryStore
from core.storage.keys import Keys
from core.storage.migrate import migrate
from core.storage.redis_client import RedisClient, connect_redis


class StartupError(Exception):
    """A dependency is missing at start; the message says which and how to fix it."""


@dataclass(slots=True)
class Runtime:
    settings: Settings
    redis: RedisClient
    llm: LLMClient
    engine: Engine
    scheduling: Scheduling
    redis_server: RedisServerProcess | None
    metrics: Metrics
    intake: Intake

    def bot_deps(self) -> BotDeps:
        """What the platforms' bots are built from."""
        return BotDeps(
            self.engine,
            self.redis,
            Keys(self.settings.redis_prefix),
            self.scheduling.actions,
            self.intake,
            receives=self.settings.role != "worker",
        )


def default_data_dir(settings: Settings) -> Path:
    return settings.data_dir or Path(platformdirs.user_data_dir("herald", appauthor=False))


def generation_params(settings: Settings) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
    )


def build_llm(settings: Settings) -> LLMClient:
    options = TransportOptions(
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        connect_timeout=settings.llm_connect_timeout,
        idle_timeout=settings.llm_idle_timeout,
        queue_timeout=settings.llm_queue_timeout,
    )
    api = settings.llm_backend
    if api == "local" or settings.tgi_url is None:
        return build_local_model(settings, options)
    backend: dict[str, object] = {}
    if api == "openai":
        backend["model"] = settings.llm_model
        backend["max_input_tokens"] = settings.llm_max_input_tokens
        backend["max_concurrency"] = settings.llm_max_concurrency or 16
    else:
        backend["max_concurrency"] = settings.llm_max_concurrency
    return create_llm_client(api, settings.tgi_url, options, **backend)


def build_web(settings: Settings) -> WebTools | None:
    """/web's search engine and page reader, where HERALD_SEARXNG_URL names an instance."""
    if settings.searxng_url is None:
        return None
    return WebTools(SearxngClient(settings.searxng_url), PageFetcher())


async def close_web(web: WebTools) -> None:
    for part in (web.searcher, web.fetcher):
        if isinstance(part, SearxngClient | PageFetcher):
            await part.close()


def build_local_model(settings: Settings, options: TransportOptions) -> BuiltInModel:
    """The built-in model: llama.cpp in a child process (`bots.local_model`)."""
    process = ModelProcessConfig(
        context=settings.local_context,
        threads=settings.local_threads or default_threads(),
        load_timeout=settings.local_load_timeout,
    )
    return BuiltInModel(parse_model_source(settings.local_model), process, options=options)


@dataclass(slots=True)
class Scheduling:
    """Scheduled posts: definitions, the runner, approvals and the leader's scheduler.

    `publishers` is filled by the platform bots as they start (one per platform).
    """

    store: ScheduleStore
    runner: Runner
    actions: PostActions
    service: SchedulerService
    publishers: dict[str, Publisher]
    saved: SavedContent
    #: the social accounts chats publish to, and how their clients are made
    accounts: AccountStore
    clients: Clients


def build_scheduling(
    settings: Settings,
    redis: RedisClient,
    llm: LLMClient,
    access: AccessPolicy,
    keys: Keys,
    *,
    clients: Clients | None = None,
) -> Scheduling:
    publishers: dict[str, Publisher] = {}
    store = ScheduleStore(redis, keys)
    lease = LeaderLease(redis, keys)
    box = secret_box(settings.secret_key.get_secret_value()) if settings.secret_key else None
    accounts = AccountStore(redis, keys, box, installed_credentials(settings))
    clients = clients or Clients(x_api_url=settings.x_api_url)
    social = SocialPublishing(accounts, DeliveryStore(redis, keys), clients, owner=lease.owner)
    drafter = Drafter(llm, generation_params(settings))
    runner = Runner(store, drafter, publishers, owner=lease.owner, social=social)
    service = SchedulerService(runner, redis, keys, lease=lease)
    saved = SavedContent(redis, keys)
    actions = PostActions(runner, access)
    return Scheduling(store, runner, actions, service, publishers, saved, accounts, clients)


def build_commands(
    settings: Settings,
    llm: LLMClient,
    scheduling: Scheduling,
    *,
    memory: ConversationStore,
    access: AccessPolicy,
    locks: ConversationLocks,
    cancels: CancelBus,
    context: ContextBuilder,
    chatlog: ChatLog,
    backfills: Backfills | None = None,
    web: WebTools | None = None,
) -> CommandRegistry:
    """Herald's commands, each group given what it works with."""
    generation = generation_params(settings)
    drafter = Drafter(llm, generation)
    planner = Planner(drafter, replace(generation, max_new_tokens=PLAN_TOKENS))
    schedules = ScheduleCommands(
        scheduling.store,
        scheduling.actions,
        scheduling.saved,
        access,
        default_timezone=settings.default_timezone,
        social=scheduling.runner.social,
    )
    return herald_commands(
        ChatCommands(memory, access, locks, cancels, context, llm),
        DraftCommands(drafter, planner, scheduling.saved),
        schedules,
        HistoryCommands(chatlog, access, backfills),
        SearchCommands(chatlog, llm),
        WebCommands(web),
        SummaryCommands(chatlog, Summariser(llm, lambda: context.budget)),
        AccountCommands(scheduling.accounts, scheduling.clients, access),
    )


def build_engine(
    settings: Settings,
    redis: RedisClient,
    llm: LLMClient,
    *,
    scheduling: Scheduling | None = None,
    metrics: Metrics | None = None,
    logger: logging.Logger | None = None,
    web: WebTools | None = None,
) -> Engine:
    keys = Keys(settings.redis_prefix)
    log = logger or logging.getLogger("herald.engine")
    access = AccessPolicy.from_settings(settings)
    scheduling = scheduling or build_scheduling(settings, redis, llm, access, keys)
    memory = ConversationStore(
        redis,
        keys,
        max_messages=settings.history_max_messages,
        ttl_seconds=settings.history_ttl_seconds,
        block_messages=settings.context_block_messages,
    )
    # a dead replica's hold on a conversation ends as soon as its hold on the event it
    # answered: whoever takes the event over then finds the conversation free
    locks = ConversationLocks(redis, keys, lease=settings.intake_visibility_seconds, logger=log)
    cancels = CancelBus(redis, keys, logger=log)
    limits = Limits(
        rate_per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
        daily_tokens=settings.daily_token_quota,
    )
    context = ContextBuilder(
        llm,
        max_new_tokens=settings.max_new_tokens,
        margin=settings.context_margin,
        block_messages=settings.context_block_messages,
    )
    chatlog = ChatLog(redis, keys, Terms())
    backfills = Backfills(chatlog, redis, keys)
    return Engine(
        memory=memory,
        admitter=Admitter(redis, keys, limits),
        locks=locks,
        cancels=cancels,
        llm=llm,
        context=context,
        access=access,
        commands=build_commands(
            settings,
            llm,
            scheduling,
            memory=memory,
            access=access,
            locks=locks,
            cancels=cancels,
            context=context,
            chatlog=chatlog,
            backfills=backfills,
            web=web,
        ),
        policy=EnginePolicy(
            system_prompt=settings.system_prompt,
            generation=generation_params(settings),
            conversation_wait=settings.conversation_wait_timeout,
            answer_timeout=settings.answer_timeout,
        ),
        metrics=metrics,
        logger=log,
        chatlog=chatlog,
        backfills=backfills,
    )


def build_intake(settings: Settings, redis: RedisClient, metrics: Metrics | None = None) -> Intake:
    """The intake's streams, as this replica's role uses them: a gateway only puts events
    in; a worker (and `all`) answers them too."""
    consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    stream = IntakeStream(
        redis,
        Keys(settings.redis_prefix),
        consumer=consumer,
        max_length=settings.intake_max_length,
        visibility=settings.intake_visibility_seconds,
    )
    return Intake(
        stream, works=settings.role != "gateway", capacity=settings.intake_capacity, metrics=metrics
    )


#: allocations (less deallocations) between the garbage collector's youngest passes
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Move what start-up allocated out of the garbage collector's way, and collect less often.

    Imports and wiring leave tens of thousands of objects that live as long as
    the process; without the freeze, every full collection walks them all and
    stops the event loop for tens of milliseconds in the middle of answers.
    Python's default first threshold, 700, is tuned for short scripts: with 1,000
    answers streaming (`bench.streaming_discord`) it ran the collector 1,700 times
    in 16 s, 29% of the process's CPU, its full passes stopping the loop for up
    to 190 ms at a time. At 20,000, 1-2% and 30 ms at most; what cyclic garbage
    waits for a pass is bounded by the same count.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def start_redis(settings: Settings) -> tuple[RedisClient, RedisServerProcess | None]:
    """Connect to HERALD_REDIS_URL (a cluster for a `redis+cluster://` URL or with
    HERALD_REDIS_CLUSTER), or start the private embedded server."""
    server: RedisServerProcess | None = None
    url = settings.redis_url
    if url is None:
        if settings.redis_cluster:
            raise StartupError(
                "HERALD_REDIS_CLUSTER=true needs HERALD_REDIS_URL naming a node of the cluster "
                "(the embedded server is a single server)."
            )
        data_dir = default_data_dir(settings) / "redis"
        try:
            server = await asyncio.to_thread(RedisServerProcess(data_dir=data_dir).start)
        except RedisServerError as exc:
            raise StartupError(f"Could not start the embedded Redis server: {exc}") from None
        url = server.url
    try:
        redis = connect_redis(
            url, cluster=settings.redis_cluster, max_connections=settings.redis_max_connections
        )
    except ValueError as exc:
        raise StartupError(f"HERALD_REDIS_URL: {exc}") from None
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        if server is not None:
            server.stop()
        raise StartupError(
            f"Cannot reach Redis at {settings.redis_url} ({exc}). "
            "Check HERALD_REDIS_URL, or unset it to use the embedded server."
        ) from None
    return redis, server


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    redis, server = await start_redis(settings)
    metrics = Metrics()
    llm: LLMClient = MeteredLLM(build_llm(settings), metrics)
    web = build_web(settings)
    engine: Engine | None = None
    lag = asyncio.create_task(watch_loop_lag(metrics.loop_lag.observe), name="loop-lag")
    try:
        await migrate(redis, Keys(settings.redis_prefix))
        try:
            if settings.role != "gateway":  # a gateway only keeps events: it never calls the model
                await llm.start()
        except LocalModelError as exc:
            raise StartupError(str(exc)) from None
        except LLMError as exc:
            raise StartupError(
                f"Cannot use the model server at {settings.tgi_url} ({exc}). "
                "Check HERALD_TGI_URL and HERALD_LLM_API, and that the server is up "
                "(`herald doctor` shows details)."
            ) from None
        keys = Keys(settings.redis_prefix)
        access = AccessPolicy.from_settings(settings)
        scheduling = build_scheduling(settings, redis, llm, access, keys)
        await identify_installed(scheduling.accounts, scheduling.clients)
        engine = build_engine(settings, redis, llm, scheduling=scheduling, metrics=metrics, web=web)
        running = engine
        metrics.bind(
            waiting=lambda: running.locks.waiting,
            generating=lambda: running.generating,
            leader=lambda: float(scheduling.service.leading),
            scheduler_healthy=lambda: float(scheduling.service.healthy),
            schedules_broken=lambda: float(scheduling.service.broken),
        )
        await engine.cancels.start()
        intake = build_intake(settings, redis, metrics)
        settle_heap()
        yield Runtime(settings, redis, llm, engine, scheduling, server, metrics, intake)
    finally:
        lag.cancel()
        if engine is not None:
            await engine.cancels.stop()
        await llm.close()
        if web is not None:
            await close_web(web)
        await redis.aclose()
        if server is not None:
            await asyncio.to_thread(server.stop)

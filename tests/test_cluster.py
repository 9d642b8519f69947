"""Herald on a real three-primary Redis Cluster (`tests.cluster_support`): the engine's
path, admission, locks, cancel, schedules, a chat's move and its log's deletion, and the
intake.

This module's `redis_url` is the cluster's `redis+cluster://` URL, so the suite's
fixtures (`redis`, `make_settings`, `make_engine`) wire everything to the cluster
exactly as `herald` would. Chats are picked so that their keys live on different
primaries. That nothing here fails with CROSSSLOT is the proof that every script and
transaction keeps its keys in one slot; the first test checks the layout itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Iterator

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from bots.redis_server import RedisServerProcess
from bots.runtime import StartupError, start_redis
from core.chat.admission import Admitter, Limits, Verdict
from core.chat.engine import Outcome
from core.chat.locks import ConversationLocks, LockTimeout
from core.chat.memory import Turn
from core.chatlog.store import ChatLog, LoggedMessage
from core.chatlog.terms import Terms
from core.platform import ConversationKey
from core.posts.schedules.leader import LeaderLease
from core.posts.schedules.runner import SchedulerService
from core.posts.schedules.store import PostState, ScheduleStore
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient, connect_redis
from tests.cluster_support import LocalCluster
from tests.conftest import EngineFactory, SettingsFactory
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event, eventually, leases_renewed
from tests.test_scheduler import RecordingPublisher, make_runner, schedule


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """One cluster for the module (forming one takes a few seconds)."""
    with LocalCluster(primaries=3) as cluster:
        yield cluster.url


async def cluster(redis: RedisClient) -> RedisCluster:
    assert isinstance(redis, RedisCluster)
    await redis.initialize()  # the slot map, read once
    return redis


async def spread(redis: RedisClient, prefix: str, count: int = 3) -> list[str]:
    """Chat ids whose conversations live on `count` different primaries."""
    client = await cluster(redis)
    found: dict[str, str] = {}
    for i in itertools.count():
        chat = f"chat{i}"
        node = client.get_node_from_key(Keys(prefix).history(ConversationKey("test", chat, None)))
        found.setdefault(node.name, chat)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("unreachable")


async def ask(engine: object, text: str, **kw: object) -> tuple[Outcome, RecordingSurface]:
    surface = RecordingSurface()
    outcome = await engine.handle(event(text, **kw), surface)  # type: ignore[attr-defined]
    return outcome, surface


def test_keys_used_together_share_a_slot() -> None:
    keys = Keys("herald")
    conv = ConversationKey("telegram", "-100123", "7")
    chat = [
        keys.history(conv),
        keys.history_seq(conv),
        keys.lock(conv),
        keys.history(ConversationKey("telegram", "-100123", None)),
        keys.persona("telegram", "-100123"),
        *(
            keys.chat_log("telegram", "-100123", *parts)
            for parts in (
                ("cfg",),
                ("seq",),
                ("m", 7),
                ("time",),
                ("ids", 20400),
                ("p", 20400),
                ("backfill",),
                ("backfill-lease",),
            )
        ),
    ]
    assert len({key_slot(key.encode()) for key in chat}) == 1
    person = [
        keys.event("telegram", "update-9", user_id="42"),
        keys.bucket("telegram", "42"),
        keys.quota("telegram", "42") + ":20400",  # the day's counter the scripts build
    ]
    assert len({key_slot(key.encode()) for key in person}) == 1
    # and different chats, people, spread over the slots
    chats = {key_slot(keys.history(ConversationKey("telegram", str(i), None)).encode()) for i in range(100)}
    people = {key_slot(keys.bucket("telegram", str(i)).encode()) for i in range(100)}
    assert len(chats) > 90 and len(people) > 90


async def test_the_client_is_a_cluster_client(
    redis: RedisClient, redis_url: str, make_settings: SettingsFactory
) -> None:
    assert len((await cluster(redis)).get_primaries()) == 3
    plain = redis_url.replace("redis+cluster://", "redis://")
    flagged, server = await start_redis(make_settings(redis_url=plain, redis_cluster=True))
    try:
        assert server is None and isinstance(flagged, RedisCluster) and await flagged.ping()
    finally:
        await flagged.aclose()
    no_cluster = pytest.raises(StartupError, match="Cluster mode is not enabled")
    with RedisServerProcess() as single, no_cluster:  # the flag set for a server that is none
        await start_redis(make_settings(redis_url=single.url, redis_cluster=True))


async def test_the_engine_answers_and_remembers(
    make_engine: EngineFactory, redis: RedisClient, prefix: str
) -> None:
    engine = await make_engine()
    chats = await spread(redis, prefix)
    for name, chat in zip(("Ada", "Bo", "Cy"), chats, strict=True):
        outcome, first = await ask(engine, f"Hello, my name is {name}", chat=chat)
        assert outcome is Outcome.ANSWERED and first.last == f"You said: Hello, my name is {name}"
    for name, chat in zip(("Ada", "Bo", "Cy"), chats, strict=True):
        _, second = await ask(engine, "What is my name?", chat=chat)
        assert second.last == f"Your name is {name}."
        history = await engine.memory.history(ConversationKey("test", chat, None))
        assert [t.role for t in history] == ["user", "assistant"] * 2
    _, persona = await ask(engine, "/persona set pirate", chat=chats[0])
    assert persona.last == "Persona set for this chat."
    assert await engine.memory.persona("test", chats[0]) is not None
    _, reset = await ask(engine, "/reset", chat=chats[0])
    assert reset.last == "Done — I've forgotten this conversation."
    assert await engine.memory.history(ConversationKey("test", chats[0], None)) == []


async def test_two_engines_serialise_one_conversation(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    first, second = await make_engine(), await make_engine()
    tgi.token_delay = 0.01
    await asyncio.gather(
        first.handle(event("my name is Di"), RecordingSurface()),
        second.handle(event("my name is Di, really"), RecordingSurface()),
    )
    assert tgi.max_in_flight == 1
    history = await first.memory.history(ConversationKey("test", "c1", None))
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]


async def test_admission(redis: RedisClient, prefix: str) -> None:
    admitter = Admitter(redis, Keys(prefix), Limits(rate_per_minute=0.001, burst=3, daily_tokens=100))
    first = await admitter.admit("test", "evt-1", "u", limited=True)
    again = await admitter.admit("test", "evt-1", "u", limited=True)
    assert (first.verdict, again.verdict) == (Verdict.ADMITTED, Verdict.DUPLICATE)
    burst = await asyncio.gather(*(admitter.admit("test", f"e{i}", "u", limited=True) for i in range(20)))
    assert sum(a.verdict is Verdict.ADMITTED for a in burst) == 2  # the burst of 3, one used above
    assert {a.verdict for a in burst} == {Verdict.ADMITTED, Verdict.RATE_LIMITED}
    assert await admitter.charge("test", "v", 120) == 120
    over = await admitter.admit("test", "e-v", "v", limited=True)
    assert over.verdict is Verdict.OVER_QUOTA and 0 < over.retry_after <= 86400
    assert (await admitter.admit("test", "e-w", "w", limited=True)).verdict is Verdict.ADMITTED


async def test_a_lock_excludes_a_second_holder(redis: RedisClient, redis_url: str, prefix: str) -> None:
    other = connect_redis(redis_url)
    try:
        conv = ConversationKey("test", (await spread(redis, prefix, 2))[1], None)
        replicas = [ConversationLocks(redis, Keys(prefix), lease=3.0), ConversationLocks(other, Keys(prefix))]
        async with replicas[0].hold(conv, wait=1):
            key = Keys(prefix).lock(conv)
            last = [await redis.pttl(key)]

            async def renewed() -> bool:
                """Its time to live went up between two looks: set again, on its shard."""
                now = await redis.pttl(key)
                went_up, last[0] = now > last[0], now
                return went_up

            await eventually(renewed, "the lease renewed")
            with pytest.raises(LockTimeout):
                async with replicas[1].hold(conv, wait=0.2):
                    pass
        assert not await replicas[1].is_held(conv)
        inside, most = 0, 0

        async def work(i: int) -> None:
            nonlocal inside, most
            async with replicas[i % 2].hold(conv, wait=10):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.005)
                inside -= 1

        await asyncio.gather(*(work(i) for i in range(10)))
        assert most == 1
    finally:
        await other.aclose()


async def test_leases_on_every_primary_are_renewed_together(redis: RedisClient, prefix: str) -> None:
    """One renewer holds leases on three primaries: a script call per slot, none CROSSSLOT."""
    convs = [ConversationKey("test", chat, None) for chat in await spread(redis, prefix, 3)]
    keys = [Keys(prefix).lock(conv) for conv in convs]
    locks = ConversationLocks(redis, Keys(prefix), lease=1.5)
    async with locks.hold(convs[0], wait=1), locks.hold(convs[1], wait=1), locks.hold(convs[2], wait=1):
        await leases_renewed(redis, keys, "the lease on each primary renewed")
    assert not any([await redis.exists(key) for key in keys])


async def test_cancel_from_another_engine(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    """/cancel reaches the engine generating the answer through the cluster's pub/sub."""
    engine, other = await make_engine(), await make_engine()
    tgi.responder = lambda messages: " ".join(f"w{i}" for i in range(200))
    tgi.token_delay = 0.02
    surface = RecordingSurface()
    answering = asyncio.create_task(engine.handle(event("talk a lot"), surface))

    async def shown() -> bool:
        return bool(surface.texts)

    await eventually(shown, "the answer's first words")
    outcome, told = await ask(other, "/cancel")
    assert outcome is Outcome.COMMAND and told.last == "Stopping the current answer."
    assert await answering is Outcome.STOPPED
    assert surface.last.endswith("⏹️ Stopped.")
    history = await engine.memory.history(ConversationKey("test", "c1", None))
    assert history[-1].partial and len(history[-1].content.split()) < 200


async def test_two_replicas_publish_each_slot_once(
    make_engine: EngineFactory, redis: RedisClient, redis_url: str, prefix: str, tgi: TGIEmulator
) -> None:
    """Two scheduler services, one per client: the leader learns of a schedule saved
    after it was elected only from the change channel, and each slot is posted once."""
    tgi.responder = lambda m: m[-1]["content"]
    engine = await make_engine()
    publisher = RecordingPublisher()
    origin = dt.datetime.now(dt.UTC).replace(microsecond=0)
    now = origin
    other = connect_redis(redis_url)
    services = []
    for client, owner in ((redis, "a"), (other, "b")):
        runner = await make_runner(engine, client, prefix, publisher, owner)
        services.append(
            SchedulerService(
                runner,
                client,
                Keys(prefix),
                lease=LeaderLease(client, Keys(prefix), ttl=2.0, poll=0.05),
                trigger_for=lambda d: IntervalTrigger(seconds=1, start_date=origin),
                clock=lambda: now,
            )
        )
    store = ScheduleStore(redis, Keys(prefix))

    async def leading() -> bool:
        return any(service.leading for service in services)

    async def published(count: int) -> bool:
        return len(publisher.published) >= count

    try:
        for service in services:
            await service.start()
        await eventually(leading, "a service leads")
        await store.save(schedule(prompt="slot {date}", recurrence="every second (test)"))
        await eventually(lambda: published(1), "the first slot is published")
        now += dt.timedelta(seconds=1)
        await eventually(lambda: published(2), "the next slot is published")
    finally:
        for service in services:
            await service.stop()
        await other.aclose()
    posts = await store.posts_of("s1")
    assert [p.state for p in posts] == [PostState.PUBLISHED] * 2
    assert len({p.slot for p in posts}) == 2 and len(publisher.published) == 2
    assert await store.delete("s1") and not await store.delete("s1")


async def test_moving_a_chat_to_another_slot(
    redis: RedisClient, prefix: str, make_engine: EngineFactory
) -> None:
    engine = await make_engine()
    old, new = await spread(redis, prefix, 2)  # on two different primaries
    main, topic = ConversationKey("test", old, None), ConversationKey("test", old, "7")
    await engine.memory.append(main, [Turn("user", "main", 1)])
    await engine.memory.append(topic, [Turn("user", "topic", 1)])
    await engine.memory.set_persona("test", old, "pirate")
    assert await engine.memory.move_chat("test", old, new) == 5  # 2 histories, 2 counters, persona
    assert [t.content for t in await engine.memory.history(ConversationKey("test", new, None))] == ["main"]
    assert [t.content for t in await engine.memory.history(ConversationKey("test", new, "7"))] == ["topic"]
    assert await redis.pttl(Keys(prefix).history(ConversationKey("test", new, "7"))) > 0  # expiry kept
    assert await engine.memory.history(main) == [] and await engine.memory.persona("test", new) == "pirate"
    assert await engine.memory.move_chat("test", old, new) == 0


async def test_a_chat_log_is_changed_and_turned_off_on_every_primary(redis: RedisClient, prefix: str) -> None:
    log = ChatLog(redis, Keys(prefix), Terms())
    chats = await spread(redis, prefix, 2)
    now = time.time()
    for chat in chats:
        await log.turn_on("test", chat, retention=86400)
        for i in range(3):
            message = LoggedMessage(f"m{i}", "u1", "User", f"release notes number {i}", now)
            assert await log.record("test", chat, message) == i + 1
    assert await log.edit("test", chats[0], "m2", now, "the final release notes")  # remove + record
    assert await log.delete("test", chats[0], "m0", now)
    assert [m.text for m in await log.messages("test", chats[0], [1, 2, 3, 4])] == [
        "release notes number 1",
        "the final release notes",
    ]
    last = await log.last_from("test", chats[0], "u1")
    assert last is not None and last.text == "the final release notes"

    async def keys_of(chat: str) -> list[str]:
        pattern = Keys(prefix).chat_log_pattern("test", chat)
        return [key async for key in redis.scan_iter(match=pattern)]

    recorded = len(await keys_of(chats[0]))
    assert recorded >= 6  # its settings, counter, timeline, day's ids and index, messages
    assert await log.turn_off("test", chats[0]) == recorded
    assert await keys_of(chats[0]) == []
    assert len(await keys_of(chats[1])) >= 6  # the other chat, elsewhere, is untouched


# -- the intake -------------------------------------------------------------------------
# Its own tests, run again here on the cluster (pytest collects the tests a module
# imports, with the fixtures they need): the streams, the takeover of an unrenewed event,
# and an answer finished by another replica, its turn saved once beside the history.
from tests.test_intake import (  # noqa: E402
    intakes,
    keys,
    make_stream,
    test_a_command_taken_over_is_not_done_twice,
    test_a_gateway_keeps_what_a_worker_answers,
    test_a_job_left_unfinished_is_answered_again_in_the_messages_it_sent,
    test_an_answer_cut_off_by_a_dead_replica_is_finished_once_in_the_same_message,
    test_an_event_is_kept_once_and_taken_by_one_consumer,
    test_an_unreadable_entry_is_finished_without_stopping_the_others,
    test_an_unrenewed_event_is_taken_over_and_the_first_holder_learns_it,
    test_consumers_that_left_holding_nothing_are_forgotten,
    test_the_receiving_replica_takes_its_event_in_the_same_step,
)
from tests.test_migrate import test_conversations_and_personas_move_to_the_tagged_layout  # noqa: E402

__all__ = [
    "intakes",
    "keys",
    "make_stream",
    "test_a_command_taken_over_is_not_done_twice",
    "test_a_gateway_keeps_what_a_worker_answers",
    "test_a_job_left_unfinished_is_answered_again_in_the_messages_it_sent",
    "test_an_answer_cut_off_by_a_dead_replica_is_finished_once_in_the_same_message",
    "test_an_event_is_kept_once_and_taken_by_one_consumer",
    "test_an_unreadable_entry_is_finished_without_stopping_the_others",
    "test_an_unrenewed_event_is_taken_over_and_the_first_holder_learns_it",
    "test_consumers_that_left_holding_nothing_are_forgotten",
    "test_conversations_and_personas_move_to_the_tagged_layout",
    "test_the_receiving_replica_takes_its_event_in_the_same_step",
]


def test_an_intake_stream_and_its_records_share_a_slot() -> None:
    layout = Keys("herald")
    stream = [
        layout.intake_stream("discord"),
        layout.intake_seen("discord", "1"),
        layout.intake_job("discord", "1-0"),
    ]
    assert len({key_slot(k.encode()) for k in stream}) == 1
    conv = ConversationKey("discord", "42", None)
    assert key_slot(layout.turn_saved(conv, "1").encode()) == key_slot(layout.history(conv).encode())

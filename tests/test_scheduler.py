"""Scheduled posts: exactly one post per slot across replicas and leader changes, the
post lifecycle, publishing outcomes. Time is injected wherever it can be."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from redis.asyncio import Redis

from core.platform import Button
from core.posts.drafting import Draft, Drafter, DraftRequest
from core.posts.schedules.approval import approval_buttons
from core.posts.schedules.leader import LeaderLease
from core.posts.schedules.runner import (
    PublishFailed,
    PublishUnknown,
    Runner,
    SchedulerService,
    last_fire,
)
from core.posts.schedules.store import InvalidTransition, Mode, Post, PostState, Schedule, ScheduleStore
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.conftest import EngineFactory
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually

START = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)


@dataclass
class RecordingPublisher:
    """Our `Publisher` protocol, recording; platform publishers are tested with the emulators."""

    published: list[tuple[str, str]] = field(default_factory=list)
    approvals: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)

    async def publish(self, chat_id: str, thread_id: str | None, text: str) -> str:
        if self.failures:
            raise self.failures.pop(0)
        self.published.append((chat_id, text))
        return f"m{len(self.published)}"

    async def request_approval(self, chat_id: str, text: str, buttons: Sequence[Button]) -> None:
        post_id = buttons[0].command.split()[-1]
        assert tuple(buttons) == approval_buttons(post_id) and f"`{post_id}`" in text
        self.approvals.append(post_id)

    async def notify(self, chat_id: str, text: str) -> None:
        self.notices.append(text)


def schedule(**changes: Any) -> Schedule:
    values: dict[str, Any] = {
        "id": "s1",
        "platform": "test",
        "chat_id": "channel",
        "prompt": "Post about our release notes for {date}",
        "target": "x",
        "recurrence": "every day at 09:00",
        "timezone": "UTC",
        "created_by": "u1",
        "mode": Mode.AUTO,
    }
    values.update(changes)
    return Schedule(**values)


class HeldDrafter(Drafter):
    """Drafts only once `go` is set: a run stays in the middle of drafting for as long as
    the test needs, however fast or slow the machine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = asyncio.Event()
        self.waiting = 0

    async def draft(self, request: DraftRequest) -> list[Draft]:
        self.waiting += 1
        try:
            await self.go.wait()
        finally:
            self.waiting -= 1
        return await super().draft(request)


async def make_runner(
    engine: Any,
    redis: Redis,
    prefix: str,
    publisher: RecordingPublisher,
    owner: str,
    *,
    drafter: Drafter | None = None,
) -> Runner:
    drafter = drafter or Drafter(engine.llm, engine.policy.generation)
    return Runner(
        ScheduleStore(redis, Keys(prefix)),
        drafter,
        {"test": publisher},
        owner=owner,
        retry_delays=(0.05, 0.05),
    )


async def test_two_replicas_publish_each_slot_exactly_once(
    make_engine: EngineFactory, redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: m[-1]["content"]  # the post names its date
    engine = await make_engine()
    publisher = RecordingPublisher()
    other_redis = connect_redis(redis_url)
    try:
        a = await make_runner(engine, redis, prefix, publisher, "a")
        b = await make_runner(engine, other_redis, prefix, publisher, "b")
        definition = schedule()
        slots = [START + dt.timedelta(days=i) for i in range(40)]
        await asyncio.gather(*(r.run_slot(definition, s) for s in slots for r in (a, b, a)))
    finally:
        await other_redis.aclose()
    texts = sorted(text for _, text in publisher.published)
    assert len(texts) == 40 and len(set(texts)) == 40
    posts = await a.store.posts_of("s1")
    assert [p.state for p in posts] == [PostState.PUBLISHED] * 40
    assert posts[0].history == ("draft", "scheduled", "publishing", "published")


async def test_two_approvals_at_once_publish_once(
    make_engine: EngineFactory, redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator
) -> None:
    """Two managers (or one double click, on two replicas) approve the same post together."""
    tgi.responder = lambda m: "Release notes are out! #herald"
    engine = await make_engine()
    publisher = RecordingPublisher()
    first = await make_runner(engine, redis, prefix, publisher, "a")
    other = connect_redis(redis_url)
    try:
        second = await make_runner(engine, other, prefix, publisher, "b")
        await first.store.save(schedule(mode=Mode.APPROVE))
        for day in range(5):
            post = await first.run_slot(schedule(mode=Mode.APPROVE), START + dt.timedelta(days=day))
            assert post is not None
            results = await asyncio.gather(
                first.approve(post.id), second.approve(post.id), return_exceptions=True
            )
            assert sorted(type(r).__name__ for r in results) == ["InvalidTransition", "Post"]
        assert len(publisher.published) == 5  # each post once
    finally:
        await other.aclose()


def held(engine: Any) -> HeldDrafter:
    return HeldDrafter(engine.llm, engine.policy.generation)


async def claimed_mid_draft(
    runner: Runner, drafter: HeldDrafter, slot: dt.datetime
) -> asyncio.Task[Post | None]:
    """Start a run and return once it has claimed its slot and is drafting; the runner's
    `drafter` keeps it there until its `go` is set."""
    run = asyncio.create_task(runner.run_slot(schedule(), slot))

    async def drafting() -> bool:
        return drafter.waiting == 1 and bool(await runner.store.unwritten())

    await eventually(drafting, "the run claimed its slot and is drafting")
    return run


async def test_a_draft_left_by_a_dead_leader_is_finished_once(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: "Release notes are out! #herald"
    engine = await make_engine()
    publisher = RecordingPublisher()
    dead = await make_runner(engine, redis, prefix, publisher, "a", drafter=(drafter := held(engine)))
    await dead.store.save(schedule())
    run = await claimed_mid_draft(dead, drafter, START)  # the leader dies in the middle of drafting
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    heir = await make_runner(engine, redis, prefix, publisher, "b")
    [finished] = await heir.resume(since=START - dt.timedelta(minutes=5))
    assert finished.state is PostState.PUBLISHED
    assert finished.history == ("draft", "draft", "scheduled", "publishing", "published")
    assert publisher.published == [("channel", "Release notes are out! #herald")]
    assert await heir.resume(since=START - dt.timedelta(minutes=5)) == []
    assert await heir.run_slot(schedule(), START) is None  # the slot stays claimed


async def test_a_leader_that_was_only_slow_loses_its_draft(
    make_engine: EngineFactory, redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: "Release notes are out! #herald"
    engine = await make_engine()
    publisher = RecordingPublisher()
    slow = await make_runner(engine, redis, prefix, publisher, "a", drafter=(drafter := held(engine)))
    await slow.store.save(schedule())
    other = connect_redis(redis_url)
    try:
        heir = await make_runner(engine, other, prefix, publisher, "b")
        run = await claimed_mid_draft(slow, drafter, START)
        resumed = await heir.resume(since=START - dt.timedelta(minutes=5))
        drafter.go.set()  # the slow leader finishes its draft only now
        assert await run is None  # its draft lost the race: taken over
    finally:
        await other.aclose()
    assert [p.state for p in resumed] == [PostState.PUBLISHED]
    assert len(publisher.published) == 1


async def test_a_failed_send_is_retried_by_the_next_leader(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: "Release notes are out! #herald"
    engine = await make_engine()
    publisher = RecordingPublisher(failures=[PublishFailed("Discord refused: 503")])
    dead = await make_runner(engine, redis, prefix, publisher, "a")
    await dead.store.save(schedule())
    post = await dead.run_slot(schedule(), START)
    assert post is not None and post.state is PostState.FAILED
    await dead.close()  # it dies with its retry pending
    heir = await make_runner(engine, redis, prefix, publisher, "b")
    assert await heir.resume(since=START) == []

    async def republished() -> bool:
        current = await heir.store.post(post.id)
        return current is not None and current.state is PostState.PUBLISHED

    await eventually(republished, "the failed send was retried")
    current = await heir.store.post(post.id)
    assert current is not None and current.state is PostState.PUBLISHED and current.attempts == 2
    assert publisher.published == [("channel", "Release notes are out! #herald")]
    await heir.close()


async def test_drafts_left_too_long_ago_are_cancelled(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    engine = await make_engine()
    publisher = RecordingPublisher()
    dead = await make_runner(engine, redis, prefix, publisher, "a", drafter=(drafter := held(engine)))
    await dead.store.save(schedule())
    run = await claimed_mid_draft(dead, drafter, START)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    heir = await make_runner(engine, redis, prefix, publisher, "b")
    assert await heir.resume(since=START + dt.timedelta(hours=1)) == []  # like a missed run
    [post] = await heir.store.posts_of("s1")
    assert post.state is PostState.CANCELLED and post.reason == "its leader stopped; too late now"
    assert publisher.published == []


async def test_approval_flow_and_the_lifecycle_rules(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: "Release notes are out! #herald"
    runner = await make_runner(await make_engine(), redis, prefix, publisher := RecordingPublisher(), "a")
    await runner.store.save(schedule(mode=Mode.APPROVE))
    post = await runner.run_slot(schedule(mode=Mode.APPROVE), START)
    assert post is not None and post.state is PostState.PENDING_APPROVAL
    assert publisher.approvals == [post.id] and publisher.published == []
    rejected = await runner.reject(post.id, "too salesy")
    assert rejected.state is PostState.DRAFT and rejected.reason == "too salesy"

    second = await runner.run_slot(schedule(mode=Mode.APPROVE), START + dt.timedelta(days=1))
    assert second is not None
    published = await runner.approve(second.id, text="Release notes, edited. #herald")
    assert published.state is PostState.PUBLISHED and published.message_id == "m1"
    assert publisher.published == [("channel", "Release notes, edited. #herald")]
    with pytest.raises(InvalidTransition):
        await runner.approve(second.id)  # published once, never again
    await runner.store.delete("s1")
    third = await runner.run_slot(schedule(mode=Mode.APPROVE), START + dt.timedelta(days=2))
    assert third is not None
    cancelled = await runner.approve(third.id)
    assert cancelled.state is PostState.CANCELLED and cancelled.reason == "schedule deleted"


async def test_failed_sends_are_retried_and_unknown_ones_never(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    tgi.responder = lambda m: "Release notes are out!"
    publisher = RecordingPublisher(failures=[PublishFailed("503 from the platform")])
    runner = await make_runner(await make_engine(), redis, prefix, publisher, "a")
    post = await runner.run_slot(schedule(), START)
    assert post is not None and post.state is PostState.FAILED

    async def retried() -> bool:
        return (await runner.store.post(post.id)).state is PostState.PUBLISHED  # type: ignore[union-attr]

    await eventually(retried, "the failed send was retried")
    assert len(publisher.published) == 1

    publisher.failures = [PublishUnknown("timed out after sending")]
    unknown = await runner.run_slot(schedule(), START + dt.timedelta(days=1))
    assert unknown is not None and unknown.state is PostState.UNCONFIRMED
    await asyncio.sleep(0.2)  # four retry delays: no retry comes (can catch a wrong one, never cry wolf)
    assert (await runner.store.post(unknown.id)).state is PostState.UNCONFIRMED  # type: ignore[union-attr]
    assert any("may or may not have been published" in n for n in publisher.notices)
    await runner.close()


async def test_paused_ended_and_counted_schedules(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    runner = await make_runner(await make_engine(), redis, prefix, publisher := RecordingPublisher(), "a")
    assert await runner.run_slot(schedule(paused=True), START) is None
    assert await runner.run_slot(schedule(end_date="2026-11-26"), START) is None
    limited = schedule(id="s2", max_runs=2)
    for day in range(4):
        await runner.run_slot(limited, START + dt.timedelta(days=day))
    assert len(publisher.published) == 2


def test_the_slot_of_a_late_job_is_its_latest_fire_time() -> None:
    trigger = IntervalTrigger(hours=1, start_date=START)
    grace = dt.timedelta(minutes=5)
    assert last_fire(trigger, START + dt.timedelta(hours=2, minutes=3), grace) == START + dt.timedelta(
        hours=2
    )
    assert last_fire(trigger, START + dt.timedelta(hours=2, minutes=6), grace) is None  # too late: skipped


async def test_killing_the_leader_hands_over_without_duplicates_or_gaps(
    make_engine: EngineFactory, redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator
) -> None:
    """Two scheduler services on one Redis, a schedule every second, the leader stopped.

    The services tell the time by the test's clock, which moves on one slot at a time once
    the previous slot is published: how slowly a busy machine runs changes nothing. (APScheduler
    still fires every wall-clock second; each fire runs the clock's latest slot.)"""
    tgi.responder = lambda m: m[-1]["content"]
    engine = await make_engine()
    publisher = RecordingPublisher()
    origin = dt.datetime.now(dt.UTC).replace(microsecond=0)
    now = origin

    def every_second(definition: Schedule) -> IntervalTrigger:
        return IntervalTrigger(seconds=1, start_date=origin)

    store = ScheduleStore(redis, Keys(prefix))
    await store.save(schedule(prompt="slot {date}", recurrence="every second (test)"))
    other_redis = connect_redis(redis_url)
    services = []
    for client, owner in ((redis, "a"), (other_redis, "b")):
        runner = await make_runner(engine, client, prefix, publisher, owner)
        lease = LeaderLease(client, Keys(prefix), ttl=2.0, poll=0.05)
        services.append(
            SchedulerService(
                runner, client, Keys(prefix), lease=lease, trigger_for=every_second, clock=lambda: now
            )
        )
    first, second = services

    async def published(count: int) -> None:
        async def done() -> bool:
            posts = await store.posts_of("s1")
            return sum(p.state is PostState.PUBLISHED for p in posts) >= count

        await eventually(done, f"{count} posts published")

    async def leads(service: SchedulerService) -> bool:
        return service.leading

    try:
        await first.start()
        await eventually(lambda: leads(first), "the first service leads")
        await published(1)  # the slot it caught up with as it took the lead
        await second.start()
        for count in (2, 3, 4):  # the leader's own fires, lasting longer than a lease
            now += dt.timedelta(seconds=1)
            await published(count)
        assert first.leading and not second.leading
        now += dt.timedelta(seconds=1)  # a slot falls due as the leader goes away
        await first.stop()
        await eventually(lambda: leads(second), "the second service leads")
        await published(5)  # the new leader catches up with it
        now += dt.timedelta(seconds=1)
        await published(6)  # and carries on
    finally:
        await first.stop()
        await second.stop()
        await other_redis.aclose()
    posts = await store.posts_of("s1")
    slots = [dt.datetime.fromisoformat(p.slot) for p in posts]
    assert len(slots) == len(set(slots)) == 6  # nothing published twice
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert gaps == {1.0}  # and no slot lost over the hand-over
    assert len(publisher.published) == 6


async def test_stopping_lets_a_run_under_way_finish(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    """A graceful stop in the middle of drafting: the claimed slot still gets its post."""
    tgi.responder = lambda m: "Release notes: " + " ".join(f"item{i}" for i in range(20))
    engine = await make_engine()
    publisher = RecordingPublisher()
    origin = dt.datetime.now(dt.UTC).replace(microsecond=0)
    store = ScheduleStore(redis, Keys(prefix))
    await store.save(schedule(prompt="slot {date}"))
    drafter = held(engine)
    runner = await make_runner(engine, redis, prefix, publisher, "a", drafter=drafter)
    service = SchedulerService(
        runner,
        redis,
        Keys(prefix),
        lease=LeaderLease(redis, Keys(prefix), ttl=2.0, poll=0.05),
        trigger_for=lambda d: IntervalTrigger(seconds=1, start_date=origin),
    )
    await service.start()

    async def drafting() -> bool:
        return drafter.waiting >= 1

    await eventually(drafting, "a slot is claimed and its draft is being written")
    assert not publisher.published
    stopping = asyncio.create_task(service.stop())

    async def stepped_down() -> bool:
        return not service.leading

    await eventually(stepped_down, "the stop is under way")
    drafter.go.set()  # the drafts under way finish only now, during the stop
    await stopping
    claimed = f"{prefix}:slot:s1:*"
    slots = [key async for key in redis.scan_iter(match=claimed)]
    posts = await store.posts_of("s1")
    assert len(slots) == len(posts) >= 1 and len(publisher.published) == len(posts)
    assert not await redis.exists(Keys(prefix).scheduler_lease())  # and the lease is free


async def test_stopping_lets_a_fire_under_way_finish(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    """APScheduler cancels the jobs it is running when it shuts down; a fire that claimed
    its slot still gets its post."""
    tgi.responder = lambda m: "Release notes are out! #herald"
    engine = await make_engine()
    publisher = RecordingPublisher()
    origin = dt.datetime.now(dt.UTC).replace(microsecond=0)
    now = origin
    store = ScheduleStore(redis, Keys(prefix))
    await store.save(schedule())
    drafter = held(engine)
    runner = await make_runner(engine, redis, prefix, publisher, "a", drafter=drafter)
    drafter.go.set()
    service = SchedulerService(
        runner,
        redis,
        Keys(prefix),
        lease=LeaderLease(redis, Keys(prefix), ttl=2.0, poll=0.05),
        trigger_for=lambda d: IntervalTrigger(seconds=1, start_date=origin),
        clock=lambda: now,
    )
    await service.start()

    async def published(count: int) -> bool:
        return len(publisher.published) >= count

    await eventually(lambda: published(1), "the slot caught up with at the election is published")
    drafter.go.clear()
    now += dt.timedelta(seconds=1)  # the next fire claims this slot, and drafts until `go`

    async def drafting() -> bool:
        return drafter.waiting == 1

    await eventually(drafting, "a fire claimed the next slot and is drafting")
    stopping = asyncio.create_task(service.stop())

    async def stepped_down() -> bool:
        return not service.leading

    await eventually(stepped_down, "the stop is under way: APScheduler is shut down")
    drafter.go.set()
    await stopping
    posts = await store.posts_of("s1")
    assert [p.state for p in posts] == [PostState.PUBLISHED] * 2 and len(publisher.published) == 2


async def test_the_lease_is_renewed_while_catching_up(
    make_engine: EngineFactory, redis: Redis, redis_url: str, prefix: str, tgi: TGIEmulator
) -> None:
    """Catching up after taking the lead drafts posts, which can take longer than the lease
    lasts: the new leader keeps renewing it meanwhile, so no other replica takes over."""
    tgi.responder = lambda m: "Release notes are out! #herald"
    engine = await make_engine()
    publisher = RecordingPublisher()
    store = ScheduleStore(redis, Keys(prefix))
    await store.save(schedule())
    drafter = held(engine)
    runner = await make_runner(engine, redis, prefix, publisher, "a", drafter=drafter)
    renewals = 0

    class CountingLease(LeaderLease):
        async def renew(self) -> bool:
            nonlocal renewals
            renewed = await super().renew()
            renewals += renewed
            return renewed

    lease = CountingLease(redis, Keys(prefix), ttl=5.0, poll=0.02)
    service = SchedulerService(runner, redis, Keys(prefix), lease=lease, clock=lambda: START)
    await service.start()
    try:

        async def catching_up() -> bool:
            return drafter.waiting == 1  # START's slot, caught up with, is being drafted

        await eventually(catching_up, "the new leader catches up")
        before = renewals

        async def renewed() -> bool:
            return renewals >= before + 3

        await eventually(renewed, "the lease is renewed while the catch-up drafts", timeout=10)
        assert service.leading and drafter.waiting == 1
        drafter.go.set()

        async def published() -> bool:
            return len(publisher.published) == 1

        await eventually(published, "the caught-up slot is published")
    finally:
        drafter.go.set()
        await service.stop()


class SwallowingRedis:
    """redis-py on Python 3.11: `asyncio.wait_for` returns the result instead of raising when
    a cancellation arrives as the awaited send completes. Here every pub/sub poll does that."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.polling = asyncio.Event()
        self.swallow = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pubsub(self, **kwargs: Any) -> Any:
        pubsub = self._redis.pubsub(**kwargs)
        poll = pubsub.get_message

        async def get_message(**kwargs: Any) -> Any:
            self.polling.set()
            try:
                return await poll(**kwargs)
            except asyncio.CancelledError:
                if not self.swallow:
                    raise
                return None

        pubsub.get_message = get_message  # type: ignore[method-assign]
        return pubsub


async def test_a_swallowed_cancellation_still_stops_the_service(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    runner = await make_runner(await make_engine(), redis, prefix, RecordingPublisher(), "a")
    swallowing = SwallowingRedis(redis)
    service = SchedulerService(
        runner,
        swallowing,  # type: ignore[arg-type]
        Keys(prefix),
        lease=LeaderLease(redis, Keys(prefix), ttl=5.0, poll=0.05),
    )
    await service.start()

    async def settled() -> bool:  # leading, its scheduler running, the watcher in its poll
        scheduler = service.scheduler
        return scheduler is not None and scheduler.running and swallowing.polling.is_set()

    await eventually(settled, "the service leads and watches for changes")
    stopping = asyncio.create_task(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=30)  # a bound for a broken stop, not a pace
    swallowing.swallow = False  # from here on, cancelling works: a failed run can still tear down
    assert stopping in done, "stop() never returned: the watcher ignored its cancellation"
    await stopping
    assert not service.leading
    assert not await redis.exists(Keys(prefix).scheduler_lease())


async def test_stopping_while_taking_the_lead(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    """`stop` while the new leader loads its jobs: no error, and no scheduler left running."""
    runner = await make_runner(await make_engine(), redis, prefix, RecordingPublisher(), "a")
    loading = asyncio.Event()

    class SlowStore(ScheduleStore):
        async def all(self) -> list[Schedule]:
            loading.set()
            await asyncio.Event().wait()  # until cancelled
            raise AssertionError("unreachable")

    runner.store = SlowStore(redis, Keys(prefix))
    service = SchedulerService(runner, redis, Keys(prefix), lease=LeaderLease(redis, Keys(prefix)))
    await service.start()
    await asyncio.wait_for(loading.wait(), 30)
    scheduler = service.scheduler
    assert scheduler is not None
    await service.stop()  # before the fix: SchedulerNotRunningError
    assert not service.leading and not scheduler.running


async def test_schedules_survive_a_restart(redis: Redis, redis_url: str, prefix: str) -> None:
    await ScheduleStore(redis, Keys(prefix)).save(schedule(id="keep"))
    fresh = connect_redis(redis_url)  # a new process
    try:
        loaded = await ScheduleStore(fresh, Keys(prefix)).all()
    finally:
        await fresh.aclose()
    assert [s.id for s in loaded] == ["keep"] and loaded[0].mode is Mode.AUTO


def test_interval_schedules_count_from_their_creation() -> None:
    from core.posts.schedules.runner import recurrence_trigger

    created = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
    definition = schedule(recurrence="every 3 days", created_at=created.isoformat())
    after_restart = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    fire = recurrence_trigger(definition).get_next_fire_time(None, after_restart)
    assert fire is not None and (fire - created).total_seconds() % (3 * 86400) == 0


async def test_a_platform_that_is_not_running_leaves_the_slot_unclaimed(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    runner = await make_runner(await make_engine(), redis, prefix, publisher := RecordingPublisher(), "a")
    elsewhere = schedule(platform="discord")
    assert await runner.run_slot(elsewhere, START) is None
    assert await runner.store.claim_slot(elsewhere.id, START, "later")  # still free for a replica that can
    assert publisher.published == []


async def test_a_saved_text_is_published_as_it_was_approved(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    runner = await make_runner(await make_engine(), redis, prefix, publisher := RecordingPublisher(), "a")
    once = schedule(
        id="once", fixed_text="Exactly this text. #herald", recurrence="once at 2026-11-27 09:00", max_runs=1
    )
    post = await runner.run_slot(once, START)
    assert post is not None and post.state is PostState.PUBLISHED
    assert publisher.published == [("channel", "Exactly this text. #herald")]
    assert tgi.prompts == []  # nothing was drafted
    assert await runner.run_slot(once, START + dt.timedelta(days=1)) is None  # max_runs=1

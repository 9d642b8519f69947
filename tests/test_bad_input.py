"""Bad and hostile input (issue 11): refused with a reason that names the problem, nothing
saved on refusal, and one bad stored record never stopping the others."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from redis.asyncio import Redis

from core.chat.engine import Outcome
from core.posts.schedules.leader import LeaderLease
from core.posts.schedules.runner import SchedulerService
from core.posts.schedules.store import PostState, ScheduleStore
from core.storage.keys import Keys
from tests.conftest import EngineFactory
from tests.emulators.tgi import Fault, TGIEmulator
from tests.support import RecordingSurface, event, eventually
from tests.test_scheduler import RecordingPublisher, make_runner, schedule


async def say(engine: object, text: str, expect: Outcome = Outcome.COMMAND) -> str:
    surface = RecordingSurface()
    outcome = await engine.handle(event(text), surface)  # type: ignore[attr-defined]
    assert outcome is expect, surface.texts
    return surface.last


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (
            '/schedule add target=x when="every 99999999999 days" Draft a post',
            "The interval in 'every 99999999999 days' is too long: at most every 3650 days.",
        ),
        (
            '/schedule add when="every 99999999999 hours" a post',
            "The interval in 'every 99999999999 hours' is too long: at most every 87600 hours.",
        ),
        (
            '/schedule add when="every day at 09:00" until=2020-01-01 the digest',
            "until=2020-01-01 is before the first run (",
        ),
        (
            '/schedule add when="once at 1970-01-01 00:00" the digest',
            "'once at 1970-01-01 00:00' is in the past",
        ),
    ],
)
async def test_a_schedule_that_cannot_run_is_refused_and_not_saved(
    make_engine: EngineFactory, redis: Redis, prefix: str, command: str, reason: str
) -> None:
    engine = await make_engine()
    for _ in range(2):  # a retry saves nothing either
        assert (await say(engine, command)).startswith(reason)
    assert await ScheduleStore(redis, Keys(prefix)).count() == 0


async def test_a_saved_draft_at_a_time_in_the_past_is_refused(
    make_engine: EngineFactory, tgi: TGIEmulator, redis: Redis, prefix: str
) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 is out! #herald"
    draft_id = (await say(engine, "/draft x announce v2")).split("`")[1]
    refused = await say(engine, f'/schedule draft {draft_id} at="1970-01-01 00:00"')
    assert refused == "'once at 1970-01-01 00:00' is in the past, so it would never run."
    assert await ScheduleStore(redis, Keys(prefix)).count() == 0


async def test_poisoned_definitions_are_skipped_and_every_other_schedule_publishes(
    make_engine: EngineFactory, redis: Redis, prefix: str, tgi: TGIEmulator
) -> None:
    """Bad data already in Redis (corrupt, from an older version, or impossible to
    schedule) is skipped and counted; the good schedule still publishes."""
    tgi.responder = lambda m: "Weekly digest. #herald"
    keys = Keys(prefix)
    store = ScheduleStore(redis, keys)
    good = schedule(id="good", recurrence="every day at 09:00", created_at="2026-11-01T00:00:00+00:00")
    await store.save(good)
    await redis.hset(keys.schedules(), "garbage", "{not json")
    await redis.hset(keys.schedules(), "older", json.dumps({"id": "older", "renamed_field": 1}))
    impossible = json.loads(schedule(id="overflow").encode()) | {"recurrence": "every 99999999999 days"}
    await redis.hset(keys.schedules(), "overflow", json.dumps(impossible))

    publisher = RecordingPublisher()
    runner = await make_runner(await make_engine(), redis, prefix, publisher, "a")
    now = dt.datetime(2026, 12, 3, 9, 1, tzinfo=dt.UTC)  # one minute after the good one's slot
    service = SchedulerService(
        runner, redis, keys, lease=LeaderLease(redis, keys, ttl=5.0, poll=0.05), clock=lambda: now
    )
    await service.start()
    try:

        async def published() -> bool:
            posts = await store.posts_of("good")
            return any(p.state is PostState.PUBLISHED for p in posts)

        await eventually(published, "the good schedule's post is published")
        assert service.leading and service.healthy and service.broken == 3
        assert [s.id for s in await store.all()] == ["good", "overflow"]  # the readable ones
        scheduler = service.scheduler
        assert scheduler is not None and [job.id for job in scheduler.get_jobs()] == ["good"]
        assert publisher.published == [("channel", "Weekly digest. #herald")]
    finally:
        await service.stop()


async def test_a_scheduler_whose_loop_died_is_not_healthy(
    make_engine: EngineFactory, redis: Redis, prefix: str
) -> None:
    class Broken(LeaderLease):
        async def try_acquire(self) -> bool:
            raise RuntimeError("a bug")

    runner = await make_runner(await make_engine(), redis, prefix, RecordingPublisher(), "a")
    service = SchedulerService(runner, redis, Keys(prefix), lease=Broken(redis, Keys(prefix), poll=0.05))
    assert not service.healthy  # not started
    await service.start()

    async def died() -> bool:
        return not service.healthy

    await eventually(died, "the scheduler reports that it stopped working")
    await service.stop()


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ('/schedule add when="every day at 09:00" when="every day at 10:00" digest', "when= is given twice"),
        ("/draft x target=linkedin hello", ""),  # a positional argument, not an option: allowed
        ("/schedule add tärget=x when=daily digest", "Unknown option tärget= (did you mean target=?)"),
        ("/schedule add tаrget=x when=daily digest", "Unknown option tаrget= (did you mean target=?)"),
        ('/draft x cta="Sign up a post about v2', 'The quote in cta="Sign is never closed'),
        ('/schedule add when="every day Draft a post', 'The quote in when="every is never closed'),
        ("/schedule pause", "/schedule pause needs id."),
        ("/schedule campaign nosuch 1", "There is no campaign `nosuch`"),
    ],
)
async def test_options_are_parsed_strictly(
    make_engine: EngineFactory, tgi: TGIEmulator, redis: Redis, prefix: str, command: str, reason: str
) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 is out! #herald"
    surface = RecordingSurface()
    await engine.handle(event(command), surface)
    if reason:
        assert surface.last.startswith(reason), surface.last
    else:
        assert surface.last.startswith("**Draft `")
    assert await ScheduleStore(redis, Keys(prefix)).count() == 0


async def test_a_lost_connection_is_named(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "one two three four five six seven"
    tgi.inject(Fault(kind="drop", after_tokens=3))
    surface = RecordingSurface()
    assert await engine.handle(event("count"), surface) is Outcome.FAILED
    assert surface.last.startswith("one two three")
    assert "I lost the connection to the model server while answering" in surface.last


async def test_a_persona_that_leaves_too_little_room_is_refused(
    make_engine: EngineFactory, tgi: TGIEmulator, redis: Redis, prefix: str
) -> None:
    tgi.max_input_tokens, tgi.max_total_tokens = 500, 800
    engine = await make_engine(max_new_tokens=256)  # the budget: min(500, 800 - 256) - 32 = 468
    refused = await say(engine, "/persona set " + "Always answer as a very formal butler would. " * 40)
    assert refused.startswith("That persona is ") and "the model reads 468 at once" in refused
    assert "at most 234 of them" in refused
    assert not [key async for key in redis.scan_iter(match=f"{prefix}:persona:*")]  # nothing saved
    assert await say(engine, "/persona set pirate") == "Persona set for this chat."


async def test_a_draft_too_long_to_rewrite_is_refused_with_its_numbers(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    """The rewrite would overflow the model's context: the draft's length and the limit
    are still what the person is told."""
    tgi.max_input_tokens, tgi.max_total_tokens = 600, 1200
    engine = await make_engine(max_new_tokens=400)
    long_post = "Herald ships today with streamed answers everywhere. " * 30
    tgi.responder = lambda m: long_post
    refused = await say(engine, "/draft x announce v2")
    length = len(long_post.strip())
    assert refused == (
        f"I couldn't make that fit X (Twitter): my best draft is {length:,} characters and the limit "
        "is 280. Try a shorter brief."
    )


async def test_a_persona_that_a_smaller_model_cannot_fit_is_named_as_the_cause(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    butler = "/persona set " + "Always answer as a very formal butler would. " * 40  # over 234 tokens
    assert await say(await make_engine(max_new_tokens=256), butler) == "Persona set for this chat."
    tgi.max_input_tokens, tgi.max_total_tokens = 250, 800  # later: a smaller model
    engine = await make_engine(max_new_tokens=256)  # the budget: min(250, 800 - 256) - 32 = 218
    blamed = await say(engine, "hello", expect=Outcome.INVALID)
    assert blamed.startswith("This chat's persona is too long for the model in use now: it is ")
    assert "the model reads 218 at once, and a persona may take at most 109" in blamed
    assert "/persona clear" in blamed
    assert await say(engine, "/persona clear") == "Persona cleared — back to my default."
    assert await say(engine, "hello", expect=Outcome.ANSWERED) == "You said: hello"

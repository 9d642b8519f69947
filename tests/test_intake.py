"""The intake's streams and workers on a real Redis: events kept before they are
acknowledged, taken once, renewed while answered, taken over when their replica
stops renewing them, and answered again in the messages already sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from core import messages
from core.chat.engine import Engine, Outcome
from core.intake.events import inbound_data, inbound_from_data
from core.intake.stream import GROUP, IntakeStream
from core.intake.worker import Intake, Job
from core.platform import Arrival, Author, CommandCall, Inbound, MessageRef, Posted
from core.storage.keys import Keys
from tests.emulators.tgi import Fault, TGIEmulator
from tests.support import RecordingSurface, event, eventually

PLATFORM = "test"

StreamFactory = Callable[..., IntakeStream]


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def make_stream(redis: Redis, keys: Keys) -> StreamFactory:
    def make(consumer: str, **options: Any) -> IntakeStream:
        return IntakeStream(redis, keys, consumer=consumer, **options)

    return make


@pytest.fixture
async def intakes() -> AsyncIterator[list[Intake]]:
    started: list[Intake] = []
    yield started
    for intake in started:
        await intake.stop(0)


async def test_an_event_is_kept_once_and_taken_by_one_consumer(make_stream: StreamFactory) -> None:
    gateway, worker = make_stream("gateway"), make_stream("worker")
    await worker.prepare([PLATFORM])
    first = await gateway.put(PLATFORM, "ev1", {"n": 1}, take=False)
    again = await gateway.put(PLATFORM, "ev1", {"n": 1}, take=False)
    assert first.kept and first.taken is None and not again.kept
    assert await worker.depth([PLATFORM]) == (1, 0)

    [entry] = await worker.read(PLATFORM, 10, 0.01)
    assert (entry.event_id, entry.data, entry.resumed) == ("ev1", {"n": 1}, False)
    assert entry.entry_id == first.entry_id
    assert await worker.read(PLATFORM, 10, 0.01) == []  # nobody else gets it
    assert await worker.depth([PLATFORM]) == (0, 1)
    await worker.finish(PLATFORM, [entry.entry_id])
    assert await worker.depth([PLATFORM]) == (0, 0)


async def test_the_receiving_replica_takes_its_event_in_the_same_step(make_stream: StreamFactory) -> None:
    stream = make_stream("all")
    await stream.prepare([PLATFORM])
    put = await stream.put(PLATFORM, "ev1", {}, take=True)
    assert put.taken is not None and put.taken.entry_id == put.entry_id
    assert await stream.depth([PLATFORM]) == (0, 1)


async def test_an_older_waiting_event_is_taken_first(make_stream: StreamFactory) -> None:
    gateway, worker = make_stream("gateway"), make_stream("worker")
    await worker.prepare([PLATFORM])
    older = await gateway.put(PLATFORM, "old", {}, take=False)
    newer = await worker.put(PLATFORM, "new", {}, take=True)
    assert newer.taken is not None and newer.taken.entry_id == older.entry_id
    [left] = await worker.read(PLATFORM, 10, 0.01)
    assert left.entry_id == newer.entry_id


async def test_an_unrenewed_event_is_taken_over_and_the_first_holder_learns_it(
    make_stream: StreamFactory,
) -> None:
    dead, alive = make_stream("dead", visibility=0.2), make_stream("alive", visibility=0.2)
    await alive.prepare([PLATFORM])
    put = await dead.put(PLATFORM, "ev1", {"x": 1}, take=True)
    assert put.taken is not None
    assert await dead.renew(PLATFORM, [put.taken.entry_id]) == []

    taken: list[Any] = []

    async def claimed() -> bool:
        taken.extend(await alive.claim(PLATFORM, 10))
        return bool(taken)

    await eventually(claimed, "the event taken over")
    [entry] = taken
    assert entry.resumed and entry.data == {"x": 1} and entry.entry_id == put.taken.entry_id
    assert await dead.renew(PLATFORM, [entry.entry_id]) == [entry.entry_id]
    assert await alive.renew(PLATFORM, [entry.entry_id]) == []


async def test_renewing_keeps_an_event_from_being_taken_over(make_stream: StreamFactory) -> None:
    holder, other = make_stream("holder", visibility=0.3), make_stream("other", visibility=0.3)
    await holder.prepare([PLATFORM])
    put = await holder.put(PLATFORM, "ev1", {}, take=True)
    assert put.taken is not None
    for _ in range(6):  # 0.6 s of renewing, twice the visibility timeout
        await asyncio.sleep(0.1)
        assert await holder.renew(PLATFORM, [put.taken.entry_id]) == []
        assert await other.claim(PLATFORM, 10) == []


async def test_sent_messages_are_recorded_in_order(make_stream: StreamFactory) -> None:
    stream = make_stream("w")
    for index in (0, 1, 2, 10):
        await stream.record(PLATFORM, "1-0", index, MessageRef(f"m{index}", {"chat": "c"}))
    refs = await stream.recorded(PLATFORM, "1-0")
    assert [r.id for r in refs] == ["m0", "m1", "m2", "m10"]
    assert refs[0].extra == {"chat": "c"}
    await stream.finish(PLATFORM, ["1-0"])
    assert await stream.recorded(PLATFORM, "1-0") == []


async def test_an_unreadable_entry_is_finished_without_stopping_the_others(
    make_stream: StreamFactory, redis: Redis, keys: Keys, intakes: list[Intake]
) -> None:
    stream = make_stream("w")
    intake = Intake(stream, works=True, read_block=0.05)
    handled: list[str] = []

    async def handler(job: Job) -> None:
        handled.append(job.entry.event_id)

    intake.serve(PLATFORM, handler)
    intakes.append(intake)
    await intake.start()
    await redis.xadd(keys.intake_stream(PLATFORM), {"junk": "1"})
    await redis.xadd(keys.intake_stream(PLATFORM), {"e": "bad", "d": "[1, 2]"})
    await make_stream("gateway").put(PLATFORM, "good", {}, take=False)

    async def done() -> bool:
        return handled == ["good"] and await stream.depth([PLATFORM]) == (0, 0)

    await eventually(done, "the good event handled and every entry finished")


async def test_a_gateway_keeps_what_a_worker_answers(
    make_stream: StreamFactory, intakes: list[Intake]
) -> None:
    gateway = Intake(make_stream("gateway"), works=False)
    worker = Intake(make_stream("worker"), works=True, read_block=0.05)
    handled: list[tuple[str, dict[str, Any], bool]] = []

    async def handler(job: Job) -> None:
        handled.append((job.entry.event_id, job.entry.data, job.arrival.deduplicated))

    worker.serve(PLATFORM, handler)
    intakes.extend([gateway, worker])
    await gateway.start()
    await worker.start()
    assert await gateway.put(PLATFORM, "ev1", {"hello": "world"})
    assert not await gateway.put(PLATFORM, "ev1", {"hello": "world"})

    async def answered() -> bool:
        return handled == [("ev1", {"hello": "world"}, True)] and worker.active == 0

    await eventually(answered, "the worker answered the gateway's event once")
    assert await worker.stream.depth([PLATFORM]) == (0, 0)


async def test_a_job_left_unfinished_is_answered_again_in_the_messages_it_sent(
    make_stream: StreamFactory, intakes: list[Intake]
) -> None:
    surface = RecordingSurface()
    stuck = asyncio.Event()
    first = Intake(make_stream("first", visibility=0.3), works=True, read_block=0.05)

    async def sends_then_hangs(job: Job) -> None:
        where = job.surface(surface)
        await where.send("part one")
        await where.send("part two")
        stuck.set()
        await asyncio.Event().wait()  # the process is about to die

    first.serve(PLATFORM, sends_then_hangs)
    await first.start()
    assert await first.put(PLATFORM, "ev1", {})
    await asyncio.wait_for(stuck.wait(), 30)
    await first.stop(0)  # left unfinished, unrenewed: as if killed
    assert surface.texts == ["part one", "part two"]

    second = Intake(make_stream("second", visibility=0.3), works=True, read_block=0.05)
    seen: list[tuple[bool, list[str]]] = []

    async def finishes(job: Job) -> None:
        seen.append((job.arrival.resumed, [r.id for r in job.recorded]))
        await job.surface(surface).send("the whole answer")

    second.serve(PLATFORM, finishes)
    intakes.append(second)
    await second.start()

    async def finished() -> bool:
        return bool(seen) and second.active == 0

    await eventually(finished, "the second replica took the event over")
    assert seen == [(True, ["1", "2"])]
    # the answer is in the first message; the one it no longer needs is gone
    assert surface.messages == {"1": "the whole answer"}
    assert await second.stream.depth([PLATFORM]) == (0, 0)


def test_an_event_survives_the_stream_as_json() -> None:
    original = Inbound(
        platform="discord",
        event_id="123",
        chat_id="c",
        author=Author("u", "Ünïcode", True, frozenset({"r1", "r2"})),
        text="hi <@&1> {{ system }}",
        addressed=True,
        thread_id="t",
        is_private=False,
        command=CommandCall("schedule", None, {"when": "daily", "n": 3, "ok": True}, "add"),
        posted=Posted("m1", 1700000000.5, "m0"),
    )
    assert inbound_from_data(inbound_data(original)) == original
    plain = event("hello")
    assert inbound_from_data(inbound_data(plain)) == plain


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"platform": 1},
        {**inbound_data(event("x")), "author": "nobody"},
        {**inbound_data(event("x")), "text": None},
    ],
)
def test_damaged_event_data_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        inbound_from_data(data)


async def test_the_group_reads_from_the_start_of_a_stream_made_by_a_gateway(
    make_stream: StreamFactory, redis: Redis, keys: Keys
) -> None:
    """A gateway may keep events before any worker made the group: none is skipped."""
    await make_stream("gateway").put(PLATFORM, "early", {}, take=False)
    worker = make_stream("worker")
    await worker.prepare([PLATFORM])
    [entry] = await worker.read(PLATFORM, 10, 0.01)
    assert entry.event_id == "early"
    groups = await redis.xinfo_groups(keys.intake_stream(PLATFORM))
    assert [g["name"] for g in groups] == [GROUP]


async def test_an_answer_cut_off_by_a_dead_replica_is_finished_once_in_the_same_message(
    make_stream: StreamFactory, make_engine: Any, tgi: TGIEmulator, intakes: list[Intake]
) -> None:
    """The engine's part: the first replica showed part of the answer and died; the
    replica taking over starts over in that message, says it resumed, and the
    conversation holds the turn once, even when the event is taken over again."""
    surface = RecordingSurface()
    question = event("tell me a story", event_id="ev-story")
    tgi.inject(Fault(kind="stall", after_tokens=3))
    dying = await make_engine()
    first = Intake(make_stream("first", visibility=0.3), works=True, read_block=0.05)

    async def answer(engine: Engine) -> Callable[[Job], Awaitable[None]]:
        async def handle(job: Job) -> None:
            await engine.handle(replace(question, arrival=job.arrival), job.surface(surface))

        return handle

    first.serve(PLATFORM, await answer(dying))
    await first.start()
    assert await first.put(PLATFORM, question.event_id, {})

    async def partly_shown() -> bool:
        return bool(surface.texts) and bool(surface.texts[0].strip())

    await eventually(partly_shown, "part of the answer on screen")
    await first.stop(0)  # dies mid-answer
    partial = surface.texts[0]

    taking_over = await make_engine()
    second = Intake(make_stream("second", visibility=0.3), works=True, read_block=0.05)
    second.serve(PLATFORM, await answer(taking_over))
    intakes.append(second)
    await second.start()

    async def finished() -> bool:
        return await second.stream.depth([PLATFORM]) == (0, 0) and second.active == 0

    await eventually(finished, "the answer finished by the second replica")
    [shown] = surface.texts
    assert shown != partial and shown.endswith(messages.RESUMED)
    assert [c for c, _ in surface.calls].count("send") == 1  # no second message
    history = await taking_over.memory.history(question.conversation)
    assert [t.role for t in history] == ["user", "assistant"]
    assert not history[1].partial and history[1].content in shown

    # taken over again after it was saved (a crash before the acknowledgement): done
    again = replace(question, arrival=Arrival(deduplicated=True, resumed=True))
    assert await taking_over.handle(again, surface) is Outcome.ANSWERED
    assert len(await taking_over.memory.history(question.conversation)) == 2
    assert [c for c, _ in surface.calls].count("send") == 1


async def test_consumers_that_left_holding_nothing_are_forgotten(
    make_stream: StreamFactory, redis: Redis, keys: Keys
) -> None:
    """Every process start joins the group under a new name; those that left go."""
    now, left, holding = make_stream("now"), make_stream("left"), make_stream("holding")
    await now.prepare([PLATFORM])
    done = await left.put(PLATFORM, "a", {}, take=True)
    held = await holding.put(PLATFORM, "b", {}, take=True)
    await now.put(PLATFORM, "c", {}, take=True)
    assert done.taken is not None and held.taken is not None
    await left.finish(PLATFORM, [done.taken.entry_id])
    assert await now.forget_consumers(PLATFORM, idle=0) == 1
    names = {c["name"] for c in await redis.xinfo_consumers(keys.intake_stream(PLATFORM), GROUP)}
    assert names == {"now", "holding"}  # itself, and one still holding an event


async def test_a_command_taken_over_is_not_done_twice(make_engine: Any) -> None:
    """A command that may have done its work before the crash (here: setting a persona)
    is not done again by the replica taking it over: the person is told to check."""
    engine = await make_engine()
    surface = RecordingSurface()
    command = replace(
        event("/persona set You are a pirate."), arrival=Arrival(deduplicated=True, resumed=True)
    )
    assert await engine.handle(command, surface) is Outcome.FAILED
    assert surface.texts == [messages.COMMAND_INTERRUPTED]
    assert await engine.memory.persona(command.platform, command.chat_id) is None

    asked = replace(event("/ask what is 2+2?"), arrival=Arrival(deduplicated=True, resumed=True))
    assert await engine.handle(asked, surface) is Outcome.COMMAND  # an answer: it starts over
    assert surface.last.endswith(messages.RESUMED)


async def test_a_finished_answer_whose_acknowledgement_was_lost_is_left_as_it_is(
    make_stream: StreamFactory, intakes: list[Intake]
) -> None:
    """The replica that died had answered (its turn saved) but not acknowledged: the one
    taking over sends nothing, and the answer's messages stay."""
    surface = RecordingSurface()
    first = Intake(make_stream("first", visibility=0.3), works=True, read_block=0.05)
    sent = asyncio.Event()

    async def answers_then_dies(job: Job) -> None:
        await job.surface(surface).send("the whole answer")
        sent.set()
        await asyncio.Event().wait()

    first.serve(PLATFORM, answers_then_dies)
    await first.start()
    assert await first.put(PLATFORM, "ev1", {})
    await asyncio.wait_for(sent.wait(), 30)
    await first.stop(0)

    second = Intake(make_stream("second", visibility=0.3), works=True, read_block=0.05)
    took_over = asyncio.Event()

    async def finds_it_done(job: Job) -> None:
        job.surface(surface)  # as the engine does: it then finds the turn saved
        took_over.set()

    second.serve(PLATFORM, finds_it_done)
    intakes.append(second)
    await second.start()
    await asyncio.wait_for(took_over.wait(), 30)
    await eventually(lambda: _holds(second.active == 0), "the event finished")
    assert surface.messages == {"1": "the whole answer"}


async def _holds(value: bool) -> bool:
    return value


async def test_a_burst_is_kept_in_batches_each_event_once(
    make_stream: StreamFactory, intakes: list[Intake]
) -> None:
    """Puts made while one is under way go together; repeats in one batch are still
    refused, and every event is there once."""
    gateway = Intake(make_stream("gateway"), works=False)
    intakes.append(gateway)
    ids = [f"ev{n}" for n in range(300)]
    kept = await asyncio.gather(*(gateway.put(PLATFORM, event_id, {"n": event_id}) for event_id in ids + ids))
    assert sum(kept) == len(ids)
    worker = make_stream("worker")
    await worker.prepare([PLATFORM])
    read = [entry.event_id for entry in await worker.read(PLATFORM, 1000, 0.01)]
    assert sorted(read) == sorted(ids)


class RenewalOvertaken(IntakeStream):
    """A stream whose renewal reaches Redis only after the job it names has finished and
    been acknowledged (on a busy loop, a renewal's round trip is slow)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renewing = asyncio.Event()
        self.finished = asyncio.Event()
        self.overtaken: list[str] = []

    async def renew(self, platform: str, entry_ids: Sequence[str]) -> list[str]:
        self.renewing.set()
        await self.finished.wait()
        lost = await super().renew(platform, entry_ids)
        self.overtaken += lost
        return lost


async def test_a_renewal_overtaken_by_the_answers_end_is_no_takeover(
    redis: Redis, keys: Keys, intakes: list[Intake], caplog: pytest.LogCaptureFixture
) -> None:
    stream = RenewalOvertaken(redis, keys, consumer="w", visibility=2.0)
    intake = Intake(stream, works=True, read_block=0.05)

    async def handler(job: Job) -> None:
        await stream.renewing.wait()  # the renewal is on its way: the answer ends now

    intake.serve(PLATFORM, handler)
    intakes.append(intake)
    await intake.start()
    await stream.put(PLATFORM, "ev1", {}, take=False)

    async def finished() -> bool:
        return await stream.depth([PLATFORM]) == (0, 0)

    await eventually(finished, "the event answered and acknowledged")
    stream.finished.set()

    async def renewed() -> bool:
        return bool(stream.overtaken)

    await eventually(renewed, "the late renewal answered")
    assert not [r for r in caplog.records if "taken over" in r.getMessage()]

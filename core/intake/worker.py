"""Workers: take events from the intake's streams and answer them, each exactly once.

`Intake` is what the platforms' bots see. A gateway (`put`) keeps every event it
receives before telling the platform it arrived; where this replica also works, the
same step hands the event to it, and it is answered at once. A worker's loops take
what waits in the streams (events other replicas only received), renew what it holds
(a third of the visibility timeout), and take over what a dead replica held. Each
event is passed to its platform's handler as a `Job`, and finished (acknowledged)
when the handler returns; an event whose handler never returned (the process was
killed) is answered again by whoever takes it over: in the messages already sent
(`core.intake.journal`), marked resumed, its turn saved once (`ConversationStore`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from core.intake.batches import Batches
from core.intake.journal import JournaledSurface
from core.intake.stream import Arriving, Entry, IntakeStream, Put
from core.metrics import Metrics
from core.platform import Arrival, MessageRef, Surface
from core.storage.redis_client import honour_cancellation

#: seconds between forgetting consumers (processes) that left and hold nothing
TIDY_EVERY = 3600.0
#: how many times a worker looks for unrenewed events within one visibility timeout
CLAIMS_PER_VISIBILITY = 5
#: seconds an acknowledgement waits to go with the next events put in
ACK_RIDE = 0.05


@dataclass(slots=True)
class Job:
    """One event being answered, with what a handler needs to answer it durably."""

    entry: Entry
    stream: IntakeStream
    #: the messages an earlier try of this event sent (resumed events only)
    recorded: list[MessageRef] = field(default_factory=list)
    _surface: JournaledSurface | None = None

    @property
    def arrival(self) -> Arrival:
        return Arrival(deduplicated=True, resumed=self.entry.resumed)

    def surface(self, surface: Surface) -> Surface:
        """Where the answer goes: `surface`, with every message sent recorded (once per job)."""
        if self._surface is not None:
            raise RuntimeError("a job answers through one surface")
        self._surface = JournaledSurface(surface, self.stream, self.entry, self.recorded)
        return self._surface

    async def settle(self) -> None:
        if self._surface is not None:
            await self._surface.settle()


Handler = Callable[[Job], Awaitable[None]]


class Intake:
    """The intake as the platforms' bots and `herald run` see it."""

    def __init__(
        self,
        stream: IntakeStream,
        *,
        works: bool,
        capacity: int = 128,
        read_block: float = 2.0,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.stream = stream
        #: this replica answers events (role worker or all), not only receives them
        self.works = works
        self._capacity = capacity
        self._read_block = read_block
        self._metrics = metrics or Metrics()
        self._log = logger or logging.getLogger("herald.intake")
        self._handlers: dict[str, Handler] = {}
        self._jobs: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: jobs whose handler returned, being acknowledged: neither renewed nor cancelled
        self._finishing: set[tuple[str, str]] = set()
        #: events put in while a round trip is under way go together in the next one,
        #: with the acknowledgements owed meanwhile (`_finish`)
        self._puts: Batches[Arriving, Put] = Batches(self._put_many)
        self._owed: list[tuple[Entry, asyncio.Future[None]]] = []
        self._owed_task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()  # set when a job ends: a full worker reads again
        self._loops: list[asyncio.Task[None]] = []
        self._taking = False
        self._tidy_at = 0.0  # when the group's departed consumers are next forgotten

    @property
    def platforms(self) -> list[str]:
        return list(self._handlers)

    @property
    def active(self) -> int:
        """Events this replica is answering now."""
        return len(self._jobs)

    def serve(self, platform: str, handler: Handler) -> None:
        """Answer `platform`'s events with `handler` (a bot registers itself at start)."""
        self._handlers[platform] = handler

    async def start(self) -> None:
        """Where this replica works: create the streams it serves (with their workers'
        group, which reads from each stream's start) and start taking events."""
        if not self.works:
            return
        await self.stream.prepare(self._handlers)
        self._taking = True
        self._loops = [
            *(asyncio.create_task(self._read_loop(p), name=f"intake-read-{p}") for p in self._handlers),
            asyncio.create_task(self._claim_loop(), name="intake-claim"),
            asyncio.create_task(self._keep_loop(), name="intake-keep"),
        ]

    async def put(self, platform: str, event_id: str, data: dict[str, Any]) -> bool:
        """Keep an event (raises `RedisError` when it could not be kept: the platform must
        then not be told it arrived). Where this replica works and has room, it answers it
        at once. False when the event was seen before (delivered twice)."""
        take = self._taking and platform in self._handlers and self.active < self._capacity
        put = await self._puts.submit(Arriving(platform, event_id, data, take))
        self._metrics.intake_events.labels(platform, "kept" if put.kept else "duplicate").inc()
        if put.taken is not None:
            self._begin(put.taken)
        return put.kept

    async def stop(self, grace: float) -> None:
        """Take no more events; wait up to `grace` for those being answered (the engine's
        drain ends them). What is still running then is left unfinished in the stream,
        for another replica to take over."""
        self._taking = False
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        jobs = list(self._jobs.values())
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._puts.close()
        if self._owed_task is not None:
            self._owed_task.cancel()
            await asyncio.gather(self._owed_task, return_exceptions=True)

    # -- the worker's loops -------------------------------------------------------------

    def _begin(self, entry: Entry) -> None:
        key = (entry.platform, entry.entry_id)
        if key not in self._jobs:
            self._jobs[key] = asyncio.create_task(self._run(entry), name=f"intake-{entry.entry_id}")

    async def _run(self, entry: Entry) -> None:
        key = (entry.platform, entry.entry_id)
        try:
            await self._answer(entry)
        except asyncio.CancelledError:
            self._log.warning("intake: %s %s left unfinished for another replica", *key)
            raise
        finally:
            self._jobs.pop(key, None)
            self._finishing.discard(key)
            self._room.set()

    async def _answer(self, entry: Entry) -> None:
        handler = self._handlers.get(entry.platform)
        if entry.resumed:
            self._metrics.intake_events.labels(entry.platform, "resumed").inc()
            self._log.warning("intake: taking over %s event %s", entry.platform, entry.event_id)
        if handler is not None and not entry.unreadable:
            recorded = await self._recorded(entry)
            job = Job(entry, self.stream, recorded)
            try:
                await handler(job)
                await job.settle()
            except Exception:  # one bad event must not stop the others, nor come back
                self._log.exception("intake: handling %s event %s failed", entry.platform, entry.event_id)
        self._finishing.add((entry.platform, entry.entry_id))
        await self._finish(entry)

    async def _recorded(self, entry: Entry) -> list[MessageRef]:
        if not entry.resumed:
            return []
        try:
            return await self.stream.recorded(entry.platform, entry.entry_id)
        except RedisError as exc:
            self._log.warning("intake: could not read what %s sent before: %s", entry.entry_id, exc)
            return []

    async def _finish(self, entry: Entry) -> None:
        """Acknowledge the event: with the next events put in, or, where none comes within
        `ACK_RIDE`, with whatever others finished meanwhile. On a busy replica an answer
        then costs no round trip of its own to finish; the wait costs only a crash in
        it, whose taker finds the answer done (its turn saved) and leaves it."""
        done = asyncio.get_running_loop().create_future()
        self._owed.append((entry, done))
        if self._owed_task is None or self._owed_task.done():
            fresh = contextvars.Context()  # it serves every job, not the first one's
            self._owed_task = asyncio.create_task(self._settle_owed(), name="intake-acks", context=fresh)
        await done

    async def _settle_owed(self) -> None:
        await asyncio.sleep(ACK_RIDE)
        owed = self._take_owed()
        failed: BaseException | None = None
        try:
            _, failed = await self.stream.put_and_finish([], _by_platform(owed))
        except Exception as exc:  # the connection: said in the log, as any failure to finish
            failed = exc
        finally:
            self._owed_settled(owed, failed)

    def _take_owed(self) -> list[tuple[Entry, asyncio.Future[None]]]:
        owed, self._owed = self._owed, []
        return owed

    def _owed_settled(
        self, owed: list[tuple[Entry, asyncio.Future[None]]], failed: BaseException | None
    ) -> None:
        """A failure is logged, never raised: those events will be taken over, and their
        answers found done."""
        if failed is not None:
            self._log.error("intake: could not finish %d events: %s", len(owed), failed)
        for _, done in owed:
            if not done.done():
                done.set_result(None)

    async def _put_many(self, events: list[Arriving]) -> list[Put | BaseException]:
        owed = self._take_owed()
        try:
            puts, failed = await self.stream.put_and_finish(events, _by_platform(owed))
        except BaseException as exc:
            self._owed_settled(owed, exc)
            raise
        self._owed_settled(owed, failed)
        return puts

    async def _read_loop(self, platform: str) -> None:
        async def read_once() -> None:
            room = self._capacity - self.active
            if room <= 0:  # full: wait for a job to end
                self._room.clear()
                await self._room.wait()
                return
            for entry in await self.stream.read(platform, room, self._read_block):
                self._begin(entry)

        await self._forever(f"read {platform}'s events", read_once)

    async def _claim_loop(self) -> None:
        # looking often costs one XAUTOCLAIM a platform; it decides how soon after the
        # visibility timeout a dead replica's events are taken over
        await self._forever("claim", self._claim_once, every=self.stream.visibility / CLAIMS_PER_VISIBILITY)

    async def _claim_once(self) -> None:
        now = asyncio.get_running_loop().time()
        if now >= self._tidy_at:
            self._tidy_at = now + TIDY_EVERY
            for platform in self.platforms:
                await self.stream.forget_consumers(platform, idle=TIDY_EVERY)
        for platform in self.platforms:
            room = self._capacity - self.active
            if room <= 0:
                return
            for entry in await self.stream.claim(platform, room):
                self._begin(entry)

    async def _keep_loop(self) -> None:
        await self._forever("renew", self._keep_once, every=self.stream.visibility / 3)

    async def _keep_once(self) -> None:
        held: dict[str, list[str]] = {}
        for key in list(self._jobs):
            if key not in self._finishing:  # being acknowledged: no longer anyone's to take
                held.setdefault(key[0], []).append(key[1])
        for platform, ids in held.items():
            for lost in await self.stream.renew(platform, ids):
                # it went unrenewed past the visibility timeout (a stalled process):
                # another replica answers it now, so this one stops
                task = self._jobs.get((platform, lost))
                if task is None or (platform, lost) in self._finishing:
                    continue  # finished, or being acknowledged, while the renewal was on its way
                self._log.error("intake: %s event %s was taken over by another replica", platform, lost)
                task.cancel()

    async def _forever(
        self, what: str, once: Callable[[], Coroutine[Any, Any, None]], every: float = 0.0
    ) -> None:
        """Run `once` until cancelled, `every` seconds apart; Redis failures are logged and
        retried after a pause, never fatal."""
        while True:
            honour_cancellation()
            try:
                await once()
            except RedisError as exc:
                self._log.warning("intake: could not %s (%s); retrying", what, exc)
                await asyncio.sleep(1.0)
                continue
            if every:
                await asyncio.sleep(every)


def _by_platform(owed: list[tuple[Entry, asyncio.Future[None]]]) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for entry, _ in owed:
        ids.setdefault(entry.platform, []).append(entry.entry_id)
    return ids

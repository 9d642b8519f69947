"""Running schedules: claim the slot, draft, then publish or ask for approval.

`Runner.run_slot` is the one thing that happens at a fire time, on whichever
replica leads. It first claims the slot (schedule id + fire time, `SET NX`), so
each slot produces at most one post across replicas and leader changes, then
drafts the post and either publishes it (`auto`) or sends it to the approver.

`SchedulerService` is the leader's in-memory APScheduler 3, rebuilt from the
definitions in Redis and updated when they change. Time is injectable: the
service's `catch_up(now)` and the runner's `run_slot(schedule, slot)` take
explicit times, so tests never wait for wall-clock minutes.

Runs missed while no replica led are not replayed, except those within the
misfire grace (default 5 minutes) of the moment a replica takes the lead: a
leader change (≤ 20 s) loses no slot, a day of downtime does not publish a
day of stale posts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from redis.exceptions import RedisError

from core.platform import Button
from core.posts.drafting import Drafter, DraftRequest, DraftTooLong
from core.posts.schedules.approval import approval_buttons, approval_text
from core.posts.schedules.leader import LeaderLease
from core.posts.schedules.recurrence import parse_recurrence
from core.posts.schedules.social import Outcome, SocialPublishing
from core.posts.schedules.store import (
    InvalidTransition,
    Mode,
    Post,
    PostState,
    Schedule,
    ScheduleStore,
    new_id,
)
from core.posts.targets import Target
from core.social.delivery import DeliveryState
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient, honour_cancellation, subscriber

Clock = Callable[[], dt.datetime]
#: how often the leader looks for posts left publishing to networks by a replica that stopped
SWEEP_SECONDS = 30.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PublishFailed(Exception):
    """Nothing was sent: safe to retry."""


class PublishUnknown(Exception):
    """The send may or may not have happened: never retried automatically."""


class Publisher(Protocol):
    """A platform that publishes posts into chats and asks people to approve them."""

    async def publish(self, chat_id: str, thread_id: str | None, text: str) -> str:
        """Post `text`; return the platform message id. Raise PublishFailed/PublishUnknown."""

    async def request_approval(self, chat_id: str, text: str, buttons: Sequence[Button]) -> None:
        """Show a post to its approver: `text` with its Approve / Edit / Regenerate /
        Reject `buttons` (command buttons, run like the typed commands)."""

    async def notify(self, chat_id: str, text: str) -> None:
        """Tell the approver something (a failure, an unconfirmed send)."""


def last_fire(trigger: BaseTrigger, now: dt.datetime, grace: dt.timedelta) -> dt.datetime | None:
    """The latest fire time in (now − grace, now], the slot a late job belongs to."""
    fire = trigger.get_next_fire_time(None, now - grace)
    latest = None
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(microseconds=1))
    return latest


class Runner:
    def __init__(
        self,
        store: ScheduleStore,
        drafter: Drafter,
        publishers: Mapping[str, Publisher],
        *,
        owner: str,
        retry_delays: tuple[float, ...] = (30.0, 120.0, 600.0),
        logger: logging.Logger | None = None,
        social: SocialPublishing | None = None,
    ) -> None:
        self.store = store
        #: publishes to social networks (None: not set up here; `to=` is refused)
        self.social = social
        self._drafter = drafter
        self._publishers = publishers
        self._owner = owner
        self._retry_delays = retry_delays
        self._log = logger or logging.getLogger("herald.scheduler")
        self._retries: set[asyncio.Task[None]] = set()

    async def run_slot(self, schedule: Schedule, slot: dt.datetime) -> Post | None:
        """At most one post per (schedule, slot), whoever calls this and how often."""
        if schedule.paused or schedule.ends_before(slot):
            return None
        publisher = self._publishers.get(schedule.platform)
        if publisher is None:  # leave the slot unclaimed: nothing here can publish there
            self._log.warning("schedule %s: %s is not running here", schedule.id, schedule.platform)
            return None
        if not await self.store.claim_slot(schedule.id, slot, self._owner):
            return None
        runs = await self.store.count_run(schedule.id)
        if schedule.max_runs is not None and runs > schedule.max_runs:
            return None
        # The claim's post, before drafting: if this process dies while the model
        # writes, the next leader finds it and finishes it (`resume`).
        post = Post(
            new_id(),
            schedule.id,
            slot.isoformat(),
            schedule.platform,
            schedule.chat_id,
            "",
            history=(PostState.DRAFT.value,),
        )
        await self.store.save_post(post)
        return await self._write(post, schedule)

    async def resume(self, since: dt.datetime) -> list[Post]:
        """What a leader left behind when it stopped. Drafts it had claimed but not written
        are finished (those of slots before `since` are cancelled, like missed runs); taking
        one over is atomic, so if that leader is alive after all, its draft is dropped.
        Failed sends get their remaining retries; posts left publishing to networks go on
        (each network's delivery is taken over once its sender's hold has run out)."""
        for failed in await self.store.in_state(PostState.FAILED):
            schedule = await self.store.get(failed.schedule_id)
            if schedule is not None and schedule.platform in self._publishers:
                self._retry_later(failed, schedule)
        await self.continue_publishing()
        finished = []
        for orphan in await self.store.unwritten():
            schedule = await self.store.get(orphan.schedule_id)
            try:
                if schedule is None or dt.datetime.fromisoformat(orphan.slot) < since:
                    why = "schedule deleted" if schedule is None else "its leader stopped; too late now"
                    await self.store.move(orphan, PostState.CANCELLED, reason=why)
                    continue
                if schedule.platform not in self._publishers:
                    continue  # a replica running that platform will finish it
                taken = await self.store.retake(orphan)
            except InvalidTransition:
                continue  # someone else got there first
            self._log.warning("finishing post %s of schedule %s, left unwritten", taken.id, schedule.id)
            done = await self._write(taken, schedule)
            if done is not None:
                finished.append(done)
        return finished

    async def _write(self, post: Post, schedule: Schedule) -> Post | None:
        """Draft the claimed `post`, then send it on: for approval, or to publish. None when
        another replica took it over meanwhile."""
        publisher = self._publishers[schedule.platform]
        approver = schedule.approver_chat or schedule.chat_id
        request = DraftRequest(
            prompt=schedule.prompt.replace("{date}", post.slot[:10]),
            target=Target(schedule.target),
            tone=schedule.tone,
        )
        try:
            text = schedule.fixed_text or (await self._drafter.draft(request))[0].posts[0]
            if schedule.mode is Mode.AUTO:
                post = await self.store.move(post, PostState.SCHEDULED, text=text)
            else:
                post = await self.store.move(post, PostState.PENDING_APPROVAL, text=text)
        except DraftTooLong as exc:
            reason = f"draft of {exc.length} > {exc.limit} characters"
            post = await self.store.move(post, PostState.CANCELLED, reason=reason)
            await publisher.notify(approver, f"Schedule {schedule.id}: {reason}; nothing was posted.")
            return post
        except InvalidTransition:
            self._log.warning("post %s was taken over by another replica; dropping this draft", post.id)
            return None
        if schedule.mode is Mode.AUTO:
            return await self.publish(post, schedule)
        await self._ask_approval(post, schedule)
        return post

    async def _ask_approval(self, post: Post, schedule: Schedule) -> None:
        approver = schedule.approver_chat or schedule.chat_id
        publisher = self._publishers[schedule.platform]
        await publisher.request_approval(approver, approval_text(post), approval_buttons(post.id))

    async def approve(self, post_id: str, text: str | None = None) -> Post:
        """A person approved (optionally with edited text): publish it."""
        post = await self._existing(post_id)
        schedule = await self.store.get(post.schedule_id)
        changes = {} if text is None else {"text": text}
        post = await self.store.move(post, PostState.SCHEDULED, **changes)
        if schedule is None:
            return await self.store.move(post, PostState.CANCELLED, reason="schedule deleted")
        return await self.publish(post, schedule)

    async def reject(self, post_id: str, reason: str) -> Post:
        return await self.store.move(await self._existing(post_id), PostState.DRAFT, reason=reason)

    async def regenerate(self, post_id: str) -> Post:
        """A new draft for the same slot, sent for approval again."""
        post = await self._existing(post_id)
        schedule = await self.store.get(post.schedule_id)
        if schedule is None:
            return await self.store.move(post, PostState.CANCELLED, reason="schedule deleted")
        if post.state is PostState.PENDING_APPROVAL:
            post = await self.store.move(post, PostState.DRAFT, reason="regenerated")
        request = DraftRequest(
            prompt=schedule.prompt.replace("{date}", post.slot[:10]),
            target=Target(schedule.target),
            tone=schedule.tone,
        )
        text = (await self._drafter.draft(request))[0].posts[0]
        post = await self.store.move(post, PostState.PENDING_APPROVAL, text=text)
        await self._ask_approval(post, schedule)
        return post

    async def publish(self, post: Post, schedule: Schedule) -> Post:
        """Check once more, then send; the outcome decides the next state."""
        if schedule.destinations:
            return await self._publish_to_networks(post, schedule)
        target = Target(schedule.target)
        if not target.fits(post.text):  # an edit may have made it too long
            return await self.store.move(
                post, PostState.CANCELLED, reason=f"{target.measure(post.text)} > {target.limit}"
            )
        publisher = self._publishers[schedule.platform]
        approver = schedule.approver_chat or schedule.chat_id
        post = await self.store.move(post, PostState.PUBLISHING, attempts=post.attempts + 1)
        try:
            message_id = await publisher.publish(schedule.chat_id, schedule.thread_id, post.text)
        except PublishUnknown as exc:
            post = await self.store.move(post, PostState.UNCONFIRMED, reason=str(exc))
            await publisher.notify(
                approver, f"Post {post.id} may or may not have been published ({exc}); please check."
            )
            return post
        except PublishFailed as exc:
            post = await self.store.move(post, PostState.FAILED, reason=str(exc))
            self._retry_later(post, schedule)
            return post
        return await self.store.move(post, PostState.PUBLISHED, message_id=message_id)

    async def _publish_to_networks(self, post: Post, schedule: Schedule) -> Post:
        """Deliver to each network once (`core.posts.schedules.social`); the approver is
        told each network's outcome with its links. Networks that failed for now are
        tried again later (those done are never sent again); while another replica is
        still sending, it settles and reports the post, not this one."""
        publisher = self._publishers[schedule.platform]
        approver = schedule.approver_chat or schedule.chat_id
        if self.social is None:
            await publisher.notify(approver, f"Post {post.id}: publishing to networks is not set up here.")
            return await self.store.move(post, PostState.CANCELLED, reason="networks not set up")
        if post.state is not PostState.PUBLISHING:
            post = await self.store.move(post, PostState.PUBLISHING, attempts=post.attempts + 1)
        outcome, accounts, tell = await self.social.publish(
            post.id, post.text, schedule.platform, schedule.chat_id, schedule.destinations
        )
        for line in tell:
            await publisher.notify(schedule.chat_id, line)
        if outcome.held_elsewhere and not outcome.failed:
            return post  # its sender settles it; if that sender dies, the leader's sweep goes on
        try:
            post, retry_in = await self._settle(post, schedule, outcome)
        except InvalidTransition:  # another replica settled it meanwhile, from the same deliveries
            return await self.store.post(post.id) or post
        await publisher.notify(approver, outcome.report(post.id, accounts, retry_in))
        return post

    async def _settle(self, post: Post, schedule: Schedule, outcome: Outcome) -> tuple[Post, float | None]:
        """The post's state from its deliveries', and when it is tried again (None: not)."""
        states = {delivery.state for delivery in outcome.deliveries.values()}
        if outcome.failed:
            post = await self.store.move(post, PostState.FAILED, reason="some networks failed for now")
            return post, self._retry_later(post, schedule, not_before=outcome.retry_at)
        if DeliveryState.UNCONFIRMED in states:
            post = await self.store.move(post, PostState.UNCONFIRMED, reason="a network may have it")
        elif outcome.published:
            links = " ".join(link for delivery in outcome.published for link in delivery.links[:1])
            post = await self.store.move(post, PostState.PUBLISHED, message_id=links)
        else:
            post = await self.store.move(post, PostState.CANCELLED, reason="every network refused it")
        return post, None

    async def continue_publishing(self) -> list[Post]:
        """Posts left publishing to networks by a replica that stopped: each goes on
        once its deliveries are free (their sender's hold ran out); the leader calls
        this when it takes the lead and every `SWEEP_SECONDS` after."""
        done = []
        for stuck in await self.store.in_state(PostState.PUBLISHING):
            schedule = await self.store.get(stuck.schedule_id)
            if schedule is None or not schedule.destinations or schedule.platform not in self._publishers:
                continue
            if self.social is not None and await self.social.held(stuck.id):
                continue  # someone is sending it now
            self._log.warning("post %s was left publishing to networks; going on", stuck.id)
            done.append(await self.publish(stuck, schedule))
        return done

    def _retry_later(self, post: Post, schedule: Schedule, *, not_before: float = 0.0) -> float | None:
        """Publish a failed post again after the next of `retry_delays` (and not before
        `not_before`, a network's own reset time); the delay, or None when the tries
        are used up."""
        if post.attempts > len(self._retry_delays):
            return None
        delay = max(self._retry_delays[post.attempts - 1], not_before - time.time())

        async def retry() -> None:
            await asyncio.sleep(delay)
            current = await self.store.post(post.id)
            if current is not None and current.state is PostState.FAILED:
                await self.publish(current, schedule)

        task = asyncio.create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
        return delay

    async def close(self) -> None:
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)

    async def _existing(self, post_id: str) -> Post:
        post = await self.store.post(post_id)
        if post is None:
            raise KeyError(post_id)
        return post


TriggerFactory = Callable[[Schedule], BaseTrigger]


def recurrence_trigger(schedule: Schedule) -> BaseTrigger:
    """Intervals count from the schedule's creation, so a restart does not reset them."""
    start = dt.datetime.fromisoformat(schedule.created_at) if schedule.created_at else None
    return parse_recurrence(schedule.recurrence, schedule.timezone).trigger(start=start)


class SchedulerService:
    """The leader's APScheduler, built from the definitions in Redis."""

    def __init__(
        self,
        runner: Runner,
        redis: RedisClient,
        keys: Keys,
        *,
        lease: LeaderLease,
        misfire_grace: float = 300.0,
        sweep_seconds: float = SWEEP_SECONDS,
        trigger_for: TriggerFactory = recurrence_trigger,
        clock: Clock = utc_now,
        logger: logging.Logger | None = None,
    ) -> None:
        self._runner = runner
        self._redis = redis
        self._keys = keys
        self._lease = lease
        self._grace = dt.timedelta(seconds=misfire_grace)
        self._sweep_seconds = sweep_seconds
        self._trigger_for = trigger_for
        self._clock = clock
        self._log = logger or logging.getLogger("herald.scheduler")
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runs: set[asyncio.Task[None]] = set()  # runs under way (fires and catch-ups)
        self._idle = asyncio.Event()
        self._idle.set()
        #: stored schedules the last load skipped (unreadable, or no trigger can be made)
        self.broken = 0

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._lease.run(self._elected, self._deposed), name="scheduler-lease"),
            asyncio.create_task(self._watch_changes(), name="scheduler-watch"),
            asyncio.create_task(self._sweep_publishing(), name="scheduler-sweep"),
        ]

    async def stop(self, drain: float = 15.0) -> None:
        """Start no new runs; let those under way finish (a claimed slot gets its post),
        for up to `drain` seconds; then give up the lease."""
        await self._deposed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):
                await self._idle.wait()
        tasks = [*self._tasks, *self._runs]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._runner.close()

    @property
    def leading(self) -> bool:
        return self._scheduler is not None

    @property
    def healthy(self) -> bool:
        """Working: the lease and watcher loops run (none died), and a leader's scheduler
        runs. Broken definitions are skipped and counted (`broken`), not fatal."""
        if not self._tasks or any(task.done() for task in self._tasks):
            return False
        scheduler = self._scheduler
        return scheduler is None or bool(scheduler.running)

    @property
    def scheduler(self) -> AsyncIOScheduler | None:
        """The leader's APScheduler (started before it is shown here); None while not leading."""
        return self._scheduler

    async def catch_up(self, now: dt.datetime) -> None:
        """Run each schedule's latest slot within the grace period (claimed at most once);
        one that fails is logged, and the others still run."""
        for schedule in await self._runner.store.all():
            try:
                slot = last_fire(self._trigger_for(schedule), now, self._grace)
                if slot is not None:
                    await self._runner.run_slot(schedule, slot)
            except Exception:
                self._log.exception("schedule %s could not catch up; the others go on", schedule.id)

    async def _elected(self) -> None:
        scheduler = AsyncIOScheduler(timezone=dt.UTC)
        scheduler.start()  # before `_deposed` can see it: `stop` may come during `reload`
        self._scheduler = scheduler
        await self.reload()
        if self._scheduler is not scheduler:
            return  # stopped meanwhile
        # Catching up drafts posts, which can take longer than the lease lasts: not in the
        # lease's loop, which has to keep renewing meanwhile.
        self._run_beside(self._catch_up_after_election(self._clock()), "scheduler-catch-up")

    async def _catch_up_after_election(self, now: dt.datetime) -> None:
        try:
            await self._runner.resume(since=now - self._grace)
            await self.catch_up(now)
        except Exception:
            self._log.exception("catching up after taking the lead failed")

    async def _deposed(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)

    async def reload(self) -> None:
        """Make the jobs match the definitions in Redis."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        stored = await self._runner.store.count()
        schedules = await self._runner.store.all()  # unreadable ones are logged and left out
        broken = stored - len(schedules)
        scheduler.remove_all_jobs()
        for schedule in schedules:
            if schedule.paused:
                continue
            try:
                scheduler.add_job(
                    self._fire,
                    trigger=self._trigger_for(schedule),
                    args=[schedule.id],
                    id=schedule.id,
                    misfire_grace_time=int(self._grace.total_seconds()),
                    coalesce=True,
                    max_instances=1,
                )
            except Exception as exc:  # a definition no trigger can be made from: skip it alone
                broken += 1
                self._log.error("skipping schedule %s: it cannot be scheduled (%r)", schedule.id, exc)
        self.broken = broken

    def _run_beside(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A run under way, in a task of its own: `stop` lets it finish, so a slot it claimed
        gets its post. Nothing else cancels it, APScheduler included (its shutdown cancels
        the jobs under way)."""
        task = asyncio.create_task(work, name=name)
        self._runs.add(task)
        self._idle.clear()
        task.add_done_callback(self._run_done)
        return task

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        if not self._runs:
            self._idle.set()

    async def _fire(self, schedule_id: str) -> None:
        await asyncio.shield(self._run_beside(self._fire_run(schedule_id), f"scheduler-fire-{schedule_id}"))

    async def _fire_run(self, schedule_id: str) -> None:
        if not self.leading:  # a fire that was due just as this replica stepped down
            return
        slot = None
        try:
            schedule = await self._runner.store.get(schedule_id)
            if schedule is None:
                return
            slot = last_fire(self._trigger_for(schedule), self._clock(), self._grace)
            if slot is None:
                return
            await self._runner.run_slot(schedule, slot)
        except Exception:  # logged here: APScheduler may have stopped waiting for this run
            self._log.exception("schedule %s failed at %s", schedule_id, slot)

    async def _sweep_publishing(self) -> None:
        """On the leader, every `sweep_seconds`: posts left publishing to networks by a
        replica that stopped (any replica may publish an approval) go on."""
        while True:
            await asyncio.sleep(self._sweep_seconds)
            if not self.leading:
                continue
            try:
                await self._runner.continue_publishing()
            except Exception:
                self._log.exception("going on with posts left publishing failed; tried again later")

    async def _watch_changes(self) -> None:
        while True:
            pubsub = None
            try:
                pubsub = await subscriber(self._redis)
                await pubsub.subscribe(self._keys.schedules_changed())
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        await self.reload()
                    honour_cancellation()
            except (RedisError, OSError) as exc:
                self._log.warning("schedule watcher lost Redis (%s); retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8.2

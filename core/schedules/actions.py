"""What a person may do with a post waiting for approval, decided once for every
platform: the buttons under an approval request and `/schedule approve|reject…`
both come here."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace

from core.access import AccessPolicy
from core.drafting import DraftTooLong
from core.llm.errors import LLMError
from core.post_targets import Target
from core.schedules.runner import Runner
from core.schedules.store import InvalidTransition, PostState, Schedule
from core.types import Inbound

ACTIONS = ("approve", "edit", "regenerate", "reject")


class PostActions:
    def __init__(self, runner: Runner, access: AccessPolicy, *, logger: logging.Logger | None = None) -> None:
        self._runner = runner
        self._access = access
        self._log = logger or logging.getLogger("herald.scheduler")

    async def act(self, action: str, post_id: str, event: Inbound, text: str = "") -> str:
        """Carry out `action`; the answer is a short message for the person who asked."""
        if not self._access.may_manage_chat(event):
            return "Only people who manage this chat can approve its posts."
        post = await self._runner.store.post(post_id)
        if post is None:
            return f"There is no post `{post_id}`."
        try:
            if action == "approve" or (action == "edit" and text):
                if text:
                    target = await self._target_of(post.schedule_id)
                    if target is not None and not target.fits(text):
                        return (
                            f"That text is {target.measure(text)} characters as {target.label} counts "
                            f"them; the limit is {target.limit}. Nothing was published."
                        )
                done = await self._runner.approve(post_id, text or None)
                if done.state is PostState.PUBLISHED:
                    return f"Approved and published post `{post_id}`."
                return (
                    f"Post `{post_id}` is {done.state.value.replace('_', ' ')}: {done.reason or ''}".strip()
                )
            if action == "edit":
                return f"Send /schedule approve {post_id} followed by the text to publish instead."
            if action == "regenerate":
                await self._runner.regenerate(post_id)
                return f"A new draft of post `{post_id}` is waiting for approval."
            if action == "reject":
                await self._runner.reject(post_id, text or "rejected")
                return f"Rejected post `{post_id}`; nothing was published."
        except InvalidTransition:
            return f"Post `{post_id}` is already {post.state.value.replace('_', ' ')}."
        except (DraftTooLong, LLMError) as exc:
            self._log.warning("regenerating post %s failed: %r", post_id, exc)
            return "I couldn't write a new draft right now — try again in a minute."
        return f"Unknown action {action!r}."

    async def run_now(self, schedule: Schedule) -> str:
        """One extra run at this moment (its own slot), approval rules as usual."""
        slot = dt.datetime.now(dt.UTC).replace(microsecond=0)
        try:
            post = await self._runner.run_slot(replace(schedule, paused=False), slot)
        except (DraftTooLong, LLMError) as exc:
            self._log.warning("run-now of %s failed: %r", schedule.id, exc)
            return "I couldn't write the draft right now — try again in a minute."
        if post is None:
            return f"Schedule `{schedule.id}` did not run (it ended, or its platform is not running here)."
        if post.state is PostState.PENDING_APPROVAL:
            return f"Drafted post `{post.id}`; it is waiting for approval."
        return f"Post `{post.id}` is {post.state.value.replace('_', ' ')}."

    async def _target_of(self, schedule_id: str) -> Target | None:
        schedule = await self._runner.store.get(schedule_id)
        return None if schedule is None else Target(schedule.target)

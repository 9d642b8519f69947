"""What a person may do with a post waiting for approval, decided once for every
platform: the buttons under an approval request and `/schedule approve|reject…`
both come here."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace

from core.chat.access import AccessPolicy
from core.llm.errors import LLMError
from core.platform import Inbound
from core.posts.drafting import DraftTooLong
from core.posts.schedules.runner import Runner
from core.posts.schedules.store import InvalidTransition, Post, PostState, Schedule
from core.posts.targets import Target, ThreadTooLong, split_to_fit

NOT_A_MANAGER = "Only people who manage this chat can approve its posts."


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What to tell the person; `settled` when the draft's buttons no longer apply
    (published, rejected, redrafted, or decided earlier)."""

    message: str
    settled: bool = False


class PostActions:
    def __init__(self, runner: Runner, access: AccessPolicy, *, logger: logging.Logger | None = None) -> None:
        self._runner = runner
        self._access = access
        self._log = logger or logging.getLogger("herald.scheduler")

    async def act(self, action: str, post_id: str, event: Inbound, text: str = "") -> ActionResult:
        """Carry out `action` (`edit` needs `text`, the text to publish instead)."""
        if not self._may_act(event):
            return ActionResult(NOT_A_MANAGER)
        post = await self._runner.store.post(post_id)
        if post is None:
            return ActionResult(f"There is no post `{post_id}`.")
        try:
            if action == "approve" or (action == "edit" and text):
                if text:
                    refusal = await self._too_long(post.schedule_id, text)
                    if refusal:
                        return ActionResult(refusal)
                done = await self._runner.approve(post_id, text or None)
                if done.state is PostState.PUBLISHED:
                    return ActionResult(f"Approved and published post `{post_id}`.", settled=True)
                state = done.state.value.replace("_", " ")
                return ActionResult(f"Post `{post_id}` is {state}: {done.reason or ''}".strip(), settled=True)
            if action == "edit":
                return ActionResult(f"Send /schedule edit {post_id} followed by the text to publish instead.")
            if action == "regenerate":
                await self._runner.regenerate(post_id)
                return ActionResult(f"A new draft of post `{post_id}` is waiting for approval.", settled=True)
            if action == "reject":
                await self._runner.reject(post_id, text or "rejected")
                return ActionResult(f"Rejected post `{post_id}`; nothing was published.", settled=True)
        except InvalidTransition:
            now = await self._runner.store.post(post_id) or post  # someone else may just have acted
            state = now.state.value.replace("_", " ")
            return ActionResult(f"Post `{post_id}` is already {state}.", settled=True)
        except (DraftTooLong, LLMError) as exc:
            self._log.warning("regenerating post %s failed: %r", post_id, exc)
            return ActionResult("I couldn't write a new draft right now — try again in a minute.")
        return ActionResult(f"Unknown action {action!r}.")

    async def editable(self, post_id: str, event: Inbound) -> tuple[Post | None, str]:
        """Before offering an editor (a Discord form, a Telegram reply prompt): the post
        when this person may edit it now, else None and why not."""
        if not self._may_act(event):
            return None, NOT_A_MANAGER
        post = await self._runner.store.post(post_id)
        if post is None:
            return None, f"There is no post `{post_id}`."
        if post.state is not PostState.PENDING_APPROVAL:
            return None, f"Post `{post_id}` is already {post.state.value.replace('_', ' ')}."
        return post, ""

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

    def _may_act(self, event: Inbound) -> bool:
        """The chat's managers (and Herald admins), in a chat Herald serves."""
        return self._access.allows(event) and self._access.may_manage_chat(event)

    async def _too_long(self, schedule_id: str, text: str) -> str:
        """Why an edited text can't be published ("" when it can): into a chat it must fit
        one post of its target; to networks, a thread each of them cuts its own way."""
        schedule = await self._runner.store.get(schedule_id)
        if schedule is None:
            return ""
        target = Target(schedule.target)
        if schedule.destinations:
            try:
                split_to_fit(text, target.limit, target.measure)
            except ThreadTooLong:
                return (
                    f"That text is too long even as a thread of {target.label} posts. Nothing was published."
                )
            return ""
        if target.fits(text):
            return ""
        return (
            f"That text is {target.measure(text)} characters as {target.label} counts "
            f"them; the limit is {target.limit}. Nothing was published."
        )

"""The `schedule` command: add, list, pause, resume and delete auto-draft schedules.

Only people who may manage the chat change schedules (Discord Manage Server or
Manage Channels or a configured role, Telegram chat administrators, anyone in
their own DM) and Herald admins; the access policy decides, once, for every
platform. Times are in the zone a command names, else the chat's own
(`/schedule timezone`), else the configured default.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.chat.engine import CommandContext
from core.commands.registry import ArgSpec, ArgType, CommandRegistry, CommandSpec
from core.posts.campaigns import publishable
from core.posts.saved import SavedContent
from core.posts.schedules.actions import PostActions
from core.posts.schedules.recurrence import Recurrence, RecurrenceError, parse_recurrence
from core.posts.schedules.store import Mode, Schedule, ScheduleStore, new_id
from core.posts.targets import Target

ACTIONS = (
    "add",
    "draft",
    "campaign",
    "list",
    "pause",
    "resume",
    "delete",
    "run-now",
    "approve",
    "regenerate",
    "reject",
    "timezone",
)
NOT_ALLOWED = "Only people who manage this chat can change its schedules."
USAGE = (
    'Usage: /schedule add target=x when="every weekday at 09:00" tz=Europe/Berlin '
    "mode=approve <what to post about>"
)


def _describe(schedule: Schedule) -> str:
    state = "paused" if schedule.paused else schedule.mode.value
    return (
        f"`{schedule.id}` {schedule.recurrence} ({schedule.timezone}) → {schedule.target}, {state}: "
        f"{schedule.prompt}"
    )


def register_schedule_commands(
    registry: CommandRegistry,
    store: ScheduleStore,
    actions: PostActions,
    saved: SavedContent,
    *,
    default_timezone: str = "UTC",
) -> CommandRegistry:
    async def zone_for(ctx: CommandContext, args: dict[str, Any]) -> str:
        """The zone a command names, else the chat's, else the configured default."""
        if args.get("tz"):
            return str(args["tz"])
        event = ctx.event
        return await store.chat_timezone(event.platform, event.chat_id) or default_timezone

    async def handle(ctx: CommandContext, args: dict[str, Any]) -> None:
        event = ctx.event
        action = args["action"]
        if action == "list":
            schedules = await store.in_chat(event.platform, event.chat_id)
            lines = [_describe(s) for s in schedules] or ["No schedules in this chat yet. " + USAGE]
            await ctx.reply("\n".join(lines))
            return
        if action == "timezone" and not args.get("text"):
            await ctx.reply(
                f"This chat's schedules use {await zone_for(ctx, {})}. "
                "Change it with /schedule timezone Europe/Berlin (any IANA zone)."
            )
            return
        if not ctx.engine.access.may_manage_chat(event):
            await ctx.reply(NOT_ALLOWED)
            return
        if action == "timezone":
            await set_timezone(ctx, str(args["text"]).strip())
            return
        if action == "add":
            await add(ctx, args)
            return
        if action in ("draft", "campaign"):
            await schedule_saved(ctx, args)
            return
        if action in ("approve", "regenerate", "reject"):
            post_id, _, text = str(args.get("text", "")).strip().partition(" ")
            await ctx.reply((await actions.act(action, post_id, event, text.strip())).message)
            return
        schedule_id = str(args.get("text", "")).strip()
        schedule = await store.get(schedule_id)
        if schedule is None or (schedule.platform, schedule.chat_id) != (event.platform, event.chat_id):
            await ctx.reply(f"There is no schedule `{schedule_id}` in this chat. /schedule list shows them.")
            return
        if action == "delete":
            await store.delete(schedule.id)
            await ctx.reply(f"Deleted schedule `{schedule.id}`.")
        elif action == "run-now":
            await ctx.reply(await actions.run_now(schedule))
        else:
            await store.set_paused(schedule.id, action == "pause")
            await ctx.reply(f"Schedule `{schedule.id}` {'paused' if action == 'pause' else 'resumed'}.")

    async def set_timezone(ctx: CommandContext, zone: str) -> None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            await ctx.reply(f"{zone!r} is not an IANA time zone; try one like Europe/Berlin or UTC.")
            return
        await store.set_chat_timezone(ctx.event.platform, ctx.event.chat_id, zone)
        await ctx.reply(f"New schedules in this chat use {zone}; existing ones keep their zone.")

    async def add(ctx: CommandContext, args: dict[str, Any]) -> None:
        prompt = str(args.get("text", "")).strip()
        when = args.get("when")
        if not prompt or not when:
            await ctx.reply(USAGE)
            return
        timezone = await zone_for(ctx, args)
        until = args.get("until")
        if until is not None:
            try:
                until = dt.date.fromisoformat(str(until)).isoformat()
            except ValueError:
                await ctx.reply(f"until must be a date like 2026-12-31, not {until!r}.")
                return
        try:
            recurrence = parse_recurrence(str(when), timezone)
        except RecurrenceError as exc:
            await ctx.reply(str(exc))
            return
        await create(
            ctx,
            args,
            recurrence,
            prompt=prompt,
            target=str(args.get("target", Target.GENERIC.value)),
            tone=str(args.get("tone", "friendly")),
            end_date=until,
            max_runs=args.get("count"),
        )

    async def create(
        ctx: CommandContext, args: dict[str, Any], recurrence: Recurrence, **fields: Any
    ) -> None:
        """Save a schedule for the chat the command came from, and say when it runs first."""
        event = ctx.event
        now = dt.datetime.now(dt.UTC)
        schedule = Schedule(
            id=new_id(),
            platform=event.platform,
            chat_id=event.chat_id,
            thread_id=event.thread_id,
            recurrence=recurrence.text,
            timezone=recurrence.timezone,
            created_by=event.author.user_id,
            mode=Mode(args.get("mode", Mode.APPROVE.value)),
            created_at=now.isoformat(),
            **fields,
        )
        await store.save(schedule)
        first = recurrence.next_fires(now, 1)
        when_next = first[0].strftime("%a %d %b %Y %H:%M %Z") if first else "never"
        await ctx.reply(f"Scheduled `{schedule.id}`: {_describe(schedule)}\nNext run: {when_next}.")

    async def schedule_saved(ctx: CommandContext, args: dict[str, Any]) -> None:
        """A saved draft, or one post of a saved campaign, published once at its time."""
        words = str(args.get("text", "")).split()
        timezone = await zone_for(ctx, args)
        if args["action"] == "draft":
            kept = await saved.draft(words[0]) if words else None
            if kept is None:
                await ctx.reply(
                    'Usage: /schedule draft <draft id> at="2026-12-01 09:00" (drafts are kept 30 days)'
                )
                return
            draft = kept.draft
            if not args.get("at"):
                tomorrow = dt.datetime.now(ZoneInfo(timezone)).date() + dt.timedelta(days=1)
                await ctx.reply(
                    f'When should it go out? /schedule draft {words[0]} at="{tomorrow} 09:00" '
                    f"(time in {timezone}; add tz=… for another zone, mode=auto to skip approval)"
                )
                return
            if len(draft.posts) != 1:
                await ctx.reply("Threads can't be scheduled yet; draft it without thread=yes.")
                return
            target, text, when = draft.target, draft.posts[0], str(args["at"])
        else:
            campaign = await saved.campaign(words[0]) if words else None
            number = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            if campaign is None or not 1 <= number <= len(campaign.posts):
                await ctx.reply(
                    "Usage: /schedule campaign <campaign id> <post number> (campaigns are kept 30 days)"
                )
                return
            post = campaign.posts[number - 1]
            target, text, when = post.target, publishable(post), f"{post.date.isoformat()} {post.time}"
        try:
            recurrence = parse_recurrence(f"once at {when}", timezone)
        except RecurrenceError as exc:
            await ctx.reply(str(exc))
            return
        await create(
            ctx,
            args,
            recurrence,
            prompt=f"(saved {args['action']} {words[0]})",
            target=target.value,
            max_runs=1,
            fixed_text=text,
        )

    registry.add(
        CommandSpec(
            "schedule",
            "Draft posts on a schedule, or schedule a saved draft or campaign post",
            handle,
            args=(
                ArgSpec("action", "What to do", type=ArgType.CHOICE, choices=ACTIONS, required=True),
                ArgSpec(
                    "text",
                    "add: what to post about; approve/reject: post id [text]; timezone: a zone; "
                    "else schedule id",
                    max_length=2000,
                ),
                ArgSpec(
                    "when",
                    'Cron, or a phrase like "every weekday at 09:00"',
                    keyword_only=True,
                    max_length=200,
                ),
                ArgSpec("tz", "IANA time zone, e.g. Europe/Berlin", keyword_only=True, max_length=64),
                ArgSpec(
                    "target",
                    "Post format",
                    type=ArgType.CHOICE,
                    choices=tuple(t.value for t in Target),
                    keyword_only=True,
                ),
                ArgSpec(
                    "mode",
                    "approve (a person approves) or auto",
                    type=ArgType.CHOICE,
                    choices=tuple(m.value for m in Mode),
                    keyword_only=True,
                ),
                ArgSpec("tone", "Tone of the drafts", keyword_only=True, max_length=200),
                ArgSpec("until", "Last day to post (YYYY-MM-DD)", keyword_only=True, max_length=10),
                ArgSpec(
                    "at", "For draft: when to publish (YYYY-MM-DD HH:MM)", keyword_only=True, max_length=16
                ),
                ArgSpec(
                    "count",
                    "Stop after this many posts",
                    type=ArgType.INTEGER,
                    min_value=1,
                    max_value=10_000,
                    keyword_only=True,
                ),
            ),
        )
    )
    return registry

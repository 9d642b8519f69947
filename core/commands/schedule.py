"""`/schedule`: auto-draft schedules, saved drafts and campaign posts published once,
and decisions on posts waiting for approval — one subcommand each.

Only people who may manage the chat change schedules (Discord Manage Server or
Manage Channels or a configured role, Telegram chat administrators, anyone in
their own DM) and Herald admins; the access policy decides, once, for every
platform. Times are in the zone a command names, else the chat's own
(`/schedule timezone`), else the configured default.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.chat.access import AccessPolicy
from core.commands.context import CommandContext
from core.commands.guards import managers_only
from core.commands.registry import ArgSpec, ArgType, CommandSpec, Handler
from core.platform import Inbound
from core.posts.campaigns import publishable
from core.posts.saved import SavedContent
from core.posts.schedules.actions import PostActions
from core.posts.schedules.recurrence import RecurrenceError, parse_recurrence
from core.posts.schedules.social import SocialPublishing
from core.posts.schedules.store import Mode, Schedule, ScheduleStore, new_id
from core.posts.targets import Target, unnumbered
from core.social.accounts import NETWORK_NAMES, NETWORKS

log = logging.getLogger("herald.scheduler")

NOT_ALLOWED = "Only people who manage this chat can change its schedules."
USAGE = (
    'Usage: /schedule add target=x when="every weekday at 09:00" tz=Europe/Berlin '
    "mode=approve <what to post about>"
)
#: an edited post's text is measured against its target, whose limit is far lower
EDITED_TEXT_CHARS = 10_000

TZ = ArgSpec("tz", "IANA time zone, e.g. Europe/Berlin", keyword_only=True, max_length=64)
MODE = ArgSpec(
    "mode",
    "approve (a person approves) or auto",
    type=ArgType.CHOICE,
    choices=tuple(m.value for m in Mode),
    keyword_only=True,
)
TO = ArgSpec(
    "to",
    "Publish to x, bluesky or mastodon (several: x,bluesky) instead of this chat",
    keyword_only=True,
    max_length=40,
)
SCHEDULE_ID = ArgSpec("id", "The schedule's id (/schedule list shows them)", required=True, max_length=32)
POST_ID = ArgSpec("id", "The post's id (shown with its draft)", required=True, max_length=32)


def describe(schedule: Schedule) -> str:
    state = "paused" if schedule.paused else schedule.mode.value
    where = (
        f" to {', '.join(NETWORK_NAMES[n] for n in schedule.destinations)}" if schedule.destinations else ""
    )
    return (
        f"`{schedule.id}` {schedule.recurrence} ({schedule.timezone}) → {schedule.target}{where}, {state}: "
        f"{schedule.prompt}"
    )


def parse_destinations(text: str) -> tuple[str, ...]:
    """`x,bluesky` → ("x", "bluesky"); ValueError naming what isn't a network."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in NETWORKS]
    if unknown or not names:
        raise ValueError(
            f"to= takes x, bluesky or mastodon (several with commas), not {', '.join(unknown) or text!r}."
        )
    return tuple(dict.fromkeys(names))


class ScheduleCommands:
    def __init__(
        self,
        store: ScheduleStore,
        actions: PostActions,
        saved: SavedContent,
        access: AccessPolicy,
        *,
        default_timezone: str = "UTC",
        social: SocialPublishing | None = None,
    ) -> None:
        self._social = social
        self._store = store
        self._actions = actions
        self._saved = saved
        self._access = access
        self._default_timezone = default_timezone

    def spec(self) -> CommandSpec:
        return CommandSpec(
            "schedule",
            "Draft posts on a schedule, or schedule a saved draft or campaign post",
            subcommands=(
                _add_spec(self._managed(self.add)),
                CommandSpec(
                    "draft",
                    "Publish a saved draft once, at a time you give",
                    self._managed(self.schedule_draft),
                    args=(
                        ArgSpec("id", "The draft's id (shown with it)", required=True, max_length=32),
                        ArgSpec("at", "When to publish (YYYY-MM-DD HH:MM)", keyword_only=True, max_length=16),
                        TZ,
                        MODE,
                        TO,
                    ),
                ),
                CommandSpec(
                    "campaign",
                    "Publish one post of a saved campaign at its suggested time",
                    self._managed(self.schedule_campaign),
                    args=(
                        ArgSpec("id", "The campaign's id (shown with it)", required=True, max_length=32),
                        ArgSpec(
                            "number",
                            "Which post",
                            type=ArgType.INTEGER,
                            required=True,
                            min_value=1,
                            max_value=20,
                        ),
                        TZ,
                        MODE,
                        TO,
                    ),
                ),
                CommandSpec("list", "The schedules of this chat", self.list_schedules),
                CommandSpec("pause", "Pause a schedule", self._managed(self.pause), args=(SCHEDULE_ID,)),
                CommandSpec(
                    "resume", "Resume a paused schedule", self._managed(self.resume), args=(SCHEDULE_ID,)
                ),
                CommandSpec("delete", "Delete a schedule", self._managed(self.delete), args=(SCHEDULE_ID,)),
                CommandSpec(
                    "run-now", "Run a schedule once, now", self._managed(self.run_now), args=(SCHEDULE_ID,)
                ),
                self._decision(
                    "approve", "Publish a post waiting for approval", "text", "Publish this text instead"
                ),
                self._decision("edit", "Publish a post with your own text", "text", "The text to publish"),
                self._decision("regenerate", "Draft a post waiting for approval again"),
                self._decision(
                    "reject", "Reject a post waiting for approval", "reason", "Why (kept with the post)"
                ),
                CommandSpec(
                    "timezone",
                    "Show or set the time zone of this chat's schedules",
                    self.timezone,
                    args=(ArgSpec("zone", "An IANA time zone, e.g. Europe/Berlin", max_length=64),),
                ),
            ),
        )

    def _decision(self, action: str, description: str, text: str = "", about: str = "") -> CommandSpec:
        """`approve`, `edit`, `regenerate` or `reject` a post: a decision on the message
        that shows it, so its buttons (`approval_buttons`) settle that message."""

        async def decide(ctx: CommandContext, args: dict[str, Any]) -> None:
            await self.decide(ctx, args, action)

        args = (POST_ID, ArgSpec(text, about, max_length=EDITED_TEXT_CHARS)) if text else (POST_ID,)
        return CommandSpec(action, description, decide, args=args, decides=True)

    def _managed(self, handler: Handler) -> Handler:
        """Only the chat's managers (and Herald admins) run `handler`."""
        return managers_only(self._access, handler, NOT_ALLOWED)

    async def list_schedules(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        schedules = await self._store.in_chat(ctx.event.platform, ctx.event.chat_id)
        lines = [describe(s) for s in schedules] or ["No schedules in this chat yet. " + USAGE]
        await ctx.reply("\n".join(lines))

    async def timezone(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        zone = str(args.get("zone", "")).strip()
        if not zone:
            await ctx.reply(
                f"This chat's schedules use {await self._zone_for(ctx, {})}. "
                "Change it with /schedule timezone Europe/Berlin (any IANA zone)."
            )
        elif not self._access.may_manage_chat(ctx.event):
            await ctx.reply(NOT_ALLOWED)
        elif not _is_zone(zone):
            await ctx.reply(f"{zone!r} is not an IANA time zone; try one like Europe/Berlin or UTC.")
        else:
            await self._store.set_chat_timezone(ctx.event.platform, ctx.event.chat_id, zone)
            await ctx.reply(f"New schedules in this chat use {zone}; existing ones keep their zone.")

    async def add(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        timezone = await self._zone_for(ctx, args)
        until = args.get("until")
        if until is not None:
            try:
                until = dt.date.fromisoformat(str(until)).isoformat()
            except ValueError:
                await ctx.reply(f"until must be a date like 2026-12-31, not {until!r}.")
                return
        await self._create(
            ctx,
            args,
            str(args["when"]),
            timezone,
            prompt=str(args["prompt"]),
            target=str(args.get("target") or drafted_for(args.get("to"))),
            tone=str(args.get("tone", "friendly")),
            end_date=until,
            max_runs=args.get("count"),
        )

    async def schedule_draft(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        """A saved draft, published once at the time given."""
        draft_id = str(args["id"])
        kept = await self._saved.draft(draft_id)
        if kept is None:
            await ctx.reply(f"There is no draft `{draft_id}` (drafts are kept 30 days). /draft writes one.")
            return
        timezone = await self._zone_for(ctx, args)
        if not args.get("at"):
            tomorrow = dt.datetime.now(ZoneInfo(timezone)).date() + dt.timedelta(days=1)
            await ctx.reply(
                f'When should it go out? /schedule draft {draft_id} at="{tomorrow} 09:00" '
                f"(time in {timezone}; add tz=… for another zone, mode=auto to skip approval)"
            )
            return
        if len(kept.draft.posts) != 1 and not args.get("to"):
            await ctx.reply("Threads can be scheduled to networks (to=x…), where they become reply chains.")
            return
        text = unnumbered(kept.draft.posts)  # each network cuts it again, its own way
        await self._once(ctx, args, str(args["at"]), f"draft {draft_id}", kept.draft.target, text)

    async def schedule_campaign(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        """One post of a saved campaign, published once at its suggested date and time."""
        campaign = await self._saved.campaign(str(args["id"]))
        number = int(args["number"])
        if campaign is None:
            await ctx.reply(
                f"There is no campaign `{args['id']}` (campaigns are kept 30 days). /campaign plans one."
            )
            return
        if number > len(campaign.posts):
            count = len(campaign.posts)
            await ctx.reply(
                f"Campaign `{args['id']}` has {count} post{'s' if count != 1 else ''}: pick 1 to {count}."
            )
            return
        post = campaign.posts[number - 1]
        when = f"{post.date.isoformat()} {post.time}"
        await self._once(ctx, args, when, f"campaign {args['id']}", post.target, publishable(post))

    async def pause(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        schedule = await self._in_chat(ctx, args)
        if schedule is not None:
            await self._store.set_paused(schedule.id, True)
            await ctx.reply(f"Schedule `{schedule.id}` paused.")

    async def resume(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        schedule = await self._in_chat(ctx, args)
        if schedule is not None:
            await self._store.set_paused(schedule.id, False)
            await ctx.reply(f"Schedule `{schedule.id}` resumed.")

    async def delete(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        schedule = await self._in_chat(ctx, args)
        if schedule is not None:
            await self._store.delete(schedule.id)
            await ctx.reply(f"Deleted schedule `{schedule.id}`.")

    async def run_now(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        schedule = await self._in_chat(ctx, args)
        if schedule is not None:
            await ctx.reply(await self._actions.run_now(schedule))

    async def decide(self, ctx: CommandContext, args: dict[str, Any], action: str) -> None:
        """Approve, edit, regenerate or reject a post: the outcome settles the message its
        buttons were on; a refusal is for the person who acted alone."""
        text = str(args.get("text") or args.get("reason") or "")
        result = await self._actions.act(action, str(args["id"]), ctx.event, text)
        if result.settled:
            await ctx.conclude(result.message)
        else:
            await ctx.notice(result.message)

    async def _once(
        self, ctx: CommandContext, args: dict[str, Any], when: str, source: str, target: Target, text: str
    ) -> None:
        """A saved text, published once at `when` (in the command's or the chat's zone)."""
        zone = await self._zone_for(ctx, args)
        fields = {"prompt": f"(saved {source})", "target": target.value, "max_runs": 1, "fixed_text": text}
        await self._create(ctx, args, f"once at {when}", zone, **fields)

    async def _create(
        self, ctx: CommandContext, args: dict[str, Any], when: str, timezone: str, **fields: Any
    ) -> None:
        """Save a schedule for the chat the command came from, and say when it runs first
        (or why `when` is not a time it understands)."""
        now = dt.datetime.now(dt.UTC)
        try:
            recurrence = parse_recurrence(when, timezone)
            first = recurrence.next_fires(now, 1)  # the whole definition, tried before it is saved
        except RecurrenceError as exc:
            await ctx.reply(str(exc))
            return
        except (OverflowError, ValueError) as exc:
            log.warning("schedule %r in %s cannot be computed: %r", when, timezone, exc)
            await ctx.reply(
                f"I can't work out when {when!r} would run; try a shorter interval or another time."
            )
            return
        end = fields.get("end_date")
        problem = _never_runs(when, first, dt.date.fromisoformat(end) if end else None)
        if problem:
            await ctx.reply(problem)
            return
        event = ctx.event
        if args.get("to"):
            try:
                fields["destinations"] = await self._destinations(event, str(args["to"]))
            except ValueError as exc:
                await ctx.reply(str(exc))
                return
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
        await self._store.save(schedule)
        await ctx.reply(f"Scheduled `{schedule.id}`: {describe(schedule)}\nNext run: {_shown(first[0])}.")

    async def _destinations(self, event: Inbound, text: str) -> tuple[str, ...]:
        """The networks `to=` names, each with an account this chat can publish to
        (checked now; the account is fixed when a post is approved)."""
        networks = parse_destinations(text)
        if self._social is None:
            raise ValueError("Publishing to networks isn't set up on this server.")
        missing = await self._social.missing(event.platform, event.chat_id, networks)
        if missing:
            names = " or ".join(NETWORK_NAMES[n] for n in missing)
            raise ValueError(
                f"This chat has no working {names} account. A chat manager connects one with "
                f"/account add {missing[0]} (in a DM with me)."
            )
        return networks

    async def _in_chat(self, ctx: CommandContext, args: dict[str, Any]) -> Schedule | None:
        """The schedule named, if it belongs to this chat; else the person is told."""
        event = ctx.event
        schedule = await self._store.get(str(args["id"]))
        if schedule is None or (schedule.platform, schedule.chat_id) != (event.platform, event.chat_id):
            await ctx.reply(f"There is no schedule `{args['id']}` in this chat. /schedule list shows them.")
            return None
        return schedule

    async def _zone_for(self, ctx: CommandContext, args: dict[str, Any]) -> str:
        """The zone a command names, else the chat's, else the configured default."""
        if args.get("tz"):
            return str(args["tz"])
        event = ctx.event
        return await self._store.chat_timezone(event.platform, event.chat_id) or self._default_timezone


def drafted_for(to: object) -> str:
    """The format drafts take for `to=`: a post for several networks is fitted to the
    strictest of them (X's 280, Bluesky's 300, Mastodon's 500), drafted once; each
    network still measures it its own way and cuts it into a thread where it must."""
    if not to:
        return Target.GENERIC.value
    try:
        networks = parse_destinations(str(to))
    except ValueError:
        return Target.GENERIC.value  # refused later, with the reason
    return min((Target(network) for network in networks), key=lambda target: target.limit).value


def _shown(moment: dt.datetime) -> str:
    return moment.strftime("%a %d %b %Y %H:%M %Z")


def _never_runs(when: str, first: list[dt.datetime], until: dt.date | None) -> str:
    """Why a schedule would never run (a time in the past, an end before its start), or ""."""
    if not first:
        return f"{when!r} is in the past, so it would never run."
    if until is not None and first[0].date() > until:
        return (
            f"until={until.isoformat()} is before the first run ({_shown(first[0])}), so it would never run."
        )
    return ""


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _add_spec(handler: Handler) -> CommandSpec:
    return CommandSpec(
        "add",
        "Draft a post on a schedule",
        handler,
        args=(
            ArgSpec("prompt", "What to post about", required=True, max_length=2000),
            ArgSpec(
                "when",
                'Cron, or a phrase like "every weekday at 09:00"',
                required=True,
                keyword_only=True,
                max_length=200,
            ),
            TZ,
            ArgSpec(
                "target",
                "Post format",
                type=ArgType.CHOICE,
                choices=tuple(t.value for t in Target),
                keyword_only=True,
            ),
            MODE,
            ArgSpec("tone", "Tone of the drafts", keyword_only=True, max_length=200),
            ArgSpec("until", "Last day to post (YYYY-MM-DD)", keyword_only=True, max_length=10),
            TO,
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

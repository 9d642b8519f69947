"""Posts on request: /draft (with copy, regenerate and shorten for a draft shown
earlier) and /campaign. Drafts and plans are saved, when a store is given, so
their buttons and `/schedule draft|campaign` can use them later."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from core import messages
from core.commands.context import CommandContext
from core.commands.registry import ArgSpec, ArgType, CommandSpec, Handler
from core.llm.errors import LLMError
from core.platform import Button
from core.posts.campaigns import CampaignBrief, CampaignFailed, Planner
from core.posts.campaigns import render as render_campaign
from core.posts.drafting import Draft, Drafter, DraftRequest, DraftTooLong, copy_ready, render
from core.posts.saved import SavedContent, SavedDraft
from core.posts.targets import Target, ThreadTooLong

T = TypeVar("T")

TARGETS = tuple(t.value for t in Target)
DRAFT_ID = ArgSpec("id", "The draft's id (shown with it)", required=True, max_length=32)


def draft_buttons(draft_id: str) -> tuple[Button, ...]:
    return (
        Button("📋 Copy", f"copy {draft_id}"),
        Button("🔁 Regenerate", f"regenerate {draft_id}"),
        Button("✂️ Shorten", f"shorten {draft_id}"),
        Button("🗓 Schedule", f"schedule draft {draft_id}"),
    )


class DraftCommands:
    def __init__(self, drafter: Drafter, planner: Planner, saved: SavedContent | None = None) -> None:
        self._drafter = drafter
        self._planner = planner
        self._saved = saved

    def specs(self) -> tuple[CommandSpec, ...]:
        specs = [_draft_spec(self.draft)]
        if self._saved is not None:
            specs += [
                CommandSpec(
                    "copy", "A draft's text exactly as it would be posted", self.copy, args=(DRAFT_ID,)
                ),
                CommandSpec(
                    "regenerate",
                    "Write a draft again, differently",
                    self.regenerate,
                    args=(DRAFT_ID,),
                    generates=True,
                ),
                CommandSpec(
                    "shorten",
                    "Make a draft noticeably shorter",
                    self.shorten,
                    args=(DRAFT_ID,),
                    generates=True,
                ),
            ]
        specs.append(_campaign_spec(self.campaign))
        return tuple(specs)

    async def draft(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        request = DraftRequest(
            prompt=str(args["prompt"]),
            target=Target(args["target"]),
            tone=str(args.get("tone", "friendly")),
            variants=int(args.get("variants", 1)),
            thread=args.get("thread") == "yes",
            hashtags=args.get("hashtags", "on") == "on",
            cta=args.get("cta"),
        )
        drafts = await _explained(ctx, self._drafter.draft(request)) or ()
        for number, draft in enumerate(drafts, 1):
            await self._show(ctx, draft, request, number=number, of=len(drafts))

    async def copy(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        found = await self._saved_draft(ctx, args)
        if found is not None:
            await ctx.reply(copy_ready(found.draft))

    async def regenerate(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        found = await self._saved_draft(ctx, args)
        if found is None:
            return
        draft = await _explained(ctx, self._drafter.regenerate(found.request))
        if draft is not None:
            await self._show(ctx, draft, found.request)

    async def shorten(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        found = await self._saved_draft(ctx, args)
        if found is None:
            return
        draft = await _explained(ctx, self._drafter.shorten(found.draft, found.request))
        if draft is None:
            return
        before, after = sum(found.draft.lengths), sum(draft.lengths)
        note = "" if after < before else f"\n\n(The model could not make it shorter: {before} → {after}.)"
        await self._show(ctx, draft, found.request, note=note)

    async def campaign(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        try:
            channels = tuple(
                Target(c.strip().lower()) for c in str(args.get("channels", "x,linkedin")).split(",")
            )
        except ValueError:
            await ctx.reply(f"channels must be a comma-separated list of: {', '.join(TARGETS)}.")
            return
        brief = CampaignBrief(
            product=str(args["brief"]),
            audience=str(args.get("audience", "our community")),
            goal=str(args.get("goal", "awareness")),
            duration_days=int(args.get("days", 14)),
            posts=int(args.get("posts", 6)),
            channels=channels,
        )
        try:
            campaign = await _explained(ctx, self._planner.plan(brief))
        except CampaignFailed:
            await ctx.reply(messages.CAMPAIGN_FAILED)
            return
        if campaign is None:
            return
        if self._saved is None:
            await ctx.reply(render_campaign(campaign))
            return
        campaign_id = await self._saved.save_campaign(campaign)
        schedule_post = [
            Button(f"🗓 Schedule post {n}", f"schedule campaign {campaign_id} {n}")
            for n in range(1, len(campaign.posts) + 1)
        ]
        await ctx.reply(render_campaign(campaign, campaign_id), schedule_post)

    async def _show(
        self,
        ctx: CommandContext,
        draft: Draft,
        request: DraftRequest,
        *,
        number: int = 1,
        of: int = 1,
        note: str = "",
    ) -> None:
        """One draft, saved under an id, with what can be done with it next."""
        if self._saved is None:
            await ctx.reply(render(draft, number=number, of=of) + note)
            return
        draft_id = await self._saved.save_draft(draft, request)
        await ctx.reply(render(draft, draft_id, number=number, of=of) + note, draft_buttons(draft_id))

    async def _saved_draft(self, ctx: CommandContext, args: dict[str, Any]) -> SavedDraft | None:
        assert self._saved is not None  # the commands that use it exist only with a store
        found = await self._saved.draft(str(args["id"]))
        if found is None:
            await ctx.reply(f"There is no draft `{args['id']}` (drafts are kept 30 days). /draft writes one.")
        return found


async def _explained(ctx: CommandContext, writing: Awaitable[T]) -> T | None:
    """Await the model's work; a draft that cannot fit or a model failure is explained
    to the user (with the numbers), and gives None."""
    try:
        return await writing
    except DraftTooLong as exc:
        await ctx.reply(messages.draft_too_long(exc.length, exc.limit, exc.target.label))
    except ThreadTooLong:
        await ctx.reply(messages.THREAD_TOO_LONG)
    except LLMError as exc:
        await ctx.reply(exc.user_message)
    return None


def _draft_spec(handler: Handler) -> CommandSpec:
    return CommandSpec(
        "draft",
        "Turn a short prompt into a ready-to-post draft",
        handler,
        args=(
            ArgSpec("target", "Where it will be posted", type=ArgType.CHOICE, choices=TARGETS, required=True),
            ArgSpec("prompt", "What the post is about", required=True, max_length=2000),
            ArgSpec(
                "tone",
                "friendly, professional, witty, announcement, or your own words",
                keyword_only=True,
                max_length=200,
            ),
            ArgSpec(
                "variants",
                "How many versions (1-3)",
                type=ArgType.INTEGER,
                min_value=1,
                max_value=3,
                keyword_only=True,
            ),
            ArgSpec(
                "thread",
                "Split into a numbered thread",
                type=ArgType.CHOICE,
                choices=("yes", "no"),
                keyword_only=True,
            ),
            ArgSpec(
                "hashtags", "Add hashtags", type=ArgType.CHOICE, choices=("on", "off"), keyword_only=True
            ),
            ArgSpec("cta", "A call to action to end with", keyword_only=True, max_length=300),
        ),
        generates=True,
    )


def _campaign_spec(handler: Handler) -> CommandSpec:
    return CommandSpec(
        "campaign",
        "Plan a marketing campaign from a brief",
        handler,
        args=(
            ArgSpec(
                "brief",
                "The product and what the campaign should achieve",
                required=True,
                max_length=2000,
            ),
            ArgSpec("audience", "Who it is for", keyword_only=True, max_length=200),
            ArgSpec("goal", "What success looks like", keyword_only=True, max_length=200),
            ArgSpec(
                "days",
                "How long it runs (days)",
                type=ArgType.INTEGER,
                min_value=1,
                max_value=90,
                keyword_only=True,
            ),
            ArgSpec(
                "posts",
                "How many posts (1-20)",
                type=ArgType.INTEGER,
                min_value=1,
                max_value=20,
                keyword_only=True,
            ),
            ArgSpec(
                "channels",
                "Targets, comma-separated (x, bluesky, mastodon, discord, telegram, linkedin, generic)",
                keyword_only=True,
                max_length=100,
            ),
        ),
        generates=True,
    )

"""Herald's own commands: ask, reset, persona, cancel, help; draft (with copy,
regenerate and shorten for a draft shown earlier) and campaign.

The schedule commands add their specs to the same registry, so every adapter
offers them without knowing what they do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from core import messages
from core.chat import personas
from core.chat.engine import CommandContext
from core.commands.registry import ArgSpec, ArgType, CommandRegistry, CommandSpec
from core.llm.errors import LLMError
from core.platform import Button
from core.posts.campaigns import CampaignBrief, CampaignFailed, Planner
from core.posts.campaigns import render as render_campaign
from core.posts.drafting import Draft, Drafter, DraftRequest, DraftTooLong, copy_ready, render
from core.posts.saved import SavedContent, SavedDraft
from core.posts.targets import Target, ThreadTooLong

#: a campaign plan is one JSON document; it needs more room than a chat answer
CAMPAIGN_TOKENS = 3000

T = TypeVar("T")


async def _ask(ctx: CommandContext, args: dict[str, Any]) -> None:
    await ctx.engine.answer(ctx.event, ctx.surface, str(args["question"]))


async def _reset(ctx: CommandContext, args: dict[str, Any]) -> None:
    forgot = await ctx.engine.memory.reset(ctx.event.conversation)
    await ctx.reply(messages.RESET_DONE if forgot else messages.RESET_EMPTY)


async def _persona(ctx: CommandContext, args: dict[str, Any]) -> None:
    event, memory = ctx.event, ctx.engine.memory
    action = args.get("action", "show")
    value = args.get("text")
    if action == "list":
        names = ", ".join(sorted(personas.PRESETS))
        await ctx.reply(
            f"Presets: {names}. Use /persona set NAME, or /persona set followed by your own text."
        )
        return
    if action == "show":
        current = await memory.persona(event.platform, event.chat_id)
        await ctx.reply(f"Current persona: {current}" if current else "I'm using my default persona.")
        return
    if not ctx.engine.access.may_manage_chat(event):
        await ctx.reply(messages.ADMINS_ONLY)
        return
    if action == "clear":
        await memory.set_persona(event.platform, event.chat_id, None)
        await ctx.reply("Persona cleared — back to my default.")
        return
    if not value:
        await ctx.reply("Tell me which persona: /persona set NAME or /persona set <your own text>.")
        return
    prompt = personas.resolve(str(value))
    await memory.set_persona(event.platform, event.chat_id, prompt)
    await ctx.reply("Persona set for this chat.")


async def _cancel(ctx: CommandContext, args: dict[str, Any]) -> None:
    conv = ctx.event.conversation
    busy = await ctx.engine.locks.is_held(conv)
    await ctx.engine.cancels.request(conv)
    await ctx.reply(messages.CANCELLING if busy else messages.NOTHING_TO_CANCEL)


async def _draft(saved: SavedContent | None, ctx: CommandContext, args: dict[str, Any]) -> None:
    request = DraftRequest(
        prompt=str(args["prompt"]),
        target=Target(args["target"]),
        tone=str(args.get("tone", "friendly")),
        variants=int(args.get("variants", 1)),
        thread=args.get("thread") == "yes",
        hashtags=args.get("hashtags", "on") == "on",
        cta=args.get("cta"),
    )
    drafts = await _drafting(ctx, lambda drafter: drafter.draft(request))
    for number, draft in enumerate(drafts or (), 1):
        await _show(ctx, saved, draft, request, number=number, of=len(drafts or ()))


async def _drafting(ctx: CommandContext, write: Callable[[Drafter], Awaitable[T]]) -> T | None:
    """Run `write` with a drafter; a draft that cannot fit or a model failure is
    explained to the user (with the numbers), and gives None."""
    try:
        return await write(Drafter(ctx.engine.llm, ctx.engine.policy.generation))
    except DraftTooLong as exc:
        await ctx.reply(messages.draft_too_long(exc.length, exc.limit, exc.target.label))
    except ThreadTooLong:
        await ctx.reply(messages.THREAD_TOO_LONG)
    except LLMError as exc:
        await ctx.reply(exc.user_message)
    return None


async def _show(
    ctx: CommandContext,
    saved: SavedContent | None,
    draft: Draft,
    request: DraftRequest,
    *,
    number: int = 1,
    of: int = 1,
    note: str = "",
) -> None:
    """One draft, saved under an id, with what can be done with it next."""
    if saved is None:
        await ctx.reply(render(draft, number=number, of=of) + note)
        return
    draft_id = await saved.save_draft(draft, request)
    await ctx.reply(render(draft, draft_id, number=number, of=of) + note, draft_buttons(draft_id))


def draft_buttons(draft_id: str) -> tuple[Button, ...]:
    return (
        Button("📋 Copy", f"copy {draft_id}"),
        Button("🔁 Regenerate", f"regenerate {draft_id}"),
        Button("✂️ Shorten", f"shorten {draft_id}"),
        Button("🗓 Schedule", f"schedule draft {draft_id}"),
    )


async def _saved_draft(saved: SavedContent, ctx: CommandContext, args: dict[str, Any]) -> SavedDraft | None:
    found = await saved.draft(str(args["id"]))
    if found is None:
        await ctx.reply(f"There is no draft `{args['id']}` (drafts are kept 30 days). /draft writes one.")
    return found


async def _copy(saved: SavedContent, ctx: CommandContext, args: dict[str, Any]) -> None:
    found = await _saved_draft(saved, ctx, args)
    if found is not None:
        await ctx.reply(copy_ready(found.draft))


async def _regenerate(saved: SavedContent, ctx: CommandContext, args: dict[str, Any]) -> None:
    found = await _saved_draft(saved, ctx, args)
    if found is None:
        return
    draft = await _drafting(ctx, lambda drafter: drafter.regenerate(found.request))
    if draft is not None:
        await _show(ctx, saved, draft, found.request)


async def _shorten(saved: SavedContent, ctx: CommandContext, args: dict[str, Any]) -> None:
    found = await _saved_draft(saved, ctx, args)
    if found is None:
        return
    draft = await _drafting(ctx, lambda drafter: drafter.shorten(found.draft, found.request))
    if draft is None:
        return
    before, after = sum(found.draft.lengths), sum(draft.lengths)
    note = "" if after < before else f"\n\n(The model could not make it shorter: {before} → {after}.)"
    await _show(ctx, saved, draft, found.request, note=note)


async def _campaign(saved: SavedContent | None, ctx: CommandContext, args: dict[str, Any]) -> None:
    try:
        channels = tuple(
            Target(c.strip().lower()) for c in str(args.get("channels", "x,linkedin")).split(",")
        )
    except ValueError:
        names = ", ".join(t.value for t in Target)
        await ctx.reply(f"channels must be a comma-separated list of: {names}.")
        return
    brief = CampaignBrief(
        product=str(args["brief"]),
        audience=str(args.get("audience", "our community")),
        goal=str(args.get("goal", "awareness")),
        duration_days=int(args.get("days", 14)),
        posts=int(args.get("posts", 6)),
        channels=channels,
    )
    engine = ctx.engine
    drafter = Drafter(engine.llm, engine.policy.generation)
    planner = Planner(drafter, replace(engine.policy.generation, max_new_tokens=CAMPAIGN_TOKENS))
    try:
        campaign = await planner.plan(brief)
    except CampaignFailed:
        await ctx.reply(messages.CAMPAIGN_FAILED)
        return
    except DraftTooLong as exc:
        await ctx.reply(messages.draft_too_long(exc.length, exc.limit, exc.target.label))
        return
    except LLMError as exc:
        await ctx.reply(exc.user_message)
        return
    if saved is None:
        await ctx.reply(render_campaign(campaign))
        return
    campaign_id = await saved.save_campaign(campaign)
    schedule_post = [
        Button(f"🗓 Schedule post {n}", f"schedule campaign {campaign_id} {n}")
        for n in range(1, len(campaign.posts) + 1)
    ]
    await ctx.reply(render_campaign(campaign, campaign_id), schedule_post)


async def _help(ctx: CommandContext, args: dict[str, Any]) -> None:
    commands = ctx.engine.commands
    name = str(args.get("command", "")).lstrip("/").lower()
    if name:
        spec = commands.get(name)
        if spec is None:
            await ctx.reply(f"I don't know /{name}. Try /help.")
            return
        lines = [f"{spec.usage} — {spec.description}"]
        lines += [f"  {arg.name}: {arg.description}" for arg in spec.args]
        await ctx.reply("\n".join(lines))
        return
    lines = ["Mention me, reply to me or message me directly to chat. Commands:"]
    lines += [f"{spec.usage} — {spec.description}" for spec in commands]
    await ctx.reply("\n".join(lines))


def register_builtin_commands(
    registry: CommandRegistry, saved: SavedContent | None = None
) -> CommandRegistry:
    """`saved` keeps drafts and campaigns so `/schedule draft|campaign` can use them."""
    registry.add(
        CommandSpec(
            "ask",
            "Ask Herald something in this conversation",
            _ask,
            args=(ArgSpec("question", "What you want to ask", required=True),),
            generates=True,
        )
    )
    registry.add(CommandSpec("reset", "Forget this conversation", _reset, needs_turn=True))
    registry.add(
        CommandSpec(
            "persona",
            "Show, set or clear this chat's persona",
            _persona,
            args=(
                ArgSpec(
                    "action",
                    "What to do",
                    type=ArgType.CHOICE,
                    choices=("show", "set", "clear", "list"),
                ),
                ArgSpec(
                    "text",
                    "A preset name or your own instructions",
                    max_length=personas.MAX_PERSONA_CHARS,
                ),
            ),
        )
    )
    registry.add(CommandSpec("cancel", "Stop the answer in progress", _cancel))
    registry.add(
        CommandSpec(
            "draft",
            "Turn a short prompt into a ready-to-post draft",
            partial(_draft, saved),
            args=(
                ArgSpec(
                    "target",
                    "Where it will be posted",
                    type=ArgType.CHOICE,
                    choices=tuple(t.value for t in Target),
                    required=True,
                ),
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
    )
    if saved is not None:
        draft_id = ArgSpec("id", "The draft's id (shown with it)", required=True, max_length=32)
        for name, description, handler, generates in (
            ("copy", "A draft's text exactly as it would be posted", _copy, False),
            ("regenerate", "Write a draft again, differently", _regenerate, True),
            ("shorten", "Make a draft noticeably shorter", _shorten, True),
        ):
            registry.add(
                CommandSpec(name, description, partial(handler, saved), args=(draft_id,), generates=generates)
            )
    registry.add(
        CommandSpec(
            "campaign",
            "Plan a marketing campaign from a brief",
            partial(_campaign, saved),
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
                    "Targets, comma-separated (x, discord, telegram, linkedin, generic)",
                    keyword_only=True,
                    max_length=100,
                ),
            ),
            generates=True,
        )
    )
    registry.add(
        CommandSpec(
            "help",
            "What Herald can do",
            _help,
            args=(ArgSpec("command", "A command to explain", max_length=40),),
        )
    )
    return registry

"""Planning a marketing campaign: a brief in, a validated, length-checked plan out.

The model answers JSON constrained by a JSON schema (TGI's grammar). The answer
is still validated — a generation cut off at `max_new_tokens` is invalid JSON
whatever the grammar — and repaired (the model is shown the errors) or
regenerated a bounded number of times. Every post is then checked like a
draft for its target, and shortened by the model when it is too long.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from core.llm.base import ChatMessage, GenerationParams
from core.posts.drafting import Drafter
from core.posts.targets import Target


class CampaignPost(BaseModel):
    date: dt.date
    # [0-9], not \d: ASCII digits only, and a class every grammar converter reads
    time: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    target: Target
    text: str = Field(min_length=1)
    hashtags: list[str] = Field(default_factory=list, max_length=5)
    call_to_action: str | None = None


class Campaign(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    audience: str = Field(min_length=1)
    key_messages: list[str] = Field(min_length=1, max_length=6)
    posts: list[CampaignPost] = Field(min_length=1, max_length=30)


SCHEMA: dict[str, Any] = Campaign.model_json_schema()
#: a plan is one JSON document: it needs more room than a chat answer
PLAN_TOKENS = 3000


class CampaignFailed(Exception):
    """No valid plan after the allowed repairs and regenerations."""


@dataclass(frozen=True, slots=True)
class CampaignBrief:
    product: str
    audience: str = "our community"
    goal: str = "awareness"
    duration_days: int = 14
    posts: int = 6
    channels: tuple[Target, ...] = (Target.X, Target.LINKEDIN)
    start: dt.date | None = None  # default: tomorrow


def _instructions(brief: CampaignBrief, start: dt.date) -> str:
    channels = ", ".join(f"{t.value} (at most {t.limit} characters)" for t in brief.channels)
    return "\n".join(
        [
            "You are a social-media marketing strategist. Plan a campaign as JSON matching the schema.",
            f"Exactly {brief.posts} posts between {start.isoformat()} and "
            f"{(start + dt.timedelta(days=brief.duration_days - 1)).isoformat()}, "
            "dates as YYYY-MM-DD and times as HH:MM (24 h).",
            f"Use only these targets: {channels}.",
            "Each post's text is ready to publish; hashtags go in the hashtags list.",
            "Never mention @everyone, @here or any user or role.",
        ]
    )


def _brief_text(brief: CampaignBrief) -> str:
    return (
        f"Product: {brief.product}\nAudience: {brief.audience}\nGoal: {brief.goal}\n"
        f"Duration: {brief.duration_days} days\nNumber of posts: {brief.posts}"
    )


def _problems(error: ValidationError | ValueError) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in error.errors()[:10]
        )
    return str(error)


class Planner:
    def __init__(
        self,
        drafter: Drafter,
        params: GenerationParams,
        *,
        repairs: int = 2,
        regenerations: int = 1,
        today: dt.date | None = None,
    ) -> None:
        self._drafter = drafter
        self._params = replace(params, json_schema=SCHEMA)
        self._repairs = repairs
        self._regenerations = regenerations
        self._today = today

    async def plan(self, brief: CampaignBrief) -> Campaign:
        start = brief.start or (self._today or dt.date.today()) + dt.timedelta(days=1)
        base = [
            ChatMessage("system", _instructions(brief, start)),
            ChatMessage("user", _brief_text(brief)),
        ]
        for _ in range(1 + self._regenerations):
            campaign = await self._attempt(base, brief)
            if campaign is not None:
                return await self._fit_posts(campaign, base)
        raise CampaignFailed("the model did not produce a valid plan")

    async def _attempt(self, base: list[ChatMessage], brief: CampaignBrief) -> Campaign | None:
        """One generation and up to `repairs` corrections of it."""
        messages = list(base)
        for repair in range(1 + self._repairs):
            answer = await self._drafter.complete(messages, self._params)
            try:
                campaign = Campaign.model_validate_json(answer)
                outside = [p.target.value for p in campaign.posts if p.target not in brief.channels]
                if outside:
                    raise ValueError(f"targets not in the brief: {', '.join(sorted(set(outside)))}")
                return campaign
            except (ValidationError, ValueError) as error:
                if repair == self._repairs:
                    return None
                messages += [
                    ChatMessage("assistant", answer),
                    ChatMessage(
                        "user",
                        f"That JSON is invalid ({_problems(error)}). Reply with the corrected JSON only.",
                    ),
                ]
        return None

    async def _fit_posts(self, campaign: Campaign, base: list[ChatMessage]) -> Campaign:
        """Every post checked like a draft for its target; too long ones are shortened."""
        posts = []
        for post in campaign.posts:
            context = [*base, ChatMessage("user", f"Write the {post.target.value} post for {post.date}.")]
            text, _ = await self._drafter.fit(publishable(post), post.target, context)
            posts.append(post.model_copy(update={"text": text, "hashtags": []}))
        return campaign.model_copy(update={"posts": posts})


def publishable(post: CampaignPost) -> str:
    """The text as it will be posted: hashtags belong to what is counted."""
    tags = " ".join(f"#{tag.lstrip('#')}" for tag in post.hashtags if tag.lstrip("#") not in post.text)
    return f"{post.text}\n\n{tags}" if tags else post.text


def render(campaign: Campaign, campaign_id: str | None = None) -> str:
    saved = f" `{campaign_id}`" if campaign_id else ""
    lines = [f"**Campaign{saved}: {campaign.name}** — for {campaign.audience}", "", "Key messages:"]
    lines += [f"• {message}" for message in campaign.key_messages]
    for number, post in enumerate(campaign.posts, 1):
        target = post.target
        text = publishable(post)
        lines += [
            "",
            f"**{number}. {post.date.isoformat()} {post.time} · {target.label}** — "
            f"{target.measure(text)}/{target.limit}",
            text,
        ]
        if post.call_to_action and post.call_to_action not in post.text:
            lines.append(f"→ {post.call_to_action}")
    return "\n".join(lines)

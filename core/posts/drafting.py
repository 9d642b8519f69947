"""Turning a short prompt into posts that are ready to publish, and provably fit.

The model writes; Herald measures the way the target counts. A draft that is
too long goes back to the model with its measured length and the limit, a
bounded number of times; if it still does not fit, the user is told, with the
numbers — an over-long draft is never presented as fitting. Thread mode cuts
the text into numbered posts between sentences, each within the limit.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.llm.base import ChatMessage, GenerationParams, LLMClient, TextDelta
from core.llm.errors import ContextTooLong
from core.posts.targets import Target, split_thread, unnumbered

TONES: dict[str, str] = {
    "friendly": "warm, upbeat and approachable",
    "professional": "clear, credible and polished",
    "witty": "clever and playful, with a light touch of humour",
    "announcement": "crisp and newsworthy, leading with what changed",
}
#: drafts aim this far below the limit so the model's estimate leaves room
MARGIN = 0.9
#: "Shorten" asks for about this share of the current length
SHORTEN_TO = 0.6


class DraftTooLong(Exception):
    """Still over the limit after the allowed rewrites; both numbers are for the user."""

    def __init__(self, length: int, limit: int, target: Target) -> None:
        super().__init__(f"{length} > {limit} for {target.value}")
        self.length = length
        self.limit = limit
        self.target = target


@dataclass(frozen=True, slots=True)
class DraftRequest:
    prompt: str
    target: Target = Target.GENERIC
    tone: str = "friendly"
    variants: int = 1
    thread: bool = False
    hashtags: bool = True
    cta: str | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    target: Target
    posts: tuple[str, ...]  # one post, or the numbered posts of a thread
    rewrites: int = 0  # how many times the model was asked to shorten it

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self.target.measure(post) for post in self.posts)

    @property
    def fits(self) -> bool:
        return all(length <= self.target.limit for length in self.lengths)


def _instructions(request: DraftRequest) -> str:
    target = request.target
    tone = TONES.get(request.tone.lower(), request.tone)
    rules = [
        f"You write social-media posts for {target.label}.",
        f"Tone: {tone}.",
        "Reply with the post text only: no preamble, no quotes, no explanations.",
        "Never mention @everyone, @here or any user or role.",
    ]
    if request.thread:
        rules.append(
            f"Write a thread: several short paragraphs; each sentence under {target.limit} characters."
        )
    else:
        rules.append(f"The post must be at most {int(target.limit * MARGIN)} characters.")
    if target is Target.X:
        rules.append("On X every link counts as 23 characters, and CJK characters and emoji count double.")
    rules.append("End with 1-3 relevant hashtags." if request.hashtags else "Use no hashtags.")
    if request.cta:
        rules.append(f"Finish with this call to action: {request.cta}")
    return "\n".join(rules)


def _clean(text: str) -> str:
    """Models sometimes wrap a post in quotes; what is published is the post itself."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text


class Drafter:
    def __init__(self, llm: LLMClient, params: GenerationParams, *, max_rewrites: int = 2) -> None:
        self._llm = llm
        self._params = params
        self._max_rewrites = max_rewrites

    async def draft(self, request: DraftRequest) -> list[Draft]:
        """`request.variants` drafts, written concurrently (TGI batches them)."""
        seeds = range(1, request.variants + 1)
        return list(await asyncio.gather(*(self._one(request, seed) for seed in seeds)))

    async def regenerate(self, request: DraftRequest) -> Draft:
        """A fresh draft for the same request, sampled differently from the last."""
        return await self._one(request, secrets.randbelow(2**31) + 1)

    async def shorten(self, draft: Draft, request: DraftRequest) -> Draft:
        """The same post, rewritten noticeably shorter, and still measured to fit."""
        target = draft.target
        text = unnumbered(draft.posts)
        length = target.measure(text)
        goal = max(20, int(min(length, target.limit) * SHORTEN_TO))
        messages = [
            ChatMessage("system", _instructions(request)),
            ChatMessage("user", request.prompt),
            ChatMessage("assistant", text),
            ChatMessage(
                "user",
                f"Make it shorter: at most {goal} characters as {target.label} counts them "
                f"(it is {length} now), keeping its message. Reply with the post only.",
            ),
        ]
        return await self._finish(request, messages, self._params)

    async def _one(self, request: DraftRequest, seed: int) -> Draft:
        messages = [ChatMessage("system", _instructions(request)), ChatMessage("user", request.prompt)]
        return await self._finish(request, messages, replace(self._params, seed=seed))

    async def _finish(
        self, request: DraftRequest, messages: list[ChatMessage], params: GenerationParams
    ) -> Draft:
        """The model's answer to `messages` as a draft that fits: a thread, or one post."""
        text = _clean(await self.complete(messages, params))
        target = request.target
        if request.thread:
            return Draft(target, tuple(split_thread(text, target)))
        text, rewrites = await self.fit(text, target, messages, params)
        return Draft(target, (text,), rewrites)

    async def fit(
        self,
        text: str,
        target: Target,
        messages: Sequence[ChatMessage],
        params: GenerationParams | None = None,
    ) -> tuple[str, int]:
        """`text`, rewritten by the model until it fits `target` (bounded); raises
        `DraftTooLong` with the numbers when it never does."""
        history = list(messages)
        rewrites = 0
        while not target.fits(text) and rewrites < self._max_rewrites:
            rewrites += 1
            length = target.measure(text)
            history += [
                ChatMessage("assistant", text),
                ChatMessage(
                    "user",
                    f"That post is {length} characters as {target.label} counts them; the limit is "
                    f"{target.limit}. Rewrite it to at most {int(target.limit * MARGIN)}, keeping its "
                    "message. Reply with the post only.",
                ),
            ]
            try:
                text = _clean(await self.complete(history, replace(params or self._params, json_schema=None)))
            except ContextTooLong:  # the draft itself is too long to send back: say so, with its numbers
                raise DraftTooLong(length, target.limit, target) from None
        if not target.fits(text):
            raise DraftTooLong(target.measure(text), target.limit, target)
        return text, rewrites

    async def complete(self, messages: Sequence[ChatMessage], params: GenerationParams) -> str:
        """The model's whole answer to `messages`."""
        prompt = await self._llm.prepare(messages)
        room = self._llm.info.max_total_tokens - prompt.input_tokens  # never a context overflow
        params = replace(params, max_new_tokens=max(1, min(params.max_new_tokens, room)))
        parts = [e.text async for e in self._llm.stream(prompt, params) if isinstance(e, TextDelta)]
        return "".join(parts)


def render(draft: Draft, draft_id: str | None = None, *, number: int = 1, of: int = 1) -> str:
    """A draft as a message: its measured length against the limit, and its id when it
    was saved (the id its buttons and commands use)."""
    target = draft.target
    name = f"Draft {number} of {of}" if of > 1 else "Draft"
    if draft_id is not None:
        name = f"{name} `{draft_id}`"
    heading = f"**{name} for {target.label}**"
    if len(draft.posts) == 1:
        return f"{heading} — {draft.lengths[0]}/{target.limit}\n\n{draft.posts[0]}"
    posts = "\n\n".join(
        f"_Post {i} — {length}/{target.limit}_\n{post}"
        for i, (post, length) in enumerate(zip(draft.posts, draft.lengths, strict=True), 1)
    )
    return f"{heading} — a thread of {len(draft.posts)} posts\n\n{posts}"


def copy_ready(draft: Draft) -> str:
    """Each post exactly as it would be published, in a code block: nothing rendered,
    nothing lost (Telegram copies a code block with one tap)."""
    fence = "```"
    while fence in "".join(draft.posts):
        fence += "`"
    return "\n\n".join(f"{fence}\n{post}\n{fence}" for post in draft.posts)

"""`/web`: an answer from the web, with numbered links to the pages it used.

The question goes to the operator's SearXNG instance; the top pages are read
(only public addresses, bounded in size and time: `core.search.pages`), and the
model answers from them alone, each page a numbered source block that its
text cannot end. The links follow the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.commands.context import CommandContext
from core.commands.registry import ArgSpec, CommandSpec
from core.llm.base import ChatMessage
from core.search.errors import WebSearchError
from core.search.pages import Fetcher
from core.search.searxng import MAX_QUERY_CHARS, Searcher
from core.search.sources import SOURCE_RULES, Source, sources_block, web_context

NOT_SET_UP = (
    "Web search isn't set up here: the operator sets HERALD_SEARXNG_URL to a SearXNG instance "
    "(see the README)."
)
NOTHING_FOUND = "The web search found nothing for that."
INSTRUCTIONS = (
    "You answer a question from web pages given below as numbered sources. Use only what they say, "
    "cite them like [1], and say so when they do not answer the question."
)


@dataclass(frozen=True, slots=True)
class WebTools:
    """The search engine and the page reader /web uses (None: not configured)."""

    searcher: Searcher
    fetcher: Fetcher


class WebCommands:
    def __init__(self, tools: WebTools | None) -> None:
        self._tools = tools

    def spec(self) -> CommandSpec:
        return CommandSpec(
            "web",
            "Search the web and answer with sources",
            self.web,
            args=(ArgSpec("question", "What to look up", required=True, max_length=MAX_QUERY_CHARS),),
            generates=True,
        )

    async def web(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        if self._tools is None:
            await ctx.reply(NOT_SET_UP)
            return
        question = str(args["question"])
        try:
            sources = await web_context(question, self._tools.searcher, self._tools.fetcher)
        except WebSearchError as exc:
            await ctx.reply(exc.user_message)
            return
        if not sources:
            await ctx.reply(NOTHING_FOUND)
            return
        prompt = [
            ChatMessage("system", f"{INSTRUCTIONS} {SOURCE_RULES}"),
            ChatMessage("user", f"{sources_block(sources)}\n\nQuestion: {question}"),
        ]
        if await ctx.conversation.answer_with(ctx.event, ctx.surface, prompt):
            await ctx.reply(links(sources))


def links(sources: list[Source]) -> str:
    """The numbered links under the answer (titles on one line)."""
    lines = ["Sources:"]
    for source in sources:
        title = " ".join(source.title.split())[:120] or source.url
        lines.append(f"[{source.number}] {title}: {source.url}")
    return "\n".join(lines)

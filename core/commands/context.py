"""What a command handler works with: the event, where to answer, and the conversation.

Everything else a handler needs (memory, the model, stores) is given to it when
it is registered, so commands never reach into the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from core.chat.say import say
from core.llm.base import ChatMessage
from core.platform import Button, Inbound, MessageRef, PlatformError, Surface

log = logging.getLogger("herald.engine")


class Conversation(Protocol):
    """The chat path, as commands may use it (the engine provides it)."""

    async def answer(self, event: Inbound, surface: Surface, text: str) -> object:
        """Answer `text` in the event's conversation, as if it had been said to Herald."""

    async def continue_answer(self, event: Inbound, surface: Surface) -> object:
        """Write the rest of the conversation's last answer, if the model cut it short."""

    async def answer_with(
        self,
        event: Inbound,
        surface: Surface,
        prompt: Sequence[ChatMessage] | Callable[[], Awaitable[Sequence[ChatMessage]]],
    ) -> str:
        """Stream an answer to a prompt the command built (or builds, in the
        conversation's turn, where /cancel stops it), not remembered in the
        conversation; the text shown ('' when none was)."""

    async def charge(self, event: Inbound, tokens: int) -> None:
        """Count tokens the command's own model calls spent against the person's quota."""


@dataclass(frozen=True, slots=True)
class CommandContext:
    event: Inbound
    surface: Surface
    conversation: Conversation

    async def reply(self, text: str, buttons: Sequence[Button] = ()) -> MessageRef | None:
        """Send `text` (in parts where needed); the last part's ref, None when it failed."""
        return await say(self.surface, text, buttons)

    async def notice(self, text: str) -> None:
        """Only for the person who acted, where the platform can (see `Surface.notice`)."""
        try:
            await self.surface.notice(text)
        except PlatformError as exc:
            log.warning("could not show a notice: %s", exc)

    async def conclude(self, text: str) -> None:
        """The outcome of deciding the message a button was on (see `Surface.conclude`)."""
        try:
            await self.surface.conclude(text)
        except PlatformError as exc:
            log.warning("could not show an outcome: %s", exc)

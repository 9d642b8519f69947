"""Platform-neutral values that adapters hand to the core and the core hands back.

Adapters translate platform events into `Inbound` and implement `Surface` for
the place an answer goes; everything else (policy, memory, rendering) is the
core's. Nothing in here knows about Discord or Telegram.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Where a conversation lives: platform + chat + thread (a DM is its own chat)."""

    platform: str
    chat_id: str
    thread_id: str | None = None

    def __str__(self) -> str:
        thread = self.thread_id if self.thread_id is not None else "-"
        return f"{self.platform}:{self.chat_id}:{thread}"


@dataclass(frozen=True, slots=True)
class Author:
    """Who sent an event. `is_chat_admin` is what the platform says about this chat."""

    user_id: str
    display_name: str = ""
    is_chat_admin: bool = False


@dataclass(frozen=True, slots=True)
class CommandCall:
    """A command as the adapter received it.

    Text platforms pass `raw_args` (everything after the command name); platforms
    with typed options (Discord) pass `options`. The core validates either.
    """

    name: str
    raw_args: str | None = None
    options: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One platform event, normalised. The adapter decides only `addressed`."""

    platform: str
    event_id: str
    chat_id: str
    author: Author
    text: str
    addressed: bool
    thread_id: str | None = None
    is_private: bool = False
    command: CommandCall | None = None

    @property
    def conversation(self) -> ConversationKey:
        return ConversationKey(self.platform, self.chat_id, self.thread_id)


class LengthUnit(enum.Enum):
    """How a platform counts its message length limit."""

    CODEPOINTS = "codepoints"
    UTF16 = "utf16"  # Telegram counts UTF-16 code units

    def measure(self, text: str) -> int:
        if self is LengthUnit.UTF16:
            return len(text.encode("utf-16-le")) // 2
        return len(text)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a surface can do, declared up front so the core degrades gracefully."""

    max_length: int
    length_unit: LengthUnit = LengthUnit.CODEPOINTS
    can_edit: bool = True
    min_edit_interval: float = 1.0
    has_slash_commands: bool = False
    has_buttons: bool = False
    markdown: bool = True

    def measure(self, text: str) -> int:
        return self.length_unit.measure(text)


@dataclass(frozen=True, slots=True)
class MessageRef:
    """An opaque handle on a message the surface sent (platform message id)."""

    id: str
    extra: Mapping[str, str] = field(default_factory=dict)


class PlatformError(Exception):
    """A platform API call failed; `user_visible` is never set from platform text."""


class PlatformRateLimited(PlatformError):
    """The platform asked us to slow down for `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MessageNotModified(PlatformError):
    """An edit carried the same text as before; treated as success."""


class Surface(Protocol):
    """Where one answer is rendered: a chat, a thread, a DM, a terminal."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def typing(self) -> None:
        """Show that an answer is being prepared (best effort)."""

    async def send(self, text: str, reply_to: MessageRef | None = None) -> MessageRef:
        """Send a new message; `reply_to` chains continuation parts."""

    async def edit(self, ref: MessageRef, text: str) -> None:
        """Replace the text of a message this surface sent."""

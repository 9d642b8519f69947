"""Platform-neutral values that adapters hand to the core and the core hands back.

Adapters translate platform events into `Inbound` and implement `Surface` for
the place an answer goes; everything else (policy, memory, rendering) is the
core's. Nothing in here knows about Discord or Telegram.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from core.pacing import Bucket


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
    """Who sent an event. `is_chat_admin` is what the platform says about this chat;
    what `roles` allow is the core's decision."""

    user_id: str
    display_name: str = ""
    is_chat_admin: bool = False
    roles: frozenset[str] = frozenset()  # the platform's role ids, where it has roles


@dataclass(frozen=True, slots=True)
class CommandCall:
    """A command as the adapter received it.

    Text platforms pass `raw_args` (everything after the command name, a
    subcommand's name first); platforms with typed options (Discord) pass the
    chosen `subcommand` and its `options`. The core validates either.
    """

    name: str
    raw_args: str | None = None
    options: Mapping[str, object] | None = None
    subcommand: str | None = None


@dataclass(frozen=True, slots=True)
class Posted:
    """The platform's own record of a message, for the chat log: its id, when it was
    sent (seconds since the epoch), and the message it replies to."""

    message_id: str
    at: float
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    """How an event reached the engine. Through the intake (`core.intake`), repeats of
    an event id were already refused; a resumed event was taken over from a replica that
    died while answering it: it was admitted there, and may have been partly answered."""

    deduplicated: bool = False
    resumed: bool = False


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
    #: set for a message someone wrote in the chat (not a button or an interaction)
    posted: Posted | None = None
    #: how it reached the engine (set by the intake's worker; not part of the event)
    arrival: Arrival = Arrival()

    @property
    def conversation(self) -> ConversationKey:
        return ConversationKey(self.platform, self.chat_id, self.thread_id)


#: what a surface's calls are counted as by the platform's rate limits
CallKind = Literal["send", "edit"]


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
    min_edit_interval: float = 1.0  # between a streaming message's edits; not its last
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


class ButtonStyle(enum.Enum):
    """What a button means, for platforms that colour buttons (Discord)."""

    NEUTRAL = "neutral"
    PRIMARY = "primary"
    POSITIVE = "positive"  # approve, confirm
    NEGATIVE = "negative"  # reject, delete


@dataclass(frozen=True, slots=True)
class Button:
    """A button under a message that runs `command` (a command line without the
    slash, e.g. "shorten 3fa2c1d0") as whoever clicks it, through the same checks
    as a typed command. Where a platform has no buttons, the command is shown."""

    label: str
    command: str
    style: ButtonStyle = ButtonStyle.NEUTRAL

    #: Telegram's callback data holds 64 bytes; this leaves room for the prefix
    MAX_COMMAND_BYTES = 56

    def __post_init__(self) -> None:
        if len(self.command.encode()) > self.MAX_COMMAND_BYTES:
            raise ValueError(f"button command too long for every platform: {self.command!r}")

    @property
    def data(self) -> str:
        """What the platform carries back when the button is clicked."""
        return BUTTON_PREFIX + self.command


BUTTON_PREFIX = "cmd:"


class PlatformError(Exception):
    """A platform API call failed. Its text is for the log, never shown to users."""


class PlatformRateLimited(PlatformError):
    """The platform asked us to slow down for `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MessageNotModified(PlatformError):
    """An edit carried the same text as before; treated as success."""


@dataclass(frozen=True, slots=True)
class Visibility:
    """What Herald can read in a chat, as the platform says now (`/history status`,
    `/history on`): measured from the platform, never assumed from settings."""

    #: every message of the chat reaches Herald, not only those addressed to it
    reads_all: bool
    #: their text comes with them (Discord's Message Content intent)
    reads_text: bool = True
    #: the platform can give messages from before recording began (Discord's history)
    has_history: bool = False
    #: what a chat manager or the operator changes so that Herald can read more
    advice: str = ""


class Surface(Protocol):
    """Where one answer is rendered: a chat, a thread, a DM, a terminal.

    Adapters subclass it: `notice` and `conclude` then default to ordinary
    messages, and only surfaces that answer a button click override them.
    """

    @property
    def capabilities(self) -> Capabilities: ...

    async def typing(self) -> None:
        """Show that an answer is being prepared (best effort)."""

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        """Send a new message; `reply_to` chains continuation parts. `buttons` only
        arrive where `capabilities.has_buttons`."""

    async def edit(self, ref: MessageRef, text: str) -> None:
        """Replace the text of a message this surface sent."""

    def bucket(self, kind: CallKind) -> Bucket | None:
        """The platform's rate-limit bucket that a `send` or an `edit` here counts
        against, shared by every answer in the same chat. None: the platform tells
        nothing, and the renderer keeps to `capabilities.min_edit_interval`."""
        return None

    async def delete(self, ref: MessageRef) -> None:
        """Delete a message this surface sent (an answer taken over after a restart that
        came out shorter). Where the platform can't, `PlatformError`."""
        raise PlatformError("this surface cannot delete messages")

    async def notice(self, text: str) -> None:
        """Tell only the person who acted, where the platform can (a refusal after a
        button click: a toast, an ephemeral message). Elsewhere an ordinary message."""
        await self.send(text)

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        """A link that opens a message of this chat (citations), where the platform has
        one: Discord's jump links, Telegram's t.me/c/… for supergroups."""
        return None

    async def visibility(self) -> Visibility | None:
        """What Herald can read in this chat; None where the platform can't tell."""
        return None

    async def conclude(self, text: str) -> None:
        """The message whose button was clicked is decided (approved, rejected…): show
        `text` as its outcome and take its buttons away. Not after a click, or where
        the platform can't, an ordinary message."""
        await self.send(text)


class ForwardingSurface(Surface):
    """A surface that adds something to another and passes every call on unchanged
    (metering, recording): a subclass overrides only what it adds to, so a call new
    to `Surface` reaches the platform through every wrapper."""

    def __init__(self, surface: Surface) -> None:
        self._surface = surface

    @property
    def capabilities(self) -> Capabilities:
        return self._surface.capabilities

    def bucket(self, kind: CallKind) -> Bucket | None:
        return self._surface.bucket(kind)

    async def typing(self) -> None:
        await self._surface.typing()

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        return await self._surface.send(text, reply_to=reply_to, buttons=buttons)

    async def edit(self, ref: MessageRef, text: str) -> None:
        await self._surface.edit(ref, text)

    async def delete(self, ref: MessageRef) -> None:
        await self._surface.delete(ref)

    async def notice(self, text: str) -> None:
        await self._surface.notice(text)

    async def conclude(self, text: str) -> None:
        await self._surface.conclude(text)

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return self._surface.message_link(message_id, thread_id)

    async def visibility(self) -> Visibility | None:
        return await self._surface.visibility()

"""Test helpers: a surface that records what the core sent, and event builders."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from adapters.platform import PlatformBot
from core.commands.registry import parse_command_text
from core.intake.worker import Intake
from core.platform import Author, Button, Capabilities, Inbound, MessageRef, PlatformError, Surface
from core.storage.redis_client import RedisClient

_ids = itertools.count(1)

#: every command Herald offers, as the platforms list them
COMMAND_NAMES = {
    "ask",
    "reset",
    "persona",
    "cancel",
    "continue",
    "draft",
    "copy",
    "regenerate",
    "shorten",
    "campaign",
    "schedule",
    "history",
    "search",
    "summary",
    "catchup",
    "web",
    "account",
    "help",
}


@dataclass
class RecordingSurface(Surface):
    """An in-memory chat: messages by id, in order, with every call recorded."""

    caps: Capabilities = field(default_factory=lambda: Capabilities(max_length=2000, min_edit_interval=0.0))
    messages: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    buttons: dict[str, tuple[Button, ...]] = field(default_factory=dict)  # by message id
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))  # message ids

    @property
    def capabilities(self) -> Capabilities:
        return self.caps

    async def typing(self) -> None:
        self.calls.append(("typing", ""))

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        ref = MessageRef(str(next(self.numbers)))
        self.messages[ref.id] = text
        self.calls.append(("send", text))
        if buttons:
            assert self.caps.has_buttons, "buttons sent to a surface without buttons"
            self.buttons[ref.id] = tuple(buttons)
        return ref

    async def edit(self, ref: MessageRef, text: str) -> None:
        if ref.id not in self.messages:
            raise PlatformError(f"no message {ref.id}")
        self.messages[ref.id] = text
        self.calls.append(("edit", text))

    async def delete(self, ref: MessageRef) -> None:
        if self.messages.pop(ref.id, None) is None:
            raise PlatformError(f"no message {ref.id}")
        self.calls.append(("delete", ref.id))

    @property
    def texts(self) -> list[str]:
        return list(self.messages.values())

    @property
    def last(self) -> str:
        return self.texts[-1] if self.messages else ""


def event(
    text: str,
    *,
    user: str = "u1",
    chat: str = "c1",
    platform: str = "test",
    thread: str | None = None,
    addressed: bool = True,
    private: bool = True,
    chat_admin: bool = False,
    event_id: str | None = None,
) -> Inbound:
    return Inbound(
        platform=platform,
        event_id=event_id or f"e{next(_ids)}",
        chat_id=chat,
        thread_id=thread,
        author=Author(user, user, is_chat_admin=chat_admin),
        text=text,
        addressed=addressed,
        is_private=private,
        command=parse_command_text(text),
    )


async def eventually(
    check: Callable[[], Awaitable[bool]],
    what: str = "the condition",
    timeout: float = 60.0,  # noqa: ASYNC109
) -> None:
    """Poll `check` until it holds. The timeout only bounds a broken run; it paces nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def leases_renewed(redis: RedisClient, keys: Sequence[str], what: str) -> None:
    """Wait until each key's time to live has gone up since the first look: set again."""
    lowest = {key: await redis.pttl(key) for key in keys}

    async def all_renewed() -> bool:
        for key in list(lowest):
            now = await redis.pttl(key)
            if now > lowest[key]:
                del lowest[key]
            else:
                lowest[key] = min(lowest[key], now)
        return not lowest

    await eventually(all_renewed, what)


async def start_serving(bot: PlatformBot, intake: Intake) -> None:
    """Start a bot and its intake as `herald run` does: the bot first (it says which
    platform it answers), then the intake."""
    await bot.start()
    await intake.start()


async def stop_serving(bot: PlatformBot, intake: Intake, grace: float = 10.0) -> None:
    """Stop them as `herald run` does: no more events taken, the answers under way get
    `grace` to finish (what is left is taken over by another replica), then the bot closes."""
    await bot.pause()
    await intake.stop(grace)
    await bot.stop()

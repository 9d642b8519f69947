"""The terminal adapter: chat with Herald through exactly the platforms' engine path.

Tokens appear as they stream (an edit that extends the text prints only the
new part). With a terminal it prompts; with piped input it reads one message
per line, prints each answer and stops at end of input, so it can be scripted.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

from core.chat.engine import Engine
from core.commands.registry import parse_command_text
from core.platform import Author, Button, Capabilities, Inbound, MessageRef, Surface

PLATFORM = "console"
EXIT_WORDS = frozenset({"/quit", "/exit"})


class ConsoleSurface(Surface):
    """Prints messages; an edit that extends the last message prints only the new text."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._texts: dict[str, str] = {}
        self._last: str | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_length=100_000, min_edit_interval=0.0, markdown=False)

    async def typing(self) -> None:
        return None

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        ref = MessageRef(str(len(self._texts) + 1))
        if self._last is not None:
            self._out.write("\n")
        self._write(ref, text)
        return ref

    async def edit(self, ref: MessageRef, text: str) -> None:
        before = self._texts.get(ref.id, "")
        if ref.id == self._last and text.startswith(before):
            self._out.write(text[len(before) :])
            self._texts[ref.id] = text
            self._out.flush()
        else:
            self._out.write("\n")
            self._write(ref, text)

    def _write(self, ref: MessageRef, text: str) -> None:
        self._out.write(text)
        self._out.flush()
        self._texts[ref.id] = text
        self._last = ref.id

    def close(self) -> None:
        if self._last is not None:
            self._out.write("\n")
            self._out.flush()


async def read_lines(stream: TextIO, prompt: str | None, out: TextIO) -> AsyncIterator[str]:
    """Lines from `stream` without blocking the event loop (a daemon thread reads)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    want = threading.Event()

    def reader() -> None:
        while True:
            want.wait()
            want.clear()
            if prompt is not None:
                out.write(prompt)
                out.flush()
            line = stream.readline()
            loop.call_soon_threadsafe(queue.put_nowait, line if line else None)
            if not line:
                return

    threading.Thread(target=reader, name="herald-console-input", daemon=True).start()
    while True:
        want.set()
        line = await queue.get()
        if line is None:
            return
        yield line.rstrip("\r\n")


class ConsoleAdapter:
    def __init__(self, engine: Engine, *, user: str, chat: str, out: TextIO = sys.stdout) -> None:
        self._engine = engine
        self._user = user
        self._chat = chat
        self._out = out

    def inbound(self, line: str) -> Inbound:
        """A terminal is a private chat in which every line is addressed to Herald."""
        return Inbound(
            platform=PLATFORM,
            event_id=uuid.uuid4().hex,
            chat_id=self._chat,
            author=Author(self._user, self._user, is_chat_admin=True),
            text=line,
            addressed=True,
            is_private=True,
            command=parse_command_text(line),
        )

    async def run(self, lines: AsyncIterator[str]) -> None:
        async for line in lines:
            if not line.strip():
                continue
            if line.strip().lower() in EXIT_WORDS:
                return
            surface = ConsoleSurface(self._out)
            await self._engine.handle(self.inbound(line), surface)
            surface.close()

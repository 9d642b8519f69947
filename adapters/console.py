"""The terminal adapter: chat with Herald through exactly the platforms' engine path.

Tokens appear as they stream: an edit that extends the message printed last
prints only the new part; a message edited after something else was printed
is printed again, whole, on a new line. Everything printed has its control
characters removed (newlines and tabs stay), so neither the model nor text
Herald quotes can move the cursor, retitle the window or overwrite a line.
Input is read as bytes; bytes that are not valid in the terminal's encoding
become U+FFFD (�) instead of failing the message.

Lines are handled concurrently, as the platforms handle events (the engine's
conversation lock keeps answers in order), so a line typed while an answer
streams is seen at once:

- With a terminal, every line starts at once: `/cancel` typed during an
  answer stops it. The prompt is shown whenever nothing is running.
- With piped input (scripts) the output keeps the input's order: a line waits
  until every earlier line is done, except `/cancel`, which waits only until
  the line before it has printed something (or ended) and then stops it, so a
  script's `/cancel` deterministically stops the answer above it.
- Ctrl-C while something runs is `/cancel` (the engine's own path); pressed
  again before that answer has stopped, or with nothing running, it ends the
  console. End of input or `/quit` lets running answers finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from types import MappingProxyType
from typing import TextIO

from core.chat.engine import Engine
from core.commands.registry import parse_command_text
from core.platform import Author, Button, Capabilities, Inbound, MessageRef, Surface

PLATFORM = "console"
EXIT_WORDS = frozenset({"/quit", "/exit"})
PROMPT = "› "
#: lines read ahead of the ones being answered, at most (a long script stays in its file)
MAX_PENDING = 64

#: C0 controls but tab and newline, DEL and the C1 controls (CSI, OSC… as one byte)
_UNPRINTABLE = MappingProxyType(
    dict.fromkeys(c for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\t\n")
)

log = logging.getLogger(__name__)


def printable(text: str) -> str:
    """`text` safe for a terminal: escape sequences, BEL, backspace and carriage
    returns (which could rewrite what is shown) removed; newlines and tabs kept."""
    return text.translate(_UNPRINTABLE)


class Screen:
    """The terminal every line's surface prints on; each message ends its line
    before anything else is printed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._texts: dict[str, str] = {}  # messages that may still be edited, by id
        self._open: str | None = None  # the message whose line is not ended yet
        self._ids = itertools.count(1)

    def new_ref(self) -> MessageRef:
        return MessageRef(str(next(self._ids)))

    def show(self, ref: MessageRef, text: str) -> None:
        """Print a new or edited message: only its new part if it extends the open line."""
        before = self._texts.get(ref.id)
        if ref.id == self._open and before is not None and text.startswith(before):
            self._write(text[len(before) :])
        else:
            self.end_line()
            self._write(text)
        self._texts[ref.id] = text
        self._open = ref.id

    def end_line(self, of: Collection[str] | None = None) -> None:
        """End the open line; with `of`, only if it is one of those messages."""
        if self._open is not None and (of is None or self._open in of):
            self._write("\n")
            self._open = None

    def forget(self, ids: Collection[str]) -> None:
        """These messages will not change again."""
        for message_id in ids:
            self._texts.pop(message_id, None)

    def prompt(self, text: str) -> None:
        """Ask for input; the line the person types ends the prompt's line."""
        self.end_line()
        self._write(text)

    def leave(self) -> None:
        """Ctrl-C at a prompt: the shell's prompt starts on a line of its own."""
        self._write("\n")
        self._open = None

    def _write(self, text: str) -> None:
        self._out.write(printable(text))
        self._out.flush()


class ConsoleSurface(Surface):
    """One line's replies on the shared screen; `shown` is set at its first message (or its end)."""

    def __init__(self, screen: Screen) -> None:
        self._screen = screen
        self._ids: list[str] = []
        self.shown = asyncio.Event()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_length=100_000, min_edit_interval=0.0, markdown=False)

    async def typing(self) -> None:
        return None

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        ref = self._screen.new_ref()
        self._ids.append(ref.id)
        self._screen.show(ref, text)
        self.shown.set()
        return ref

    async def edit(self, ref: MessageRef, text: str) -> None:
        self._screen.show(ref, text)

    def close(self) -> None:
        self.shown.set()
        self._screen.end_line(self._ids)
        self._screen.forget(self._ids)


def _raw_lines(fd: int) -> Iterator[bytes]:
    """The lines (with their newline) read from file descriptor `fd`, the last one
    perhaps without. Unbuffered reads: a thread blocked here holds no lock of
    `sys.stdin`'s, which the interpreter would wait for at exit."""
    pending = bytearray()
    while chunk := os.read(fd, 65536):
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            yield bytes(pending[: end + 1])
            del pending[: end + 1]
    if pending:
        yield bytes(pending)


async def read_lines(fd: int, encoding: str = "utf-8") -> AsyncIterator[str]:
    """Lines from file descriptor `fd`, bytes invalid in `encoding` replaced with U+FFFD,
    without blocking the event loop: a daemon thread reads each line as soon as the
    previous one is taken."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    want = threading.Event()

    def hand(line: bytes) -> None:
        want.wait()
        want.clear()
        with contextlib.suppress(RuntimeError):  # the console has ended (its loop is closed)
            loop.call_soon_threadsafe(queue.put_nowait, line)

    def reader() -> None:
        with contextlib.suppress(OSError):  # a terminal that went away ends the input too
            for line in _raw_lines(fd):
                hand(line)
        hand(b"")

    threading.Thread(target=reader, name="herald-console-input", daemon=True).start()
    while True:
        want.set()
        line = await queue.get()
        if not line:
            return
        yield line.decode(encoding, errors="replace").rstrip("\r\n")


def is_cancel(line: str) -> bool:
    command = parse_command_text(line)
    return command is not None and command.name == "cancel"


class ConsoleAdapter:
    """Hands each line to the engine as its own task (see the module doc for the order)."""

    def __init__(
        self,
        engine: Engine,
        *,
        user: str,
        chat: str,
        out: TextIO = sys.stdout,
        interactive: bool = False,
    ) -> None:
        self._engine = engine
        self._user = user
        self._chat = chat
        self._interactive = interactive
        self._screen = Screen(out)
        self._running: set[asyncio.Task[None]] = set()
        self._active: set[asyncio.Task[None]] = set()  # past their wait: being handled
        self._stopping: set[asyncio.Task[None]] = set()  # what the last Ctrl-C stops
        self._previous: ConsoleSurface | None = None  # the latest line that is not /cancel
        self._quit = asyncio.Event()
        self._reading = True

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
        """Handle lines until end of input or an exit word (running answers finish
        first), or until Ctrl-C ends the console (running answers are dropped)."""
        self._show_prompt()
        with self._ctrl_c():
            feeding = asyncio.create_task(self._feed(lines), name="herald-console-feed")
            quitting = asyncio.create_task(self._quit.wait())
            try:
                done, _ = await asyncio.wait({feeding, quitting}, return_when=asyncio.FIRST_COMPLETED)
                if feeding in done:
                    feeding.result()  # its errors, if any
            finally:
                for task in (feeding, quitting, *self._running):
                    task.cancel()
                await asyncio.gather(feeding, quitting, *self._running, return_exceptions=True)
                if self._quit.is_set() and self._interactive:
                    self._screen.leave()
                else:
                    self._screen.end_line()

    async def _feed(self, lines: AsyncIterator[str]) -> None:
        async for line in lines:
            text = line.strip()
            if text.lower() in EXIT_WORDS:
                break
            if text:
                while len(self._running) >= MAX_PENDING:
                    await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
                self._dispatch(line, in_order=not self._interactive)
        self._reading = False
        while self._running:
            await asyncio.wait(set(self._running))

    def _dispatch(self, line: str, *, in_order: bool) -> None:
        """Start handling `line`; `in_order`: after the lines before it (see module doc)."""
        cancel = is_cancel(line)
        after: set[asyncio.Task[None]] = set()
        shown: asyncio.Event | None = None
        if in_order and cancel:
            shown = self._previous.shown if self._previous is not None else None
        elif in_order:
            after = set(self._running)
        surface = ConsoleSurface(self._screen)
        task = asyncio.create_task(self._handle(line, surface, after, shown))
        self._running.add(task)
        task.add_done_callback(self._done)
        if not cancel:
            self._previous = surface

    async def _handle(
        self,
        line: str,
        surface: ConsoleSurface,
        after: Collection[asyncio.Task[None]],
        shown: asyncio.Event | None,
    ) -> None:
        try:
            if after:
                await asyncio.wait(after)
            if shown is not None:
                await shown.wait()
            task = asyncio.current_task()
            if task is not None:
                self._active.add(task)
            await self._engine.handle(self.inbound(line), surface)
        finally:
            surface.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        for tasks in (self._running, self._active, self._stopping):
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("console line failed", exc_info=task.exception())
        if not self._running and self._reading and not self._quit.is_set():
            self._show_prompt()

    def _show_prompt(self) -> None:
        if self._interactive:
            self._screen.prompt(PROMPT)

    def _interrupt(self) -> None:
        """Ctrl-C: stop the answers being handled, through `/cancel`; pressed again
        before they stopped, or with nothing running, end the console."""
        if not self._running or self._stopping:
            self._quit.set()
            return
        self._stopping = set(self._active)
        self._dispatch("/cancel", in_order=False)

    @contextlib.contextmanager
    def _ctrl_c(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) calls `_interrupt` while the console runs, where the loop can
        take signals (the main thread on Unix); elsewhere it ends the program as usual."""
        loop = asyncio.get_running_loop()
        installed = True
        try:
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        except (NotImplementedError, RuntimeError, ValueError):
            installed = False
        try:
            yield
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

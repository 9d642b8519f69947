"""The built-in model's server as a child process that Herald starts and stops.

A child, not a library in Herald's own process: llama.cpp's memory (the model
is hundreds of MB) and any crash of its native code stay out of the bot, which
keeps answering "the model is unavailable" and starts a new child. Herald holds
the listening socket and hands it to each child, so the address never changes
and no port can be taken in between. The child runs in its own session, so a
Ctrl-C meant for the console's answer never reaches it, and it dies with Herald
(`die_with_parent`) even when Herald is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from bots.child_process import die_with_parent
from bots.local_model.server import API_KEY_ENV, READY

#: stderr lines kept to explain a child that exits
TAIL_LINES = 20


class ModelProcessError(RuntimeError):
    """The model process could not start; the message says why, for a person."""


@dataclass(frozen=True, slots=True)
class ModelProcessConfig:
    context: int
    threads: int
    load_timeout: float = 300.0


def default_threads() -> int:
    """The CPUs this process may use, at most 8 (llama.cpp gains little beyond on
    small models, and the bot keeps a core of its own on bigger machines)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, available))


class LocalModelProcess:
    def __init__(self, config: ModelProcessConfig, *, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.api_key = secrets.token_urlsafe(32)  # only Herald may use the model
        self.log = logger or logging.getLogger("herald.model")
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=TAIL_LINES)
        self._readers: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, model: Path) -> None:
        """Start the child serving `model` and wait until the model is loaded; `ModelProcessError` with
        the child's own reason when it cannot load (a corrupt file, too little memory)."""
        if self.running:
            return
        fd = self._listener.fileno()
        env = {**os.environ, API_KEY_ENV: self.api_key}
        args = ["--model", str(model), "--fd", str(fd)]
        args += ["--context", str(self.config.context), "--threads", str(self.config.threads)]
        self._stderr.clear()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bots.local_model.server",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(fd,),
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            async with asyncio.timeout(self.config.load_timeout):
                await self._wait_ready(self._proc)
        except TimeoutError:
            await self.stop()
            raise ModelProcessError(
                f"the model did not load within {self.config.load_timeout:.0f} s (HERALD_LOCAL_LOAD_TIMEOUT)"
            ) from None
        except ModelProcessError:
            await self.stop()
            raise
        assert self._proc.stderr is not None and self._proc.stdout is not None
        self._readers = [
            asyncio.create_task(self._log(stream)) for stream in (self._proc.stdout, self._proc.stderr)
        ]
        self.log.info("built-in model process %d serves %s at %s", self._proc.pid, model, self.url)

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        collecting = asyncio.create_task(self._collect(proc.stderr))
        try:
            while line := await proc.stdout.readline():
                if line.decode(errors="replace").strip() == READY:
                    return
            await proc.wait()
            with contextlib.suppress(TimeoutError):  # what it said before exiting
                async with asyncio.timeout(2):
                    await collecting
            reason = next((ln for ln in reversed(self._stderr) if ln.startswith("cannot load")), None)
            reason = reason or (self._stderr[-1] if self._stderr else f"exit status {proc.returncode}")
            raise ModelProcessError(f"the built-in model could not start: {reason}")
        finally:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    async def _log(self, stream: asyncio.StreamReader) -> None:
        """Keep the pipes drained; what the server says goes to Herald's log."""
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr.append(text)
            if text:
                self.log.debug("model process: %s", text)

    async def wait(self) -> int:
        """Until the child exits (its status)."""
        if self._proc is None:
            raise RuntimeError("the model process is not started")
        return await self._proc.wait()

    def last_words(self) -> str:
        return " / ".join(line for line in self._stderr if line)[-500:]

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; the socket stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for reader in self._readers:
            reader.cancel()
        self._readers = []

    async def close(self) -> None:
        await self.stop()
        self._listener.close()

"""The built-in model as one `LLMClient`: its file found or downloaded, its process
started, watched and stopped with the client, and the client that talks to it.

Everything above sees a model client like any other; what is particular to
running a model on this machine stays here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bots.local_model.download import ModelUnavailable, cached_model_file, ensure_model_file
from bots.local_model.process import LocalModelProcess, ModelProcessConfig, ModelProcessError
from core.llm.base import ModelInfo
from core.llm.forwarding import ForwardingLLM
from core.llm.llamacpp import LlamaCppClient
from core.llm.model_source import ModelSource
from core.llm.transport import DEFAULT_OPTIONS, TransportOptions

#: the longest wait between attempts to start a model process that keeps failing
MAX_RESTART_DELAY = 60.0


class LocalModelError(Exception):
    """The built-in model cannot be used; the message says why and what to do."""


def missing_package() -> str | None:
    """Why the built-in model cannot run in this installation, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return (
            "The built-in model needs llama-cpp-python: install Herald with "
            "`pip install 'herald[local]'` (./dev does), or set HERALD_TGI_URL to a model server"
        )
    return None


class BuiltInModel(ForwardingLLM):
    def __init__(
        self,
        source: ModelSource,
        process: ModelProcessConfig,
        *,
        options: TransportOptions = DEFAULT_OPTIONS,
        announce: Callable[[str], None] | None = None,
        cache_dir: Path | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.source = source
        self.log = logger or logging.getLogger("herald.model")
        self.process = LocalModelProcess(process, logger=self.log)
        self.client = LlamaCppClient(self.process.url, options=_with_key(options, self.process.api_key))
        super().__init__(self.client)
        self._announce = announce or self.log.warning
        self._cache_dir = cache_dir
        self._file: Path | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def file(self) -> Path | None:
        """The model file in use; before start, the one already on disk, if any."""
        return self._file or cached_model_file(self.source, cache_dir=self._cache_dir)

    async def start(self) -> ModelInfo:
        """Find or download the file, start the process, and connect; `LocalModelError`
        names what went wrong."""
        if self._watcher is not None:
            return self.client.info
        reason = missing_package()
        if reason is not None:
            raise LocalModelError(reason)
        try:
            self._file = await asyncio.to_thread(
                ensure_model_file, self.source, announce=self._announce, cache_dir=self._cache_dir
            )
            await self.process.start(self._file)
        except (ModelUnavailable, ModelProcessError) as exc:
            reason = str(exc)
            raise LocalModelError(reason[:1].upper() + reason[1:]) from None
        self._closing = False
        self._watcher = asyncio.create_task(self._watch(self._file))
        return await self.client.start()

    async def _watch(self, model: Path) -> None:
        """Start the process again whenever it dies (a crash in llama.cpp, the OOM
        killer): the bot stays up, and answers fail as "unavailable" meanwhile."""
        delay = 1.0
        while not self._closing:
            if self.process.running:
                status = await self.process.wait()
                if self._closing:
                    return
                self.log.error(
                    "the built-in model process exited (status %s: %s); starting it again in %.0f s",
                    status,
                    self.process.last_words() or "no message",
                    delay,
                )
                await self.process.stop()
            await asyncio.sleep(delay)
            try:
                await self.process.start(model)
                delay = 1.0
            except ModelProcessError as exc:
                delay = min(delay * 2, MAX_RESTART_DELAY)
                self.log.error("could not start the built-in model again: %s; next try in %.0f s", exc, delay)

    async def health(self) -> bool:
        return self.process.running and await self.client.health()

    async def close(self) -> None:
        """Stop the process for good (a new `BuiltInModel` starts another)."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.client.close()
        await self.process.close()


def _with_key(options: TransportOptions, key: str) -> TransportOptions:
    return replace(options, api_key=key)

"""A message that shows the progress of long work, edited within the platform's limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from core.platform import MessageNotModified, MessageRef, PlatformError, PlatformRateLimited, Surface

log = logging.getLogger("herald.engine")


class ProgressMessage:
    """One message that shows how long work is going (a backfill's pages, a summary's
    pieces): edited as it goes but no more often than the surface allows (a text that
    must wait is shown when it may be, the latest one only); the final text is always
    shown. `sent` learns the message's id when it is first sent (a backfill keeps it,
    to go on editing it after a restart)."""

    def __init__(
        self,
        surface: Surface,
        ref: MessageRef | None,
        sent: Callable[[MessageRef], Awaitable[None]] | None = None,
    ) -> None:
        self._surface = surface
        self._ref = ref
        self._sent = sent
        self._interval = surface.capabilities.min_edit_interval
        self._shown = -math.inf  # when the last send or edit came back (monotonic)
        self._pending: str | None = None
        self._flush: asyncio.Task[None] | None = None
        self._putting = False  # the flush is sending or editing (not only waiting)

    def show(self, text: str) -> None:
        self._pending = text
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._show_pending())

    async def final(self, text: str) -> None:
        self._pending = None
        flush = self._flush
        if flush is not None and not flush.done():
            if self._putting:
                await flush  # a message on its way: its id is needed for the final edit
            else:
                flush.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flush
        await self._wait()
        await self._put(text)

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()

    async def _show_pending(self) -> None:
        await self._wait()
        text, self._pending = self._pending, None
        if text is not None:
            self._putting = True
            try:
                await self._put(text)
            finally:
                self._putting = False

    async def _wait(self) -> None:
        due = self._shown + self._interval - time.monotonic()
        if due > 0:
            await asyncio.sleep(due)

    async def _put(self, text: str) -> None:
        try:
            if self._ref is None:
                self._ref = await self._surface.send(text)
                if self._sent is not None:
                    await self._sent(self._ref)
            elif self._surface.capabilities.can_edit:
                await self._surface.edit(self._ref, text)
        except MessageNotModified:
            pass
        except PlatformRateLimited as exc:
            log.info("progress not shown (rate limited): %s", exc)
        except PlatformError as exc:
            # deleted, most likely: the next text goes out as a new message
            log.info("progress could not be edited: %s", exc)
            self._ref = None
        except RedisError as exc:
            log.warning("could not remember where the progress message is: %s", exc)
        finally:
            self._shown = time.monotonic()

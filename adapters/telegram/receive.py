"""Receiving Telegram's updates durably: Telegram is told an update arrived only once it
was taken in (kept in the intake, or handled).

python-telegram-bot's `Updater` acknowledges too early for that: its polling confirms an
offset with the next getUpdates right after queueing the batch, and its webhook server
answers 200 before the update is handled. So Herald receives by itself:

- polling: the offset passed to getUpdates moves past an update only after it was taken
  in (an offset confirms every update below it); while Redis can't keep one, the same
  update is tried again and Telegram keeps the rest;
- webhook: 200 only after the update was taken in; 503 while Redis can't keep it, so
  Telegram delivers it again.

`take_in` raises `RedisError` when the update could not be kept; anything else it
raises is a bug, logged, and the update is passed over (one bad update must not hold
up the others forever).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError
from telegram import Bot, Update
from telegram.error import TelegramError

TakeIn = Callable[[Update], Awaitable[None]]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: the longest pause between tries (getUpdates failing, Redis away)
MAX_PAUSE = 30.0


class Backoff:
    """Pauses that grow while something keeps failing: 1 s, 2 s, 4 s… up to `MAX_PAUSE`."""

    def __init__(self, first: float = 1.0, longest: float = MAX_PAUSE) -> None:
        self._first = first
        self._longest = longest
        self._next = first

    def next(self) -> float:
        pause, self._next = self._next, min(self._longest, self._next * 2)
        return pause

    def reset(self) -> None:
        self._next = self._first


class Poller:
    """Long polling, one update at a time, in Telegram's order."""

    def __init__(
        self,
        bot: Bot,
        take_in: TakeIn,
        *,
        timeout: int,
        allowed_updates: Sequence[str],
        on_error: Callable[[TelegramError], None],
        logger: logging.Logger,
    ) -> None:
        self._bot = bot
        self._take_in = take_in
        self._timeout = timeout
        self._allowed = list(allowed_updates)
        self._on_error = on_error
        self._log = logger
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fetch: asyncio.Task[tuple[Update, ...]] | None = None
        #: the offset for the next getUpdates: every update below it was taken in
        self.offset = 0
        self._confirmed = 0  # the offset Telegram was last given

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="telegram-polling")

    async def stop(self) -> None:
        """Fetch no more: a held getUpdates is dropped, an update being taken in finishes
        (those after it stay with Telegram, unconfirmed)."""
        self._stopping.set()
        if self._fetch is not None:
            self._fetch.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            updates = await self._updates()
            if updates is None:  # failed (said why) or stopped
                if not await self._rest(backoff.next()):
                    break
                continue
            backoff.reset()
            for update in updates:
                if self._stopping.is_set() or not await self._take(update):
                    break
                self.offset = update.update_id + 1
        await self._confirm()

    async def _updates(self) -> tuple[Update, ...] | None:
        offset = self.offset
        self._fetch = asyncio.create_task(
            self._bot.get_updates(offset=offset or None, timeout=self._timeout, allowed_updates=self._allowed)
        )
        try:
            updates = await self._fetch
            self._confirmed = offset
            return updates
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return None  # stop() dropped the held request
        except TelegramError as exc:
            self._on_error(exc)
            return None
        except Exception:  # an answer PTB can't read: said, and tried again later
            self._log.exception("Telegram: could not read the updates")
            return None
        finally:
            self._fetch = None

    async def _take(self, update: Update) -> bool:
        """Take `update` in, trying again while Redis can't keep it; False when stopped first."""
        backoff = Backoff()
        while True:
            try:
                await self._take_in(update)
                return True
            except RedisError as exc:
                self._log.warning(
                    "Telegram: could not keep update %s (%s); Telegram keeps it until it is",
                    update.update_id,
                    exc,
                )
            except Exception:
                self._log.exception("Telegram: taking in update %s failed; passed over", update.update_id)
                return True
            if not await self._rest(backoff.next()):
                return False

    async def _rest(self, seconds: float) -> bool:
        """Pause; False when stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _confirm(self) -> None:
        """Tell Telegram what was taken in since the last getUpdates (as PTB does on stop),
        so that the next poller does not get it again."""
        if self.offset == self._confirmed:
            return
        try:
            await self._bot.get_updates(offset=self.offset, timeout=0, limit=1, allowed_updates=self._allowed)
        except Exception as exc:  # stopping all the same
            self._log.info("Telegram: could not confirm the last updates (%s); they may come again", exc)


class WebhookServer:
    """Telegram's webhook: a POST of one update at a time, answered 200 once taken in."""

    def __init__(
        self,
        bot: Bot,
        take_in: TakeIn,
        *,
        path: str,
        secret: str,
        host: str,
        port: int,
        logger: logging.Logger,
    ) -> None:
        self._bot = bot
        self._take_in = take_in
        self._path = "/" + path.lstrip("/")
        self._secret = secret.encode()
        self._host = host
        self._port = port
        self._log = logger
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (`OSError` when the address can't be had)."""
        app = web.Application()
        app.router.add_post(self._path, self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Listen no more; deliveries being taken in finish first."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            self._log.warning("Telegram webhook: a delivery without the right secret token was refused")
            return web.Response(status=403)
        update = self._update(await request.read())
        if update is None:
            return web.Response(status=400)
        try:
            await self._take_in(update)
        except RedisError as exc:
            self._log.warning(
                "Telegram webhook: could not keep update %s (%s); Telegram retries", update.update_id, exc
            )
            return web.Response(status=503)
        except Exception:
            self._log.exception("Telegram webhook: taking in update %s failed; passed over", update.update_id)
        return web.Response(status=200)

    def _update(self, body: bytes) -> Update | None:
        """The update a delivery carries; None (said in the log) when it carries none."""
        try:
            data: Any = orjson.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("not an Update object")
            return Update.de_json(data, self._bot)
        except Exception as exc:  # whatever PTB makes of a damaged update
            self._log.warning("Telegram webhook: refused a delivery that is not an update (%s)", exc)
            return None

"""The Telegram Bot API emulator as a process of its own, with Telegram's flood limits.

    .venv/bin/python -m bench.telegram_server --port 0 --control-port 0 [--no-limits]

It is `tests.emulators.telegram.TelegramEmulator` (unchanged: subclassed here) plus:

* **flood control** on the methods that write a message (`sendMessage`,
  `editMessageText`), per Telegram's Bot FAQ ("My bot is hitting limits"): in one
  chat about one message a second, with short bursts allowed; at most 20 messages a
  minute to one group; about 30 messages a second over all chats. Each is a token
  bucket (private chat: 1/s, burst `--private-burst`; group: 20/60 s, burst 20;
  the bot: `--global-per-second`/s, burst the same). A write that finds a bucket
  empty is refused, before anything else is checked, with Telegram's answer: 429,
  `"Too Many Requests: retry after N"` and `"parameters": {"retry_after": N}`, N the
  whole seconds until that bucket has a token again (at least 1). The emulator alone
  enforces none of this: it only refuses what a test queues with `fail_next`.
  Telegram does not publish whether edits count; real bots get 429s on edits, so
  they count here as sends do.
* **a record of every write** with `time.monotonic()` (system-wide on Linux, so the
  bench compares it with the model server's token times): method, chat, message,
  outcome (error code) and the text's length and hash, plus each bot message's text
  as it ends.
* **a control API** on `--control-port` (JSON): `POST /control/messages`
  `{"messages": [{"user_id", "first_name", "text"}]}` opens each user's private chat
  and queues the message (all in one batch for getUpdates); `POST /control/report`
  `{"chats": [...], "t0", "t1"}` answers the writes and final texts of those chats and
  every call received between t0 and t1, counted by method and error code;
  `GET /control/calls` counts all calls so far by method.

It prints one line, `telegram emulator at URL control at URL`, once both listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.emulators.telegram import ApiError, TelegramEmulator

LIMITED = ("sendmessage", "editmessagetext")
RECORDED = ("sendmessage", "editmessagetext", "deletemessage", "sendchataction")


@dataclass
class Bucket:
    """A token bucket: `rate` tokens a second up to `burst`."""

    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> float:
        """Take a token and answer 0, or answer the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class Limits:
    private_per_second: float = 1.0
    private_burst: float = 3.0
    group_per_minute: float = 20.0
    global_per_second: float = 30.0
    enabled: bool = True


class LimitedEmulator(TelegramEmulator):
    """The emulator with Telegram's flood limits on message writes, and a record of writes."""

    def __init__(self, *, limits: Limits, **options: Any) -> None:
        super().__init__(**options)
        self.limits = limits
        self._buckets: dict[int, Bucket] = {}
        self._global: Bucket | None = None
        #: (t, method, chat_id, message_id, error_code, text length, text crc32, limit hit)
        self.writes: list[tuple[float, str, int, int, int, int, int, str]] = []
        self.refused_by: Counter[str] = Counter()
        for name in RECORDED:
            original_name, handler = self._handlers[name]
            self._handlers[name] = (original_name, self._recorded(name, handler))

    def _limit(self, chat_id: int, now: float) -> tuple[float, str]:
        chat = self._chats.get(chat_id)
        if chat is None:
            return 0.0, ""
        bucket = self._buckets.get(chat_id)
        if bucket is None:
            if chat.get("type") == "private":
                rate, burst = self.limits.private_per_second, self.limits.private_burst
            else:
                rate, burst = self.limits.group_per_minute / 60.0, self.limits.group_per_minute
            bucket = self._buckets[chat_id] = Bucket(rate, burst, burst, now)
        if self._global is None:
            g = self.limits.global_per_second
            self._global = Bucket(g, g, g, now)
        # Look at both before taking from either: a refusal costs no token.
        wait_chat = _peek(bucket, now)
        wait_global = _peek(self._global, now)
        if wait_chat > 0 or wait_global > 0:
            return (wait_chat, "chat") if wait_chat >= wait_global else (wait_global, "global")
        bucket.take(now)
        self._global.take(now)
        return 0.0, ""

    def _recorded(self, name: str, handler: Any) -> Any:
        async def handle(p: dict[str, Any]) -> Any:
            now = time.monotonic()
            try:
                chat_id = int(p.get("chat_id") or 0)
            except (TypeError, ValueError):
                chat_id = 0
            hit = ""
            try:
                if self.limits.enabled and name in LIMITED:
                    wait, hit = self._limit(chat_id, now)
                    if wait > 0:
                        self.refused_by[hit] += 1
                        retry = max(1, math.ceil(wait))
                        raise ApiError(429, f"Too Many Requests: retry after {retry}", {"retry_after": retry})
                result = await handler(p)
            except ApiError as err:
                message_id = _int(p.get("message_id"))
                self.writes.append((now, name, chat_id, message_id, err.error_code, 0, 0, hit))
                raise
            message_id = _int(p.get("message_id"))
            text = ""
            if isinstance(result, dict):
                message_id = _int(result.get("message_id")) or message_id
                text = str(result.get("text", ""))
            crc = zlib.crc32(text.encode())
            self.writes.append((time.monotonic(), name, chat_id, message_id, 0, len(text), crc, ""))
            return result

        return handle

    # -- control ------------------------------------------------------------------------

    async def control_messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        at = time.monotonic()
        for item in body["messages"]:
            chat = self.private_chat(int(item["user_id"]), str(item.get("first_name", "Ada")))
            self.send_user_message(chat, self.user(int(item["user_id"])), str(item["text"]))
        return web.json_response({"pushed_at": at})

    async def control_report(self, request: web.Request) -> web.Response:
        body = await request.json()
        chats = {int(c) for c in body.get("chats", [])}
        t0, t1 = float(body.get("t0", 0.0)), float(body.get("t1", math.inf))
        writes = [list(w) for w in self.writes if w[2] in chats]
        finals = [
            {
                "chat_id": m.chat_id,
                "message_id": m.message_id,
                "text": m.text,
                "edits": m.edits,
                "deleted": m.deleted,
            }
            for (chat_id, _), m in self._bot_messages.items()
            if chat_id in chats
        ]
        calls: Counter[str] = Counter()
        for call in self.calls:
            if t0 <= call.at <= t1:
                code = "ok" if call.error is None else call.error.split(":", 1)[0]
                calls[f"{call.method}|{code}"] += 1
        return web.json_response(
            {"writes": writes, "finals": finals, "calls": dict(calls), "refused_by": dict(self.refused_by)}
        )

    async def control_calls(self, request: web.Request) -> web.Response:
        return web.json_response(dict(Counter(c.method for c in self.calls)))


def _peek(bucket: Bucket, now: float) -> float:
    tokens = min(bucket.burst, bucket.tokens + (now - bucket.at) * bucket.rate)
    return 0.0 if tokens >= 1.0 else (1.0 - tokens) / bucket.rate


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def serve(port: int, control_port: int, limits: Limits, token: str) -> None:
    emulator = LimitedEmulator(limits=limits, token=token, bot_username="BenchBot", bot_first_name="Bench")
    url = await emulator.start(port=port)
    control = web.Application()
    control.router.add_post("/control/messages", emulator.control_messages)
    control.router.add_post("/control/report", emulator.control_report)
    control.router.add_get("/control/calls", emulator.control_calls)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    control_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    gc.collect()
    gc.freeze()
    print(f"telegram emulator at {url} control at {control_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The Telegram Bot API emulator, with flood limits.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--token", default="123456:BENCH-TOKEN")
    parser.add_argument("--no-limits", action="store_true", help="no flood control at all")
    parser.add_argument("--private-per-second", type=float, default=1.0)
    parser.add_argument("--private-burst", type=float, default=3.0)
    parser.add_argument("--group-per-minute", type=float, default=20.0)
    parser.add_argument("--global-per-second", type=float, default=30.0)
    args = parser.parse_args(argv)
    limits = Limits(
        private_per_second=args.private_per_second,
        private_burst=args.private_burst,
        group_per_minute=args.group_per_minute,
        global_per_second=args.global_per_second,
        enabled=not args.no_limits,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.control_port, limits, args.token))


if __name__ == "__main__":
    main()

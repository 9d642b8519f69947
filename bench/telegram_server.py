"""The Telegram Bot API emulator as a process of its own, with Telegram's flood limits.

    .venv/bin/python -m bench.telegram_server --port 0 --control-port 0 [--no-limits]

It is `tests.emulators.telegram.TelegramEmulator` (subclassed here) plus:

* **flood control** on the methods that write a message (`sendMessage`,
  `editMessageText`), per Telegram's Bot FAQ ("My bot is hitting limits"): the
  emulator's own `flood_limits` option (see `TelegramEmulator`), on unless
  `--no-limits`: token buckets (private chat: `--private-per-second`/s, burst
  `--private-burst`; group: `--group-per-minute`/60 s, burst the same; the bot:
  `--global-per-second`/s, burst the same); a write that finds one empty gets
  Telegram's 429 `"Too Many Requests: retry after N"` with `retry_after` N.
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
from typing import Any

from aiohttp import web

from tests.emulators.telegram import ApiError, FloodLimits, FloodWait, TelegramEmulator

RECORDED = ("sendmessage", "editmessagetext", "deletemessage", "sendchataction")


class LimitedEmulator(TelegramEmulator):
    """The emulator with Telegram's flood limits on message writes, and a record of writes."""

    def __init__(self, *, limits: FloodLimits | None, **options: Any) -> None:
        super().__init__(flood_limits=limits, **options)
        self.limits = limits
        #: (t, method, chat_id, message_id, error_code, text length, text crc32, limit hit)
        self.writes: list[tuple[float, str, int, int, int, int, int, str]] = []
        for name in RECORDED:
            original_name, handler = self._handlers[name]
            self._handlers[name] = (original_name, self._recorded(name, handler))

    @property
    def refused_by(self) -> Counter[str]:
        """The writes the flood limits refused, by the limit hit ("chat", "global")."""
        return self.flood_refusals

    def _recorded(self, name: str, handler: Any) -> Any:
        async def handle(p: dict[str, Any]) -> Any:
            now = time.monotonic()
            try:
                chat_id = int(p.get("chat_id") or 0)
            except (TypeError, ValueError):
                chat_id = 0
            try:
                result = await handler(p)  # the emulator's, flood limits included
            except ApiError as err:
                hit = err.limit if isinstance(err, FloodWait) else ""
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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def serve(port: int, control_port: int, limits: FloodLimits | None, token: str) -> None:
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
    limits = (
        None
        if args.no_limits
        else FloodLimits(
            private_per_second=args.private_per_second,
            private_burst=args.private_burst,
            group_per_minute=args.group_per_minute,
            global_per_second=args.global_per_second,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.control_port, limits, args.token))


if __name__ == "__main__":
    main()

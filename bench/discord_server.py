"""The Discord emulator in a process of its own, for the streaming benchmarks.

    python -m bench.discord_server --port N --channels 1300 [--bucket-limit 5 --bucket-window 5] \
        [--global-limit 50]

`tests.emulators.discord.DiscordEmulator` as is (REST, gateway, rate-limit windows,
429s), with one guild of `--channels` text channels (ids `channel_id(i)`) and as many
members (ids `user_id(i)`), plus a small control API under ``/_bench/`` on the same port,
for the benchmark driving it from another process:

* ``POST /_bench/say`` ``{"messages": [{"channel", "user", "content", "tail"}]}``: each person
  writes (MESSAGE_CREATE to the bot); answers ``{"at": [monotonic], "ids": [...]}``. ``tail``
  is how the expected answer ends: from then on the channel counts as done while one of the
  bot's messages there ends with it (a streaming indicator or a cut text does not).
* ``POST /_bench/done`` ``{"channels": [...]}``: ``{"done": {channel: since}, "noted": n}``, the
  channels done now, ``since`` being the create/edit that made them so, and the count of the
  bot's creates and edits so far (the benchmark's sign of progress).
* ``GET /_bench/report``: everything the bot did since the last ``/_bench/forget``:
  ``messages`` ``[[id, channel, events]]``, ``events`` being ``[[at, text hash, text length, shows the
  answer, ends with the tail]]`` (the create, then each edit; the text is ``content`` plus the
  embeds' descriptions, where llmcord writes); ``calls``, every REST call ``[at, method,
  route, status, channel]``; ``done``, as in ``/_bench/done``, for every channel; ``cpu``, this process's
  CPU seconds.
* ``POST /_bench/forget``: drop what was recorded (calls, events), to keep the heap flat.

Times are `time.monotonic()` (the loop's clock), which other processes on the machine share.
The bot's answer text is recognised by `ANSWER_WORD`, the first word of every answer of
`bench.tgi_server --bench-answers`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import time
from typing import Any

from aiohttp import web

from bench.stream_probe import cpu_seconds
from tests.emulators.discord import API_PREFIX, BotMessage, DiscordEmulator

GUILD_ID = 5_000_000
BOT_ID = 900
ANSWER_WORD = "alpha"
_CHANNEL_PATH = re.compile(r"^/channels/(\d+)")


def channel_id(index: int) -> int:
    """The id of the benchmark guild's `index`-th text channel (0-based)."""
    return GUILD_ID + 100 + index


def user_id(index: int) -> int:
    """The id of the `index`-th member (one person per channel)."""
    return 10_000_000 + index


def message_text(content: Any, embeds: Any) -> str:
    """What a reader sees of a message: its content and its embeds' descriptions."""
    parts = [str(content or "")]
    for embed in embeds or []:
        if isinstance(embed, dict):
            parts.append(str(embed.get("description") or ""))
    return "\n".join(p for p in parts if p)


class BenchDiscordEmulator(DiscordEmulator):
    """The emulator, recording when each bot message was created or edited, and with what text."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # message id -> [channel, [[at, hash, length, shows answer, ends with the tail], ...]]
        self.timeline: dict[int, list[Any]] = {}
        # channel -> the end of the answer asked there (``tail`` in /_bench/say)
        self.tails: dict[int, str] = {}
        # channel -> its messages whose text ends with the tail now; since when it has had one
        self._ending: dict[int, set[int]] = {}
        self.done_since: dict[int, float | None] = {}
        self.noted = 0  # creates and edits of bot messages so far

    def _note(self, message: BotMessage | None, message_id: int, channel: int) -> None:
        if message is None:
            return
        now = time.monotonic()
        self.noted += 1
        text = message_text(message.content, message.embeds)
        tail = self.tails.get(channel)
        ends = bool(tail) and text.rstrip().endswith(tail or "")
        entry = self.timeline.setdefault(message_id, [channel, []])
        entry[1].append([now, hash(text), len(text), ANSWER_WORD in text.lower(), ends])
        if tail is None:
            return
        ending = self._ending.setdefault(channel, set())
        was = bool(ending)
        if ends and not message.deleted:
            ending.add(message_id)
        else:
            ending.discard(message_id)
        if ending and not was:
            self.done_since[channel] = now
        elif not ending and was:
            self.done_since[channel] = None

    def _create_bot_message(self, channel_id: int, body: Any, **kwargs: Any) -> BotMessage:
        message = super()._create_bot_message(channel_id, body, **kwargs)
        self._note(message, message.id, channel_id)
        return message

    def _edit_bot_message(self, message_id: int, body: Any, prefix: Any = ()) -> Any:
        result = super()._edit_bot_message(message_id, body, prefix)
        message = self.bot_message(message_id)
        if message is not None:
            self._note(message, message_id, message.channel_id)
        return result

    async def start(self, *, port: int = 0) -> str:
        """As the emulator's, plus the ``/_bench/`` routes."""
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_post("/_bench/say", self._bench_say)
        app.router.add_get("/_bench/report", self._bench_report)
        app.router.add_post("/_bench/forget", self._bench_forget)
        app.router.add_post("/_bench/done", self._bench_done)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port, backlog=4096).start()
        self._stopping = False
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"
        return self.url

    async def _bench_say(self, request: web.Request) -> web.Response:
        body = await request.json()
        ats: list[float] = []
        ids: list[int] = []
        for item in body["messages"]:
            author = self._known_user(int(item["user"]))
            if item.get("tail"):
                channel = int(item["channel"])
                self.tails[channel] = str(item["tail"])
                self._ending.pop(channel, None)
                self.done_since[channel] = None
            ats.append(time.monotonic())
            ids.append(self.user_message(int(item["channel"]), author, str(item["content"])))
        return web.json_response({"at": ats, "ids": [str(i) for i in ids]})

    async def _bench_report(self, request: web.Request) -> web.Response:
        calls = []
        for call in self.calls:
            found = _CHANNEL_PATH.match(call.path)
            try:
                template = self._match(call.method, call.path)[0].template
            except Exception:
                template = call.path
            calls.append(
                [call.at, call.method, template, call.status, int(found.group(1)) if found else None]
            )
        messages = [[str(mid), channel, events] for mid, (channel, events) in self.timeline.items()]
        done = {str(c): since for c, since in self.done_since.items() if since is not None}
        return web.json_response(
            {
                "messages": messages,
                "calls": calls,
                "done": done,
                "cpu": cpu_seconds_self(),
                "now": time.monotonic(),
            }
        )

    async def _bench_done(self, request: web.Request) -> web.Response:
        """``{"channels": [...]}`` → ``{"done": {channel: since}, "noted": n}``: the channels
        whose answer shows its end now, and how many creates/edits of bot messages so far."""
        body = await request.json()
        done = {}
        for channel in body["channels"]:
            since = self.done_since.get(int(channel))
            if since is not None:
                done[str(channel)] = since
        return web.json_response({"done": done, "noted": self.noted})

    async def _bench_forget(self, _request: web.Request) -> web.Response:
        self.calls.clear()
        self.timeline.clear()
        return web.json_response({"ok": True})


def cpu_seconds_self() -> float:
    return cpu_seconds(os.getpid())


async def serve(args: argparse.Namespace) -> None:
    emulator = BenchDiscordEmulator(
        bot_id=BOT_ID,
        application_id=BOT_ID,
        bot_name="bench-bot",
        bucket_limit=args.bucket_limit,
        bucket_window=args.bucket_window,
        global_limit=args.global_limit,
        strict_commands=False,
    )
    channels = [channel_id(i) for i in range(args.channels)]
    emulator.guild(GUILD_ID, "Bench", channels=channels, owner_id=user_id(0))
    for i in range(args.channels):
        emulator.user(user_id(i), f"user{i}")
        emulator.member(GUILD_ID, user_id(i))
    url = await emulator.start(port=args.port)
    gc.collect()
    gc.freeze()
    print(
        f"Discord emulator (bench) at {url} gateway {emulator.gateway_url} token {emulator.token}", flush=True
    )
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The Discord emulator in its own process, for benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--channels", type=int, default=1300, help="text channels (and members)")
    parser.add_argument("--bucket-limit", type=int, default=5, help="requests per route window, per channel")
    parser.add_argument("--bucket-window", type=float, default=5.0, help="seconds (Discord: 5 per 5 s)")
    parser.add_argument(
        "--global-limit", type=int, default=0, help="requests a second over all routes (Discord: 50); 0: off"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()

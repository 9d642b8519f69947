"""The Bot API's client, paced by the bot's overall limit on messages.

Telegram asks bots to send "not more than 30 messages per second or so" over all
chats; past it, it answers 429 with a `retry_after` for whichever chat the call was
for. Each chat's own limit is paced by the renderer (`core.pacing`); this request
class takes every message write from the bot's overall `Rate` before it goes, so a
burst of answers in many chats never outruns the bot's limit, and the renderer
reads the same `Rate` to keep part of it for answers' first messages and final texts.
"""

from __future__ import annotations

from typing import Any

from telegram.request import BaseRequest, HTTPXRequest, RequestData

from core.pacing import Rate

#: messages a second Telegram allows a bot over all its chats (its Bot FAQ: "or so")
BOT_LIMIT = 30


def counts_overall(url: str) -> bool:
    """Whether a Bot API call writes a message (a send or an edit), which Telegram counts
    against the bot's overall limit. A chat action (typing) does not write one."""
    method = url.rsplit("/", 1)[-1].lower()
    return method.startswith(("send", "edit")) and method != "sendchataction"


class PacedRequest(HTTPXRequest):
    """`HTTPXRequest` that takes each message write from `rate` before sending it."""

    def __init__(self, rate: Rate, **options: Any) -> None:
        super().__init__(**options)
        self._rate = rate

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if counts_overall(url):
            await self._rate.take()
        return await super().do_request(
            url, method, request_data, read_timeout, write_timeout, connect_timeout, pool_timeout
        )

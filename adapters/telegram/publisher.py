"""Scheduled posts on Telegram: publish into a chat, and ask for approval with the
core's buttons as an inline keyboard.

A send that timed out may have reached Telegram: it is reported as unknown
(never retried automatically); anything Telegram refused was not sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from telegram import Bot
from telegram.constants import ParseMode
from telegram.error import BadRequest, NetworkError, TelegramError

from adapters.telegram.formatting import markdown_to_telegram, quiet_mentions
from adapters.telegram.surface import NO_PREVIEW, TelegramSurface
from core.chat.say import say
from core.platform import Button
from core.posts.schedules.runner import PublishFailed, PublishUnknown


class TelegramPublisher:
    def __init__(self, bot: Bot) -> None:
        self._bot = bot

    async def publish(self, chat_id: str, thread_id: str | None, text: str) -> str:
        rendered = markdown_to_telegram(text)
        thread = int(thread_id) if thread_id else None
        try:
            try:
                message = await self._bot.send_message(
                    int(chat_id),
                    rendered.html,
                    parse_mode=ParseMode.HTML,
                    message_thread_id=thread,
                    link_preview_options=NO_PREVIEW,
                )
            except BadRequest as exc:
                if "can't parse entities" not in exc.message.lower():
                    raise
                message = await self._bot.send_message(
                    int(chat_id),
                    quiet_mentions(text),
                    message_thread_id=thread,
                    link_preview_options=NO_PREVIEW,
                )
        except NetworkError as exc:  # timed out or cut off: it may have been sent
            raise PublishUnknown(f"Telegram: {exc}") from exc
        except TelegramError as exc:
            raise PublishFailed(f"Telegram refused: {exc}") from exc
        return str(message.message_id)

    async def request_approval(self, chat_id: str, text: str, buttons: Sequence[Button]) -> None:
        """In parts where it is long (a thread for the networks), the buttons under the last."""
        await say(self._surface(chat_id), text, buttons)

    async def notify(self, chat_id: str, text: str) -> None:
        await say(self._surface(chat_id), text)

    def _surface(self, chat_id: str) -> TelegramSurface:
        """Herald's own messages in a chat: formatted, with the plain-text fallback."""
        return TelegramSurface(self._bot, chat_id=int(chat_id), thread_id=None, reply_to=None, private=False)

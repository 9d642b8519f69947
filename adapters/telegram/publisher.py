"""Scheduled posts on Telegram: publish into a chat, and ask for approval with an inline keyboard.

A send that timed out may have reached Telegram: it is reported as unknown
(never retried automatically); anything Telegram refused was not sent.
"""

from __future__ import annotations

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.error import BadRequest, NetworkError, TelegramError

from adapters.telegram.formatting import markdown_to_telegram, quiet_mentions
from core.posts.schedules.runner import PublishFailed, PublishUnknown
from core.posts.schedules.store import Post

CALLBACK_PREFIX = "herald"
BUTTONS = (
    ("✅ Approve", "approve"),
    ("✏️ Edit", "edit"),
    ("🔁 Regenerate", "regenerate"),
    ("✖️ Reject", "reject"),
)
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


def callback_data(action: str, post_id: str) -> str:
    return f"{CALLBACK_PREFIX}:{action}:{post_id}"


def parse_callback(data: str) -> tuple[str, str] | None:
    prefix, _, rest = data.partition(":")
    action, _, post_id = rest.partition(":")
    return (action, post_id) if prefix == CALLBACK_PREFIX and action and post_id else None


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

    async def request_approval(self, chat_id: str, post: Post) -> None:
        keyboard = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton(label, callback_data=callback_data(action, post.id))]
                for label, action in BUTTONS
            ]
        )
        await self._bot.send_message(
            int(chat_id),
            markdown_to_telegram(approval_text(post)).html,
            parse_mode=ParseMode.HTML,
            reply_markup=keyboard,
            link_preview_options=NO_PREVIEW,
        )

    async def notify(self, chat_id: str, text: str) -> None:
        await self._bot.send_message(int(chat_id), markdown_to_telegram(text).html, parse_mode=ParseMode.HTML)


EDIT_PROMPT = "✏️ Reply to this message with the text to publish for post "


def edit_prompt(post_id: str) -> str:
    """Sent with a forced reply when Edit is clicked; the reply carries the new text."""
    return f"{EDIT_PROMPT}{post_id}."


def edited_post(prompt_text: str) -> str | None:
    """The post id of an edit prompt (the message a person replied to), else None."""
    if not prompt_text.startswith(EDIT_PROMPT):
        return None
    post_id = prompt_text.removeprefix(EDIT_PROMPT).rstrip(".")
    return post_id if post_id.isalnum() else None


def approval_text(post: Post) -> str:
    """Plain text: the draft exactly as it would be published, with its post id."""
    return f"Draft `{post.id}` for {post.slot[:16].replace('T', ' ')} — approve to publish:\n\n{post.text}"

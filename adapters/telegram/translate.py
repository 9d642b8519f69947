"""Telegram messages → the core's `Inbound`, and what "addressed" means in Telegram.

Addressed: any message in a private chat; in groups, a mention entity of the
bot's username, a text mention of the bot, a reply to one of the bot's
messages, or a command for this bot (`/ask` or `/ask@HeraldBot`). Never a
substring match on the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import Message, MessageEntity

from core.commands.registry import parse_command_text
from core.platform import Author, CommandCall, Inbound, Posted

PLATFORM = "telegram"


@dataclass(frozen=True, slots=True)
class BotIdentity:
    id: int
    username: str


def conversation_thread(message: Message) -> str | None:
    """A forum topic is its own conversation; other threads belong to their chat."""
    if message.is_topic_message and message.message_thread_id is not None:
        return str(message.message_thread_id)
    return None


def _mentions_bot(message: Message, bot: BotIdentity) -> list[str]:
    """The mention texts in `message` that name this bot."""
    found = []
    entities = message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
    for entity, text in entities.items():
        named = entity.type == MessageEntity.MENTION and text[1:].lower() == bot.username.lower()
        linked = entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot.id
        if named or linked:
            found.append(text)
    return found


def _replies_to_bot(message: Message, bot: BotIdentity) -> bool:
    replied = message.reply_to_message
    if replied is None or replied.forum_topic_created is not None:
        return False  # in forum topics every message "replies" to the topic's first message
    return replied.from_user is not None and replied.from_user.id == bot.id


def starts_with_command(message: Message) -> bool:
    return any(e.type == MessageEntity.BOT_COMMAND and e.offset == 0 for e in message.entities)


def _command(message: Message, bot: BotIdentity) -> CommandCall | None:
    """A command for this bot: a bot_command entity at the very start of the text."""
    if not starts_with_command(message):
        return None
    return parse_command_text(message.text or "", bot.username)


def to_inbound(message: Message, update_id: int, bot: BotIdentity, *, chat_admin: bool) -> Inbound:
    """Translate one text message; the engine decides what to do with it."""
    private = message.chat.type == message.chat.PRIVATE
    text = message.text or ""
    command = _command(message, bot)
    mentions = _mentions_bot(message, bot)
    for mention in mentions:  # the model needn't see its own name as a word of the question
        text = text.replace(mention, "", 1)
    user = message.from_user
    return Inbound(
        platform=PLATFORM,
        event_id=str(update_id),
        chat_id=str(message.chat.id),
        thread_id=conversation_thread(message),
        author=Author(
            user_id=str(user.id) if user else "unknown",
            display_name=user.full_name if user else "",
            is_chat_admin=chat_admin,
        ),
        text=text.strip(),
        addressed=private or bool(mentions) or _replies_to_bot(message, bot) or command is not None,
        is_private=private,
        command=command,
        posted=Posted(str(message.message_id), message.date.timestamp(), _replied_id(message)),
    )


def _replied_id(message: Message) -> str | None:
    replied = message.reply_to_message
    if replied is None or replied.forum_topic_created is not None:
        return None
    return str(replied.message_id)

"""Where an answer goes in Telegram: a chat (and forum topic), replying to the asker.

Markdown from the model is sent as escaped Telegram HTML; if Telegram still
rejects the formatting, the same text goes out without a parse mode. Telegram
errors become the core's platform errors, so the renderer decides what to do.
What Herald can read in a group is asked of the Bot API whenever it is wanted.

An answer may be written by another replica than the one that received its event
(`core.intake`): the receiver keeps an `Address`, plain JSON, and whoever answers
rebuilds the surface from it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from telegram import (
    Bot,
    CallbackQuery,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction, ChatMemberStatus, ParseMode
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter, TelegramError

from adapters.telegram.formatting import markdown_to_telegram, quiet_mentions
from core.pacing import Bucket, Buckets
from core.platform import (
    Button,
    CallKind,
    Capabilities,
    LengthUnit,
    MessageNotModified,
    MessageRef,
    PlatformError,
    PlatformRateLimited,
    Surface,
    Visibility,
)

MAX_LENGTH = 4096  # UTF-16 code units of the text after entity parsing
#: Telegram's per-chat limits (Bots FAQ: "avoid sending more than one message per second
#: in a particular chat", "not more than 20 messages per minute" in a group), taken to
#: count edits alike: (calls, seconds)
PRIVATE_LIMIT = (1, 1.0)
GROUP_LIMIT = (1, 3.0)
#: between a streaming message's edits: longer than the limit, so that when the model
#: ends the chat's call is most often free for the final text at once
PRIVATE_EDIT_INTERVAL = 1.5
GROUP_EDIT_INTERVAL = 4.0
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
#: Telegram's rule (bots/features#privacy-mode): a bot joins a group with the privacy
#: mode it has then, so a change reaches the groups it is already in only once re-added
PRIVACY_ADVICE = (
    "To record every message, a chat admin can make me an admin here, or whoever runs me "
    "can turn my privacy mode off with BotFather (/setprivacy, then Disable) and then remove "
    "me from this group and add me back: Telegram applies that change only when a bot joins."
)
REJOIN_ADVICE = (
    "If I was in this group before my privacy mode was turned off, remove me and add me back "
    "(or make me an admin): Telegram applies that change only when a bot joins."
)

T = TypeVar("T")


def seconds(value: int | dt.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class TelegramSurface(Surface):
    def __init__(
        self,
        bot: Bot,
        *,
        chat_id: int,
        thread_id: int | None,
        reply_to: int | None,
        private: bool,
        logger: logging.Logger | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        self._bot = bot
        self.chat_id = chat_id
        self._buckets = buckets
        self._thread_id = thread_id
        self._reply_to = reply_to
        self._private = private
        self._log = logger or logging.getLogger("herald.telegram")
        interval = PRIVATE_EDIT_INTERVAL if private else GROUP_EDIT_INTERVAL
        self._caps = Capabilities(
            max_length=MAX_LENGTH,
            length_unit=LengthUnit.UTF16,
            min_edit_interval=interval,
            has_slash_commands=True,
            has_buttons=True,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def bucket(self, kind: CallKind) -> Bucket | None:
        """The chat's: sends and edits count alike."""
        if self._buckets is None:
            return None
        return self._buckets.get(self.chat_id, *(PRIVATE_LIMIT if self._private else GROUP_LIMIT))

    def message_link(self, message_id: str, thread_id: str | None = None) -> str | None:
        return message_link(self.chat_id, message_id, thread_id)

    async def visibility(self) -> Visibility | None:
        """Asked of the Bot API each time (two cheap calls, only on /history): privacy
        mode from getMe, and whether the bot administers this chat. None when Telegram
        can't be asked."""
        if self._private:
            return Visibility(reads_all=True)
        try:
            me = await self._call(self._bot.get_me)
            member = await self._call(lambda: self._bot.get_chat_member(self.chat_id, me.id))
        except PlatformError as exc:
            self._log.warning("Telegram: could not tell what the bot can read in %s: %s", self.chat_id, exc)
            return None
        admin = member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)
        return group_visibility(privacy_off=bool(me.can_read_all_group_messages), admin=admin)

    async def typing(self) -> None:
        await self._call(
            lambda: self._bot.send_chat_action(
                self.chat_id, ChatAction.TYPING, message_thread_id=self._thread_id
            )
        )

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        target = int(reply_to.id) if reply_to is not None else self._reply_to
        reply = ReplyParameters(target, allow_sending_without_reply=True) if target else None
        markup = keyboard(buttons) if buttons else None

        def attempt(html: bool) -> Awaitable[Message]:
            body, mode = self._content(text, html)
            return self._bot.send_message(
                self.chat_id,
                body,
                parse_mode=mode,
                message_thread_id=self._thread_id,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
                reply_markup=markup,
            )

        message = await self._formatted(attempt)
        return MessageRef(str(message.message_id))

    async def edit(self, ref: MessageRef, text: str) -> None:
        def attempt(html: bool) -> Awaitable[object]:
            body, mode = self._content(text, html)
            return self._bot.edit_message_text(
                body,
                chat_id=self.chat_id,
                message_id=int(ref.id),
                parse_mode=mode,
                link_preview_options=NO_PREVIEW,
            )

        await self._formatted(attempt)

    async def delete(self, ref: MessageRef) -> None:
        await self._call(lambda: self._bot.delete_message(self.chat_id, int(ref.id)))

    @staticmethod
    def _content(text: str, html: bool) -> tuple[str, str | None]:
        """(text, parse mode): escaped HTML from the Markdown, or the Markdown as it is."""
        if html:
            rendered = markdown_to_telegram(text)
            if rendered.plain.strip():  # a streamed "```py" alone renders as nothing
                return rendered.html, ParseMode.HTML
        return quiet_mentions(text), None

    async def _formatted(self, attempt: Callable[[bool], Awaitable[T]]) -> T:
        """HTML first; the same text without a parse mode if Telegram rejects the markup."""
        try:
            return await self._call(lambda: attempt(True))
        except _BadMarkup as exc:
            self._log.warning("Telegram rejected the formatting (%s); sending plain text", exc)
            return await self._call(lambda: attempt(False))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Bot API call, with Telegram's errors turned into the core's."""
        try:
            return await call()
        except ChatMigrated as exc:  # the group became a supergroup: follow it
            self._log.info("chat %s moved to %s", self.chat_id, exc.new_chat_id)
            self.chat_id = exc.new_chat_id
            return await self._call(call)
        except RetryAfter as exc:
            raise PlatformRateLimited(seconds(exc.retry_after), str(exc)) from exc
        except BadRequest as exc:
            text = exc.message.lower()
            if "message is not modified" in text:
                raise MessageNotModified(exc.message) from exc
            if "can't parse entities" in text or "unsupported start tag" in text:
                raise _BadMarkup(exc.message) from exc
            raise PlatformError(f"Telegram refused: {exc.message}") from exc
        except Forbidden as exc:
            self._log.warning("Telegram forbids writing to chat %s: %s", self.chat_id, exc.message)
            raise PlatformError(exc.message) from exc
        except TelegramError as exc:  # timeouts, network errors, server errors
            raise PlatformError(f"Telegram call failed: {exc}") from exc


def group_visibility(*, privacy_off: bool, admin: bool) -> Visibility:
    """What a bot reads in a group: everything as an admin ("bot admins always receive all
    messages") or with privacy mode off; otherwise only what is addressed to it. The Bot
    API keeps no history, so nothing from before recording began."""
    if admin:
        return Visibility(reads_all=True)
    if privacy_off:  # the Bot API can't tell whether this group saw the change
        return Visibility(reads_all=True, advice=REJOIN_ADVICE)
    return Visibility(reads_all=False, advice=PRIVACY_ADVICE)


def keyboard(buttons: Sequence[Button], per_row: int = 2) -> InlineKeyboardMarkup:
    """The core's buttons as an inline keyboard: a click comes back as a callback query."""
    keys = [InlineKeyboardButton(b.label, callback_data=b.data) for b in buttons]
    return InlineKeyboardMarkup([keys[i : i + per_row] for i in range(0, len(keys), per_row)])


class _BadMarkup(PlatformError):
    """Telegram could not parse the formatting we sent."""


class ClickSurface(TelegramSurface):
    """Answers a button click: replies go under the clicked message; a notice is the
    click's toast, seen by the clicker alone; a conclusion is the toast, the buttons
    taken away, and the outcome under the message.

    Telegram shows the button loading until the callback query is answered, once:
    the first toast, reply or `acknowledge` answers it.
    """

    TOAST_LENGTH = 200  # Telegram's limit for the answer's text

    def __init__(
        self,
        bot: Bot,
        query: CallbackQuery,
        *,
        thread_id: int | None,
        logger: logging.Logger | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        message = query.message
        assert message is not None  # clicks on messages too old to have one are not served
        super().__init__(
            bot,
            chat_id=message.chat.id,
            thread_id=thread_id,
            reply_to=message.message_id,
            private=message.chat.type == message.chat.PRIVATE,
            logger=logger,
            buckets=buckets,
        )
        self._query = query
        self._clicked = message.message_id
        self._answered = False

    async def acknowledge(self, toast: str = "") -> None:
        """Answer the callback query (ending the button's loading) unless done already."""
        if self._answered:
            return
        self._answered = True
        try:
            await self._query.answer(toast[: self.TOAST_LENGTH] or None)
        except TelegramError as exc:
            self._log.warning("Telegram: could not answer a button click: %s", exc)

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        await self.acknowledge()
        return await super().send(text, reply_to=reply_to, buttons=buttons)

    async def notice(self, text: str) -> None:
        if self._answered:  # a toast can't follow the first answer
            await super().send(text)
        else:
            await self.acknowledge(text)

    async def ask_for_text(self, prompt: str, *, placeholder: str) -> None:
        """A forced reply under the clicked message: the person's app opens a reply to it."""
        await self.acknowledge()
        await self._call(
            lambda: self._bot.send_message(
                self.chat_id,
                prompt,
                message_thread_id=self._thread_id,
                reply_parameters=ReplyParameters(self._clicked, allow_sending_without_reply=True),
                reply_markup=ForceReply(selective=True, input_field_placeholder=placeholder),
            )
        )

    async def conclude(self, text: str) -> None:
        await self.acknowledge(text)
        try:
            await self._query.edit_message_reply_markup(reply_markup=None)
        except TelegramError as exc:
            self._log.warning("Telegram: could not take the buttons away: %s", exc)
        await super().send(text)


def message_link(chat_id: int, message_id: str, thread_id: str | None = None) -> str | None:
    """`https://t.me/c/<id>/<message>` for a supergroup's message (with the topic in a
    forum); basic groups and private chats have no links."""
    text = str(chat_id)
    if not text.startswith("-100") or not message_id.isdigit():
        return None
    topic = f"{thread_id}/" if thread_id and thread_id.isdigit() else ""
    return f"https://t.me/c/{text[4:]}/{topic}{message_id}"


@dataclass(frozen=True, slots=True)
class Address:
    """Where the answer to one event goes, as the replica that received it saw it:
    kept beside the event in the intake as JSON, so that any replica can rebuild the
    surface. A button click keeps its callback query (Telegram's own JSON), which its
    surface answers."""

    chat_id: int
    thread_id: int | None
    reply_to: int | None
    private: bool
    query: Mapping[str, Any] | None = None

    @classmethod
    def of_message(cls, message: Message) -> Address:
        return cls(
            chat_id=message.chat.id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            reply_to=message.message_id,
            private=message.chat.type == message.chat.PRIVATE,
        )

    @classmethod
    def of_click(cls, query: CallbackQuery, thread_id: int | None) -> Address:
        message = query.message
        assert message is not None  # clicks on messages too old to have one are not served
        return cls(
            chat_id=message.chat.id,
            thread_id=thread_id,
            reply_to=message.message_id,
            private=message.chat.type == message.chat.PRIVATE,
            query=query.to_dict(),
        )

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "chat": self.chat_id,
            "thread": self.thread_id,
            "reply_to": self.reply_to,
            "private": self.private,
        }
        if self.query is not None:
            data["query"] = dict(self.query)
        return data

    @classmethod
    def from_data(cls, data: Any) -> Address:
        """The address; `ValueError` when `data` isn't one."""
        if not isinstance(data, Mapping):
            raise ValueError("an address is an object")
        chat, thread, reply_to = data.get("chat"), data.get("thread"), data.get("reply_to")
        query = data.get("query")
        if not isinstance(chat, int) or not all(v is None or _is_int(v) for v in (chat, thread, reply_to)):
            raise ValueError(f"not an address: {dict(data)!r}")
        if query is not None and not isinstance(query, Mapping):
            raise ValueError("an address's query is an object")
        return cls(chat, thread, reply_to, bool(data.get("private")), query)

    def surface(
        self, bot: Bot, logger: logging.Logger | None = None, buckets: Buckets | None = None
    ) -> TelegramSurface:
        """The surface an answer goes to, paced by the chats' `buckets`: a `ClickSurface`
        for a click (`ValueError` when its query can't be read back)."""
        if self.query is None:
            return TelegramSurface(
                bot,
                chat_id=self.chat_id,
                thread_id=self.thread_id,
                reply_to=self.reply_to,
                private=self.private,
                logger=logger,
                buckets=buckets,
            )
        try:
            query = CallbackQuery.de_json(dict(self.query), bot)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a callback query: {exc!r}") from None
        if query.message is None:
            raise ValueError("a callback query without its message")
        return ClickSurface(bot, query, thread_id=self.thread_id, logger=logger, buckets=buckets)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

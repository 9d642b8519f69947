"""The Telegram bot: python-telegram-bot's `Application` feeding the core's engine.

Updates arrive by long polling (one poller per token) or by webhook (for
several replicas behind a load balancer). Each text message becomes one
`Inbound`; updates are processed concurrently, and the engine keeps each
conversation in order. Stopping waits for the answers in flight.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from telegram import BotCommand, CallbackQuery, Message, Update
from telegram.constants import ChatMemberStatus
from telegram.error import Conflict, InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from adapters.platform import PlatformStartError
from adapters.telegram.publisher import TelegramPublisher
from adapters.telegram.surface import ClickSurface, TelegramSurface
from adapters.telegram.translate import PLATFORM, BotIdentity, starts_with_command, to_inbound
from core.chat.engine import Engine
from core.commands.registry import clicked_command
from core.platform import Author, Inbound, PlatformError
from core.posts.schedules.actions import PostActions
from core.posts.schedules.approval import edit_command, edit_request

_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
ADMIN_CACHE_SECONDS = 60.0
ADMIN_CACHE_SIZE = 10_000
MAX_CONCURRENT_UPDATES = 256
#: what Herald asks Telegram for: messages, their edits (for chats that record their
#: history) and button clicks
UPDATES = [Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str  # the public HTTPS URL Telegram posts to
    secret: str  # checked on every delivery (X-Telegram-Bot-Api-Secret-Token)
    host: str = "0.0.0.0"
    port: int = 8443


class TelegramBot:
    def __init__(
        self,
        engine: Engine,
        token: str,
        *,
        api_url: str | None = None,
        webhook: WebhookConfig | None = None,
        poll_timeout: int = 30,
        actions: PostActions | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._engine = engine
        self._actions = actions
        self._webhook = webhook
        self._poll_timeout = poll_timeout
        self._log = logger or logging.getLogger("herald.telegram")
        builder = ApplicationBuilder().token(token).concurrent_updates(MAX_CONCURRENT_UPDATES)
        if api_url:
            root = api_url.rstrip("/")
            builder = builder.base_url(f"{root}/bot").base_file_url(f"{root}/file/bot")
        # long polls hold the request open for poll_timeout seconds
        builder = builder.get_updates_read_timeout(poll_timeout + 10)
        self.app: Application = builder.build()  # type: ignore[type-arg]
        self.app.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, self._on_migrate))
        self.app.add_handler(MessageHandler(filters.TEXT & filters.UpdateType.MESSAGE, self._on_message))
        self.app.add_handler(MessageHandler(filters.TEXT & filters.UpdateType.EDITED_MESSAGE, self._on_edit))
        self.app.add_handler(CallbackQueryHandler(self._on_button))
        self.app.add_error_handler(self._on_error)
        self._identity: BotIdentity | None = None
        self._admins: dict[tuple[int, int], tuple[float, bool]] = {}

    @property
    def identity(self) -> BotIdentity:
        if self._identity is None:
            raise RuntimeError("the Telegram bot is not started")
        return self._identity

    async def start(self) -> None:
        try:
            await self.app.initialize()  # getMe: proves the token and the API URL
        except InvalidToken:
            raise PlatformStartError(
                "Telegram refused the bot token: check HERALD_TELEGRAM_TOKEN (from @BotFather)."
            ) from None
        except TelegramError as exc:
            raise PlatformStartError(f"Cannot reach the Telegram Bot API: {exc}") from None
        me = self.app.bot.bot
        self._identity = BotIdentity(me.id, me.username)
        self._explain_privacy(bool(me.can_read_all_group_messages))
        await self._register_commands()
        await self.app.start()
        updater = self.app.updater
        assert updater is not None  # built with the default updater
        if self._webhook is None:
            await updater.start_polling(
                timeout=self._poll_timeout,
                allowed_updates=UPDATES,
                error_callback=self._on_poll_error,
            )
            self._log.info("Telegram: @%s polling for updates", me.username)
        else:
            hook = self._webhook
            await updater.start_webhook(
                listen=hook.host,
                port=hook.port,
                url_path=urlsplit(hook.url).path.lstrip("/"),  # the same path as the public URL
                webhook_url=hook.url,
                secret_token=hook.secret,
                allowed_updates=UPDATES,
            )
            self._log.info("Telegram: @%s receiving updates by webhook", me.username)

    def publisher(self) -> TelegramPublisher:
        return TelegramPublisher(self.app.bot)

    async def pause(self) -> None:
        """Stop taking updates (polling or webhook); what is running goes on."""
        updater = self.app.updater
        if updater is not None and updater.running:
            await updater.stop()

    async def ready(self) -> bool:
        """The Bot API answers, and updates are being received."""
        updater = self.app.updater
        if updater is None or not updater.running:
            return False
        await self.app.bot.get_me()
        return True

    async def stop(self) -> None:
        """Stop taking updates, let the answers in flight finish, then close."""
        await self.pause()
        if self.app.running:
            await self.app.stop()  # waits for the handlers still running
        await self.app.shutdown()

    def _explain_privacy(self, reads_all: bool) -> None:
        if reads_all:
            self._log.info(
                "Telegram privacy mode is OFF: the bot receives every group message and "
                "answers only when addressed (mention, reply or command)."
            )
        else:
            self._log.info(
                "Telegram privacy mode is ON: in groups the bot receives only commands, "
                "mentions and replies to its own messages, which is all Herald needs."
            )

    async def _register_commands(self) -> None:
        commands = [
            BotCommand(spec.name, spec.description[:256])
            for spec in self._engine.commands
            if _COMMAND_NAME.match(spec.name)
        ]
        try:
            await self.app.bot.set_my_commands(commands)
        except TelegramError as exc:
            self._log.warning("Telegram: could not register the command menu: %s", exc)

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.text is None:
            return
        private = message.chat.type == message.chat.PRIVATE
        edit_of = self._edit_of(message)
        needs_rights = starts_with_command(message) or edit_of is not None
        chat_admin = not private and needs_rights and await self._is_chat_admin(message)
        inbound = to_inbound(message, update.update_id, self.identity, chat_admin=chat_admin)
        if edit_of is not None:  # the text asked for by Edit: the reply runs the edit
            inbound = replace(inbound, command=edit_command(edit_of, message.text.strip()))
        surface = TelegramSurface(
            self.app.bot,
            chat_id=message.chat.id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            reply_to=message.message_id,
            private=private,
            logger=self._log,
        )
        await self._engine.handle(inbound, surface)
        if surface.chat_id != message.chat.id:  # the chat migrated while we answered
            await self._chat_moved(message.chat.id, surface.chat_id)

    async def _on_edit(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Someone edited a message: the chat's log, where the chat records, follows."""
        message = update.edited_message
        if message is None or message.text is None:
            return
        edited = to_inbound(message, update.update_id, self.identity, chat_admin=False)
        await self._engine.message_edited(edited)

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A click on one of the core's command buttons runs its command as the person
        who clicked, like the typed command. Edit asks for the text first."""
        query = update.callback_query
        if query is None or query.message is None:
            return
        event = await self._clicker(query)
        surface = ClickSurface(
            self.app.bot,
            query,
            thread_id=int(event.thread_id) if event.thread_id is not None else None,
            logger=self._log,
        )
        command = clicked_command(query.data or "")
        try:
            if command is None:
                return  # not Herald's button; answering stops its loading
            post_id = edit_request(command)
            if post_id is not None and self._actions is not None:
                await self._ask_for_edit(self._actions, surface, post_id, event)
                return
            if not self._engine.commands.decides(command):
                await surface.acknowledge()  # the answer is a new message: stop the loading now
            await self._engine.handle(replace(event, command=command), surface)
        finally:
            await surface.acknowledge()

    async def _ask_for_edit(
        self, actions: PostActions, surface: ClickSurface, post_id: str, event: Inbound
    ) -> None:
        """Edit: a forced reply asks for the new text; the reply runs the edit (`_edit_of`)."""
        post, why = await actions.editable(post_id, event)
        try:
            if post is None:
                await surface.notice(why)
            else:
                await surface.ask_for_text(edit_prompt(post_id), placeholder="The text to publish")
        except PlatformError as exc:
            self._log.warning("Telegram: could not ask for the edited text: %s", exc)

    def _edit_of(self, message: Message) -> str | None:
        """The post whose edit prompt this message answers, if it does."""
        replied = message.reply_to_message
        if replied is None or replied.from_user is None or replied.from_user.id != self.identity.id:
            return None
        return edited_post(replied.text or "")

    async def _clicker(self, query: CallbackQuery) -> Inbound:
        """Who clicked, and where: the core decides what they may do."""
        message = query.message
        assert message is not None
        chat = message.chat
        private = chat.type == chat.PRIVATE
        admin = not private and await self._is_admin(chat.id, query.from_user.id)
        topic = getattr(message, "is_topic_message", False)
        thread = getattr(message, "message_thread_id", None) if topic else None
        return Inbound(
            platform=PLATFORM,
            event_id=f"q{query.id}",
            chat_id=str(chat.id),
            thread_id=str(thread) if thread is not None else None,
            author=Author(str(query.from_user.id), query.from_user.full_name, admin),
            text="",
            addressed=True,
            is_private=private,
        )

    async def _on_migrate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        if message.migrate_to_chat_id is not None:
            await self._chat_moved(message.chat.id, message.migrate_to_chat_id)
        elif message.migrate_from_chat_id is not None:
            await self._chat_moved(message.migrate_from_chat_id, message.chat.id)

    async def _chat_moved(self, old: int, new: int) -> None:
        await self._engine.chat_moved(PLATFORM, str(old), str(new))

    async def _is_chat_admin(self, message: Message) -> bool:
        user = message.from_user
        return user is not None and await self._is_admin(message.chat.id, user.id)

    async def _is_admin(self, chat_id: int, user_id: int) -> bool:
        """Whether the user administers the chat (asked once a minute at most)."""
        key = (chat_id, user_id)
        now = time.monotonic()
        cached = self._admins.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            member = await self.app.bot.get_chat_member(chat_id, user_id)
            admin = member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)
        except TelegramError as exc:
            self._log.warning("Telegram: could not check admin rights in %s: %s", key[0], exc)
            return False
        if len(self._admins) >= ADMIN_CACHE_SIZE:
            self._admins.clear()
        self._admins[key] = (now + ADMIN_CACHE_SECONDS, admin)
        return admin

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        self._log.error("Telegram: error while handling an update", exc_info=context.error)

    def _on_poll_error(self, error: TelegramError) -> None:
        if isinstance(error, Conflict):
            self._log.error(
                "Telegram: another process is polling with this bot token. Only one poller "
                "may run per token: stop the other one, or use webhook mode for replicas."
            )
        else:
            self._log.warning("Telegram: polling failed (%s); retrying", error)


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

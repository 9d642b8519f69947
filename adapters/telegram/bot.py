"""The Telegram bot: Telegram's updates in, through the intake, to the core's engine.

Updates arrive by long polling (one poller per token) or by webhook (for several
gateway replicas behind a load balancer), received by `receive` so that Telegram is
told an update arrived only once it was taken in. Taking in is translating: what the
engine answers (a message addressed to the bot, a command, a button click) is put in
the intake (`core.intake`) with the `Address` its answer goes to; what it only records
(other group messages, edits, a group's migration) is handled at once.

Answering is the intake's: `_answer` gets each event as a `Job`, on this replica at
once (the fast path) or on any other, even after the replica that began it died, and
rebuilds its surface from the address. `receives=False` (`herald run --role worker`):
no polling or webhook, only answering.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from telegram import Bot, BotCommand, CallbackQuery, Message, Update
from telegram.constants import ChatMemberStatus
from telegram.error import Conflict, InvalidToken, TelegramError
from telegram.request import HTTPXRequest

from adapters.platform import PlatformStartError
from adapters.telegram.publisher import TelegramPublisher
from adapters.telegram.receive import Poller, WebhookServer
from adapters.telegram.request import BOT_LIMIT, PacedRequest
from adapters.telegram.surface import Address, ClickSurface
from adapters.telegram.translate import PLATFORM, BotIdentity, starts_with_command, to_inbound
from core.chat.engine import Engine
from core.commands.registry import clicked_command
from core.intake.events import inbound_data, inbound_from_data
from core.intake.worker import Intake, Job
from core.pacing import Buckets, Rate
from core.pacing_share import RateShare
from core.platform import Author, Inbound, PlatformError
from core.posts.schedules.actions import PostActions
from core.posts.schedules.approval import edit_command, edit_request

_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
ADMIN_CACHE_SECONDS = 60.0
ADMIN_CACHE_SIZE = 10_000
#: Bot API calls at once (answers stream concurrently); getUpdates has its own connection
CONNECTIONS = 256
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
        intake: Intake,
        receives: bool = True,
        api_url: str | None = None,
        webhook: WebhookConfig | None = None,
        poll_timeout: int = 30,
        bot_limit: int = BOT_LIMIT,
        share: RateShare | None = None,
        actions: PostActions | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._engine = engine
        self._intake = intake
        self._receives = receives
        self._actions = actions
        self._webhook = webhook
        self._poll_timeout = poll_timeout
        self._log = logger or logging.getLogger("herald.telegram")
        root = (api_url or "https://api.telegram.org").rstrip("/")
        #: each chat's rate limit, shared by the answers in it, within the bot's overall
        #: limit on messages (`bot_limit` a second over all chats)
        self._overall = overall = Rate.within(bot_limit)
        self._buckets = Buckets(overall=overall)
        #: keeps `_overall` at this process's share of the bot's limit (None: all of it)
        self._share = share
        self._bot = Bot(
            token,
            base_url=f"{root}/bot",
            base_file_url=f"{root}/file/bot",
            request=PacedRequest(overall, connection_pool_size=CONNECTIONS),
            # a long poll is held for poll_timeout seconds, added to this read timeout
            get_updates_request=HTTPXRequest(connection_pool_size=1, read_timeout=10.0),
        )
        self._poller: Poller | None = None
        self._hook: WebhookServer | None = None
        self._identity: BotIdentity | None = None
        self._admins: dict[tuple[int, int], tuple[float, bool]] = {}

    @property
    def identity(self) -> BotIdentity:
        if self._identity is None:
            raise RuntimeError("the Telegram bot is not started")
        return self._identity

    async def start(self) -> None:
        if self._share is not None:
            await self._share.join(self._overall)
        try:
            await self._bot.initialize()  # getMe: proves the token and the API URL
        except InvalidToken:
            raise PlatformStartError(
                "Telegram refused the bot token: check HERALD_TELEGRAM_TOKEN (from @BotFather)."
            ) from None
        except TelegramError as exc:
            raise PlatformStartError(f"Cannot reach the Telegram Bot API: {exc}") from None
        me = self._bot.bot
        self._identity = BotIdentity(me.id, me.username or "")  # bots always have one
        self._intake.serve(PLATFORM, self._answer)
        if not self._receives:
            self._log.info("Telegram: @%s answering what the gateways receive", me.username)
            return
        self._explain_privacy(bool(me.can_read_all_group_messages))
        await self._register_commands()
        try:
            if self._webhook is None:
                await self._start_polling()
            else:
                await self._start_webhook(self._webhook)
        except TelegramError as exc:
            await self.stop()
            raise PlatformStartError(f"Telegram refused to deliver updates: {exc}") from None

    async def _start_polling(self) -> None:
        await self._bot.delete_webhook()  # getUpdates is refused while a webhook is set
        self._poller = Poller(
            self._bot,
            self._take_in,
            timeout=self._poll_timeout,
            allowed_updates=UPDATES,
            on_error=self._on_poll_error,
            logger=self._log,
        )
        self._poller.start()
        self._log.info("Telegram: @%s polling for updates", self.identity.username)

    async def _start_webhook(self, hook: WebhookConfig) -> None:
        server = WebhookServer(
            self._bot,
            self._take_in,
            path=urlsplit(hook.url).path,  # the same path as the public URL
            secret=hook.secret,
            host=hook.host,
            port=hook.port,
            logger=self._log,
        )
        try:
            await server.start()
        except OSError as exc:
            raise PlatformStartError(
                f"Cannot listen for Telegram's webhook on {hook.host}:{hook.port}: {exc}"
            ) from None
        self._hook = server
        await self._bot.set_webhook(hook.url, secret_token=hook.secret, allowed_updates=UPDATES)
        self._log.info("Telegram: @%s receiving updates by webhook", self.identity.username)

    def publisher(self) -> TelegramPublisher:
        return TelegramPublisher(self._bot)

    async def pause(self) -> None:
        """Stop taking updates (polling or webhook); the answers under way go on (they
        are the intake's)."""
        poller, self._poller = self._poller, None
        if poller is not None:
            await poller.stop()
        hook, self._hook = self._hook, None
        if hook is not None:
            await hook.stop()

    async def ready(self) -> bool:
        """The Bot API answers, and (where this replica receives) updates are being received."""
        if self._identity is None:
            return False
        if self._receives:
            receiving = (self._poller is not None and self._poller.running) or (
                self._hook is not None and self._hook.running
            )
            if not receiving:
                return False
        await self._bot.get_me()
        return True

    async def stop(self) -> None:
        """Stop taking updates and close. The answers in flight are the intake's: stop it
        first (`Intake.stop`) to let them finish."""
        await self.pause()
        if self._identity is not None:
            self._identity = None
            await self._bot.shutdown()
        if self._share is not None:
            await self._share.leave()

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
            await self._bot.set_my_commands(commands)
        except TelegramError as exc:
            self._log.warning("Telegram: could not register the command menu: %s", exc)

    # -- taking in (the gateway) ---------------------------------------------------------

    async def _take_in(self, update: Update) -> None:
        """One update, before Telegram is told it arrived (`RedisError`: it could not be
        kept, and Telegram must deliver it again)."""
        if update.callback_query is not None:
            await self._take_click(update.update_id, update.callback_query)
        elif update.message is not None:
            message = update.message
            if message.migrate_to_chat_id is not None:
                await self._chat_moved(message.chat.id, message.migrate_to_chat_id)
            elif message.migrate_from_chat_id is not None:
                await self._chat_moved(message.migrate_from_chat_id, message.chat.id)
            elif message.text is not None:
                await self._take_message(update.update_id, message)
        elif update.edited_message is not None and update.edited_message.text is not None:
            # someone edited a message: the chat's log, where the chat records, follows
            edited = to_inbound(update.edited_message, update.update_id, self.identity, chat_admin=False)
            await self._engine.message_edited(edited)

    async def _take_message(self, update_id: int, message: Message) -> None:
        assert message.text is not None
        private = message.chat.type == message.chat.PRIVATE
        edit_of = self._edit_of(message)
        needs_rights = starts_with_command(message) or edit_of is not None
        chat_admin = not private and needs_rights and await self._is_chat_admin(message)
        inbound = to_inbound(message, update_id, self.identity, chat_admin=chat_admin)
        if edit_of is not None:  # the text asked for by Edit: the reply runs the edit
            inbound = replace(inbound, command=edit_command(edit_of, message.text.strip()))
        address = Address.of_message(message)
        if inbound.addressed or inbound.command is not None:
            await self._put(update_id, inbound, address)
        else:  # nothing to answer: only the chat's log (where it records) wants it
            await self._engine.handle(inbound, address.surface(self._bot, self._log, self._buckets))

    async def _take_click(self, update_id: int, query: CallbackQuery) -> None:
        """A click on one of the core's command buttons runs its command as the person
        who clicked, like the typed command."""
        if query.message is None:
            return
        command = clicked_command(query.data or "")
        if command is None:  # not Herald's button; answering stops its loading
            try:
                await query.answer()
            except TelegramError as exc:
                self._log.warning("Telegram: could not answer a button click: %s", exc)
            return
        event = replace(await self._clicker(query), command=command)
        thread = int(event.thread_id) if event.thread_id is not None else None
        await self._put(update_id, event, Address.of_click(query, thread))

    async def _put(self, update_id: int, event: Inbound, address: Address) -> None:
        data = {"event": inbound_data(event), "reply": address.data()}
        if not await self._intake.put(PLATFORM, str(update_id), data):
            self._log.info("Telegram: update %s came again; it is answered once", update_id)

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

    # -- answering (a worker) ------------------------------------------------------------

    async def _answer(self, job: Job) -> None:
        """Answer one event from the intake, wherever it was received."""
        try:
            event = inbound_from_data(job.entry.data["event"])
            address = Address.from_data(job.entry.data["reply"])
            surface = address.surface(self._bot, self._log, self._buckets)
        except (KeyError, ValueError) as exc:
            self._log.error("Telegram: event %s can't be answered (%s); dropped", job.entry.event_id, exc)
            return
        event = replace(event, arrival=job.arrival)
        if isinstance(surface, ClickSurface):
            await self._answer_click(job, event, surface)
        else:
            await self._engine.handle(event, job.surface(surface))
        if surface.chat_id != address.chat_id:  # the chat migrated while we answered
            await self._chat_moved(address.chat_id, surface.chat_id)

    async def _answer_click(self, job: Job, event: Inbound, surface: ClickSurface) -> None:
        """Edit asks for the text first (a forced reply: `_edit_of`); a command that does
        not decide the clicked message stops the button's loading before it runs."""
        try:
            command = event.command
            assert command is not None  # only clicks on Herald's buttons are put in
            post_id = edit_request(command)
            if post_id is not None and self._actions is not None:
                await self._ask_for_edit(self._actions, surface, post_id, event)
                return
            if not self._engine.commands.decides(command):
                await surface.acknowledge()  # the answer is a new message: stop the loading now
            await self._engine.handle(event, job.surface(surface))
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
            member = await self._bot.get_chat_member(chat_id, user_id)
            admin = member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)
        except TelegramError as exc:
            self._log.warning("Telegram: could not check admin rights in %s: %s", key[0], exc)
            return False
        if len(self._admins) >= ADMIN_CACHE_SIZE:
            self._admins.clear()
        self._admins[key] = (now + ADMIN_CACHE_SECONDS, admin)
        return admin

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

"""The Discord bot: a discord.py `AutoShardedClient` feeding the core's engine through
the durable intake (`core.intake`).

Every event Herald answers (an addressed message, a slash command, a button click, a
submitted form) is kept in the intake before anything else, with the address of its
answer (`address.py`); interactions are deferred first, inside Discord's 3 seconds.
Whichever replica works answers it: this one at once where it works, or a worker with
no gateway connection, over REST (`receives` False). Events that answer nobody
(recording a chat's messages, edits, deletions) and the Edit button's form, which must
be the interaction's own answer, stay here.

Default intents are enough to answer: Discord delivers the content of DMs and
of messages that mention the bot without the privileged message-content intent,
which is asked for only when configured (HERALD_DISCORD_MESSAGE_CONTENT: for
recording a chat's messages, and mentions of the bot's role).
Slash commands are the core's registry, written to Discord only when they
changed (by a replica holding shards). Stopping never removes the commands; the
answers in flight are the intake's, which `herald run` stops first. Edits and
deletions reach the core through discord.py's raw events, which fire for messages it
never cached too (a chat that records follows them). Messages that come without their
text (no Message Content intent) are never recorded blank, and a recording chat is told
why. Backfills (`/history on backfill=…`) read channel history over REST wherever
Discord's events are answered (`history.py`): unfinished ones are taken up when the bot
starts and handed back, unfinished, when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import discord
from redis.exceptions import RedisError

from adapters.discord.address import address_surface, interaction_address, message_address
from adapters.discord.commands import command_payload, digest
from adapters.discord.editor import edit_form, form_text
from adapters.discord.history import WRITTEN, DiscordHistory, withheld
from adapters.discord.limits import GLOBAL_LIMIT, rate_limit_trace
from adapters.discord.publisher import DiscordPublisher
from adapters.discord.surface import NO_PINGS
from adapters.discord.translate import (
    PLATFORM,
    deleted,
    from_button,
    from_interaction,
    from_message,
    place,
)
from adapters.discord.tuning import amortise_bucket_sweep, skip_own_messages
from adapters.platform import PlatformStartError
from core import messages
from core.chat.engine import Engine
from core.chat.say import say
from core.chatlog.unreadable import UnreadableNotice
from core.commands.registry import clicked_command
from core.intake.events import inbound_data, inbound_from_data
from core.intake.worker import Intake, Job
from core.pacing import Buckets, Rate
from core.pacing_share import RateShare
from core.platform import CommandCall, Inbound
from core.posts.schedules.actions import PostActions
from core.posts.schedules.approval import edit_command, edit_request
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

#: threads discord.py does not hold whose parent channel was asked of Discord
_PARENTS_KEPT = 1024


class _Client(discord.AutoShardedClient):
    """Routes the events Herald handles to the bot."""

    def __init__(self, bot: DiscordBot, **options: Any) -> None:
        super().__init__(**options)
        self._bot = bot

    async def on_message(self, message: discord.Message) -> None:
        await self._bot.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self._bot.on_interaction(interaction)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        await self._bot.on_raw_message_edit(payload)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._bot.on_raw_message_delete(payload)

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._bot.on_raw_bulk_message_delete(payload)


class DiscordBot:
    """`receives`: hold gateway shards and keep what arrives in the intake (False: a worker
    that only answers, logged in over REST). `answers`: answer Discord's events from the
    intake where `intake.works` (False: publishing scheduled posts only,
    HERALD_DISCORD_GATEWAY=false)."""

    def __init__(
        self,
        engine: Engine,
        token: str,
        *,
        redis: RedisClient,
        keys: Keys,
        intake: Intake,
        receives: bool = True,
        answers: bool = True,
        shard_ids: list[int] | None = None,
        shard_count: int | None = None,
        message_content: bool = False,
        global_limit: int = GLOBAL_LIMIT,
        share: RateShare | None = None,
        ready_timeout: float = 60.0,
        actions: PostActions | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._engine = engine
        self._actions = actions
        self._token = token
        self._redis = redis
        self._keys = keys
        self._intake = intake
        self._ready_timeout = ready_timeout
        self._answers = answers
        self._receives = receives and answers
        self._log = logger or logging.getLogger("herald.discord")
        intents = discord.Intents.default()
        # Privileged: needed to read other people's messages in guild channels (to record
        # a chat, or when they mention the bot's role rather than the bot); without it
        # such messages come empty and a recording chat is told how to turn it on.
        intents.message_content = message_content
        #: Discord's rate-limit buckets for answers, as its responses tell them, within
        #: the bot's global limit (`global_limit` requests a second)
        self._overall = Rate.within(global_limit)
        self._buckets = Buckets(overall=self._overall)
        #: keeps `_overall` at this process's share of the bot's limit (None: all of it)
        self._share = share
        self.client = _Client(
            self,
            intents=intents,
            shard_ids=shard_ids,
            shard_count=shard_count,
            allowed_mentions=NO_PINGS,
            http_trace=rate_limit_trace(self._buckets),
        )
        amortise_bucket_sweep(self.client.http)
        skip_own_messages(self.client)
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._thread_parents: dict[int, int] = {}  # thread id → parent channel id
        chatlog = engine.chatlog
        #: Herald can't read what it is sent: a recording chat is told so (once a day)
        self._unreadable = UnreadableNotice(chatlog, redis, keys) if chatlog is not None else None
        self._backfills = engine.backfills
        self._history = DiscordHistory(self.client)

    async def login(self) -> None:
        try:
            await self.client.login(self._token)
        except discord.LoginFailure:
            raise PlatformStartError(
                "Discord refused the bot token: check HERALD_DISCORD_TOKEN (Developer Portal → Bot)."
            ) from None
        except (discord.HTTPException, OSError) as exc:
            raise PlatformStartError(f"Cannot reach Discord: {exc}") from None

    async def start(self) -> None:
        if self._share is not None:
            await self._share.join(self._overall)
        await self.login()
        if not self._answers:
            self._log.info("Discord: %s logged in without the gateway (publishing only)", self.client.user)
            return
        self._intake.serve(PLATFORM, self._answer)
        if self._receives:
            await self._connect()
        else:
            self._log.info("Discord: %s logged in over REST (answering, holding no shards)", self.client.user)
        if self._backfills is not None:
            # backfills (/history on backfill=…) read channel history over REST wherever
            # Discord's events are answered, and the unfinished ones are taken up again
            self._backfills.provide(PLATFORM, self._history)

    async def _connect(self) -> None:
        self._runner = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, self._runner}, timeout=self._ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            failure = self._runner.exception() if self._runner in done else None
            await self.client.close()
            raise PlatformStartError(f"Discord gateway did not become ready: {failure or 'timed out'}")
        self._log.info("Discord: %s ready on shards %s", self.client.user, self.client.shard_ids)
        await self.sync_commands_if_changed()

    def publisher(self) -> DiscordPublisher:
        return DiscordPublisher(self.client)

    async def pause(self) -> None:
        """Nothing to refuse: what arrives from now on is still kept in the intake, and
        answered by a replica that works (this one's intake stops taking events)."""

    async def ready(self) -> bool:
        """Logged in and, holding shards, every shard of this process connected."""
        client = self.client
        if client.user is None or client.is_closed():
            return False
        if not self._receives:
            return True
        shards = client.shards.values()
        return client.is_ready() and bool(shards) and not any(s.is_closed() for s in shards)

    async def stop(self) -> None:
        """Let the events being kept (and the chat log's work) finish, then disconnect.
        The answers under way are the intake's: `herald run` stops it first."""
        if self._backfills is not None and self._answers:
            await self._backfills.withdraw(PLATFORM, self._history)  # unfinished: goes on at a start
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._runner
        if self._share is not None:
            await self._share.leave()

    # -- commands ---------------------------------------------------------------------

    async def sync_commands(self, guild_id: int | None = None) -> int:
        """Write the command set to Discord (globally or to one guild); returns its size."""
        payload = command_payload(self._engine.commands)
        app_id = self.client.application_id
        if app_id is None:
            raise PlatformStartError("Discord did not say the application id; log in first")
        if guild_id is None:
            await self.client.http.bulk_upsert_global_commands(app_id, payload)
        else:
            await self.client.http.bulk_upsert_guild_commands(app_id, guild_id, payload)
        scope = "global" if guild_id is None else str(guild_id)
        await self._redis.set(self._keys.command_digest(PLATFORM, scope), digest(payload))
        self._log.info("Discord: %d commands written (%s)", len(payload), scope)
        return len(payload)

    async def sync_commands_if_changed(self) -> None:
        key = self._keys.command_digest(PLATFORM, "global")
        if await self._redis.get(key) == digest(command_payload(self._engine.commands)):
            self._log.info("Discord: commands unchanged; not written")
            return
        try:
            await self.sync_commands()
        except discord.HTTPException as exc:
            self._log.warning("Discord: could not write the commands: %s", exc)

    # -- events -----------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if message.author.bot or me is None:
            return  # bots, Herald itself included, never trigger it
        if message.type not in WRITTEN:
            return
        with self._tracked():
            await self._resolve_reply(message)
            event = from_message(message, me)
            address = message_address(message, event.chat_id, self.client.intents.message_content)
            if event.addressed:
                await self._keep(event, address)
                return
            # answers nobody: recorded here (where the chat records), at once
            surface = address_surface(self.client, address, self._buckets)
            await self._engine.handle(event, surface)
            if self._unreadable is not None and withheld(message, me):
                await self._unreadable.withheld(PLATFORM, event.chat_id, surface)

    async def _resolve_reply(self, message: discord.Message) -> None:
        """A reply that came without the message it replies to (Discord leaves it out when
        "the backend did not attempt to fetch the message"): discord.py looks for it only
        in its cache, which never holds Herald's own messages (`skip_own_messages`), so it
        is asked of Discord, and a reply to Herald stays a reply to Herald."""
        ref = message.reference
        if message.type != discord.MessageType.reply or ref is None or ref.resolved is not None:
            return
        if ref.message_id is None or ref.channel_id != message.channel.id:
            return
        try:
            ref.resolved = await message.channel.fetch_message(ref.message_id)
        except discord.HTTPException as exc:
            self._log.info("Discord: the message %s replies to could not be read: %s", message.id, exc)

    async def _keep(self, event: Inbound, address: dict[str, Any]) -> None:
        """Into the intake, with where its answer goes; a repeat (Discord delivers some
        events twice) is kept once. Redis down: the person is told, as the engine would."""
        try:
            await self._intake.put(PLATFORM, event.event_id, {"event": inbound_data(event), "reply": address})
        except RedisError as exc:
            self._log.error("Discord: could not keep event %s: %s", event.event_id, exc)
            await say(address_surface(self.client, address, self._buckets), messages.STORE_DOWN)

    async def _answer(self, job: Job) -> None:
        """An event from the intake, received here or by another replica: answered on a
        surface rebuilt from its address, every message recorded (`job.surface`), so that
        a replica taking it over after a crash answers in the same messages."""
        data = job.entry.data
        try:
            event = inbound_from_data(data["event"])
            surface = address_surface(self.client, data["reply"], self._buckets)
        except (KeyError, TypeError, ValueError) as exc:
            self._log.error("Discord: event %s cannot be answered (%s); dropped", job.entry.event_id, exc)
            return
        await self._engine.handle(replace(event, arrival=job.arrival), job.surface(surface))

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """Someone edited a message: a chat that records follows. The gateway sends the
        whole message, so the new text is at hand even when discord.py never cached it.
        Edits and deletions answer nobody: they are followed here, where they arrive."""
        me = self.client.user
        author = payload.data.get("author")
        if payload.guild_id is None or me is None or not isinstance(author, dict) or author.get("bot"):
            return  # DMs are never recorded, nor bots: Herald's streamed answers are edits too
        with self._tracked():
            try:
                message = payload.message
                if message.type not in WRITTEN:
                    return
                edited = from_message(message, me)
            except Exception:  # one odd payload must not cost the others
                self._log.exception("Discord: could not read the edit of message %s", payload.message_id)
                return
            if not edited.text:
                # hidden (no MESSAGE_CONTENT), or only attachments left: no text to replace
                # the recorded one with, and a blank is never recorded
                return
            where = await self._where(payload.channel_id)
            if where is not None:
                chat, thread = where
                await self._engine.message_edited(replace(edited, chat_id=chat, thread_id=thread))

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._forget(payload.guild_id, payload.channel_id, [payload.message_id])

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._forget(payload.guild_id, payload.channel_id, payload.message_ids)

    async def _forget(self, guild_id: int | None, channel_id: int, message_ids: Iterable[int]) -> None:
        """Deleted messages leave the chat's log. Only ids come (whoever wrote them): the
        core finds what it recorded, by id and the time each id holds."""
        if guild_id is None:
            return  # DMs are never recorded
        with self._tracked():
            where = await self._where(channel_id)
            if where is not None:
                await self._engine.messages_deleted(PLATFORM, where[0], deleted(message_ids))

    async def _where(self, channel_id: int) -> tuple[str, str | None] | None:
        """(chat, thread) of a guild channel known only by id, as `place` gives it for a
        message. discord.py holds every channel and the active threads, but forgets a
        thread once it is archived (moderators still delete there): such a thread's parent
        is asked of Discord once, and kept, since a thread never moves. None when Discord
        will not say (the channel is gone, or hidden from Herald)."""
        channel = self.client.get_channel(channel_id)
        if channel is not None:
            return place(channel)
        parent = self._thread_parents.get(channel_id)
        if parent is None:
            try:
                fetched = await self.client.fetch_channel(channel_id)
            except (discord.HTTPException, discord.InvalidData, OSError) as exc:  # OSError: unreachable
                self._log.warning("Discord: cannot tell which chat channel %s is in: %s", channel_id, exc)
                return None
            if not isinstance(fetched, discord.Thread):
                return place(fetched)
            if len(self._thread_parents) >= _PARENTS_KEPT:
                self._thread_parents.pop(next(iter(self._thread_parents)))
            parent = self._thread_parents[channel_id] = fetched.parent_id
        return str(parent), str(channel_id)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        data: Mapping[str, object] = interaction.data or {}
        if interaction.type is discord.InteractionType.application_command:
            await self._defer_and_keep(interaction, from_interaction(interaction))
        elif interaction.type is discord.InteractionType.component:
            command = clicked_command(str(data.get("custom_id", "")))
            if command is not None:
                await self._on_click(interaction, command)
        elif interaction.type is discord.InteractionType.modal_submit:
            await self._on_form(interaction, data)

    async def _on_click(self, interaction: discord.Interaction, command: CommandCall) -> None:
        """A command button: its command runs as the person who clicked, like the slash
        command. A decision (approve, reject…) shows its outcome on the clicked message;
        anything else answers with a new message. Edit opens a form first, here."""
        event = replace(from_button(interaction), command=command)
        post_id = edit_request(command)
        if post_id is not None and self._actions is not None:
            with self._tracked():
                await self._open_editor(self._actions, interaction, post_id, event)
            return
        await self._defer_and_keep(interaction, event, decision=self._engine.commands.decides(command))

    async def _on_form(self, interaction: discord.Interaction, data: Mapping[str, object]) -> None:
        """A submitted edit form: its text completes the Edit button's command."""
        command = clicked_command(str(data.get("custom_id", "")))
        post_id = edit_request(command) if command is not None else None
        if post_id is not None:
            event = replace(from_button(interaction), command=edit_command(post_id, form_text(data)))
            await self._defer_and_keep(interaction, event, decision=True)

    async def _defer_and_keep(
        self, interaction: discord.Interaction, event: Inbound, decision: bool = False
    ) -> None:
        with self._tracked():
            try:
                # inside Discord's 3-second window: a decision updates the clicked message
                # later; otherwise "thinking" makes a new message for the answer
                response = await interaction.response.defer(thinking=not decision)
            except discord.HTTPException as exc:  # 40060: another process took it
                self._log.warning("Discord: could not acknowledge interaction %s: %s", interaction.id, exc)
                return
            reads_text = self.client.intents.message_content
            address = interaction_address(
                interaction, event.chat_id, response, decision=decision, reads_text=reads_text
            )
            await self._keep(event, address)

    async def _open_editor(
        self, actions: PostActions, interaction: discord.Interaction, post_id: str, event: Inbound
    ) -> None:
        """Edit: a form holding the draft (a refusal is for the clicker alone)."""
        post, why = await actions.editable(post_id, event)
        try:
            if post is None:
                await interaction.response.send_message(why, ephemeral=True, allowed_mentions=NO_PINGS)
                return
            form = edit_form(post)
            try:
                await interaction.response.send_modal(form)
            finally:
                form.stop()  # the submission reaches on_interaction like any other
        except discord.HTTPException as exc:
            self._log.warning("Discord: could not open the editor: %s", exc)

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """discord.py runs each event in its own task; remember it until it ends."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._in_flight.discard(task)

"""The engine: one path that every incoming event takes, whatever the platform.

allowed? → addressed? → duplicate, rate limit, quota (one Redis round trip) →
a command, or: the conversation's turn → prompt within budget → streamed
answer → saved. The checks that need no Redis come first, so chatter in a
group that is not for Herald costs nothing. Adapters only translate; every
decision is made here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from core import messages
from core.chat.access import AccessPolicy
from core.chat.admission import Admitter, Verdict
from core.chat.cancel import CancelBus, Generation
from core.chat.context import BuiltContext, ContextBuilder, MessageTooLong
from core.chat.locks import ConversationLocks, LockTimeout
from core.chat.memory import ConversationStore, Turn
from core.chat.render import STREAMING_CALLS, StreamRenderer
from core.chat.say import say
from core.chatlog.backfill import Backfills
from core.chatlog.store import ChatLog, loggable
from core.commands.context import CommandContext
from core.commands.registry import CommandError, CommandRegistry, ParsedCommand
from core.llm.base import ChatMessage, Finished, GenerationParams, LLMClient, TextDelta
from core.llm.errors import ContextTooLong, LLMError
from core.metrics import MeteredSurface, Metrics
from core.platform import Button, ConversationKey, Inbound, Posted, Surface


class Outcome(enum.Enum):
    """What became of an event; logged, and counted by later metrics."""

    ANSWERED = "answered"
    COMMAND = "command"
    STOPPED = "stopped"
    NOT_ADDRESSED = "not_addressed"
    DUPLICATE = "duplicate"
    NOT_ALLOWED = "not_allowed"
    RATE_LIMITED = "rate_limited"
    OVER_QUOTA = "over_quota"
    INVALID = "invalid"
    BUSY = "busy"
    FAILED = "failed"
    SHUTTING_DOWN = "shutting_down"


#: a command's prompt, or a coroutine function that builds it in the conversation's turn
PromptSource = Sequence[ChatMessage] | Callable[[], Awaitable[Sequence[ChatMessage]]]


#: answers preparing at once (their conversation loaded, tokens counted, the prompt
#: built): a burst of arrivals is taken in waves, so the answers already streaming keep
#: an event loop that runs them on time. The model's own queue is not waited in here.
#: Each preparing answer puts its steps in the loop's queue, ahead of a first token
#: arriving for another: 8 rather than 32 took first visible after the first token at
#: 200 answers at once from ~23 to ~8 ms p50 with the person's whole wait the same, and
#: at 1,000 from 40–100 to 14–22 ms, where the slowest tenth of the arrivals waited
#: 0–3 s longer to start (bench.streaming_discord, on 2 CPUs with a Python tokenizer).
#: 4 rather than 8 halved the loop's lag at 1,000 (p99 65–74 to 25–39 ms), but when the
#: loop is full the waves' round trips are slow, so there the person's wait grew by
#: 0.4–2.5 s (p50): a lag unseen in a message edited once a second, a wait that is seen.
PREPARING = 8


class _Preparing:
    """A place among the answers preparing, given back when generation starts or at the end."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False

    async def take(self) -> _Preparing:
        await self._places.acquire()
        self._held = True
        return self

    def done(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


@dataclass(frozen=True, slots=True)
class EnginePolicy:
    system_prompt: str
    generation: GenerationParams
    conversation_wait: float = 300.0
    #: longest one answer may take, from its turn's start (HERALD_ANSWER_TIMEOUT)
    answer_timeout: float = 300.0
    #: a message still waiting for its conversation's turn this long is told so, once
    wait_notice_after: float = 2.0
    #: extra tries, dropping one more block each, when the server still reports a
    #: context overflow before the first token (estimated counts, or limits that
    #: changed since start)
    overflow_retries: int = 2


@dataclass(slots=True)
class _Stream:
    started: float  # when the message was taken (monotonic)
    platform: str
    turn: float  # when the conversation's turn began (the loop's clock): stops since count
    resumed: bool = False  # taken over from a replica that died answering it: said under it
    text: str = ""
    tokens: int = 0
    finished: Finished | None = None
    timed_out: bool = False  # stopped at the answer's time limit


@dataclass(frozen=True, slots=True)
class _Generated:
    text: str
    tokens: int
    outcome: Outcome
    #: the model stopped at the length limit (`max_new_tokens`), mid-thought
    cut: bool = False

    @property
    def partial(self) -> bool:
        return self.outcome is not Outcome.ANSWERED


class _RetryWithLessHistory(Exception):
    pass


RendererFactory = Callable[[Surface], StreamRenderer]
#: under an answer the model cut short at the length limit
CONTINUE = Button("▶️ Continue", "continue")


class Engine:
    def __init__(
        self,
        *,
        memory: ConversationStore,
        admitter: Admitter,
        locks: ConversationLocks,
        cancels: CancelBus,
        llm: LLMClient,
        context: ContextBuilder,
        access: AccessPolicy,
        commands: CommandRegistry,
        policy: EnginePolicy,
        renderer: RendererFactory | None = None,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        chatlog: ChatLog | None = None,
        backfills: Backfills | None = None,
    ) -> None:
        self.memory = memory
        #: records the messages of chats that turned it on (`/history on`)
        self.chatlog = chatlog
        #: reads chats' past into the log (`/history on backfill=…`), on platforms with history
        self.backfills = backfills
        self.admitter = admitter
        self.locks = locks
        self.cancels = cancels
        self.llm = llm
        self.context = context
        self.access = access
        self.commands = commands
        self.policy = policy
        #: answers render with places shared for their streaming edits (`core.chat.render`)
        places = asyncio.Semaphore(STREAMING_CALLS)
        self._renderer = renderer or functools.partial(StreamRenderer, places=places)
        self._preparing = asyncio.Semaphore(PREPARING)
        self.metrics = metrics or Metrics()
        self.generating = 0  # answers being generated in this process
        self.closing = False  # set by `drain`: no new answers start
        self._idle = asyncio.Event()  # set while nothing is being generated
        self._idle.set()
        self._log = logger or logging.getLogger("herald.engine")
        #: how the engine waits out its time limits and the wait notice (tests pace it)
        self.sleep = sleep

    async def handle(self, event: Inbound, surface: Surface) -> Outcome:
        """Process one event to the end; never raises for bad input or failing services.
        `event.arrival` says whether it came through the intake, or was taken over."""
        self.metrics.events_received.labels(event.platform).inc()
        surface = MeteredSurface(surface, event.platform, self.metrics)
        try:
            outcome = await self._handle(event, surface)
        except RedisError as exc:
            self._log.error("redis failed for %s: %s", event.event_id, exc)
            await say(surface, messages.STORE_DOWN)
            outcome = Outcome.FAILED
        except Exception:
            self._log.exception("unexpected error handling %s", event.event_id)
            await say(surface, messages.UNEXPECTED)
            outcome = Outcome.FAILED
        self.metrics.events.labels(event.platform, outcome.value).inc()
        self._log.info(
            "event platform=%s conv=%s event=%s outcome=%s",
            event.platform,
            event.conversation,
            event.event_id,
            outcome.value,
            extra={
                "platform": event.platform,
                "conversation": str(event.conversation),
                "event_id": event.event_id,
                "outcome": outcome.value,
            },
        )
        return outcome

    async def _handle(self, event: Inbound, surface: Surface) -> Outcome:
        if not self.access.allows(event):
            if event.is_private and (event.addressed or event.command):
                await say(surface, messages.NOT_ALLOWED)
            return Outcome.NOT_ALLOWED
        await self._record(event)
        parsed: ParsedCommand | None = None
        problem: str | None = None
        if event.command is not None:
            try:
                parsed = self.commands.parse(event.command)
            except CommandError as exc:
                problem = str(exc)
        elif not event.addressed:
            return Outcome.NOT_ADDRESSED

        if event.arrival.resumed:  # admitted by the replica that began it
            return await self._resume(parsed, problem, event, surface)
        generates = parsed.spec.generates if parsed is not None else event.command is None
        limited = generates and not self.access.is_admin(event.platform, event.author)
        admission = await self.admitter.admit(
            event.platform,
            event.event_id,
            event.author.user_id,
            limited=limited,
            check_repeat=not event.arrival.deduplicated,
        )
        if admission.verdict is Verdict.DUPLICATE:
            return Outcome.DUPLICATE
        if admission.verdict is Verdict.RATE_LIMITED:
            await say(surface, messages.rate_limited(admission.retry_after))
            return Outcome.RATE_LIMITED
        if admission.verdict is Verdict.OVER_QUOTA:
            await say(surface, messages.over_quota(admission.retry_after))
            return Outcome.OVER_QUOTA
        if problem is not None:
            await say(surface, problem)
            return Outcome.INVALID
        if parsed is not None:
            return await self._run_command(parsed, event, surface)
        return await self.answer(event, surface, event.text)

    async def _resume(
        self, parsed: ParsedCommand | None, problem: str | None, event: Inbound, surface: Surface
    ) -> Outcome:
        """An event a replica that died had begun: answers start over (in the messages it
        sent, its turn saved once); so do commands that write with the model or decide a
        post (the post's own lifecycle makes that safe). Any other command may have done
        its work already: doing it again could do it twice, so the person is told."""
        if problem is not None:
            await say(surface, problem)
            return Outcome.INVALID
        if parsed is None:
            return await self.answer(event, surface, event.text)
        if parsed.spec.generates or parsed.spec.decides:
            return await self._run_command(parsed, event, surface)
        await say(surface, messages.COMMAND_INTERRUPTED)
        return Outcome.FAILED

    async def _run_command(self, parsed: ParsedCommand, event: Inbound, surface: Surface) -> Outcome:
        context = CommandContext(event, surface, self)
        if not parsed.spec.needs_turn:
            await parsed.handler(context, parsed.args)
            return Outcome.COMMAND
        try:
            async with self._turn(event.conversation, surface):
                await parsed.handler(context, parsed.args)
        except LockTimeout:
            await say(surface, messages.BUSY_CONVERSATION)
            return Outcome.BUSY
        return Outcome.COMMAND

    async def answer(
        self, event: Inbound, surface: Surface, text: str, *, continuing: bool = False
    ) -> Outcome:
        """Answer `text` in the event's conversation, waiting for its turn. `continuing`:
        only if the conversation's last answer was cut short at the length limit."""
        text = text.strip()
        if not text:
            await say(surface, messages.EMPTY_MESSAGE)
            return Outcome.INVALID
        started = time.monotonic()
        # Counting the message's tokens needs no history: it overlaps the wait
        # for the conversation's turn and the memory load.
        counting = asyncio.ensure_future(self.llm.count_tokens(text))
        try:
            async with self._turn(event.conversation, surface):
                renderer = self._renderer(surface)
                if self._preparing.locked():
                    # a burst: show typing while this answer waits for its wave, not
                    # only once its own preparation begins (seconds later at 1,000)
                    await renderer.start()
                preparing = await _Preparing(self._preparing).take()
                try:
                    return await self._answer_in_turn(
                        event, surface, text, counting, started, continuing, preparing, renderer
                    )
                finally:
                    preparing.done()
                    await renderer.abandon()  # ended before any text: stop its typing
        except LockTimeout:
            await say(surface, messages.BUSY_CONVERSATION)
            return Outcome.BUSY
        finally:
            _settle(counting)

    async def answer_with(self, event: Inbound, surface: Surface, prompt: PromptSource) -> str:
        """Stream the model's answer to a prompt a command built from data of its own
        (search results, a summary's pieces): in the conversation's turn, stopped by
        /cancel and limited like any answer, but not remembered in the conversation.
        `prompt` may be a coroutine function that builds it (a summary reading its
        pieces): it runs in the turn too, and /cancel stops it. The text shown ('' when
        there is none: the command then adds no sources)."""
        started = time.monotonic()
        try:
            async with self._turn(event.conversation, surface):
                if callable(prompt):
                    built = await self._build(event.conversation, surface, prompt)
                    if built is None:
                        return ""
                    prompt = built
                return await self._answer_once(event, surface, prompt, started)
        except LockTimeout:
            await say(surface, messages.BUSY_CONVERSATION)
            return ""

    async def _build(
        self, conv: ConversationKey, surface: Surface, build: Callable[[], Awaitable[Sequence[ChatMessage]]]
    ) -> Sequence[ChatMessage] | None:
        """Run a command's prompt building where /cancel (or a shutdown) can stop it;
        None when it was stopped (and the chat told so)."""
        task = asyncio.ensure_future(build())
        with self.cancels.track(conv, task, since=asyncio.get_running_loop().time()) as generation:
            try:
                return await task
            except asyncio.CancelledError:
                if not generation.cancelled or _cancelling():
                    raise
                self._log.info("building a prompt for %s stopped", conv)
                await say(surface, messages.RESTARTING if generation.interrupted else messages.STOPPED)
                return None

    async def _answer_once(
        self, event: Inbound, surface: Surface, prompt: Sequence[ChatMessage], started: float
    ) -> str:
        if self.closing:
            await say(surface, messages.RESTARTING)
            return ""
        turn = asyncio.get_running_loop().time()
        renderer = self._renderer(surface)
        await renderer.start()
        try:
            prepared = await self.llm.prepare(prompt)
            if prepared.input_tokens > self.context.budget:
                await renderer.fail(messages.TOO_MUCH_TO_READ)
                return ""
            built = BuiltContext(prepared, user_tokens=0, history_used=0, history_start=0)
            state = _Stream(started, event.platform, turn, resumed=event.arrival.resumed)
            result = await self._generate(event.conversation, built, renderer, state, may_retry=False)
        except LLMError as exc:
            self._log.warning("model error before answering %s: %r", event.conversation, exc)
            await renderer.fail(exc.user_message)
            return ""
        self._observe(event.platform, started, renderer)
        if result.text:
            await self.admitter.charge(
                event.platform, event.author.user_id, prepared.input_tokens + result.tokens
            )
        return result.text

    async def charge(self, event: Inbound, tokens: int) -> None:
        """Count model tokens a command spent on its own calls (a summary's pieces)
        against the person's daily quota, as every answer's are."""
        await self.admitter.charge(event.platform, event.author.user_id, tokens)

    async def _record(self, event: Inbound) -> None:
        """Put a message written in a group chat into the chat's log, where the chat
        records (one round trip; the store checks). DMs and commands are not recorded;
        a failure is logged and never stops the answer."""
        message = loggable(event)
        if self.chatlog is None or message is None or event.is_private:
            return
        try:
            await self.chatlog.record(event.platform, event.chat_id, message)
        except RedisError as exc:
            self._log.warning("could not record %s in the chat log: %s", event.event_id, exc)

    async def message_edited(self, event: Inbound) -> None:
        """A message was edited on the platform: a chat that records follows the edit
        (the new text replaces the old, in the index too). Never raises."""
        posted = event.posted
        if self.chatlog is None or posted is None or event.is_private or not self.access.allows(event):
            return
        try:
            await self.chatlog.edit(event.platform, event.chat_id, posted.message_id, posted.at, event.text)
        except RedisError as exc:
            self._log.warning("could not follow an edit in the chat log: %s", exc)

    async def messages_deleted(self, platform: str, chat_id: str, deleted: Sequence[Posted]) -> None:
        """Messages were deleted on the platform: a chat that records forgets them
        everywhere, index included. Never raises."""
        if self.chatlog is None:
            return
        try:
            for posted in deleted:
                await self.chatlog.delete(platform, chat_id, posted.message_id, posted.at)
        except RedisError as exc:
            self._log.warning("could not forget deleted messages in the chat log: %s", exc)

    @contextlib.asynccontextmanager
    async def _turn(self, conv: ConversationKey, surface: Surface) -> AsyncIterator[None]:
        """Hold the conversation's turn (`LockTimeout` past `conversation_wait`). A message
        still waiting after `wait_notice_after` is told so, once: the turn may be held by
        an answer elsewhere, or by a process that died holding it until its lease runs
        out, and silence would look like Herald ignored the message."""
        telling = asyncio.Event()  # set once the notice is being said: it is then let finish
        notice = asyncio.create_task(self._tell_waiting(surface, telling))
        try:
            async with self.locks.hold(conv, wait=self.policy.conversation_wait):
                await self._end_notice(notice, telling)  # said before anything of the answer
                yield
        finally:
            await self._end_notice(notice, telling)

    async def _tell_waiting(self, surface: Surface, telling: asyncio.Event) -> None:
        await self.sleep(self.policy.wait_notice_after)
        telling.set()
        await say(surface, messages.WAITING_FOR_TURN)

    async def _end_notice(self, notice: asyncio.Task[None], telling: asyncio.Event) -> None:
        if not telling.is_set():
            notice.cancel()
        await asyncio.wait([notice])
        if not notice.cancelled() and notice.exception() is not None:
            self._log.warning("could not say that a message waits: %r", notice.exception())

    async def continue_answer(self, event: Inbound, surface: Surface) -> Outcome:
        """`/continue`: the rest of an answer the model cut short, in the same conversation."""
        return await self.answer(event, surface, messages.CONTINUE_PROMPT, continuing=True)

    async def _answer_in_turn(
        self,
        event: Inbound,
        surface: Surface,
        text: str,
        counting: asyncio.Future[int],
        started: float,
        continuing: bool,
        preparing: _Preparing,
        renderer: StreamRenderer,
    ) -> Outcome:
        conv = event.conversation
        if self.closing:  # it waited for its turn while the process began to stop
            await say(surface, messages.RESTARTING)
            return Outcome.SHUTTING_DOWN
        turn = asyncio.get_running_loop().time()
        if event.arrival.resumed and await self.memory.saved(conv, event.event_id):
            return Outcome.ANSWERED  # the replica that died had finished it
        persona, history = await self.memory.load(conv)
        if continuing and not (history and history[-1].role == "assistant" and history[-1].cut):
            await say(surface, messages.NOTHING_TO_CONTINUE)
            return Outcome.INVALID
        system = persona or self.policy.system_prompt
        await renderer.start()
        for skip in range(self.policy.overflow_retries + 1):
            try:
                user_tokens = await counting
                built = await self.context.build(
                    system, history, text, user_tokens=user_tokens, skip_blocks=skip
                )
                preparing.done()
                result = await self._generate(
                    conv,
                    built,
                    renderer,
                    _Stream(started, event.platform, turn, resumed=event.arrival.resumed),
                    may_retry=skip < self.policy.overflow_retries,
                )
                break
            except MessageTooLong as exc:
                await renderer.fail(self._too_long(exc, persona))
                return Outcome.INVALID
            except _RetryWithLessHistory:
                self._log.warning("context overflow on %s; dropping another block", conv)
            except LLMError as exc:
                self._log.warning("model error before answering %s: %r", conv, exc)
                await renderer.fail(exc.user_message)
                return Outcome.FAILED
        else:  # pragma: no cover - the last try never asks to retry
            raise AssertionError("unreachable")
        self._observe(event.platform, started, renderer)

        if result.text:
            await self.memory.append(
                conv,
                [
                    Turn("user", text, built.user_tokens),
                    Turn("assistant", result.text, result.tokens, partial=result.partial, cut=result.cut),
                ],
                once=event.event_id,
            )
            await self.admitter.charge(
                event.platform, event.author.user_id, built.prompt.input_tokens + result.tokens
            )
        if result.cut:  # said once the turn is saved, so /continue finds it
            await say(surface, messages.CUT_SHORT, (CONTINUE,))
        return result.outcome

    async def _generate(
        self,
        conv: ConversationKey,
        built: BuiltContext,
        renderer: StreamRenderer,
        state: _Stream,
        *,
        may_retry: bool,
    ) -> _Generated:
        pump = asyncio.create_task(self._pump(built, renderer, state))
        self.generating += 1
        self._idle.clear()
        try:
            return await self._follow(conv, pump, renderer, state, may_retry=may_retry)
        finally:
            self.generating -= 1
            if not self.generating:
                self._idle.set()

    async def _follow(
        self,
        conv: ConversationKey,
        pump: asyncio.Task[None],
        renderer: StreamRenderer,
        state: _Stream,
        *,
        may_retry: bool,
    ) -> _Generated:
        with self.cancels.track(conv, pump, since=state.turn) as generation:
            watchdog = asyncio.create_task(self._time_limit(pump, state))
            try:
                await pump
            except asyncio.CancelledError:
                if not (generation.cancelled or (state.timed_out and not _cancelling())):
                    raise
                return await self._stopped(conv, generation, renderer, state)
            except LLMError as exc:
                if isinstance(exc, ContextTooLong) and not state.text and may_retry:
                    raise _RetryWithLessHistory from exc
                self._log.warning("model error while answering %s: %r", conv, exc)
                if not state.text.strip():
                    await renderer.fail(exc.user_message)
                    return _Generated("", 0, Outcome.FAILED)
                await renderer.finish(note=messages.interrupted(exc.user_message))
                return _Generated(state.text, state.tokens, Outcome.FAILED)
            finally:
                watchdog.cancel()
        await renderer.finish(note=messages.RESUMED if state.resumed else None)
        cut = state.finished is not None and state.finished.finish_reason == "length"
        return _Generated(state.text, state.tokens, Outcome.ANSWERED, cut=cut)

    async def _stopped(
        self, conv: ConversationKey, generation: Generation, renderer: StreamRenderer, state: _Stream
    ) -> _Generated:
        """End an answer whose generation was stopped: on request, by shutdown, or at
        its time limit; what was written so far is kept, under a note saying why."""
        if generation.interrupted:
            self._log.info("generation for %s interrupted by shutdown", conv)
            await self._end(renderer, state, messages.interrupted(messages.RESTARTING))
            return _Generated(state.text, state.tokens, Outcome.SHUTTING_DOWN)
        if generation.cancelled:
            self._log.info("generation for %s stopped on request", conv)
            await self._end(renderer, state, messages.STOPPED)
            return _Generated(state.text, state.tokens, Outcome.STOPPED)
        self._log.warning("answer for %s stopped at its time limit", conv)
        self.metrics.answers_limited.labels("time").inc()
        await self._end(renderer, state, messages.interrupted(messages.TIME_LIMIT))
        return _Generated(state.text, state.tokens, Outcome.FAILED)

    async def _time_limit(self, pump: asyncio.Task[None], state: _Stream) -> None:
        """Stop the generation once the answer has taken `answer_timeout` since its turn
        began: a server may stream tokens for ever, each in time for the idle timeout."""
        left = state.turn + self.policy.answer_timeout - asyncio.get_running_loop().time()
        await self.sleep(max(0.0, left))
        if not pump.done():
            state.timed_out = True
            pump.cancel()

    def _too_long(self, exc: MessageTooLong, persona: str | None) -> str:
        """Blame the persona when it takes more than its share: the budget shrank since
        it was set (a smaller model), and no message can fit beside it."""
        most = self.context.max_system_tokens
        if persona and exc.system_tokens > most:
            return messages.persona_crowds_out(exc.system_tokens, exc.budget, most)
        return messages.message_too_long(exc.tokens, exc.limit)

    def _observe(self, platform: str, started: float, renderer: StreamRenderer) -> None:
        if renderer.visible_at is not None:
            self.metrics.time_to_first_output.labels(platform).observe(renderer.visible_at - started)
        self.metrics.answer_time.labels(platform).observe(time.monotonic() - started)

    async def _pump(self, built: BuiltContext, renderer: StreamRenderer, state: _Stream) -> None:
        async for item in self.llm.stream(built.prompt, self.policy.generation, renderer.idle_for):
            if isinstance(item, TextDelta):
                if not state.tokens:
                    self.metrics.time_to_first_token.labels(state.platform).observe(
                        time.monotonic() - state.started
                    )
                state.text += item.text
                state.tokens += 1
                await renderer.feed(item.text)
            else:
                state.finished = item
                state.tokens = item.generated_tokens

    @staticmethod
    async def _end(renderer: StreamRenderer, state: _Stream, note: str) -> None:
        if state.text.strip():
            await renderer.finish(note=note)
        else:
            await renderer.fail(note)

    async def drain(self, grace: float) -> int:
        """Shutdown: start no new answers; let those being generated finish for up to
        `grace` seconds, then stop them, marked interrupted for the user (what was
        written so far is kept). Returns how many were interrupted."""
        self.closing = True
        if await self._wait_idle(grace):
            return 0
        interrupted = self.cancels.interrupt_all()
        self._log.warning("stopped %d answers still running after %.0f s", interrupted, grace)
        await self._wait_idle(10.0)  # at once: each writes its note and returns
        return interrupted

    async def _wait_idle(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def chat_moved(self, platform: str, old_chat: str, new_chat: str) -> None:
        """A chat got a new id (Telegram group → supergroup): its memory follows it."""
        try:
            moved = await self.memory.move_chat(platform, old_chat, new_chat)
        except RedisError as exc:
            self._log.error("could not move %s:%s to %s: %s", platform, old_chat, new_chat, exc)
            return
        self._log.info("chat %s:%s is now %s (%d keys moved)", platform, old_chat, new_chat, moved)


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not only what it awaits)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _settle(future: asyncio.Future[int]) -> None:
    """Cancel a side request nobody waits for any more, and consume its error."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()

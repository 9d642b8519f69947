"""The engine end to end: real Redis, the TGI emulator, a recording surface."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from redis.asyncio import Redis

from bots.runtime import build_engine, build_llm
from core import messages
from core.chat.engine import PREPARING, Outcome
from core.llm.base import ChatMessage, LLMClient, PreparedPrompt
from core.llm.forwarding import ForwardingLLM
from core.platform import Button, Capabilities, ConversationKey
from tests.conftest import EngineFactory, SettingsFactory
from tests.emulators.tgi import Fault, TGIEmulator
from tests.support import RecordingSurface, event, eventually


async def ask(engine: object, text: str, **kw: object) -> tuple[Outcome, RecordingSurface]:
    surface = RecordingSurface()
    outcome = await engine.handle(event(text, **kw), surface)  # type: ignore[attr-defined]
    return outcome, surface


async def test_private_conversation_remembers(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    outcome, first = await ask(engine, "Hello, my name is Ada")
    assert outcome is Outcome.ANSWERED
    assert first.last == "You said: Hello, my name is Ada"
    _, second = await ask(engine, "What is my name?")
    assert second.last == "Your name is Ada."
    _, elsewhere = await ask(engine, "What is my name?", chat="another-chat")
    assert elsewhere.last == "I don't know your name yet."


async def test_threads_are_separate_conversations(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    await ask(engine, "my name is Bo", private=False, thread="t1")
    _, same = await ask(engine, "what is my name", private=False, thread="t1")
    _, other = await ask(engine, "what is my name", private=False, thread="t2")
    assert same.last == "Your name is Bo."
    assert other.last == "I don't know your name yet."


async def test_unaddressed_messages_are_ignored(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    outcome, surface = await ask(engine, "just chatting", addressed=False, private=False)
    assert outcome is Outcome.NOT_ADDRESSED
    assert surface.calls == []
    assert tgi.prompts == []


async def test_duplicate_events_are_answered_once(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    first = await engine.handle(event("hi", event_id="same"), RecordingSurface())
    again_surface = RecordingSurface()
    again = await engine.handle(event("hi", event_id="same"), again_surface)
    assert (first, again) == (Outcome.ANSWERED, Outcome.DUPLICATE)
    assert again_surface.calls == []
    assert len(tgi.prompts) == 1


async def test_allow_lists_and_admins(make_engine: EngineFactory) -> None:
    engine = await make_engine(allowed_chats="test:good-chat", allowed_users="test:alice", admins="test:root")
    ok, _ = await ask(engine, "hi", user="alice", chat="good-chat")
    wrong_chat, told = await ask(engine, "hi", user="alice", chat="bad-chat")
    wrong_user_group, silent = await ask(engine, "hi", user="mallory", chat="good-chat", private=False)
    admin, _ = await ask(engine, "hi", user="root", chat="anywhere")
    assert ok is Outcome.ANSWERED and admin is Outcome.ANSWERED
    assert wrong_chat is Outcome.NOT_ALLOWED and told.last == "Sorry, I'm not available in this chat."
    assert wrong_user_group is Outcome.NOT_ALLOWED and silent.calls == []


async def test_rate_limit_and_quota_answer_briefly(make_engine: EngineFactory) -> None:
    engine = await make_engine(rate_limit_burst=2, rate_limit_per_minute=1, admins="test:boss")
    outcomes = [(await ask(engine, f"q{i}"))[0] for i in range(3)]
    assert outcomes == [Outcome.ANSWERED, Outcome.ANSWERED, Outcome.RATE_LIMITED]
    _, slow = await ask(engine, "again")
    wait = re.search(r"faster than I can answer — try again in (\d+) s\.", slow.last)
    assert wait is not None and 55 <= int(wait[1]) <= 60  # one message a minute
    admin = [(await ask(engine, f"q{i}", user="boss"))[0] for i in range(3)]
    assert admin == [Outcome.ANSWERED] * 3  # admins pass limits
    _, help_ = await ask(engine, "/help")  # commands that don't generate are not limited
    assert "/reset" in help_.last

    quota_engine = await make_engine(daily_token_quota=10)
    assert (await ask(quota_engine, "first", user="q"))[0] is Outcome.ANSWERED
    outcome, told = await ask(quota_engine, "second", user="q")
    assert outcome is Outcome.OVER_QUOTA
    assert "used today's answer quota" in told.last


async def test_two_engines_serialise_one_conversation(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    first, second = await make_engine(), await make_engine()  # two replicas, own connections
    tgi.token_delay = 0.01
    a, b = RecordingSurface(), RecordingSurface()
    await asyncio.gather(
        first.handle(event("my name is Cy"), a),
        second.handle(event("my name is Cy, really"), b),
    )
    assert tgi.max_in_flight == 1
    history = await first.memory.history(ConversationKey("test", "c1", None))
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]
    # Whichever ran second saw the first one's complete turn in its prompt.
    assert history[1].content in tgi.prompts[1]


async def test_different_conversations_run_concurrently(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.token_delay = 0.01
    await asyncio.gather(*(ask(engine, "hello there", chat=f"c{i}") for i in range(4)))
    assert tgi.max_in_flight >= 2


async def test_second_message_waits_its_turn(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.token_delay = 0.01
    results = await asyncio.gather(*(ask(engine, f"message {i}") for i in range(3)))
    assert [o for o, _ in results] == [Outcome.ANSWERED] * 3
    history = await engine.memory.history(ConversationKey("test", "c1", None))
    assert len(history) == 6
    assert tgi.max_in_flight == 1


async def test_busy_model_server_is_a_short_answer(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    tgi.max_concurrent_requests = 1  # read from /info: never more requests than this
    engine = await make_engine(llm_queue_timeout=0.2)
    tgi.token_delay = 0.1
    results = await asyncio.gather(*(ask(engine, "hello there", chat=f"c{i}") for i in range(2)))
    outcomes = sorted(outcome.value for outcome, _ in results)
    assert outcomes == ["answered", "failed"]
    busy = next(surface for outcome, surface in results if outcome is Outcome.FAILED)
    assert busy.texts == ["The model is busy right now — try again in a minute."]
    assert tgi.max_in_flight == 1


async def test_model_errors_before_the_stream_are_short(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.inject(Fault(kind="http_status", status=424, error_type="generation"), times=5)
    outcome, surface = await ask(engine, "hello")
    assert outcome is Outcome.FAILED
    assert surface.texts == ["The model failed while answering."]
    assert await engine.memory.history(ConversationKey("test", "c1", None)) == []


async def test_error_during_stream_keeps_and_marks_partial_answer(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine()
    tgi.responder = lambda messages: "one two three four five six seven"
    tgi.inject(Fault(kind="error_event", after_tokens=3))
    outcome, surface = await ask(engine, "count")
    assert outcome is Outcome.FAILED
    assert surface.last.startswith("one two three")
    assert "⚠️ Answer interrupted" in surface.last
    history = await engine.memory.history(ConversationKey("test", "c1", None))
    assert [(t.role, t.content, t.partial) for t in history] == [
        ("user", "count", False),
        ("assistant", "one two three", True),
    ]


async def test_stalled_stream_is_reported(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine(llm_idle_timeout=0.3)
    tgi.responder = lambda messages: "alpha beta gamma delta"
    tgi.inject(Fault(kind="stall", after_tokens=2))
    outcome, surface = await ask(engine, "go")
    assert outcome is Outcome.FAILED
    assert surface.last.startswith("alpha beta")
    assert "stopped responding" in surface.last


async def test_model_server_down(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    await tgi.stop()
    outcome, surface = await ask(engine, "anyone there?")
    assert outcome is Outcome.FAILED
    assert surface.texts == ["I can't reach the model server right now — try again in a minute."]


async def test_cancel_from_another_process(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    other = await make_engine()  # a second engine with its own cancel listener
    tgi.responder = lambda messages: " ".join(f"w{i}" for i in range(200))
    tgi.token_delay = 0.02
    surface = RecordingSurface()
    answering = asyncio.create_task(engine.handle(event("talk a lot"), surface))
    async with asyncio.timeout(5):
        while not surface.texts:  # noqa: ASYNC110 - waiting for the first visible output
            await asyncio.sleep(0.01)
    outcome, told = await ask(other, "/cancel")
    assert outcome is Outcome.COMMAND
    assert told.last == "Stopping the current answer."
    assert await answering is Outcome.STOPPED
    assert surface.last.startswith("w0") and surface.last.endswith("⏹️ Stopped.")
    history = await engine.memory.history(ConversationKey("test", "c1", None))
    assert history[-1].partial and len(history[-1].content.split()) < 200
    _, idle = await ask(other, "/cancel")
    assert idle.last.startswith("Nothing to cancel")


class HeldPrompt(ForwardingLLM):
    """The model client, holding every prompt until `go` is set: a turn that has begun
    but whose generation has not, for as long as the test needs. `waiting`: prompts held
    now, `most`: at once at most."""

    def __init__(self, inner: LLMClient) -> None:
        super().__init__(inner)
        self.go = asyncio.Event()
        self.held = asyncio.Event()
        self.waiting = 0
        self.most = 0

    async def prepare(self, messages: Sequence[ChatMessage]) -> PreparedPrompt:
        self.held.set()
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        await self.go.wait()
        self.waiting -= 1
        return await super().prepare(messages)


async def test_cancel_before_the_generation_starts_stops_it(
    make_settings: SettingsFactory, redis: Redis, tgi: TGIEmulator
) -> None:
    """/cancel while the answer's prompt is being built: "Stopping" is true."""
    settings = make_settings()
    llm = HeldPrompt(build_llm(settings))
    await llm.start()
    engine = build_engine(settings, redis, llm)
    await engine.cancels.start()
    try:
        tgi.responder = lambda messages: "an answer that should never be shown"
        surface = RecordingSurface()
        answering = asyncio.create_task(engine.handle(event("talk"), surface))
        await asyncio.wait_for(llm.held.wait(), 10)  # its turn began; the prompt is held
        outcome, told = await ask(engine, "/cancel")
        assert outcome is Outcome.COMMAND and told.last == "Stopping the current answer."
        llm.go.set()
        assert await answering is Outcome.STOPPED
        assert surface.texts == ["⏹️ Stopped."]
        _, next_one = await ask(engine, "talk again")  # a request is for one answer only
        assert next_one.last == "an answer that should never be shown"
    finally:
        await engine.cancels.stop()
        await llm.close()


async def test_commands(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    _, helped = await ask(engine, "/help")
    for name in ("/ask", "/reset", "/persona", "/cancel", "/help"):
        assert name in helped.last
    _, persona_help = await ask(engine, "/help persona")
    assert persona_help.last.startswith("/persona [show|set|clear|list] [text] — ")
    assert "text: A preset name or your own instructions" in persona_help.last
    _, answered = await ask(engine, "/ask my name is Di")
    assert answered.last == "You said: my name is Di"
    _, missing = await ask(engine, "/ask")
    assert "needs question" in missing.last
    _, unknown = await ask(engine, "/frobnicate now")
    assert unknown.last == "I don't know /frobnicate. Try /help."
    _, bad = await ask(engine, "/persona dance")
    assert "action must be one of" in bad.last
    _, shown = await ask(engine, "/persona")
    assert shown.last == "I'm using my default persona."
    _, set_ = await ask(engine, "/persona set pirate")
    assert set_.last == "Persona set for this chat."
    await ask(engine, "hello")
    assert "talk like a pirate" in tgi.prompts[-1]
    _, reset = await ask(engine, "/reset")
    assert reset.last == "Done — I've forgotten this conversation."
    _, name = await ask(engine, "what is my name")
    assert name.last == "I don't know your name yet."
    _, cleared = await ask(engine, "/persona clear")
    assert cleared.last.startswith("Persona cleared")


async def test_persona_in_groups_needs_a_chat_admin(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    _, refused = await ask(engine, "/persona set pirate", private=False, chat="g")
    assert refused.last == "Only chat admins can change that here."
    _, done = await ask(engine, "/persona set pirate", private=False, chat="g", chat_admin=True)
    assert done.last == "Persona set for this chat."


LONG = " ".join(f"w{i}" for i in range(1, 41)) + "."


async def test_an_answer_cut_at_the_length_limit_says_so_and_can_continue(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine(max_new_tokens=12)
    answered = iter([LONG, "and that is the end."])
    tgi.responder = lambda messages: next(answered)
    outcome, cut = await ask(engine, "count to forty")
    assert outcome is Outcome.ANSWERED
    [answer, note] = cut.texts
    assert LONG.startswith(answer) and len(answer) < len(LONG)  # the model stopped mid-way
    # no buttons on this surface: the command the button stands for is shown
    assert note == "✂️ That answer reached my length limit and stops mid-way.\n\n/continue"
    conv = ConversationKey("test", "c1", None)
    history = await engine.memory.history(conv)
    assert [(t.role, t.cut) for t in history] == [("user", False), ("assistant", True)]

    outcome, rest = await ask(engine, "/continue")
    assert outcome is Outcome.COMMAND and rest.texts == ["and that is the end."]
    history = await engine.memory.history(conv)
    assert [(t.role, t.content, t.cut) for t in history[2:]] == [
        ("user", messages.CONTINUE_PROMPT, False),
        ("assistant", "and that is the end.", False),
    ]
    assert answer in tgi.prompts[-1]  # the model saw what it had written so far
    _, nothing = await ask(engine, "/continue")
    assert nothing.texts == ["There's nothing to continue here — my last answer was complete."]
    assert len(await engine.memory.history(conv)) == 4


async def test_with_buttons_the_note_carries_continue(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine(max_new_tokens=12)
    tgi.responder = lambda messages: LONG
    surface = RecordingSurface(caps=Capabilities(max_length=2000, min_edit_interval=0.0, has_buttons=True))
    await engine.handle(event("count to forty"), surface)
    note_id = list(surface.messages)[-1]
    assert surface.messages[note_id] == "✂️ That answer reached my length limit and stops mid-way."
    assert surface.buttons[note_id] == (Button("▶️ Continue", "continue"),)


async def test_a_burst_of_answers_prepares_in_waves(
    make_settings: SettingsFactory, redis: Redis, tgi: TGIEmulator
) -> None:
    """40 answers arrive at once: at most `PREPARING` build their prompts together (the
    others wait their turn to start, showing typing meanwhile), and every one is answered."""
    settings = make_settings(rate_limit_burst=1000)
    llm = HeldPrompt(build_llm(settings))
    await llm.start()
    engine = build_engine(settings, redis, llm)
    await engine.cancels.start()
    try:
        surfaces = [RecordingSurface() for _ in range(40)]
        answers = [
            asyncio.create_task(engine.handle(event(f"q{i}", chat=f"c{i}", user=f"u{i}"), surface))
            for i, surface in enumerate(surfaces)
        ]

        async def full() -> bool:
            return llm.waiting == PREPARING

        async def all_typing() -> bool:
            return all(("typing", "") in surface.calls for surface in surfaces)

        await eventually(full, "a wave of answers building their prompts")
        await eventually(all_typing, "typing shown in every chat, those waiting for a wave too")
        assert llm.waiting == PREPARING  # the rest still wait: their typing came first
        llm.go.set()
        assert await asyncio.gather(*answers) == [Outcome.ANSWERED] * 40
        assert llm.most == PREPARING
    finally:
        await engine.cancels.stop()
        await llm.close()

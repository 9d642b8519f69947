"""`/history` and recording through the engine (issue 13): opt-in by the chat's
managers, never in DMs, one person's messages forgotten on request, everything
deleted when it is turned off; a refused command saves nothing."""

from __future__ import annotations

import dataclasses
import itertools
import time

from core.chat.engine import Engine, Outcome
from core.commands.history import MANAGERS_ONLY, NOT_IN_DMS
from core.platform import Inbound, Posted, Visibility
from tests.conftest import EngineFactory
from tests.support import RecordingSurface, event

_ids = itertools.count(1)


def group(text: str, *, user: str = "u1", admin: bool = False, addressed: bool = False) -> Inbound:
    """A message written in group chat g1, as an adapter hands it over."""
    said = event(text, user=user, chat="g1", private=False, addressed=addressed, chat_admin=admin)
    return dataclasses.replace(said, posted=Posted(str(next(_ids)), time.time()))


async def say(engine: Engine, inbound: Inbound) -> str:
    surface = RecordingSurface()
    await engine.handle(inbound, surface)
    return surface.last


async def recorded(engine: Engine) -> list[str]:
    assert engine.chatlog is not None
    seqs = await engine.chatlog.span("test", "g1", 0)
    return [m.text for m in await engine.chatlog.messages("test", "g1", seqs)]


async def test_recording_is_off_until_a_manager_turns_it_on(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    assert await say(engine, group("/history status")) == (
        "Recording is off in this chat. A chat manager can turn it on with /history on."
    )
    assert await engine.handle(group("before it was on"), RecordingSurface()) is Outcome.NOT_ADDRESSED
    assert await say(engine, group("/history on")) == MANAGERS_ONLY
    assert await recorded(engine) == []
    answer = await say(engine, group("/history on retention=7d", admin=True))
    assert answer.startswith("Recording is on: I keep this chat's messages for 7 days")
    await engine.handle(group("the launch is on Friday", user="ada"), RecordingSurface())
    await engine.handle(group("noted", user="bob"), RecordingSurface())
    await engine.handle(group("/help"), RecordingSurface())  # commands are not recorded
    assert await recorded(engine) == ["the launch is on Friday", "noted"]
    status = await say(engine, group("/history status"))
    assert status.startswith("Recording is on since ") and status.endswith(
        "keeping messages for 7 days: 2 messages recorded."
    )


async def test_a_wrong_retention_is_refused_and_nothing_is_saved(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    for wrong in ("forever", "0d", "99999d", "30m"):
        answer = await say(engine, group(f"/history on retention={wrong}", admin=True))
        assert "retention" in answer, answer
    assert engine.chatlog is not None and await engine.chatlog.settings("test", "g1") is None


async def test_dms_are_never_recorded(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    assert await say(engine, event("/history on", chat_admin=True)) == NOT_IN_DMS


async def test_forgetting_and_turning_off(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    await say(engine, group("/history on", admin=True))
    for user in ("ada", "bob", "ada"):
        await engine.handle(group(f"hello from {user}", user=user), RecordingSurface())
    assert (
        await say(engine, group("/history forget", user="ada"))
        == "Done: 2 of your recorded messages forgotten."
    )
    refused = await say(engine, group("/history forget 42", user="ada"))
    assert refused.startswith("You can have your own messages forgotten")
    assert await recorded(engine) == ["hello from bob"]
    assert (
        await say(engine, group("/history forget <@42>", admin=True))
        == "Done: 0 of their recorded messages forgotten."
    )
    off = await say(engine, group("/history off", admin=True))
    assert off == "Recording is off, and everything recorded in this chat is deleted."
    assert await recorded(engine) == []
    await engine.handle(group("after off"), RecordingSurface())
    assert await recorded(engine) == []


@dataclasses.dataclass
class SeeingSurface(RecordingSurface):
    """A chat whose platform says what Herald can read there (or can't tell: None)."""

    seen: Visibility | None = None
    asked: int = 0

    async def visibility(self) -> Visibility | None:
        self.asked += 1
        return self.seen


OFF = "Recording is off in this chat. A chat manager can turn it on with /history on."
NO_EARLIER = "History starts when recording starts: I can't read the messages from before it."


async def status_seeing(engine: Engine, seen: Visibility | None) -> str:
    surface = SeeingSurface(seen=seen)
    await engine.handle(group("/history status"), surface)
    assert surface.asked == 1  # measured when asked, never remembered
    return surface.last


async def test_status_says_what_herald_can_read_here_before_recording(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    assert await status_seeing(engine, None) == OFF  # the platform can't tell: nothing assumed
    assert await status_seeing(engine, Visibility(reads_all=True)) == (
        f"{OFF}\n\nI receive every message in this chat. {NO_EARLIER}"
    )
    assert await status_seeing(engine, Visibility(reads_all=False, advice="Make me an admin.")) == (
        f"{OFF}\n\nI only receive the messages addressed to me here (commands, mentions, replies "
        f"to me), so only those can be recorded. Make me an admin. {NO_EARLIER}"
    )
    no_text = Visibility(reads_all=True, reads_text=False, advice="Turn the intent on.")
    assert await status_seeing(engine, no_text) == (
        f"{OFF}\n\nMessages here reach me without their text, except those addressed to me, "
        f"so only those can be recorded. Turn the intent on. {NO_EARLIER}"
    )
    with_history = Visibility(reads_all=True, has_history=True)
    assert await status_seeing(engine, with_history) == f"{OFF}\n\nI receive every message in this chat."


async def test_status_while_recording_keeps_the_count_and_adds_what_is_seen(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine()
    await say(engine, group("/history on", admin=True))
    await engine.handle(group("the launch is on Friday"), RecordingSurface())
    status = await status_seeing(engine, Visibility(reads_all=False, advice="Make me an admin."))
    head, note = status.split("\n\n")
    assert head.startswith("Recording is on since ") and head.endswith(
        "keeping messages for 30 days: 1 message recorded."
    )
    assert note.startswith("I only receive the messages addressed to me here") and note.endswith(NO_EARLIER)

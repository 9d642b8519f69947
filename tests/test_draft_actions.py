"""What can be done with a draft once it is shown: Copy, Regenerate, Shorten, Schedule —
buttons where the platform has them, the same commands everywhere — and the chat's
own time zone for schedules."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.chat.engine import Engine, Outcome
from core.commands.registry import clicked_command
from core.platform import Capabilities, Inbound
from tests.conftest import EngineFactory
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event

WITH_BUTTONS = Capabilities(max_length=2000, min_edit_interval=0.0, has_buttons=True)
LONG_POST = (
    "Herald 2.0 is here, and it is our biggest release yet: streamed answers in every chat, "
    "drafts that provably fit X, scheduled posts that go out exactly once, and a campaign planner. "
    "Read the notes at https://example.com/releases/2.0 #herald"
)


def click(surface: RecordingSurface, label: str, **kw: Any) -> Inbound:
    """The event a platform adapter makes when someone clicks a button of the last message
    that has buttons."""
    ref = [ref for ref in surface.messages if ref in surface.buttons][-1]
    button = next(b for b in surface.buttons[ref] if label in b.label)
    command = clicked_command(button.data)
    assert command is not None
    base = event("", **kw)
    return Inbound(
        base.platform,
        base.event_id,
        base.chat_id,
        base.author,
        "",
        True,
        is_private=base.is_private,
        command=command,
    )


def draft_id_of(text: str) -> str:
    return re.search(r"\*\*Draft `(\w+)`", text)[1]  # type: ignore[index]


async def drafted(engine: Engine, surface: RecordingSurface, text: str = "/draft x announce v2") -> str:
    assert await engine.handle(event(text), surface) is Outcome.COMMAND
    return draft_id_of(surface.last)


async def test_a_draft_offers_its_actions_as_buttons(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 ships today! #herald"
    surface = RecordingSurface(caps=WITH_BUTTONS)
    draft_id = await drafted(engine, surface)
    assert surface.last.endswith("— 31/280\n\nHerald 2.0 ships today! #herald")  # no commands in the text
    [buttons] = surface.buttons.values()
    assert [(b.label, b.command) for b in buttons] == [
        ("📋 Copy", f"copy {draft_id}"),
        ("🔁 Regenerate", f"regenerate {draft_id}"),
        ("✂️ Shorten", f"shorten {draft_id}"),
        ("🗓 Schedule", f"schedule draft {draft_id}"),
    ]
    assert all(len(b.data.encode()) <= 64 for b in buttons)  # Telegram's callback data limit

    assert await engine.handle(click(surface, "Copy"), surface) is Outcome.COMMAND
    assert surface.last == "```\nHerald 2.0 ships today! #herald\n```"


async def test_without_buttons_the_commands_are_shown(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 ships today! #herald"
    surface = RecordingSurface()
    draft_id = await drafted(engine, surface)
    assert surface.last.endswith(
        f"/copy {draft_id} · /regenerate {draft_id} · /shorten {draft_id} · /schedule draft {draft_id}"
    )
    assert not surface.buttons
    assert await engine.handle(event(f"/copy {draft_id}"), surface) is Outcome.COMMAND
    assert surface.last == "```\nHerald 2.0 ships today! #herald\n```"


async def test_copy_keeps_backticks_in_the_text(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Run ```herald run``` today! #herald"
    surface = RecordingSurface()
    draft_id = await drafted(engine, surface, "/draft discord announce the CLI")
    await engine.handle(event(f"/copy {draft_id}"), surface)
    assert surface.last == "````\nRun ```herald run``` today! #herald\n````"


async def test_regenerate_drafts_the_same_request_again(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    answers = iter(["First take. #herald", "Second take. #herald"])
    tgi.responder = lambda m: next(answers)
    surface = RecordingSurface(caps=WITH_BUTTONS)
    first = await drafted(engine, surface, "/draft linkedin tone=professional announce v2")
    assert await engine.handle(click(surface, "Regenerate"), surface) is Outcome.COMMAND
    second = draft_id_of(surface.last)
    assert second != first and surface.last.endswith("Second take. #herald")
    assert "for LinkedIn" in surface.last
    first_req, second_req = (r.body for r in tgi.requests if r.path == "/generate_stream")
    assert first_req["parameters"]["seed"] != second_req["parameters"]["seed"]
    assert "announce v2" in tgi.prompts[-1] and "clear, credible and polished" in tgi.prompts[-1]


async def test_shorten_asks_for_less_and_measures_again(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0: fits X, posts once. #herald" if "shorter" in str(m) else LONG_POST
    surface = RecordingSurface(caps=WITH_BUTTONS)
    await drafted(engine, surface, "/draft x announce v2")
    assert "— 230/280" in surface.last  # the link counts 23 on X
    assert await engine.handle(click(surface, "Shorten"), surface) is Outcome.COMMAND
    assert surface.last.endswith("— 39/280\n\nHerald 2.0: fits X, posts once. #herald")
    assert (
        "Make it shorter: at most 138 characters as X (Twitter) counts them (it is 230 now)"
        in (tgi.prompts[-1])
    )
    assert LONG_POST in tgi.prompts[-1]  # the model sees what it is shortening


async def test_shorten_says_so_when_the_model_cannot(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 ships today! #herald"
    surface = RecordingSurface()
    draft_id = await drafted(engine, surface)
    await engine.handle(event(f"/shorten {draft_id}"), surface)
    assert "(The model could not make it shorter: 31 → 31.)" in surface.last


async def test_shorten_a_thread_keeps_it_a_thread(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine(max_new_tokens=2048)
    long_thread = " ".join(f"Point number {i} matters a great deal to us." for i in range(20))
    short_thread = " ".join(f"Point {i} matters." for i in range(20))
    tgi.responder = lambda m: short_thread if "shorter" in str(m) else long_thread
    surface = RecordingSurface()
    draft_id = draft_id_of(
        (await engine.handle(event("/draft x thread=yes why Herald"), surface), surface.last)[1]
    )
    await engine.handle(event(f"/shorten {draft_id}"), surface)
    assert "a thread of 2 posts" in surface.last
    assert "(it is 869 now)" in tgi.prompts[-1] and " 1/4" not in tgi.prompts[-1]  # numbering removed


async def test_an_unknown_draft_is_explained(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    surface = RecordingSurface()
    for command in ("copy", "regenerate", "shorten"):
        await engine.handle(event(f"/{command} nope"), surface)
        assert surface.last == "There is no draft `nope` (drafts are kept 30 days). /draft writes one."
    await engine.handle(event("/shorten"), surface)
    assert surface.last.startswith("/shorten needs id.")


async def test_schedule_button_asks_when_in_the_chats_zone(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine(default_timezone="America/New_York")
    tgi.responder = lambda m: "Herald 2.0 ships today! #herald"
    surface = RecordingSurface(caps=WITH_BUTTONS)
    draft_id = await drafted(engine, surface)
    await engine.handle(click(surface, "Schedule"), surface)
    tomorrow = dt.datetime.now(ZoneInfo("America/New_York")).date() + dt.timedelta(days=1)
    assert surface.last.startswith(
        f'When should it go out? /schedule draft {draft_id} at="{tomorrow} 09:00" (time in America/New_York'
    )
    # a member of a group may copy or shorten a draft, but not schedule it
    await engine.handle(click(surface, "Schedule", private=False), surface)
    assert surface.last == "Only people who manage this chat can change its schedules."


async def test_a_chat_has_its_own_time_zone(make_engine: EngineFactory) -> None:
    engine = await make_engine(default_timezone="UTC")
    surface = RecordingSurface()

    async def say(text: str, **kw: Any) -> str:
        assert await engine.handle(event(text, chat="team", **kw), surface) is Outcome.COMMAND
        return surface.last

    assert (await say("/schedule timezone", private=False)).startswith("This chat's schedules use UTC.")
    refused = await say("/schedule timezone Europe/Berlin", private=False)
    assert refused == "Only people who manage this chat can change its schedules."
    assert (await say("/schedule timezone Mars/Olympus", private=False, chat_admin=True)) == (
        "'Mars/Olympus' is not an IANA time zone; try one like Europe/Berlin or UTC."
    )
    assert (await say("/schedule timezone Europe/Berlin", private=False, chat_admin=True)).startswith(
        "New schedules in this chat use Europe/Berlin"
    )
    added = await say('/schedule add when="every day at 09:00" digest', private=False, chat_admin=True)
    assert "(Europe/Berlin)" in added
    named = await say('/schedule add when="every day at 09:00" tz=Asia/Tokyo digest', chat_admin=True)
    assert "(Asia/Tokyo)" in named  # a zone in the command wins
    other = await engine.handle(event('/schedule add when="every day at 09:00" x', chat="other"), surface)
    assert other is Outcome.COMMAND and "(UTC)" in surface.last  # other chats keep the default


@pytest.mark.parametrize("roles", [frozenset({"42"}), frozenset()])
def test_manager_roles_manage_chats(roles: frozenset[str]) -> None:
    from core.chat.access import AccessPolicy
    from core.platform import Author

    policy = AccessPolicy.of(manager_roles=["discord:42", "telegram:7"])
    member = Author("u1", "Ada", roles=roles)
    in_group = Inbound("discord", "e1", "c1", member, "", True)
    assert policy.may_manage_chat(in_group) is bool(roles)
    elsewhere = Inbound("telegram", "e2", "c1", Author("u1", roles=frozenset({"42"})), "", True)
    assert not policy.may_manage_chat(elsewhere)  # a role id counts on its own platform only

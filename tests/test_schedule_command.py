"""/schedule: managing schedule definitions, with clear errors and the chat's admins only."""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis

from core.chat.engine import Outcome
from core.posts.schedules.store import ScheduleStore
from core.storage.keys import Keys
from tests.conftest import EngineFactory
from tests.support import RecordingSurface, event


async def say(engine: object, text: str, expect: Outcome = Outcome.COMMAND, **kw: object) -> str:
    surface = RecordingSurface()
    outcome = await engine.handle(event(text, **kw), surface)  # type: ignore[attr-defined]
    assert outcome is expect
    return surface.last


async def test_add_list_pause_resume_delete(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    added = await say(
        engine,
        '/schedule add target=x when="every weekday at 09:00" tz=Europe/Berlin mode=auto '
        "Draft a post about our release notes",
    )
    match = re.match(r"Scheduled `(\w+)`: `\w+` every weekday at 09:00 \(Europe/Berlin\) → x, auto", added)
    assert match is not None, added
    assert re.search(r"Next run: \w{3} \d{2} \w{3} \d{4} 09:00 CE", added)  # CET or CEST
    schedule_id = match[1]
    listed = await say(engine, "/schedule list")
    assert schedule_id in listed and "Draft a post about our release notes" in listed
    assert await say(engine, f"/schedule pause {schedule_id}") == f"Schedule `{schedule_id}` paused."
    assert "paused" in await say(engine, "/schedule list")
    assert await say(engine, f"/schedule resume {schedule_id}") == f"Schedule `{schedule_id}` resumed."
    assert await say(engine, f"/schedule delete {schedule_id}") == f"Deleted schedule `{schedule_id}`."
    assert (await say(engine, "/schedule list")).startswith("No schedules in this chat yet.")


async def test_invalid_cron_phrase_and_time_zone_are_explained(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    cron = await say(engine, '/schedule add when="61 * * * *" about things')
    assert "61 * * * *" in cron
    phrase = await say(engine, '/schedule add when="whenever you like" about things')
    assert "whenever you like" in phrase.lower() or "try" in phrase.lower()
    zone = await say(engine, '/schedule add when="every day at 09:00" tz=Mars/Base about things')
    assert zone == "Unknown time zone 'Mars/Base'. Use an IANA name such as Europe/Berlin."
    # the subcommand's typed arguments refuse the call before it runs, with its usage
    assert (await say(engine, "/schedule add", Outcome.INVALID)).startswith("Usage: /schedule add")


async def test_only_chat_managers_and_admins_change_schedules(make_engine: EngineFactory) -> None:
    engine = await make_engine(admins="test:boss")
    command = '/schedule add when="every day at 09:00" about the weekly digest'
    refused = await say(engine, command, private=False, chat="group")
    assert refused == "Only people who manage this chat can change its schedules."
    assert (await say(engine, command, private=False, chat="group", chat_admin=True)).startswith("Scheduled")
    assert (await say(engine, command, private=False, chat="group", user="boss")).startswith("Scheduled")
    listed = await say(engine, "/schedule list", private=False, chat="group")  # anyone may look
    schedule_id = re.findall(r"`(\w+)`", listed)[0]
    assert (await say(engine, f"/schedule delete {schedule_id}", private=False, chat="group")) == (
        "Only people who manage this chat can change its schedules."
    )
    other_chat = await say(engine, f"/schedule delete {schedule_id}", chat="elsewhere")
    assert other_chat.startswith(f"There is no schedule `{schedule_id}` in this chat.")


async def test_end_date_and_count(make_engine: EngineFactory, redis: Redis, prefix: str) -> None:
    engine = await make_engine()
    added = await say(engine, '/schedule add when="every day at 09:00" until=2026-12-31 count=10 digest')
    assert added.startswith("Scheduled")
    schedule_id = re.findall(r"`(\w+)`", added)[0]
    stored = await ScheduleStore(redis, Keys(prefix)).get(schedule_id)
    assert stored is not None and (stored.end_date, stored.max_runs) == ("2026-12-31", 10)
    assert (await say(engine, '/schedule add when="every day at 09:00" until=soon x')).startswith(
        "until must be"
    )


async def test_a_saved_draft_and_a_campaign_post_become_one_off_schedules(
    make_engine: EngineFactory, tgi: object, redis: Redis, prefix: str
) -> None:
    import datetime as dt
    import json
    from zoneinfo import ZoneInfo

    from core.posts.schedules.recurrence import parse_recurrence

    day = dt.date.today() + dt.timedelta(days=40)  # always ahead: a time in the past is refused
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 ships today! #herald"  # type: ignore[attr-defined]
    drafted = await say(engine, "/draft x announce the release")
    draft_id = re.search(r"/schedule draft (\w+)", drafted)[1]  # type: ignore[index]
    added = await say(engine, f'/schedule draft {draft_id} at="{day} 09:00" tz=Europe/Berlin mode=auto')
    assert added.startswith("Scheduled `") and f"once at {day} 09:00 (Europe/Berlin) → x, auto" in added
    schedule_id = re.match(r"Scheduled `(\w+)`", added)[1]  # type: ignore[index]
    store = ScheduleStore(redis, Keys(prefix))
    stored = await store.get(schedule_id)
    assert (
        stored is not None and stored.fixed_text == "Herald 2.0 ships today! #herald" and stored.max_runs == 1
    )
    fires = parse_recurrence(stored.recurrence, stored.timezone).next_fires(dt.datetime.now(dt.UTC), 3)
    nine = dt.datetime.combine(day, dt.time(9, 0), tzinfo=ZoneInfo("Europe/Berlin"))
    assert [f.isoformat() for f in fires] == [nine.isoformat()]  # exactly once

    plan = {
        "name": "Launch",
        "audience": "devs",
        "key_messages": ["fast"],
        "posts": [
            {
                "date": (day + dt.timedelta(days=1)).isoformat(),
                "time": "10:30",
                "target": "telegram",
                "text": "Day one!",
                "hashtags": ["go"],
            }
        ],
    }
    tgi.responder = lambda m: json.dumps(plan)  # type: ignore[attr-defined]
    planned = await say(engine, "/campaign posts=1 channels=telegram Launch")
    campaign_id = re.search(r"/schedule campaign (\w+)", planned)[1]  # type: ignore[index]
    added = await say(engine, f"/schedule campaign {campaign_id} 1")
    assert f"once at {day + dt.timedelta(days=1)} 10:30 (UTC) → telegram, approve" in added
    assert await say(engine, f"/schedule campaign {campaign_id} 7") == (
        f"Campaign `{campaign_id}` has 1 post: pick 1 to 1."
    )
    assert await say(engine, f'/schedule draft nope at="{day} 09:00"') == (
        "There is no draft `nope` (drafts are kept 30 days). /draft writes one."
    )


async def test_run_now_drafts_for_approval(make_engine: EngineFactory, tgi: object) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Weekly digest: three new features. #herald"  # type: ignore[attr-defined]
    added = await say(engine, '/schedule add target=x when="every monday at 09:00" weekly digest')
    schedule_id = re.match(r"Scheduled `(\w+)`", added)[1]  # type: ignore[index]
    ran = await say(engine, f"/schedule run-now {schedule_id}")
    # the test platform has no publisher: the slot is left for a replica that can publish
    assert ran == f"Schedule `{schedule_id}` did not run (it ended, or its platform is not running here)."


async def test_buttons_obey_the_allow_list(make_settings: Any, redis: Any) -> None:
    """Approval buttons reach PostActions without the engine: it checks the allow-list too."""
    from bots.runtime import build_llm, build_scheduling
    from core.chat.access import AccessPolicy
    from core.storage.keys import Keys

    settings = make_settings(allowed_chats=["test:served"])
    scheduling = build_scheduling(
        settings,
        redis,
        build_llm(settings),
        AccessPolicy.from_settings(settings),
        Keys(settings.redis_prefix),
    )
    outside = event("", chat="elsewhere", private=False, chat_admin=True)
    result = await scheduling.actions.act("approve", "p1", outside)
    assert result.message == "Only people who manage this chat can approve its posts." and not result.settled
    post, why = await scheduling.actions.editable("p1", outside)
    assert post is None and why == result.message
    inside = event("", chat="served", private=False, chat_admin=True)
    assert (await scheduling.actions.act("approve", "p1", inside)).message == "There is no post `p1`."


async def test_help_explains_each_subcommand(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    helped = await say(engine, "/help schedule")
    assert helped.startswith("/schedule add|draft|campaign|list|pause|resume|delete|run-now|approve|edit|")
    assert "  /schedule add <prompt> <when=…> [tz=…] [target=…] [mode=…]" in helped
    assert "  /schedule approve <id> [text] — Publish a post waiting for approval" in helped
    wrong = await say(engine, "/schedule explode now", Outcome.INVALID)
    assert wrong.startswith("There is no /schedule explode. /schedule takes one of: add, draft, campaign")

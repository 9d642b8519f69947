"""Campaign plans: JSON constrained by a schema, validated, repaired or regenerated,
every post length-checked like a draft; the /campaign command end to end."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest

from core.chat.engine import Outcome
from core.platform import Capabilities
from core.posts.campaigns import SCHEMA, CampaignBrief, CampaignFailed, Planner
from core.posts.drafting import Drafter
from core.posts.targets import Target
from tests.conftest import EngineFactory
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event

TODAY = dt.date(2026, 11, 27)


def plan_json(*posts: tuple[str, str], name: str = "Herald 2.0 launch") -> str:
    return json.dumps(
        {
            "name": name,
            "audience": "community managers",
            "key_messages": ["Streaming answers", "Drafts that fit"],
            "posts": [
                {
                    "date": f"2026-11-{28 + i}",
                    "time": "09:00",
                    "target": target,
                    "text": text,
                    "hashtags": ["herald"],
                    "call_to_action": "Try it today",
                }
                for i, (target, text) in enumerate(posts)
            ],
        }
    )


def planner(engine: Any, **options: Any) -> Planner:
    params = engine.policy.generation
    return Planner(Drafter(engine.llm, params), params, today=TODAY, **options)


BRIEF = CampaignBrief("Herald 2.0", posts=2, channels=(Target.X, Target.TELEGRAM), duration_days=7)


def generation_requests(tgi: TGIEmulator) -> list[dict[str, Any]]:
    return [r.body for r in tgi.requests if r.path == "/generate_stream"]


async def test_a_valid_plan_is_constrained_by_the_schema(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: plan_json(("x", "Herald 2.0 is here!"), ("telegram", "Big day for Herald."))
    campaign = await planner(engine).plan(BRIEF)
    assert [p.target for p in campaign.posts] == [Target.X, Target.TELEGRAM]
    assert campaign.posts[0].text == "Herald 2.0 is here!\n\n#herald"  # hashtags count toward the length
    grammar = generation_requests(tgi)[0]["parameters"]["grammar"]
    assert grammar == {"type": "json", "value": SCHEMA}
    assert "between 2026-11-28 and 2026-12-04" in tgi.prompts[0]


async def test_invalid_json_is_repaired(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    good = plan_json(("x", "Herald 2.0 is here!"), ("telegram", "Big day."))
    answers = iter([good[:40], good])  # the first one was cut off mid-document
    tgi.responder = lambda m: next(answers)
    campaign = await planner(engine).plan(BRIEF)
    assert campaign.name == "Herald 2.0 launch"
    assert (
        "That JSON is invalid (" in tgi.prompts[1] and "Reply with the corrected JSON only." in tgi.prompts[1]
    )


async def test_wrong_targets_are_repaired_and_hopeless_plans_regenerated_then_refused(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: plan_json(("linkedin", "Not asked for"), ("x", "ok"))
    with pytest.raises(CampaignFailed):
        await planner(engine, repairs=2, regenerations=1).plan(BRIEF)
    assert len(generation_requests(tgi)) == 6  # (1 + 2 repairs) x (1 + 1 regeneration)
    assert "targets not in the brief: linkedin" in tgi.prompts[1]
    surface = RecordingSurface()
    await engine.handle(event("/campaign channels=x Herald 2.0"), surface)
    assert surface.last.startswith("I couldn't put together a valid campaign plan")


async def test_a_post_too_long_for_its_target_is_shortened(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine()
    long_text = "Herald 2.0 is here and it is wonderful. " * 12  # ~480 characters for X

    def respond(messages: list[dict[str, str]]) -> str:
        if "Rewrite it" in messages[-1]["content"]:
            return "Herald 2.0 is here! #herald"
        return plan_json(("x", long_text), ("telegram", "Big day."))

    tgi.responder = respond
    campaign = await planner(engine).plan(BRIEF)
    assert campaign.posts[0].text == "Herald 2.0 is here! #herald"
    assert all(p.target.fits(p.text) for p in campaign.posts)
    rewrite = tgi.prompts[-1]
    assert "as X (Twitter) counts them; the limit is 280" in rewrite
    assert "grammar" not in generation_requests(tgi)[-1]["parameters"] or (
        generation_requests(tgi)[-1]["parameters"]["grammar"] is None
    )  # a rewrite is a post, not JSON


async def test_campaign_command_end_to_end(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: plan_json(("x", "Herald 2.0 is here!"), ("telegram", "Big day for Herald."))
    surface = RecordingSurface()
    text = '/campaign posts=2 days=7 channels=x,telegram audience="community managers" Herald 2.0 launch'
    assert await engine.handle(event(text), surface) is Outcome.COMMAND
    reply = "\n".join(surface.texts)
    assert re.search(r"\*\*Campaign `\w+`: Herald 2.0 launch\*\* — for community managers", reply)
    campaign_id = re.search(r"Campaign `(\w+)`", reply)[1]  # type: ignore[index]
    # each post is one step from a schedule: commands here, buttons where the platform has them
    assert reply.endswith(f"/schedule campaign {campaign_id} 1 · /schedule campaign {campaign_id} 2")
    with_buttons = RecordingSurface(
        caps=Capabilities(max_length=2000, min_edit_interval=0.0, has_buttons=True)
    )
    assert await engine.handle(event(text), with_buttons) is Outcome.COMMAND
    [buttons] = with_buttons.buttons.values()
    assert [b.label for b in buttons] == ["🗓 Schedule post 1", "🗓 Schedule post 2"]
    assert buttons[1].command.startswith("schedule campaign ") and buttons[1].command.endswith(" 2")
    assert "**1. 2026-11-28 09:00 · X (Twitter)** — 28/280" in reply
    assert "**2. 2026-11-29 09:00 · Telegram** — 28/4096" in reply
    brief = tgi.prompts[0]
    assert "Audience: community managers" in brief and "Number of posts: 2" in brief
    surface = RecordingSurface()
    await engine.handle(event("/campaign channels=x,myspace launch"), surface)
    assert surface.last.startswith("channels must be a comma-separated list of")


async def test_openai_servers_get_the_schema_as_response_format(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine(llm_api="openai", llm_model="served-model")
    tgi.responder = lambda m: plan_json(("x", "Herald 2.0 is here!"), ("telegram", "Big day."))
    await planner(engine).plan(BRIEF)
    body = next(r.body for r in tgi.requests if r.path == "/v1/chat/completions")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA},
    }

"""The full approval flow through a platform emulator: draft → buttons → approve →
published exactly once. The schedule is made with /schedule and its run is
triggered with an injected slot time. Also a draft's own buttons (Copy, Shorten…),
clicked through each platform."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator

import pytest

from adapters.telegram.bot import TelegramBot
from bots.runtime import Scheduling, build_engine, build_intake, build_llm, build_scheduling
from core.chat.access import AccessPolicy
from core.posts.schedules.store import PostState
from core.storage.keys import Keys
from core.storage.redis_client import connect_redis
from tests.conftest import SettingsFactory
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import start_serving, stop_serving

pytestmark = pytest.mark.timeout(60)

ADMIN = {"id": 701, "is_bot": False, "first_name": "Ada", "username": "ada"}
MEMBER = {"id": 702, "is_bot": False, "first_name": "Bob", "username": "bob"}
GROUP = -1005
SLOT = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
async def herald(
    make_settings: SettingsFactory, tgi: TGIEmulator
) -> AsyncIterator[tuple[TelegramEmulator, Scheduling]]:
    settings = make_settings()
    redis = connect_redis(settings.redis_url or "")
    llm = build_llm(settings)
    await llm.start()
    access = AccessPolicy.from_settings(settings)
    scheduling = build_scheduling(settings, redis, llm, access, Keys(settings.redis_prefix))
    engine = build_engine(settings, redis, llm, scheduling=scheduling)
    async with TelegramEmulator() as telegram:
        intake = build_intake(settings, redis)
        bot = TelegramBot(
            engine,
            telegram.token,
            intake=intake,
            api_url=telegram.url,
            poll_timeout=1,
            actions=scheduling.actions,
        )
        await start_serving(bot, intake)
        scheduling.publishers["telegram"] = bot.publisher()
        try:
            yield telegram, scheduling
        finally:
            await stop_serving(bot, intake)
            await scheduling.runner.close()
            await llm.close()
            await redis.aclose()


def last_text(telegram: TelegramEmulator) -> str:
    messages = telegram.messages_in(GROUP)
    return messages[-1].text if messages else ""


async def test_telegram_approval_flow_publishes_once(
    herald: tuple[TelegramEmulator, Scheduling], tgi: TGIEmulator
) -> None:
    telegram, scheduling = herald
    tgi.responder = lambda m: "Release notes are out: faster answers and fewer bugs. #herald"
    group = telegram.group(GROUP, "Team", supergroup=True)
    telegram.set_admin(GROUP, ADMIN["id"])
    telegram.send_user_message(
        group,
        ADMIN,
        '/schedule add target=telegram when="every day at 09:00" tz=Europe/Berlin mode=approve '
        "Post about our release notes",
    )
    await telegram.wait_until(lambda: last_text(telegram).startswith("Scheduled "))
    schedule_id = re.match(r"Scheduled (\w+)", last_text(telegram))[1]  # type: ignore[index]
    schedule = await scheduling.store.get(schedule_id)
    assert schedule is not None

    post = await scheduling.runner.run_slot(schedule, SLOT)  # the slot fires
    assert post is not None and post.state is PostState.PENDING_APPROVAL
    await telegram.wait_until(lambda: last_text(telegram).startswith(f"Draft {post.id}"))
    request = telegram.messages_in(GROUP)[-1]
    buttons = [b["callback_data"] for row in request.reply_markup["inline_keyboard"] for b in row]  # type: ignore[index]
    assert buttons == [f"cmd:schedule {a} {post.id}" for a in ("approve", "edit", "regenerate", "reject")]

    def toasts() -> list[str]:
        return [c.params.get("text", "") for c in telegram.calls_to("answerCallbackQuery")]

    telegram.send_callback_query(group, MEMBER, request.message_id, f"cmd:schedule approve {post.id}")
    await telegram.wait_until(lambda: any("Only people who manage" in t for t in toasts()))
    assert (await scheduling.store.post(post.id)).state is PostState.PENDING_APPROVAL  # type: ignore[union-attr]
    assert telegram.message(GROUP, request.message_id)["reply_markup"]  # the buttons stay for a manager

    telegram.send_callback_query(group, ADMIN, request.message_id, f"cmd:schedule approve {post.id}")
    await telegram.wait_until(lambda: last_text(telegram) == f"Approved and published post {post.id}.")
    published = await scheduling.store.post(post.id)
    assert published is not None and published.state is PostState.PUBLISHED
    texts = [m.text for m in telegram.messages_in(GROUP)]
    assert texts.count("Release notes are out: faster answers and fewer bugs. #herald") == 1
    assert published.message_id is not None

    # a button on an approval message sent before approvals were command buttons still works
    telegram.send_callback_query(group, ADMIN, request.message_id, f"herald:approve:{post.id}")
    await telegram.wait_until(lambda: last_text(telegram) == f"Post {post.id} is already published.")
    texts = [m.text for m in telegram.messages_in(GROUP)]
    assert texts.count("Release notes are out: faster answers and fewer bugs. #herald") == 1
    assert await scheduling.runner.run_slot(schedule, SLOT) is None  # the slot was claimed

    telegram.send_user_message(group, ADMIN, f"/schedule run-now {schedule_id}")
    await telegram.wait_until(lambda: "is waiting for approval" in last_text(telegram))
    extra = re.search(r"Drafted post (\w+)", last_text(telegram))[1]  # type: ignore[index]
    await telegram.wait_until(
        lambda: any(m.text.startswith(f"Draft {extra}") for m in telegram.messages_in(GROUP))
    )


async def test_telegram_edit_asks_for_the_text_and_publishes_it(
    herald: tuple[TelegramEmulator, Scheduling], tgi: TGIEmulator
) -> None:
    telegram, scheduling = herald
    tgi.responder = lambda m: "Release notes are out. #herald"
    group = telegram.group(GROUP, "Team", supergroup=True)
    telegram.set_admin(GROUP, ADMIN["id"])
    telegram.send_user_message(group, ADMIN, '/schedule add target=x when="every day at 09:00" release notes')
    await telegram.wait_until(lambda: last_text(telegram).startswith("Scheduled "))
    schedule = await scheduling.store.get(re.match(r"Scheduled (\w+)", last_text(telegram))[1])  # type: ignore[index]
    assert schedule is not None
    post = await scheduling.runner.run_slot(schedule, SLOT)
    assert post is not None
    await telegram.wait_until(lambda: last_text(telegram).startswith(f"Draft {post.id}"))
    request = telegram.messages_in(GROUP)[-1]

    telegram.send_callback_query(group, MEMBER, request.message_id, f"cmd:schedule edit {post.id}")
    await telegram.wait_until(
        lambda: any(
            "Only people" in c.params.get("text", "") for c in telegram.calls_to("answerCallbackQuery")
        )
    )
    telegram.send_callback_query(group, ADMIN, request.message_id, f"cmd:schedule edit {post.id}")
    prompt_text = f"✏️ Reply to this message with the text to publish for post {post.id}."
    await telegram.wait_until(lambda: last_text(telegram) == prompt_text)
    prompt = telegram.messages_in(GROUP)[-1]
    sent = next(c for c in telegram.calls_to("sendMessage") if c.params.get("text") == prompt_text)
    assert sent.params["reply_markup"]["force_reply"] is True  # the app opens a reply to it

    telegram.send_user_message(group, ADMIN, "x" * 300, reply_to_message_id=prompt.message_id)
    await telegram.wait_until(lambda: "the limit is 280. Nothing was published." in last_text(telegram))
    telegram.send_user_message(group, MEMBER, "hijacked!", reply_to_message_id=prompt.message_id)
    await telegram.wait_until(lambda: last_text(telegram).startswith("Only people who manage"))
    assert (await scheduling.store.post(post.id)).state is PostState.PENDING_APPROVAL  # type: ignore[union-attr]

    edited = "Release notes: faster answers, fewer bugs. #herald"
    telegram.send_user_message(group, ADMIN, edited, reply_to_message_id=prompt.message_id)
    await telegram.wait_until(lambda: last_text(telegram) == f"Approved and published post {post.id}.")
    published = await scheduling.store.post(post.id)
    assert published is not None and published.state is PostState.PUBLISHED and published.text == edited
    assert [m.text for m in telegram.messages_in(GROUP)].count(edited) == 1


async def test_telegram_draft_buttons_run_their_commands(
    herald: tuple[TelegramEmulator, Scheduling], tgi: TGIEmulator
) -> None:
    telegram, _ = herald
    long_post = "Herald 2.0 ships today, with streamed answers in every chat! #herald"
    tgi.responder = lambda m: "Herald 2.0 is out! #herald" if "shorter" in str(m) else long_post
    group = telegram.group(GROUP, "Team", supergroup=True)
    telegram.send_user_message(group, MEMBER, "/draft x announce v2")
    await telegram.wait_until(lambda: last_text(telegram).startswith("Draft "))
    shown = telegram.messages_in(GROUP)[-1]
    draft_id = re.match(r"Draft (\w+) for X", shown.text)[1]  # type: ignore[index]
    assert shown.text.endswith(long_post)
    keyboard = shown.reply_markup["inline_keyboard"]  # type: ignore[index]
    assert [[b["callback_data"] for b in row] for row in keyboard] == [
        [f"cmd:copy {draft_id}", f"cmd:regenerate {draft_id}"],
        [f"cmd:shorten {draft_id}", f"cmd:schedule draft {draft_id}"],
    ]

    telegram.send_callback_query(group, MEMBER, shown.message_id, f"cmd:shorten {draft_id}")
    await telegram.wait_until(lambda: last_text(telegram).endswith("Herald 2.0 is out! #herald"))
    shorter = telegram.messages_in(GROUP)[-1]
    assert shorter.reply_to_message_id == shown.message_id and "— 26/280" in shorter.text
    assert shorter.reply_markup is not None  # the new draft has its own buttons
    assert len(telegram.calls_to("answerCallbackQuery")) == 1  # the click's spinner stopped

    telegram.send_callback_query(group, MEMBER, shown.message_id, f"cmd:copy {draft_id}")
    await telegram.wait_until(lambda: last_text(telegram) == long_post)
    copied = telegram.messages_in(GROUP)[-1]
    assert [e["type"] for e in copied.entities] == ["pre"]  # one tap copies it

    telegram.send_callback_query(group, MEMBER, shown.message_id, f"cmd:schedule draft {draft_id}")
    await telegram.wait_until(lambda: "can change its schedules" in last_text(telegram))


async def test_discord_approval_flow_publishes_once(make_settings: SettingsFactory, tgi: TGIEmulator) -> None:
    from adapters.discord.bot import DiscordBot
    from tests.emulators.discord import DiscordEmulator, Interaction, point_discord_py_at

    guild, channel = 7000, 7001
    manage_guild = 1 << 5
    tgi.responder = lambda m: "Release notes are out: faster answers and fewer bugs. #herald"
    settings = make_settings()
    redis = connect_redis(settings.redis_url or "")
    llm = build_llm(settings)
    await llm.start()
    social_team = 9001  # a role that manages schedules by configuration, with no permissions
    access = AccessPolicy.of(manager_roles=[f"discord:{social_team}"])
    keys = Keys(settings.redis_prefix)
    scheduling = build_scheduling(settings, redis, llm, access, keys)
    engine = build_engine(settings, redis, llm, scheduling=scheduling)
    async with DiscordEmulator() as emu:
        with point_discord_py_at(emu):
            emu.guild(guild, "Team", channels=[channel])
            ada = emu.user(801, "ada")
            bob = emu.user(802, "bob")
            emu.member(guild, 801, permissions=manage_guild)
            emu.member(guild, 802)
            emu.role(guild, social_team, "Social team")
            cy = emu.user(803, "cy")
            emu.member(guild, 803, roles=[social_team])
            intake = build_intake(settings, redis)
            bot = DiscordBot(
                engine,
                emu.token,
                redis=redis,
                keys=keys,
                intake=intake,
                ready_timeout=10,
                actions=scheduling.actions,
            )
            await start_serving(bot, intake)
            scheduling.publishers["discord"] = bot.publisher()
            try:
                interaction = emu.slash_command(
                    "schedule",
                    [
                        {
                            "name": "add",
                            "type": 1,
                            "options": [
                                {"name": "prompt", "type": 3, "value": "Post about our release notes"},
                                {"name": "when", "type": 3, "value": "every weekday at 09:00"},
                                {"name": "target", "type": 3, "value": "discord"},
                            ],
                        }
                    ],
                    channel_id=channel,
                    user=ada,
                    guild_id=guild,
                    permissions=manage_guild,
                )

                def response_of(handle: Interaction) -> str:
                    response = emu.interaction_response(handle)
                    return response.content if response is not None else ""

                def response_text() -> str:
                    return response_of(interaction)

                await emu.wait_until(lambda: response_text().startswith("Scheduled `"), 10)
                schedule_id = re.match(r"Scheduled `(\w+)`", response_text())[1]  # type: ignore[index]
                schedule = await scheduling.store.get(schedule_id)
                assert schedule is not None and schedule.mode.value == "approve"

                post = await scheduling.runner.run_slot(schedule, SLOT)
                assert post is not None
                request = next(
                    m for m in emu.messages_in(channel) if m.content.startswith(f"Draft `{post.id}`")
                )
                custom_ids = [c["custom_id"] for row in request.components for c in row["components"]]
                assert custom_ids == [
                    f"cmd:schedule {a} {post.id}" for a in ("approve", "edit", "regenerate", "reject")
                ]

                refused = emu.click_button(
                    request.id, f"cmd:schedule approve {post.id}", user=bob, guild_id=guild
                )
                await emu.wait_until(lambda: bool(emu.followups(refused)), 10)
                [refusal] = emu.followups(refused)
                assert refusal.ephemeral and refusal.content.startswith("Only people who manage")
                assert (await scheduling.store.post(post.id)).state is PostState.PENDING_APPROVAL  # type: ignore[union-attr]

                # cy holds neither Manage Server nor Manage Channels, only the configured role
                emu.click_button(request.id, f"cmd:schedule approve {post.id}", user=cy, guild_id=guild)
                await emu.wait_until(
                    lambda: emu.message(request.id)["content"].endswith(
                        f"**Approved and published post `{post.id}`.**"
                    ),
                    10,
                )
                published = await scheduling.store.post(post.id)
                assert published is not None and published.state is PostState.PUBLISHED
                posted = [m for m in emu.messages_in(channel) if m.content == tgi.responder([])]
                assert len(posted) == 1 and str(posted[0].id) == published.message_id
                assert emu.message(request.id)["components"] == []  # decided: the buttons are gone
                assert await scheduling.runner.run_slot(schedule, SLOT) is None

                # Edit opens a form holding the draft; submitting it publishes the new text
                second = await scheduling.runner.run_slot(schedule, SLOT + dt.timedelta(days=1))
                assert second is not None
                request = next(
                    m for m in emu.messages_in(channel) if m.content.startswith(f"Draft `{second.id}`")
                )
                edit = f"cmd:schedule edit {second.id}"
                denied = emu.click_button(request.id, edit, user=bob, guild_id=guild)
                await emu.wait_until(lambda: bool(emu.interaction_callbacks(denied)), 10)
                [answer] = emu.interaction_callbacks(denied)
                assert answer["type"] == 4 and answer["data"]["flags"] == 64 and denied.modal is None
                opening = emu.click_button(request.id, edit, user=cy, guild_id=guild)
                await emu.wait_until(lambda: opening.modal is not None, 10)
                assert opening.modal is not None
                assert opening.modal["components"][0]["components"][0]["value"] == second.text
                too_long = emu.submit_modal(opening, {"text": "x" * 2100})
                await emu.wait_until(lambda: bool(emu.followups(too_long)), 10)
                [refusal] = emu.followups(too_long)
                assert refusal.ephemeral and "the limit is 2000. Nothing was published." in refusal.content
                edited = "Edited: the release notes are out. #herald"
                emu.submit_modal(opening, {"text": edited})
                await emu.wait_until(
                    lambda: emu.message(request.id)["content"].endswith(
                        f"**Approved and published post `{second.id}`.**"
                    ),
                    10,
                )
                assert [m.content for m in emu.messages_in(channel)].count(edited) == 1
                assert emu.message(request.id)["components"] == []

                # a draft's own buttons run their commands for whoever clicks
                drafting = emu.slash_command(
                    "draft",
                    [
                        {"name": "target", "type": 3, "value": "x"},
                        {"name": "prompt", "type": 3, "value": "announce v2"},
                    ],
                    channel_id=channel,
                    user=bob,
                    guild_id=guild,
                )
                await emu.wait_until(lambda: response_of(drafting).startswith("**Draft `"), 10)
                shown = emu.interaction_response(drafting)
                assert shown is not None
                draft_id = re.match(r"\*\*Draft `(\w+)`", shown.content)[1]  # type: ignore[index]
                custom_ids = [c["custom_id"] for row in shown.components for c in row["components"]]
                assert custom_ids == [
                    f"cmd:{c} {draft_id}" for c in ("copy", "regenerate", "shorten", "schedule draft")
                ]
                copying = emu.click_button(shown.id, f"cmd:copy {draft_id}", user=bob, guild_id=guild)
                await emu.wait_until(lambda: response_of(copying).startswith("```"), 10)
                assert response_of(copying) == f"```\n{tgi.responder([])}\n```"
                assert emu.interaction_callbacks(copying)[0]["type"] == 5  # a new message, not an edit
                assert emu.message(shown.id)["content"] == shown.content  # the draft stays as it was
            finally:
                await stop_serving(bot, intake)
                await scheduling.runner.close()
                await llm.close()
                await redis.aclose()

"""/search and /summary end to end (issue 13), through the real discord.py and
python-telegram-bot clients and the platform emulators: a fact planted among
hundreds of live messages is found and linked, a deleted message never comes back,
a second chat's facts never appear, and a summary covers exactly the span it claims."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from core.chat.engine import Engine
from core.chatlog.summary import FINAL_INSTRUCTIONS, NOTES_INSTRUCTIONS
from tests import test_discord, test_telegram
from tests.conftest import EngineFactory
from tests.emulators.discord import DiscordEmulator
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator
from tests.support import eventually
from tests.test_discord import CHANNEL, GUILD
from tests.test_discord import BotFactory as DiscordBots
from tests.test_discord_history import history_on
from tests.test_summary_command import respond
from tests.test_telegram import ADA, BOB
from tests.test_telegram import BotFactory as TelegramBots
from tests.test_telegram_history import ON

discord_emu = test_discord.discord_emu
ada = test_discord.ada
start_discord = test_discord.start_bot
telegram = test_telegram.telegram
start_telegram = test_telegram.start_bot

pytestmark = pytest.mark.timeout(120)

OTHER = 5002  # a second Discord channel, recorded on its own
SUPERGROUP, OTHER_GROUP = -1001234567890, -1009876543210
FACT = "Decision: the conference booth budget is 4200 euros, approved by finance."
GONE = "the booth wifi password is hunter2"
ELSEWHERE = "the booth in the other chat is purple"
ANSWER = "The booth budget is 4200 euros [{n}]."
_LINE = re.compile(r"^\[(\d+)\] [^\n]*?Decision: the conference booth", re.MULTILINE)
TOPICS = ("lunch menu", "deploy window", "design review", "holiday rota", "printer jam", "team offsite")


def filler(n: int) -> str:
    return f"note {n} about the {TOPICS[n % len(TOPICS)]}: nothing decided yet, more on this tomorrow"


def model(messages: list[dict[str, str]]) -> str:
    """Keywords for a search, an answer citing the fact's number, or summary notes."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if "search keywords" in system:
        return json.dumps({"keywords": ["booth", "budget", "money"]})
    if "Question:" in user:
        found = _LINE.search(user)
        return ANSWER.format(n=found.group(1) if found else 0)
    return respond(messages)


async def recorded(engine: Engine, platform: str, chat: int) -> list[str]:
    assert engine.chatlog is not None
    seqs = await engine.chatlog.span(platform, str(chat), 0)
    return [m.text for m in await engine.chatlog.messages(platform, str(chat), seqs)]


def summary_read(tgi: TGIEmulator) -> str:
    """Every message text the summary's calls were given."""
    return "\n".join(p for p in tgi.prompts if NOTES_INSTRUCTIONS[:40] in p or FINAL_INSTRUCTIONS[:40] in p)


def assert_covers_exactly(tgi: TGIEmulator, heading: str, kept: list[str], never: list[str]) -> None:
    """The heading's count is the span's, each kept message was read once, the rest never."""
    assert heading.startswith(f"Summary of {len(kept)} messages from "), heading
    read = summary_read(tgi)
    for text in kept:
        assert read.count(text) == 1, text
    for text in never:
        assert text not in read


async def test_discord_search_finds_and_links_and_summary_covers_its_span(
    start_discord: DiscordBots,
    discord_emu: DiscordEmulator,
    ada: dict[str, Any],
    tgi: TGIEmulator,
    make_engine: EngineFactory,
) -> None:
    discord_emu.text_channel(GUILD, OTHER, "other")
    bob = discord_emu.user(602, "bob")
    engine = await make_engine()
    await start_discord(engine, message_content=True)
    await history_on(discord_emu, CHANNEL, ada)
    await history_on(discord_emu, OTHER, ada)
    texts = [filler(n) for n in range(240)]
    texts.insert(150, FACT)
    ids = {text: discord_emu.user_message(CHANNEL, bob, text, guild_id=GUILD) for text in texts}
    gone = discord_emu.user_message(CHANNEL, ada, GONE, guild_id=GUILD)
    discord_emu.user_message(OTHER, bob, ELSEWHERE, guild_id=GUILD)

    async def all_recorded() -> bool:
        return len(await recorded(engine, "discord", CHANNEL)) == len(texts) + 1 and bool(
            await recorded(engine, "discord", OTHER)
        )

    await eventually(all_recorded)
    discord_emu.delete_message(gone)

    async def forgotten() -> bool:
        return GONE not in await recorded(engine, "discord", CHANNEL)

    await eventually(forgotten)
    tgi.responder = model
    asked = discord_emu.slash_command(
        "search",
        [{"name": "question", "type": 3, "value": "how much money did the booth get?"}],
        channel_id=CHANNEL,
        user=ada,
        guild_id=GUILD,
    )
    await discord_emu.wait_until(
        lambda: any(m.content.startswith("Sources:") for m in discord_emu.followups(asked)), 20
    )
    answer = discord_emu.interaction_response(asked)
    assert answer is not None
    cited = re.fullmatch(r"The booth budget is 4200 euros \[(\d+)\]\.", answer.content)
    assert cited is not None, answer.content
    [sources] = [m.content for m in discord_emu.followups(asked) if m.content.startswith("Sources:")]
    link = f"https://discord.com/channels/{GUILD}/{CHANNEL}/{ids[FACT]}"
    assert f"[{cited.group(1)}] Bob, " in sources and sources.count(link) == 1
    search_prompt = next(p for p in reversed(tgi.prompts) if "Question:" in p)
    assert FACT in search_prompt and GONE not in search_prompt and ELSEWHERE not in search_prompt

    summary = discord_emu.slash_command(
        "summary", [{"name": "since", "type": 3, "value": "1h"}], channel_id=CHANNEL, user=ada, guild_id=GUILD
    )
    await discord_emu.wait_until(
        lambda: any(m.content.startswith("Key messages:") for m in discord_emu.followups(summary)), 30
    )
    heading = discord_emu.interaction_response(summary)
    assert heading is not None
    assert_covers_exactly(tgi, heading.content, texts, [GONE, ELSEWHERE])


async def test_telegram_search_finds_and_links_and_summary_covers_its_span(
    start_telegram: TelegramBots, telegram: TelegramEmulator, tgi: TGIEmulator, make_engine: EngineFactory
) -> None:
    telegram.can_read_all_group_messages = True  # privacy mode off: every message arrives
    engine: Engine = await make_engine()
    await start_telegram(engine)
    team = telegram.group(SUPERGROUP, "Team", supergroup=True)
    other = telegram.group(OTHER_GROUP, "Other", supergroup=True)
    for chat in (SUPERGROUP, OTHER_GROUP):
        telegram.set_admin(chat, ADA["id"])
    telegram.send_user_message(team, ADA, "/history on")
    telegram.send_user_message(other, ADA, "/history on")
    await test_telegram.settled(telegram, SUPERGROUP, ON)
    await test_telegram.settled(telegram, OTHER_GROUP, ON)
    texts = [filler(n) for n in range(200)]
    texts.insert(120, FACT)
    ids = {text: telegram.send_user_message(team, BOB, text) for text in texts}
    telegram.send_user_message(other, BOB, ELSEWHERE)

    async def all_recorded() -> bool:
        return len(await recorded(engine, "telegram", SUPERGROUP)) == len(texts) and bool(
            await recorded(engine, "telegram", OTHER_GROUP)
        )

    await eventually(all_recorded)
    fact = texts[120]
    tgi.responder = model
    telegram.send_user_message(team, ADA, "/search how much money did the booth get?")
    await telegram.wait_until(
        lambda: any(m.text.startswith("Sources:") for m in telegram.messages_in(SUPERGROUP)), timeout=20
    )
    said = [m.text for m in telegram.messages_in(SUPERGROUP)]
    sources = next(t for t in said if t.startswith("Sources:"))
    answer = said[said.index(sources) - 1]
    cited = re.fullmatch(r"The booth budget is 4200 euros \[(\d+)\]\.", answer)
    assert cited is not None, answer
    link = f"https://t.me/c/{str(SUPERGROUP)[4:]}/{ids[fact]}"
    assert f"[{cited.group(1)}] Bob, " in sources and sources.count(link) == 1
    search_prompt = next(p for p in reversed(tgi.prompts) if "Question:" in p)
    assert fact in search_prompt and ELSEWHERE not in search_prompt

    telegram.send_user_message(team, ADA, "/summary last=150")
    await telegram.wait_until(
        lambda: any(m.text.startswith("Key messages:") for m in telegram.messages_in(SUPERGROUP)), timeout=30
    )
    heading = next(m.text for m in telegram.messages_in(SUPERGROUP) if m.text.startswith("Summary of "))
    assert_covers_exactly(tgi, heading, texts[-150:], [*texts[:-150], ELSEWHERE])

"""The Telegram emulator behaves like the Bot API: proven with the real python-telegram-bot.

Every test drives PTB's own ``Bot`` or ``Application`` over real HTTP, so PTB's encoding,
parsing and error mapping are part of what is checked.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, ChatMigrated, Conflict, Forbidden, InvalidToken, RetryAfter
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes, MessageHandler, filters

from bots.redis_server import free_port
from tests.emulators.telegram import (
    DELETE_WINDOW,
    MarkupError,
    TelegramEmulator,
    parse_html,
    parse_markdown_v2,
    utf16_len,
)

ADA = 42


@pytest.fixture
async def emu() -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator() as emulator:
        yield emulator


def make_bot(emu: TelegramEmulator, token: str | None = None) -> Bot:
    return Bot(token or emu.token, base_url=f"{emu.url}/bot", base_file_url=f"{emu.url}/file/bot")


@pytest.fixture
async def bot(emu: TelegramEmulator) -> AsyncIterator[Bot]:
    async with make_bot(emu) as client:
        yield client


async def post(emu: TelegramEmulator, method: str, token: str | None = None, **kwargs: Any) -> Any:
    """A raw request, to see the wire answer PTB would otherwise turn into an exception."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emu.url}/bot{token or emu.token}/{method}", **kwargs) as resp,
    ):
        return resp.status, await resp.json()


# --- identity, transport, encodings --------------------------------------------------------


async def test_get_me_describes_the_bot(emu: TelegramEmulator, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (emu.bot_id, "HeraldBot", True)
    assert me.can_join_groups is True
    assert me.can_read_all_group_messages is False
    assert me.supports_inline_queries is False
    assert me.has_main_web_app is False
    assert emu.calls[0].method == "getMe"


async def test_wrong_token_and_unknown_method(emu: TelegramEmulator) -> None:
    assert await post(emu, "getMe", token="999:WRONG") == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    assert await post(emu, "getMe", token="not-a-token") == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found"},
    )
    assert await post(emu, "sendTelepathy") == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found"},
    )
    with pytest.raises(InvalidToken):
        async with make_bot(emu, token="999:WRONG"):
            pass


async def test_form_json_and_multipart_bodies_decode_alike(emu: TelegramEmulator) -> None:
    emu.private_chat(ADA)
    entities = [{"type": "bold", "offset": 0, "length": 3}]
    form = {"chat_id": str(ADA), "text": "123", "entities": json.dumps(entities)}
    status, answer = await post(emu, "sendMessage", data=form)
    assert status == 200 and answer["result"]["text"] == "123"
    status, answer = await post(
        emu, "sendMessage", json={"chat_id": ADA, "text": "123", "entities": entities}
    )
    assert status == 200 and answer["result"]["entities"] == entities
    multipart = aiohttp.FormData({**form, "disable_notification": "true"}, default_to_multipart=True)
    status, answer = await post(emu, "SENDMESSAGE", data=multipart)  # method names ignore case
    assert status == 200
    assert [c.params for c in emu.calls_to("sendMessage")] == [
        {"chat_id": ADA, "text": "123", "entities": entities},
        {"chat_id": ADA, "text": "123", "entities": entities},
        {"chat_id": ADA, "text": "123", "entities": entities, "disable_notification": True},
    ]


# --- sending and editing -------------------------------------------------------------------


async def test_send_plain_message_returns_a_complete_message(emu: TelegramEmulator, bot: Bot) -> None:
    chat = emu.private_chat(ADA, "Ada", "ada")
    before = int(time.time())
    sent = await bot.send_message(ADA, "Hello, Ada")
    assert sent.text == "Hello, Ada"
    assert sent.from_user is not None and sent.from_user.id == emu.bot_id
    assert sent.chat.id == chat["id"] and sent.chat.type == "private"
    assert before <= sent.date.timestamp() <= time.time() + 1  # seconds, not milliseconds
    [stored] = emu.messages_in(ADA)
    assert (stored.message_id, stored.text, stored.parse_mode, stored.html) == (
        sent.message_id,
        "Hello, Ada",
        None,
        None,
    )


async def test_send_html_computes_utf16_entities(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    html = (
        '😀 <b>bold</b> <a href="https://example.org">link</a>\n'
        '<pre><code class="language-py">x = 1</code></pre>'
    )
    sent = await bot.send_message(ADA, html, parse_mode=ParseMode.HTML)
    assert sent.text == "😀 bold link\nx = 1"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [
        ("bold", 3, 4),  # the emoji is two UTF-16 units
        ("text_link", 8, 4),
        ("pre", 13, 5),
    ]
    assert sent.entities[1].url == "https://example.org/"
    assert sent.entities[2].language == "py"
    [stored] = emu.messages_in(ADA)
    assert stored.html == html and stored.parse_mode == "HTML" and stored.text == sent.text


async def test_send_with_explicit_entities_and_markdown_v2(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    sent = await bot.send_message(ADA, "note this", entities=[MessageEntity("italic", 5, 4)])
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("italic", 5, 4)]
    sent = await bot.send_message(ADA, r"*Version* 1\.0", parse_mode=ParseMode.MARKDOWN_V2)
    assert sent.text == "Version 1.0"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", 0, 7)]
    with pytest.raises(BadRequest) as caught:
        await bot.send_message(ADA, "Version 1.0", parse_mode=ParseMode.MARKDOWN_V2)
    assert caught.value.message == (
        "Can't parse entities: character '.' is reserved and must be escaped with the preceding '\\'"
    )


async def test_edit_message_text_and_not_modified(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    sent = await bot.send_message(ADA, "draft")
    edited = await bot.edit_message_text("<b>final</b>", ADA, sent.message_id, parse_mode="HTML")
    assert not isinstance(edited, bool)
    assert edited.text == "final" and edited.edit_date is not None
    assert [(e.type, e.offset, e.length) for e in edited.entities] == [("bold", 0, 5)]
    [stored] = emu.messages_in(ADA)
    assert (stored.edits, stored.history, stored.html) == (1, ["draft", "final"], "<b>final</b>")
    with pytest.raises(BadRequest, match=r"^Message is not modified: specified new message content"):
        await bot.edit_message_text("<b>final</b>", ADA, sent.message_id, parse_mode="HTML")
    # Same text, other entities: a real change.
    await bot.edit_message_text("final", ADA, sent.message_id)
    with pytest.raises(BadRequest, match=r"^Message to edit not found$"):
        await bot.edit_message_text("x", ADA, 999)
    assert emu.messages_in(ADA)[0].edits == 2


async def test_length_limit_counts_utf16_after_parsing(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    await bot.send_message(ADA, "a" * 4096)
    await bot.send_message(ADA, "😀" * 2048)  # 4096 UTF-16 units
    await bot.send_message(ADA, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")  # tags don't count
    with pytest.raises(BadRequest, match=r"^Message is too long$"):
        await bot.send_message(ADA, "a" * 4097)
    with pytest.raises(BadRequest, match=r"^Message is too long$"):
        await bot.send_message(ADA, "😀" * 2048 + "a")
    first = emu.messages_in(ADA)[0]
    with pytest.raises(BadRequest, match=r"^Message_too_long$"):  # editMessageText's own spelling
        await bot.edit_message_text("b" * 4097, ADA, first.message_id)
    assert utf16_len("😀") == 2
    assert len(emu.messages_in(ADA)) == 3


async def test_empty_text_and_unknown_chat(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    with pytest.raises(BadRequest, match=r"^Message text is empty$"):
        await bot.send_message(ADA, "")
    with pytest.raises(BadRequest, match=r"^Message text is empty$"):
        await bot.send_message(ADA, "<b> </b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"^Chat not found$"):
        await bot.send_message(777, "hi")


async def test_html_parse_errors_are_bad_requests(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    with pytest.raises(BadRequest) as caught:
        await bot.send_message(ADA, "a <foo>b</foo>", parse_mode="HTML")
    assert caught.value.message == 'Can\'t parse entities: unsupported start tag "foo" at byte offset 2'
    status, answer = await post(
        emu, "sendMessage", json={"chat_id": ADA, "text": "<b>x", "parse_mode": "HTML"}
    )
    assert (status, answer["description"]) == (
        400,
        "Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\"",
    )
    assert emu.messages_in(ADA) == []


@pytest.mark.parametrize(
    ("html", "error"),
    [
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ("AT&T", 'Character "&" at byte offset 2 starts no HTML entity; escape it as "&amp;"'),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("🏟 <b", "Unclosed start tag at byte offset 5"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ('<tg-emoji emoji-id="x">👍</tg-emoji>', "Invalid custom emoji identifier specified"),
    ],
)
def test_html_parser_refuses_like_telegram(html: str, error: str) -> None:
    with pytest.raises(MarkupError) as caught:
        parse_html(html)
    assert str(caught.value) == error


def test_html_parser_accepts_telegrams_subset() -> None:
    text, entities = parse_html(
        "<strong>b</strong><em>i</em><ins>u</ins><del>s</del><tg-spoiler>p</tg-spoiler>"
        '<span class="tg-spoiler">q</span><code>c</code><blockquote expandable>e</blockquote>'
        "&lt;&gt;&amp;&quot;&#65;&#x42;"
    )
    assert text == 'biuspqce<>&"AB'
    assert [e["type"] for e in entities] == [
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "spoiler",
        "code",
        "expandable_blockquote",
    ]
    assert parse_html("AT&T &laquo;", strict=False) == ("AT&T &laquo;", [])


def test_markdown_v2_subset() -> None:
    text, entities = parse_markdown_v2("_i_ __u__ ~s~ ||p|| `c` [l](https://t.me) ```py\nx```")
    assert text == "i u s p c l x"
    assert [(e["type"], e["offset"]) for e in entities] == [
        ("italic", 0),
        ("underline", 2),
        ("strikethrough", 4),
        ("spoiler", 6),
        ("code", 8),
        ("text_link", 10),
        ("pre", 12),
    ]
    with pytest.raises(MarkupError, match="Can't find end of Bold entity at byte offset 2"):
        parse_markdown_v2(r"a *b")


async def test_replies_need_an_existing_message(emu: TelegramEmulator, bot: Bot) -> None:
    chat = emu.private_chat(ADA)
    asked = emu.send_user_message(chat, emu.user(ADA), "question?")
    answer = await bot.send_message(ADA, "answer", reply_parameters=ReplyParameters(asked))
    assert answer.reply_to_message is not None
    assert answer.reply_to_message.text == "question?"
    assert answer.reply_to_message.from_user is not None and answer.reply_to_message.from_user.id == ADA
    with pytest.raises(BadRequest, match=r"^Message to be replied not found$"):
        await bot.send_message(ADA, "lost", reply_to_message_id=999)
    lenient = await bot.send_message(
        ADA, "still sent", reply_parameters=ReplyParameters(999, allow_sending_without_reply=True)
    )
    assert lenient.reply_to_message is None
    assert [m.reply_to_message_id for m in emu.messages_in(ADA)] == [asked, None]


async def test_delete_message(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    sent = await bot.send_message(ADA, "oops")
    assert await bot.delete_message(ADA, sent.message_id) is True
    assert emu.messages_in(ADA) == []
    with pytest.raises(BadRequest, match=r"^Message to delete not found$"):
        await bot.delete_message(ADA, sent.message_id)
    with pytest.raises(BadRequest, match=r"^Message to edit not found$"):
        await bot.edit_message_text("back?", chat_id=ADA, message_id=sent.message_id)


async def test_delete_message_follows_telegrams_rules(emu: TelegramEmulator, bot: Bot) -> None:
    team = emu.group(-4010, "Team", supergroup=True)
    someone = emu.send_user_message(team, emu.user(7, "Grace"), "/ask hi")
    with pytest.raises(BadRequest, match=r"^Message can't be deleted$"):  # not its own, not an admin
        await bot.delete_message(-4010, someone)
    emu.set_admin(-4010, emu.bot_id)
    assert await bot.delete_message(-4010, someone)
    emu.group(-4011, "Small")
    emu.migrate_group(-4011, -1004011)
    created = [u["message"] for u in emu.pending_updates if "migrate_from_chat_id" in u.get("message", {})]
    emu.set_admin(-1004011, emu.bot_id)
    with pytest.raises(BadRequest, match=r"^Message can't be deleted$"):  # a service message
        await bot.delete_message(-1004011, created[0]["message_id"])
    old = await bot.send_message(-4010, "from long ago")
    emu.age_message(-4010, old.message_id, DELETE_WINDOW)
    with pytest.raises(BadRequest, match=r"^Message can't be deleted$"):  # 48 hours at most
        await bot.delete_message(-4010, old.message_id)


# --- faults --------------------------------------------------------------------------------


async def test_flood_control_raises_retry_after(
    emu: TelegramEmulator, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # PTB's future type, without its warning
    emu.private_chat(ADA)
    emu.fail_next("sendMessage", 429, "Too Many Requests: retry after 3", retry_after=3)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(ADA, "hi")
    assert caught.value.retry_after == dtm.timedelta(seconds=3)
    assert emu.calls_to("sendMessage")[0].error == "Too Many Requests: retry after 3"
    await bot.send_message(ADA, "hi")  # the fault was used up
    assert [m.text for m in emu.messages_in(ADA)] == ["hi"]


async def test_blocked_user_is_forbidden(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    emu.block_by(ADA)
    with pytest.raises(Forbidden, match=r"^Forbidden: bot was blocked by the user$"):
        await bot.send_message(ADA, "hi")
    with pytest.raises(Forbidden):
        await bot.send_chat_action(ADA, ChatAction.TYPING)


async def test_migrated_group(emu: TelegramEmulator, bot: Bot) -> None:
    emu.group(-4001, "Team")
    emu.migrate_group(-4001, -1004001)
    with pytest.raises(ChatMigrated) as caught:
        await bot.send_message(-4001, "hi")
    assert caught.value.new_chat_id == -1004001
    updates = await bot.get_updates(timeout=0)
    messages = [u.message for u in updates]
    assert messages[0] is not None and messages[0].migrate_to_chat_id == -1004001
    assert messages[1] is not None and messages[1].migrate_from_chat_id == -4001
    assert messages[1].chat.type == "supergroup"
    sent = await bot.send_message(-1004001, "hi again")
    assert sent.chat.id == -1004001


async def test_conflict_from_get_updates(emu: TelegramEmulator, bot: Bot) -> None:
    emu.conflict()
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await bot.get_updates(timeout=0)
    emu.conflict(active=False)
    assert await bot.get_updates(timeout=0) == ()


async def test_a_second_poller_terminates_the_held_one(emu: TelegramEmulator, bot: Bot) -> None:
    held = asyncio.create_task(bot.get_updates(timeout=5))
    await emu.wait_until(lambda: len(emu.calls_to("getUpdates")) == 1)
    async with make_bot(emu) as other:  # another instance of the same bot
        assert await other.get_updates(timeout=0) == ()
    with pytest.raises(Conflict):
        await asyncio.wait_for(held, 1)


async def test_an_offset_confirms_every_update_below_it(emu: TelegramEmulator, bot: Bot) -> None:
    chat = emu.private_chat(ADA)
    for text in ("a", "b", "c"):
        emu.send_user_message(chat, emu.user(ADA), text)
    ids = [u["update_id"] for u in emu.pending_updates]
    seen: list[list[int]] = []

    async def watch(confirmed: list[int]) -> None:
        seen.append(confirmed)

    emu.on_confirm = watch
    assert [u.update_id for u in await bot.get_updates(timeout=0)] == ids
    assert [u.update_id for u in await bot.get_updates(offset=ids[1], timeout=0)] == ids[1:]
    assert await bot.get_updates(offset=ids[2] + 1, timeout=0) == ()
    assert seen == [[ids[0]], ids[1:]] and emu.confirmed == ids
    assert [c.params.get("offset") for c in emu.calls_to("getUpdates")] == [None, ids[1], ids[2] + 1]


async def test_set_webhook_checks_its_secret_token(emu: TelegramEmulator, bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"^Secret token contains unallowed characters$"):
        await bot.set_webhook("https://example.org/hook", secret_token="has:colon")
    with pytest.raises(BadRequest, match=r"^Secret token is too long$"):
        await bot.set_webhook("https://example.org/hook", secret_token="a" * 257)
    assert emu.webhook is None
    assert await bot.set_webhook("https://example.org/hook", secret_token="A-z_09" * 40)


async def test_webhook_delivery_keeps_an_update_until_it_is_accepted(emu: TelegramEmulator, bot: Bot) -> None:
    answers = [503, 200, 200]
    received: list[tuple[str, str | None, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        received.append((request.path_qs, secret, await request.json()))
        return web.Response(status=answers.pop(0))

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        chat = emu.private_chat(ADA)
        emu.send_user_message(chat, emu.user(ADA), "queued before the webhook")
        emu.deliver_webhooks(f"http://127.0.0.1:{port}", retry_after=0.05)
        assert await bot.set_webhook("https://bot.example.org/hook?x=1", secret_token="s3cret")
        await emu.wait_until(lambda: len(received) == 2)
        assert (await bot.get_webhook_info()).last_error_message == (
            "Wrong response from the webhook: 503 Service Unavailable"
        )
        emu.send_user_message(chat, emu.user(ADA), "then this one")
        await emu.wait_until(lambda: len(received) == 3)
    finally:
        await runner.cleanup()
    assert [(path, secret) for path, secret, _ in received] == [("/hook?x=1", "s3cret")] * 3
    first, again, then = (body for _, _, body in received)
    assert first == again and first["message"]["text"] == "queued before the webhook"
    assert then["message"]["text"] == "then this one"
    assert [d.status for d in emu.webhook_deliveries] == [503, 200, 200]
    assert emu.pending_updates == [] and emu.confirmed == [first["update_id"], then["update_id"]]


async def test_get_updates_with_a_webhook_is_a_conflict(emu: TelegramEmulator, bot: Bot) -> None:
    assert await bot.set_webhook("https://example.org/hook", secret_token="s3cret")
    assert emu.webhook is not None and emu.webhook["url"] == "https://example.org/hook"
    assert (await bot.get_webhook_info()).url == "https://example.org/hook"
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook()
    assert emu.webhook is None


# --- recorded calls ------------------------------------------------------------------------


async def test_commands_and_chat_actions_are_recorded(emu: TelegramEmulator, bot: Bot) -> None:
    emu.private_chat(ADA)
    await bot.set_my_commands([BotCommand("ask", "Ask Herald"), BotCommand("forget", "Forget me")])
    assert emu.my_commands == [
        {"command": "ask", "description": "Ask Herald"},
        {"command": "forget", "description": "Forget me"},
    ]
    assert [c.command for c in await bot.get_my_commands()] == ["ask", "forget"]
    assert await bot.send_chat_action(ADA, ChatAction.TYPING)
    [action] = emu.calls_to("sendChatAction")
    assert action.params == {"chat_id": ADA, "action": "typing"}
    with pytest.raises(BadRequest, match=r"^Wrong parameter action in request$"):
        await bot.send_chat_action(ADA, "dancing")
    assert await bot.delete_my_commands()
    assert emu.my_commands == []


async def test_chat_members_and_admins(emu: TelegramEmulator, bot: Bot) -> None:
    emu.group(-1009, "Ops", supergroup=True)
    emu.user(7, "Grace")
    emu.user(8, "Linus")
    emu.set_admin(-1009, 7)
    member = await bot.get_chat_member(-1009, 7)
    assert member.status == "administrator"
    assert (await bot.get_chat_member(-1009, 8)).status == "member"
    assert [m.user.id for m in await bot.get_chat_administrators(-1009)] == [7]
    chat = await bot.get_chat(-1009)
    assert (chat.id, chat.type, chat.title) == (-1009, "supergroup", "Ops")


# --- incoming traffic ----------------------------------------------------------------------


async def test_user_messages_carry_telegrams_entities(emu: TelegramEmulator, bot: Bot) -> None:
    chat = emu.private_chat(ADA)
    emu.send_user_message(chat, emu.user(ADA), "/ask@HeraldBot what is @grace doing?")
    [update] = await bot.get_updates(timeout=0)
    assert update.message is not None
    assert [(e.type, e.offset, e.length) for e in update.message.entities] == [
        ("bot_command", 0, 14),
        ("mention", 23, 6),
    ]


async def test_long_poll_wakes_on_a_new_update_and_honours_offset(emu: TelegramEmulator, bot: Bot) -> None:
    chat = emu.private_chat(ADA)
    started = time.monotonic()
    waiting = asyncio.create_task(bot.get_updates(timeout=5))
    await emu.wait_until(lambda: len(emu.calls_to("getUpdates")) == 1)
    await asyncio.sleep(0.05)
    assert not waiting.done()  # held, not answered empty
    emu.send_user_message(chat, emu.user(ADA), "hello")
    [update] = await asyncio.wait_for(waiting, 1)
    assert time.monotonic() - started < 1
    # Unconfirmed updates come again; an offset past them confirms them.
    assert [u.update_id for u in await bot.get_updates(timeout=0)] == [update.update_id]
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()
    assert emu.pending_updates == []


async def test_privacy_mode_in_groups(emu: TelegramEmulator, bot: Bot) -> None:
    team = emu.group(-4002, "Team")
    grace = emu.user(7, "Grace")
    emu.send_user_message(team, grace, "just chatting")
    mention = emu.send_user_message(team, grace, "@HeraldBot hello")
    emu.send_user_message(team, grace, "/ask@OtherBot hi")
    command = emu.send_user_message(team, grace, "/ask hi")
    reply_to = (await bot.send_message(-4002, "I am here")).message_id
    reply = emu.send_user_message(team, grace, "thanks", reply_to_message_id=reply_to)
    updates = await bot.get_updates(timeout=0)
    assert [u.message.message_id for u in updates if u.message] == [mention, command, reply]
    reader = TelegramEmulator(can_read_all_group_messages=True)
    reader.send_user_message(reader.group(-4003), grace, "just chatting")
    assert len(reader.pending_updates) == 1


async def test_forum_topics(emu: TelegramEmulator, bot: Bot) -> None:
    forum = emu.group(-1005, "Forum", forum=True)
    asked = emu.send_user_message(forum, emu.user(7, "Grace"), "@HeraldBot hi", message_thread_id=3)
    [update] = await bot.get_updates(timeout=0, allowed_updates=["message"])
    assert update.message is not None
    assert update.message.is_topic_message and update.message.message_thread_id == 3
    # A reply lands in the topic of the message it answers.
    answer = await bot.send_message(-1005, "answer", reply_to_message_id=asked)
    assert answer.message_thread_id == 3 and answer.is_topic_message
    await bot.send_message(-1005, "general")
    assert [m.text for m in emu.messages_in(-1005, thread_id=3)] == ["answer"]
    assert len(emu.messages_in(-1005)) == 2


async def test_stop_is_prompt_with_a_held_poll(emu: TelegramEmulator, bot: Bot) -> None:
    waiting = asyncio.create_task(bot.get_updates(timeout=30))
    await emu.wait_until(lambda: len(emu.calls_to("getUpdates")) == 1)
    started = time.monotonic()
    await emu.stop()
    assert time.monotonic() - started < 1
    assert await asyncio.wait_for(waiting, 1) == ()


async def test_application_polls_and_answers_each_update_once(emu: TelegramEmulator) -> None:
    chat = emu.private_chat(ADA, "Ada")
    ada = emu.user(ADA)
    handled: list[int] = []

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        handled.append(update.update_id)
        await update.effective_message.reply_text(f"echo: {update.effective_message.text}")

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        handled.append(update.update_id)
        await update.effective_message.reply_html("<b>Welcome</b>")

    app = (
        ApplicationBuilder()
        .token(emu.token)
        .base_url(f"{emu.url}/bot")
        .base_file_url(f"{emu.url}/file/bot")
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            emu.send_user_message(chat, ada, "/start")
            await emu.wait_until(lambda: len(emu.messages_in(ADA)) == 1, timeout=3)
            emu.send_user_message(chat, ada, "hello")
            emu.send_user_message(chat, ada, "again")
            await emu.wait_until(lambda: len(emu.messages_in(ADA)) == 3, timeout=3)
        finally:
            await app.updater.stop()
            await app.stop()
    replies = emu.messages_in(ADA)
    assert [m.text for m in replies] == ["Welcome", "echo: hello", "echo: again"]
    assert replies[0].entities == [{"type": "bold", "offset": 0, "length": 7}]
    assert len(handled) == 3 and len(set(handled)) == 3
    assert sorted(emu.deliveries) == sorted(set(emu.deliveries)) == sorted(handled)  # none twice
    assert emu.pending_updates == []  # the last offset was confirmed on stop
    assert [c.method for c in emu.calls[:2]] == ["getMe", "deleteWebhook"]


async def test_webhook_updates_and_callback_queries(emu: TelegramEmulator, bot: Bot) -> None:
    chat = emu.private_chat(ADA)
    update = Update.de_json(emu.make_update(chat, emu.user(ADA), "/ask via webhook"), bot)
    assert update.message is not None and update.message.text == "/ask via webhook"
    assert emu.pending_updates == []  # a webhook update is handed over, not queued
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("More", callback_data="more")]])
    sent = await bot.send_message(ADA, "pick", reply_markup=keyboard)
    query_id = emu.send_callback_query(chat, emu.user(ADA), sent.message_id, "more")
    [pressed] = await bot.get_updates(timeout=0)
    assert pressed.callback_query is not None and pressed.callback_query.data == "more"
    assert await bot.answer_callback_query(query_id, text="ok")
    assert emu.callback_answers[query_id]["text"] == "ok"
    with pytest.raises(BadRequest, match=r"^Query is too old"):
        await bot.answer_callback_query(query_id)
    calls = emu.calls_to("answerCallbackQuery")
    assert calls[0].at <= calls[1].at  # arrival times, for pacing checks

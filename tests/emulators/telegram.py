"""A loopback emulator of the Telegram Bot API for tests that run the real python-telegram-bot.

PTB is pointed at it with ``ApplicationBuilder().base_url(f"{emu.url}/bot")``, so every
request crosses real HTTP in PTB's own encoding (form fields: strings raw, everything else
JSON text) and every answer goes through PTB's own parsing and error mapping. The
emulator keeps Telegram's observable rules that a bot's code can get wrong: long polling
with offset confirmation, HTML/MarkdownV2 parsing with Telegram's error texts, the
4096-UTF-16-unit limit counted after parsing, "message is not modified", replies to
missing messages, group migration, blocked users, flood control and 409 conflicts.
Telegram's flood limits themselves are opt-in (``flood_limits=FloodLimits()``): without
them only what a test queues with ``fail_next`` is refused.
Updates are confirmed only by a later getUpdates' offset (every update below it), which
tests can watch (``confirmed``, ``on_confirm``); with a webhook set, updates are POSTed
to it (``deliver_webhooks``) and stay pending until it answers 2xx, as Telegram does.

Deliberate deviations from Telegram (see ``TelegramEmulator`` for details):

* A ``&`` that starts no HTML entity is an error (Telegram keeps it literally); turn
  ``strict_html`` off for Telegram's leniency. Telegram's docs require the escape, so a
  renderer that forgets it is caught here rather than corrupting text such as ``&lt``.
* Bot messages get no automatic entities (urls, mentions...): only what was parsed or sent.
* Message ids count per chat; text is not trimmed; no media, inline mode or payments.
* Webhook deliveries go one at a time, in order, to local stand-ins for the webhook's
  host (``deliver_webhooks``); Telegram uses up to ``max_connections`` at once. Without
  stand-ins updates just wait (``make_update`` builds a webhook body for a test to POST).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from tests.emulators.token_bucket import TokenBucket

__all__ = [
    "DELETE_WINDOW",
    "FLOOD_LIMITED",
    "ApiError",
    "BotMessage",
    "Call",
    "FloodLimits",
    "FloodWait",
    "MarkupError",
    "TelegramEmulator",
    "WebhookDelivery",
    "auto_entities",
    "normalize_url",
    "parse_html",
    "parse_markdown",
    "parse_markdown_v2",
    "utf16_len",
]

_Json = dict[str, Any]

MAX_TEXT_UTF16 = 4096
CONFLICT_POLLING = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the "
    "webhook first"
)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
# Telegram's service account that signs messages "on behalf of" a supergroup.
GROUP_ANONYMOUS_BOT: _Json = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
# Update types Telegram leaves out unless allowed_updates names them.
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Form fields that are strings even when they look like JSON ("123", "true").
_STRING_PARAMS = frozenset(
    {
        "text",
        "parse_mode",
        "caption",
        "url",
        "secret_token",
        "ip_address",
        "callback_query_id",
        "action",
        "language_code",
        "description",
        "short_description",
        "name",
        "title",
        "query",
        "business_connection_id",
        "inline_message_id",
        "message_effect_id",
        "custom_title",
        "emoji",
    }
)
_TOKEN_SHAPE = re.compile(r"\d+:[\w-]+")
_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")
_BOT_COMMAND = re.compile(r"(?<![\w/<>])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>@])")
_MENTION = re.compile(r"(?<!\w)@[A-Za-z0-9_]{2,32}(?!\w)")
_TG_USER = re.compile(r"tg://user\?id=(\d+)")
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]*")
#: Telegram's rule: "a message can only be deleted if it was sent less than 48 hours ago"
DELETE_WINDOW = 48 * 3600
#: service messages that nobody can delete
_UNDELETABLE = (
    "group_chat_created",
    "supergroup_chat_created",
    "migrate_from_chat_id",
    "forum_topic_created",
)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's offsets and limits."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _byte_offset(src: str, index: int) -> int:
    """UTF-8 byte offset of ``src[index]``: Telegram's parse errors count bytes."""
    return len(src[:index].encode("utf-8", "surrogatepass"))


# --- markup parsers ----------------------------------------------------------------------


class MarkupError(Exception):
    """Text that Telegram refuses to parse; ``str()`` is the message after "can't parse entities: "."""


@dataclass
class _Open:
    tag: str
    argument: str
    offset: int  # UTF-16 offset in the output
    byte: int  # byte offset of the opening markup in the source
    order: int
    start: int = 0  # str index in the output, to read the enclosed text
    depth: int = 0


class _Out:
    """Output text with a running UTF-16 length."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.u16 = 0
        self.chars = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.u16 += utf16_len(text)
        self.chars += len(text)

    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class _Entities:
    """Entities in creation order; ``finish`` applies Telegram's nesting rules and sorts."""

    items: list[tuple[int, _Json]] = field(default_factory=list)
    languages: dict[int, str] = field(default_factory=dict)  # <code class="language-x"> by order

    def add(self, opened: _Open, end: int, kind: str, **extra: Any) -> None:
        if end > opened.offset:
            entity = {"type": kind, "offset": opened.offset, "length": end - opened.offset, **extra}
            self.items.append((opened.order, entity))

    def finish(self) -> list[_Json]:
        # pre and code can't contain other entities: drop what was opened inside them.
        blocks = [(order, e) for order, e in self.items if e["type"] in ("pre", "code")]
        kept = []
        for order, entity in self.items:
            inside = any(
                b_order < order
                and b["offset"] <= entity["offset"]
                and entity["offset"] + entity["length"] <= b["offset"] + b["length"]
                for b_order, b in blocks
            )
            if not inside:
                kept.append((order, entity))
        kept.sort(key=lambda item: (item[1]["offset"], -item[1]["length"], item[0]))
        return [entity for _, entity in kept]


def normalize_url(url: str) -> str | None:
    """The URL Telegram stores for a link, or None when it is not one (then no entity)."""
    if not url or any(ch.isspace() for ch in url):
        return None
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    if scheme is None:
        if not re.match(r"[^/?#:]+\.[A-Za-z]{2,}(:\d+)?([/?#]|$)", url):
            return None
        url = "http://" + url
    elif scheme.group(1).lower() not in ("http", "https"):
        return url
    web_url = re.match(r"([A-Za-z]+://[^/?#]+)(.*)", url, re.S)
    if web_url is None:
        return None
    host, rest = web_url.groups()
    return host + ("" if rest.startswith("/") else "/") + rest


# HTML ---------------------------------------------------------------------------------------

_HTML_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "s",
        "strike",
        "del",
        "u",
        "ins",
        "tg-spoiler",
        "tg-emoji",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)
_HTML_KINDS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}
_NAMED_REFERENCES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_SPACE = " \t\r\n\v\f"


def _is_space(ch: str) -> bool:
    """tdlib's is_space: the end of the text ("") counts as space."""
    return ch == "" or ch in _SPACE


def _decode_reference(src: str, i: int) -> tuple[str, int] | None:
    """Decode the character reference at ``src[i] == '&'`` like tdlib (``;`` optional)."""
    n = len(src)
    j = i + 1
    if j < n and src[j] == "#":
        j += 1
        hexadecimal = j < n and src[j] in "xX"
        if hexadecimal:
            j += 1
        start = j
        digits = "0123456789abcdefABCDEF" if hexadecimal else "0123456789"
        while j < n and src[j] in digits:
            j += 1
        if j == start:
            return None
        code = int(src[start:j], 16 if hexadecimal else 10)
        if code == 0 or code > 0x10FFFF:
            return None
        char = chr(code)
    else:
        while j < n and src[j].isascii() and src[j].isalpha():
            j += 1
        named = _NAMED_REFERENCES.get(src[i + 1 : j])
        if named is None:
            return None
        char = named
    if j < n and src[j] == ";":
        j += 1
    return char, j


def parse_html(src: str, *, strict: bool = True) -> tuple[str, list[_Json]]:
    """Telegram's HTML parse mode (tdlib's parser and error texts) to plain text and entities.

    ``strict`` also refuses a ``&`` that starts no entity, which Telegram keeps literally.
    """
    out = _Out()
    entities = _Entities()
    stack: list[_Open] = []
    order = 0
    n = len(src)

    def at(k: int) -> str:
        return src[k] if k < n else ""

    def where(k: int) -> int:
        return _byte_offset(src, k)

    i = 0
    while i < n:
        c = src[i]
        if c == "&":
            decoded = _decode_reference(src, i)
            if decoded is not None:
                out.add(decoded[0])
                i = decoded[1]
                continue
            if strict:
                raise MarkupError(
                    f'Character "&" at byte offset {where(i)} starts no HTML entity; escape it as "&amp;"'
                )
        if c != "<":
            out.add(c)
            i += 1
            continue
        begin = i
        i += 1
        if at(i) != "/":
            while not _is_space(at(i)) and at(i) != ">":
                i += 1
            if at(i) == "":
                raise MarkupError(f"Unclosed start tag at byte offset {where(begin)}")
            tag = src[begin + 1 : i].lower()
            if tag not in _HTML_TAGS:
                raise MarkupError(f'Unsupported start tag "{tag}" at byte offset {where(begin)}')
            argument = ""
            while at(i) != ">":
                while at(i) != "" and _is_space(at(i)):
                    i += 1
                if at(i) == ">":
                    break
                name_start = i
                while not _is_space(at(i)) and at(i) not in "=>":
                    i += 1
                name = src[name_start:i].lower()
                if not name:
                    raise MarkupError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {where(begin)}'
                    )
                while at(i) != "" and _is_space(at(i)):
                    i += 1
                if at(i) != "=":
                    if tag == "blockquote" and name == "expandable":
                        argument = "1"
                        continue
                    raise MarkupError(
                        f'Expected equal sign in declaration of an attribute of the tag "{tag}" '
                        f"at byte offset {where(begin)}"
                    )
                i += 1
                while at(i) != "" and _is_space(at(i)):
                    i += 1
                if at(i) == "":
                    raise MarkupError(f'Unclosed start tag "{tag}" at byte offset {where(begin)}')
                if at(i) not in "'\"":
                    token_start = i
                    while at(i) != "" and at(i).isascii() and (at(i).isalnum() or at(i) in ".-"):
                        i += 1
                    value = src[token_start:i].lower()
                    if not _is_space(at(i)) and at(i) != ">":
                        raise MarkupError(f"Unexpected end of name token at byte offset {where(token_start)}")
                else:
                    quote = at(i)
                    i += 1
                    chars: list[str] = []
                    while at(i) != quote and at(i) != "":
                        ref = _decode_reference(src, i) if at(i) == "&" else None
                        if ref is not None:
                            chars.append(ref[0])
                            i = ref[1]
                        else:
                            chars.append(at(i))
                            i += 1
                    if at(i) == quote:
                        i += 1
                    value = "".join(chars)
                if at(i) == "":
                    raise MarkupError(f"Unclosed start tag at byte offset {where(begin)}")
                if (tag, name) in (("a", "href"), ("tg-emoji", "emoji-id")):
                    argument = value
                elif tag == "code" and name == "class" and value.startswith("language-"):
                    argument = value[len("language-") :]
                elif tag == "span" and name == "class" and value.startswith("tg-"):
                    argument = value[len("tg-") :]
                elif tag == "blockquote" and name == "expandable":
                    argument = "1"
            i += 1  # the '>'
            if tag == "span" and argument != "spoiler":
                raise MarkupError(f'Tag "span" must have class "tg-spoiler" at byte offset {where(begin)}')
            order += 1
            stack.append(_Open(tag, argument, out.u16, where(begin), order, out.chars))
            continue
        # an end tag
        if not stack:
            raise MarkupError(f"Unexpected end tag at byte offset {where(begin)}")
        i += 1
        while not _is_space(at(i)) and at(i) != ">":
            i += 1
        end_name = src[begin + 2 : i].lower()
        while at(i) != "" and _is_space(at(i)):
            i += 1
        if at(i) != ">":
            raise MarkupError(f"Unclosed end tag at byte offset {where(begin)}")
        i += 1
        opened = stack.pop()
        if end_name and end_name != opened.tag:
            raise MarkupError(
                f'Unmatched end tag at byte offset {where(begin)}, expected "</{opened.tag}>", '
                f'found "</{end_name}>"'
            )
        _close_html(opened, out, entities)
    if stack:
        raise MarkupError(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    text = out.text()
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        raise MarkupError(
            "Text contains invalid Unicode characters after decoding HTML entities, check for "
            "unmatched surrogate code units"
        )
    return text, entities.finish()


def _close_html(opened: _Open, out: _Out, entities: _Entities) -> None:
    end = out.u16
    if end <= opened.offset:
        return
    tag, argument = opened.tag, opened.argument
    if tag in _HTML_KINDS:
        entities.add(opened, end, _HTML_KINDS[tag])
    elif tag == "a":
        url = normalize_url(argument if argument else out.text()[opened.start :])
        if url is not None:
            entities.add(opened, end, "text_link", url=url)
    elif tag == "tg-emoji":
        if not (argument.isdigit() and 0 < int(argument) < 2**63):
            raise MarkupError("Invalid custom emoji identifier specified")
        entities.add(opened, end, "custom_emoji", custom_emoji_id=argument)
    elif tag == "blockquote":
        entities.add(opened, end, "expandable_blockquote" if argument else "blockquote")
    elif tag in ("pre", "code"):
        # <pre><code class="language-x">…</code></pre> (either nesting) is one pre entity.
        other = "code" if tag == "pre" else "pre"
        last_order, last = entities.items[-1] if entities.items else (0, None)
        span = (opened.offset, end - opened.offset)
        if last is not None and last["type"] == other and (last["offset"], last["length"]) == span:
            language = argument if tag == "code" else entities.languages.get(last_order, "")
            entities.items.pop()
            entities.add(opened, end, "pre", **({"language": language} if language else {}))
        else:
            entities.add(opened, end, tag)
            if argument:
                entities.languages[opened.order] = argument


# MarkdownV2 -------------------------------------------------------------------------------

_MD2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MD2_KINDS = {
    "Bold": "bold",
    "Italic": "italic",
    "Underline": "underline",
    "Strikethrough": "strikethrough",
    "Spoiler": "spoiler",
    "Code": "code",
    "Pre": "pre",
    "PreCode": "pre",
}


def _reserved(ch: str) -> MarkupError:
    return MarkupError(f"Character '{ch}' is reserved and must be escaped with the preceding '\\'")


def parse_markdown_v2(src: str) -> tuple[str, list[_Json]]:
    """Telegram's MarkdownV2 (tdlib's rules and error texts for the common constructs)."""
    out = _Out()
    entities = _Entities()
    stack: list[_Open] = []
    quote: _Open | None = None
    expandable = False
    order = 0
    n = len(src)

    def at(k: int) -> str:
        return src[k] if k < n else ""

    def where(k: int) -> int:
        return _byte_offset(src, k)

    def close_quote() -> None:
        nonlocal quote, expandable
        assert quote is not None
        if len(stack) > quote.depth:
            inner = stack[-1]
            raise MarkupError(f"Can't find end of {inner.tag} entity at byte offset {inner.byte}")
        entities.add(quote, out.u16, "expandable_blockquote" if expandable else "blockquote")
        quote, expandable = None, False

    i = 0
    while i < n:
        c = src[i]
        in_code = bool(stack) and stack[-1].tag in ("Code", "Pre", "PreCode")
        if (i == 0 or src[i - 1] in "\r\n") and not in_code:
            starts_quote = c == ">" or src.startswith("**>", i)
            if starts_quote:
                if quote is None:
                    order += 1
                    quote = _Open("BlockQuote", "", out.u16, where(i), order, depth=len(stack))
                i += 1 if c == ">" else 3
                continue
            if quote is not None:
                close_quote()
        if c == "\\" and i + 1 < n and 0 < ord(src[i + 1]) <= 126:
            out.add(src[i + 1])
            i += 2
            continue
        if (c != "`") if in_code else (c not in _MD2_RESERVED):
            out.add(c)
            i += 1
            continue
        top = stack[-1] if stack else None
        if (
            quote is not None
            and src.startswith("||", i)
            and (top is None or top.tag != "Spoiler")
            and at(i + 2) in ("", "\n", "\r")
        ):
            expandable = True  # a quote ending in "||" is expandable
            i += 2
            continue
        closes = top is not None and (
            (top.tag == "Bold" and c == "*")
            or (top.tag == "Italic" and c == "_" and at(i + 1) != "_")
            or (top.tag == "Underline" and src.startswith("__", i))
            or (top.tag == "Strikethrough" and c == "~")
            or (top.tag == "Spoiler" and src.startswith("||", i))
            or (top.tag == "Code" and c == "`")
            or (top.tag in ("Pre", "PreCode") and src.startswith("```", i))
            or (top.tag in ("TextUrl", "CustomEmoji") and c == "]")
        )
        if not closes:
            begin = i
            argument = ""
            if c == "_" and at(i + 1) == "_":
                tag, i = "Underline", i + 2
            elif c == "_":
                tag, i = "Italic", i + 1
            elif c == "*":
                tag, i = "Bold", i + 1
            elif c == "~":
                tag, i = "Strikethrough", i + 1
            elif c == "|" and at(i + 1) == "|":
                tag, i = "Spoiler", i + 2
            elif c == "[":
                tag, i = "TextUrl", i + 1
            elif c == "!" and at(i + 1) == "[":
                tag, i = "CustomEmoji", i + 2
            elif src.startswith("```", i):
                tag, i = "Pre", i + 3
                language_end = i
                while not _is_space(at(language_end)) and at(language_end) != "`":
                    language_end += 1
                if language_end > i and at(language_end) not in ("", "`"):
                    tag, argument, i = "PreCode", src[i:language_end], language_end
                if at(i) in ("\n", "\r"):  # one line break after the opening is dropped
                    i += 2 if at(i + 1) in ("\n", "\r") and at(i + 1) != at(i) else 1
            elif c == "`":
                tag, i = "Code", i + 1
            else:
                raise _reserved(c)
            order += 1
            stack.append(_Open(tag, argument, out.u16, where(begin), order, out.chars))
            continue
        assert top is not None
        stack.pop()
        i += {"Underline": 2, "Spoiler": 2, "Pre": 3, "PreCode": 3}.get(top.tag, 1)
        if top.tag in ("TextUrl", "CustomEmoji"):
            url = out.text()[top.start :] if top.tag == "TextUrl" else ""
            if at(i) == "(":
                chars: list[str] = []
                j = i + 1
                while j < n and src[j] != ")":
                    if src[j] == "\\" and j + 1 < n and 0 < ord(src[j + 1]) <= 126:
                        j += 1
                    chars.append(src[j])
                    j += 1
                if j >= n:
                    what = "a URL" if top.tag == "TextUrl" else "a custom emoji URL"
                    raise MarkupError(f"Can't find end of {what} at byte offset {where(i + 1)}")
                url, i = "".join(chars), j + 1
            if top.tag == "CustomEmoji":
                emoji = re.fullmatch(r"tg://emoji\?id=(\d+)", url, re.I)
                if emoji is None:
                    raise MarkupError("Custom emoji entity must contain a tg://emoji URL")
                entities.add(top, out.u16, "custom_emoji", custom_emoji_id=emoji.group(1))
            else:
                link = normalize_url(url)
                if link is not None:
                    entities.add(top, out.u16, "text_link", url=link)
            continue
        extra = {"language": top.argument} if top.tag == "PreCode" else {}
        entities.add(top, out.u16, _MD2_KINDS[top.tag], **extra)
    if quote is not None:
        close_quote()
    if stack:
        raise MarkupError(f"Can't find end of {stack[-1].tag} entity at byte offset {stack[-1].byte}")
    return out.text(), entities.finish()


def parse_markdown(src: str) -> tuple[str, list[_Json]]:
    """Telegram's legacy Markdown: *bold*, _italic_, `code`, ```pre```, [text](url); no nesting."""
    out = _Out()
    entities = _Entities()
    n = len(src)
    i = 0
    order = 0
    while i < n:
        c = src[i]
        if c == "\\" and i + 1 < n and src[i + 1] in "_*`[":
            out.add(src[i + 1])
            i += 2
            continue
        if c not in "_*`[":
            out.add(c)
            i += 1
            continue
        order += 1
        opened = _Open(c, "", out.u16, _byte_offset(src, i), order, out.chars)
        missing = MarkupError(f"Can't find end of the entity starting at byte offset {opened.byte}")
        if src.startswith("```", i):
            end = src.find("```", i + 3)
            if end < 0:
                raise missing
            body = src[i + 3 : end]
            language, newline, rest = body.partition("\n")
            if newline and language and not any(ch.isspace() for ch in language):
                body = rest
            else:
                language = ""
            out.add(body)
            entities.add(opened, out.u16, "pre", **({"language": language} if language else {}))
            i = end + 3
        elif c == "[":
            end = src.find("]", i + 1)
            if end < 0:
                raise missing
            out.add(src[i + 1 : end])
            url = src[i + 1 : end]
            i = end + 1
            if i < n and src[i] == "(":
                close = src.find(")", i + 1)
                if close < 0:
                    raise missing
                url, i = src[i + 1 : close], close + 1
            link = normalize_url(url)
            if link is not None:
                entities.add(opened, out.u16, "text_link", url=link)
        else:
            end = src.find(c, i + 1)
            if end < 0:
                raise missing
            out.add(src[i + 1 : end])
            entities.add(opened, out.u16, {"*": "bold", "_": "italic", "`": "code"}[c])
            i = end + 1
    return out.text(), entities.finish()


def auto_entities(text: str) -> list[_Json]:
    """The bot_command and mention entities Telegram detects in a user's text (UTF-16 units)."""
    found: list[tuple[int, int, str]] = []
    for kind, pattern in (("bot_command", _BOT_COMMAND), ("mention", _MENTION)):
        found.extend((m.start(), m.end(), kind) for m in pattern.finditer(text))
    found.sort()
    return [
        {"type": kind, "offset": utf16_len(text[:start]), "length": utf16_len(text[start:end])}
        for start, end, kind in found
    ]


# --- the emulator ------------------------------------------------------------------------


@dataclass
class Call:
    """One API request as received: ``params`` hold JSON-decoded values; ``error`` the refusal, if any.

    ``at`` is ``time.monotonic()`` on arrival, so tests can check pacing (e.g. retry_after obeyed).
    """

    method: str
    params: dict[str, Any]
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class BotMessage:
    """A message the bot sent, in its current state; ``history`` lists every text, the current last."""

    message_id: int
    chat_id: int
    thread_id: int | None
    text: str
    html: str | None
    entities: list[_Json]
    parse_mode: str | None
    reply_to_message_id: int | None
    edits: int = 0
    history: list[str] = field(default_factory=list)
    raw: str = ""
    reply_markup: _Json | None = None
    deleted: bool = False


@dataclass
class WebhookDelivery:
    """One POST of an update to the webhook: the HTTP status it got (0: no answer)."""

    update_id: int
    status: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    error_code: int
    description: str
    parameters: _Json
    remaining: int


class ApiError(Exception):
    """An answer ``{"ok": false, ...}`` with Telegram's code, description and parameters."""

    def __init__(self, error_code: int, description: str, parameters: _Json | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters or {}


class FloodWait(ApiError):
    """Telegram's 429 for a write that found a flood-limit bucket empty; ``limit`` says
    which: ``"chat"`` or ``"global"``."""

    def __init__(self, retry_after: int, limit: str) -> None:
        super().__init__(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
        self.limit = limit


@dataclass(frozen=True)
class FloodLimits:
    """Telegram's flood limits on message writes (see ``TelegramEmulator``): a private
    chat ``private_per_second`` with bursts of ``private_burst``; a group
    ``group_per_minute`` a minute (the burst the same); the bot ``global_per_second``
    over all chats (the burst the same)."""

    private_per_second: float = 1.0
    private_burst: float = 3.0
    group_per_minute: float = 20.0
    global_per_second: float = 30.0


#: the methods the flood limits count: those that write a message
FLOOD_LIMITED = ("sendmessage", "editmessagetext")


def _bad(description: str, parameters: _Json | None = None) -> ApiError:
    return ApiError(400, f"Bad Request: {description}", parameters)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: Any) -> float:
    try:
        return max(float(value or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


def _decode_field(name: str, value: str) -> Any:
    """A form field as Telegram reads it: strings raw, everything else JSON text."""
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


_Handler = Callable[[dict[str, Any]], Coroutine[Any, Any, Any]]


class TelegramEmulator:
    """A Bot API server on 127.0.0.1 holding one bot, its chats, and an update queue.

    Tests create people and chats (``private_chat``, ``group``), make people speak
    (``send_user_message``), and observe what the bot did (``calls``, ``messages_in``).
    In groups the bot has privacy mode unless ``can_read_all_group_messages`` is set (or
    it is an admin there): then it only gets commands for it, mentions of it, replies to
    its messages and service messages, as Telegram does; other user messages are stored
    (so they can be replied to) but never delivered. As in Telegram, a group keeps the
    privacy mode the bot had when it joined (``group``): changing the setting reaches a
    group only once the bot is re-added (``readd_bot``), while getMe reports it at once.

    With ``flood_limits`` it enforces Telegram's flood limits on the methods that write
    a message (``sendMessage``, ``editMessageText``), per the Bot FAQ ("My bot is hitting
    limits, how do I avoid this?", core.telegram.org/bots/faq): in one chat about one
    message a second, with short bursts allowed; at most 20 messages a minute to one
    group; about 30 messages a second over all chats. Each is a token bucket
    (``FloodLimits``). A write that finds a bucket empty is refused, after a queued
    ``fail_next`` fault and before anything else is checked, with Telegram's answer: 429,
    ``"Too Many Requests: retry after N"`` and ``"parameters": {"retry_after": N}``, N
    the whole seconds until that bucket has a token again (at least 1); a refusal takes
    no token. ``flood_refusals`` counts the refusals by the limit hit (``"chat"``,
    ``"global"``). Telegram does not publish whether edits count; real bots get 429s on
    edits, so they count here as sends do. Without ``flood_limits`` (the default) no
    limit is enforced. ``clock`` (``time.monotonic`` by default) times the buckets and
    ``Call.at``, so a test can move time by hand.
    """

    def __init__(
        self,
        *,
        token: str = "123456:TEST-TOKEN",
        bot_id: int = 1000,
        bot_username: str = "HeraldBot",
        can_read_all_group_messages: bool = False,
        bot_first_name: str = "Herald",
        strict_html: bool = True,
        flood_limits: FloodLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.flood_limits = flood_limits
        self._clock = clock
        #: writes refused by the flood limits, by the limit hit ("chat", "global")
        self.flood_refusals: Counter[str] = Counter()
        self._chat_buckets: dict[int, TokenBucket] = {}
        self._global_bucket: TokenBucket | None = None
        self.bot_id = bot_id
        self.bot_username = bot_username
        self.can_read_all_group_messages = can_read_all_group_messages
        self.strict_html = strict_html
        self.bot_user: _Json = {
            "id": bot_id,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }
        self.url = ""
        self.calls: list[Call] = []
        self.webhook: _Json | None = None
        self.commands_by_scope: dict[tuple[str, str], list[_Json]] = {}
        self.deliveries: list[int] = []  # update_ids in the order getUpdates returned them
        #: update_ids confirmed by a getUpdates offset, in the order they were
        self.confirmed: list[int] = []
        #: awaited with the update_ids a getUpdates offset is about to confirm (to check
        #: what the bot did with them by then)
        self.on_confirm: Callable[[list[int]], Awaitable[None]] | None = None
        self.webhook_deliveries: list[WebhookDelivery] = []
        self._webhook_targets: list[str] = []
        self._webhook_retry = 0.2
        self._webhook_error: tuple[int, str] | None = None  # (date, message) of the last failure
        self._webhook_wake = asyncio.Event()
        self._webhook_task: asyncio.Task[None] | None = None
        self.callback_answers: dict[str, _Json] = {}
        self._users: dict[int, _Json] = {bot_id: self.bot_user}
        self._chats: dict[int, _Json] = {}
        self._admins: dict[int, set[int]] = {}
        self._joined_reading_all: dict[int, bool] = {}  # group -> privacy off when the bot joined
        self._messages: dict[int, dict[int, _Json]] = {}  # chat -> message_id -> wire Message
        self._bot_messages: dict[tuple[int, int], BotMessage] = {}
        self._deleted: set[tuple[int, int]] = set()
        self._next_message_id: dict[int, int] = {}
        self._queue: list[_Json] = []
        self._next_update_id = 10_001
        self._allowed_updates: frozenset[str] | None = None
        self._migrated: dict[int, int] = {}
        self._blocked: set[int] = set()
        self._kicked: set[int] = set()
        self._faults: dict[str, list[_Fault]] = {}
        self._conflict = False
        self._poll: asyncio.Future[str] | None = None
        self._stopping = False
        self._next_query_id = 1
        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, tuple[str, _Handler]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "sendMessage": self._send_message,
                "editMessageText": self._edit_message_text,
                "editMessageReplyMarkup": self._edit_reply_markup,
                "deleteMessage": self._delete_message,
                "deleteMessages": self._delete_messages,
                "sendChatAction": self._send_chat_action,
                "setMyCommands": self._set_my_commands,
                "deleteMyCommands": self._delete_my_commands,
                "getMyCommands": self._get_my_commands,
                "answerCallbackQuery": self._answer_callback_query,
                "getChat": self._get_chat,
                "getChatMember": self._get_chat_member,
                "getChatAdministrators": self._get_chat_administrators,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "close": self._true,
                "logOut": self._true,
                "setMyDescription": self._true,
                "setMyShortDescription": self._true,
                "setMyName": self._true,
                "setChatMenuButton": self._true,
            }.items()
        }
        if flood_limits is not None:
            for name in FLOOD_LIMITED:
                method, handler = self._handlers[name]
                self._handlers[name] = (method, self._flood_limited(handler))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, port: int = 0) -> str:
        """Bind 127.0.0.1 (a free port unless one is given) and return the base URL."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_route("*", "/file/bot{token}/{path:.*}", self._file)
        # handler_cancellation: a client that hangs up ends its held getUpdates.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._stopping = False
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._webhook_task = asyncio.create_task(self._deliver_forever(), name="telegram-webhook")
        return self.url

    async def stop(self) -> None:
        """Answer a held getUpdates at once (empty), then close the listener."""
        self._stopping = True
        self._wake("stopped")
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            await asyncio.gather(self._webhook_task, return_exceptions=True)
            self._webhook_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TelegramEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- people and chats -----------------------------------------------------------------

    def user(self, user_id: int, first_name: str = "Ada", username: str | None = None) -> _Json:
        """A User object, remembered for getChatMember and text mentions (first call wins)."""
        if user_id not in self._users:
            person: _Json = {"id": user_id, "is_bot": False, "first_name": first_name}
            if username:
                person["username"] = username
            self._users[user_id] = person
        return dict(self._users[user_id])

    def private_chat(self, user_id: int, first_name: str = "Ada", username: str | None = None) -> _Json:
        """The private Chat between the bot and this (remembered) user."""
        person = self.user(user_id, first_name, username)
        chat: _Json = {"id": user_id, "type": "private", "first_name": person["first_name"]}
        if "username" in person:
            chat["username"] = person["username"]
        self._chats[user_id] = chat
        return dict(chat)

    def group(
        self, chat_id: int, title: str = "Group", *, supergroup: bool = False, forum: bool = False
    ) -> _Json:
        """A group the bot is in; ``forum`` implies a supergroup with topics."""
        chat: _Json = {
            "id": chat_id,
            "type": "supergroup" if supergroup or forum else "group",
            "title": title,
        }
        if forum:
            chat["is_forum"] = True
        self._chats[chat_id] = chat
        self._admins.setdefault(chat_id, set())
        self._joined_reading_all.setdefault(chat_id, self.can_read_all_group_messages)
        return dict(chat)

    def readd_bot(self, chat_id: int) -> None:
        """The bot is removed from a group and added back: a plain member again, joined
        with the privacy mode it has now (how a privacy change reaches a group)."""
        self._kicked.discard(chat_id)
        self._admins.setdefault(chat_id, set()).discard(self.bot_id)
        self._joined_reading_all[chat_id] = self.can_read_all_group_messages

    def set_admin(self, chat_id: int, user_id: int, admin: bool = True) -> None:
        """Make a user (or the bot, ``user_id=bot_id``) an administrator of a group."""
        admins = self._admins.setdefault(chat_id, set())
        if admin:
            admins.add(user_id)
        else:
            admins.discard(user_id)

    def age_message(self, chat_id: int, message_id: int, seconds: float) -> None:
        """Make a stored message (anyone's) ``seconds`` older, for Telegram's time limits."""
        message = self._messages[chat_id][message_id]
        message["date"] = int(message["date"] - seconds)

    def block_by(self, chat_id: int) -> None:
        """The user blocks the bot: later calls for that chat answer 403."""
        self._blocked.add(chat_id)

    def kick_from(self, chat_id: int) -> None:
        """The bot is removed from a group: later calls for that chat answer 403."""
        self._kicked.add(chat_id)

    # -- incoming traffic -----------------------------------------------------------------

    def push_update(self, update: _Json) -> int:
        """Queue a raw Update for getUpdates (``update_id`` assigned if missing); return its id."""
        update = copy.deepcopy(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        self._queue.append(update)
        self._queue.sort(key=lambda u: int(u["update_id"]))
        self._wake("update")
        self._webhook_wake.set()
        return int(update["update_id"])

    def send_user_message(
        self,
        chat: _Json,
        user: _Json,
        text: str,
        *,
        entities: list[_Json] | None = None,
        reply_to_message_id: int | None = None,
        message_thread_id: int | None = None,
    ) -> int:
        """A person writes ``text`` in ``chat``; queue the update (privacy mode permitting).

        Without ``entities`` the bot_command and mention entities are computed as Telegram
        does. A reply carries the full replied-to message; in a forum a reply inherits the
        topic of the message it answers.
        """
        message, target = self._user_message(
            chat, user, text, entities, reply_to_message_id, message_thread_id
        )
        if self._visible_to_bot(message, target):
            self.push_update({"message": message})
        return int(message["message_id"])

    def edit_user_message(self, chat: _Json, message_id: int, text: str) -> None:
        """The author edits a message: an `edited_message` update with the whole message
        as it now is (its original `date`, an `edit_date`), where the bot saw it."""
        chat_id = int(chat["id"])
        stored = self._messages.get(chat_id, {}).get(message_id)
        if stored is None or "from" not in stored:
            raise ValueError(f"no message {message_id} in chat {chat_id} to edit")
        stored["text"] = text
        stored["edit_date"] = max(int(time.time()), int(stored["date"]))
        stored.pop("entities", None)
        found = auto_entities(text)
        if found:
            stored["entities"] = found
        replied = stored.get("reply_to_message")
        if self._visible_to_bot(stored, replied):
            self.push_update({"edited_message": copy.deepcopy(stored)})

    def make_update(
        self,
        chat: _Json,
        user: _Json,
        text: str,
        *,
        entities: list[_Json] | None = None,
        reply_to_message_id: int | None = None,
        message_thread_id: int | None = None,
    ) -> _Json:
        """The Update Telegram would POST to a webhook for this message: stored, never queued."""
        message, _ = self._user_message(chat, user, text, entities, reply_to_message_id, message_thread_id)
        update_id = self._next_update_id
        self._next_update_id += 1
        return {"update_id": update_id, "message": copy.deepcopy(message)}

    def _user_message(
        self,
        chat: _Json,
        user: _Json,
        text: str,
        entities: list[_Json] | None,
        reply_to_message_id: int | None,
        message_thread_id: int | None,
    ) -> tuple[_Json, _Json | None]:
        chat_id = int(chat["id"])
        known = self._chats.setdefault(chat_id, dict(chat))
        self._users.setdefault(int(user["id"]), dict(user))
        message: _Json = {
            "message_id": self._new_message_id(chat_id),
            "from": dict(user),
            "chat": dict(known),
            "date": int(time.time()),
            "text": text,
        }
        found = auto_entities(text) if entities is None else entities
        if found:
            message["entities"] = found
        target = None
        if reply_to_message_id is not None:
            target = self._messages.get(chat_id, {}).get(reply_to_message_id)
            if target is None:
                raise ValueError(f"no message {reply_to_message_id} in chat {chat_id} to reply to")
            message["reply_to_message"] = self._quoted(target)
            if message_thread_id is None:
                message_thread_id = target.get("message_thread_id")
        self._place_in_thread(message, known, message_thread_id)
        self._store(message)
        return message, target

    def send_callback_query(self, chat: _Json, user: _Json, message_id: int, data: str) -> str:
        """A person presses an inline button under a bot message; return the query id."""
        chat_id = int(chat["id"])
        target = self._messages.get(chat_id, {}).get(message_id)
        if target is None:
            raise ValueError(f"no message {message_id} in chat {chat_id}")
        query_id = str(self._next_query_id)
        self._next_query_id += 1
        self.callback_answers[query_id] = {"answered": False}
        self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": dict(user),
                    "message": self._public(target),
                    "chat_instance": str(chat_id),
                    "data": data,
                }
            }
        )
        return query_id

    def migrate_group(self, chat_id: int, new_chat_id: int, *, by: _Json | None = None) -> None:
        """Upgrade a group to a supergroup: queue both service messages; the old id now refuses."""
        old = self._chats[chat_id]
        new: _Json = {"id": new_chat_id, "type": "supergroup", "title": old.get("title", "Group")}
        self._chats[new_chat_id] = new
        self._admins[new_chat_id] = set(self._admins.get(chat_id, set()))
        if chat_id in self._joined_reading_all:
            self._joined_reading_all[new_chat_id] = self._joined_reading_all[chat_id]
        self._migrated[chat_id] = new_chat_id
        admins = sorted(self._admins.get(chat_id, set()) - {self.bot_id})
        actor = by or (self._users.get(admins[0]) if admins else None) or self.user(1, "Owner")
        now = int(time.time())
        to_message: _Json = {
            "message_id": self._new_message_id(chat_id),
            "from": dict(actor),
            "chat": dict(old),
            "date": now,
            "migrate_to_chat_id": new_chat_id,
        }
        from_message: _Json = {
            "message_id": self._new_message_id(new_chat_id),
            "from": dict(GROUP_ANONYMOUS_BOT),
            "sender_chat": dict(new),
            "chat": dict(new),
            "date": now,
            "migrate_from_chat_id": chat_id,
        }
        for message in (to_message, from_message):
            self._store(message)
            self.push_update({"message": message})

    # -- observation ----------------------------------------------------------------------

    @property
    def my_commands(self) -> list[_Json]:
        """Commands for the default scope and all languages, as setMyCommands left them."""
        return list(self.commands_by_scope.get((_scope_key(None), ""), []))

    @property
    def pending_updates(self) -> list[_Json]:
        """Updates not yet confirmed with getUpdates' offset."""
        return copy.deepcopy(self._queue)

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method (Telegram's method names are case-insensitive)."""
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def messages_in(self, chat_id: int, thread_id: int | None = None) -> list[BotMessage]:
        """Messages the bot sent to a chat (optionally one topic), not deleted, oldest first."""
        found = [
            m
            for (chat, _), m in self._bot_messages.items()
            if chat == chat_id and not m.deleted and (thread_id is None or m.thread_id == thread_id)
        ]
        return sorted(found, key=lambda m: m.message_id)

    def message(self, chat_id: int, message_id: int) -> _Json | None:
        """The stored wire Message (anyone's), or None."""
        found = self._messages.get(chat_id, {}).get(message_id)
        return copy.deepcopy(found) if found is not None else None

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the predicate, not for I/O
    ) -> None:
        """Poll every 10 ms until ``predicate()`` is true; fail with the recent calls if it never is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                recent = ", ".join(f"{c.method}{'!' + c.error if c.error else ''}" for c in self.calls[-10:])
                sent = sorted(
                    (m for m in self._bot_messages.values() if not m.deleted), key=lambda m: m.message_id
                )
                texts = "; ".join(f"{m.chat_id}/{m.message_id}: {m.text[:60]!r}" for m in sent[-3:])
                refused = "; ".join(f"{c.method}: {c.error}" for c in self.calls if c.error)
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise AssertionError(
                    f"{name} still false after {timeout}s; last calls: [{recent}]; "
                    f"last bot messages: [{texts}]; refused: [{refused[-500:]}]"
                )
            await asyncio.sleep(0.01)

    # -- faults ---------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        times: int = 1,
    ) -> None:
        """Refuse the next ``times`` calls of ``method`` with this error (before any other check)."""
        parameters: _Json = {}
        if retry_after is not None:
            parameters["retry_after"] = retry_after
        if migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = migrate_to_chat_id
        if times > 0:
            self._faults.setdefault(method.lower(), []).append(
                _Fault(error_code, description, parameters, times)
            )

    def deliver_webhooks(self, *targets: str, retry_after: float = 0.2) -> None:
        """Deliver updates to the webhook while one is set, as Telegram does: POST each
        (in order, one at a time) to the webhook URL's path on these local stand-ins for
        its host (``http://127.0.0.1:PORT``; taken in turn, as behind a load balancer),
        with the secret token header; an update stays pending until a 2xx answer, tried
        again every ``retry_after`` seconds. No targets: deliveries stop."""
        self._webhook_targets = [t.rstrip("/") for t in targets]
        self._webhook_retry = retry_after
        self._webhook_wake.set()

    def conflict(self, active: bool = True) -> None:
        """Act as if another instance polls: getUpdates answers 409 (a held one at once)."""
        self._conflict = active
        if active:
            self._wake("conflict")

    # -- HTTP -----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not _TOKEN_SHAPE.fullmatch(token):
            return _error_response(ApiError(404, "Not Found"))
        if token != self.token:
            return _error_response(ApiError(401, "Unauthorized"))
        requested = request.match_info["method"]
        name, handler = self._handlers.get(requested.lower(), (requested, None))
        try:
            params = await self._read_params(request)
        except ApiError as err:
            self.calls.append(Call(name, {}, err.description, at=self._clock()))
            return _error_response(err)
        call = Call(name, params, at=self._clock())
        self.calls.append(call)
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            self._raise_fault(name)
            result = await handler(params)
        except ApiError as err:
            call.error = err.description
            return _error_response(err)
        return web.json_response({"ok": True, "result": result})

    def _flood_limited(self, handler: _Handler) -> _Handler:
        async def limited(p: dict[str, Any]) -> Any:
            self._take_flood_token(p.get("chat_id"))
            return await handler(p)

        return limited

    def _take_flood_token(self, chat_id: Any) -> None:
        """Take a token from the chat's bucket and the bot's, or raise ``FloodWait``
        (taking none) when either is empty. An unknown chat is left to the method."""
        assert self.flood_limits is not None
        limits = self.flood_limits
        number = _as_int(chat_id)
        chat = self._chats.get(number) if number is not None else None
        if number is None or chat is None:
            return
        now = self._clock()
        bucket = self._chat_buckets.get(number)
        if bucket is None:
            if chat.get("type") == "private":
                rate, burst = limits.private_per_second, limits.private_burst
            else:
                rate, burst = limits.group_per_minute / 60.0, limits.group_per_minute
            bucket = self._chat_buckets[number] = TokenBucket.full(rate, burst, now)
        if self._global_bucket is None:
            rate = limits.global_per_second
            self._global_bucket = TokenBucket.full(rate, rate, now)
        # Look at both before taking from either: a refusal costs no token.
        wait_chat = bucket.wait(now)
        wait_global = self._global_bucket.wait(now)
        if wait_chat > 0 or wait_global > 0:
            wait, limit = (wait_chat, "chat") if wait_chat >= wait_global else (wait_global, "global")
            self.flood_refusals[limit] += 1
            # whole seconds, rounded up past float noise (1.0000000000000002 s is 1 s)
            raise FloodWait(max(1, math.ceil(wait - 1e-9)), limit)
        bucket.take(now)
        self._global_bucket.take(now)

    async def _file(self, request: web.Request) -> web.Response:
        return _error_response(ApiError(404, "Not Found"))

    @staticmethod
    async def _read_params(request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: _decode_field(k, v) for k, v in request.query.items()}
        if not request.body_exists:
            return params
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                raise _bad("can't parse JSON object") from None
            if not isinstance(body, dict):
                raise _bad("JSON object expected")
            params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    params[key] = {"file_name": value.filename, "size": len(value.file.read())}
                else:
                    text = value if isinstance(value, str) else bytes(value).decode()
                    params[key] = _decode_field(key, text)
        return params

    def _raise_fault(self, method: str) -> None:
        pending = self._faults.get(method.lower())
        if not pending:
            return
        fault = pending[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            pending.pop(0)
        raise ApiError(fault.error_code, fault.description, fault.parameters)

    # -- updates --------------------------------------------------------------------------

    def _wake(self, reason: str) -> None:
        if self._poll is not None and not self._poll.done():
            self._poll.set_result(reason)

    async def _confirm(self, offset: int) -> None:
        """An offset confirms every update below it; a negative one all but the last -offset."""
        if offset > 0:
            kept = [u for u in self._queue if int(u["update_id"]) >= offset]
        elif offset < 0:
            kept = self._queue[offset:]
        else:
            return
        staying = {int(u["update_id"]) for u in kept}
        confirmed = [int(u["update_id"]) for u in self._queue if int(u["update_id"]) not in staying]
        if confirmed and self.on_confirm is not None:
            await self.on_confirm(confirmed)
        self._queue = [u for u in self._queue if int(u["update_id"]) in staying]
        self.confirmed.extend(confirmed)

    async def _deliver_forever(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            while True:
                await self._webhook_wake.wait()
                self._webhook_wake.clear()
                while self.webhook is not None and self._webhook_targets:
                    pending = self._deliverable(1)
                    if not pending:
                        break
                    if not await self._deliver(http, pending[0]):
                        self._webhook_targets.append(self._webhook_targets.pop(0))  # the next one
                        await asyncio.sleep(self._webhook_retry)

    async def _deliver(self, http: aiohttp.ClientSession, update: _Json) -> bool:
        """POST one update to the webhook; True (and confirmed) on a 2xx answer."""
        assert self.webhook is not None
        hook = urlsplit(str(self.webhook["url"]))
        url = self._webhook_targets[0] + (hook.path or "/") + (f"?{hook.query}" if hook.query else "")
        headers = {"Content-Type": "application/json"}
        if self.webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = str(self.webhook["secret_token"])
        update_id = int(update["update_id"])
        try:
            async with http.post(url, data=json.dumps(update), headers=headers) as response:
                status, reason = response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, reason = 0, f"Connection failed: {exc.__class__.__name__}"
        self.webhook_deliveries.append(WebhookDelivery(update_id, status, at=self._clock()))
        if 200 <= status < 300:
            self._queue = [u for u in self._queue if int(u["update_id"]) != update_id]
            self.confirmed.append(update_id)
            return True
        message = f"Wrong response from the webhook: {status} {reason}" if status else reason
        self._webhook_error = (int(time.time()), message)
        return False

    def _deliverable(self, limit: int) -> list[_Json]:
        allowed = self._allowed_updates
        # Telegram does not keep updates of types the bot did not ask for.
        self._queue = [u for u in self._queue if _update_allowed(u, allowed)]
        return copy.deepcopy(self._queue[:limit])

    async def _get_updates(self, p: dict[str, Any]) -> list[_Json]:
        if self.webhook is not None:
            raise ApiError(409, CONFLICT_WEBHOOK)
        if self._conflict:
            raise ApiError(409, CONFLICT_POLLING)
        offset = _as_int(p.get("offset")) or 0
        limit = min(max(_as_int(p.get("limit")) or 100, 1), 100)
        timeout = _as_float(p.get("timeout"))
        allowed = p.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(str(a) for a in allowed) or None
        self._wake("terminated")  # a newer getUpdates ends the one being held
        await self._confirm(offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            batch = self._deliverable(limit)
            remaining = deadline - loop.time()
            if batch or remaining <= 0 or self._stopping:
                break
            waiter: asyncio.Future[str] = loop.create_future()
            self._poll = waiter
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                if self._poll is waiter:
                    self._poll = None
            reason = waiter.result() if waiter.done() else "timeout"
            if reason == "webhook":
                raise ApiError(409, CONFLICT_WEBHOOK)
            if reason in ("terminated", "conflict"):
                raise ApiError(409, CONFLICT_POLLING)
        self.deliveries.extend(int(u["update_id"]) for u in batch)
        return batch

    def _visible_to_bot(self, message: _Json, replied: _Json | None) -> bool:
        """Privacy mode: in groups, only what is addressed to the bot reaches it."""
        chat = message["chat"]
        if chat["type"] == "private":
            return True
        chat_id = int(chat["id"])
        if self._joined_reading_all.get(chat_id, self.can_read_all_group_messages):
            return True
        if self.bot_id in self._admins.get(chat_id, set()):
            return True
        if replied is not None and replied.get("from", {}).get("id") == self.bot_id:
            return True
        text = str(message.get("text", ""))
        for entity in message.get("entities", []):
            start = entity["offset"]
            piece = text.encode("utf-16-le", "surrogatepass")[2 * start : 2 * (start + entity["length"])]
            word = piece.decode("utf-16-le", "surrogatepass")
            if entity["type"] == "mention" and word[1:].lower() == self.bot_username.lower():
                return True
            if entity["type"] == "bot_command":
                addressee = word.partition("@")[2]
                if not addressee or addressee.lower() == self.bot_username.lower():
                    return True
        return False

    # -- chats and messages ---------------------------------------------------------------

    def _new_message_id(self, chat_id: int) -> int:
        next_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = next_id + 1
        return next_id

    def _store(self, message: _Json) -> None:
        self._messages.setdefault(int(message["chat"]["id"]), {})[int(message["message_id"])] = message

    @staticmethod
    def _quoted(message: _Json) -> _Json:
        quoted = copy.deepcopy(message)
        quoted.pop("reply_to_message", None)  # Telegram nests replies one level only
        return quoted

    @staticmethod
    def _place_in_thread(message: _Json, chat: _Json, thread_id: int | None) -> None:
        if thread_id is None:
            return
        message["message_thread_id"] = thread_id
        if chat.get("is_forum"):
            message["is_topic_message"] = True

    def _chat(self, chat_id: Any) -> _Json:
        number = _as_int(chat_id)
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if number is None or number not in self._chats:
            raise _bad("chat not found")
        return self._chats[number]

    def _writable_chat(self, chat_id: Any) -> _Json:
        """The chat, or the error Telegram gives for a chat the bot can't act in."""
        chat = self._chat(chat_id)
        number = int(chat["id"])
        if number in self._migrated:
            raise _bad(
                "group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self._migrated[number]},
            )
        if number in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        if number in self._kicked:
            kind = "supergroup chat" if chat["type"] == "supergroup" else "group chat"
            raise ApiError(403, f"Forbidden: bot was kicked from the {kind}")
        return chat

    def _format(self, text: Any, parse_mode: Any, entities: Any) -> tuple[str, list[_Json]]:
        """Text and entities after parse_mode, which wins over explicit entities (as in the Bot API)."""
        if isinstance(text, int | float) and not isinstance(text, bool):
            text = str(text)  # a JSON body may carry a number; Telegram reads it as text
        if not isinstance(text, str) or text == "":
            raise _bad("message text is empty")
        mode = str(parse_mode or "").lower()
        try:
            if mode == "html":
                return parse_html(text, strict=self.strict_html)
            if mode == "markdownv2":
                return parse_markdown_v2(text)
            if mode == "markdown":
                return parse_markdown(text)
        except MarkupError as err:
            raise _bad(f"can't parse entities: {err}") from None
        if mode not in ("", "none"):
            raise _bad("unsupported parse_mode")
        if entities is None:
            return text, []
        if not isinstance(entities, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str) for e in entities
        ):
            raise _bad("can't parse entities JSON object")
        cleaned = []
        for entity in entities:
            offset, length = _as_int(entity.get("offset")), _as_int(entity.get("length"))
            if offset is None or length is None or offset < 0 or length <= 0:
                continue
            cleaned.append({**entity, "offset": offset, "length": length})
        return text, sorted(cleaned, key=lambda e: (e["offset"], -e["length"]))

    def _resolve_mentions(self, entities: list[_Json]) -> list[_Json]:
        """Links to tg://user?id=N are text mentions of that user."""
        resolved = []
        for entity in entities:
            match = _TG_USER.fullmatch(entity.get("url", "")) if entity["type"] == "text_link" else None
            if match is not None:
                user_id = int(match.group(1))
                person = self._users.get(user_id, {"id": user_id, "is_bot": False, "first_name": ""})
                entity = {key: entity[key] for key in ("offset", "length")}
                entity.update(type="text_mention", user=person)
            resolved.append(entity)
        return resolved

    def _reply_target(self, chat_id: int, p: dict[str, Any]) -> _Json | None:
        params = p.get("reply_parameters")
        if not isinstance(params, dict):
            if p.get("reply_to_message_id") is None:
                return None
            params = {
                "message_id": p.get("reply_to_message_id"),
                "allow_sending_without_reply": p.get("allow_sending_without_reply"),
            }
        target_chat = _as_int(params.get("chat_id")) if params.get("chat_id") is not None else chat_id
        message_id = _as_int(params.get("message_id"))
        target = self._messages.get(target_chat or chat_id, {}).get(message_id or 0)
        if target is not None and (target_chat or chat_id, message_id) in self._deleted:
            target = None
        if target is None and not params.get("allow_sending_without_reply"):
            raise _bad("message to be replied not found")
        return target

    @staticmethod
    def _public(message: _Json) -> _Json:
        return copy.deepcopy(message)

    # -- methods --------------------------------------------------------------------------

    async def _true(self, p: dict[str, Any]) -> bool:
        return True

    async def _get_me(self, p: dict[str, Any]) -> _Json:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": self.can_read_all_group_messages,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _send_message(self, p: dict[str, Any]) -> _Json:
        text, entities = self._format(p.get("text"), p.get("parse_mode"), p.get("entities"))
        chat = self._writable_chat(p.get("chat_id"))
        chat_id = int(chat["id"])
        if not text.strip():
            raise _bad("message text is empty")
        if utf16_len(text) > MAX_TEXT_UTF16:
            raise _bad("message is too long")
        target = self._reply_target(chat_id, p)
        thread_id = _as_int(p.get("message_thread_id"))
        if thread_id is None and target is not None and target.get("chat", {}).get("id") == chat_id:
            thread_id = target.get("message_thread_id")
        entities = self._resolve_mentions(entities)
        message: _Json = {
            "message_id": self._new_message_id(chat_id),
            "from": dict(self.bot_user),
            "chat": dict(chat),
            "date": int(time.time()),
            "text": text,
        }
        if entities:
            message["entities"] = entities
        self._place_in_thread(message, chat, thread_id)
        if target is not None:
            message["reply_to_message"] = self._public(self._quoted(target))
        if isinstance(p.get("link_preview_options"), dict):
            message["link_preview_options"] = p["link_preview_options"]
        if isinstance(p.get("reply_markup"), dict) and "inline_keyboard" in p["reply_markup"]:
            message["reply_markup"] = p["reply_markup"]
        self._store(message)
        raw = str(p.get("text"))
        parse_mode = str(p["parse_mode"]) if p.get("parse_mode") else None
        self._bot_messages[(chat_id, message["message_id"])] = BotMessage(
            message_id=message["message_id"],
            chat_id=chat_id,
            thread_id=thread_id,
            text=text,
            html=raw if (parse_mode or "").lower() == "html" else None,
            entities=entities,
            parse_mode=parse_mode,
            reply_to_message_id=int(target["message_id"]) if target is not None else None,
            history=[text],
            raw=raw,
            reply_markup=message.get("reply_markup"),
        )
        return self._public(message)

    def _editable(self, p: dict[str, Any]) -> tuple[_Json, BotMessage]:
        chat = self._writable_chat(p.get("chat_id"))
        message_id = _as_int(p.get("message_id"))
        if message_id is None:
            raise _bad("message identifier is not specified")
        stored = self._bot_messages.get((int(chat["id"]), message_id))
        wire = self._messages.get(int(chat["id"]), {}).get(message_id)
        if wire is not None and stored is None:
            raise _bad("message can't be edited")
        if stored is None or wire is None or stored.deleted:
            raise _bad("message to edit not found")
        return wire, stored

    async def _edit_message_text(self, p: dict[str, Any]) -> _Json | bool:
        text, entities = self._format(p.get("text"), p.get("parse_mode"), p.get("entities"))
        if p.get("inline_message_id"):
            return True
        wire, stored = self._editable(p)
        if not text.strip():
            raise _bad("message text is empty")
        if utf16_len(text) > MAX_TEXT_UTF16:
            raise _bad("MESSAGE_TOO_LONG")
        entities = self._resolve_mentions(entities)
        markup = p.get("reply_markup") if isinstance(p.get("reply_markup"), dict) else None
        if text == stored.text and entities == stored.entities and markup == stored.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        wire["text"] = text
        wire.pop("entities", None)
        if entities:
            wire["entities"] = entities
        wire.pop("reply_markup", None)
        if markup is not None:
            wire["reply_markup"] = markup
        wire["edit_date"] = int(time.time())
        raw = str(p.get("text"))
        parse_mode = str(p["parse_mode"]) if p.get("parse_mode") else None
        stored.text, stored.entities, stored.raw, stored.parse_mode = text, entities, raw, parse_mode
        stored.html = raw if (parse_mode or "").lower() == "html" else None
        stored.reply_markup = markup
        stored.edits += 1
        stored.history.append(text)
        return self._public(wire)

    async def _edit_reply_markup(self, p: dict[str, Any]) -> _Json | bool:
        if p.get("inline_message_id"):
            return True
        wire, stored = self._editable(p)
        markup = p.get("reply_markup") if isinstance(p.get("reply_markup"), dict) else None
        if markup == stored.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        wire.pop("reply_markup", None)
        if markup is not None:
            wire["reply_markup"] = markup
        wire["edit_date"] = int(time.time())
        stored.reply_markup = markup
        return self._public(wire)

    def _delete(self, chat: _Json, message_id: int | None) -> None:
        chat_id = int(chat["id"])
        wire = self._messages.get(chat_id, {}).get(message_id or 0)
        if wire is None or (chat_id, message_id) in self._deleted:
            raise _bad("message to delete not found")
        own = wire.get("from", {}).get("id") == self.bot_id
        if not own and chat["type"] != "private" and self.bot_id not in self._admins.get(chat_id, set()):
            raise _bad("message can't be deleted")
        if time.time() - int(wire.get("date", 0)) >= DELETE_WINDOW or any(k in wire for k in _UNDELETABLE):
            raise _bad("message can't be deleted")
        self._deleted.add((chat_id, message_id or 0))
        stored = self._bot_messages.get((chat_id, message_id or 0))
        if stored is not None:
            stored.deleted = True

    async def _delete_message(self, p: dict[str, Any]) -> bool:
        self._delete(self._writable_chat(p.get("chat_id")), _as_int(p.get("message_id")))
        return True

    async def _delete_messages(self, p: dict[str, Any]) -> bool:
        chat = self._writable_chat(p.get("chat_id"))
        for message_id in p.get("message_ids") or []:
            with contextlib.suppress(ApiError):  # deleteMessages skips what it can't delete
                self._delete(chat, _as_int(message_id))
        return True

    async def _send_chat_action(self, p: dict[str, Any]) -> bool:
        self._writable_chat(p.get("chat_id"))
        if p.get("action") not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    async def _set_my_commands(self, p: dict[str, Any]) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("commands must be a non-empty list of at most 100 commands")
        cleaned = []
        for command in commands:
            name = command.get("command") if isinstance(command, dict) else None
            description = command.get("description") if isinstance(command, dict) else None
            if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name.lower()):
                raise _bad("BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description) <= 256:
                raise _bad("command description must be non-empty")
            cleaned.append({"command": name.lower(), "description": description})
        self.commands_by_scope[(_scope_key(p.get("scope")), str(p.get("language_code") or ""))] = cleaned
        return True

    async def _delete_my_commands(self, p: dict[str, Any]) -> bool:
        self.commands_by_scope.pop((_scope_key(p.get("scope")), str(p.get("language_code") or "")), None)
        return True

    async def _get_my_commands(self, p: dict[str, Any]) -> list[_Json]:
        key = (_scope_key(p.get("scope")), str(p.get("language_code") or ""))
        return list(self.commands_by_scope.get(key, []))

    async def _answer_callback_query(self, p: dict[str, Any]) -> bool:
        query_id = str(p.get("callback_query_id") or "")
        answer = self.callback_answers.get(query_id)
        if answer is None or answer.get("answered"):
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        answer.update({"answered": True, **{k: v for k, v in p.items() if k != "callback_query_id"}})
        return True

    async def _get_chat(self, p: dict[str, Any]) -> _Json:
        chat = self._chat(p.get("chat_id"))
        full: _Json = {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }
        if int(chat["id"]) in self._migrated:
            full["migrate_to_chat_id"] = self._migrated[int(chat["id"])]
        return full

    def _member(self, chat: _Json, user_id: int) -> _Json:
        person = self._users.get(user_id)
        if person is None:
            raise _bad("user not found")
        if chat["type"] != "private" and user_id in self._admins.get(int(chat["id"]), set()):
            rights = {
                "can_be_edited": False,
                "is_anonymous": False,
                "can_manage_chat": True,
                "can_delete_messages": True,
                "can_manage_video_chats": True,
                "can_restrict_members": True,
                "can_promote_members": False,
                "can_change_info": True,
                "can_invite_users": True,
                "can_post_stories": False,
                "can_edit_stories": False,
                "can_delete_stories": False,
                "can_pin_messages": True,
            }
            if chat.get("is_forum"):
                rights["can_manage_topics"] = True
            return {"status": "administrator", "user": dict(person), **rights}
        return {"status": "member", "user": dict(person)}

    def _member_chat(self, chat_id: Any) -> _Json:
        """A chat whose members the bot may list: not one it was removed from."""
        chat = self._chat(chat_id)
        if int(chat["id"]) in self._kicked:
            kind = "supergroup chat" if chat["type"] == "supergroup" else "group chat"
            raise ApiError(403, f"Forbidden: bot was kicked from the {kind}")
        return chat

    async def _get_chat_member(self, p: dict[str, Any]) -> _Json:
        chat = self._member_chat(p.get("chat_id"))
        user_id = _as_int(p.get("user_id"))
        if user_id is None:
            raise _bad("user_id is empty")
        if chat["type"] == "private" and user_id not in (int(chat["id"]), self.bot_id):
            raise _bad("user not found")
        return self._member(chat, user_id)

    async def _get_chat_administrators(self, p: dict[str, Any]) -> list[_Json]:
        chat = self._member_chat(p.get("chat_id"))
        if chat["type"] == "private":
            raise _bad("there are no administrators in the private chat")
        admins = sorted(self._admins.get(int(chat["id"]), set()))
        return [self._member(chat, user_id) for user_id in admins if user_id in self._users]

    async def _set_webhook(self, p: dict[str, Any]) -> bool:
        if p.get("drop_pending_updates"):
            self._queue.clear()
        url = str(p.get("url") or "")
        if not url:
            self.webhook = None
            return True
        if not url.startswith("https://"):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = str(p.get("secret_token") or "")
        if len(secret) > 256:
            raise _bad("secret token is too long")
        if not _SECRET_TOKEN.fullmatch(secret):
            raise _bad("secret token contains unallowed characters")
        connections = p.get("max_connections")
        if connections is not None and not 1 <= (_as_int(connections) or 0) <= 100:
            raise _bad("max_connections must be between 1 and 100")
        allowed = p.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = frozenset(str(a) for a in allowed) or None
        self.webhook = {k: v for k, v in p.items() if k != "drop_pending_updates"}
        self._webhook_error = None
        self._wake("webhook")
        self._webhook_wake.set()
        return True

    async def _delete_webhook(self, p: dict[str, Any]) -> bool:
        if p.get("drop_pending_updates"):
            self._queue.clear()
        self.webhook = None
        return True

    async def _get_webhook_info(self, p: dict[str, Any]) -> _Json:
        info: _Json = {"url": "", "has_custom_certificate": False, "pending_update_count": len(self._queue)}
        if self.webhook is not None:
            info["url"] = self.webhook["url"]
            for key in ("max_connections", "ip_address", "allowed_updates"):
                if key in self.webhook:
                    info[key] = self.webhook[key]
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info


def _scope_key(scope: Any) -> str:
    return json.dumps(scope if isinstance(scope, dict) else {"type": "default"}, sort_keys=True)


def _update_allowed(update: _Json, allowed: frozenset[str] | None) -> bool:
    kinds = [k for k in update if k != "update_id"]
    if allowed is None:
        return not any(k in _OPT_IN_UPDATES for k in kinds)
    return any(k in allowed for k in kinds)


def _error_response(err: ApiError) -> web.Response:
    body: _Json = {"ok": False, "error_code": err.error_code, "description": err.description}
    if err.parameters:
        body["parameters"] = err.parameters
    return web.json_response(body, status=err.error_code)

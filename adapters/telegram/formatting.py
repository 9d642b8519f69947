"""Render a model's Markdown as Telegram HTML (``parse_mode="HTML"``), safely.

Two small passes:

* A line pass finds the blocks: fenced code (the same fence rules as
  `core.chat.splitting`, so every part the splitter makes renders the way it was
  measured; an unclosed fence at the end still renders as code), blockquote
  lines, headings, bullet items and horizontal rules. Every other line, and the
  text of those blocks, goes to the inline pass.
* An inline pass tokenizes one line: code spans first (nothing inside them is
  formatted), then ``*``/``_``/``~`` delimiter runs and brackets. A run opens
  only if a later run of the same character and length can close it, a ``[``
  only if its ``]`` is followed by an allowed ``(url)``; everything else is
  literal text, so a construct still being streamed shows as typed. Emphasis
  never spans lines, which also keeps a growing line from restyling earlier ones.

Every character of the input reaches the output escaped (an @mention outside
code with a fullwidth "＠", so the model's text never notifies anyone); the only markup is
generated here (b, i, s, code, pre, a href, blockquote, nested as Telegram
allows). The visible text never grows: markers are dropped or replaced by
characters no longer than themselves ("• ", "———"), so the splitter can count
the Markdown source against Telegram's limit.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from html import escape

#: link schemes that become <a href>; any other link stays literal text
_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_RULE_TEXT = "———"
_BULLET_TEXT = "• "

# Block syntax (one line, without its newline). Fences as in core.chat.splitting.
_FENCE_OPEN = re.compile(r"([ \t]*)(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t\r]*")
_QUOTE = re.compile(r" {0,3}> ?")
_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]+|$)")
_RULE = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*")
_BULLET = re.compile(r"([ \t]*)[-*+][ \t]+")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")

# "@username" in text would notify that user: model output never pings anyone, so the
# "@" becomes a fullwidth "＠" (same length), which Telegram does not read as a mention.
_MENTION = re.compile(r"(?<![\w@])@(?=[A-Za-z][A-Za-z0-9_]{3,31}\b)")


def quiet_mentions(text: str) -> str:
    return _MENTION.sub("＠", text)


# Inline syntax.
_TOKEN = re.compile(r"`+|\*+|_+|~+|[\[\]]")
_DESTINATION = re.compile(r"\(([^\s()]*(?:\([^\s()]*\)[^\s()]*)*)\)")  # one level of (parens)
_EMPHASIS = {
    ("*", 1): ("<i>", "</i>"),
    ("*", 2): ("<b>", "</b>"),
    ("*", 3): ("<b><i>", "</i></b>"),
    ("_", 1): ("<i>", "</i>"),
    ("_", 2): ("<b>", "</b>"),
    ("_", 3): ("<b><i>", "</i></b>"),
    ("~", 2): ("<s>", "</s>"),
}


@dataclass(frozen=True, slots=True)
class TelegramText:
    """A message ready for Telegram.

    `html` is sent with ``parse_mode="HTML"``; `plain` is exactly the text
    Telegram shows for it, and the fallback to send with no parse mode.
    """

    html: str
    plain: str


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the way Telegram counts."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def markdown_to_telegram(markdown: str) -> TelegramText:
    """Convert Markdown (complete, or a prefix while streaming) to Telegram HTML."""
    lines = markdown.replace("\r\n", "\n").split("\n")
    html: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(lines):
        fence = _FENCE_OPEN.match(lines[i])
        if fence is not None and not (fence[2][0] == "`" and "`" in fence[3]):
            i, h, p = _code_block(lines, i, fence)
            if p.strip():
                html.append(h)
                plain.append(p)
        elif _QUOTE.match(lines[i]):
            start = i
            while i < len(lines) and _QUOTE.match(lines[i]):
                i += 1
            quoted = [_line(_unquote(line)) for line in lines[start:i]]
            h = "\n".join(line_html for line_html, _ in quoted)
            p = "\n".join(line_plain for _, line_plain in quoted)
            html.append(f"<blockquote>{h}</blockquote>" if p.strip() else h)
            plain.append(p)
        else:
            h, p = _line(lines[i])
            html.append(h)
            plain.append(p)
            i += 1
    return TelegramText("\n".join(html), "\n".join(plain))


def _code_block(lines: list[str], i: int, fence: re.Match[str]) -> tuple[int, str, str]:
    """Render the code block opened on line `i`: (next line, html, plain)."""
    indent, marker, info = len(fence[1]), fence[2], fence[3].split()
    body: list[str] = []
    i += 1
    while i < len(lines):
        close = _FENCE_CLOSE.fullmatch(lines[i])
        if close is not None and close[1][0] == marker[0] and len(close[1]) >= len(marker):
            i += 1
            break
        line = lines[i]
        body.append(line[min(indent, len(line) - len(line.lstrip(" \t"))) :])
        i += 1
    code = "\n".join(body)
    inner = escape(code, quote=False)
    if info and _LANGUAGE.fullmatch(info[0]):
        inner = f'<code class="language-{info[0]}">{inner}</code>'
    return i, f"<pre>{inner}</pre>", code


def _attribute(value: str) -> str:
    return escape(value, quote=False).replace('"', "&quot;")


def _unquote(line: str) -> str:
    while (m := _QUOTE.match(line)) is not None:
        line = line[m.end() :]
    return line


def _line(text: str) -> tuple[str, str]:
    """One line outside code blocks: rule, heading, bullet item or plain text."""
    if _RULE.fullmatch(text):
        return _RULE_TEXT, _RULE_TEXT
    if (m := _HEADING.match(text)) is not None:
        body = text[m.end() :].strip(" \t")
        trimmed = body.rstrip("#")  # an optional closing sequence: "## Title ##"
        if not trimmed or trimmed[-1] in " \t":
            body = trimmed.rstrip(" \t")
        h, p = _inline(body)
        return (f"<b>{h}</b>", p) if p else ("", "")
    if (m := _BULLET.match(text)) is not None:
        prefix = m[1] + _BULLET_TEXT
        h, p = _inline(text[m.end() :])
        return prefix + h, prefix + p
    return _inline(text)


def _inline(text: str) -> tuple[str, str]:
    """(html, plain) of one line of inline Markdown."""
    if _TOKEN.search(text) is None:
        return escape(text, quote=False), text
    inline = _Inline(text)
    inline.render(0, len(text), 0, in_link=False)
    return "".join(inline.html), "".join(inline.plain)


class _Inline:
    """Tokens of one line, and a renderer over ranges of it.

    Token k covers ``text[starts[k]:ends[k]]``; kind is its character. A code
    span is one token from its opening to its closing backticks. For a
    delimiter run `partner` is the nearest later run that can close it, for
    ``[`` its matching ``]`` (-1: none).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.html: list[str] = []
        self.plain: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.kinds: list[str] = []
        self.lengths: list[int] = []  # of the (opening) run
        self.partner: list[int] = []
        self._tokenize()

    def _tokenize(self) -> None:
        runs = [(m.start(), m.end()) for m in _TOKEN.finditer(self.text)]
        # Code spans first: a backtick run closes at the next run of the same length.
        next_same = [-1] * len(runs)
        last: dict[int, int] = {}
        for r in reversed(range(len(runs))):
            a, b = runs[r]
            if self.text[a] == "`":
                next_same[r] = last.get(b - a, -1)
                last[b - a] = r
        r = 0
        while r < len(runs):
            a, b = runs[r]
            kind = self.text[a]
            if kind != "`":
                self._add(a, b, kind, b - a)
            elif next_same[r] >= 0:
                r = next_same[r]
                self._add(a, runs[r][1], kind, b - a)
            r += 1  # an unmatched backtick run is literal text
        self._pair()

    def _add(self, start: int, end: int, kind: str, length: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.kinds.append(kind)
        self.lengths.append(length)
        self.partner.append(-1)

    def _pair(self) -> None:
        text, n = self.text, len(self.text)
        closers: dict[tuple[str, int], int] = {}
        for k in reversed(range(len(self.starts))):
            key = (self.kinds[k], self.lengths[k])
            if key not in _EMPHASIS:
                continue
            before = text[self.starts[k] - 1] if self.starts[k] else " "
            after = text[self.ends[k]] if self.ends[k] < n else " "
            can_open, can_close = not after.isspace(), not before.isspace()
            if key[0] == "_":  # no intraword emphasis: snake_case_names stay literal
                can_open, can_close = can_open and not before.isalnum(), can_close and not after.isalnum()
            if can_open:
                self.partner[k] = closers.get(key, -1)
            if can_close:
                closers[key] = k
        stack: list[int] = []
        for k, kind in enumerate(self.kinds):
            if kind == "[":
                stack.append(k)
            elif kind == "]" and stack:
                self.partner[stack.pop()] = k

    def render(self, lo: int, hi: int, k: int, *, in_link: bool) -> None:
        """Render ``text[lo:hi]``; token k is the first one at or after lo."""
        pos = lo
        while k < len(self.starts) and self.starts[k] < hi:
            start, kind, partner = self.starts[k], self.kinds[k], self.partner[k]
            if kind == "`":
                self._literal(pos, start)
                self._code(start, self.ends[k], self.lengths[k], in_link)
                pos, k = self.ends[k], k + 1
            elif kind in "*_~" and partner >= 0 and self.ends[partner] <= hi:
                self._literal(pos, start)
                opening, closing = _EMPHASIS[kind, self.lengths[k]]
                self.html.append(opening)
                self.render(self.ends[k], self.starts[partner], k + 1, in_link=in_link)
                self.html.append(closing)
                pos, k = self.ends[partner], partner + 1
            elif kind == "[" and not in_link and (link := self._link(k, hi)) is not None:
                url, end = link
                self._literal(pos, start)
                self.html.append(f'<a href="{_attribute(url)}">')
                self.render(self.ends[k], self.starts[partner], k + 1, in_link=True)
                self.html.append("</a>")
                pos, k = end, bisect_left(self.starts, end, k)
            else:
                k += 1  # not a complete construct: stays literal
        self._literal(pos, hi)

    def _literal(self, start: int, end: int) -> None:
        if start < end:
            segment = quiet_mentions(self.text[start:end])
            self.html.append(escape(segment, quote=False))
            self.plain.append(segment)

    def _code(self, start: int, end: int, ticks: int, in_link: bool) -> None:
        code = self.text[start + ticks : end - ticks]
        if code[0] == code[-1] == " " and code.strip(" "):
            code = code[1:-1]  # CommonMark: "`` `x` ``" shows `x`
        escaped = escape(code, quote=False)
        self.html.append(escaped if in_link else f"<code>{escaped}</code>")  # Telegram: no code in links
        self.plain.append(code)

    def _link(self, k: int, hi: int) -> tuple[str, int] | None:
        """(url, end) if the ``[`` token k starts a link with an allowed URL within `hi`."""
        close = self.partner[k]
        if close < 0 or self.ends[close] >= hi or self.starts[close] == self.ends[k]:
            return None
        m = _DESTINATION.match(self.text, self.ends[close], hi)
        if m is None:
            return None
        url = m[1]
        lowered = url.lower()
        if not any(lowered.startswith(s) and len(url) > len(s) for s in _SCHEMES):
            return None
        return url, m.end()

"""Tests for core.chat.splitting: examples for each boundary kind, properties with hypothesis."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.chat import splitting
from core.chat.splitting import Part, closing_fence, split_message, split_parts
from core.platform import LengthUnit

utf16 = LengthUnit.UTF16.measure
MEASURES: dict[str, Callable[[str], int]] = {"len": len, "utf16": utf16}

# ---------------------------------------------------------------- helpers

_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
_CLOSE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t\r]*")


def open_fence_at_end(text: str) -> str | None:
    """The marker of the code fence open at the end of `text`, rendered on its own."""
    marker: str | None = None
    for line in text.split("\n"):
        if marker is None:
            m = _OPEN.match(line)
            if m and not (m[1][0] == "`" and "`" in m[2]):
                marker = m[1]
        else:
            m = _CLOSE.fullmatch(line)
            if m and m[1][0] == marker[0] and len(m[1]) >= len(marker):
                marker = None
    return marker


def non_ws(text: str) -> str:
    return "".join(text.split())


def is_extend(ch: str) -> bool:
    o = ord(ch)
    return (
        ch == "\u200d"
        or 0xFE00 <= o <= 0xFE0F
        or 0x1F3FB <= o <= 0x1F3FF
        or 0xE0020 <= o <= 0xE007F
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
    )


def splits_grapheme(text: str, at: int) -> bool:
    """Would cutting text between at-1 and at break a user-perceived character?"""
    a, b = text[at - 1], text[at]
    if is_extend(b) or a == "\u200d":
        return True
    ri = lambda c: 0x1F1E6 <= ord(c) <= 0x1F1FF  # noqa: E731
    if ri(a) and ri(b):
        k = at - 1
        while k >= 0 and ri(text[k]):
            k -= 1
        return (at - 1 - k) % 2 == 1
    return False


def check_split(text: str, limit: int, measure: Callable[[str], int]) -> list[Part]:
    """Assert every structural property of one split; return the parts."""
    parts = split_parts(text, limit, measure)
    assert [p.text for p in parts] == split_message(text, limit, measure)
    if not text.strip():
        assert parts == []
        return parts
    assert parts, "non-blank text gives at least one part"
    prev_end = 0
    for i, p in enumerate(parts):
        # size, emptiness
        assert measure(p.text) <= limit, (i, measure(p.text), limit)
        assert p.body.strip(), "no empty part"
        assert p.body == p.body.strip() or p.head, "outside fences parts are trimmed"
        # rejoin: bodies are slices of the source, separated by whitespace only
        assert text[p.start : p.end] == p.body
        assert text[prev_end : p.start].strip() == ""
        assert p.start >= prev_end
        prev_end = p.end
        # the added lines are exactly fence lines that pair up across the cut
        if i == 0:
            assert p.head == ""
        else:
            assert bool(p.head) == bool(parts[i - 1].tail)
        if p.head:
            assert p.head.endswith("\n") and _OPEN.match(p.head[:-1])
        if p.tail:
            assert p.tail.startswith("\n") and _CLOSE.fullmatch(p.tail[1:])
        # every part renders with balanced fences
        assert open_fence_at_end(p.text) is None, p.text
        # cuts never fall inside a grapheme
        if i > 0:
            prev = parts[i - 1]
            assert not is_extend(text[p.start])
            if p.start == prev.end:  # a cut with no whitespace
                assert not splits_grapheme(text, p.start), (text[p.start - 3 : p.start + 3],)
    assert text[prev_end:].strip() == ""
    # rejoin, independent of the structure: strip the added lines, compare non-space
    rejoined = "".join(p.body for p in parts)
    assert non_ws(rejoined) == non_ws(text)
    stripped = []
    for p in parts:
        s = p.text
        if p.head:
            s = s[len(p.head) :]
        if p.tail:
            s = s[: -len(p.tail)]
        stripped.append(s)
    assert non_ws("".join(stripped)) == non_ws(text)
    return parts


def check_prefix_stable(text: str, cut: int, limit: int, measure: Callable[[str], int]) -> None:
    short = split_message(text[:cut], limit, measure)
    full = split_message(text, limit, measure)
    settled = short[:-1]
    assert full[: len(settled)] == settled


# ---------------------------------------------------------------- strategies

EMOJI = [
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🧑🏿‍🚀",
    "🏳️‍🌈",
    "🇺🇸",
    "🇯🇵🇫🇷🇩🇪",  # flags back to back
    "1️⃣",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿",  # tag sequence
    "e\u0301",  # combining acute
    "न्दी",  # devanagari with virama and matras
]
CJK = ["中文", "日本語", "漢字", "한국어", "テスト", "。", "、", "！", "？", "「引用」"]

ascii_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFG0123456789", min_size=1, max_size=12)
long_word = st.text(alphabet="abcdefghijxyz_/-.:", min_size=40, max_size=400)
emoji_word = st.lists(st.sampled_from(EMOJI), min_size=1, max_size=40).map("".join)
cjk_run = st.lists(st.sampled_from(CJK), min_size=1, max_size=60).map("".join)
inline = st.sampled_from(["`code`", "**bold**", "_it_", "[link](http://x.y/z)", "1.", "e.g.", "``"])
word = st.one_of(ascii_word, ascii_word, ascii_word, ascii_word, long_word, emoji_word, cjk_run, inline)
sentence = st.tuples(
    st.lists(word, min_size=1, max_size=25).map(" ".join),
    st.sampled_from([".", "!", "?", "", "。", "…", ":"]),
).map("".join)
paragraph = st.lists(sentence, min_size=1, max_size=8).map(" ".join)
list_item = st.tuples(st.sampled_from(["- ", "* ", "1. ", "  - ", "> "]), sentence).map("".join)
lines_block = st.lists(st.one_of(list_item, sentence), min_size=1, max_size=8).map("\n".join)
code_line = st.tuples(
    st.sampled_from(["", "    ", "\t", "  "]),
    st.text(alphabet="abcdefxyz_=()[]{}:;.,'\" +-*/#<>`~", max_size=90),
).map("".join)
fence_open = st.sampled_from(["```", "```python", "``` js", "~~~", "~~~ text", "````md", "  ```"])


@st.composite
def code_block(draw: st.DrawFn) -> str:
    opener = draw(fence_open)
    marker = opener.strip().split(" ")[0].rstrip("abcdefghijklmnopqrstuvwxyz")
    body = draw(st.lists(code_line, min_size=0, max_size=30))
    closer = draw(st.sampled_from([marker, marker, marker + marker[0], ""]))
    return "\n".join([opener, *body, closer]) if closer else "\n".join([opener, *body])


block = st.one_of(paragraph, paragraph, lines_block, code_block())
separator = st.sampled_from(["\n\n", "\n\n", "\n", "\n\n\n", " \n\n", "\n \n"])


@st.composite
def markdown(draw: st.DrawFn) -> str:
    blocks = draw(st.lists(block, min_size=1, max_size=12))
    out = blocks[0]
    for b in blocks[1:]:
        out += draw(separator) + b
    return draw(st.sampled_from(["", "\n", "  "])) + out + draw(st.sampled_from(["", "\n", " "]))


limits = st.one_of(st.integers(64, 300), st.integers(64, 4096))
measures = st.sampled_from(sorted(MEASURES))

PROPS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- properties


@PROPS
@given(text=markdown(), limit=limits, unit=measures)
def test_split_properties(text: str, limit: int, unit: str) -> None:
    measure = MEASURES[unit]
    fast = check_split(text, limit, measure)
    # the one-part shortcut never changes the result of the careful walk
    with mock.patch.object(splitting, "_fits_whole", return_value=None):
        assert split_parts(text, limit, measure) == fast


@settings(PROPS, max_examples=120)
@given(text=markdown(), limit=st.integers(64, 400), unit=measures, data=st.data())
def test_prefix_stability(text: str, limit: int, unit: str, data: st.DataObject) -> None:
    measure = MEASURES[unit]
    for _ in range(4):
        cut = data.draw(st.integers(0, len(text)), label="cut")
        check_prefix_stable(text, cut, limit, measure)


@settings(PROPS, max_examples=40)
@given(text=markdown(), limit=st.integers(64, 200), step=st.integers(1, 13))
def test_prefix_stability_every_prefix(text: str, limit: int, step: int) -> None:
    """Streaming view: each growing prefix only ever changes its last part."""
    text = text[:800]
    previous: list[str] = []
    for cut in [*range(0, len(text), step), len(text)]:
        parts = split_message(text[:cut], limit, utf16)
        assert parts[: max(len(previous) - 1, 0)] == previous[:-1]
        assert len(parts) >= len(previous)
        previous = parts


@PROPS
@given(
    text=st.lists(st.sampled_from([*"ab ✓\n`~.。中", "```", "\n```", *EMOJI]), min_size=20, max_size=400).map(
        "".join
    ),
    limit=st.integers(64, 128),
    unit=measures,
)
def test_split_properties_noise(text: str, limit: int, unit: str) -> None:
    """Dense, unstructured input: fences, marks and emoji in odd places."""
    check_split(text, limit, MEASURES[unit])


# ---------------------------------------------------------------- examples


def test_blank_and_small() -> None:
    assert split_message("", 100) == []
    assert split_message(" \n\t ", 100) == []
    assert split_message("  hello  \n", 100) == ["hello"]
    with pytest.raises(ValueError):
        split_message("x", 63)


def test_prefers_paragraph_break() -> None:
    a = "First paragraph. " * 4
    b = "Second line one.\nSecond line two. More words here and there"
    parts = split_message(a.strip() + "\n\n" + b, 100)
    assert parts[0] == a.strip()


def test_skips_early_paragraph_break_for_later_line_break() -> None:
    early = "Short."  # paragraph break at ~6% of the window
    tail = "\n".join(f"line {i} with some words" for i in range(10))
    parts = split_message(early + "\n\n" + tail, 120)
    assert parts[0].startswith("Short.\n\nline 0")
    assert parts[0].endswith("words")  # cut at a line break late in the window
    assert len(parts[0]) > 90


def test_prefers_line_break_over_sentence() -> None:
    text = "Alpha beta gamma delta.\nEpsilon zeta eta theta. Iota kappa lambda. Mu nu xi omicron pi rho"
    parts = split_message(text, 64)
    assert parts[0] == "Alpha beta gamma delta."


def test_prefers_sentence_over_word() -> None:
    text = "One two three four five six seven. Eight nine ten eleven twelve thirteen fourteen"
    parts = split_message(text, 64)
    assert parts[0] == "One two three four five six seven."
    assert parts[1].startswith("Eight")


def test_prefers_word_over_hard_cut() -> None:
    text = " ".join(["word"] * 40)
    parts = split_message(text, 64)
    assert all(p.split(" ") == ["word"] * len(p.split(" ")) for p in parts)


def test_hard_cut_when_no_space() -> None:
    text = "x" * 200
    parts = split_message(text, 64)
    assert parts == ["x" * 64, "x" * 64, "x" * 64, "x" * 8]


def test_hard_cut_keeps_graphemes() -> None:
    family = "👨‍👩‍👧‍👦"  # 7 code points, 11 UTF-16 units
    text = family * 30
    for measure in (len, utf16):
        parts = split_message(text, 64, measure)
        assert "".join(parts) == text
        assert all(p and p.replace(family, "") == "" for p in parts)
    flags = "🇯🇵🇫🇷" * 40
    parts = split_message(flags, 65)
    assert all(len(p) % 2 == 0 for p in parts)
    combining = "e\u0301" * 100
    assert all(not is_extend(p[0]) for p in split_message(combining, 65))


def test_cjk_sentences() -> None:
    text = "これは日本語の文です。" * 20
    parts = split_message(text, 64)
    assert all(p.endswith("。") for p in parts)
    assert "".join(parts) == text


def test_cut_inside_fence_closes_and_reopens() -> None:
    code = "\n".join(f"    value_{i} = compute({i})" for i in range(20))
    text = "```python\n" + code + "\n```"
    parts = split_message(text, 200)
    assert len(parts) > 1
    for i, p in enumerate(parts):
        assert p.startswith("```python\n")
        assert p.endswith("\n```")
        assert len(p) <= 200
        if i:
            assert p.startswith("```python\n    value_")  # indentation kept
    inner = [p.removeprefix("```python\n").removesuffix("\n```") for p in parts]
    assert "\n".join(inner) == code


def test_prefers_cut_before_code_block() -> None:
    prose = "Here is how you do it, explained in some words. " * 2
    code = "\n".join(f"x{i} = {i}" for i in range(40))
    text = prose.strip() + "\n```\n" + code + "\n```\nThat is all."
    parts = split_message(text, 300)
    assert parts[0] == prose.strip()
    assert parts[1].startswith("```\nx0 = 0")


def test_cut_after_code_block_rather_than_inside() -> None:
    code = "```sh\nls -la\nmake test\nmake lint typecheck\n```"  # 45% of the window
    text = code + "\n" + "More prose follows here and goes on. " * 5
    parts = split_message(text, 100)
    assert parts[0] == code


def test_tilde_and_long_fences() -> None:
    text = "~~~ text\n" + "\n".join(["a ``` b", "```", "~~"] * 30) + "\n~~~\nafter"
    for p in check_split(text, 80, len):
        if p.head:
            assert p.head == "~~~ text\n"
        if p.tail:
            assert p.tail == "\n~~~"
    text = "````md\n```python\nx = 1\n```\n" + "y\n" * 80 + "````"
    for p in check_split(text, 64, len):
        if p.tail:
            assert p.tail == "\n````"


def test_unclosed_fence_at_end_is_closed() -> None:
    assert split_message("Look:\n```py\nprint(1)", 100) == ["Look:\n```py\nprint(1)\n```"]
    assert closing_fence("Look:\n```py\nprint(1)") == "\n```"
    assert closing_fence("```py\nprint(1)\n```") == ""
    assert closing_fence("~~~~\nx\n~~~") == "\n~~~~"


def test_no_empty_code_block_at_a_cut() -> None:
    text = "Intro words here.\n```python\n" + "print('hello world')\n" * 10 + "```"
    for limit in range(64, 260, 3):
        for p in split_message(text, limit):
            assert "```python\n```" not in p


def test_long_answer_emoji_cjk_utf16() -> None:
    para = (
        "Telegram counts UTF-16 units, so emoji 👨‍👩‍👧‍👦🇺🇸👍🏽 count double. "
        "中文内容也需要正确处理。日本語の文章もあります。 "
    )
    blocks = []
    while sum(len(b) for b in blocks) < 10_000:
        blocks.append(para * 3)
        if len(blocks) % 4 == 0:
            blocks.append("```python\n" + "\n".join(f"print('🙂 {i}')" for i in range(12)) + "\n```")
    text = "\n\n".join(blocks)
    assert len(text) >= 10_000
    parts = check_split(text, 4096, utf16)
    assert 3 <= len(parts) <= 5
    assert all(utf16(p.text) <= 4096 for p in parts)
    assert all(utf16(p.text) > 4096 * 0.5 for p in parts[:-1])  # no tiny parts
    for i in range(0, len(text), 997):
        check_prefix_stable(text, i, 4096, utf16)

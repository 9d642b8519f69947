"""Tests for adapters.telegram.formatting: examples per construct, properties with hypothesis.

The HTML is checked by an independent parser (`check_html`) that enforces
Telegram's rules and reconstructs the visible text, rather than by comparing
against the converter's own idea of it.
"""

from __future__ import annotations

import re
import time
import timeit
import unicodedata
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.telegram.formatting import TelegramText, markdown_to_telegram, utf16_len
from core.chat.splitting import split_message

# ---------------------------------------------------------------- checker

ALLOWED_TAGS = frozenset({"b", "i", "s", "code", "pre", "a", "blockquote"})
SCHEMES = ("http://", "https://", "tg://", "mailto:")
ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
# Every character of the HTML is part of a tag, one of Telegram's named entities, or plain text.
LEXEME = re.compile(r'<(/?)([a-z]+)((?: [a-z]+="[^"<>]*")*)>|&(?:lt|gt|amp|quot);|[^<>&]+')


class _Checker(HTMLParser):
    """Validates Telegram HTML; collects the visible text and, separately, that text
    with each link's href placed after the link (where the URL stood in the Markdown)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.hrefs: list[str] = []
        self.visible: list[str] = []
        self.accounted: list[str] = []
        self.pre_has_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in ALLOWED_TAGS, tag
        parent = self.stack[-1] if self.stack else None
        assert parent != "code", "nothing may be nested in code"
        if parent == "pre":
            assert tag == "code" and not self.pre_has_text, "pre holds only text or one code"
        if tag == "a":
            assert len(attrs) == 1 and attrs[0][0] == "href", attrs
            href = attrs[0][1] or ""
            assert href.lower().startswith(SCHEMES), href
            assert "a" not in self.stack
            self.hrefs.append(href)
        elif tag == "code" and parent == "pre" and attrs:
            assert len(attrs) == 1 and attrs[0][0] == "class", attrs
            assert re.fullmatch(r"language-[A-Za-z0-9_+#.-]+", attrs[0][1] or ""), attrs
        else:
            assert not attrs, (tag, attrs)
        if tag == "code":
            assert "a" not in self.stack, "Telegram: links cannot contain code"
        if tag in ("pre", "blockquote"):
            assert not self.stack, f"{tag} only at the top level"
            self.pre_has_text = False
        self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise AssertionError(f"self-closing <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()
        if tag == "a":
            self.accounted.append(self.hrefs.pop())

    def handle_data(self, data: str) -> None:
        self.visible.append(data)
        self.accounted.append(data)
        self.pre_has_text = self.pre_has_text or self.stack[-1:] == ["pre"]

    def handle_entityref(self, name: str) -> None:
        assert name in ENTITIES, name
        self.handle_data(ENTITIES[name])

    def handle_charref(self, name: str) -> None:
        raise AssertionError(f"unexpected &#{name};")

    def handle_comment(self, data: str) -> None:
        raise AssertionError("comment")

    def handle_decl(self, decl: str) -> None:
        raise AssertionError("declaration")

    def handle_pi(self, data: str) -> None:
        raise AssertionError("processing instruction")

    def unknown_decl(self, data: str) -> None:
        raise AssertionError("unknown declaration")


def check_html(html: str) -> tuple[str, str]:
    """Assert `html` is valid Telegram HTML; return (visible text, text with hrefs)."""
    pos = 0
    for m in LEXEME.finditer(html):
        assert m.start() == pos, f"raw markup character at {pos}: {html[pos : pos + 20]!r}"
        pos = m.end()
    assert pos == len(html), f"raw markup character at {pos}: {html[pos : pos + 20]!r}"
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.stack, f"unclosed {checker.stack}"
    return "".join(checker.visible), "".join(checker.accounted)


def render(markdown: str) -> TelegramText:
    """Convert and check the invariants every output must satisfy."""
    result = markdown_to_telegram(markdown)
    visible, _ = check_html(result.html)
    assert visible == result.plain
    return result


# ---------------------------------------------------------------- properties

# Characters that render differently from the input, and what they stand for there.
REPLACES = {"•": "-*+", "—": "-*_", "＠": "@"}


def is_content(ch: str) -> bool:
    """Letters, digits (any script, CJK included) and symbols such as emoji."""
    return ch.isalnum() or unicodedata.category(ch) == "So"


def is_subsequence(small: str, big: str, same: object = None) -> bool:
    """Is `small` a subsequence of `big` (with `REPLACES` if `same` is REPLACES)?"""
    it = iter(big)
    if same is None:
        return all(ch in it for ch in small)
    return all(any(ch == b or b in REPLACES.get(ch, "") for b in it) for ch in small)


def fence_like(line: str) -> bool:
    return line.lstrip(" \t").startswith(("```", "~~~"))


PIECES = [
    *"<>&\"'`*_~[]()#>-+=.:/\\|!? \t\n\n",
    *"aZ7éß中文😀👍🏽",
    "**", "__", "~~", "```", "~~~", "```python", "> ", "- ", "* ", "+ ", "1. ", "# ", "### ",
    "---", "***", "http://", "https://e.com/x?a=1&b=2", "tg://user?id=1", "mailto:a@b.c", "javascript:",
    "[a](https://e.com)", "](", "<b>", "</i>", "&amp;", "&lt;", "snake_case_name", "\r\n", "    ",
]  # fmt: skip
markdownish = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
anything = st.one_of(markdownish, st.text(max_size=200))


@settings(max_examples=300, deadline=None)
@given(anything)
def test_properties(markdown: str) -> None:
    result = markdown_to_telegram(markdown)
    # (1) well-formed Telegram HTML, (2) whose visible text is `plain`
    visible, accounted = check_html(result.html)
    assert visible == result.plain
    # (3) rendering never makes the text longer than its source
    assert utf16_len(result.plain) <= utf16_len(markdown)
    # (4a) nothing is invented: the visible non-whitespace characters come from the input
    # in order ("•" and "—" stand for list and rule markers)
    assert is_subsequence("".join(result.plain.split()), "".join(markdown.split()), REPLACES)
    # (4b) nothing is lost: every letter, digit, CJK character and emoji of the input is
    # visible in order, except link URLs (they are the href) and code fence lines (the
    # info string becomes the language, or is dropped)
    source = "\n".join(line for line in markdown.split("\n") if not fence_like(line))
    wanted = [ch for ch in source if is_content(ch)]
    assert is_subsequence("".join(wanted), "".join(ch for ch in accounted if is_content(ch)))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab*_~` \n[]()<&", max_size=40))
def test_properties_small_alphabet(markdown: str) -> None:
    result = render(markdown)
    assert utf16_len(result.plain) <= utf16_len(markdown)
    assert is_subsequence("".join(result.plain.split()), "".join(markdown.split()), REPLACES)
    # no link can form in this alphabet: only a fence's info string may go
    letters = "".join(ch for ch in result.plain if ch.isalnum())
    source = "\n".join(line for line in markdown.split("\n") if not fence_like(line))
    assert is_subsequence("".join(ch for ch in source if ch.isalnum()), letters)


def test_utf16_len() -> None:
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("中文") == 2
    assert utf16_len("😀") == 2
    assert utf16_len("👍🏽") == 4


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*italic* and _italic_", "<i>italic</i> and <i>italic</i>"),
        ("***both***", "<b><i>both</i></b>"),
        ("~~gone~~ ~5 minutes", "<s>gone</s> ~5 minutes"),
        ("`x = a<b && c`", "<code>x = a&lt;b &amp;&amp; c</code>"),
        ("``a `tick` b``", "<code>a `tick` b</code>"),
        ("`` `x` ``", "<code>`x`</code>"),
        ("`**not bold**`", "<code>**not bold**</code>"),
        ("**bold `code` bold**", "<b>bold <code>code</code> bold</b>"),
        ("*a **b** c*", "<i>a <b>b</b> c</i>"),
        ("**a _b_ ~~c~~**", "<b>a <i>b</i> <s>c</s></b>"),
        ("snake_case_name and __init__.py", "snake_case_name and <b>init</b>.py"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("a * b*", "a * b*"),
        ("**unclosed", "**unclosed"),
        ("* lone star", "• lone star"),
        ("_ lone _", "_ lone _"),
        ("[ lone bracket", "[ lone bracket"),
        ("a ] b [c]", "a ] b [c]"),
        ("`unclosed code", "`unclosed code"),
    ],
)
def test_inline(markdown: str, html: str) -> None:
    assert render(markdown).html == html


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("[docs](https://example.com/a?b=1&c=2)", '<a href="https://example.com/a?b=1&amp;c=2">docs</a>'),
        ("[q](http://e.com/\"x\")", '<a href="http://e.com/&quot;x&quot;">q</a>'),
        ("[wiki](https://en.wikipedia.org/wiki/Foo_(bar))",
         '<a href="https://en.wikipedia.org/wiki/Foo_(bar)">wiki</a>'),
        ("[me](tg://user?id=42) [mail](mailto:a@b.c)",
         '<a href="tg://user?id=42">me</a> <a href="mailto:a@b.c">mail</a>'),
        ("[**bold** and `code`](https://e.com)", '<a href="https://e.com"><b>bold</b> and code</a>'),
        ("**see [the *docs*](https://e.com)**", '<b>see <a href="https://e.com">the <i>docs</i></a></b>'),
        ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
        ("[x](/relative) [y](ftp://h)", "[x](/relative) [y](ftp://h)"),
        ("[x](https://)", "[x](https://)"),
        ("[x](https://e.com with space)", "[x](https://e.com with space)"),
        ("[](https://e.com)", "[](https://e.com)"),
        ("[a [b](https://e.com)](https://f.com)", '<a href="https://f.com">a [b](https://e.com)</a>'),
        ("[partial](https://e.co", "[partial](https://e.co"),
    ],
)  # fmt: skip
def test_links(markdown: str, html: str) -> None:
    assert render(markdown).html == html


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("# Title", "<b>Title</b>"),
        ("### **Step** 1 ###", "<b><b>Step</b> 1</b>"),
        ("# C#", "<b>C#</b>"),
        ("#hashtag", "#hashtag"),
        ("####### seven", "####### seven"),
        ("- one\n* two\n+ three", "• one\n• two\n• three"),
        ("  - nested *it*", "  • nested <i>it</i>"),
        ("1. first\n2. **second**", "1. first\n2. <b>second</b>"),
        ("---\n***\n_ _ _", "———\n———\n———"),
        ("> quoted **b**\n>\n> > deeper\nafter", "<blockquote>quoted <b>b</b>\n\ndeeper</blockquote>\nafter"),
        ("> # heading in a quote\n> - item", "<blockquote><b>heading in a quote</b>\n• item</blockquote>"),
        (">", ""),
        ("a\r\nb", "a\nb"),
    ],
)
def test_blocks(markdown: str, html: str) -> None:
    assert render(markdown).html == html


def test_code_block_is_not_formatted_and_is_escaped() -> None:
    markdown = (
        'Run:\n```python\nx = "**not bold**"  # <tags> & _under_ [a](https://e.com)\n```\nDone **now**.'
    )
    result = render(markdown)
    assert result.html == (
        'Run:\n<pre><code class="language-python">x = "**not bold**"  # &lt;tags&gt; &amp; '
        "_under_ [a](https://e.com)</code></pre>\nDone <b>now</b>."
    )
    assert result.plain == 'Run:\nx = "**not bold**"  # <tags> & _under_ [a](https://e.com)\nDone now.'


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("```\nplain\n```", "<pre>plain</pre>"),
        ("~~~sh\nls\n~~~", '<pre><code class="language-sh">ls</code></pre>'),
        ("```c++ extra words\nx\n```", '<pre><code class="language-c++">x</code></pre>'),
        ('```"><script>\nx\n```', "<pre>x</pre>"),
        ("````\n```\ninner\n```\n````", "<pre>```\ninner\n```</pre>"),
        ("```\na\n~~~\nb\n```", "<pre>a\n~~~\nb</pre>"),
        ("1. Install:\n   ```sh\n   pip install x\n     indented\n   ```",
         '1. Install:\n<pre><code class="language-sh">pip install x\n  indented</code></pre>'),
        ("```py\nstreaming **x**", '<pre><code class="language-py">streaming **x**</code></pre>'),
        ("before\n```py", "before"),
        ("```js`\nnot a fence", "```js`\nnot a fence"),
    ],
)  # fmt: skip
def test_code_blocks(markdown: str, html: str) -> None:
    assert render(markdown).html == html


@pytest.mark.parametrize(
    ("markdown", "html", "plain"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;", "<script>alert(1)</script>"),
        ("a & b", "a &amp; b", "a & b"),
        ("x < y > z", "x &lt; y &gt; z", "x < y > z"),
        ("&amp; &lt;", "&amp;amp; &amp;lt;", "&amp; &lt;"),
        ('<a href="x">', '&lt;a href="x"&gt;', '<a href="x">'),
        ("**<b>**", "<b>&lt;b&gt;</b>", "<b>"),
    ],
)
def test_escaping(markdown: str, html: str, plain: str) -> None:
    result = render(markdown)
    assert (result.html, result.plain) == (html, plain)


ANSWER = """\
# Setting up **Herald**

Herald needs *Python ≥ 3.11* and a model server. Here's the short version:

1. Create a virtualenv & install: `pip install -e ".[test]"`
2. Point it at [TGI](https://github.com/huggingface/text-generation-inference) or any
   OpenAI-compatible server (see the [docs](https://example.com/docs?a=1&b=2)).

- Keep `HERALD_REDIS_URL` unset to use the ~~external~~ embedded server.
* snake_case_names and __dunder__ stay readable; 2 < 3 && 5 > 4.

> **Note:** the console reads one message per line.
> It's handy for scripts.

```python
def greet(name: str) -> str:
    return f"<b>{name}</b> & **friends**"
```

---

中文也可以 😀 — done!
"""


def test_every_streaming_prefix_renders() -> None:
    for end in range(len(ANSWER) + 1):
        result = render(ANSWER[:end])
        assert utf16_len(result.plain) <= utf16_len(ANSWER[:end])
    final = render(ANSWER)
    assert "<b>Setting up <b>Herald</b></b>" in final.html
    assert '<a href="https://example.com/docs?a=1&amp;b=2">docs</a>' in final.html
    assert '<pre><code class="language-python">def greet' in final.html
    assert '&lt;b&gt;{name}&lt;/b&gt; &amp; **friends**"</code></pre>' in final.html
    assert "<blockquote><b>Note:</b> the console" in final.html
    assert "• Keep <code>HERALD_REDIS_URL</code>" in final.html
    assert "snake_case_names and <b>dunder</b>" in final.html


def test_splitter_parts_render_within_the_limit() -> None:
    long_answer = (ANSWER + "\n") * 30
    parts = split_message(long_answer, 4096, utf16_len)
    assert len(parts) > 1
    for part in parts:
        result = render(part)
        assert 0 < utf16_len(result.plain) <= 4096


def test_a_long_answer_is_fast() -> None:
    answer = (ANSWER * 7)[:4000]
    best = min(timeit.repeat(lambda: markdown_to_telegram(answer), number=1, repeat=20))
    assert best < 0.005  # about 0.5 ms on a laptop; generous for slow CI machines


@pytest.mark.parametrize(
    "line",
    [
        "*a " * 1400,
        "[a](x" * 800,
        "`" * 4000,
        "` `` " * 800,
        "_a_" * 1300,
        "[" * 4000 + "]" * 4000,
        "~~a " * 1000,
    ],
)
def test_pathological_lines_are_fast(line: str) -> None:
    start = time.perf_counter()
    render(line)
    assert time.perf_counter() - start < 0.5


def test_mentions_never_notify_anyone() -> None:
    result = markdown_to_telegram("Hi @john_doe and @everyone, mail a@b.com, `@decorator` stays")
    assert result.plain == "Hi ＠john_doe and ＠everyone, mail a@b.com, @decorator stays"
    assert utf16_len(result.plain) <= utf16_len("Hi @john_doe and @everyone, mail a@b.com, @decorator stays")

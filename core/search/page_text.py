"""A fetched body (HTML, XHTML or plain text) as readable text: its title and main text.

HTML becomes text with lxml (libxml2's HTML parser), chosen for hostile input.
Measured on 2 MB pages of pathological shapes (deep nesting, misnested
formatting tags, unclosed everything, huge comments and entities), it parsed
each in well under a second, where Lexbor (selectolax), a WHATWG tree builder,
took 30 s and more on deep nesting and misnested `<a><b>`: that algorithm's
scope checks are linear in the depth of open elements. libxml2 caps the tree's
depth instead, never touches the network, and lxml releases the GIL while it
parses (the extraction also runs in a worker thread), so a big page does not
stall the event loop. The one slow shape found, a tag with a huge number of
distinct attributes (minutes in both parsers), is cut out before parsing
(`_OVERLONG_TAG`). The main text is picked without a scoring library: `<main>`,
else the longest `<article>`, else `<body>`, less scripts, styles, navigation,
form controls and hidden elements. The extraction is not under the fetch's time
limit (a thread cannot be stopped), but its input is bounded by
`FetchLimits.max_bytes` (`core.search.pages`).
"""

from __future__ import annotations

import codecs
import re

from lxml import etree
from lxml import html as lxml_html

__all__ = ["MAX_TITLE", "clip", "looks_like_html", "page_text"]

#: a title, a page's or a search result's, is cut to this many characters
MAX_TITLE = 300

# A tag this long is cut out before parsing: libxml2 checks each attribute
# against all earlier ones, so one tag with 200k attributes takes minutes.
# Nothing readable is lost (the longest real tags are inline images' data URLs).
_OVERLONG_TAG = re.compile(r"<[A-Za-z!?/][^<>]{4000,}>?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)+")
_META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""", re.I)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
#: never text for a reader: code, media, navigation, page furniture, form controls
_NOT_TEXT_TAGS = (
    *("script", "style", "noscript", "template", "svg", "math", "iframe", "object", "embed", "canvas"),
    *("nav", "header", "footer", "aside", "button", "select", "textarea", "input", "dialog"),
)
_NOT_TEXT_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search"})
#: elements that may be hidden or furniture by their attributes (`_hidden` decides);
#: one cheap XPath, where a test per tag name in XPath would take half a second on a big page
_MARKED = etree.XPath("//*[@hidden or @aria-hidden or @role or @style]")
_BLOCKS = frozenset(
    {
        *("address", "article", "blockquote", "body", "br", "caption", "dd", "details", "div", "dl"),
        *("dt", "fieldset", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "html"),
        *("legend", "li", "main", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot"),
        *("thead", "tr", "ul"),
    }
)
_CELLS = frozenset({"td", "th"})
#: a main element or article shorter than this is probably not the page's text
_MAIN_MIN_CHARS = 200
# WHATWG's encoding labels that Python reads differently (windows-1252 is a superset)
_CHARSET_ALIASES = {"ascii": "cp1252", "us-ascii": "cp1252", "iso-8859-1": "cp1252", "latin1": "cp1252"}


def page_text(body: bytes, is_html: bool, charset: str | None, max_chars: int) -> tuple[str, str, bool]:
    """(title, text, whether the text was cut to `max_chars`). Runs in a worker thread."""
    decoded = _decode(body, charset, is_html)
    title, text, stopped = _html_text(decoded, max_chars) if is_html else ("", _tidy(decoded), False)
    clipped = clip(text, max_chars)
    return title, clipped, stopped or clipped != text


def _decode(body: bytes, charset: str | None, is_html: bool) -> str:
    """Text by the HTML standard's order: byte order mark, the header's charset, the
    document's <meta>, then UTF-8 (or windows-1252 when the bytes are not UTF-8)."""
    for bom, name in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if body.startswith(bom):
            return body[len(bom) :].decode(name, "replace")
    candidates = [charset]
    if is_html:
        found = _META_CHARSET.search(body[:2048])
        meta = found.group(1).decode("ascii").lower() if found else None
        candidates.append("utf-8" if meta and meta.startswith("utf-16") else meta)
    for label in candidates:
        if not label:
            continue
        try:
            return body.decode(_CHARSET_ALIASES.get(label.lower(), label), "replace")
        except LookupError:  # an unknown name, or not a text encoding (base64, zlib)
            continue
    try:
        # incremental: a body cut in the middle of a character is still UTF-8
        return codecs.getincrementaldecoder("utf-8")("strict").decode(body, final=False)
    except UnicodeDecodeError:
        return body.decode("cp1252", "replace")


def looks_like_html(body: bytes) -> bool:
    start = body[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html")) or b"<body" in start


def _html_text(text: str, max_chars: int) -> tuple[str, str, bool]:
    """The title and the main text of an HTML document (at least `max_chars` of it, when
    it has that many), and whether there was more."""
    cleaned = _OVERLONG_TAG.sub(" ", text)
    if not cleaned.strip():
        return "", "", False
    parser = lxml_html.HTMLParser(
        encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True, recover=True
    )
    try:
        root = lxml_html.document_fromstring(cleaned.encode("utf-8", "replace"), parser=parser)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return "", "", False
    title = " ".join((root.findtext(".//title") or "").split())[:MAX_TITLE]
    marked = _elements(_MARKED(root))
    mains = [*root.iter("main"), *(element for element in marked if element.get("role") == "main")]
    for element in [*root.iter(*_NOT_TEXT_TAGS), *filter(_hidden, marked)]:
        if isinstance(element, lxml_html.HtmlElement) and element.getparent() is not None:
            element.drop_tree()
    flat, stopped = _flatten(_main_part(root, _elements(mains)), max_chars)
    return title, _tidy(flat), stopped


def _elements(found: object) -> list[lxml_html.HtmlElement]:
    """The elements in an XPath result (which lxml types as anything XPath can return)."""
    if not isinstance(found, list):
        return []
    return [item for item in found if isinstance(item, lxml_html.HtmlElement)]


def _hidden(element: lxml_html.HtmlElement) -> bool:
    """Hidden (`hidden`, `aria-hidden`, an inline style), or the page's furniture by its role."""
    if element.get("hidden") is not None or element.get("aria-hidden") == "true":
        return True
    if element.get("role") in _NOT_TEXT_ROLES:
        return True
    return _HIDDEN_STYLE.search(element.get("style") or "") is not None


def _main_part(root: lxml_html.HtmlElement, mains: list[lxml_html.HtmlElement]) -> lxml_html.HtmlElement:
    """`<main>` (or role=main), else the longest `<article>`, else `<body>`."""
    for main in mains:
        if main.getparent() is not None and len(main.text_content().strip()) >= _MAIN_MIN_CHARS:
            return main
    articles = _elements(list(root.iter("article")))
    if articles:
        longest = max(articles, key=lambda a: len(a.text_content()))
        if len(longest.text_content().strip()) >= _MAIN_MIN_CHARS:
            return longest
    body = root.find("body")
    return body if body is not None else root


def _flatten(node: lxml_html.HtmlElement, enough: int) -> tuple[str, bool]:
    """The element's text, a line per block element, whitespace kept only inside <pre>;
    the walk stops once it has more than `enough` characters (and says so)."""
    parts: list[str] = []
    in_pre = 0
    size = 0

    def emit(text: str | None) -> None:
        nonlocal size
        if not text:
            return
        if not in_pre:
            text = _WHITESPACE.sub(" ", text)
            if not parts or parts[-1].endswith("\n"):
                text = text.lstrip()
        if text:
            parts.append(text)
            size += len(text)

    def end_line() -> None:
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")

    for event, element in etree.iterwalk(node, events=("start", "end")):
        if size > enough:
            return "".join(parts), True
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _BLOCKS:
                end_line()
            if tag == "pre":
                in_pre += 1
            emit(element.text)
            continue
        if tag in _BLOCKS:
            end_line()
        elif tag in _CELLS:
            emit(" ")
        if tag == "pre":
            in_pre -= 1
        if element is not node:
            emit(element.tail)
    return "".join(parts), False


def _tidy(text: str) -> str:
    """No control characters, no trailing spaces, at most one blank line in a row."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a word boundary when one is near, with "…"."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    cut = text[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + "…"

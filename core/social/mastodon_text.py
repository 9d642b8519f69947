"""A post's length the way a Mastodon server counts it, before it is sent.

Mastodon's `StatusLengthValidator` (app/validators/status_length_validator.rb) counts
the content warning plus the text, in grapheme clusters (`each_grapheme_cluster`: a
ZWJ emoji sequence or a flag is one), after two rewrites of the text:

* every link its extractor finds counts as `characters_reserved_per_url` characters
  (23; the instance says so in `/api/v2/instance`), however long it is. Links are
  twitter-text's `valid_url`, a protocol required (`extract_url_without_protocol:
  false`), with Mastodon's own protocols, path and query rules
  (config/initializers/twitter_regex.rb); a link over 4,096 characters is not one.
* a mention of a remote account, `@user@domain`, counts only `@user`
  (`Account::MENTION_RE`; a domain over 253 characters leaves it whole).

Text that is only white space counts 0. The domain rules (the lists of top-level
domains) are twitter-text-parser's, which X's weighted measure already uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import regex
from twitter_text.regexp.latin_accent_chars import latin_accent_chars
from twitter_text.regexp.valid_domain import valid_domain
from twitter_text.regexp.valid_tco_url import valid_tco_url
from twitter_text.regexp.valid_url_balanced_parens import valid_url_balanced_parens
from twitter_text.regexp.valid_url_preceding_chars import valid_url_preceding_chars

__all__ = ["URL_LENGTH", "MastodonMeasure", "countable_text", "mastodon_length"]

#: StatusLengthValidator::URL_PLACEHOLDER_CHARS, served as characters_reserved_per_url
URL_LENGTH = 23
#: twitter-text's MAX_URL_LENGTH: a longer "link" is counted as the text it is
MAX_URL_LENGTH = 4096
#: Extractor::MAX_DOMAIN_LENGTH: a mention with a longer domain is counted whole
MAX_DOMAIN_LENGTH = 253
MAX_TCO_SLUG_LENGTH = 40

_PROTOCOL = r"(?:https?|dat|dweb|ipfs|ipns|ssb|gopher|gemini)://"
# Mastodon's overrides of twitter-text's path and query characters
_PATH_CHARS = r"[^\p{White_Space}<>()?]"
_BALANCED_PARENS = rf"\((?:{_PATH_CHARS}+|(?:{_PATH_CHARS}*\({_PATH_CHARS}+\){_PATH_CHARS}*))\)"
# Ruby built the ending rule before Mastodon replaced the balanced parentheses rule, so it
# still holds twitter-text's original one
_PATH_ENDING = (
    rf"""(?:[^\p{{White_Space}}()?!*"'「」<>;:=,.$%\[\]~&|@]|{valid_url_balanced_parens.pattern})"""
)
_PATH = rf"(?:(?:{_PATH_CHARS}*(?:{_BALANCED_PARENS}{_PATH_CHARS}*)*{_PATH_ENDING})|(?:{_PATH_CHARS}+/))"
_UCHARS = (
    "\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef\U00010000-\U0001fffd\U00020000-\U0002fffd"
    "\U00030000-\U0003fffd\U00040000-\U0004fffd\U00050000-\U0005fffd\U00060000-\U0006fffd"
    "\U00070000-\U0007fffd\U00080000-\U0008fffd\U00090000-\U0009fffd\U000a0000-\U000afffd"
    "\U000b0000-\U000bfffd\U000c0000-\U000cfffd\U000d0000-\U000dfffd\U000e1000-\U000efffd"
    "\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd"
)
_QUERY_CHARS = rf"[a-z0-9!?*'();:&=+$/%#\[\]\-_.,~|@\^{_UCHARS}]"
_QUERY_ENDING = rf"[a-z0-9_&=#/\-{_UCHARS}]"

_URL = regex.compile(
    rf"(?:{valid_url_preceding_chars.pattern})"
    rf"(?P<url>(?P<protocol>{_PROTOCOL})?(?P<domain>{valid_domain.pattern})(?::[0-9]+)?"
    rf"(?:/{_PATH}*)?(?:\?{_QUERY_CHARS}*{_QUERY_ENDING})?)",
    regex.IGNORECASE | regex.VERSION0,
)

_WORD_CHARS = r"\p{L}\p{M}\p{Nd}\p{Pc}"  # Onigmo's [[:word:]]
_WORD = rf"[{_WORD_CHARS}]"
_USERNAME = r"[a-z0-9_]+(?:[.-]+[a-z0-9_]+)*"
_MENTION = regex.compile(
    rf"(?<![=/{_WORD_CHARS}])@(?P<name>{_USERNAME}(?:@{_WORD}+(?:[.-]+{_WORD}+)*)?)",
    regex.IGNORECASE | regex.VERSION0,
)
# twitter-text's end_mention_match: what may not follow a mention
_END_MENTION = regex.compile(rf"[@＠{latin_accent_chars.pattern}]|://")
_BLANK = regex.compile(r"\p{White_Space}*")
_GRAPHEME = regex.compile(r"\X")


class _Entity(NamedTuple):
    start: int
    end: int
    replacement: str


def _urls(text: str, url_length: int) -> list[_Entity]:
    """twitter-text's extract_urls_with_indices with a protocol required."""
    if ":" not in text:
        return []
    found: list[_Entity] = []
    for match in _URL.finditer(text):
        if match.group("protocol") is None:
            continue
        url, start, end = match.group("url"), match.start("url"), match.end("url")
        tco = valid_tco_url.match(url)
        if tco is not None:
            if len(tco.group(1)) > MAX_TCO_SLUG_LENGTH:
                continue
            end = start + len(tco.group(0))
        if not _valid_domain_length(len(url), match.group("domain")):
            continue
        found.append(_Entity(start, end, "x" * url_length))
    return found


def _valid_domain_length(url_length: int, domain: str) -> bool:
    try:
        encoded = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return url_length + max(0, len(encoded) - len(domain)) <= MAX_URL_LENGTH


def _mentions(text: str) -> list[_Entity]:
    """Mastodon's Extractor.extract_mentions_or_lists_with_indices, rewritten to `@user`."""
    if "@" not in text and "＠" not in text:
        return []
    found: list[_Entity] = []
    for match in _MENTION.finditer(text):
        if _END_MENTION.match(text, match.end()):
            continue
        username, _, domain = match.group("name").partition("@")
        if len(domain) > MAX_DOMAIN_LENGTH:
            continue
        found.append(_Entity(match.start("name") - 1, match.end("name"), f"@{username}"))
    return found


def countable_text(text: str, *, url_length: int = URL_LENGTH) -> str:
    """The text as StatusLengthValidator measures it: links and remote mentions rewritten."""
    if _BLANK.fullmatch(text):
        return ""
    kept: list[_Entity] = []
    # twitter-text's remove_overlapping_entities: by start, dropping any that overlaps the last kept
    for entity in sorted(_urls(text, url_length) + _mentions(text), key=lambda e: e.start):
        if not kept or kept[-1].end <= entity.start:
            kept.append(entity)
    parts: list[str] = []
    at = 0
    for entity in kept:
        parts += [text[at : entity.start], entity.replacement]
        at = entity.end
    parts.append(text[at:])
    return "".join(parts)


def mastodon_length(text: str, *, spoiler_text: str = "", url_length: int = URL_LENGTH) -> int:
    """How long Mastodon counts a post with this text and content warning."""
    combined = spoiler_text + countable_text(text, url_length=url_length)
    return sum(1 for _ in _GRAPHEME.finditer(combined))


@dataclass(frozen=True, slots=True)
class MastodonMeasure:
    """`Limits.measure` for one instance: links count as its `characters_reserved_per_url`."""

    url_length: int = URL_LENGTH

    def __call__(self, text: str) -> int:
        return mastodon_length(text, url_length=self.url_length)

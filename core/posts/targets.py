"""Where a drafted post will be published, and how that place counts its length.

X counts by its own weighted rules (every URL 23, CJK and emoji double), with
the official twitter-text configuration as ported by `twitter-text-parser`;
Bluesky counts graphemes; Mastodon graphemes with every URL 23 (its instance
may allow more than the usual 500); Telegram counts UTF-16 code units; the
others count characters.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Callable, Sequence

with warnings.catch_warnings():
    # twitter-text reads its emoji table through pkg_resources, which setuptools
    # deprecates with a warning at import; nothing for Herald's users to act on.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from twitter_text import parse_tweet

from core.platform import LengthUnit
from core.social.bluesky_text import graphemes
from core.social.mastodon_text import mastodon_length

#: a post's length as a place counts it
Measure = Callable[[str], int]


class Target(enum.Enum):
    X = "x"
    BLUESKY = "bluesky"
    MASTODON = "mastodon"
    DISCORD = "discord"
    TELEGRAM = "telegram"
    LINKEDIN = "linkedin"
    GENERIC = "generic"

    @property
    def limit(self) -> int:
        return _LIMITS[self]

    @property
    def label(self) -> str:
        return _LABELS[self]

    def measure(self, text: str) -> int:
        if self is Target.X:
            return int(parse_tweet(text).weightedLength)
        if self is Target.BLUESKY:
            return graphemes(text)
        if self is Target.MASTODON:
            return mastodon_length(text)
        if self is Target.TELEGRAM:
            return LengthUnit.UTF16.measure(text)
        return len(text)

    def fits(self, text: str) -> bool:
        return self.measure(text) <= self.limit


_LIMITS = {
    Target.X: 280,
    Target.BLUESKY: 300,
    Target.MASTODON: 500,  # the most common instance limit; a post is measured again by its instance's
    Target.DISCORD: 2000,
    Target.TELEGRAM: 4096,
    Target.LINKEDIN: 3000,
    Target.GENERIC: 3000,
}
_LABELS = {
    Target.X: "X (Twitter)",
    Target.BLUESKY: "Bluesky",
    Target.MASTODON: "Mastodon",
    Target.DISCORD: "Discord",
    Target.TELEGRAM: "Telegram",
    Target.LINKEDIN: "LinkedIn",
    Target.GENERIC: "a general audience",
}

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")
_NUMBERING = re.compile(r" \d+/\d+$")


class ThreadTooLong(Exception):
    """A thread would need more posts than allowed."""


def split_thread(text: str, target: Target, *, max_posts: int = 25) -> list[str]:
    """`text` as a numbered thread for `target` (see `split_to_fit`)."""
    return split_to_fit(text, target.limit, target.measure, max_posts=max_posts)


def split_to_fit(text: str, limit: int, measure: Measure, *, max_posts: int = 25) -> list[str]:
    """Numbered posts (" 1/3" appended), each within `limit` as `measure` counts, cut
    between sentences (a network's own counting: X's weights, Bluesky's graphemes…).

    A sentence longer than a post is cut between words. The numbering's room is
    reserved up front, assuming as many posts as could possibly be needed.
    """
    if measure(text) <= limit:
        return [text]
    sentences = [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]
    room = limit - measure(f" {max_posts}/{max_posts}")
    pieces: list[str] = []
    for sentence in sentences:
        pieces.extend(_fit_words(sentence, measure, room))
    posts: list[str] = []
    for piece in pieces:
        joined = f"{posts[-1]} {piece}" if posts else piece
        if posts and measure(joined) <= room:
            posts[-1] = joined
        else:
            posts.append(piece)
    if len(posts) > max_posts:
        raise ThreadTooLong(f"{len(posts)} posts, at most {max_posts}")
    total = len(posts)
    return [f"{post} {i}/{total}" if total > 1 else post for i, post in enumerate(posts, 1)]


def unnumbered(posts: Sequence[str]) -> str:
    """The text of a thread without the numbering `split_thread` added."""
    if len(posts) < 2:
        return "".join(posts)
    return " ".join(_NUMBERING.sub("", post) for post in posts)


def _fit_words(sentence: str, measure: Measure, room: int) -> list[str]:
    """Cut a sentence longer than a post between words (a word longer than a post, anywhere)."""
    if measure(sentence) <= room:
        return [sentence]
    parts: list[str] = []
    for word in sentence.split(" "):
        for chunk in _fit_chars(word, measure, room):
            joined = f"{parts[-1]} {chunk}" if parts else chunk
            if parts and measure(joined) <= room:
                parts[-1] = joined
            else:
                parts.append(chunk)
    return parts


def _fit_chars(word: str, measure: Measure, room: int) -> list[str]:
    chunks = [""]
    for char in word:
        if chunks[-1] and measure(chunks[-1] + char) > room:
            chunks.append("")
        chunks[-1] += char
    return chunks

"""Words as the chat log's index counts them: the same for a recorded message and
for a question, so that "launches", "launched" and "launching" meet.

Text is folded (NFKC, case), split into words by Unicode's word characters, cut
to a sane length, stripped of the most common function words, and stemmed with
the Snowball stemmer of the configured language (`snowballstemmer`, the
stemmers of the Snowball project, also used by Sphinx and others). Scripts that
Snowball does not stem (CJK, emoji) keep their words as they are.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

import snowballstemmer

#: longest word kept (longer runs are noise: hashes, base64, keyboard mashing)
MAX_WORD = 40
#: most distinct terms indexed for one message (a pasted log must not flood the index)
MAX_TERMS = 200

_WORD = re.compile(r"\w+", re.UNICODE)

#: function words that only make an index bigger (English; other languages' are kept)
# fmt: off
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he",
    "her", "his", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on",
    "or", "our", "she", "so", "than", "that", "the", "their", "them", "then", "there", "these",
    "they", "this", "to", "too", "us", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "you", "your",
})
# fmt: on


class Terms:
    """Splits text into index terms for one language (a Snowball algorithm name)."""

    def __init__(self, language: str = "english") -> None:
        if language not in snowballstemmer.algorithms():
            raise ValueError(f"no Snowball stemmer for {language!r}")
        self.language = language
        self._stemmer = snowballstemmer.stemmer(language)

    def words(self, text: str) -> list[str]:
        folded = unicodedata.normalize("NFKC", text).casefold()
        return [word for word in _WORD.findall(folded) if _kept(word)]

    def stems(self, words: Iterable[str]) -> list[str]:
        return list(self._stemmer.stemWords(list(words)))

    def counts(self, text: str) -> Counter[str]:
        """Term → how often it occurs in `text` (at most `MAX_TERMS` distinct terms)."""
        counts = Counter(self.stems(self.words(text)))
        if len(counts) > MAX_TERMS:
            counts = Counter(dict(counts.most_common(MAX_TERMS)))
        return counts

    def query(self, text: str) -> list[str]:
        """The distinct terms of a question, in order."""
        return list(dict.fromkeys(self.stems(self.words(text))))


def _kept(word: str) -> bool:
    """Not a function word, not noise; numbers of a few digits are kept (versions,
    years, prices), long ones are ids."""
    if len(word) > MAX_WORD or word in STOPWORDS:
        return False
    return not word.isdigit() or len(word) <= 6

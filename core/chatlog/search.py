"""Ranked retrieval over one chat's log: Okapi BM25 on the stemmed index.

Why BM25 on Herald's own index: neither Redis 7 nor the Valkey that Herald
embeds has full-text search (RediSearch and valkey-search are modules that
they do not ship), and loading a chat's messages into a search library on every
question would not scale to 100,000 messages. BM25 is the standard ranking
function of text search engines (Lucene's default); with stemming it meets word
forms, and /search asks the model for more words before it searches, which is
what a question phrased differently from the messages needs.

One search is two round trips: every (day, term) postings string in one
pipeline, then the best candidates' messages, which also give their exact
lengths for BM25's length normalisation.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from core.chatlog.store import DAY, POSTING, ChatLog, LoggedMessage

#: BM25's usual constants (term-frequency saturation, length normalisation)
K1 = 1.2
B = 0.75
#: candidates scored without length normalisation, before their messages are read
CANDIDATES = 64


@dataclass(frozen=True, slots=True)
class Hit:
    message: LoggedMessage
    score: float


@dataclass(frozen=True, slots=True)
class SearchFilter:
    since: float | None = None
    until: float | None = None
    author_id: str | None = None


async def search(
    log: ChatLog,
    platform: str,
    chat_id: str,
    query_terms: Sequence[str],
    *,
    limit: int = 8,
    where: SearchFilter = SearchFilter(),
    now: float | None = None,
) -> list[Hit]:
    """The chat's recorded messages that best match `query_terms` (index terms, from
    `Terms.query`), best first; none when nothing matches."""
    settings = await log.settings(platform, chat_id)
    if settings is None or not query_terms:
        return []
    now = time.time() if now is None else now
    first = int(max(where.since or 0.0, now - settings.retention) // DAY)
    last = int(min(where.until or now, now) // DAY)
    postings = await log.postings(platform, chat_id, range(first, last + 1), query_terms)
    docs, words = await log.totals(platform, chat_id)
    frequencies: dict[int, dict[str, int]] = defaultdict(dict)
    document_frequency: dict[str, int] = defaultdict(int)
    for term, packed in postings:
        for offset in range(0, len(packed) - POSTING + 1, POSTING):
            seq = int.from_bytes(packed[offset : offset + 4], "big")
            frequencies[seq][term] = frequencies[seq].get(term, 0) + packed[offset + 4]
        document_frequency[term] += len(packed) // POSTING
    n = max(docs, 1)
    idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in document_frequency.items()}
    rough = sorted(
        frequencies,
        key=lambda seq: -sum(idf[t] * f * (K1 + 1) / (f + K1) for t, f in frequencies[seq].items()),
    )[: max(CANDIDATES, limit * 4)]
    average = words / n if words else 1.0
    hits: list[Hit] = []
    for message in await log.messages(platform, chat_id, rough):
        if not _wanted(message, where):
            continue
        length = sum(log.terms.counts(message.text).values()) or 1
        norm = K1 * (1 - B + B * length / average)
        score = sum(idf[t] * f * (K1 + 1) / (f + norm) for t, f in frequencies[message.seq].items())
        hits.append(Hit(message, score))
    hits.sort(key=lambda hit: (-hit.score, -hit.message.at))
    return hits[:limit]


def _wanted(message: LoggedMessage, where: SearchFilter) -> bool:
    if where.since is not None and message.at < where.since:
        return False
    if where.until is not None and message.at > where.until:
        return False
    return where.author_id is None or message.author_id == where.author_id

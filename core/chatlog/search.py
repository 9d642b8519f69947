"""Ranked retrieval over one chat's log: Okapi BM25 on the stemmed index.

Why BM25 on Herald's own index: neither Redis 7 nor the Valkey that Herald
embeds has full-text search (RediSearch and valkey-search are modules that
they do not ship), and loading a chat's messages into a search library on every
question would not scale to 100,000 messages. BM25 is the standard ranking
function of text search engines (Lucene's default); with stemming it meets word
forms, and /search asks the model for more words before it searches, which is
what a question phrased differently from the messages needs.

One search is three round trips: the chat's settings, the question's postings
on every day in one pipeline, then the best candidates' messages, which
carry their word counts for BM25's length normalisation. Filters act before
the best are chosen: a person's own postings (`@id`) and a thread's (`#id`)
narrow the candidates, and a time span bounds the days read, then the
messages' own times.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from core.chatlog.store import (
    DAY,
    POSTING,
    ChatLog,
    LoggedMessage,
    author_term,
    entries,
    in_place,
    thread_term,
)

#: BM25's usual constants (term-frequency saturation, length normalisation)
K1 = 1.2
B = 0.75
#: candidates read per round, best first (scored without length normalisation)
CANDIDATES = 64
#: rounds of candidates read at most when a time filter drops some
MAX_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class Hit:
    message: LoggedMessage
    score: float


@dataclass(frozen=True, slots=True)
class SearchFilter:
    since: float | None = None
    until: float | None = None
    author_id: str | None = None
    #: a thread's (or forum topic's) id, "" for the chat outside its threads, None
    #: for anywhere in the chat (`store.in_place`)
    thread: str | None = None


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
    terms = [t for t in dict.fromkeys(query_terms) if not t.startswith(("@", "#"))]
    if settings is None or not terms:
        return []
    now = time.time() if now is None else now
    first = int(max(where.since or 0.0, now - settings.retention) // DAY)
    last = int(min(where.until or now, now) // DAY)
    narrowing = [author_term(where.author_id)] if where.author_id is not None else []
    narrowing += [thread_term(where.thread)] if where.thread else []
    postings = await log.postings(platform, chat_id, range(first, last + 1), [*terms, *narrowing])
    by_term, allowed = _split(postings, narrowing)
    idf = _idf(by_term, terms, settings.live or settings.docs)
    scores = _rough_scores(by_term, idf, allowed)
    ranked = heapq.nlargest(CANDIDATES * MAX_ROUNDS, scores, key=scores.__getitem__)
    counts = _counts(by_term, idf, set(ranked))
    average = settings.words / settings.docs if settings.docs and settings.words else 1.0
    hits: list[Hit] = []
    for start in range(0, len(ranked), CANDIDATES):
        for message in await log.messages(platform, chat_id, ranked[start : start + CANDIDATES]):
            if _in_span(message, where):
                norm = K1 * (1 - B + B * max(message.words, 1) / average)
                score = sum(w * f * (K1 + 1) / (f + norm) for w, f in counts[message.seq])
                hits.append(Hit(message, score))
        if len(hits) >= limit:
            break
    hits.sort(key=lambda hit: (-hit.score, -hit.message.at))
    return hits[:limit]


def _split(
    postings: Sequence[tuple[str, bytes]], narrowing: Sequence[str]
) -> tuple[dict[str, list[bytes]], set[int] | None]:
    """Postings by term, and the seqs that every narrowing term (a person's `@id`, a
    thread's `#id`) lists, when there are such terms."""
    by_term: dict[str, list[bytes]] = defaultdict(list)
    for term, packed in postings:
        by_term[term].append(packed)
    allowed: set[int] | None = None
    for term in narrowing:
        listed = {seq for packed in by_term.pop(term, []) for seq, _ in entries(packed)}
        allowed = listed if allowed is None else allowed & listed
    return by_term, allowed


def _idf(by_term: dict[str, list[bytes]], terms: Sequence[str], docs: int) -> dict[str, float]:
    n = max(docs, 1)
    idf: dict[str, float] = {}
    for term in terms:
        df = sum(len(packed) for packed in by_term.get(term, ())) // POSTING
        if df:
            idf[term] = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf


def _rough_scores(
    by_term: dict[str, list[bytes]], idf: dict[str, float], allowed: set[int] | None
) -> dict[int, float]:
    """BM25 without length normalisation: enough to pick the candidates. The hot
    loop of a search: one dict update per posting, weights looked up by count."""
    scores: dict[int, float] = defaultdict(float)
    for term, weight_of in idf.items():
        weight = [weight_of * f * (K1 + 1) / (f + K1) for f in range(256)]
        for packed in by_term[term]:
            if allowed is None:
                for seq, f in entries(packed):
                    scores[seq] += weight[f]
            else:
                for seq, f in entries(packed):
                    if seq in allowed:
                        scores[seq] += weight[f]
    return scores


def _counts(
    by_term: dict[str, list[bytes]], idf: dict[str, float], candidates: set[int]
) -> dict[int, list[tuple[float, int]]]:
    """(idf, count) of every query term in each candidate, for its exact score."""
    counts: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for term, weight in idf.items():
        for packed in by_term[term]:
            for seq, f in entries(packed):
                if seq in candidates:
                    counts[seq].append((weight, f))
    return counts


def _in_span(message: LoggedMessage, where: SearchFilter) -> bool:
    if not in_place(message, where.thread):
        return False
    if where.since is not None and message.at < where.since:
        return False
    return where.until is None or message.at <= where.until

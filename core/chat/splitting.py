"""Split a Markdown answer into messages that fit a platform's length limit.

How it works, and why:

* Greedy, left to right. For each part the splitter walks forward from the
  part's start until the first character that would make the part overflow
  (counting the reopened fence line in front and the room for a closing fence
  line behind). The cut is then chosen using only the text up to and including
  that character, plus the fence state carried in. Appending text can therefore
  never move a cut that was already made (*prefix stability*): the streaming
  renderer relies on this to edit each finished message exactly once.
* Cuts prefer, in order: a paragraph break (or the edge of a code block), a line
  break, a line break inside a code block, a sentence end, a word break, a break
  inside a code line, and finally a hard cut at a grapheme boundary. A better
  kind of cut only wins if it keeps the part at least `MIN_FILL` of the window
  full, so one early blank line does not produce a tiny message.
* Whitespace at a cut is dropped (inside a code block the indentation of the
  next line is kept). Everything else is kept: the parts' bodies are slices of
  the input, only whitespace lies between them (see `Part`).
* Code fences (```` ``` ```` or ``~~~`` lines, optional info string, any leading
  spaces) are tracked line by line, the way every part will be rendered on its
  own. A part cut inside a fence gets a closing line, the next part reopens the
  fence with the same opening line; an unclosed fence at the end of the text is
  closed too. Every part therefore renders with balanced fences.
* `measure` must be additive over concatenation (code points, UTF-16 units).
  Python strings never hold half of a surrogate pair, and hard cuts avoid
  splitting combining marks, variation selectors, ZWJ sequences and flags.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

Measure = Callable[[str], int]

MIN_LIMIT = 64
#: a preferred boundary must leave the part at least this full (of the window)
MIN_FILL = 0.3
#: how far back a hard cut looks for a grapheme boundary before giving up
_HARD_CUT_LOOKBACK = 64

_OPEN_RE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
_CLOSE_RE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t\r]*")

# Candidate tiers, best first.
_PARA = 0  # blank line, or just before/after a code block
_LINE = 1  # line break outside a code block
_LINE_IN = 2  # line break inside a code block (costs a close/reopen)
_SENTENCE = 3  # ". " "! " "? " "。" ... outside a code block
_WORD = 4  # space, or between two CJK characters, outside a code block
_INLINE_IN = 5  # sentence/word break inside a code line
_TIERS = 6

_ZWJ = "\u200d"
_SENTENCE_ENDS = frozenset(".!?…。！？｡")
_CJK_SENTENCE_ENDS = frozenset("。！？｡")
_CJK_SOFT = frozenset("、，；：")
_CLOSERS = frozenset("\"')]»”’*_」』）】〕〉》")


@dataclass(frozen=True, slots=True)
class _Fence:
    char: str
    length: int
    opener: str  # the opening line, stripped

    @property
    def close(self) -> str:
        return self.char * self.length


def _open_fence(line: str) -> _Fence | None:
    m = _OPEN_RE.match(line)
    if m is None:
        return None
    marker, info = m.group(1), m.group(2)
    if marker[0] == "`" and "`" in info:
        return None  # CommonMark: a backtick fence's info string has no backticks
    return _Fence(marker[0], len(marker), line.strip())


def _after_line(line: str, fence: _Fence | None) -> _Fence | None:
    """Fence state after one complete line (without its newline)."""
    if fence is None:
        return _open_fence(line)
    m = _CLOSE_RE.fullmatch(line)
    if m is not None and m.group(1)[0] == fence.char and len(m.group(1)) >= fence.length:
        return None
    return fence


def _fence_like(line: str) -> bool:
    return line.lstrip(" \t")[:3] in ("```", "~~~")


def closing_fence(text: str) -> str:
    """What closes a code block left open at the end of `text` ("" if none).

    Lets callers append a note after an interrupted answer without the note
    landing inside a code block.
    """
    fence: _Fence | None = None
    for line in text.split("\n"):
        fence = _after_line(line, fence)
    return "" if fence is None else "\n" + fence.close


@dataclass(frozen=True, slots=True)
class Part:
    """One message: `head + body + tail`.

    `body == source[start:end]`; `head` is "" or a reopened fence line plus
    "\\n", `tail` is "" or "\\n" plus a closing fence. Between consecutive
    bodies (and before the first, after the last) the source has only
    whitespace.
    """

    head: str
    body: str
    tail: str
    start: int
    end: int

    @property
    def text(self) -> str:
        return self.head + self.body + self.tail


def split_message(text: str, limit: int, measure: Measure = len) -> list[str]:
    """Split `text` into messages of at most `limit` (as counted by `measure`)."""
    return [part.text for part in split_parts(text, limit, measure)]


def split_parts(text: str, limit: int, measure: Measure = len) -> list[Part]:
    """Like `split_message`, but says where each part came from."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    parts: list[Part] = []
    pos = len(text) - len(text.lstrip())
    fence: _Fence | None = None
    while pos < len(text):
        part, nxt = _next_part(text, pos, fence, limit, measure)
        parts.append(part)
        if nxt is None:
            break
        pos, fence = nxt
    return parts


@dataclass(slots=True)
class _Line:
    start: int
    end: int  # index of the "\n", or -1 for the unfinished last line of the window
    before: _Fence | None
    after: _Fence | None
    fence_like: bool


@dataclass(frozen=True, slots=True)
class _Cut:
    end: int  # the body ends here
    next_start: int
    fence: _Fence | None  # open at the cut


def _head(fence: _Fence | None, limit: int, measure: Measure) -> str:
    if fence is None:
        return ""
    head = fence.opener + "\n"
    if measure(head) + measure("\n" + fence.close) > limit // 2:
        head = fence.close + "\n"  # absurd info string: reopen without it
    return head


_MARKER_RUN_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def _fits_whole(
    text: str, pos: int, fence: _Fence | None, head: str, limit: int, measure: Measure
) -> Part | None:
    """Fast path for the common case: the rest fits in one part with room to spare.

    Bounds the character-by-character walk of `_next_part` from above (all of
    the rest, the longest closing line any prefix could reserve), so it only
    answers when the walk would find no overflow either: same parts, no loop.
    """
    rest = text[pos:]
    longest = max((len(m) for m in _MARKER_RUN_RE.findall(rest)), default=0)
    if fence is not None:
        longest = max(longest, fence.length)
    reserve = max(measure("\n" + c * longest) for c in "`~") if longest else 0
    if measure(head) + measure(rest) + reserve > limit:
        return None
    state = fence
    for line in rest.split("\n"):
        state = _after_line(line, state)
    body = rest.rstrip()
    tail = "" if state is None else "\n" + state.close
    return Part(head, body, tail, pos, pos + len(body))


def _next_part(
    text: str, pos: int, fence: _Fence | None, limit: int, measure: Measure
) -> tuple[Part, tuple[int, _Fence | None] | None]:
    head = _head(fence, limit, measure)
    last_part = _fits_whole(text, pos, fence, head, limit, measure)
    if last_part is not None:
        return last_part, None
    scan = _scan(text, pos, fence, measure(head), limit, measure)
    if scan.overflow < 0:
        body = text[pos:].rstrip()
        end_state = _after_line(text[scan.line_start :], scan.state)
        tail = "" if end_state is None else "\n" + end_state.close
        return Part(head, body, tail, pos, pos + len(body)), None
    lines = scan.lines
    partial = text[scan.line_start : scan.overflow + 1]
    lines.append(_Line(scan.line_start, -1, scan.state, None, _fence_like(partial)))
    cut = _choose(text, pos, scan.overflow, lines)
    body = text[pos : cut.end]
    tail = "" if cut.fence is None else "\n" + cut.fence.close
    return Part(head, body, tail, pos, cut.end), (cut.next_start, cut.fence)


@dataclass(slots=True)
class _Scan:
    overflow: int  # index of the first character that does not fit, or -1
    lines: list[_Line]  # the complete lines before it
    line_start: int  # where the line holding `overflow` (or the last line) starts
    state: _Fence | None  # the fence open at `line_start`


def _scan(text: str, pos: int, fence: _Fence | None, cost: int, limit: int, measure: Measure) -> _Scan:
    """Walk from `pos` until a character would overflow the part (this loop is hot)."""
    nonws_cost = cost
    state = fence  # at the start of the current line
    close_cost = 0 if state is None else measure("\n" + state.close)
    line_start = pos
    lines: list[_Line] = []
    # the current line's leading fence marker run, for the closing-line reserve
    run_char = ""
    run_len = 0
    in_run = True
    unit: dict[str, int] = {}  # measure() per character, memoised
    for i in range(pos, len(text)):
        ch = text[i]
        step = unit.get(ch)
        if step is None:
            step = unit[ch] = measure(ch)
        cost += step
        if ch == "\n":
            line = text[line_start:i]
            after = _after_line(line, state)
            lines.append(_Line(line_start, i, state, after, _fence_like(line)))
            if after is not state:
                close_cost = 0 if after is None else measure("\n" + after.close)
            state = after
            line_start = i + 1
            run_char, run_len, in_run = "", 0, True
            continue
        if ch.isspace():
            if run_len or ch not in " \t":
                in_run = False
            continue
        if in_run:
            if ch == run_char or (not run_char and ch in "`~"):
                run_char = ch
                run_len += 1
            else:
                in_run = False
        nonws_cost = cost
        # Room for a closing line: conservative (a line that might close or
        # open a fence counts as open), but a function of the prefix only.
        if state is not None:
            reserve = close_cost
        elif run_len >= 3:
            reserve = measure("\n" + run_char * run_len)
        else:
            reserve = 0
        if nonws_cost + reserve > limit:
            return _Scan(i, lines, line_start, state)
    return _Scan(-1, lines, line_start, state)


def _choose(text: str, pos: int, last: int, lines: list[_Line]) -> _Cut:
    """Pick the cut for a part starting at `pos` whose text[last] overflows.

    Reads only text[pos:last + 1]; bodies may end anywhere up to `last`.
    """
    starts = [line.start for line in lines]
    best: list[_Cut | None] = [None] * _TIERS

    def line_of(index: int) -> _Line:
        return lines[bisect.bisect_right(starts, index) - 1]

    j = pos
    while j <= last:
        ch = text[j]
        if ch.isspace():
            r = j
            while text[r].isspace():  # stops at text[last] at the latest
                r += 1
            if j > pos:
                found = _ws_candidate(text, j, r, last, line_of(j - 1))
                if found is not None:
                    tier, cut = found
                    best[tier] = cut
            j = r
            continue
        if j > pos and ord(text[j - 1]) >= 0x3000 and not text[j - 1].isspace():
            found = _cjk_candidate(text, j, line_of(j - 1))
            if found is not None:
                tier, cut = found
                best[tier] = cut
        j += 1

    threshold = pos + MIN_FILL * (last - pos)
    chosen: _Cut | None = None
    for candidate in best:
        if candidate is not None and (chosen is None or candidate.end > chosen.end):
            chosen = candidate
        if chosen is not None and chosen.end >= threshold:
            return chosen
    if chosen is not None:
        return chosen  # only small soft cuts exist; still better than a hard cut
    return _hard_cut(text, pos, last, line_of)


def _ws_candidate(text: str, c: int, r: int, last: int, line: _Line) -> tuple[int, _Cut] | None:
    """A cut at the whitespace run text[c:r] (text[c-1] and text[r] are not space)."""
    if _is_extend(text[r]):
        return None  # the mark belongs to the space; leave that odd grapheme alone
    first_nl = text.find("\n", c, r)
    if first_nl < 0:  # inside a line
        if line.fence_like or _may_be_marker(text[r : min(r + 3, last + 1)]):
            return None  # keep fence lines whole; a part may not start with a fence
        in_fence = line.before is not None
        if in_fence:
            tier = _INLINE_IN
        else:
            tier = _SENTENCE if _sentence_end(text, c) else _WORD
        return tier, _Cut(c, r, line.before)
    after = line.after
    if after is None:
        para = (
            text.count("\n", c, r) >= 2
            or line.before is not None  # just closed a code block
            or _fence_like(text[r : r + 3] if r + 3 <= last + 1 else "")
        )
        return (_PARA if para else _LINE), _Cut(c, r, None)
    if line.before is None:
        return None  # right after the opening line: would leave an empty block
    next_start = text.rfind("\n", c, r) + 1
    end = text.find("\n", next_start, last + 1)
    next_line = text[next_start : (end if end >= 0 else last + 1)]
    if end >= 0:
        if _after_line(next_line, after) is None:
            return None  # the next line closes the block: cut after it instead
    elif _may_close(next_line, after):
        return None
    return _LINE_IN, _Cut(c, next_start, after)


def _cjk_candidate(text: str, c: int, line: _Line) -> tuple[int, _Cut] | None:
    """A cut between two non-space characters: after 。！？, or between CJK."""
    if line.fence_like:
        return None
    prev, ch = text[c - 1], text[c]
    if ch in _CLOSERS or ch in _CJK_SENTENCE_ENDS or ch in _CJK_SOFT or ch in "`~":
        return None
    in_fence = line.before is not None
    if prev in _CJK_SENTENCE_ENDS and not _is_extend(ch):
        tier = _INLINE_IN if in_fence else _SENTENCE
    elif (_is_cjk(prev) or prev in _CJK_SOFT) and _is_cjk(ch):
        tier = _INLINE_IN if in_fence else _WORD
    else:
        return None
    return tier, _Cut(c, c, line.before)


def _hard_cut(text: str, pos: int, last: int, line_of: Callable[[int], _Line]) -> _Cut:
    """Cut inside a word, at a grapheme boundary when one is near enough."""
    c = last
    for k in range(last, max(pos, last - _HARD_CUT_LOOKBACK), -1):
        if (
            not text[k - 1].isspace()
            and not text[k].isspace()
            and _is_boundary(text, k)
            and not (text[k] in "`~" and text[k - 1] in "`~")
        ):
            c = k
            break
    c = max(c, pos + 1)
    if not text[pos:c].strip():
        c = max(last, pos + 1)
    line = line_of(c - 1)
    state = line.before
    if line.fence_like:  # this part will render its last line as cut
        state = _after_line(text[line.start : c], state)
    end = len(text[:c].rstrip())
    return _Cut(max(end, pos + 1), c, state)


def _may_be_marker(known: str) -> bool:
    """Could a line starting with `known` (1-3 characters) be a fence line?"""
    return bool(known) and known[0] in "`~" and known == known[0] * len(known)


def _may_close(known: str, fence: _Fence) -> bool:
    """Could the unfinished line `known` still turn out to close `fence`?"""
    rest = known.lstrip(" \t")
    marker = rest.rstrip(" \t\r")
    return marker == fence.char * len(marker)


def _sentence_end(text: str, c: int) -> bool:
    k = c - 1
    if text[k] in _CLOSERS and k > 0:
        k -= 1
    ch = text[k]
    if ch not in _SENTENCE_ENDS:
        return False
    # "1. item" and " ." are not sentence ends
    return not (ch == "." and k > 0 and (text[k - 1].isdigit() or text[k - 1].isspace()))


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # kana
        or 0x3400 <= o <= 0x4DBF
        or 0x4E00 <= o <= 0x9FFF
        or 0xAC00 <= o <= 0xD7A3  # hangul syllables
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF
    )


def _is_extend(ch: str) -> bool:
    """Does `ch` attach to the character before it (never cut before it)?"""
    o = ord(ch)
    if (
        ch == _ZWJ
        or 0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0x1F3FB <= o <= 0x1F3FF  # skin tones
        or 0xE0020 <= o <= 0xE007F  # tag sequences (subdivision flags)
        or 0xE0100 <= o <= 0xE01EF
        or 0x1160 <= o <= 0x11FF  # hangul jamo vowels/trailing consonants
        or 0xDC00 <= o <= 0xDFFF  # a stray low surrogate
    ):
        return True
    return unicodedata.category(ch) in ("Mn", "Me", "Mc")


def _is_ri(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _is_boundary(text: str, c: int) -> bool:
    """Is text[c-1]|text[c] a grapheme cluster boundary (close enough to UAX #29)?"""
    a, b = text[c - 1], text[c]
    if (a == "\r" and b == "\n") or a == _ZWJ or _is_extend(b):
        return False
    if _is_ri(a) and _is_ri(b):
        k = c - 1
        while k >= 0 and _is_ri(text[k]):
            k -= 1
        return (c - 1 - k) % 2 == 0  # flags pair up from the start of the run
    return True

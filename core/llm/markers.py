"""Neutralising chat-template markers in text that is data, not Herald's own words.

A chat template joins messages into one text with markers between the turns
(`<|im_start|>user`, `<|start_header_id|>`, `</s>`, `[INST]`, `<start_of_turn>`),
and the server's tokenizer reads every special-token string in that text as the
special token itself. A message holding a marker would therefore forge a turn: a
system prompt, another user, an answer. `neutralise` turns every marker into
text that is no longer one, and still reads the same: its angle and square
brackets become look-alikes (`‹|im_start|›`, `‹/s›`, `⁅INST⁆`).

Look-alikes rather than an inserted invisible character, and these ones,
because tokenizers normalise text before (some) added tokens are matched:
NFKC maps full-width and small-form brackets (`＜`, `﹤`) back to `<`; BERT's
cleaning and accent stripping delete zero-width and format characters and
combining marks, and strip `≮` to `<`. U+2039/U+203A/U+2045/U+2046 have no
decomposition, are not format characters or marks, and have no case, so no
normaliser turns them back into a bracket. Markers are found the same
worst-case way: in a folded view of the text (NFKD, case-folded, with control
and format characters and marks removed), so `＜|im_start|＞` or
`<\u2060|im_start|>` is a marker too.

The patterns are generic where the families are (`<|…|>`: ChatML, Llama 3,
Phi, Zephyr, Command-R, gpt-oss, DeepSeek's `<｜…｜>`), and listed where they are
ordinary-looking tags (Llama 2/Mistral `<s>`, `</s>`, `[INST]`, `<<SYS>>`; Gemma
`<start_of_turn>`; Qwen `<think>`, `<tool_call>`). They do not come from the
model: TGI's `/info` does not publish its special tokens, OpenAI-compatible
servers neither, and a fixed set protects every model the same way.
"""

from __future__ import annotations

import re
import string
import unicodedata
from types import MappingProxyType

#: the characters other than `<` and `[` that a normaliser may turn into one (NFKD:
#: ≮ ﹤ ＜ ﹇ ［; checked by the tests against all of Unicode)
_BRACKETISH = "\u226e\ufe64\uff1c\ufe47\uff3b"
#: only texts holding one of these are examined further
_OPENERS = re.compile(f"[<\\[{_BRACKETISH}]")
#: a bracket inside a marker, as folded, and what replaces the character it came from
_LOOKALIKES = MappingProxyType({"<": "\u2039", ">": "\u203a", "[": "\u2045", "]": "\u2046"})
#: a template marker, in folded text (see `fold`)
MARKER = re.compile(
    r"<\|[^\s<>\[\]|]{1,64}\|>"
    r"|</?(?:s|bos|eos|pad|unk|mask|sop|eop|think|tool_call|tool_response|bos_token|eos_token"
    r"|(?:start|end)_of_[a-z_]{1,32})>"
    r"|<</?sys>>"
    r"|\[/?(?:inst|system_prompt|tool_calls|available_tools|tool_results|tool_content"
    r"|img|img_break|img_end|prefix|middle|suffix|think|gmask|smask|mask)\]"
)
#: characters `fold` may change beyond lower-casing: neither printable ASCII nor whitespace
_UNUSUAL = re.compile(r"[^\x20-\x7e\t\n\r]+")
#: where a marker may hide from a lower-cased search (no marker spans ASCII whitespace)
_DISGUISED = re.compile(rf"[<\[{_BRACKETISH}](?:(?<=[{_BRACKETISH}])|[^\t\n\r ]*?[^\x20-\x7e\t\n\r])")
#: removed by some normaliser: controls, format characters, unassigned, private use, marks
_DROPPED = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Mc", "Me"})
_LOWER = MappingProxyType({ord(c): c.lower() for c in string.ascii_uppercase})


def fold(char: str) -> str:
    """The most any tokenizer normaliser could make of `char`: NFKD, case-folded, and
    without the characters normalisers delete (tab, newline and return stay)."""
    if (
        unicodedata.is_normalized("NFKD", char)
        and char.casefold() == char
        and unicodedata.category(char) not in _DROPPED
    ):
        return char  # most characters, cheaply
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", char).casefold())
    return "".join(c for c in folded if c in "\t\n\r" or unicodedata.category(c) not in _DROPPED)


def contains_marker(text: str) -> bool:
    """True when some tokenizer could read a template marker in `text`.

    Folding every character is slow, and needed only where a marker could be
    disguised: behind a bracket-like character, or a bracket followed, before
    any space, by a character other than printable ASCII.
    """
    if MARKER.search(text.lower()) is None and _DISGUISED.search(text) is None:
        return False
    return MARKER.search(_folded(text)) is not None


def neutralise(text: str) -> str:
    """`text` with every template marker made plain text; unchanged when it has none.

    Swapping a marker's brackets can complete an enclosing one (`<|a<s>b|>`), so
    the text is searched again until no marker is left; each round removes
    brackets, so this ends (almost always after one round, or two).
    """
    if text.isascii():
        if "<" not in text and "[" not in text:
            return text
    elif _OPENERS.search(text) is None:
        return text
    while contains_marker(text):
        text = _swap_brackets(text)
    return text


def _folded(text: str) -> str:
    """`fold` applied to each character of `text` (printable ASCII is only lower-cased)."""
    if _UNUSUAL.search(text) is None:
        return text.lower()
    table: dict[int, str] = {**_LOWER}
    for char in set("".join(_UNUSUAL.findall(text))):
        table[ord(char)] = fold(char)
    return text.translate(table)


def _swap_brackets(text: str) -> str:
    """`text` with the brackets of every marker found in its folded view swapped for
    look-alikes, in the characters they were folded from."""
    pieces = [char.lower() if " " <= char <= "~" else fold(char) for char in text]
    folded = "".join(pieces)
    origin = [index for index, piece in enumerate(pieces) for _ in piece]
    chars = list(text)
    for match in MARKER.finditer(folded):
        for pos in range(match.start(), match.end()):
            lookalike = _LOOKALIKES.get(folded[pos])
            if lookalike is not None:
                chars[origin[pos]] = lookalike
    return "".join(chars)

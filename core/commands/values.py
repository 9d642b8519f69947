"""Option values that several commands read the same way: a person, a duration."""

from __future__ import annotations

import re

_MENTION = re.compile(r"^<@!?(\d+)>$|^(\d+)$")
_DURATION = re.compile(r"^(\d{1,5})\s*(h|d|w)$", re.IGNORECASE)
_UNIT = {"h": 3600, "d": 86400, "w": 7 * 86400}


def user_id(text: str) -> str | None:
    """A person named by a mention (`<@123>`, as Discord sends it) or a bare user id."""
    match = _MENTION.match(text.strip())
    return (match[1] or match[2]) if match else None


def duration(text: str) -> float | None:
    """`12h`, `30d`, `2w` → seconds; None when `text` is not written that way."""
    match = _DURATION.match(text.strip())
    return int(match[1]) * _UNIT[match[2].lower()] if match else None

"""discord.py, adjusted for many answers streaming at once.

Two of discord.py's habits cost a bot that streams hundreds of answers more than
everything Herald does per answer: a quadratic sweep of its rate-limit buckets, and a
full `Message` built for every gateway event that tells of a message or an edit,
Herald's own included (six or so per answer). Both adjustments reach into
discord.py's internals, so they live here together, each checked by a test against the
real library, and each leaves discord.py as it is when the internal it needs is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import discord

#: discord.py's own sweep starts at this many buckets
SWEEP_FLOOR = 256


def amortise_bucket_sweep(http: discord.http.HTTPClient) -> None:
    """Sweep discord.py's rate-limit buckets for idle ones only when their number has doubled.

    discord.py sweeps all its buckets each time it makes a new one, once it holds 256.
    An answer makes three (send, edit, typing) per channel, so 1,000 channels answered
    at once make 3,000, and the sweeps are quadratic: 10% of the process's CPU in
    `bench.streaming_discord`. Sweeping at twice the count left by the last sweep removes
    the same buckets (idle 5 minutes), at an amortised constant cost per new bucket,
    while never holding more than twice the live ones. A discord.py without that sweep
    keeps its own way.
    """
    sweep = getattr(http, "_try_clear_expired_ratelimits", None)
    if sweep is None or not isinstance(getattr(http, "_buckets", None), dict):
        return
    threshold = SWEEP_FLOOR

    def amortised() -> None:
        nonlocal threshold
        count = len(http._buckets)
        if count >= threshold:
            sweep()
            threshold = max(SWEEP_FLOOR, 2 * len(http._buckets))

    http._try_clear_expired_ratelimits = amortised  # type: ignore[method-assign]


def skip_own_messages(client: discord.Client) -> None:
    """Leave the gateway's news of the bot's own messages and edits unparsed.

    Every message Herald sends comes back as a MESSAGE_CREATE, and each streaming edit
    as a MESSAGE_UPDATE. From each, discord.py builds a `Message` (and caches it, or
    dispatches `raw_message_edit`) for Herald to ignore: bots are never recorded and
    never answered. That was 4% of the process's CPU at 1,000 answers streaming, and
    the creates arrive exactly while the other answers' first messages are due. Herald
    sends and edits over REST without discord.py's message cache, and a reply to one of
    its messages carries the message it replies to. Everyone else's messages are parsed
    as before.
    """
    parsers = getattr(getattr(client, "_connection", None), "parsers", None)
    if not isinstance(parsers, dict):
        return
    for event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
        if event in parsers:
            parsers[event] = _unless_own(client, parsers[event])


def _unless_own(client: discord.Client, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    def unless_own(data: Any) -> None:
        me = client.user
        author = data.get("author") if isinstance(data, dict) else None
        if me is not None and isinstance(author, dict) and author.get("id") == str(me.id):
            return
        parse(data)

    return unless_own

"""Herald's own messages (replies to commands, refusals, errors) onto a surface."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from core.chat.splitting import split_message
from core.platform import Button, MessageRef, PlatformError, Surface

log = logging.getLogger("herald.engine")


async def say(surface: Surface, text: str, buttons: Sequence[Button] = ()) -> MessageRef | None:
    """Send `text`, in parts if the platform needs them, with `buttons` under the last
    part — or, where there are no buttons, the commands they stand for. A platform
    failure is logged, not raised: a reply that could not be sent must not turn into
    a second error message. The last part sent, if any was."""
    caps = surface.capabilities
    if buttons and not caps.has_buttons:
        text += "\n\n" + " · ".join(f"/{button.command}" for button in buttons)
        buttons = ()
    parts = split_message(text, caps.max_length, caps.measure)
    previous: MessageRef | None = None
    try:
        for number, part in enumerate(parts, 1):
            last = number == len(parts)
            previous = await surface.send(part, reply_to=previous, buttons=buttons if last else ())
    except PlatformError as exc:
        log.warning("could not send a message: %s", exc)
    return previous

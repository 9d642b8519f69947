"""A surface that records every message an answer sends, so that a replica taking
the answer over after a crash shows it in the same messages.

The first time, each message sent is recorded beside its event (one round trip per
message, after the platform gave its id). When an event is taken over, the answer
starts over in the messages recorded: the n-th message it sends replaces the text of
the n-th one recorded, and those it no longer needs are deleted (or, where the
platform can't, say that the answer moved up). A message that must carry buttons is
sent anew: an edit can't add them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from core import messages
from core.intake.stream import Entry, IntakeStream
from core.platform import Button, ForwardingSurface, MessageNotModified, MessageRef, PlatformError, Surface

log = logging.getLogger("herald.intake")


class JournaledSurface(ForwardingSurface):
    def __init__(
        self, surface: Surface, stream: IntakeStream, entry: Entry, recorded: Sequence[MessageRef] = ()
    ) -> None:
        super().__init__(surface)
        self._stream = stream
        self._entry = entry
        self._recorded = list(recorded)
        self._reused: set[int] = set()
        self._sent = 0

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        index = self._sent
        self._sent += 1
        if index < len(self._recorded) and not buttons:
            ref = self._recorded[index]
            try:
                await self._surface.edit(ref, text)
            except MessageNotModified:
                pass
            except PlatformError as exc:  # deleted meanwhile, or too old to edit: a new one
                log.info("intake: could not reuse message %s (%s); sending a new one", ref.id, exc)
            else:
                self._reused.add(index)
                return ref
        ref = await self._surface.send(text, reply_to=reply_to, buttons=buttons)
        await self._stream.record(self._entry.platform, self._entry.entry_id, index, ref)
        return ref

    async def settle(self) -> None:
        """After the answer: the recorded messages it did not reuse go (never raises).
        When it sent nothing (the replica that died had finished, and only its
        acknowledgement was lost), they are the answer, and stay."""
        if not self._sent:
            return
        for index, ref in enumerate(self._recorded):
            if index in self._reused:
                continue
            try:
                await self._surface.delete(ref)
            except PlatformError:
                try:
                    await self._surface.edit(ref, messages.ANSWER_MOVED)
                except PlatformError as exc:
                    log.warning("intake: could not clear message %s left by a restart: %s", ref.id, exc)

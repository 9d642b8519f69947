"""State both model backends share: the transport, the server's limits, the gate."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from core.llm.base import Finished, GenerationParams, ModelInfo, StreamEvent, TextDelta
from core.llm.gate import ConcurrencyGate
from core.llm.transport import DEFAULT_OPTIONS, Transport, TransportOptions


class ClientBase:
    def __init__(
        self,
        base_url: str,
        options: TransportOptions = DEFAULT_OPTIONS,
        *,
        logger: logging.Logger,
    ) -> None:
        self.options = options
        self.queue_timeout = options.queue_timeout
        self.log = logger
        self.transport = Transport(base_url, options, logger=logger)
        self._info: ModelInfo | None = None
        self._gate: ConcurrencyGate | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("the model client is not started (call start() first)")
        return self._info

    @property
    def gate(self) -> ConcurrencyGate:
        if self._gate is None:
            raise RuntimeError("the model client is not started (call start() first)")
        return self._gate

    async def close(self) -> None:
        """Close the shared session; `start()` may open a new one later."""
        await self.transport.close()
        self._info = None
        self._gate = None

    async def generate(
        self, events: AsyncGenerator[StreamEvent, None], params: GenerationParams
    ) -> AsyncGenerator[StreamEvent, None]:
        """`events` from the server, in one of its slots, never past `max_new_tokens`.

        A server may ignore the limit and stream for ever, each token in time for the
        idle timeout. Every text event carries at least one token (exactly one on
        TGI's native stream), so an event past the limit proves it: the stream ends
        there as a `length` cut, and is closed at once, which stops the server too.
        """
        tokens = 0
        async with self.gate.slot(), contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    if tokens >= params.max_new_tokens:
                        self.log.warning("model server went past max_new_tokens=%d: stopped there", tokens)
                        yield Finished("length", tokens, overran=True)
                        return
                    tokens += 1
                yield event

"""State both model backends share: the transport, the server's limits, the gate."""

from __future__ import annotations

import logging

from core.llm.base import ModelInfo
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

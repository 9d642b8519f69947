"""State both model backends share: the transport, the server's limits, the gate."""

from __future__ import annotations

import logging

from core.llm.base import ModelInfo
from core.llm.gate import ConcurrencyGate
from core.llm.http import Transport


class ClientBase:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        connect_timeout: float,
        idle_timeout: float,
        queue_timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        logger: logging.Logger,
    ) -> None:
        self.queue_timeout = queue_timeout
        self.log = logger
        self.transport = Transport(
            base_url,
            api_key=api_key,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            logger=logger,
        )
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

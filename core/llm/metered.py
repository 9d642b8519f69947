"""A model client that counts what passes through it: tokens in and out, and failures
by type. Every use of the model (answers, drafts, campaigns, scheduled posts)
goes through the one client a process has, so it is counted once, here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from core.llm.base import (
    ChatMessage,
    Finished,
    GenerationParams,
    LLMClient,
    ModelInfo,
    PreparedPrompt,
    StreamEvent,
)
from core.llm.errors import LLMError
from core.metrics import Metrics


class MeteredLLM:
    def __init__(self, inner: LLMClient, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def info(self) -> ModelInfo:
        return self._inner.info

    async def start(self) -> ModelInfo:
        return await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    async def health(self) -> bool:
        return await self._inner.health()

    async def prepare(self, messages: Sequence[ChatMessage]) -> PreparedPrompt:
        return await self._inner.prepare(messages)

    async def count_tokens(self, text: str) -> int:
        return await self._inner.count_tokens(text)

    async def stream(self, prompt: PreparedPrompt, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        tokens = self._metrics.tokens
        tokens.labels("in").inc(prompt.input_tokens)
        try:
            async for item in self._inner.stream(prompt, params):
                if isinstance(item, Finished):
                    tokens.labels("out").inc(item.generated_tokens)
                yield item
        except LLMError as exc:
            self._metrics.model_errors.labels(type(exc).__name__).inc()
            raise

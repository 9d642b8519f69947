"""A model client that hands every call to another one: the base of wrappers that
watch a client (metrics, benchmarks) by overriding only what they watch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from core.llm.base import (
    ChatMessage,
    GenerationParams,
    LLMClient,
    ModelInfo,
    PreparedPrompt,
    ReadPace,
    StreamEvent,
)


class ForwardingLLM:
    def __init__(self, inner: LLMClient) -> None:
        self._inner = inner

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

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, pace: ReadPace | None = None
    ) -> AsyncIterator[StreamEvent]:
        return self._inner.stream(prompt, params, pace)

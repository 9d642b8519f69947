"""A model client that counts what passes through it: tokens in and out, and failures
by type. Every use of the model (answers, drafts, campaigns, scheduled posts)
goes through the one client a process has, so it is counted once, here."""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.llm.base import Finished, GenerationParams, LLMClient, PreparedPrompt, ReadPace, StreamEvent
from core.llm.errors import LLMError
from core.llm.forwarding import ForwardingLLM
from core.metrics import Metrics


class MeteredLLM(ForwardingLLM):
    def __init__(self, inner: LLMClient, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    async def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, pace: ReadPace | None = None
    ) -> AsyncIterator[StreamEvent]:
        tokens = self._metrics.tokens
        tokens.labels("in").inc(prompt.input_tokens)
        try:
            async for item in self._inner.stream(prompt, params, pace):
                if isinstance(item, Finished):
                    tokens.labels("out").inc(item.generated_tokens)
                    if item.overran:
                        self._metrics.answers_limited.labels("tokens").inc()
                yield item
        except LLMError as exc:
            self._metrics.model_errors.labels(type(exc).__name__).inc()
            raise

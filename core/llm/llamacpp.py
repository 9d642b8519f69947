"""Backend for Herald's built-in model process (`bots.local_model.server`):
llama.cpp on this machine, streamed as OpenAI-style `text_completion` chunks.

As on TGI's native path, Herald renders the prompt with the model's own chat
template and the server counts it with the model's own tokenizer
(`/apply-template`), so the text sent to `/completion` is what was counted. The
server enforces a JSON schema as a llama.cpp grammar, and runs one generation at
a time, so the gate admits one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from core.llm.base import ChatMessage, GenerationParams, ModelInfo, PreparedPrompt, ReadPace, StreamEvent
from core.llm.client_base import ClientBase
from core.llm.errors import GenerationFailed, InvalidRequest
from core.llm.gate import ConcurrencyGate
from core.llm.markers import neutralise
from core.llm.openai import ChatStreamDecoder, message_dicts, sampling_options
from core.llm.transport import DEFAULT_OPTIONS, TransportOptions

COMPLETION_PATH = "/completion"


class CompletionStreamDecoder(ChatStreamDecoder):
    """`text_completion` chunks: the new text is `choices[0].text`."""

    @staticmethod
    def text_of(choice: Mapping[str, Any]) -> object:
        return choice.get("text")


def completion_body(prompt: str, params: GenerationParams) -> dict[str, Any]:
    """The streaming `/completion` body: OpenAI's sampling fields, llama.cpp's
    `repeat_penalty`, and the JSON schema the model's output must match."""
    body: dict[str, Any] = {"prompt": prompt, "stream": True, **sampling_options(params)}
    if params.repetition_penalty is not None:
        body["repeat_penalty"] = params.repetition_penalty
    if params.json_schema is not None:
        body["json_schema"] = dict(params.json_schema)
    return body


class LlamaCppClient(ClientBase):
    """`LLMClient` for the built-in model process at `base_url`."""

    def __init__(
        self,
        base_url: str,
        *,
        options: TransportOptions = DEFAULT_OPTIONS,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(base_url, options, logger=logger or logging.getLogger(__name__))

    async def start(self) -> ModelInfo:
        if self._info is not None:
            return self._info
        self.transport.open(4)  # one generation, and counting requests beside it
        props = await self.transport.request_json("GET", "/props")
        try:
            context = int(props["n_ctx"])
            model_id = str(props["model_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GenerationFailed("GET /props: unexpected answer") from exc
        self._gate = ConcurrencyGate(1, self.queue_timeout)
        self._info = ModelInfo(
            model_id=model_id,
            max_input_tokens=context - 1,
            max_total_tokens=context,
            max_concurrent_requests=1,
        )
        self.log.info("built-in model ready: %s", self._info)
        return self._info

    async def health(self) -> bool:
        return await self.transport.status_of("GET", "/health") == 200

    async def prepare(self, messages: Sequence[ChatMessage]) -> PreparedPrompt:
        answer = await self.transport.request_json(
            "POST", "/apply-template", {"messages": message_dicts(messages)}
        )
        prompt = answer.get("prompt") if isinstance(answer, Mapping) else None
        tokens = answer.get("tokens") if isinstance(answer, Mapping) else None
        if not isinstance(prompt, str) or not isinstance(tokens, int):
            raise GenerationFailed("POST /apply-template: unexpected answer")
        return PreparedPrompt(messages=tuple(messages), input_tokens=tokens, exact=True, rendered=prompt)

    async def count_tokens(self, text: str) -> int:
        answer = await self.transport.request_json("POST", "/tokenize", {"content": neutralise(text)})
        count = answer.get("count") if isinstance(answer, Mapping) else None
        if not isinstance(count, int):
            raise GenerationFailed("POST /tokenize: unexpected answer")
        return count

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, pace: ReadPace | None = None
    ) -> AsyncIterator[StreamEvent]:
        if prompt.rendered is None:
            raise InvalidRequest("the built-in model takes prompts from prepare()")
        events = self.transport.stream(
            COMPLETION_PATH, completion_body(prompt.rendered, params), CompletionStreamDecoder, pace
        )
        return self.generate(events, params)

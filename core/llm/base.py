"""The model-client interface the engine depends on, and the values it exchanges.

Two backends implement it: TGI's native protocol (`tgi.py`) and any
OpenAI-compatible chat server (`openai.py`). The engine never knows which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.llm.markers import neutralise

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a prompt. Its content is data to the model, whoever wrote it.

    Template markers in it are neutralised here, on construction (`markers.py`):
    every path to the model (TGI's `/chat_tokenize` then `/generate_stream`, any
    `/v1/chat/completions`, the estimates) starts from these messages, so no text
    can forge a turn — a message, a persona, an earlier answer of the model, a
    draft's brief. Only the server's chat template writes markers.
    """

    role: Role
    content: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "content", neutralise(self.content))


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings; validated against TGI's rules by the backends."""

    max_new_tokens: int = 512
    temperature: float | None = 0.7
    top_p: float | None = 0.95
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    #: a JSON schema the answer must follow (TGI's grammar-constrained decoding)
    json_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server says about itself at start (`GET /info` on TGI)."""

    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    max_concurrent_requests: int
    version: str = ""


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    """Messages ready to send, with their size in the model's tokens.

    `exact` is true when the server counted with the model's own tokenizer and
    chat template; `rendered` is then the templated text the server produced.
    """

    messages: tuple[ChatMessage, ...]
    input_tokens: int
    exact: bool
    rendered: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text from the model (one or more tokens)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a successful stream."""

    finish_reason: str
    generated_tokens: int
    #: the server went on past `max_new_tokens` and the client stopped it there
    #: (`finish_reason` is then "length", as if the server had honoured it)
    overran: bool = False


StreamEvent = TextDelta | Finished

#: Seconds from now until whoever reads a stream can next use more of it (0: at once),
#: asked after each read. A stream read from the network is not read again before then
#: unless it ends: tokens wait in the socket's buffer and the next read takes them all,
#: so a reader that can only show text once a second wakes once a second, not per token.
ReadPace = Callable[[], float]


class LLMClient(Protocol):
    """A model server. One instance per process, shared by every conversation."""

    @property
    def info(self) -> ModelInfo:
        """Valid after `start()`."""

    async def start(self) -> ModelInfo:
        """Open the shared HTTP session and read the server's limits."""

    async def close(self) -> None: ...

    async def health(self) -> bool:
        """True when the server says it can generate."""

    async def prepare(self, messages: Sequence[ChatMessage]) -> PreparedPrompt:
        """Count the prompt's tokens (exactly where the server can) and template it."""

    async def count_tokens(self, text: str) -> int:
        """Tokens of a plain text as a message would carry it (markers neutralised),
        with the model's tokenizer where offered."""

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, pace: ReadPace | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Yield `TextDelta`s then one `Finished`; raise `LLMError` subclasses.

        Waits for a server slot (bounded), retries retryable errors with a short
        capped backoff only before the first token, and enforces an idle timeout
        between tokens. `pace` (when given) says when more text is wanted.
        """

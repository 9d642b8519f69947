"""Model-server clients: TGI's native protocol and OpenAI-compatible servers.

The engine depends only on `LLMClient` and the typed errors; which backend
serves it is configuration (`create_llm_client`).
"""

from __future__ import annotations

from typing import Any, Literal

from core.llm.base import (
    ChatMessage,
    Finished,
    GenerationParams,
    LLMClient,
    ModelInfo,
    PreparedPrompt,
    Role,
    StreamEvent,
    TextDelta,
)
from core.llm.errors import (
    ContextTooLong,
    GenerationFailed,
    InvalidRequest,
    LLMError,
    ModelBusy,
    ModelOverloaded,
    ModelUnreachable,
    StreamStalled,
)
from core.llm.gate import ConcurrencyGate
from core.llm.openai import OpenAIClient
from core.llm.tgi import TGIClient
from core.llm.transport import DEFAULT_OPTIONS, TransportOptions

__all__ = [
    "ChatMessage",
    "ConcurrencyGate",
    "ContextTooLong",
    "Finished",
    "GenerationFailed",
    "GenerationParams",
    "InvalidRequest",
    "LLMClient",
    "LLMError",
    "ModelBusy",
    "ModelInfo",
    "ModelOverloaded",
    "ModelUnreachable",
    "OpenAIClient",
    "PreparedPrompt",
    "Role",
    "StreamEvent",
    "StreamStalled",
    "TGIClient",
    "TextDelta",
    "TransportOptions",
    "create_llm_client",
]


def create_llm_client(
    api: Literal["tgi", "openai"],
    base_url: str,
    options: TransportOptions = DEFAULT_OPTIONS,
    **backend: Any,
) -> LLMClient:
    """A client for `api` at `base_url`.

    `options` are the settings every backend shares; `backend` holds the chosen
    backend's own keyword arguments (e.g. `max_concurrency`, OpenAI's `model`).
    """
    if api == "tgi":
        return TGIClient(base_url, options=options, **backend)
    if api == "openai":
        return OpenAIClient(base_url, options=options, **backend)
    raise ValueError(f"unknown model API {api!r} (expected 'tgi' or 'openai')")

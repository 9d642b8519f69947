"""Typed model-server errors, each with the short message a user may see.

Every backend maps HTTP statuses, non-JSON bodies and in-stream error events to
exactly these classes, so the engine decides what to tell people in one place.
"""

from __future__ import annotations


class LLMError(Exception):
    """Base of every model-server failure."""

    user_message = "Something went wrong while generating the answer."
    #: whether a retry before the first token can help
    retryable = False


class ModelUnreachable(LLMError):
    user_message = "I can't reach the model server right now — try again in a minute."
    retryable = True


class ModelOverloaded(LLMError):
    user_message = "The model is busy right now — try again in a minute."
    retryable = True


class ModelBusy(ModelOverloaded):
    """Our own queue for a server slot waited too long (no request was sent)."""

    retryable = False


class ContextTooLong(LLMError):
    user_message = "That conversation is too long for the model."

    def __init__(self, message: str, given: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.given = given
        self.limit = limit


class InvalidRequest(LLMError):
    user_message = "The model server rejected the request."


class GenerationFailed(LLMError):
    user_message = "The model failed while answering."


class StreamStalled(GenerationFailed):
    user_message = "The model stopped responding while answering."


class ConnectionLost(GenerationFailed):
    """The connection to the model server broke while an answer was streaming."""

    user_message = "I lost the connection to the model server while answering — try again."

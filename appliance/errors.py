"""What can go wrong with an inference call, in the serving core's terms.

The HTTP layer maps each class to a status code; nothing here knows about HTTP.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: the message is safe to show to the client."""


class InvalidInput(InferenceError):
    """The request does not fit the model: names, datatypes, shapes or data."""


class ModelNotFound(InferenceError):
    """No such model, or no such version of it."""


class ModelNotReady(InferenceError):
    """The model exists but is still loading or warming, or is being removed."""


class QueueFull(InferenceError):
    """The model's queue is at max_queue_size: the request was refused without waiting."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferenceError):
    """The request's deadline passed before its result was ready."""


class ModelFailed(InferenceError):
    """The model itself raised while running the batch this request was in."""


class LoadFailed(ModelFailed):
    """A model version could not be synced, loaded or warmed; any serving version stays."""

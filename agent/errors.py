"""The daemon's own errors, under the project's one root :class:`inference.errors.EdgeError`."""

from __future__ import annotations

from inference.errors import EdgeError


class ModelNotFoundError(EdgeError):
    """No model of that name is configured."""


class ModelNotReadyError(EdgeError):
    """The model is configured but still loading (or failed to load)."""


class QueueFullError(EdgeError):
    """The model's queue is at ``max_queue``: shed the request at once."""

    def __init__(self, message: str, detail: object = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(EdgeError):
    """The request's deadline passed before inference could start."""


class DrainingError(EdgeError):
    """The daemon is shutting down and takes no new work."""


class BadRequestError(EdgeError):
    """A malformed request: bad query parameter, header or multipart body."""


class PayloadTooLargeError(EdgeError):
    """The body is larger than ``limits.max_body_bytes``."""


class BodyTimeoutError(EdgeError):
    """The body did not arrive within ``limits.body_timeout_s`` (a slow or stalled client)."""


class UnsupportedMediaTypeError(EdgeError):
    """A Content-Type the endpoint does not accept."""


class InferenceFailedError(EdgeError):
    """The model run itself raised: the batch failed, the daemon carries on."""


class AdminDisabledError(EdgeError):
    """Admin endpoints are off (no token configured): they do not exist."""


class UnauthorizedError(EdgeError):
    """Missing or wrong bearer token."""


class ConflictError(EdgeError):
    """The request cannot be done in the daemon's current configuration."""

"""The project's one error root.

Every error the daemon raises on purpose derives from :class:`EdgeError`. The HTTP layer maps
each subclass to a status code in one place (``agent/http/errors.py``); anything else is a bug
and becomes a 500.
"""

from __future__ import annotations

from typing import Any


class EdgeError(Exception):
    """Root of all deliberate errors. ``detail`` is JSON-serialisable context for the client."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidImageError(EdgeError):
    """The bytes are not a decodable JPEG or PNG image."""


class UnsupportedImageFormatError(EdgeError):
    """A recognised image format that the detector does not accept (GIF, WebP, ...)."""


class ImageTooLargeError(EdgeError):
    """The image header declares more pixels than allowed (decompression-bomb guard)."""


class ModelLoadError(EdgeError):
    """An ONNX file that cannot be loaded or does not look like a model we can serve."""


class ProviderUnavailableError(EdgeError):
    """None of the requested execution providers is available in this onnxruntime build."""


class GoldenSetError(EdgeError):
    """A golden set that cannot be read or does not fit its model (the message names the file)."""

"""Lower-precision variants of a model version, as its sidecar lists them.

``model.json`` may carry ``"variants": [{"precision": "fp32", "file": "model.onnx", ...},
{"precision": "int8", "file": "model.int8.onnx", "sha256": "...", "score": 0.91}]``: each a
file of the same version (same inputs, outputs and classes) at another precision, with the
golden-set score measured when it was packed. The fp32 entry names the version's own file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inference.errors import EdgeError

FP32 = "fp32"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_PRECISION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class VariantError(EdgeError):
    """A sidecar's ``variants`` list is malformed."""


@dataclass(frozen=True)
class VariantEntry:
    precision: str  # "int8", ...
    file: str  # beside the sidecar (a layer title in an OCI artifact)
    sha256: str  # hex
    score: float | None = None  # golden-set score measured when packed


def sidecar_variants(sidecar: dict[str, Any], where: str = "sidecar") -> list[VariantEntry]:
    """The version's lower-precision files (its fp32 file, the sidecar's own ``file``, is not
    among them). Raises VariantError for a malformed list."""
    raw = sidecar.get("variants")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise VariantError(f"{where}: 'variants' must be a list")
    own = sidecar.get("file")
    out: list[VariantEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = f"{where}: variants[{i}]"
        if not isinstance(item, dict):
            raise VariantError(f"{at} must be a mapping with precision, file and sha256")
        precision, file = item.get("precision"), item.get("file")
        if not isinstance(precision, str) or not _PRECISION.match(precision):
            raise VariantError(f"{at}.precision must be a short lowercase name, e.g. int8")
        if not isinstance(file, str) or not file or "/" in file or "\\" in file \
                or file in (".", ".."):
            raise VariantError(f"{at}.file must be a file name beside the sidecar")
        if precision == FP32 or file == own:
            continue  # the version's own file
        digest = str(item.get("sha256", "")).removeprefix("sha256:")
        if not _HEX.match(digest):
            raise VariantError(f"{at}.sha256 must be a sha256 digest")
        score = item.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise VariantError(f"{at}.score must be a number")
        if precision in seen:
            raise VariantError(f"{at}: precision {precision!r} is listed twice")
        seen.add(precision)
        out.append(VariantEntry(precision, file, digest,
                                None if score is None else float(score)))
    return out

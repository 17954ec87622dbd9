"""The models edge-agent ships with, trained by the project itself (see README.md here).

Each lives in a folder of its own: ``model.onnx``, the sidecar ``model.json`` (name, version,
kind, sha256, labels, golden set, training configuration) and its held-out golden set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import ModelLoadError

BUNDLE_ROOT = Path(__file__).resolve().parent
BUNDLED_NAMES = ("defects", "fusion")


@dataclass(frozen=True)
class Bundle:
    name: str
    version: str
    kind: str  # "yolov8" | "tensor"
    folder: Path
    sidecar: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.folder / str(self.sidecar["file"])

    @property
    def sha256(self) -> str:
        return str(self.sidecar["sha256"])

    @property
    def golden_path(self) -> Path:
        return self.folder / str(self.sidecar["golden"]["file"])

    @property
    def golden_score(self) -> float:
        return float(self.sidecar["golden"]["score"])


def read_bundle(folder: Path) -> Bundle:
    """The bundle in ``folder``, from its ``model.json``."""
    try:
        sidecar = json.loads((folder / "model.json").read_text())
        return Bundle(
            str(sidecar["name"]), str(sidecar["version"]), str(sidecar["kind"]), folder, sidecar
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"bundled model in {folder} is unreadable: {exc}") from exc


def bundled_models() -> list[Bundle]:
    """Every model shipped in the package, in a fixed order."""
    return [read_bundle(BUNDLE_ROOT / name) for name in BUNDLED_NAMES]

"""Golden sets: held-out labelled samples that score a model on the node itself.

A detection golden set is a tar archive (or a folder) of ``images/NAME.jpg|png`` with YOLO-format
``labels/NAME.txt`` (``class cx cy w h``, normalised; an empty file: no object); a folder may
also hold ``NAME.jpg`` beside ``NAME.txt`` (the bundled ``defects`` set). A tensor golden set is
an ``.npz`` of the model's inputs by input name, one row per sample on the first axis, plus
``labels`` (class index per row: accuracy of the first output's argmax) or ``expected_<output>``
arrays (a row is right when every expected output matches within ``rtol``/``atol``).

A version's sidecar names its golden set (:class:`GoldenSpec`). Reading checks the set itself
(every image has its labels, every line parses) and, given the model, that it fits the model
(class indices, input names and shapes); each failure is a :class:`GoldenSetError` naming the
file. Scoring takes callables, so the same code scores a model in-process or through a queue.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from inference.errors import EdgeError, GoldenSetError
from inference.evaluation import (
    DetectionScore,
    LabelledBox,
    ScoredBox,
    accuracy,
    mean_average_precision,
)
from inference.image import read_header
from inference.tensor import NUMPY_DTYPES, TensorSpec

METRICS = {"yolov8": "map50", "tensor": "accuracy"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_FILE_BYTES = 64 << 20  # one image or labels file of a golden archive
# mAP is measured over every candidate box, as Ultralytics' validator does (conf 0.001).
SCORING_DEFAULTS = {"conf": 0.001, "iou": 0.7, "rtol": 1e-3, "atol": 1e-5}


@dataclass(frozen=True)
class GoldenSpec:
    """A version's golden set, as its sidecar's ``golden`` field names it."""

    path: Path  # the archive (or the bundled folder / npz) on this node
    metric: str  # "map50" | "accuracy"
    sha256: str = ""  # the archive's digest; empty for a set shipped inside the package
    packed_score: float | None = None  # the score measured when the version was packed
    scoring: Mapping[str, float] | None = None  # conf/iou (detectors), rtol/atol (tensors)
    name: str = ""  # its file name in the version (a cached blob is named by its digest)

    @property
    def label(self) -> str:
        """What messages call it."""
        return self.name or self.path.name

    def setting(self, key: str) -> float:
        return float((self.scoring or {}).get(key, SCORING_DEFAULTS[key]))

    def same_set(self, other: GoldenSpec) -> bool:
        """Whether a score measured on ``other`` was measured on this set."""
        if self.sha256 or other.sha256:
            return self.sha256 == other.sha256
        return self.path == other.path

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.packed_score is not None:
            out["packed_score"] = self.packed_score
        return out


def golden_spec(raw: Any, path: Path, where: str = "sidecar") -> GoldenSpec:
    """The sidecar's ``golden`` field, its file at ``path``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
        raise GoldenSetError(f"{where}: 'golden' must be a mapping with 'file'")
    metric = str(raw.get("metric", "")).lower()
    if metric not in METRICS.values():
        raise GoldenSetError(f"{where}: golden metric must be one of {sorted(METRICS.values())}",
                             {"metric": raw.get("metric")})
    score, scoring = raw.get("score"), raw.get("scoring")
    return GoldenSpec(
        path=path,
        metric=metric,
        sha256=str(raw.get("sha256", "")).removeprefix("sha256:"),
        packed_score=float(score) if isinstance(score, (int, float)) else None,
        scoring={k: float(v) for k, v in scoring.items() if k in SCORING_DEFAULTS}
        if isinstance(scoring, dict) else None,
        name=raw["file"],
    )


# -- detection sets ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenFrame:
    name: str
    data: bytes  # the encoded image, as a camera would send it
    truths: tuple[LabelledBox, ...]
    image: str = ""  # its file in the set (``images/NAME.jpg``)
    label: str = ""  # and its labels' (``labels/NAME.txt``)


def load_detection_golden(path: Path, where: str = "") -> list[GoldenFrame]:
    """The frames of a golden tar archive or folder, in name order; ``where``: its name in
    messages (default: the file's)."""
    with open_set(path, where) as files:
        return _frames(where or path.name, files)


class SetFiles:
    """The files of a golden folder or tar archive, by relative POSIX name."""

    def __init__(self, path: Path, where: str = "") -> None:
        self._tar: tarfile.TarFile | None = None
        self._where = where or path.name
        if path.is_dir():
            self._files = {p.relative_to(path).as_posix(): p for p in path.rglob("*")
                           if p.is_file()}
            self._members: dict[str, tarfile.TarInfo] = {}
            return
        self._files = {}
        try:
            self._tar = tarfile.open(path)  # noqa: SIM115 (closed by __exit__)
            self._members = {_member_name(m.name): m for m in self._tar.getmembers()
                             if m.isfile()}
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise GoldenSetError(f"golden set {self._where} is not a readable tar archive: {exc}",
                                 str(path)) from exc

    @property
    def names(self) -> list[str]:
        return list(self._files or self._members)

    def read(self, name: str) -> bytes:
        if self._tar is None:
            return self._files[name].read_bytes()
        member = self._members[name]
        if member.size > MAX_FILE_BYTES:  # a compressed archive could expand without bound
            raise GoldenSetError(f"golden set {self._where}: {name} is larger than "
                                 f"{MAX_FILE_BYTES} bytes")
        try:
            f = self._tar.extractfile(member)
            assert f is not None  # a regular file's member always has content
            return f.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise GoldenSetError(f"golden set {self._where}: {name} is unreadable: {exc}") from exc

    def __enter__(self) -> SetFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()


def open_set(path: Path, where: str = "") -> SetFiles:
    if not path.exists():
        raise GoldenSetError(f"golden set {where or path} does not exist")
    return SetFiles(path, where)


def _member_name(name: str) -> str:
    return PurePosixPath(name.removeprefix("./")).as_posix()


def _frames(where: str, files: SetFiles) -> list[GoldenFrame]:
    """Pair images with labels: ``images/X.jpg`` + ``labels/X.txt``, else ``X.jpg`` + ``X.txt``
    at the top (never reaching outside: names are only looked up, nothing is extracted)."""
    names = files.names
    available = set(names)
    nested = any(n.startswith("images/") for n in names)
    prefix, labels_dir = ("images/", "labels/") if nested else ("", "")
    images = sorted(n for n in names if n.startswith(prefix) and "/" not in n[len(prefix):]
                    and n.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise GoldenSetError(
            f"golden set {where} has no images (expected images/*.jpg|png with labels/*.txt)")
    frames: list[GoldenFrame] = []
    for image in images:
        stem = PurePosixPath(image).stem
        label = f"{labels_dir}{stem}.txt"
        if label not in available:
            raise GoldenSetError(f"golden set {where}: image {image} has no labels file {label}")
        data = files.read(image)
        try:
            header = read_header(data)
        except EdgeError as exc:
            raise GoldenSetError(f"golden set {where}: image {image} is unreadable: "
                                 f"{exc.message}") from exc
        truths = parse_yolo_labels(files.read(label), f"{where}: {label}", header.width,
                                   header.height)
        frames.append(GoldenFrame(stem, data, tuple(truths), image, label))
    return frames


def parse_yolo_labels(raw: bytes, where: str, width: int, height: int) -> list[LabelledBox]:
    """YOLO label lines (``class cx cy w h``, normalised) -> boxes in pixels; a bad line is a
    :class:`GoldenSetError` naming the file and line."""
    boxes: list[LabelledBox] = []
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise GoldenSetError(f"golden set {where}: not a text file") from exc
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 5:
                raise ValueError(f"{len(parts)} fields")
            cls, (cx, cy, w, h) = int(parts[0]), map(float, parts[1:])
            if cls < 0 or not all(0 <= v <= 1 for v in (cx, cy, w, h)):
                raise ValueError("a negative class or a coordinate outside [0, 1]")
        except ValueError as exc:
            raise GoldenSetError(
                f"golden set {where} line {number}: expected 'class cx cy w h' "
                f"(class index, four normalised numbers): {exc}", {"line": line}) from None
        boxes.append(LabelledBox(cls, ((cx - w / 2) * width, (cy - h / 2) * height,
                                       (cx + w / 2) * width, (cy + h / 2) * height)))
    return boxes


def check_classes(frames: Sequence[GoldenFrame], num_classes: int, where: str) -> None:
    """Every labelled class must be one the model has."""
    for frame in frames:
        for truth in frame.truths:
            if truth.class_id >= num_classes:
                raise GoldenSetError(
                    f"golden set {where}: {frame.label or frame.name} has class "
                    f"{truth.class_id}, but the model has {num_classes} classes "
                    f"(0..{num_classes - 1})")


def score_detections(
    frames: list[GoldenFrame], detect: Callable[[bytes], list[ScoredBox]], iou: float = 0.5
) -> DetectionScore:
    """mAP at ``iou`` of ``detect`` (frame bytes -> boxes in pixels) on the golden frames."""
    return detection_score(frames, [detect(f.data) for f in frames], iou)


def detection_score(frames: Sequence[GoldenFrame], predictions: Sequence[Sequence[ScoredBox]],
                    iou: float = 0.5) -> DetectionScore:
    return mean_average_precision([f.truths for f in frames], predictions, iou)


# -- tensor sets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorGolden:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None  # class index per row
    expected: dict[str, np.ndarray]  # output name -> expected rows

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))


def load_tensor_golden(path: Path, input_dtypes: Mapping[str, Any]) -> TensorGolden:
    """The inputs, cast to the model's dtypes (a golden set may store FP16 to stay small)."""
    specs = [TensorSpec(name, _datatype(np.dtype(d)), ()) for name, d in input_dtypes.items()]
    return read_tensor_golden(path, specs, ())


def _datatype(dtype: np.dtype) -> str:
    return next(k for k, v in NUMPY_DTYPES.items() if np.dtype(v) == dtype)


def read_tensor_golden(path: Path, inputs: Sequence[TensorSpec],
                       outputs: Sequence[TensorSpec], where: str = "") -> TensorGolden:
    """A tensor golden set checked against the model's inputs (names, shapes; cast to their
    dtypes) and outputs (``expected_<output>``). An empty ``shape`` checks names only."""
    where = where or path.name
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:  # zipfile errors are OSError/ValueError
        raise GoldenSetError(f"golden set {where} is not a readable .npz: {exc}") from exc
    except Exception as exc:  # BadZipFile and friends
        raise GoldenSetError(f"golden set {where} is not a readable .npz: {exc}") from exc
    names = [s.name for s in inputs]
    output_names = {f"expected_{s.name}" for s in outputs}
    labels = arrays.pop("labels", arrays.pop("label", None))
    expected = {k.removeprefix("expected_"): v for k, v in arrays.items() if k in output_names}
    missing = [n for n in names if n not in arrays]
    unknown = [k for k in arrays if k not in names and k not in output_names]
    if missing or unknown:
        raise GoldenSetError(
            f"golden set {where}: arrays {sorted(arrays)} do not match the model's inputs "
            f"{names}" + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {unknown}; outputs are expected_<output>)" if unknown else ""),
            {"missing": missing, "unexpected": unknown})
    if labels is None and not expected:
        raise GoldenSetError(f"golden set {where} has neither 'labels' nor 'expected_<output>' "
                             f"arrays: nothing to score against")
    cast: dict[str, np.ndarray] = {}
    for spec in inputs:
        array = arrays[spec.name]
        if spec.shape and (array.ndim != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape[1:], array.shape[1:],
                                                           strict=True))):
            raise GoldenSetError(
                f"golden set {where}: input {spec.name!r} has shape {list(array.shape)}, the "
                f"model takes {list(spec.shape)} (first axis: the rows; -1: any size)")
        try:
            cast[spec.name] = array.astype(NUMPY_DTYPES[spec.datatype])
        except (TypeError, ValueError) as exc:
            raise GoldenSetError(f"golden set {where}: input {spec.name!r} is not "
                                 f"{spec.datatype}: {exc}") from exc
    rows = {len(a) for a in (*cast.values(), *expected.values())}
    if labels is not None:
        rows.add(len(labels))
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise GoldenSetError(f"golden set {where}: 'labels' must be one integer per row")
    if len(rows) != 1 or 0 in rows:
        raise GoldenSetError(f"golden set {where}: every array needs the same number of rows "
                             f"(first axis), at least one")
    return TensorGolden(cast, None if labels is None else labels.copy(), expected)


def tensor_score(golden: TensorGolden, outputs: Mapping[str, np.ndarray], first_output: str,
                 rtol: float, atol: float, where: str = "") -> float:
    """Accuracy on the golden set: ``labels`` against the first output's argmax (or its value,
    for a 1-D output of class ids); else the share of rows whose every ``expected_<output>``
    is matched within ``rtol``/``atol``."""
    if golden.labels is not None:
        out = np.asarray(outputs[first_output])
        predicted = out.argmax(axis=1) if out.ndim > 1 else np.rint(out).astype(np.int64)
        classes = out.shape[1] if out.ndim > 1 else None
        if classes is not None and (golden.labels.min() < 0 or golden.labels.max() >= classes):
            raise GoldenSetError(
                f"golden set {where}: labels go from {golden.labels.min()} to "
                f"{golden.labels.max()}, but output {first_output!r} has {classes} classes")
        return accuracy(golden.labels, predicted)
    right = np.ones(golden.rows, bool)
    for name, want in golden.expected.items():
        got = np.asarray(outputs[name], np.float64).reshape(golden.rows, -1)
        close = np.isclose(got, np.asarray(want, np.float64).reshape(golden.rows, -1), rtol, atol)
        right &= close.all(axis=1)
    return float(right.mean())


def score_classifier(
    golden: TensorGolden, predict: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> float:
    """Accuracy of ``predict`` (inputs -> class ids) on the golden set."""
    if golden.labels is None:
        raise GoldenSetError("the golden set has no labels")
    return accuracy(golden.labels, predict(golden.inputs))


def row_chunks(rows: int, size: int) -> Iterable[slice]:
    return (slice(start, start + size) for start in range(0, rows, size))

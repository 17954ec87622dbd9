"""Train the bundled ``defects`` YOLOv8n on synthetic conveyor frames, export it, package it.

Needs Ultralytics (and torch) in a venv of its own; the daemon never does. See
``inference/bundled/README.md`` for the venv and the exact commands. Three steps::

    python -m training.defects dataset --data /tmp/defects-data
    python -m training.defects train --data /tmp/defects-data --runs /tmp/defects-runs
    python -m training.defects package --onnx /tmp/defects-runs/.../best.onnx

``dataset`` and ``package`` need only numpy, OpenCV and onnxruntime; ``train`` needs
Ultralytics. ``package`` copies the ONNX into ``inference/bundled/defects/``, writes the held-out
golden set (generated from a seed the training never saw), measures mAP50 on it with the
project's own evaluation code and writes the sidecar ``model.json`` with the sha256.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from training.conveyor import CLASSES, encode_jpeg, frame

# Seeds: distinct sequences for training, validation (best-epoch choice) and the golden set.
TRAIN_SEED, VAL_SEED, GOLDEN_SEED = 1, 2, 3
BUNDLE = Path(__file__).resolve().parent.parent / "inference" / "bundled" / "defects"

# The training configuration, recorded in the sidecar as it was used.
CONFIG: dict[str, Any] = {
    "model": "yolov8n.yaml",  # from scratch: no pretrained weights are downloaded
    "train_images": 480,
    "val_images": 60,
    "imgsz": 320,
    "epochs": 30,
    "batch": 16,
    "seed": 0,
    "deterministic": True,
    "optimizer": "AdamW",
    "lr0": 0.002,
    "close_mosaic": 5,
    "jpeg_quality": 85,
    "framework": "ultralytics 8.4.190, torch 2.14.1, CPU",
}


def write_split(root: Path, split: str, seed: int, count: int, quality: int) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        item = frame(seed, index)
        stem = f"{split}-{seed}-{index:04d}"
        (images / f"{stem}.jpg").write_bytes(encode_jpeg(item.image, quality))
        (labels / f"{stem}.txt").write_text(item.yolo_labels())


def make_dataset(root: Path) -> Path:
    write_split(root, "train", TRAIN_SEED, CONFIG["train_images"], CONFIG["jpeg_quality"])
    write_split(root, "val", VAL_SEED, CONFIG["val_images"], CONFIG["jpeg_quality"])
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def train(data: Path, runs: Path) -> Path:
    from ultralytics import YOLO  # the training venv only

    model = YOLO(CONFIG["model"])
    model.train(
        data=str(data),
        project=str(runs),
        name="defects",
        exist_ok=True,
        imgsz=CONFIG["imgsz"],
        epochs=CONFIG["epochs"],
        batch=CONFIG["batch"],
        seed=CONFIG["seed"],
        deterministic=CONFIG["deterministic"],
        optimizer=CONFIG["optimizer"],
        lr0=CONFIG["lr0"],
        close_mosaic=CONFIG["close_mosaic"],
        pretrained=False,
        amp=False,
        plots=False,
        workers=2,
        device="cpu",
    )
    best = runs / "defects" / "weights" / "best.pt"
    exported = YOLO(str(best)).export(
        format="onnx", imgsz=CONFIG["imgsz"], opset=17, simplify=False, dynamic=True
    )
    return Path(exported)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.defects")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("dataset", help="write the synthetic training and validation frames")
    p.add_argument("--data", type=Path, required=True)
    p = sub.add_parser("train", help="train YOLOv8n and export best.pt to ONNX")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--runs", type=Path, required=True)
    p = sub.add_parser("package", help="bundle the ONNX with its golden set and sidecar")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--out", type=Path, default=BUNDLE)
    p.add_argument("--train-seconds", type=float, default=0.0)
    p = sub.add_parser("int8", help="add a static int8 (QDQ) variant of the packaged model, "
                       "calibrated and scored on its golden set (the pack extra)")
    p.add_argument("--out", type=Path, default=BUNDLE)
    args = parser.parse_args(argv)

    if args.step == "dataset":
        print(make_dataset(args.data))
    elif args.step == "train":
        started = time.monotonic()
        onnx_path = train(args.data / "data.yaml", args.runs)
        print(json.dumps({"onnx": str(onnx_path), "seconds": time.monotonic() - started}))
    elif args.step == "int8":
        from training.packaging import add_int8_variant

        add_int8_variant(args.out)
    else:
        from training.packaging import package_defects

        package_defects(args.onnx, args.out, CONFIG, GOLDEN_SEED, args.train_seconds)


if __name__ == "__main__":
    main()


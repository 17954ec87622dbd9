"""The hardware watchdog feeder against a real Linux softdog, in a qemu guest.

softdog cannot be loaded on this machine's kernel, so Debian's 6.1 kernel boots under qemu
(software emulation) with a busybox initrd that loads softdog and mounts this machine's / over
9p, read-only; the guest then runs ``softdog_guest.py`` — the daemon's own Supervisor and
HardwareWatchdog — with this interpreter and this checkout. A guest that reboots makes qemu
exit (``-no-reboot``) after the kernel's "softdog: Initiating system reboot".
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import cache_dir, require

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = Path(__file__).with_name("softdog_guest.py")
TIMEOUT_S = 5
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
for m in virtio_pci 9pnet_virtio 9p softdog; do modprobe $m || echo "EDGE modprobe $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host || echo "EDGE 9p mount failed"
mount --bind /dev /host/dev; mount --bind /proc /host/proc; mount --bind /sys /host/sys
mount -t tmpfs tmpfs /host/run
set -- $(cat /proc/cmdline)
for arg; do case $arg in edge.*) eval "${arg#edge.}";; esac; done
echo "EDGE guest up mode=$mode"
chroot /host /usr/bin/env HOME=/run PYTHONPATH=$src $python $script $mode $timeout $run 2>&1 \
  || echo "EDGE guest script exited $?"
poweroff -f
"""


def run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Debian 6.1 kernel and an initrd with busybox and the modules, cached by kernel."""
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
    cache = cache_dir() / "softdog" / release
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


def boot(guest: tuple[Path, Path], mode: str, run_s: int) -> str:
    kernel, initrd = guest
    args = (f"console=ttyS0 loglevel=4 edge.mode={mode} edge.timeout={TIMEOUT_S} "
            f"edge.run={run_s} edge.python={sys.executable} edge.src={ROOT} "
            f"edge.script={GUEST_SCRIPT}")
    result = subprocess.run(
        ["qemu-system-x86_64", "-cpu", "max", "-m", "1024", "-smp", "2", "-kernel", str(kernel),
         "-initrd", str(initrd), "-append", args,
         "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on",
         "-nic", "none", "-no-reboot", "-nographic"],
        capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    return result.stdout.decode(errors="replace")


def test_a_healthy_agent_keeps_the_guest_alive_past_the_timeout_and_disarms_on_stop(guest):
    out = boot(guest, "healthy", 3 * TIMEOUT_S)
    assert f"EDGE armed timeout={TIMEOUT_S}" in out, out[-3000:]
    done = re.search(r"EDGE done pings=(\d+)", out)
    assert done, out[-3000:]
    assert int(done.group(1)) >= 3 * TIMEOUT_S - 1  # one a second for 15 s
    assert "softdog: Initiating system reboot" not in out


def test_a_wedged_agent_lets_the_softdog_reboot_the_guest(guest):
    out = boot(guest, "wedge", 10 * TIMEOUT_S)
    assert f"EDGE armed timeout={TIMEOUT_S}" in out, out[-3000:]
    wedged = re.search(r"EDGE wedged at=([\d.]+)", out)
    reboot = re.search(r"\[\s*([\d.]+)\] softdog: Initiating system reboot", out)
    assert wedged, out[-3000:]
    assert reboot, out[-3000:]
    assert "EDGE done" not in out
    # The last feed was at most one tick (1 s) before the wedge; the dog fires TIMEOUT_S later.
    delay = float(reboot.group(1)) - float(wedged.group(1))
    print(f"wedge -> reboot: {delay:.2f} s (timeout {TIMEOUT_S} s)")
    assert TIMEOUT_S - 1.5 <= delay <= TIMEOUT_S + 1.5

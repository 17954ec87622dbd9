"""README's first command, as a new user runs it on a stock Debian 12 with only python3,
python3-venv, git and curl: no pip outside a venv (PEP 668), nothing of ours on PATH.

The stock system is a debootstrap'ed bookworm chroot, built once into the tests' cache dir. Each
run copies this checkout (the files git knows, as a clone has them) into it, runs the command
taken from README.md with the port in ``EDGE_AGENT_PORT``, and waits for ``/health`` 200 from
this side. The process group is killed and everything unmounted at the end; the chroot keeps
only pip's download cache (``/srv/.cache``), which makes later runs faster, not different.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from readme_commands import PROJECT, serve_command
from support import cache_dir, free_port, require

# A cold cache pays for debootstrap (up to 900 s allowed) and pip's downloads (600 s): more than
# the suite's default 300 s per test on a busy machine.
pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]

PACKAGES = "python3,python3-venv,git,curl,ca-certificates"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What every machine has that a chroot does not see by itself: name resolution, and the CA bundle
# and pip configuration of the network it is on (a TLS proxy's CA, a mirror); copied when present.
HOST_FILES = (
    "/etc/resolv.conf",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pip.conf",
    "/etc/xdg/pip/pip.conf",
    "/etc/xdg/pip/constraints.txt",
)


def stock_debian() -> Path:
    """A minimal bookworm with only PACKAGES, made by debootstrap once and cached."""
    base = cache_dir() / "first-run"
    root = base / "bookworm"
    if (root / ".complete").is_file():
        return root
    require(shutil.which("debootstrap") is not None, "debootstrap (apt-get install debootstrap)")
    base.mkdir(parents=True, exist_ok=True)
    partial = base / "bookworm.part"
    if partial.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(partial)], check=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(partial)],
        capture_output=True, check=True, timeout=900,
    )
    (partial / ".complete").touch()
    partial.rename(root)
    return root


# Outside a git checkout (an unpacked copy): everything but what a clone would not have.
NOT_IN_A_CLONE = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
                  ".hypothesis", "build", "dist"}


def project_files() -> list[str]:
    """What a fresh clone of this checkout has: tracked files, and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT, capture_output=True,
    )
    if listed.returncode == 0:
        names = listed.stdout.decode().split("\0")
    else:
        names = [
            str(rel) for rel in (path.relative_to(PROJECT) for path in PROJECT.rglob("*"))
            if not any(part in NOT_IN_A_CLONE or part.endswith(".egg-info") for part in rel.parts)
        ]
    return [name for name in names if name and (PROJECT / name).is_file()]


@pytest.fixture(scope="module")
def chroot() -> Iterator[Path]:
    require(os.geteuid() == 0, "root (debootstrap, chroot, mounts)")
    root = stock_debian()
    mounted: list[Path] = []
    try:
        for fs in ("proc", "sys", "dev"):
            target = root / fs
            subprocess.run(["mount", "--bind", f"/{fs}", str(target)], check=True)
            mounted.append(target)
        for name in HOST_FILES:
            if Path(name).is_file():
                dest = root / name.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(name, dest)
        yield root
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        still = [t for t in mounted if str(t) in Path("/proc/mounts").read_text()]
        assert not still, f"still mounted: {still}"


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


def test_the_readme_serve_command_works_on_a_stock_debian_12(chroot: Path, tmp_path: Path):
    # Stock indeed: no pip outside a venv, so `python3 -m pip install` is no way in here.
    nopip = subprocess.run(["chroot", str(chroot), "/usr/bin/python3", "-c", "import pip"],
                           capture_output=True, text=True)
    assert nopip.returncode != 0
    assert "No module named" in nopip.stderr

    command = serve_command()
    assert "venv" in command
    project = chroot / "srv" / "project"
    state = chroot / "var" / "lib" / "edge-agent"
    for leftover in (project, state):
        shutil.rmtree(leftover, ignore_errors=True)
    for name in project_files():
        dest = project / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, dest)

    port = free_port()
    log = tmp_path / "first-run.log"
    env = ["HOME=/srv", f"PATH={PATH}", "LANG=C.UTF-8", f"EDGE_AGENT_PORT={port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["chroot", str(chroot), "/usr/bin/env", "-i", *env,
             "bash", "-c", f"cd /srv/project && {command}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        status = 0
        # Cold: pip downloads onnxruntime, numpy and opencv (about 100 MB) and installs them.
        end = time.monotonic() + 600
        while time.monotonic() < end and proc.poll() is None:
            status = get(f"http://127.0.0.1:{port}/health")
            if status == 200:
                break
            time.sleep(1)
        output = log.read_text(errors="replace")
        assert status == 200, f"exit {proc.poll()}, /health {status}\n{output[-4000:]}"
        assert (project / ".venv" / "bin" / "edge-agent").is_file()
        models = urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).read()
        assert b"defects" in models
        assert b"fusion" in models
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(45)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for leftover in (project, state):
            shutil.rmtree(leftover, ignore_errors=True)

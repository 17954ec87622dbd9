"""The shipped unit file under real systemd (PID 1 in a throwaway systemd-nspawn container).

The daemon is installed the way README says (a venv at /opt/edge-agent, built here with
Debian's /usr/bin/python3, the interpreter the container has) and runs under the unit as
shipped; a drop-in only shortens WatchdogSec and RestartSec so the test takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edge-agent.service"
WATCHDOG_SEC = 3
SYSTEM_PYTHON = Path("/usr/bin/python3")


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """README's install: a venv with the package, as /opt/edge-agent will see it."""
    require(SYSTEM_PYTHON.is_file(), "Debian's /usr/bin/python3")
    path = tmp_path_factory.mktemp("opt") / "edge-agent"
    run(str(SYSTEM_PYTHON), "-m", "venv", str(path))
    build = tmp_path_factory.mktemp("build")
    src = build / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info",
                                                             "__pycache__", ".*cache"))
    run(str(path / "bin" / "pip"), "install", "-q", f"{src}[cpu]", timeout=600)
    # The console script names the interpreter by the path it was built at; in the container
    # the venv is at /opt/edge-agent, where a real install puts it.
    script = path / "bin" / "edge-agent"
    lines = script.read_text().splitlines(keepends=True)
    script.write_text("#!/opt/edge-agent/bin/python\n" + "".join(lines[1:]))
    path.chmod(0o755)
    return path


class Container:
    def __init__(self, units: Path, venv: Path, name: str) -> None:
        nspawn = shutil.which("systemd-nspawn")
        require(nspawn is not None, "systemd-nspawn (apt-get install systemd-container)")
        assert nspawn is not None
        self.name = name
        self.proc = subprocess.Popen(
            [nspawn, "--quiet", "--register=no", "--keep-unit", "--volatile=yes", "-D", "/",
             "-M", name, "--private-network", f"--bind-ro={units}:/etc/systemd/system",
             f"--bind-ro={venv}:/opt/edge-agent", "--console=pipe", "-b"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.init = self._find_init()

    def _find_init(self) -> int:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            found = run("pgrep", "-x", "-P", str(self.proc.pid), "systemd", check=False)
            if found.stdout.strip():
                pid = int(found.stdout.split()[0])
                state = run("nsenter", "-t", str(pid), "-a", "systemctl", "is-system-running",
                            check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return pid
            if self.proc.poll() is not None:
                output = self.proc.stdout.read() if self.proc.stdout else ""
                raise AssertionError(f"nspawn exited: {output}")
            time.sleep(0.2)
        raise AssertionError("the container's systemd never came up")

    def sh(self, *args: str, check: bool = True) -> str:
        return run("nsenter", "-t", str(self.init), "-a", *args, check=check).stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh("systemctl", "show", "edge-agent", *(f"-p{p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def http_status(self, path: str) -> int:
        code = (
            "import urllib.request as u, urllib.error as e\n"
            f"try: print(u.urlopen('http://127.0.0.1:8080{path}', timeout=2).status)\n"
            "except e.HTTPError as x: print(x.code)\n"
            "except Exception: print(0)\n"
        )
        return int(self.sh(str(SYSTEM_PYTHON), "-c", code).strip() or 0)

    def close(self) -> None:
        self.sh("systemctl", "poweroff", check=False)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory, venv: Path) -> Iterator[Container]:
    units = tmp_path_factory.mktemp("units")
    shutil.copy(UNIT, units / "edge-agent.service")
    dropin = units / "edge-agent.service.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text(
        f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\nRestartSec=1s\n"
        "Environment=EDGE_AGENT_VALIDATE_GOLDEN=false\n"
    )
    units.chmod(0o755)
    c = Container(units, venv, f"edge-agent-test-{int(time.time() * 1000) % 100000}")
    try:
        yield c
    finally:
        c.close()


def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_shipped_unit_verifies_clean_under_systemd(container: Container):
    result = run("nsenter", "-t", str(container.init), "-a", "systemd-analyze", "verify",
                 "--man=no", "/etc/systemd/system/edge-agent.service", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_active_only_after_ready_then_watchdog_kills_a_wedge_and_restarts(container: Container):
    container.sh("systemctl", "start", "--no-block", "edge-agent")
    seen: list[tuple[str, int]] = []

    def active() -> bool:
        state = container.show("ActiveState")["ActiveState"]
        seen.append((state, container.http_status("/health") if state == "active" else -1))
        return state == "active"

    wait_for(active, 90, "the unit to become active")
    assert seen[0][0] == "activating", seen  # systemd waited for READY=1
    assert seen[-1] == ("active", 200), seen  # and READY=1 came when /health said ready
    assert container.show("StatusText")["StatusText"] == "serving defects, fusion"

    # Healthy: it outlives several watchdog periods without a restart.
    time.sleep(3 * WATCHDOG_SEC)
    props = container.show("ActiveState", "NRestarts", "MainPID")
    assert (props["ActiveState"], props["NRestarts"]) == ("active", "0")

    # A wedge that stops everything (no ping can be sent). The in-process wedges — a stuck
    # inference, a blocked event loop — are in test_watchdog.py with a real notify socket.
    first_pid = props["MainPID"]
    container.sh("kill", "-STOP", first_pid)
    stopped_at = time.monotonic()
    wait_for(lambda: container.show("Result")["Result"] == "watchdog", 4 * WATCHDOG_SEC,
             "systemd's watchdog to fire")
    detected_s = time.monotonic() - stopped_at
    assert detected_s <= 2 * WATCHDOG_SEC
    journal = container.sh("journalctl", "-u", "edge-agent", "--no-pager")
    assert "Watchdog timeout" in journal
    wait_for(lambda: container.show("ActiveState")["ActiveState"] == "active", 60,
             "the restarted daemon to be ready")
    props = container.show("NRestarts", "MainPID")
    assert int(props["NRestarts"]) >= 1
    assert props["MainPID"] != first_pid
    assert container.http_status("/health") == 200

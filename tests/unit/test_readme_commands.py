"""README's two set-up commands: they work on a stock Debian 12 / Ubuntu 24.04 (a venv, never
the system's pip, which PEP 668 refuses), install from the locks, and CI runs the test one
verbatim (tests/integration/test_first_run.py runs the serve one in a stock Debian 12)."""

from __future__ import annotations

import re
import shlex

import pytest
from readme_commands import PROJECT, README, serve_command, suite_command

CI_RUN = PROJECT / ".ci" / "run"
INSTALL_SYSTEM_DEPS = PROJECT / "tests" / "install-system-deps.sh"


def steps(command: str) -> list[list[str]]:
    return [shlex.split(step) for step in command.split("&&")]


def test_ci_runs_the_readme_test_command_verbatim():
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert suite_command() in lines


@pytest.mark.parametrize("command", [serve_command(), suite_command()],
                         ids=["serve", "test"])
def test_the_command_creates_a_venv_and_runs_everything_from_it(command):
    parts = steps(command)
    venvs = [i for i, argv in enumerate(parts) if argv[:3] == ["python3", "-m", "venv"]]
    assert len(venvs) == 1, command
    assert parts[venvs[0]][3:] == [".venv"], command
    after = parts[venvs[0] + 1:]
    assert after
    for argv in after:
        # pip, python and edge-agent from the venv: nothing relies on PATH or on the system pip
        assert argv[0].startswith(".venv/bin/"), argv
    assert not re.search(r"python3 -m pip|(^|&& )pip |(^|&& )edge-agent ", command)


def test_the_serve_command_installs_the_cpu_lock_and_serves():
    parts = steps(serve_command())
    pip = [argv for argv in parts if argv[0] == ".venv/bin/pip"]
    assert pip == [[".venv/bin/pip", "install", "-c", "requirements/cpu.lock", ".[cpu]"]]
    assert parts[-1] == [".venv/bin/edge-agent", "serve"]


def test_the_test_command_installs_the_test_lock_lints_and_runs_the_suite():
    parts = steps(suite_command())
    assert parts[0] == ["sh", "tests/install-system-deps.sh"]
    pip = [argv for argv in parts if argv[0] == ".venv/bin/pip"]
    assert pip == [[".venv/bin/pip", "install", "-q", "-c", "requirements/test.lock", "-e",
                    ".[cpu,test]"]]
    assert parts[-3:] == [
        [".venv/bin/python", "-m", "ruff", "check", "."],
        [".venv/bin/python", "-m", "mypy"],
        [".venv/bin/python", "-m", "pytest", "-q"],
    ]


def test_the_readme_names_every_apt_package_the_tests_install():
    script = INSTALL_SYSTEM_DEPS.read_text()
    packages = set(re.findall(r'missing="\$missing ([a-z0-9.+-]+)"', script))
    assert {"prometheus", "docker.io", "debootstrap", "python3-venv"} <= packages
    # What README says next to the command, up to the curl examples that follow it.
    said = README.read_text().split("**Install what the tests need", 1)[1]
    said = said.split("Then, from another shell", 1)[0]
    missing = sorted(p for p in packages if f"`{p}`" not in said)
    assert not missing, f"README does not say the test command installs {missing}"

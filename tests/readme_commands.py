"""README's two set-up commands, as written at the top of README.md (tests run them verbatim)."""

from __future__ import annotations

import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"

SERVE_HEADING = "**Install and start the daemon on its bundled models**"
TEST_HEADING = "**Install what the tests need and run the whole suite**"


def _first_sh_block_after(heading: str) -> str:
    text = README.read_text()
    assert heading in text, f"README.md lost its heading {heading!r}"
    after = text.split(heading, 1)[1]
    match = re.search(r"```sh\n(.*?)\n```", after, re.S)
    assert match, f"no sh block after {heading!r} in README.md"
    command = match.group(1).strip()
    assert "\n" not in command, f"README's command after {heading!r} is not one line"
    return command


def serve_command() -> str:
    """The first command: install and start the daemon on its bundled models."""
    return _first_sh_block_after(SERVE_HEADING)


def suite_command() -> str:
    """The second command: install what the tests need and run the whole suite."""
    return _first_sh_block_after(TEST_HEADING)

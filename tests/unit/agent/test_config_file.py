"""The YAML settings file: every way it can be broken is a SettingsError naming where."""

from __future__ import annotations

import pytest

from agent.config_file import MAX_DEPTH, SettingsError, read_config_file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"port: 8080\n  bad: 1\n", "line 2, column 6: not valid YAML: mapping values"),
        (b"port: [1,\n", "line 2, column 1: not valid YAML"),
        (b"a:\n\tb: 1\n", "line 2, column 1: not valid YAML: found character '\\t'"),
        (b"port: 1\nhost: x\nport: 2\n", "line 3, column 1: not valid YAML: key 'port' is given "
                                         "twice (first on line 1)"),
        (b"batching:\n  max_queue: 1\n  max_queue: 2\n", "key 'max_queue' is given twice"),
        (b"host: caf\xe9\n", "line 1: not UTF-8 text"),
        (b"[" * 100_000, "nested more than"),
        (b"a: " + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"\n", "nested more than"),
        (b"- port\n", "must hold a mapping of settings at the top level, not a list"),
        (b"a: !!python/object:os.system x\n", "not valid YAML"),
    ],
)
def test_a_broken_file_names_the_file_and_where(tmp_path, text, message):
    path = tmp_path / "agent.yaml"
    path.write_bytes(text)
    with pytest.raises(SettingsError) as caught:
        read_config_file(path)
    assert caught.value.message.startswith(f"config file {path}")
    assert message in caught.value.message
    assert "\n" not in caught.value.message  # one line in the journal


def test_valid_yaml_reads_as_before_anchors_and_merges_included(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "base: &b\n  max_queue: 3\nbatching:\n  <<: *b\n  max_batch: 2\nport: 9000\n"
    )
    assert read_config_file(path) == {
        "base": {"max_queue": 3}, "batching": {"max_queue": 3, "max_batch": 2}, "port": 9000
    }


def test_an_empty_file_is_no_settings(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("# nothing set\n")
    assert read_config_file(path) == {}


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"cannot read config file .*missing\.yaml"):
        read_config_file(tmp_path / "missing.yaml")

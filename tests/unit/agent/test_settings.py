from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import default_state_dir
from agent.settings_loader import SettingsError, load_settings


def test_defaults_work_with_nothing():
    s = load_settings(environ={})
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    # No model configured: the bundled ones (their sidecars are read when they load).
    assert [(m.name, m.bundled, m.kind, m.source) for m in s.models] == [
        ("defects", "defects", "auto", "bundled"),
        ("fusion", "fusion", "auto", "bundled"),
    ]
    assert s.models[0].names == []  # no override: the version's own labels apply
    assert s.runtime.providers == ["tensorrt", "cuda", "cpu"]
    assert s.runtime.allow_spinning is False  # an edge node runs other work
    assert s.state_dir == default_state_dir()


def test_layers_file_then_env_then_flags(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "port: 9000\nlog_level: debug\nbatching: {max_batch: 8, max_queue: 5}\n"
        "models:\n  - {name: defects, path: /m/d.onnx, conf: 0.4}\n"
    )
    env = {"EDGE_AGENT_PORT": "9100", "EDGE_AGENT_BATCHING__MAX_BATCH": "2"}
    s = load_settings(cfg, environ=env, overrides={"batching.max_queue": 7})
    assert s.port == 9100  # env over file
    assert s.log_level == "debug"  # file over default
    assert s.batching.max_batch == 2  # env over file
    assert s.batching.max_queue == 7  # flag over file
    assert s.models[0].name == "defects"
    assert s.models[0].conf == 0.4
    assert s.models[0].path == Path("/m/d.onnx")


def test_config_file_from_env_and_models_as_name_equals_path(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("port: 8181\n")
    s = load_settings(
        environ={"EDGE_AGENT_CONFIG": str(cfg), "EDGE_AGENT_MODELS": "a=/x/a.onnx, b=/x/b.onnx"}
    )
    assert s.port == 8181
    assert [(m.name, str(m.path)) for m in s.models] == [("a", "/x/a.onnx"), ("b", "/x/b.onnx")]
    s = load_settings(environ={}, overrides={"models": [{"name": "c", "path": "/c.onnx"}]})
    assert s.models[0].name == "c"


def test_per_model_batching_overrides_the_default():
    s = load_settings(
        environ={},
        overrides={
            "models": [
                {"name": "a", "path": "/a.onnx", "batching": {"max_batch": 1}},
                {"name": "b", "path": "/b.onnx"},
            ]
        },
    )
    assert s.batching_for(s.models[0]).max_batch == 1
    assert s.batching_for(s.models[1]).max_batch == s.batching.max_batch


def test_a_bundled_model_under_another_name_with_overrides():
    s = load_settings(
        environ={}, overrides={"models": [{"name": "line3", "bundled": "defects", "conf": 0.5}]}
    )
    (m,) = s.models
    assert (m.name, m.bundled, m.conf, m.iou) == ("line3", "defects", 0.5, None)
    assert m.source == "bundled"
    assert load_settings(environ={}, overrides={"models": [m.__dict__ | {"batching": None}]})


def test_lists_from_the_environment():
    s = load_settings(environ={"EDGE_AGENT_RUNTIME__PROVIDERS": "cuda,cpu"})
    assert s.runtime.providers == ["cuda", "cpu"]


@pytest.mark.parametrize(
    ("env", "overrides", "names"),
    [
        ({"EDGE_AGENT_PORTT": "1"}, {}, ["portt", "EDGE_AGENT_PORTT"]),
        ({"EDGE_AGENT_BATCHING__MAX_BACH": "1"}, {}, ["batching.max_bach"]),
        ({"EDGE_AGENT_PORT": "eighty"}, {}, ["port", "EDGE_AGENT_PORT"]),
        ({"EDGE_AGENT_PORT": "70000"}, {}, ["port"]),
        ({"EDGE_AGENT_RUNTIME__ALLOW_SPINNING": "maybe"}, {}, ["runtime.allow_spinning"]),
        ({"EDGE_AGENT_RUNTIME__PROVIDERS": "cuda,opencl"}, {}, ["runtime.providers"]),
        ({}, {"batching.max_batch": 0}, ["batching.max_batch"]),
        ({"EDGE_AGENT_RUNTIME__WORKER_NICE": "20"}, {}, ["runtime.worker_nice"]),
        ({}, {"runtime.malloc_arenas": -1}, ["runtime.malloc_arenas"]),
        (
            {},
            {"models": [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b"}]},
            ["models[1].name"],
        ),
        ({}, {"models": [{"name": "../etc", "path": "/a"}]}, ["models[0].name"]),
        # 17 characters: past the length that keeps /metrics/summary within 4 KB
        ({}, {"models": [{"name": "a" * 17, "path": "/a"}]}, ["models[0].name", "1-16"]),
        ({}, {"models": [{"name": "a"}]}, ["models[0].path"]),
        ({}, {"models": [{"name": "a", "bundled": "yolo"}]}, ["models[0].bundled", "defects"]),
        (
            {},
            {"models": [{"name": "a", "bundled": "fusion", "path": "/x.onnx"}]},
            ["models[0].path", "bundled"],
        ),
        ({}, {"models": [{"name": "a", "path": "/a", "kind": "lstm"}]}, ["models[0].kind"]),
        ({}, {"models": [{"name": "a", "path": "/a", "sha256": "abc"}]}, ["models[0].sha256"]),
        ({}, {"models": [{"name": "a", "path": "/a", "colour": "red"}]}, ["models[0].colour"]),
        ({}, {"models": ["no-equals-sign"]}, ["models"]),
        ({}, {"runtime": 3}, ["runtime"]),
        ({}, {"limits.max_body_bytes": 1.5}, ["limits.max_body_bytes"]),
    ],
)
def test_unknown_keys_and_bad_values_name_the_key(env, overrides, names):
    with pytest.raises(SettingsError) as err:
        load_settings(environ=env, overrides=overrides)
    for name in names:
        assert name in err.value.message


def test_bad_yaml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1,\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, environ={})
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(listy, environ={})


def test_the_readme_configuration_example_loads_and_matches_the_defaults(tmp_path):
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    configuration = readme.split("\n## Configuration\n", 1)[1]
    block = configuration.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(block)
    s = load_settings(cfg, environ={})
    defaults = load_settings(environ={})
    # Every documented value is the real default (the model list is only an example).
    assert s.runtime == defaults.runtime
    assert s.batching == defaults.batching
    assert s.limits == defaults.limits
    assert s.health == defaults.health
    assert s.metrics == defaults.metrics
    assert s.watchdog == defaults.watchdog
    assert s.lifecycle == defaults.lifecycle
    assert s.admin == defaults.admin
    assert s.revalidate_interval_s == defaults.revalidate_interval_s
    assert s.validate_golden == defaults.validate_golden
    assert (s.host, s.port, s.log_level, s.log_format, s.log_requests) == (
        defaults.host,
        defaults.port,
        defaults.log_level,
        defaults.log_format,
        defaults.log_requests,
    )
    assert (s.drain_grace_s, s.drain_timeout_s) == (
        defaults.drain_grace_s,
        defaults.drain_timeout_s,
    )
    line3, fall = s.models
    assert (line3.name, line3.source, line3.bundled, line3.conf) == (
        "line3", "bundled", "defects", 0.4
    )
    # The documented per-model values are the defaults too.
    documented = {k: v for k, v in fall.__dict__.items() if k not in ("name", "path")}
    plain = load_settings(environ={}, overrides={"models": [{"name": "x", "path": "/x"}]})
    assert documented == {k: v for k, v in plain.models[0].__dict__.items()
                          if k not in ("name", "path")}

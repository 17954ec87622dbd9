"""Loading the settings: defaults < YAML file < ``EDGE_AGENT_*`` environment < CLI flags.

Merges the layers into plain data, converts every value to its field's type (errors name the
key and, for the environment, the variable) and validates the result. Nothing here is kept
after start-up: the :class:`agent.settings.Settings` it returns is passed down.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config_file import SettingsError, read_config_file
from agent.settings import Settings, bundled_model_settings

ENV_PREFIX = "EDGE_AGENT_"


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers and build a validated :class:`Settings`.

    ``overrides`` are CLI flags as dotted keys (``{"port": 9000, "batching.max_batch": 1}``);
    ``models`` may also be given as ``NAME=PATH`` strings in the environment and on the CLI.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    config_file = config_file or _path_or_none(environ.get(ENV_PREFIX + "CONFIG"))
    if config_file is not None:
        data = read_config_file(config_file)
    for key, value in _env_layer(environ).items():
        _set_dotted(data, key, value)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    settings: Settings = _build(Settings, data, "")
    if not settings.models:
        settings.models = bundled_model_settings()
    return settings.validate()


def parse_model_spec(spec: str, where: str = "models") -> dict[str, Any]:
    """``NAME=PATH`` -> ``{"name": NAME, "path": PATH}``."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise SettingsError(f"{where}: expected NAME=PATH.onnx, got {spec!r}")
    return {"name": name.strip(), "path": path.strip()}


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """``EDGE_AGENT_BATCHING__MAX_BATCH=2`` -> ``{"batching.max_batch": "2"}``."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key == "models":
            out[key] = [parse_model_spec(s, name) for s in value.split(",") if s.strip()]
        else:
            out[key] = _EnvValue(value, name)
    return out


@dataclass(frozen=True)
class _EnvValue:
    """A string from the environment: converted to the field's type, errors name the variable."""

    text: str
    origin: str


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SettingsError(f"{where or 'settings'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        origin = data[unknown[0]]
        via = f" (from {origin.origin})" if isinstance(origin, _EnvValue) else ""
        raise SettingsError(f"unknown setting {key!r}{via}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, key)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key)
    env = value if isinstance(value, _EnvValue) else None
    raw = env.text if env else value
    via = f" (from {env.origin})" if env else ""
    try:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if env:
                raise SettingsError(f"{key}{via}: a section cannot be set from one variable")
            return _build(tp, raw, key)
        if origin is list:
            (item,) = typing.get_args(tp)
            if env:
                raw = [s.strip() for s in raw.split(",") if s.strip()]
            if not isinstance(raw, list):
                raise SettingsError(f"{key}: expected a list, got {type(raw).__name__}")
            if key == "models":
                raw = [parse_model_spec(r, key) if isinstance(r, str) else r for r in raw]
            return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(raw)]
        if tp is bool:
            return _to_bool(raw)
        if tp is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if tp is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if tp is Path:
            if not isinstance(raw, (str, Path)):
                raise ValueError(raw)
            return Path(raw).expanduser()
        if tp is str:
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise ValueError(raw)
            return str(raw)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        name = getattr(tp, "__name__", str(tp))
        raise SettingsError(f"{key}{via}: expected {name}, got {raw!r}") from exc
    raise SettingsError(f"{key}: unsupported setting type {tp}")


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)




def _path_or_none(value: str | None) -> Path | None:
    return Path(value) if value else None

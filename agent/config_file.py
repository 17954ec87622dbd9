"""Reading the YAML settings file strictly: every failure is a ``SettingsError`` that names
the file (and the line and column where YAML can say), never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from inference.errors import EdgeError

# A settings file is a few dozen lines; nesting past this is an accident (or an attack) that
# would otherwise end in a RecursionError deep inside the YAML parser.
MAX_DEPTH = 32


class SettingsError(EdgeError):
    """A setting is unknown or has a bad value; the message names it."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML keeps the last one
    silently, so a pasted block would override a setting without a word."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the constructor below says so
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (first on line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _where(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return f"config file {path}"
    return f"config file {path}, line {mark.line + 1}, column {mark.column + 1}"


def _what(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem and context:
        return f"{problem} ({context})"
    return str(problem or context or exc).splitlines()[0]


def _depth(node: yaml.Node) -> int:
    """How deeply the composed document nests, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(current, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in current.value for child in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
    return deepest


def read_config_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML settings file (``{}`` for an empty file)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SettingsError(
            f"config file {path}, line {line}: not UTF-8 text (byte {exc.start})"
        ) from None
    loader = _StrictLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return {}
            if _depth(node) > MAX_DEPTH:
                raise SettingsError(
                    f"config file {path}: nested more than {MAX_DEPTH} levels deep"
                )
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise SettingsError(f"{_where(path, exc)}: not valid YAML: {_what(exc)}") from None
    except RecursionError:  # composing nests recursively too, before _depth can look
        raise SettingsError(
            f"config file {path}: nested more than {MAX_DEPTH} levels deep"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"config file {path} must hold a mapping of settings at the top level, "
            f"not a {type(data).__name__}"
        )
    return data

"""Every body the daemon writes is strict JSON: no bare NaN or Infinity."""

from __future__ import annotations

import json

from support import strict_json

from agent.strict_json import dumps


def test_non_finite_floats_become_null_anywhere_in_the_document():
    doc = {"detail": [float("nan"), 1.5, {"x": float("inf"), "y": (float("-inf"), 2)}]}
    out = dumps(doc)
    assert strict_json(out) == {"detail": [None, 1.5, {"x": None, "y": [None, 2]}]}


def test_finite_documents_are_written_as_json_dumps_writes_them():
    doc = {"a": [1, 2.5, "NaN", None, True], "b": {"c": -0.0}}
    assert dumps(doc) == json.dumps(doc)


def test_default_serialises_the_unknown():
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert strict_json(dumps({"v": Odd(), "w": float("nan")}, default=str)) == {
        "v": "odd", "w": None
    }

"""Single-stream timing in interleaved blocks; what ``compare`` accepts on its command line."""

from __future__ import annotations

import argparse
import asyncio
import itertools

import pytest

from benchmarks.compare import parse_tree, parse_variant
from benchmarks.single import Measure, interleaved_blocks


def test_blocks_rotate_and_drop_the_settling_calls():
    calls: list[str] = []
    counter = itertools.count()

    def measure(name: str) -> Measure:
        async def once() -> float:
            calls.append(name)
            return float(next(counter))

        return once

    out = asyncio.run(
        interleaved_blocks({"a": measure("a"), "b": measure("b")}, rounds=6, block=3, settle=1)
    )
    # Two blocks per measure of 1 + 3 calls; the second pair of blocks starts with "b".
    assert calls == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4
    assert out["a"] == [1.0, 2.0, 3.0, 13.0, 14.0, 15.0]
    assert out["b"] == [5.0, 6.0, 7.0, 9.0, 10.0, 11.0]


def test_rounds_not_a_multiple_of_the_block_are_cut_to_rounds():
    async def once() -> float:
        return 1.0

    out = asyncio.run(interleaved_blocks({"x": once}, rounds=5, block=4, settle=0))
    assert out["x"] == [1.0] * 5


def test_a_tree_must_be_a_checkout(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match="not an edge-agent checkout"):
        parse_tree(f"before={tmp_path}")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "__main__.py").write_text("")
    assert parse_tree(f"before={tmp_path}") == ("before", tmp_path.resolve())
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
        parse_tree("before")


def test_a_variant_is_a_name_and_a_json_object():
    v = parse_variant('spin={"runtime": {"allow_spinning": true}}')
    assert (v.name, v.overlay) == ("spin", {"runtime": {"allow_spinning": True}})
    with pytest.raises(argparse.ArgumentTypeError, match="JSON object"):
        parse_variant("x=[1]")

"""The coverage matrix (tests/matrix.py): every cell is tested or listed untested with a reason, and
every test it names exists."""

from __future__ import annotations

import ast
from pathlib import Path

import matrix

TESTS = Path(__file__).resolve().parent


def _test_names(file: str) -> set[str]:
    tree = ast.parse((TESTS / file).read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_every_cell_is_tested_or_listed_with_a_reason():
    bare = [c for c in matrix.cells() if not any(matrix.status(c))]
    assert not bare, f"{len(bare)} cells neither tested nor listed in UNTESTED, e.g. {bare[:3]}"


def test_named_tests_exist():
    for _, tests in matrix.TESTED:
        for ref in tests:
            file, name = ref.split("::")
            assert name in _test_names(file), ref


def test_axes_follow_the_registries():
    from rlens.attention_modes import ATTENTION_MODES
    from rlens.families import all_families
    from rlens.pruning import PRUNING_METHODS
    from rlens.runtime.backends import BACKENDS

    seen = {axis: {c[axis] for c in matrix.cells()} for axis in matrix.AXES}
    assert seen["family"] == set(all_families())
    assert seen["attention"] - {matrix.NA} == set(ATTENTION_MODES)
    assert seen["backend"] == set(BACKENDS)
    assert {r.split("+")[-1] for r in seen["reduction"]} >= set(PRUNING_METHODS)

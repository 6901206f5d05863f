"""Budgets (STYLE 10): files under 600 lines, functions under 60 lines, import direction."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rlens"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60


def _py_files():
    return sorted(SRC.rglob("*.py"))


def test_files_are_under_the_line_budget():
    too_long = {str(p.relative_to(SRC)): n for p in _py_files() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not too_long, too_long


def test_functions_are_under_the_line_budget():
    too_long = {}
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long[f"{p.relative_to(SRC)}:{node.name}"] = n
    assert not too_long, too_long


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_runtime_side_never_imports_torch_or_the_build_stages():
    forbidden = ("torch", "rlens.export", "rlens.reference", "rlens.calibrate", "transformers.modeling_utils")
    side = [p for p in _py_files() if p.parts[-2] in ("runtime", "backends") or p.name in ("processing.py", "fileio.py")]
    bad = {str(p.relative_to(SRC)): sorted(n for n in _imports(p) if n.startswith(forbidden)) for p in side}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_tests_import_no_other_test_module_or_benchmark():
    """Shared test code lives in conftest.py (fixtures) and helpers.py; a test never imports
    another test module, conftest or a benchmark script (they are not an API)."""
    tests = Path(__file__).resolve().parent
    bad = {}
    for p in sorted(tests.glob("*.py")):
        names = _imports(p)
        wrong = sorted(n for n in names if n.startswith(("test_", "conftest", "benchmarks", "tests.")))
        text = p.read_text()
        if p.name != Path(__file__).name and "spec_from_file_location" in text and '"benchmarks"' in text:
            wrong.append("a benchmark script loaded by path")
        if wrong:
            bad[p.name] = wrong
    assert not bad, bad


def test_configs_and_the_cli_parser_import_nothing_heavy():
    """rlens.configs (every stage's config) and building the CLI parser from it import neither torch,
    transformers, onnx, onnxruntime nor numpy: `rlens --help` and the torch-free runtime stay light."""
    import subprocess
    import sys

    code = ("import sys; import rlens.configs; from rlens.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


def test_no_import_cycle_between_packages(tmp_path):
    """tools/import_graph.py (run as a program, every import counted, lazy ones too) finds no cycle
    between rlens packages; the only module cycles allowed are the registries' own pattern (a
    package's __init__ imports its members, which import the package's ``register``)."""
    import json
    import subprocess
    import sys

    root = SRC.parents[1]
    out = subprocess.run([sys.executable, str(root / "tools" / "import_graph.py"), "--json", str(tmp_path / "g.json")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    graph = json.loads((tmp_path / "g.json").read_text())
    assert graph["cycles"] == [], graph["cycles"]
    registries = ("rlens.families", "rlens.imageproc")
    odd = [c for c in graph["module_cycles"] if not (len(c) == 2 and c[0] in registries and c[1].startswith(c[0] + "."))]
    assert odd == [], odd

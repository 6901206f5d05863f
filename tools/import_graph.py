"""Print the rlens import graph per package, lines per file, and import cycles between packages.

A "package" is a subpackage of rlens (`rlens.export`, `rlens.runtime.backends`, ...) or a top-level
module (`rlens.plan`). Every import statement counts, including ones inside functions (marked
`lazy` when a package is reached only that way). Usage:

    python tools/import_graph.py            # graph + cycles
    python tools/import_graph.py --lines    # also lines per file
    python tools/import_graph.py --json out.json
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    """rlens.export.decoder -> rlens.export; rlens.plan -> rlens.plan; rlens.runtime.backends.x -> ...backends."""
    path = SRC.joinpath(*module.split("."))
    if path.is_dir():
        return module
    return module.rsplit(".", 1)[0] if (path.parent / "__init__.py").exists() and path.parent != SRC / "rlens" else module


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        parts = parts if is_pkg else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    # `from rlens.export import decoder` names a module; otherwise the imported thing is an attribute.
    out = [base]
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if SRC.joinpath(*sub.split(".")).with_suffix(".py").exists() or SRC.joinpath(*sub.split(".")).is_dir():
            out.append(sub)
    return out


def imports_of(path: Path) -> dict[str, bool]:
    """rlens modules imported by one file -> True when at least one import is at module top level."""
    module = module_name(path)
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    for n in tree.body:  # imports under `if TYPE_CHECKING:` / try at top level count as top level
        if isinstance(n, (ast.If, ast.Try)):
            top_level.update(id(c) for c in ast.walk(n))
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(node, module, path.name == "__init__.py")
        else:
            continue
        for name in names:
            if name.startswith("rlens"):
                found[name] = found.get(name, False) or id(node) in top_level
    return found


def graph() -> dict[str, dict[str, str]]:
    """package -> {imported package: "top" | "lazy"} (self-imports dropped)."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted((SRC / "rlens").rglob("*.py")):
        pkg = package_of(module_name(path))
        edges = out.setdefault(pkg, {})
        for name, top in imports_of(path).items():
            target = package_of(name)
            if target in (pkg, "rlens"):
                continue
            if top or edges.get(target) == "top":
                edges[target] = "top"
            else:
                edges.setdefault(target, "lazy")
    return out


def cycles(g: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a in g for b in g[a] if a < b and a in g.get(b, {}))


def module_cycles() -> list[tuple[str, str]]:
    """Pairs of modules (files) that import each other, at any level."""
    deps = {module_name(p): set(imports_of(p)) for p in (SRC / "rlens").rglob("*.py")}
    return sorted((a, b) for a in deps for b in deps[a] if a < b and b in deps and a in deps[b])


def lines_per_file() -> dict[str, int]:
    return {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in sorted((SRC / "rlens").rglob("*.py"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", action="store_true", help="also print lines per file")
    ap.add_argument("--json", help="write everything as JSON to this path")
    args = ap.parse_args(argv)
    g = graph()
    short = lambda s: s.removeprefix("rlens.")  # noqa: E731
    for pkg in sorted(g):
        deps = ", ".join(f"{short(d)}{'' if k == 'top' else ' (lazy)'}" for d, k in sorted(g[pkg].items()))
        print(f"{short(pkg):20s} -> {deps or '-'}")
    print("package cycles:", ", ".join(f"{short(a)}<->{short(b)}" for a, b in cycles(g)) or "none")
    print("module cycles:", ", ".join(f"{short(a)}<->{short(b)}" for a, b in module_cycles()) or "none")
    lines = lines_per_file()
    if args.lines:
        for name, n in sorted(lines.items(), key=lambda kv: -kv[1]):
            print(f"{n:5d} {name}")
    print(f"files: {len(lines)}, lines: {sum(lines.values())}, max: {max(lines.values())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"graph": g, "cycles": cycles(g), "module_cycles": module_cycles(),
                                               "lines": lines}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cold start of ``rlens run``: process wall time, bundle load and time to first token, per Python
environment, alternated in one run (the machines are shared: compare environments side by side).

    python benchmarks/cold_start.py BUNDLE --env new=/path/venv/bin/python [--env old=PYTHON,OLD_BUNDLE] [--repeat 5]

Each repeat starts a fresh process per environment (``python -m rlens.cli.main run BUNDLE ...``),
so imports, manifest hashing, graph loading and the first generation are all cold. ``load`` and
``ttft`` are what ``rlens run`` reports on stderr; ``wall`` is the whole process. Writes
benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATS = re.compile(r"(?:load (?P<load>[\d.]+) ms; )?time to first token (?P<ttft>[\d.]+) ms")


def one_run(python: str, bundle: str, image: str) -> dict[str, float]:
    cmd = [python, "-m", "rlens.cli.main", "run", bundle, "--image", image, "--prompt", "What is in the image?",
           "--max-new-tokens", "4"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{python}: rlens run failed: {r.stderr.strip().splitlines()[-1:]}")
    m = STATS.search(r.stderr)
    if m is None:
        raise SystemExit(f"{python}: no timing line in: {r.stderr[-300:]}")
    imp = subprocess.run([python, "-c", "import time; t=time.perf_counter(); import rlens.runtime, rlens.cli.main; "
                          "print(time.perf_counter()-t)"], capture_output=True, text=True)
    has = subprocess.run([python, "-c", "import importlib.util as u; print(int(bool(u.find_spec('torch'))), "
                          "int(bool(u.find_spec('transformers'))))"], capture_output=True, text=True).stdout.split()
    return {"wall_s": wall, "load_s": float(m["load"]) / 1e3 if m["load"] else float("nan"),
            "ttft_s": float(m["ttft"]) / 1e3, "import_s": float(imp.stdout.strip() or "nan"),
            "torch_installed": has[0] == "1", "transformers_installed": has[1] == "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="bundle folder (e.g. out/demo-bundle from ./dev.sh demo)")
    ap.add_argument("--env", action="append", required=True, metavar="NAME=PYTHON[,BUNDLE]",
                    help="an environment's python, and its own bundle when it needs another one (e.g. an older "
                         "rlens that reads an older bundle format); repeatable, runs alternate between them")
    ap.add_argument("--image", default=str(HERE.parent / "examples" / "demo.png"), help="image file")
    ap.add_argument("--repeat", type=int, default=5, help="cold runs per environment (default 5)")
    ap.add_argument("--json", default=str(HERE / "results" / "cold_start.json"), help="output JSON")
    args = ap.parse_args()
    envs = dict(e.split("=", 1) for e in args.env)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in envs}
    for _ in range(args.repeat):
        for name, spec in envs.items():
            python, _, bundle = spec.partition(",")
            runs[name].append(one_run(python, bundle or args.bundle, args.image))
    result = {"bundle": args.bundle, "repeat": args.repeat, "envs": {}}
    print(f"{'env':<12} {'wall s':>8} {'import s':>9} {'load s':>8} {'ttft s':>8}  torch/transformers installed")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "import_s", "load_s", "ttft_s")}
        result["envs"][name] = {"python_and_bundle": envs[name], "median": med, "runs": rs}
        print(f"{name:<12} {med['wall_s']:>8.3f} {med['import_s']:>9.3f} {med['load_s']:>8.3f} {med['ttft_s']:>8.3f}"
              f"  {rs[0]['torch_installed']}/{rs[0]['transformers_installed']}")
    if len(envs) == 2:
        a, b = list(runs)
        ratio = statistics.median(x["wall_s"] / y["wall_s"] for x, y in zip(runs[a], runs[b]))
        result["wall_ratio"] = {f"{a}/{b}": round(ratio, 4)}
        print(f"wall {a}/{b} (median of pairs): {ratio:.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

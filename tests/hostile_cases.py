"""Hostile and careless inputs against the rlens CLI and API (issue 15), each in its own process.

``python tests/hostile_cases.py --src SRC --json OUT`` runs every case against the rlens in SRC
(so the same cases measure an older checkout) and prints the counts per outcome:
traceback (or "internal error"), data lost, code executed, file read outside the bundle or
unhashed, hang (timeout), temporary left behind, silently accepted / wrong result.
tests/test_hostile_inputs.py runs it against this checkout and requires every count to be zero.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile_corpus as corpus  # noqa: E402
from hostile_catalog import OUTCOMES, Case, cases  # noqa: E402


# ---- running -------------------------------------------------------------------------------------
def _limits(fsize: int | None) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        os.setsid()
    return apply


def _fmt(x, W: Path, C: Path):
    return x.replace("{W}", str(W)).replace("{C}", str(C)) if isinstance(x, str) else x


def run_case(case: Case, W: Path, env: dict[str, str]) -> dict:
    C = W / "cases" / case.name
    shutil.rmtree(C, ignore_errors=True)
    C.mkdir(parents=True)
    if case.setup:
        case.setup(W, C)
    cwd = C / case.extra.get("cwd", "")
    if case.snippet is not None:
        cmd = [sys.executable, "-c", case.snippet.replace("{W}", str(W)).replace("{C}", str(C))]
    else:
        cmd = [sys.executable, "-m", "rlens.cli.main", *(_fmt(a, W, C) for a in case.argv)]
    t0 = time.time()
    rc, out, err, hang = _spawn(cmd, cwd, env, case)
    return classify(case, C, W, rc, out, err, hang, time.time() - t0)


def _spawn(cmd: list, cwd: Path, env: dict, case: Case) -> tuple:
    if case.tty_yes:
        return _spawn_tty(cmd, cwd, env, case)
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=_limits(case.fsize))
    try:
        out, err = p.communicate(timeout=case.timeout)
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out.decode(errors="replace"), err.decode(errors="replace"), True


def _spawn_tty(cmd: list, cwd: Path, env: dict, case: Case) -> tuple:
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.chdir(cwd)
        os.execve(cmd[0], cmd, env)
    buf, deadline = b"", time.time() + case.timeout
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if b"[y/N]" in chunk or b"y/N" in chunk:
                os.write(fd, b"y\n")
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), "", buf.decode(errors="replace"), False
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None, "", buf.decode(errors="replace"), True
    _, status = os.waitpid(pid, 0)  # the terminal closed: the process ended
    return os.waitstatus_to_exitcode(status), "", buf.decode(errors="replace"), False


def classify(case: Case, C: Path, W: Path, rc, out: str, err: str, hang: bool, seconds: float) -> dict:
    res = {k: False for k in OUTCOMES}
    res.update(case=case.name, group=case.group, rc=rc, seconds=round(seconds, 1), stderr=err.strip()[-600:])
    result = out.strip().splitlines()[-1] if out.strip() else ""
    res["hang"] = hang
    res["traceback"] = "Traceback (most recent call last)" in err or "internal error" in err
    res["code_executed"] = any(W.glob("PWNED*")) or any(C.rglob("PWNED*"))
    res["data_lost"] = bool(case.lost and case.lost(C)) or result == "RESULT lost"
    res["read_outside"] = case.outside and rc == 0
    res["left_behind"] = any(".tmp-" in p.name for p in C.rglob(".*")) or result == "RESULT left"
    if case.snippet is not None:
        res["silent"] = result == "RESULT wrong"
        res["traceback"] = res["traceback"] or (rc not in (0, None) and "RESULT" not in result)
    elif not hang and not res["traceback"]:
        error_lines = [ln for ln in err.splitlines() if "error:" in ln]
        if case.expect == "error":
            res["silent"] = rc == 0 and not res["read_outside"]
            res["traceback"] = rc not in (0, 2) or (rc == 2 and len(error_lines) != 1)
        elif case.expect == "ok":
            res["traceback"] = rc != 0
        else:
            res["traceback"] = rc not in (0, 2)
    for p in list(W.glob("PWNED*")):
        p.unlink()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"), help="rlens source tree")
    ap.add_argument("--work", default="/tmp/rlens-hostile", help="work folder (corpus and case folders)")
    ap.add_argument("--json", help="write the per-case results and counts here")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--start", default="", help="skip the cases before this one (resume a run)")
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "RLENS_DEBUG"}
    env.update(PYTHONPATH=args.src, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    W = Path(args.work)
    corpus.build(W, env)
    results = []
    todo = cases()
    if args.start:
        todo = todo[[c.name for c in todo].index(args.start):]
    for case in todo:
        if args.k in case.name:
            r = run_case(case, W, env)
            flags = [k for k in OUTCOMES if r[k]]
            print(f"{case.group:9} {case.name:32} rc={r['rc']!s:5} {r['seconds']:6.1f}s {' '.join(flags)}",
                  flush=True)
            results.append(r)
            if args.json:
                _write(args, results)
    counts = {k: sum(r[k] for r in results) for k in OUTCOMES}
    print(f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        _write(args, results)
    return 0


def _write(args: argparse.Namespace, results: list[dict]) -> None:
    counts = {k: sum(r[k] for r in results) for k in OUTCOMES}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"src": args.src, "cases": len(results), "counts": counts,
                                           "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""What `rlens run` imports before it does any work (its cold start)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_start_imports_no_build_stack():
    """`rlens run` cold start: building the CLI parser imports neither torch, transformers, onnx,
    nor the calibrate/export/engine/flops code (each costs tenths of a second to seconds)."""
    code = ("import sys, rlens.cli.main as m; m.build_parser(); "
            "print(' '.join(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'onnx') "
            "or k.startswith(('rlens.calibrate', 'rlens.export', 'rlens.engine', 'rlens.flops', 'rlens.reference')))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == []

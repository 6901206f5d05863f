"""``python -m rlens.engine.trtexec BUNDLE/decoder.onnx``: a graph ``trtexec --onnx`` can build
with the HollowAttention plugin (see docs/plugin.md). rlens' own build-engine needs no file:
it parses the prepared bytes directly (engine/prepare.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rlens.engine.prepare import onnx_for_tensorrt
from rlens.errors import BundleError


def write_for_trtexec(src: str | Path) -> Path:
    """Write ``<name>.trt.onnx`` next to ``src``: the graph without the HollowAttention function
    bodies and still pointing at ``src``'s external data (same folder), for ``trtexec --onnx``
    (which would otherwise inline the ONNX function body and never use the plugin). The file
    holds no weights; it is written atomically and never replaces a file rlens did not write."""
    src = Path(src)
    prepared = onnx_for_tensorrt(src)
    dst = src.with_name(src.stem + ".trt.onnx")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.write_bytes(prepared.model_bytes)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    """``python -m rlens.engine.trtexec BUNDLE/decoder.onnx``: write the trtexec-ready graph."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m rlens.engine.trtexec BUNDLE/decoder.onnx  (writes BUNDLE/decoder.trt.onnx "
              "for trtexec --onnx, without the HollowAttention function bodies)", file=sys.stderr)
        return 2
    try:
        dst = write_for_trtexec(args[0])
    except (BundleError, OSError) as e:
        print(f"rlens: error: {e}", file=sys.stderr)
        return 2
    print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
        command = trtexec_command(dst)
    except (BundleError, OSError) as e:
        print(f"rlens: error: {e}", file=sys.stderr)
        return 2
    print(dst)
    print(command, file=sys.stderr)
    return 0


def trtexec_command(graph: Path, max_seq: int = 2048, max_visual: int = 1024) -> str:
    """A trtexec command for ``graph`` with the prefill profile of ``rlens build-engine`` (trtexec
    builds one profile per command; build-engine adds the decode profile)."""
    import json

    from rlens.engine.profiles import decoder_profiles
    from rlens.plugins import BUILD_COMMAND, library_path, PluginNotBuiltError

    manifest = json.loads((graph.parent / "manifest.json").read_text())
    prefill = decoder_profiles(manifest, max_seq, max_visual)[0]
    flags = []
    for i, key in enumerate(("minShapes", "optShapes", "maxShapes")):
        shapes = ((n, (prefill.values or {}).get(n, s)[i] if n == "visual_span" else s[i])
                  for n, s in prefill.shapes.items())
        flags.append(f"--{key}=" + ",".join(f"{n}:{'x'.join(map(str, v))}" for n, v in shapes))
    try:
        lib = library_path()
    except PluginNotBuiltError:
        lib = f"<librlens_trt_plugins.so: {BUILD_COMMAND}>"
    return (f"# prefill-profile engine (max_seq {max_seq}, {max_visual} visual tokens); visual_span is given\n"
            "# as values (TensorRT makes it a shape tensor when it feeds Slice bounds); if trtexec says it is\n"
            "# not one, give visual_span:2 in all three flags instead\n"
            f"trtexec --onnx={graph} --dynamicPlugins={lib} --stronglyTyped "
            f"--saveEngine={graph.parent}/decoder.trtexec.plan " + " ".join(flags))


if __name__ == "__main__":
    sys.exit(main())

"""``rlens doctor``: the device check a Jetson (or any GPU box) runs with the runtime install and
TensorRT only -- no torch, no export extra.

It identifies the platform and GPU, checks TensorRT (>= 10.3), loads and registers the plugin,
runs the HollowAttention kernels through ctypes against the numpy reference, builds an engine
from the bundle shipped in ``plugins/doctor/`` (tiny-llava, fp16, plugin attention, every layer
hollow with W = 8; exported by plugins/doctor/make_bundle.py), compares its prefill with ONNX
Runtime, and times hollow vs dense attention (kernel) and reduced vs full prefill (engine).
Every check that cannot run says why (SKIP), and the checks it depends on are named. One table
is printed; ``--json`` writes it too. Exit code 1 when a check FAILs, 0 otherwise.
"""

from __future__ import annotations

import importlib
import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlens.errors import RlensError
from rlens.plugins import DOCTOR_BUNDLE


REPO = Path(__file__).resolve().parents[3]
DEFAULT_BUNDLE = DOCTOR_BUNDLE
#: prefill shape of the timings: 1024 visual tokens after 16 text tokens, 1100 in all
TIMING_SEQ, TIMING_SPAN, TIMING_WINDOW = 1100, (16, 1024), 64


@dataclass
class Row:
    check: str
    status: str  # ok | FAIL | SKIP
    result: str = ""
    why: str = ""


@dataclass
class Doctor:
    bundle: Path
    reps: int = 20
    rows: list[Row] = field(default_factory=list)
    ctx: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str, needs: tuple[str, ...], fn: Callable[[], tuple[str, str] | str]) -> None:
        """Run one check unless a check it needs did not pass; record ok / FAIL / SKIP."""
        missing = [n for n in needs if self.status(n) != "ok"]
        if missing:
            self.rows.append(Row(name, "SKIP", why="needs " + ", ".join(f"{m} ({self.status(m)})" for m in missing)))
            return
        try:
            out = fn()
            result, status = (out, "ok") if isinstance(out, str) else out
            self.rows.append(Row(name, status, result=result if status != "SKIP" else "",
                                 why=result if status == "SKIP" else ""))
        except Skip as e:
            self.rows.append(Row(name, "SKIP", why=str(e)))
        except Exception as e:  # a check that crashes is a failure, reported in its row
            self.rows.append(Row(name, "FAIL", why=f"{type(e).__name__}: {e}"))

    def status(self, name: str) -> str:
        return next((r.status for r in self.rows if r.check == name), "not run")


class Skip(Exception):
    """A check that cannot run here; the message says why."""


# ---- environment ----------------------------------------------------------------------------


def _platform() -> str:
    parts = [f"{platform.machine()}, Python {platform.python_version()}"]
    for path in ("/proc/device-tree/model", "/etc/nv_tegra_release"):
        try:
            text = Path(path).read_bytes().decode(errors="replace").strip("\x00 \n").splitlines()[0]
            parts.append(text.lstrip("# ")[:60])
        except (OSError, IndexError):
            pass
    return "; ".join(parts)


def _gpu(doc: Doctor) -> str:
    from rlens.targets import _gpu_name_and_cc

    try:
        name, cc = _gpu_name_and_cc()
    except RlensError as e:
        raise Skip(str(e)) from None
    doc.ctx["gpu"] = (name, cc)
    return f"{name} (sm {cc})"


def _module(name: str, why: str) -> Callable[[], str]:
    def check() -> str:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            raise Skip(f"not importable ({e}); {why}") from None
        return f"{name} {getattr(mod, '__version__', '')}".strip()

    return check


def _tensorrt() -> str:
    from rlens.engine.build import TensorRTUnavailable, check_tensorrt_version

    try:
        import tensorrt as trt
    except ImportError as e:
        raise Skip(f"not importable ({e}): JetPack's python3-libnvinfer (venv with --system-site-packages) or "
                   "pip install tensorrt on x86") from None
    try:
        check_tensorrt_version(trt.__version__)
    except TensorRTUnavailable as e:
        return str(e), "FAIL"
    return f"TensorRT {trt.__version__}"


def _library(name: str) -> Callable[[Doctor], str]:
    def check(doc: Doctor) -> str:
        from rlens import plugins

        try:
            path = plugins.library_path(name)
        except plugins.PluginNotBuiltError:
            raise Skip(f"{name} not built: {plugins.BUILD_COMMAND}") from None
        doc.ctx[name] = path
        return str(path)

    return check


def _register(doc: Doctor) -> str:
    import tensorrt as trt

    from rlens import plugins

    plugins.register_with(trt.get_plugin_registry(), doc.ctx[plugins.LIBRARY_NAME])
    return "HollowAttention v1 (rlens) creator registered"


# ---- kernel ---------------------------------------------------------------------------------


def _kernel_lib(doc: Doctor):
    from rlens import plugins
    from rlens.plugins import kernel_check

    if "kernel" not in doc.ctx:
        doc.ctx["kernel"] = kernel_check.load_kernel_library(str(doc.ctx[plugins.KERNEL_LIBRARY_NAME]))
        doc.ctx["memory"] = kernel_check.DeviceMemory()
    return doc.ctx["kernel"], doc.ctx["memory"]


def _kernel_vs_numpy(doc: Doctor, kind: str) -> Callable[[], tuple[str, str]]:
    def check() -> tuple[str, str]:
        from rlens.plugins import kernel_check

        lib, memory = _kernel_lib(doc)
        r = kernel_check.check_kernel(lib, kind, memory)
        text = f"{r.cases} cases, max abs error {r.max_abs:.2e}"
        return (text, "ok") if r.ok else (text + "; " + "; ".join(r.failures[:3]), "FAIL")

    return check


def _kernel_timing(doc: Doctor) -> str:
    from rlens.plugins import kernel_check

    lib, memory = _kernel_lib(doc)
    hollow = (1, 12, 2, TIMING_SEQ, 0, 128, TIMING_SPAN, TIMING_WINDOW)  # Qwen2-VL-2B's attention shape
    dense = hollow[:7] + (TIMING_SEQ,)  # W >= span: plain causal attention, same kernel
    t = {name: kernel_check.time_kernel(lib, kind, memory, case, doc.reps)
         for name, kind, case in (("v2 hollow", "f16_v2", hollow), ("v2 dense", "f16_v2", dense),
                                  ("v1 hollow", "f16_v1", hollow), ("v1 dense", "f16_v1", dense))}
    doc.ctx["kernel_times"] = t
    return (f"hollow/dense v2 {t['v2 hollow'] / t['v2 dense']:.2f} ({t['v2 hollow'] * 1e3:.3f} / "
            f"{t['v2 dense'] * 1e3:.3f} ms), v2/v1 hollow {t['v2 hollow'] / t['v1 hollow']:.2f}, "
            f"v2/v1 dense {t['v2 dense'] / t['v1 dense']:.2f}")


# ---- engine ---------------------------------------------------------------------------------


def _engine_build(doc: Doctor) -> str:
    from rlens import plugins
    from rlens.engine import EngineConfig, engine_from_bundle

    if not (doc.bundle / "manifest.json").is_file():
        raise Skip(f"no bundle at {doc.bundle}")
    work = Path(tempfile.mkdtemp(prefix="rlens-doctor-"))
    doc.ctx["workdir"] = work
    bundle = Path(shutil.copytree(doc.bundle, work / "bundle"))  # the shipped bundle stays untouched
    t0 = time.perf_counter()
    engine_from_bundle(bundle, EngineConfig(plugin_lib=str(doc.ctx[plugins.LIBRARY_NAME]), max_visual_tokens=1024,
                                            max_seq=1200, workspace_mb=512, graphs=("decoder",)))
    doc.ctx["bundle"] = bundle
    size = (bundle / "engines" / "decoder.plan").stat().st_size
    return f"decoder engine in {time.perf_counter() - t0:.1f} s ({size / 1e6:.1f} MB), prefill + decode profiles"


def prefill_feeds(manifest: dict[str, Any], seq: int, span: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random prefill inputs for a bundle's decoder, dtypes from its manifest."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for io in manifest["graphs"]["decoder"]["inputs"]:
        name, dtype = io["name"], np.dtype(io["dtype"])
        if name == "inputs_embeds":
            feeds[name] = rng.standard_normal((1, seq, io["shape"][2])).astype(dtype)
        elif name == "attention_mask":
            feeds[name] = np.ones((1, seq), dtype)
        elif name == "position_ids":
            pos = np.arange(seq, dtype=dtype)[None]
            feeds[name] = np.stack([pos] * 3) if len(io["shape"]) == 3 else pos
        elif name == "visual_span":
            feeds[name] = np.asarray(span, dtype)
        else:  # past_key_values.*: no past in prefill
            feeds[name] = np.zeros((1, io["shape"][1], 0, io["shape"][3]), dtype)
    return feeds


def _bundle_on_onnxruntime(doc: Doctor) -> str:
    """The shipped bundle is intact (every file's sha256) and runs on ONNX Runtime's CPU EP (the
    HollowAttention node through its ONNX function body)."""
    import onnxruntime as ort

    from rlens.runtime.manifest import read_manifest

    if not (doc.bundle / "manifest.json").is_file():
        raise Skip(f"no bundle at {doc.bundle}")
    manifest = read_manifest(doc.bundle, check_hashes=True).raw
    session = ort.InferenceSession(str(doc.bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], prefill_feeds(manifest, 40, (6, 16)))[0]
    if not np.isfinite(logits).all():
        return "non-finite logits", "FAIL"
    return f"{doc.bundle.name}: hashes ok, prefill of 40 tokens gives finite logits {tuple(logits.shape)}"


def _runner(doc: Doctor):
    if "runner" not in doc.ctx:
        from polygraphy.backend.trt import TrtRunner

        import tensorrt as trt

        plan = (doc.ctx["bundle"] / "engines" / "decoder.plan").read_bytes()
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        runner = TrtRunner(engine)
        runner.activate()
        doc.ctx["runner"] = runner
    return doc.ctx["runner"]


def _engine_vs_onnxruntime(doc: Doctor) -> tuple[str, str]:
    import onnxruntime as ort

    bundle = doc.ctx["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    tol = 2e-2 if manifest.get("dtype") == "fp16" else 1e-4
    worst = 0.0
    session = ort.InferenceSession(str(bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    for seq, span in ((40, (6, 16)), (300, (16, 256)), (24, (0, 0))):
        feeds = prefill_feeds(manifest, seq, span)
        want = session.run(["logits"], feeds)[0]
        got = _runner(doc).infer(feeds)["logits"]
        worst = max(worst, float(np.abs(np.asarray(got, np.float64) - want).max()))
    text = f"prefill logits, 3 shapes (span mid / 256 visual / none), max abs diff {worst:.2e} (tol {tol:g})"
    return text, "ok" if worst <= tol else "FAIL"


def _prefill_timing(doc: Doctor) -> str:
    manifest = json.loads((doc.ctx["bundle"] / "manifest.json").read_text())
    runner = _runner(doc)
    feeds = {"hollow": prefill_feeds(manifest, TIMING_SEQ, TIMING_SPAN),
             "full": prefill_feeds(manifest, TIMING_SEQ, (0, 0))}  # empty span: every layer dense causal
    times: dict[str, list[float]] = {"hollow": [], "full": []}
    for i in range(doc.reps + 2):
        for name, f in feeds.items():  # alternated in one process
            t0 = time.perf_counter()
            runner.infer(f)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    h, f = (float(np.median(times[k])) for k in ("hollow", "full"))
    layers = len(manifest["plan"]["hollow_layers"])
    return (f"{TIMING_SEQ} tokens, span {TIMING_SPAN}, {layers} hollow layers of {manifest['model']['num_layers']}: "
            f"hollow/full {h / f:.2f} ({h * 1e3:.2f} / {f * 1e3:.2f} ms)")


# ---- the table --------------------------------------------------------------------------------


def run_doctor(bundle: Path = DEFAULT_BUNDLE, reps: int = 20) -> Doctor:
    doc = Doctor(Path(bundle), reps)
    gpu = ("GPU", "kernel library", "polygraphy")
    checks = [
        ("platform", (), _platform),
        ("GPU", (), lambda: _gpu(doc)),
        ("TensorRT >= 10.3", (), _tensorrt),
        ("polygraphy", (), _module("polygraphy", "pip install polygraphy (the [tensorrt] extra)")),
        ("onnx (build-engine)", (), _module("onnx", "pip install onnx (the [tensorrt] extra)")),
        ("onnxruntime", (), _module("onnxruntime", "pip install 'redundancylens[onnxruntime]' (or [onnxruntime-gpu])")),
        ("bundle on ONNX Runtime (CPU)", ("onnxruntime",), lambda: _bundle_on_onnxruntime(doc)),
        ("plugin library", (), lambda: _library("librlens_trt_plugins.so")(doc)),
        ("kernel library", (), lambda: _library("librlens_hollow_kernel.so")(doc)),
        ("plugin registration", ("TensorRT >= 10.3", "plugin library"), lambda: _register(doc)),
        ("kernel fp32 vs numpy", gpu, _kernel_vs_numpy(doc, "f32")),
        ("kernel fp16 v1 vs numpy", gpu, _kernel_vs_numpy(doc, "f16_v1")),
        ("kernel fp16 v2 vs numpy", gpu, _kernel_vs_numpy(doc, "f16_v2")),
        ("attention timing (kernel)", ("kernel fp16 v1 vs numpy", "kernel fp16 v2 vs numpy"), lambda: _kernel_timing(doc)),
        ("engine build (shipped bundle)", ("GPU", "plugin registration", "polygraphy", "onnx (build-engine)"),
         lambda: _engine_build(doc)),
        ("engine vs ONNX Runtime", ("engine build (shipped bundle)", "bundle on ONNX Runtime (CPU)"),
         lambda: _engine_vs_onnxruntime(doc)),
        ("prefill timing (engine)", ("engine vs ONNX Runtime",), lambda: _prefill_timing(doc)),
    ]
    try:
        for name, needs, fn in checks:
            doc.run(name, needs, fn)
    finally:
        if "runner" in doc.ctx:
            doc.ctx["runner"].deactivate()
        if "workdir" in doc.ctx:
            shutil.rmtree(doc.ctx["workdir"], ignore_errors=True)
    return doc


def format_table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  status  result / why", f"{'-' * width}  ------  {'-' * 40}"]
    for r in rows:
        lines.append(f"{r.check:<{width}}  {r.status:<6}  {r.result or r.why}")
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "FAIL", "SKIP")}
    lines.append(f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def run_and_print(bundle: Path, reps: int) -> list[dict[str, Any]]:
    """``rlens doctor``: run the checks, print the table, return the rows as JSON objects."""
    doc = run_doctor(bundle, reps)
    print(format_table(doc.rows))
    return [asdict(r) for r in doc.rows]


__all__ = ["Doctor", "Row", "format_table", "prefill_feeds", "run_doctor"]

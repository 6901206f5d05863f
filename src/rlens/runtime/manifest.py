"""The bundle manifest (docs/bundle.md): one typed, versioned record, read and written only here.

``manifest.json`` is the contract between export (writes it), build-engine (adds engines) and the
runtime (reads it). :func:`read_manifest` checks format, version, every field's type and bounds,
that every path stays inside the bundle, that the bundle holds no file the manifest does not list,
every listed file's sha256, and the manifest's own root ``digest`` (sha256 of its canonical JSON
without ``digest``: pin it with ``Session.from_bundle(path, digest=...)`` or sign it).
:func:`write_manifest` is the only writer. Torch-free and export-free.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from rlens import schema
from rlens.errors import BundleError
from rlens.fileio import sha256_bytes, sha256_file
from rlens.schema import doc

FORMAT = "rlens.bundle"
VERSION = 2
SUPPORTED_VERSIONS = (VERSION,)
REQUIRED_GRAPHS = ("decoder", "embed_tokens")
MAX_MANIFEST_BYTES = 16 << 20
DEFAULT_MAX_IMAGE_PIXELS = 1 << 25  # 33.5 MP: images above are refused before decoding
_BIG = 1 << 24


@dataclass(frozen=True)
class TensorIO:
    name: str = doc("input/output name", max_len=256)
    dtype: str = doc("numpy dtype name", max_len=32)
    shape: tuple[int | str, ...] = doc("dims: int, or a name for a dynamic dim", lo=0, hi=_BIG, max_items=8,
                                       max_len=64)


@dataclass(frozen=True)
class GraphEntry:
    files: tuple[str, ...] = doc("the ONNX file first, then its external data (bundle-relative)", max_items=4)
    inputs: tuple[TensorIO, ...] = doc("graph inputs", max_items=1024)
    outputs: tuple[TensorIO, ...] = doc("graph outputs", max_items=1024)

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("'files' is empty")


@dataclass(frozen=True)
class ModelSection:
    num_layers: int = doc("decoder layers", lo=1, hi=1024)
    hidden_size: int = doc("hidden width H", lo=1, hi=1 << 20)
    intermediate_size: int = doc("FFN width m", lo=1, hi=1 << 22)
    num_heads: int = doc("attention heads", lo=1, hi=4096)
    num_kv_heads: int = doc("KV heads", lo=1, hi=4096)
    head_dim: int = doc("head dimension D", lo=1, hi=4096)
    vocab_size: int = doc("vocabulary size V", lo=1, hi=1 << 24)
    rope_kind: str = doc("rotary position scheme (default, mrope)", default="default", max_len=32)
    mrope_section: tuple[int, ...] | None = doc("M-RoPE sections (t, h, w)", lo=0, hi=4096, max_items=4,
                                                default=None)
    max_position_embeddings: int | None = doc("longest sequence (prompt + image + new tokens)", lo=1, hi=_BIG,
                                              default=None)

    def sizes(self) -> dict[str, int]:
        names = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                 "vocab_size")
        return {n: getattr(self, n) for n in names}


@dataclass(frozen=True)
class TokenSection:
    visual_token_ids: tuple[int, ...] = doc("token ids that mark visual positions", lo=0, hi=1 << 24,
                                            max_items=16)
    eos_token_id: int | tuple[int, ...] | None = doc("end-of-sequence id(s)", lo=0, hi=1 << 24, max_items=16,
                                                     default=None)


@dataclass(frozen=True)
class VisionSection:
    params: dict[str, int | tuple[tuple[int, ...], ...] | None] = doc(
        "the family's numbers for building vision feeds (e.g. merge_size, patch_size; LLaVA-NeXT's "
        "grid_pinpoints, a list of [height, width])", lo=0, hi=1 << 16, max_items=32, default={})
    bounds: dict[str, int] = doc("the processor's image bounds (min/max_pixels, min/max_tiles), lowered by "
                                 "--max-pixels/--max-tiles", lo=1, hi=1 << 30, max_items=16, default={})
    axes: dict[str, tuple[int, ...]] = doc("[min, max] of each dynamic vision axis within the bounds", lo=0,
                                           hi=_BIG, max_items=16, default={})
    per_image: tuple[int, ...] = doc("visual tokens of each verified sample image", lo=0, hi=_BIG, max_items=16,
                                     default=())
    checked_sizes: tuple[tuple[int, ...], ...] = doc("[height, width] of the images vision.onnx was verified at",
                                                     lo=1, hi=16384, max_items=16, default=())
    max_image_pixels: int = doc("images with more pixels are refused before decoding", lo=1, hi=1 << 28,
                                default=DEFAULT_MAX_IMAGE_PIXELS)
    image_splitting: bool | None = doc("false when export turned the processor's image splitting off "
                                       "(--no-image-splitting, Idefics3/SmolVLM) in the bundle's processor copy",
                                       default=None)

    def __post_init__(self) -> None:
        for name, pair in self.axes.items():
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"vision.axes.{name} must be [min, max], got {list(pair)}")
        for low, high in (("min_pixels", "max_pixels"), ("min_tiles", "max_tiles")):
            if low in self.bounds and high in self.bounds and self.bounds[low] > self.bounds[high]:
                raise ValueError(f"vision.bounds.{low} {self.bounds[low]} is over {high} {self.bounds[high]}")
        for size in self.checked_sizes:
            if len(size) != 2 or size[0] * size[1] > self.max_image_pixels:
                raise ValueError(f"vision.checked_sizes {list(size)} must be [height, width] within max_image_pixels")
        if self.per_image and len(self.per_image) != len(self.checked_sizes):
            raise ValueError("vision.per_image must have one count per vision.checked_sizes entry")


@dataclass(frozen=True)
class DecoderInputs:
    sequence: int = doc("tokens of the decoder verification sample", lo=1, hi=_BIG)
    visual_start: int = doc("first visual position in it", lo=0, hi=_BIG)
    visual_length: int = doc("visual tokens in it (sized from the plan's windows and probes)", lo=0, hi=_BIG)
    decode_steps: int = doc("decode steps verified after the prefill", lo=0, hi=1 << 16)

    def __post_init__(self) -> None:
        if self.visual_start + self.visual_length > self.sequence:
            raise ValueError("verification.decoder_inputs: the visual span ends after the sequence")


@dataclass(frozen=True)
class VerificationSection:
    tolerance: float = doc("max abs diff allowed", lo=0.0, hi=1e6)
    max_abs_diff: dict[str, float] = doc("graph name -> max abs diff from the PyTorch model", lo=0.0, hi=1e6,
                                         max_items=16)
    decoder_inputs: DecoderInputs | None = doc("the decoder verification sample", default=None)

    def __post_init__(self) -> None:
        over = {k: v for k, v in self.max_abs_diff.items() if v > self.tolerance}
        if over:
            raise ValueError(f"verification.max_abs_diff {over} is over the tolerance {self.tolerance:g}")


@dataclass(frozen=True)
class PlanSection:
    summary: str = doc("one-line plan summary", max_len=1024)
    ffn_mode: str = doc("FFN reduction mode", choices=("static", "dynamic"))
    ffn_probes: int = doc("probe tokens M", lo=1, hi=_BIG)
    hollow_layers: tuple[int, ...] = doc("layers with Hollow Attention", lo=0, hi=1023, max_items=1024)
    ffn_layers: tuple[int, ...] = doc("layers with the probe-activated FFN", lo=0, hi=1023, max_items=1024)
    flops: dict[str, Any] = doc("the plan's FLOPs summary (plan.json `flops`)", default={})
    token_pruning: dict[str, Any] | None = doc("FastV/VTW: the plan's entry plus KV length rules", default=None)


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json (format ``rlens.bundle``); ``folder`` is where it was read from."""

    format: str = doc("always `rlens.bundle`", choices=(FORMAT,))
    version: int = doc("manifest version; this rlens reads 2", lo=1, hi=1 << 16)
    family: str = doc("model family name (rlens.families)", max_len=64)
    architecture: str = doc("Hugging Face model class", max_len=128)
    source: str = doc("the MODEL argument of the export")
    dtype: str = doc("graph float type", choices=("fp32", "fp16"))
    attention: str = doc("attention export mode", max_len=64)
    opset: int = doc("ONNX opset", lo=1, hi=1000)
    model: ModelSection = doc("decoder sizes and positions")
    tokens: TokenSection = doc("special token ids")
    graphs: dict[str, GraphEntry] = doc("name (decoder, embed_tokens, vision) -> files and I/O", max_items=16)
    plan: PlanSection = doc("the plan the bundle was exported with (full plan in plan.json)")
    vision: VisionSection | None = doc("image preparation: feed params, processor bounds, vision axes, image "
                                       "budget; null without a vision graph", default=None)
    ops: str = doc("operator set of the graphs: standard ONNX, or ONNX Runtime contrib ops (ort)",
                   choices=("standard", "ort"), default="standard")
    weights: dict[str, Any] = doc("weight format (float, int8, int4) and the quantization record", default={})
    verification: VerificationSection | None = doc("tolerance and max abs diff per graph; null with --no-verify",
                                                   default=None)
    versions: dict[str, str] = doc("library versions at export", default={}, max_len=128)
    engines: dict[str, Any] | None = doc("TensorRT engines added by build-engine (file, profiles, target)",
                                         default=None)
    files: dict[str, str] = doc("every file of the bundle but manifest.json -> sha256", max_items=100_000,
                                max_len=80, default={})
    digest: str = doc("sha256 of this manifest's canonical JSON without `digest` (pin or sign it)",
                      default="", max_len=80)
    folder: Path = field(default=Path("."), compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        for name in REQUIRED_GRAPHS:
            if name not in self.graphs:
                raise ValueError(f"graphs.{name} is missing")
        for name in self.files:
            confined(name)
        listed = set(self.files)
        for gname, g in self.graphs.items():
            for f in g.files:
                confined(f)
                if f not in listed:
                    raise ValueError(f"graphs.{gname}: {f} has no sha256 in 'files'")
        if ("vision" in self.graphs) != (self.vision is not None):
            raise ValueError("'vision' must be present exactly when graphs.vision is")

    # ---- the accessors the runtime uses ---------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def rope_kind(self) -> str:
        return self.model.rope_kind

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        return self.tokens.visual_token_ids

    @property
    def eos_token_id(self) -> int | list[int] | None:
        eos = self.tokens.eos_token_id
        return list(eos) if isinstance(eos, tuple) else eos

    @property
    def max_image_pixels(self) -> int:
        return self.vision.max_image_pixels if self.vision else DEFAULT_MAX_IMAGE_PIXELS

    @property
    def vision_params(self) -> dict[str, Any]:
        """The family's numbers for building vision feeds (manifest ``vision.params``)."""
        return dict(self.vision.params) if self.vision else {}

    @property
    def max_sequence(self) -> int | None:
        """The longest sequence (prompt + image + new tokens) the bundle takes, when recorded."""
        return self.model.max_position_embeddings

    @property
    def raw(self) -> dict[str, Any]:
        """The manifest as JSON (for code that still reads keys)."""
        return self.to_json()

    def graph(self, name: str) -> GraphEntry | None:
        return self.graphs.get(name)

    def graph_path(self, name: str) -> Path:
        g = self.graph(name)
        if g is None:
            raise BundleError(f"bundle {self.folder} has no {name} graph (manifest graphs.{name})")
        return self.path(g.files[0])

    def graph_bytes(self, name: str) -> int:
        """Bytes on disk of a graph's files (the ONNX file and its external weights)."""
        g = self.graph(name)
        return sum(self.path(f).stat().st_size for f in (g.files if g else ()))

    def path(self, name: str) -> Path:
        """A listed bundle file's path; :class:`BundleError` if unlisted or leading out of the bundle."""
        if name not in self.files:
            raise BundleError(f"bundle {self.folder}: {name} is not listed in manifest.json 'files'")
        return inside(self.folder, name)

    # ---- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return schema.to_json(self)

    def root_digest(self) -> str:
        return root_digest(self.to_json())


def root_digest(data: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces, ASCII) without ``digest``: of the
    JSON as written, so a reader that knows more (defaulted) fields computes the same digest."""
    body = {k: v for k, v in data.items() if k != "digest"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def confined(name: str) -> str:
    """``name`` if it is a plain relative POSIX path without ``..``; else ValueError."""
    p = PurePosixPath(name)
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name or p.is_absolute()
            or any(part in ("..", ".", "") for part in name.split("/"))):
        raise ValueError(f"file path {name!r} is not a plain path inside the bundle")
    return name


def inside(folder: Path, name: str) -> Path:
    """``folder/name`` with symlinks resolved; :class:`BundleError` if it leaves ``folder``."""
    try:
        confined(name)
    except ValueError as e:
        raise BundleError(f"bundle {folder}: {e}") from None
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(root / name))
    if root not in real.parents:
        raise BundleError(f"bundle {folder}: {name} resolves outside the bundle ({real})")
    return real


def manifest_from_json(data: Any, folder: Path) -> Manifest:
    where = f"{folder / 'manifest.json'}"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{where} has format {got!r}, expected {FORMAT!r}")
    if data.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"{where} is bundle version {data.get('version')!r}; this rlens reads version(s) "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}: re-export the bundle with this rlens")
    try:
        m = schema.from_json(Manifest, data)
    except schema.SchemaError as e:
        raise BundleError(f"{where}: {e}; the bundle is damaged or was edited, re-export it") from None
    return replace(m, folder=folder)


def read_manifest(folder: str | Path, *, check_hashes: bool = True, digest: str | None = None) -> Manifest:
    """Parse and check ``folder/manifest.json``; every problem is one :class:`BundleError`."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a bundle folder (made by `rlens export`)")
    try:
        st = os.lstat(path)
    except OSError:
        raise BundleError(f"{folder} has no manifest.json; is it a bundle made by `rlens export`?") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is not a regular file of at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise BundleError(f"cannot read {path}: {str(e)[:200]}") from None
    manifest = manifest_from_json(raw, folder)
    if root_digest(raw) != manifest.digest:
        raise BundleError(f"{path}: its digest does not match its content (edited or damaged); re-export the bundle")
    if digest is not None and digest != manifest.digest:
        raise BundleError(f"{path}: digest {manifest.digest} is not the expected {digest}")
    check_files(manifest, hashes=check_hashes)
    return manifest


def bundle_files(folder: Path) -> list[str]:
    """Every entry under ``folder`` but manifest.json, as bundle-relative POSIX paths (links too)."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            out.append((rel / name).as_posix())
    return sorted(n for n in out if n != "manifest.json")


def check_files(manifest: Manifest, *, hashes: bool = True) -> None:
    """The bundle holds exactly the listed files, each a regular file inside it (and matching its sha256)."""
    folder = manifest.folder
    present = bundle_files(folder)
    unlisted = [n for n in present if n not in manifest.files]
    if unlisted:
        raise BundleError(f"bundle {folder} holds files its manifest does not list ({', '.join(unlisted[:3])}); "
                          "a bundle is exactly its listed files: remove them or re-export")
    missing = [n for n in manifest.files if n not in present]
    if missing:
        raise BundleError(f"bundle {folder} is missing {', '.join(sorted(missing))}; re-export it")
    for name, want in sorted(manifest.files.items()):
        path = manifest.path(name)
        if not path.is_file():
            raise BundleError(f"bundle {folder}: {name} is not a regular file")
        if hashes and sha256_file(path) != want:
            raise BundleError(f"bundle {folder}: {name} does not match its sha256 in manifest.json "
                              "(modified or damaged); re-export the bundle")


def write_manifest(folder: Path, body: dict[str, Any] | Manifest) -> Manifest:
    """Hash every file under ``folder`` into ``files``, set ``digest``, write manifest.json atomically.

    The one writer (export, build-engine): ``body`` is a manifest or its JSON without ``files``;
    it is validated exactly as :func:`read_manifest` will, so a bad field fails here, loudly.
    """
    import tempfile

    data = body.to_json() if isinstance(body, Manifest) else dict(body)
    data.update(files={name: sha256_file(folder / name) for name in bundle_files(folder)}, digest="")
    try:
        m = replace(schema.from_json(Manifest, data), folder=folder)
    except schema.SchemaError as e:
        raise BundleError(f"internal: the manifest to write is invalid: {e}") from None
    m = replace(m, digest=m.root_digest())
    fd, tmp = tempfile.mkstemp(prefix=".manifest.json.", dir=folder.parent if folder.parent != folder else None)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(m.to_json(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, folder / "manifest.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return m


def docs_table() -> str:
    """The field table of docs/bundle.md, generated from :class:`Manifest` (a test keeps the doc current)."""
    rows = ["| field | JSON type | bounds | meaning |", "|---|---|---|---|"]
    for key, kind, bounds, meaning in schema.field_rows(Manifest):
        rows.append(f"| `{key}` | {kind} | {bounds} | {meaning} |")
    return "\n".join(rows)

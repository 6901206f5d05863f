"""Open a bundle folder: manifest.json format/version, files present and matching their sha256.

Torch-free and export-free: the runtime reads what ``rlens export`` wrote (docs/bundle.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlens.errors import BundleError
from rlens.fileio import sha256_file

FORMAT = "rlens.bundle"
SUPPORTED_VERSIONS = (1,)
REQUIRED_GRAPHS = ("decoder", "embed_tokens")


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest.json of a bundle folder (``raw`` keeps every field)."""

    folder: Path
    raw: dict[str, Any]

    @property
    def family(self) -> str:
        return str(self.raw["family"])

    @property
    def dtype(self) -> str:
        return str(self.raw.get("dtype", "fp32"))

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.raw.get("model") or {})

    @property
    def num_layers(self) -> int:
        return int(self.model["num_layers"])

    @property
    def rope_kind(self) -> str:
        return str(self.model.get("rope_kind", "default"))

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in (self.raw.get("tokens") or {}).get("visual_token_ids") or ())

    @property
    def eos_token_id(self) -> int | list[int] | None:
        return (self.raw.get("tokens") or {}).get("eos_token_id")

    def graph(self, name: str) -> dict[str, Any] | None:
        return (self.raw.get("graphs") or {}).get(name)

    def graph_path(self, name: str) -> Path:
        g = self.graph(name)
        if not g or not g.get("files"):
            raise BundleError(f"bundle {self.folder} has no {name} graph (manifest graphs.{name})")
        return self.folder / g["files"][0]

    def graph_bytes(self, name: str) -> int:
        """Bytes on disk of a graph's files (the ONNX file and its external weights)."""
        g = self.graph(name) or {}
        return sum((self.folder / f).stat().st_size for f in g.get("files", []))

    @property
    def vision_params(self) -> dict[str, Any]:
        """The family's numbers for building vision feeds (manifest ``vision.params``)."""
        return dict((self.raw.get("vision") or {}).get("params") or {})

    @property
    def max_sequence(self) -> int | None:
        """The longest sequence (prompt + image + new tokens) the bundle takes, when recorded."""
        for value in (self.model.get("max_position_embeddings"), self.model.get("max_sequence")):
            if value:
                return int(value)
        return None


def read_manifest(folder: str | Path, *, check_hashes: bool = True) -> Manifest:
    """Parse and check ``folder/manifest.json``; every problem is one :class:`BundleError`."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a bundle folder (made by `rlens export`)")
    if not path.is_file():
        raise BundleError(f"{folder} has no manifest.json; is it a bundle made by `rlens export`?")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise BundleError(f"{path} has format {got!r}, expected {FORMAT!r}")
    if raw.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"{path} is bundle version {raw.get('version')!r}; this rlens reads version(s) "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}: re-export the bundle with this rlens")
    for key in ("family", "model", "graphs", "files"):
        if key not in raw:
            raise BundleError(f"{path} has no {key!r} field; the bundle is damaged, re-export it")
    manifest = Manifest(folder, raw)
    for name in REQUIRED_GRAPHS:
        manifest.graph_path(name)
    check_files(manifest, hashes=check_hashes)
    return manifest


def check_files(manifest: Manifest, *, hashes: bool = True) -> None:
    """Every file listed in ``files`` exists (and matches its sha256 when ``hashes``)."""
    files: dict[str, str] = manifest.raw["files"]
    missing = [name for name in files if not (manifest.folder / name).is_file()]
    if missing:
        raise BundleError(f"bundle {manifest.folder} is missing {', '.join(sorted(missing))}; re-export it")
    listed = {f for g in manifest.raw["graphs"].values() for f in (g or {}).get("files", [])}
    unlisted = sorted(listed - set(files))
    if unlisted:
        raise BundleError(f"bundle {manifest.folder}: graph files {', '.join(unlisted)} have no sha256 in manifest")
    if not hashes:
        return
    for name, want in sorted(files.items()):
        got = sha256_file(manifest.folder / name)
        if got != want:
            raise BundleError(f"bundle {manifest.folder}: {name} does not match its sha256 in manifest.json "
                              "(modified or damaged); re-export the bundle")

"""Crafted files for the hostile-input cases (tests/hostile_cases.py): generated, never downloaded.

Everything is built by the rlens under test (``python`` with its PYTHONPATH) into a work folder:
a tiny bundle, a local save_pretrained model folder, images that are bombs, 16-bit, EXIF-rotated,
FIFOs, and helpers to edit a bundle's manifest as an attacker would (re-hashing the files it
lists and recomputing the root digest, which is not a signature, when the manifest has one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

MAKE = """
import sys
from pathlib import Path
from rlens.export import ExportConfig, bundle_from_plan
from rlens.models import load_model
from rlens.plan import empty_plan
work = Path(sys.argv[1])
loaded = load_model("tiny-qwen2-vl")
bundle_from_plan(loaded, empty_plan(loaded.info()), work / "bundle", ExportConfig(verify=False))
bundle_from_plan(loaded, empty_plan(loaded.info()), work / "bundle_ext", ExportConfig(verify=False, external_data=True))
model = work / "model"
loaded.model.save_pretrained(model)
loaded.save_processor(model)
"""


def build(work: Path, env: dict[str, str]) -> None:
    """The tiny bundles and model folder, made by the rlens under test; images and data files."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "bundle" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-c", MAKE, str(work)], env=env, check=True, timeout=900,
                       capture_output=True)
    images(work / "img")


# ---- images --------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int, height: int) -> None:
    """A valid all-black RGB PNG of ``width`` x ``height`` that compresses to a few hundred KB."""
    row = b"\x00" + b"\x00" * (3 * width)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))


def images(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "done").exists():
        return
    rng = np.random.RandomState(0)
    rgb = (rng.rand(90, 120, 3) * 255).astype("uint8")
    Image.fromarray(rgb).save(folder / "ok.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(rgb[:, :, 0]).save(folder / "gray8.png")
    Image.fromarray(rgb[:, :, 0].astype(np.float32) / 255.0, mode="F").save(folder / "float.tiff")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(rgb).save(folder / "exif6.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_270).save(folder / "upright.jpg", quality=100,
                                                                     subsampling=0)
    Image.fromarray(rgb[:1, :120].repeat(1, 0)).resize((4000, 1)).save(folder / "wide_4000x1.png")
    Image.fromarray(rgb[:1, :1]).save(folder / "one_pixel.png")
    bomb_png(folder / "bomb_12000.png", 12000, 12000)
    bomb_png(folder / "bomb_20000.png", 20000, 20000)
    (folder / "truncated.png").write_bytes((folder / "ok.png").read_bytes()[:200])
    (folder / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (folder / "done").write_text("")


# ---- bundle editing ------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def read(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write(bundle: Path, m: dict, rehash: bool = True) -> None:
    """Write an edited manifest as an attacker would: files re-hashed, digest (if any) recomputed."""
    if rehash:
        for name in list(m.get("files", {})):
            p = bundle / name
            if p.is_file() and not p.is_symlink() and ".." not in name and not name.startswith("/"):
                m["files"][name] = sha256(p)
    if "digest" in m:
        body = {k: v for k, v in m.items() if k != "digest"}
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        m["digest"] = "sha256:" + hashlib.sha256(canon).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


def edit(bundle: Path, path: str, value, rehash: bool = True) -> None:
    """Set ``a.b.c`` in the manifest (``value=KeyError`` deletes it)."""
    m = read(bundle)
    *head, last = path.split(".")
    node = m
    for k in head:
        node = node[k]
    if value is KeyError:
        node.pop(last, None)
    else:
        node[last] = value
    write(bundle, m, rehash)

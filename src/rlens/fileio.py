"""File helpers shared by every stage: sha256, and writing an output without ever losing a user's file.

rlens writes exactly two kinds of artifact: a bundle folder (``manifest.json`` with format
``rlens.bundle``) and a plan file (JSON with format ``rlens.plan``). :func:`output_writer` is the
one way to write either: it refuses a path that is not absent or one of our artifacts, takes a
lock beside it, removes temporary folders left by dead processes, builds the output in a temporary
path, and commits it with one atomic rename that refuses if anything appeared at the path
meanwhile (``--overwrite``: an atomic exchange, undone if what was swapped out is not ours).
No torch; the runtime shares the hashing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from rlens.errors import OutputError

Kind = Literal["bundle", "plan", "report"]
FORMATS = {"bundle": "rlens.bundle", "plan": "rlens.plan"}
_MAX_ARTIFACT_JSON = 64 << 20  # a plan or manifest larger than this is not ours
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder + rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- what is ours ------------------------------------------------------------------------------
def _json_format(path: Path) -> Any:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_ARTIFACT_JSON:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def is_artifact(path: Path, kind: Kind) -> bool:
    """``path`` (not followed if a symlink) is an rlens bundle folder or an rlens plan file."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if kind == "bundle":
        return stat.S_ISDIR(st.st_mode) and _json_format(path / "manifest.json") == FORMATS["bundle"]
    if kind == "report":
        return stat.S_ISREG(st.st_mode) and _is_rlens_png(path)
    return stat.S_ISREG(st.st_mode) and _json_format(path) == FORMATS["plan"]


def _is_rlens_png(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"tEXtSoftware\x00rlens" in head


def check_output(path: str | os.PathLike[str], kind: Kind, overwrite: bool,
                 inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """The absolute output path, or :class:`OutputError` if writing there could lose a user's file."""
    raw = os.fspath(path)
    what = {"bundle": "bundle folder", "plan": "plan file", "report": "report file"}[kind]
    if not raw or Path(raw).name in ("", ".", "..") or raw.endswith(("/", os.sep)) and kind != "bundle":
        raise OutputError(f"--out {raw!r} is not a {what} name; give a new path such as out/{kind}")
    out = Path(os.path.abspath(raw))
    if out.parent == out:
        raise OutputError(f"--out {raw!r} is the root folder; give a new {what} path")
    if len(os.fsencode(out.name)) + 40 > 255:  # room for ".<name>.tmp-<pid>-<random>"
        raise OutputError(f"--out name is {len(os.fsencode(out.name))} bytes long; give a name under 215 bytes")
    parent = next((p for p in out.parents if os.path.lexists(p)), None)
    if parent is not None and (not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK)):
        raise OutputError(f"cannot write into {parent} (not a writable folder); choose another --out")
    for inp in [Path.cwd(), *(Path(p) for p in inputs if p)]:
        real = Path(os.path.realpath(inp))
        if real == Path(os.path.realpath(out)) or Path(os.path.realpath(out)) in real.parents:
            raise OutputError(f"--out {raw} is or contains an input ({inp}); choose another path")
    if os.path.lexists(out):
        if os.path.islink(out):
            raise OutputError(f"--out {raw} is a symlink; rlens does not write through links, give a new path")
        if not overwrite:
            raise OutputError(f"{out} already exists; choose another --out or pass --overwrite "
                              f"(which replaces only an rlens {kind})")
        if not is_artifact(out, kind):
            raise OutputError(f"{out} exists and is not an rlens {kind}; refusing to replace it")
    return out


# ---- the commit ---------------------------------------------------------------------------------
def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; :class:`OutputError` if ``dst`` exists (checked atomically where
    the kernel and file system support ``RENAME_NOREPLACE``)."""
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
        return
    except OSError as e:
        if e.errno == errno.EEXIST or (e.errno == errno.ENOTEMPTY):
            raise OutputError(f"{dst} appeared while rlens was writing it; left untouched, nothing written") from None
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
    if os.path.lexists(dst):  # fallback for file systems without RENAME_NOREPLACE
        raise OutputError(f"{dst} appeared while rlens was writing it; left untouched, nothing written")
    os.rename(src, dst)


def _replace_artifact(tmp: Path, out: Path, kind: Kind) -> None:
    """Swap ``tmp`` into ``out`` atomically; undo the swap if what came out is not an rlens artifact."""
    try:
        _renameat2(tmp, out, _RENAME_EXCHANGE)
    except OSError as e:
        if e.errno == errno.ENOENT:  # the old artifact went away meanwhile
            rename_noreplace(tmp, out)
            return
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        old = tmp.with_name(tmp.name + ".old")
        os.rename(out, old)
        if not is_artifact(old, kind):
            os.rename(old, out)
            raise OutputError(f"{out} changed while rlens was writing it and is no longer an rlens {kind}; "
                              "left untouched") from None
        rename_noreplace(tmp, out)
        _remove(old)
        return
    if not is_artifact(tmp, kind):  # `tmp` now holds what was at `out`
        _renameat2(tmp, out, _RENAME_EXCHANGE)
        raise OutputError(f"{out} changed while rlens was writing it and is no longer an rlens {kind}; "
                          "left untouched")
    _remove(tmp)


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


# ---- lock and stale temporaries ----------------------------------------------------------------
@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    import fcntl

    lock = out.with_name(f".{out.name}.rlens-lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write beside {out}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"another rlens process is writing {out}; wait for it or choose another --out") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the lock file: take a fresh one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


_TMP = re.compile(r"\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>-*`` left beside ``out`` by killed processes (pid no longer alive)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            m = _TMP.match(entry.name)
            if m and m["name"] == out.name and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
                _remove(Path(entry.path))
                removed.append(Path(entry.path))
    return removed


def _mkdirs(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder {folder}: {e.strerror or e}") from None


@contextlib.contextmanager
def output_writer(path: str | os.PathLike[str], kind: Kind, overwrite: bool = False,
                  inputs: Sequence[str | os.PathLike[str]] = ()) -> Iterator[Path]:
    """Yield a temporary path to build the output in; commit it to ``path`` when the block succeeds.

    Checks ``path`` (see :func:`check_output`) before and again at the commit, under a lock file
    that stops a second writer; on any failure or interrupt the temporary path is removed and
    ``path`` is as it was.
    """
    out = check_output(path, kind, overwrite, inputs)
    _mkdirs(out.parent)
    with _lock(out):
        remove_stale_temporaries(out)
        prefix = f".{out.name}.tmp-{os.getpid()}-"
        try:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
        except OSError as e:
            raise OutputError(f"cannot write beside {out}: {e.strerror or e}") from None
        target = tmp if kind == "bundle" else tmp / out.name
        try:
            yield target
            check_output(out, kind, overwrite, inputs)
            if overwrite and os.path.lexists(out):
                _replace_artifact(target, out, kind)
            else:
                rename_noreplace(target, out)
        finally:
            _remove(tmp)


def write_text_output(path: str | os.PathLike[str], text: str, kind: Kind, overwrite: bool = False,
                      inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Write a one-file artifact (a plan) through :func:`output_writer`."""
    with output_writer(path, kind, overwrite, inputs) as tmp:
        try:
            tmp.write_text(text)
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    return Path(os.path.abspath(path))

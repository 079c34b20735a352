"""Small file helpers shared by every tool: atomic writes and destination checks."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import FileFormatError, MissingDependencyError


def check_destination(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse a destination that exists (unless ``force``), is a directory or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise FileFormatError(path, "destination is a directory")
    if path.exists() and not force:
        raise FileFormatError(path, "destination exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileFormatError(path, f"destination folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise FileFormatError(path, f"destination folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    The temporary file lives in the destination folder (same file system, so the final
    ``os.replace`` is atomic). On any exception, including KeyboardInterrupt, it is removed,
    so a reader never sees a partial file at ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else ".tmp", dir=path.parent or "."
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        try:
            os.replace(tmp_path, path)
        except OSError as exc:  # named after the destination, not the temporary file
            raise FileFormatError(path, f"cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def import_h5py(what: str = "h5py", extra: str = "keras"):
    """Import h5py, or raise MissingDependencyError naming ``what`` needs it and the extra to install."""
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError(what, extra) from None
    return h5py


def open_h5(path: str | os.PathLike, what: str = "h5py", extra: str = "keras"):
    """Open an HDF5 file read-only; a file h5py cannot open is a FileFormatError naming it."""
    h5py = import_h5py(what, extra)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(path, f"not an HDF5 file ({exc})") from None


def exclusive_lock(path: str | os.PathLike, busy: str):
    """Take the exclusive lock file ``path`` without waiting; returns the held lock (``.release()``).

    The lock is the kernel's (flock through ``filelock``): it is released when the process
    ends, however it ends. Raises FileFormatError naming ``path``'s folder with ``busy`` when
    another process holds it.
    """
    import filelock

    lock = filelock.FileLock(os.fspath(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise FileFormatError(Path(path).parent, busy) from None
    return lock

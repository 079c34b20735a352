"""Small file helpers shared by every tool: atomic writes and destination checks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import FileFormatError, MissingDependencyError


#: errors of a write that the file system refused: disk full, file-size limit, quota, read-only, I/O
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})
#: bytes appended to a temporary file to tell whether its file system still takes data
_PROBE_BYTES = 1 << 16


def check_destination(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse a destination that exists (unless ``force``), is a directory or cannot be written.

    A symbolic link is a destination that exists, even when it points nowhere: without
    ``force`` it is never replaced.
    """
    path = Path(path)
    if path.is_dir():
        raise FileFormatError(path, "destination is a directory")
    if os.path.lexists(path) and not force:
        what = "is a symbolic link to a missing file" if not path.exists() else "exists"
        raise FileFormatError(path, f"destination {what} (use --force to overwrite)")
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
    so a reader never sees a partial file at ``path``. A write the file system refuses (disk
    full, file-size limit, quota), however the writing library reports it, becomes one
    FileFormatError naming ``path``.
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
    except BaseException as exc:
        refused = _refused_write(exc, tmp_path) if isinstance(exc, (OSError, RuntimeError)) else None
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if refused:
            raise FileFormatError(path, f"cannot be written ({refused})") from None
        raise


def _refused_write(exc: BaseException, tmp: Path) -> str | None:
    """Why the file system refused a write, if that is what ``exc`` (or its cause) is; else None.

    Libraries report such a failure in their own words (torch: "unexpected pos 576 vs 534"):
    when the exception carries no errno, a probe appends a few bytes to the temporary file.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the exception and the ones it came from
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _WRITE_ERRNOS:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    try:
        fd = os.open(tmp, os.O_WRONLY)
    except OSError:
        return None
    try:
        end = os.fstat(fd).st_size
        written = os.pwrite(fd, bytes(_PROBE_BYTES), end)
        return None if written == _PROBE_BYTES else os.strerror(errno.ENOSPC)
    except OSError as probe:
        return probe.strerror if probe.errno in _WRITE_ERRNOS else None
    finally:
        os.close(fd)


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


def read_yaml(path: str | os.PathLike, missing: str = "no such file"):
    """The data of a YAML file (``yaml.safe_load``: a file never runs code); a missing file
    (``missing`` says what was looked for), non-UTF-8 text or invalid YAML is a FileFormatError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, missing)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FileFormatError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, f"not UTF-8 text (byte {exc.start})") from None


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

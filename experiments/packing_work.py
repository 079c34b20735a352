"""The work folder of a packing run (experiments.packing): what makes a run resumable.

``.<out>.work/`` beside the output holds a lock (one run per output), ``manifest.json`` (the
job: clips, recipe, chunk size) and one ``chunk_NNNNNN.npz`` per finished chunk, each written
atomically, so a run cut short, even by SIGKILL, keeps every finished chunk; a run of the same
job adopts them, a run of another job is refused (or, forced, starts afresh).
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from devinet._io import atomic_path, atomic_write_json, exclusive_lock
from devinet.errors import FileFormatError

_CHUNK_NAME = re.compile(r"^chunk_(\d{6})\.npz$")


class WorkFolder:
    """``.<out>.work/`` beside the output: ``lock``, ``manifest.json`` (the job) and chunk files."""

    def __init__(self, out_path: Path, job: dict, force: bool):
        self.path = out_path.parent / f".{out_path.name}.work"
        self.job = job
        self._lock = None
        if self.path.exists() and not self.path.is_dir():
            raise FileFormatError(self.path, "is not a folder (remove it)")
        self.path.mkdir(exist_ok=True)
        self._take_lock()
        try:
            self._adopt(force)
            # Temporary files of atomic writes cut short by a kill (ours: we hold the lock).
            for stale in [*self.path.glob(".*.tmp"), *out_path.parent.glob(f".{out_path.name}.*.h5")]:
                stale.unlink(missing_ok=True)
        except BaseException:
            self.release()
            raise

    def _adopt(self, force: bool) -> None:
        """Keep the chunks of an unfinished run of this same job; refuse (or with ``force``
        discard) those of another job."""
        manifest = self.path / "manifest.json"
        if manifest.is_file():
            try:
                previous = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous != self.job:
                if not force:
                    raise FileFormatError(self.path, "holds an unfinished run of a different job (other clips, "
                                                     "recipe or chunk size); remove it or use --force to discard it")
                for entry in self.path.iterdir():
                    if entry.name != "lock":
                        entry.unlink()
        atomic_write_json(manifest, self.job)

    def _take_lock(self) -> None:
        self._lock = exclusive_lock(self.path / "lock", "another devinet features run is writing this output")

    def chunk_path(self, index: int) -> Path:
        return self.path / f"chunk_{index:06d}.npz"

    def finished(self, chunks: list[list[str]]) -> set[int]:
        """Indices of chunks already on disk and whole (names match the plan); others are removed."""
        done = set()
        for entry in self.path.iterdir():
            match = _CHUNK_NAME.match(entry.name)
            if not match:
                continue
            index = int(match.group(1))
            try:
                with np.load(entry, allow_pickle=False) as arrays:  # reads only these two members
                    names = [*arrays["names"].tolist(), *arrays["skipped_names"].tolist()]
                whole = index < len(chunks) and sorted(names) == sorted(chunks[index])
            except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
                whole = False
            if whole:
                done.add(index)
            else:
                entry.unlink()
        return done

    def write_chunk(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.chunk_path(index), suffix=".tmp") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

    def read_chunk(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.chunk_path(index), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}

    def remove(self) -> None:
        """Delete the folder (the job is done)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


__all__ = ["WorkFolder"]

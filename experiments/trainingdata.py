"""Training data at scale: packed features read lazily, weak labels mapped onto packed clips, batch loading.

Memory stays independent of the number of clips (docs/scaling.md): features are never read
whole. :class:`ClipFeatures` reads the rows a batch needs from a numpy array or an HDF5
dataset; an HDF5 file is opened again in every process that reads it (DataLoader workers,
training processes), as h5py handles must not cross a ``fork``. :class:`ClipBatches` is the
torch ``Dataset`` of a training run: ``dataset[indices]`` is one standardised batch, so a
``DataLoader`` with ``batch_size=None`` loads whole batches (one HDF5 read each) in its workers
while the model trains. What stays in memory per clip is its labels (one byte per class with
:func:`read_weak_labels`) and, for a labelled subset of a packed file, its row number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from devinet.errors import FileFormatError, InputError
from devinet.recipe import DCASE2017_CLASSES


def gather(features: Any, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` (any order, repeats allowed) of a numpy array, an h5py dataset or a
    :class:`ClipFeatures`, as (B, T, F) float32 (float16 storage is widened).

    h5py reads increasing unique indices only, so the unique rows are read once and then expanded.
    """
    if isinstance(features, ClipFeatures):
        return features.read(indices)
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    block = np.asarray(features[unique] if isinstance(features, np.ndarray) else features[unique.tolist()])
    return block[inverse].astype(np.float32, copy=False)


class ClipFeatures:
    """(N, T, F) unscaled features read by row: a numpy array, or an HDF5 dataset opened lazily.

    Args:
        source: a numpy array or an h5py dataset (its file is opened again, read-only, in any
            other process that reads it).
        rows: optional increasing row numbers of ``source`` that make up this set (a labelled
            subset of a packed file); row ``i`` here is ``source[rows[i]]``.
    """

    def __init__(self, source: Any, rows: np.ndarray | None = None):
        self._array = source if isinstance(source, np.ndarray) else None
        self._handle = None if self._array is not None else source
        self._where = None if self._array is not None else (source.file.filename, source.name)
        self._pid = os.getpid()
        total = len(source)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.ndim != 1 or (len(rows) and (rows[0] < 0 or rows[-1] >= total or np.any(np.diff(rows) <= 0))):
                raise InputError(f"rows must be increasing row numbers below {total}")
        self.rows = rows
        self.shape = (total if rows is None else len(rows), *source.shape[1:])
        self.dtype = np.dtype(source.dtype)

    @classmethod
    def wrap(cls, features: Any) -> "ClipFeatures":
        return features if isinstance(features, cls) else cls(features)

    def __len__(self) -> int:
        return self.shape[0]

    def _source(self) -> Any:
        if self._array is not None:
            return self._array
        if self._handle is None or os.getpid() != self._pid:
            import h5py

            self._handle = h5py.File(self._where[0], "r")[self._where[1]]
            self._pid = os.getpid()
        return self._handle

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) as (B, T, F) float32."""
        indices = np.asarray(indices, dtype=np.int64)
        return gather(self._source(), indices if self.rows is None else self.rows[indices])

    def __getitem__(self, index: int) -> np.ndarray:
        """One clip, (T, F) float32."""
        return self.read(np.array([index]))[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None  # reopened by the process that unpickles it
        return state


class ClipBatches(torch.utils.data.Dataset):
    """The batches of a training run: ``dataset[indices]`` -> (x (B, T, F), y (B, C)), float32 tensors.

    ``x`` is standardised by ``scaler``; ``indices`` index the clips (rows of ``labels``).
    """

    def __init__(self, features: Any, labels: np.ndarray, scaler):
        self.features = ClipFeatures.wrap(features)
        self.labels = labels
        self.scaler = scaler

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.scaler.transform(self.features.read(indices))
        y = np.asarray(self.labels[np.asarray(indices, dtype=np.int64)], dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y)


class EpochBatches(torch.utils.data.Sampler):
    """The index arrays of one epoch's batches, replaced at every epoch (a DataLoader's persistent
    workers keep reading from the same sampler object)."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def batch_loader(dataset: ClipBatches, batches: EpochBatches, workers: int, pin_memory: bool):
    """A DataLoader of whole batches (``batch_size=None``): ``workers`` processes read ahead (0: this one)."""
    return torch.utils.data.DataLoader(
        dataset, sampler=batches, batch_size=None, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)


# ---------------------------------------------------------------------- class lists and weak labels
def read_class_list(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names, one per line, in output order (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise FileFormatError(path, "no such class list") from None
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, f"not UTF-8 text (byte {exc.start})") from None
    classes = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not classes:
        raise FileFormatError(path, "lists no class (one name per line)")
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise FileFormatError(path, f"lists class {name!r} twice")
        seen.add(name)
    return tuple(classes)


@dataclass
class WeakLabels:
    """Weak labels of the packed clips that have some: their rows in the packed file and their multi-hot.

    Attributes:
        rows: (M,) increasing row numbers of the labelled packed clips.
        labels: (M, C) uint8 multi-hot over ``classes``.
        classes: class names in output order.
        unlabelled: packed clips the label file does not list (not trained on).
        missing: clips the label file lists that the packed file lacks (no audio).
    """

    rows: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    unlabelled: int
    missing: int


def _packed_key(name: str) -> str:
    from experiments.meta import clip_key

    try:
        return clip_key(name)
    except InputError:
        return name  # packed from a folder of non-DCASE names: the file stem


def read_weak_labels(names: Sequence[str], labels_path: str | os.PathLike,
                     classes: Sequence[str] | None = None) -> WeakLabels:
    """Map a weak-label file onto packed clips by clip name.

    ``labels_path`` is a clip list (``training_set.csv``) or a weak-label file
    (``name<TAB>start<TAB>end<TAB>label``), read by :func:`experiments.meta.read_clip_labels`;
    ``names`` are the packed file's clip names. ``classes`` defaults to the DCASE 2017 classes.
    A label outside ``classes`` is an error naming the file and the clip.
    """
    from experiments.meta import read_clip_labels

    classes = tuple(classes) if classes is not None else DCASE2017_CLASSES
    by_clip = read_clip_labels(labels_path)
    index = {name: position for position, name in enumerate(classes)}
    rows, hot = [], []
    for row, name in enumerate(names):
        found = by_clip.get(_packed_key(name))
        if found is None:
            continue
        positions = []
        for label in found:
            if label not in index:
                hint = "" if classes != DCASE2017_CLASSES else " (not a DCASE 2017 class: give --classes)"
                raise FileFormatError(labels_path, f"clip {name}: label {label!r} is not in the class list{hint}")
            positions.append(index[label])
        rows.append(row)
        hot.append(positions)
    if not rows:
        raise FileFormatError(labels_path, "labels none of the packed clips (clip names differ?)")
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for i, positions in enumerate(hot):
        labels[i, positions] = 1
    return WeakLabels(np.asarray(rows, dtype=np.int64), labels, classes, len(names) - len(rows),
                      len(by_clip) - len(rows))


__all__ = ["gather", "ClipFeatures", "ClipBatches", "EpochBatches", "batch_loader", "read_class_list",
           "WeakLabels", "read_weak_labels"]

"""Training data at scale: synthetic packed files of any size, and the time to load a training batch from them.

:func:`write_synthetic_packed` writes a file in the format of ``devinet features``
(:mod:`experiments.packing`) with random log-mel and random weak labels, plus the weak-label
file (``name<TAB>start<TAB>end<TAB>label``) that ``devinet train --labels`` reads: no audio is
needed to measure what training costs per clip (docs/scaling.md). :func:`batch_load` times
reading and standardising one balanced batch of random clips (what a DataLoader worker does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from devinet.recipe import DCASE2017_CLASSES, FRAMES, N_MELS

#: clips written per block (bounded memory whatever the file's size)
_BLOCK = 1024


def synthetic_names(clips: int) -> list[str]:
    """Clip keys of the DCASE form ``<youtube id>_<start>_<end>``."""
    return [f"syn{i:08d}_0.000_10.000" for i in range(clips)]


def write_synthetic_packed(path: str | Path, clips: int, *, dtype: str = "float32", classes: Sequence[str] =
                           DCASE2017_CLASSES, labels_per_clip: float = 1.3, seed: int = 0) -> Path:
    """A packed features file of ``clips`` random clips at ``path`` and its weak-label file
    ``path`` with suffix ``.tsv`` (returned). Every class has clips; about ``labels_per_clip`` labels each."""
    import h5py

    from experiments.packing import FORMAT_VERSION, recipe

    path = Path(path)
    rng = np.random.default_rng(seed)
    names = synthetic_names(clips)
    hot = rng.random((clips, len(classes))) < (labels_per_clip - 1) / max(len(classes) - 1, 1)
    hot[np.arange(clips), np.arange(clips) % len(classes)] = True
    with h5py.File(path, "w") as h5:
        features = h5.create_dataset("features", shape=(clips, FRAMES, N_MELS), dtype=dtype)
        for start in range(0, clips, _BLOCK):
            block = rng.normal(-4.0, 2.0, size=(min(_BLOCK, clips - start), FRAMES, N_MELS))
            features[start:start + len(block)] = block.astype(dtype)
        h5.create_dataset("labels", data=hot[:, :17].astype(np.float32) if len(classes) == 17 else
                          np.zeros((clips, 17), np.float32))
        h5.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("n_frames", data=np.full(clips, FRAMES, np.int32))
        skipped = h5.create_group("skipped")
        for key in ("names", "kinds", "details"):
            skipped.create_dataset(key, data=[], dtype=h5py.string_dtype("utf-8"))
        h5.attrs.update({"format_version": FORMAT_VERSION, "recipe": json.dumps(recipe() | {"dtype": dtype}),
                         "classes": json.dumps(list(DCASE2017_CLASSES)), "has_labels": len(classes) == 17,
                         "backend": "synthetic", "meta": "", "wav_dir": ""})
    labels = path.with_suffix(".tsv")
    with open(labels, "w", encoding="utf-8") as handle:
        for name, row in zip(names, hot):
            for k in np.flatnonzero(row):
                handle.write(f"Y{name}.wav\t0.000\t10.000\t{classes[k]}\n")
    return labels


def batch_load(path: str | Path, batch: int = 44, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """Seconds to read and standardise one batch of ``batch`` random clips of a packed file (median of
    ``repeats``; the file's pages may be in the OS cache, as during training on a machine with room)."""
    import h5py

    from devinet.scaler import Scaler
    from experiments.trainingdata import ClipBatches, ClipFeatures

    rng = np.random.default_rng(seed)
    with h5py.File(path, "r") as h5:
        features = ClipFeatures(h5["features"])
        labels = np.zeros((len(features), 17), np.uint8)
        dataset = ClipBatches(features, labels, Scaler(np.zeros(N_MELS), np.ones(N_MELS)))
        times = []
        for _ in range(repeats):
            index = rng.integers(0, len(features), size=batch)
            began = time.perf_counter()
            dataset[index]
            times.append(time.perf_counter() - began)
        return {"clips": len(features), "dtype": str(features.dtype), "batch": batch,
                "median_s": float(np.median(times)), "min_s": float(np.min(times)), "max_s": float(np.max(times)),
                "bytes_per_clip": FRAMES * N_MELS * features.dtype.itemsize}

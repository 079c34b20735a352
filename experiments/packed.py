"""Packed log-mel files read back: their layout, whole or streamed, and the scaler fitted on one.

Layout of the packed file (``FORMAT_VERSION`` 1), clips in metadata order:

- ``features`` (N, 240, 64) float32 (or float16 with ``dtype="float16"``: half the storage,
  log-mel rounded to 11 significant bits; readers widen it to float32):
  :func:`devinet.features.extract_logmel`, zero-padded or truncated to 240 frames as the
  original packer did;
- ``labels`` (N, 17) float32: multi-hot, official class order (all zero without metadata);
- ``names`` (N,) utf-8: clip keys ``<youtube_id>_<start>_<end>``;
- ``n_frames`` (N,) int32: frames before padding/truncation;
- ``skipped/names``, ``skipped/kinds`` ("missing", "empty", "unreadable"), ``skipped/details``;
- attributes ``format_version``, ``recipe`` (JSON), ``classes`` (JSON), ``has_labels``,
  ``backend``, ``meta``, ``wav_dir``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devinet._io import import_h5py, open_h5
from devinet.errors import FileFormatError
from devinet.features import FRAMES, Scaler

FORMAT_VERSION = 1
SKIP_KINDS = ("missing", "empty", "unreadable")


@dataclass(frozen=True)
class Skipped:
    """A clip that is not in the packed file, and why."""

    key: str
    kind: str  # one of SKIP_KINDS
    detail: str


@dataclass
class PackedSplit:
    """A packed file read back whole (see the module docstring for the shapes)."""

    features: np.ndarray
    labels: np.ndarray
    names: list[str]
    n_frames: np.ndarray
    classes: tuple[str, ...]
    has_labels: bool
    recipe: dict = field(default_factory=dict)


def open_packed(path: str | os.PathLike):
    path = Path(path)
    import_h5py("h5py", "features")  # a missing h5py is reported before anything about the file
    if not path.is_file():
        raise FileFormatError(path, "no such packed features file")
    h5 = open_h5(path, "h5py", "features")
    missing = [name for name in ("features", "labels", "names", "n_frames") if name not in h5]
    if missing or h5.attrs.get("format_version") != FORMAT_VERSION:
        h5.close()
        raise FileFormatError(path, f"not a devinet packed features file (format {FORMAT_VERSION}); "
                                    f"missing {', '.join(missing) or 'format_version'}")
    return h5


def load_packed(path: str | os.PathLike) -> PackedSplit:
    """Read a whole packed file into memory."""
    with open_packed(path) as h5:
        return PackedSplit(
            features=h5["features"][()],
            labels=h5["labels"][()],
            names=list(h5["names"].asstr()[()]),
            n_frames=h5["n_frames"][()],
            classes=tuple(json.loads(h5.attrs["classes"])),
            has_labels=bool(h5.attrs["has_labels"]),
            recipe=json.loads(h5.attrs["recipe"]),
        )


def read_skipped(path: str | os.PathLike) -> list[Skipped]:
    """The clips a packed file does not hold, with the reason."""
    with open_packed(path) as h5:
        group = h5["skipped"]
        return [Skipped(k, c, d) for k, c, d in
                zip(group["names"].asstr()[()], group["kinds"].asstr()[()], group["details"].asstr()[()])]


def fit_scaler(h5path: str | os.PathLike, *, valid_frames_only: bool = False, clips_per_read: int = 512) -> Scaler:
    """Per mel bin mean/std of a packed (training) split, streamed from the file.

    By default every one of the 240 frames counts, zero padding included, as the original
    ``calculate_scaler`` did on its packed file; ``valid_frames_only`` uses only each clip's
    real frames.
    """
    with open_packed(h5path) as h5:
        features, n_frames = h5["features"], h5["n_frames"][()]

        def batches():
            for start in range(0, features.shape[0], clips_per_read):
                block = features[start : start + clips_per_read]
                if valid_frames_only:
                    keep = np.arange(FRAMES)[None, :] < n_frames[start : start + clips_per_read, None]
                    block = block[keep]
                yield block

        return Scaler.fit(batches())


__all__ = ["FORMAT_VERSION", "SKIP_KINDS", "Skipped", "PackedSplit", "open_packed", "load_packed", "read_skipped",
           "fit_scaler"]

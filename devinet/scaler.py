"""Per-mel-bin standardisation of log-mel features, fitted on the training split (the original's scaler).

Saved as plain arrays (``.npz`` or ``.json``), never pickled; :meth:`Scaler.read` also reads
the original training's pickled scikit-learn ``StandardScaler`` without running code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch

from ._io import atomic_path
from .errors import FileFormatError, InputError

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(eq=False)
class Scaler:
    """Per mel bin mean and standard deviation, fitted on the training split.

    Like the original's ``sklearn.preprocessing.StandardScaler``: population std (ddof 0), a
    zero std replaced by 1. Saved as plain arrays (``.npz`` or ``.json``), never pickled.

    Attributes:
        mean: (F,) float64.
        std: (F,) float64, > 0.
        count: number of frames it was fitted on.
    """

    mean: np.ndarray
    std: np.ndarray
    count: int = 0

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise InputError(f"scaler mean and std must be 1-D of equal length, got {self.mean.shape} and {self.std.shape}")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise InputError("scaler mean must be finite and std finite and positive")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scaler):
            return NotImplemented
        return (self.count == other.count and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.std, other.std))

    @classmethod
    def fit(cls, batches: ArrayLike | Iterable[ArrayLike]) -> "Scaler":
        """Fit on an array (..., F) or on an iterable of such arrays (streamed, float64 merges)."""
        if isinstance(batches, (np.ndarray, torch.Tensor)):
            batches = [batches]
        count, mean, m2 = 0, None, None
        for batch in batches:
            if isinstance(batch, torch.Tensor):
                batch = batch.detach().cpu().numpy()
            frames = np.asarray(batch, dtype=np.float64).reshape(-1, np.shape(batch)[-1])
            if frames.shape[0] == 0:
                continue
            batch_mean = frames.mean(axis=0)
            batch_m2 = np.square(frames - batch_mean).sum(axis=0)
            if mean is None:
                count, mean, m2 = frames.shape[0], batch_mean, batch_m2
                continue
            # Chan et al.'s pairwise update: exact merging of (count, mean, M2) summaries.
            total = count + frames.shape[0]
            shift = batch_mean - mean
            mean = mean + shift * (frames.shape[0] / total)
            m2 = m2 + batch_m2 + np.square(shift) * (count * frames.shape[0] / total)
            count = total
        if mean is None:
            raise InputError("cannot fit a scaler on no frames")
        std = np.sqrt(m2 / count)
        return cls(mean, np.where(std > 0, std, 1.0), count)

    def transform(self, features: ArrayLike) -> ArrayLike:
        """(..., F) -> (features - mean) / std, same type (numpy or torch), dtype and device."""
        if features.shape[-1] != self.mean.shape[0]:
            raise InputError(f"features have {features.shape[-1]} bins, the scaler {self.mean.shape[0]}")
        if isinstance(features, torch.Tensor):
            mean = torch.as_tensor(self.mean, dtype=features.dtype, device=features.device)
            std = torch.as_tensor(self.std, dtype=features.dtype, device=features.device)
            return (features - mean) / std
        features = np.asarray(features)
        dtype = features.dtype if np.issubdtype(features.dtype, np.floating) else np.float64
        return ((features - self.mean) / self.std).astype(dtype, copy=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` (arrays mean, std, count) or ``.json``, atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".json"):
            raise InputError(f"{path}: a scaler is saved as .npz or .json")
        with atomic_path(path, suffix=suffix) as tmp:
            if suffix == ".npz":
                with open(tmp, "wb") as handle:
                    np.savez(handle, mean=self.mean, std=self.std, count=np.int64(self.count))
            else:
                document = {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": int(self.count)}
                tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scaler":
        """Read a scaler written by :meth:`save` (``.json`` by its suffix, else ``.npz``; no pickle is ever loaded)."""
        path = _existing(path)
        return cls._read_json(path) if path.suffix.lower() == ".json" else cls._read_npz(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Scaler":
        """Read a scaler in any form devinet accepts, recognised by its content (not its name).

        - ``.npz`` (a zip archive) with arrays ``mean`` and ``std`` (and optionally ``count``);
        - JSON ``{"mean": [...], "std": [...]}`` (optionally ``"count"``);
        - a pickled scikit-learn ``StandardScaler``, as the original CVSSP training saved it
          (``pickle.dump`` under Python 2, or any protocol of today's scikit-learn), read as
          plain data by an allow-list unpickler that never runs code (:mod:`devinet.scaler_pickle`).
        """
        path = _existing(path)
        try:
            with open(path, "rb") as handle:
                head = handle.read(64)
        except OSError as exc:
            raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})") from None
        if head.startswith(b"PK\x03\x04"):
            return cls._read_npz(path)
        if head.lstrip().startswith(b"{"):
            return cls._read_json(path)
        from .scaler_pickle import read_standard_scaler

        mean, std, count = read_standard_scaler(path)
        return cls._checked(path, mean, std, count)

    @classmethod
    def _read_json(cls, path: Path) -> "Scaler":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            return cls._checked(path, document["mean"], document["std"], document.get("count", 0))
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise FileFormatError(path, f"not a scaler file ({_describe(exc)})") from None

    @classmethod
    def _read_npz(cls, path: Path) -> "Scaler":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                count = arrays["count"] if "count" in arrays.files else 0
                return cls._checked(path, arrays["mean"], arrays["std"], count)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise FileFormatError(path, f"not a scaler file ({_describe(exc)})") from None

    @classmethod
    def _checked(cls, path: Path, mean, std, count) -> "Scaler":
        try:
            return cls(np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), int(count))
        except (ValueError, TypeError, InputError) as exc:
            raise FileFormatError(path, f"not a usable scaler ({_describe(exc)})") from None


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "no such scaler file")
    return path


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"missing {text}" if isinstance(exc, KeyError) else text or type(exc).__name__


__all__ = ["Scaler"]

"""A training run's folder: identity, lock, checkpoints, metrics log and monitored predictions.

::

    run.json                         what is trained on what (checked when resuming), versions
    checkpoints/epoch_0007.pt        one per epoch: model, optimizer, sampler and RNG states
    metrics.jsonl                    one JSON record per finished epoch
    predictions/<set>/epoch_0007.npz monitored predictions of the epochs that are fused

Every file is written atomically (a temporary file renamed into place), so a run killed at
any moment leaves only complete files. Checkpoints are devinet checkpoints (``devinet.load``
reads the model from any of them) with one more entry, ``training``, that holds plain data
only: they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from devinet import checkpoint as ckpt
from devinet._io import atomic_path, atomic_write_text, exclusive_lock
from devinet.errors import FileFormatError

TRAINING_STATE_FORMAT = "devinet-training-state"
TRAINING_STATE_VERSION = 1
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
PREDICTION_DIR = "predictions"
_CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4})\.pt$")
#: labels are hashed this many rows at a time (the same bytes as one float32 block)
_HASH_ROWS = 65536


def data_fingerprint(features: Any, labels: np.ndarray, scaler) -> str:
    """A short hash of what a run trains on: the features' shape, the labels (as float32) and the scaler."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(np.shape(features))).encode())
    for start in range(0, len(labels), _HASH_ROWS):
        digest.update(np.ascontiguousarray(labels[start:start + _HASH_ROWS], dtype=np.float32).tobytes())
    digest.update(scaler.mean.tobytes())
    digest.update(scaler.std.tobytes())
    return digest.hexdigest()[:16]


def eval_fingerprint(eval_set) -> str:
    """A short hash of a monitored set (name, features' shape, labels): cached predictions must match it."""
    digest = hashlib.sha256(json.dumps([eval_set.name, list(np.shape(eval_set.features))]).encode())
    digest.update(np.ascontiguousarray(eval_set.labels, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every (nested) key whose value differs."""
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


class RunFolder:
    """A training run's folder: identity, lock, checkpoints, metrics log, monitored predictions."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = None

    # paths
    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def predictions(self, name: str, epoch: int) -> Path:
        return self.path / PREDICTION_DIR / name / f"epoch_{epoch:04d}.npz"

    def read_identity(self) -> dict[str, Any] | None:
        path = self.path / RUN_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise FileFormatError(path, "not valid JSON (remove the run folder or use --force)") from None

    def completed_epochs(self) -> list[int]:
        """Epochs with a checkpoint on disk, ascending (atomic writes: every one is complete)."""
        if not self.checkpoints.is_dir():
            return []
        found = (_CHECKPOINT_NAME.match(p.name) for p in self.checkpoints.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read_history(self) -> list[dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # lifecycle
    def lock(self) -> None:
        """Hold an exclusive lock on the folder (released by :meth:`unlock` or when the process dies)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = exclusive_lock(self.path / "lock", "another process is training in this run folder")

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def remove_stale_temporaries(self) -> None:
        """Temporary files of atomic writes cut short by a kill (we hold the lock: none is in use)."""
        for folder in [self.path, self.checkpoints, *(self.path / PREDICTION_DIR).glob("*")]:
            if folder.is_dir():
                for stale in folder.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete what a previous run wrote here (its checkpoints, predictions, log and identity)."""
        for path in self.checkpoints.glob("epoch_*.pt") if self.checkpoints.is_dir() else []:
            path.unlink()
        for path in (self.path / PREDICTION_DIR).glob("*/epoch_*.npz"):
            path.unlink()
        for name in (METRICS_FILE, RUN_FILE):
            (self.path / name).unlink(missing_ok=True)

    def write_history(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` atomically (one record per line), so a reader never sees half a line."""
        atomic_write_text(self.path / METRICS_FILE, "".join(json.dumps(record) + "\n" for record in history))

    def prune(self, latest: int, keep: set[int]) -> None:
        """Delete checkpoints other than ``latest`` and those of ``keep``."""
        for epoch in self.completed_epochs():
            if epoch != latest and epoch not in keep:
                self.checkpoint(epoch).unlink(missing_ok=True)

    # checkpoints and predictions
    def save_checkpoint(self, model, epoch: int, identity: dict[str, Any], state: dict[str, Any]) -> None:
        """One epoch's checkpoint, atomically: a devinet checkpoint of ``model`` plus the ``training``
        state (plain data: ``state`` holds the optimizer's, sampler's and RNG states and the history)."""
        history = state["history"]
        payload = ckpt.checkpoint_payload(model, {"epoch": epoch, "iteration": history[-1]["iteration"],
                                                  "run": identity["name"]})
        payload["training"] = {
            "format": TRAINING_STATE_FORMAT,
            "version": TRAINING_STATE_VERSION,
            "epoch": epoch,
            "identity": json.dumps(identity["trained"], sort_keys=True),
            **state,
        }
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint(epoch)) as tmp:
            torch.save(payload, tmp)

    def read_checkpoint(self, epoch: int, identity: dict[str, Any]) -> dict[str, Any]:
        """The payload of epoch ``epoch``'s checkpoint, checked to be a training checkpoint of this run."""
        path = self.checkpoint(epoch)
        if not path.is_file():
            raise FileFormatError(path, "missing: every training process must see the run folder "
                                        "(on several machines, put it on a shared file system)")
        payload = ckpt.read(path)
        state = payload.get("training")
        if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
            raise FileFormatError(path, "not a training checkpoint (no training state): cannot resume from it")
        if state.get("version") != TRAINING_STATE_VERSION:
            raise FileFormatError(path, f"unsupported training state version {state.get('version')!r}")
        if state.get("identity") != json.dumps(identity["trained"], sort_keys=True):
            raise FileFormatError(path, "was written by a run with another configuration than this folder's run.json")
        return payload

    def save_predictions(self, name: str, epoch: int, clip: np.ndarray, frame: np.ndarray,
                         fingerprint: str) -> None:
        path = self.predictions(name, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, clipwise=clip, framewise=frame, fingerprint=np.array(fingerprint))

    def read_predictions(self, name: str, epoch: int, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached predictions of ``name`` at ``epoch`` when they exist and match ``fingerprint``."""
        cached = self.predictions(name, epoch)
        if not cached.is_file():
            return None
        with np.load(cached, allow_pickle=False) as stored:
            if str(stored["fingerprint"]) == fingerprint:
                return stored["clipwise"], stored["framewise"]
        return None


__all__ = ["RunFolder", "data_fingerprint", "eval_fingerprint", "differences", "TRAINING_STATE_FORMAT",
           "TRAINING_STATE_VERSION", "RUN_FILE", "METRICS_FILE", "CHECKPOINT_DIR", "PREDICTION_DIR"]

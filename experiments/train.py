"""Train a DeviNet on packed log-mel arrays with the original CVSSP recipe, resumably.

The recipe (yongxuUSTC/dcase2017_task4_cvssp): Adam with learning rate 1e-3, binary
cross-entropy on the clip-level output, class-ratio balanced batches of 44
(:class:`devinet.batching.BalancedBatchSampler`), 100 iterations make an "epoch", a checkpoint
after every epoch, and predictions averaged over the checkpoints of the last epochs (the
original fused epochs 20..29 of 30). Features are standardised per mel bin with the scaler
fitted on the training split. The loss clips probabilities to [1e-7, 1 - 1e-7] before the
logarithm, as Keras' ``binary_crossentropy`` does.

A run lives in one folder::

    run.json                         what is trained on what (checked when resuming), versions
    checkpoints/epoch_0007.pt        one per epoch: model, optimizer, sampler and RNG states
    metrics.jsonl                    one JSON record per finished epoch
    predictions/<set>/epoch_0007.npz monitored predictions of the epochs that are fused

Every file is written atomically (a temporary file renamed into place), so a run killed at
any moment, even by SIGKILL in the middle of a checkpoint write, leaves only complete
checkpoints; :func:`train` called again on the folder resumes after the last one. In
deterministic mode (the default; on CPU) a resumed run ends with the same weights and
metrics, bit for bit, as one that was never interrupted: the sampler is keyed by counters,
and its state, the optimizer's and torch's RNG state are saved with every checkpoint.

Checkpoints are devinet checkpoints (``devinet.load`` reads the model from any of them) with
one more entry, ``training``, that holds plain data only: they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from devinet import checkpoint as ckpt
from devinet._io import atomic_path, atomic_write_json, atomic_write_text
from devinet.batching import BalancedBatchSampler
from devinet.config import DeviNetConfig
from devinet.errors import ConfigError, FileFormatError, InputError
from devinet.features import Scaler
from devinet.losses import keras2_binary_crossentropy as keras_bce
from devinet.model import DeviNet

TRAINING_STATE_FORMAT = "devinet-training-state"
TRAINING_STATE_VERSION = 1
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
PREDICTION_DIR = "predictions"
_CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4})\.pt$")
KEEP_POLICIES = ("fused", "all")


@dataclass(frozen=True)
class TrainSchedule:
    """The training schedule (the original: 30 epochs of 100 iterations, batch 44, lr 1e-3, fuse the last 10).

    Attributes:
        epochs: number of "epochs" of ``iterations_per_epoch`` balanced batches; a checkpoint after each.
        iterations_per_epoch: batches per epoch.
        batch_size: slots per balanced batch.
        learning_rate: Adam's learning rate.
        fused_checkpoints: predictions average the checkpoints of the last this many epochs.
    """

    epochs: int = 30
    iterations_per_epoch: int = 100
    batch_size: int = 44
    learning_rate: float = 1e-3
    fused_checkpoints: int = 10

    def __post_init__(self) -> None:
        for key in ("epochs", "iterations_per_epoch", "batch_size", "fused_checkpoints"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"training.{key} must be a positive integer, got {value!r}")
        if self.fused_checkpoints > self.epochs:
            raise ConfigError(f"training.fused_checkpoints ({self.fused_checkpoints}) exceeds epochs ({self.epochs})")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ConfigError(f"training.learning_rate must be a positive number, got {rate!r}")

    @property
    def fused_epochs(self) -> tuple[int, ...]:
        """Epochs (1-based) whose checkpoints are fused: the last ``fused_checkpoints``."""
        return tuple(range(self.epochs - self.fused_checkpoints + 1, self.epochs + 1))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalSet:
    """A labelled set predicted after every epoch (its AT micro F1 goes to the metrics log).

    Attributes:
        name: short name, used in the log (``<name>_at_f1``) and for the prediction folder.
        features: (N, T, n_mels) unscaled log-mel (a numpy array or an h5py dataset).
        labels: (N, C) multi-hot.
    """

    name: str
    features: Any
    labels: np.ndarray

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise InputError(f"evaluation set name must be letters, digits, '_' or '-', got {self.name!r}")
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if self.labels.ndim != 2 or self.labels.shape[0] != len(self.features):
            raise InputError(f"{self.name}: {len(self.features)} clips but labels of shape {self.labels.shape}")


@dataclass
class TrainResult:
    """What a call to :func:`train` left in its run folder.

    Attributes:
        run_dir: the folder.
        epochs: epochs of the schedule.
        epochs_done: epochs completed so far.
        history: one metrics record per completed epoch (the lines of ``metrics.jsonl``).
        resumed_from: the epoch this call started after (0 for a fresh run).
    """

    run_dir: Path
    epochs: int
    epochs_done: int
    history: list[dict[str, Any]]
    resumed_from: int

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs


# ---------------------------------------------------------------------- small pieces
@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` for the duration, then the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def gather(features: Any, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` (any order, repeats allowed) of a numpy array or an h5py dataset, (B, T, F) float32.

    h5py reads increasing unique indices only, so the unique rows are read once and then expanded.
    """
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    block = np.asarray(features[unique] if isinstance(features, np.ndarray) else features[unique.tolist()])
    return block[inverse].astype(np.float32, copy=False)


def at_micro_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    """AT micro F1 of (N, C) probabilities against (N, C) multi-hot labels, with CVSSP's 0.3 / arg-max rule."""
    from sklearn.metrics import f1_score

    from experiments.evaluation import at_decisions

    return float(f1_score(np.asarray(labels, dtype=bool), at_decisions(probs), average="micro", zero_division=0))


def predict(model: DeviNet, features: Any, scaler: Scaler, batch_size: int = 32,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of every clip: clip-level (N, C) and frame-level (N, T_out, C), float32.

    ``features`` (N, T, n_mels) are unscaled (``scaler`` standardises them). The model is put
    in eval mode (BatchNorm uses its moving statistics) and left there.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    clips, frames = [], []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            x = gather(features, np.arange(start, min(start + batch_size, len(features))))
            out = model(torch.from_numpy(scaler.transform(x)).to(device))
            clips.append(out["clipwise"].cpu().numpy())
            frames.append(out["framewise"].cpu().numpy())
    return np.concatenate(clips), np.concatenate(frames)


def data_fingerprint(features: Any, labels: np.ndarray, scaler: Scaler) -> str:
    """A short hash of what a run trains on: the features' shape, the labels and the scaler."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(np.shape(features))).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
    digest.update(scaler.mean.tobytes())
    digest.update(scaler.std.tobytes())
    return digest.hexdigest()[:16]


def _eval_fingerprint(eval_set: EvalSet) -> str:
    digest = hashlib.sha256(json.dumps([eval_set.name, list(np.shape(eval_set.features))]).encode())
    digest.update(np.ascontiguousarray(eval_set.labels, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------- the run folder
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
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise FileFormatError(self.path, "another process is training in this run folder") from None

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
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


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


def _save_checkpoint(folder: RunFolder, model: DeviNet, optimizer: torch.optim.Optimizer,
                     sampler: BalancedBatchSampler, epoch: int, history: list[dict[str, Any]],
                     identity: dict[str, Any]) -> None:
    """One epoch's checkpoint, atomically: a devinet checkpoint plus the ``training`` state (plain data)."""
    payload = {
        "format": ckpt.FORMAT,
        "format_version": ckpt.FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": {"epoch": epoch, "iteration": history[-1]["iteration"], "run": identity["name"]},
        "training": {
            "format": TRAINING_STATE_FORMAT,
            "version": TRAINING_STATE_VERSION,
            "epoch": epoch,
            "identity": json.dumps(identity["trained"], sort_keys=True),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
        },
    }
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder.checkpoint(epoch)) as tmp:
        torch.save(payload, tmp)


def _read_training_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    payload = ckpt.read(path)
    state = payload.get("training")
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise FileFormatError(path, "not a training checkpoint (no training state): cannot resume from it")
    if state.get("version") != TRAINING_STATE_VERSION:
        raise FileFormatError(path, f"unsupported training state version {state.get('version')!r}")
    if state.get("identity") != json.dumps(identity["trained"], sort_keys=True):
        raise FileFormatError(path, "was written by a run with another configuration than this folder's run.json")
    return payload


def _save_predictions(path: Path, clip: np.ndarray, frame: np.ndarray, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, clipwise=clip, framewise=frame, fingerprint=np.array(fingerprint))


# ---------------------------------------------------------------------- training
def train(
    model_config: DeviNetConfig,
    features: Any,
    labels: np.ndarray,
    scaler: Scaler,
    run_dir: str | os.PathLike,
    schedule: TrainSchedule,
    *,
    seed: int = 0,
    deterministic: bool = True,
    monitor: EvalSet | None = None,
    eval_batch_size: int = 32,
    keep_checkpoints: str = "fused",
    stop_after: int | None = None,
    force: bool = False,
    device: str | torch.device = "cpu",
    name: str = "model",
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) ``model_config`` on ``features``/``labels`` in ``run_dir``.

    Args:
        model_config: the model to build (its weights start from ``torch.manual_seed(seed)``).
        features: (N, T, n_mels) unscaled log-mel of the training clips (numpy or h5py).
        labels: (N, C) multi-hot weak labels.
        scaler: per-mel-bin standardisation fitted on the training split.
        run_dir: the run folder (created; resumed when it holds a run of the same setup).
        schedule: epochs, iterations per epoch, batch size, learning rate, fused checkpoints.
        seed: seeds the weights, the batch sampler and torch's RNG.
        deterministic: ``torch.use_deterministic_algorithms(True)`` while training (on CPU a
            resumed run then equals an uninterrupted one bit for bit).
        monitor: a labelled set predicted after every epoch: its AT micro F1 is logged, and
            its predictions of the fused epochs are kept for :func:`fused_predictions`.
        eval_batch_size: clips per forward pass when predicting ``monitor``.
        keep_checkpoints: "fused" keeps the fused epochs' checkpoints and the latest; "all" keeps all.
        stop_after: return once this many epochs are complete (the run stays resumable).
        force: discard a previous run in ``run_dir`` (also one with another setup) and start over.
        device: torch device to train on (determinism is guaranteed on CPU).
        name: the run's name, recorded in run.json and the checkpoints.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`TrainResult`. Raises ConfigError when ``run_dir`` holds a run of another setup
        (unless ``force``).
    """
    from tqdm.auto import tqdm

    from experiments.provenance import now, versions

    if keep_checkpoints not in KEEP_POLICIES:
        raise ConfigError(f"keep_checkpoints must be one of {', '.join(KEEP_POLICIES)}, got {keep_checkpoints!r}")
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[0] != len(features) or labels.shape[1] != model_config.num_classes:
        raise InputError(f"labels must be ({len(features)}, {model_config.num_classes}), got {labels.shape}")
    if np.shape(features)[1:] and np.shape(features)[-1] != model_config.n_mels:
        raise InputError(f"features have {np.shape(features)[-1]} mel bins, the model expects {model_config.n_mels}")

    folder = RunFolder(run_dir)
    folder.lock()
    try:
        identity = {
            "name": name,
            "trained": {
                "model": model_config.to_dict(),
                "schedule": schedule.to_dict(),
                "seed": int(seed),
                "deterministic": bool(deterministic),
                "data": data_fingerprint(features, labels, scaler),
                "monitor": None if monitor is None else _eval_fingerprint(monitor),
            },
        }
        previous = folder.read_identity()
        if force or (previous is None):
            folder.clear()
        elif previous.get("trained") != identity["trained"]:
            changes = "; ".join(_differences(previous.get("trained", {}), identity["trained"])[:6])
            raise ConfigError(f"{folder.path} holds a run with another setup ({changes}); "
                              "use another folder, or --force to discard it")
        folder.remove_stale_temporaries()
        if previous is None or force:
            atomic_write_json(folder.path / RUN_FILE, {**identity, "schedule": schedule.to_dict(),
                                                       "created": now(), "versions": versions()})

        with deterministic_algorithms(deterministic):
            return _train_loop(folder, identity, model_config, features, labels, scaler, schedule, seed, monitor,
                               eval_batch_size, keep_checkpoints, stop_after, device, progress, tqdm)
    finally:
        folder.unlock()


def _train_loop(folder: RunFolder, identity, model_config, features, labels, scaler, schedule, seed, monitor,
                eval_batch_size, keep_checkpoints, stop_after, device, progress, tqdm) -> TrainResult:
    torch.manual_seed(seed)
    model = DeviNet(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.learning_rate)
    sampler = BalancedBatchSampler(labels, batch_size=schedule.batch_size, seed=seed)
    history: list[dict[str, Any]] = []
    done = folder.completed_epochs()
    start = done[-1] if done else 0
    if start:
        payload = _read_training_state(folder.checkpoint(start), identity)
        ckpt.load_state_dict_strict(model, payload["state_dict"], source=str(folder.checkpoint(start)))
        state = payload["training"]
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
    # The log may hold a record newer than the last checkpoint (killed in between): the
    # checkpoint's history is the truth.
    folder.write_history(history)
    target = schedule.epochs if stop_after is None else min(schedule.epochs, max(stop_after, start))
    fused = set(schedule.fused_epochs)
    y_all = torch.from_numpy(labels)
    total = schedule.epochs * schedule.iterations_per_epoch
    bar = tqdm(total=total, initial=start * schedule.iterations_per_epoch, unit="it", desc=identity["name"],
               disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(start + 1, target + 1):
            model.train()
            began = time.perf_counter()
            losses = []
            for _ in range(schedule.iterations_per_epoch):
                index = next(sampler)
                x = torch.from_numpy(scaler.transform(gather(features, index))).to(device)
                loss = keras_bce(model(x)["clipwise"], y_all[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}", refresh=False)
            record: dict[str, Any] = {
                "epoch": epoch,
                "iteration": epoch * schedule.iterations_per_epoch,
                "loss": float(np.mean(losses)),
                "loss_last": losses[-1],
                "train_seconds": time.perf_counter() - began,
            }
            if monitor is not None:
                began = time.perf_counter()
                clip, frame = predict(model, monitor.features, scaler, eval_batch_size, device)
                record[f"{monitor.name}_at_f1"] = at_micro_f1(clip, monitor.labels)
                record[f"{monitor.name}_seconds"] = time.perf_counter() - began
                if epoch in fused:
                    _save_predictions(folder.predictions(monitor.name, epoch), clip, frame, _eval_fingerprint(monitor))
            history.append(record)
            _save_checkpoint(folder, model, optimizer, sampler, epoch, history, identity)
            folder.write_history(history)
            if keep_checkpoints == "fused":
                folder.prune(epoch, fused)
    finally:
        bar.close()
    return TrainResult(folder.path, schedule.epochs, len(history), history, start)


# ---------------------------------------------------------------------- predictions of a run
def run_schedule(run_dir: str | os.PathLike) -> TrainSchedule:
    """The schedule recorded in a run folder."""
    identity = RunFolder(run_dir).read_identity()
    if identity is None:
        raise FileFormatError(Path(run_dir), f"no {RUN_FILE}: not a training run folder")
    return TrainSchedule(**identity["trained"]["schedule"])


def fused_predictions(run_dir: str | os.PathLike, eval_set: EvalSet, scaler: Scaler, batch_size: int = 32,
                      device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Mean predictions over the fused epochs' checkpoints: clip (N, C) and frame (N, T_out, C).

    Predictions monitored during training on this same set are reused; the others are
    computed from the checkpoints (which must exist: a finished run with ``keep_checkpoints``
    "fused" or "all").
    """
    folder = RunFolder(run_dir)
    schedule = run_schedule(run_dir)
    fingerprint = _eval_fingerprint(eval_set)
    clips, frames = [], []
    for epoch in schedule.fused_epochs:
        cached = folder.predictions(eval_set.name, epoch)
        arrays = None
        if cached.is_file():
            with np.load(cached, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) == fingerprint:
                    arrays = stored["clipwise"], stored["framewise"]
        if arrays is None:
            path = folder.checkpoint(epoch)
            if not path.is_file():
                first, last = schedule.fused_epochs[0], schedule.fused_epochs[-1]
                raise FileFormatError(path, f"missing: fusion needs the checkpoints of epochs {first}..{last} "
                                            "(is training finished?)")
            model = ckpt.load(path).to(device)
            arrays = predict(model, eval_set.features, scaler, batch_size, device)
        clips.append(arrays[0])
        frames.append(arrays[1])
    return np.mean(clips, axis=0, dtype=np.float64).astype(np.float32), \
        np.mean(frames, axis=0, dtype=np.float64).astype(np.float32)


__all__ = [
    "TrainSchedule", "EvalSet", "TrainResult", "RunFolder", "train", "predict", "fused_predictions", "run_schedule",
    "keras_bce", "at_micro_f1", "gather", "data_fingerprint", "deterministic_algorithms",
]

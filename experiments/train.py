"""Train a DeviNet on packed log-mel arrays with the original CVSSP recipe, resumably.

The recipe (yongxuUSTC/dcase2017_task4_cvssp): Keras 2.0.8's Adam (:class:`devinet.optim.Keras2Adam`)
with learning rate 1e-3, Keras 2.0.8's binary cross-entropy on the clip-level output, class-ratio balanced batches of 44
(:class:`experiments.batching.BalancedBatchSampler`), 100 iterations make an "epoch", a checkpoint
after every epoch, and predictions averaged over chosen checkpoints (:class:`TrainSchedule`;
the original scripts' two schedules are :data:`ORIGINAL_SCHEDULES`). Features are standardised
per mel bin with the scaler fitted on the training split. BatchNorm's moving statistics follow
Keras 2.0.8 on Theano (the presets' ``bn_moving_variance``); docs/training-parity.md shows the
whole step equal to genuine Keras 2.0.8 recordings.

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
from devinet._io import atomic_path, atomic_write_json, atomic_write_text, exclusive_lock
from experiments.batching import BalancedBatchSampler
from devinet.config import DeviNetConfig
from devinet.errors import ConfigError, FileFormatError, InputError
from devinet.features import Scaler
from devinet.losses import keras2_binary_crossentropy as keras_bce
from devinet.model import DeviNet
from devinet.optim import Keras2Adam
from devinet.preprocessing import Preprocessing, default_classes
from experiments.evaluation.tagging import at_micro_f1

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
    """A training schedule: how long to train and which checkpoints the predictions average.

    The defaults are main_crnn_at.py's (:data:`ORIGINAL_SCHEDULES`): 30 epochs of 100
    iterations, batch 44, lr 1e-3, a checkpoint after every epoch, fusion of the last 10.

    Attributes:
        epochs: number of "epochs" of ``iterations_per_epoch`` balanced batches.
        iterations_per_epoch: batches per epoch.
        batch_size: slots per balanced batch.
        learning_rate: Adam's learning rate.
        fused_checkpoints: predictions average the last this many checkpoints.
        checkpoint_every: epochs between two of the checkpoints that fusion chooses from (Keras'
            ``ModelCheckpoint(period=...)`` of the original script). The fused epochs are the last
            ``fused_checkpoints`` multiples of it up to ``epochs``. (The training loop also keeps a
            checkpoint after every epoch to resume from; that changes nothing that is trained.)
    """

    epochs: int = 30
    iterations_per_epoch: int = 100
    batch_size: int = 44
    learning_rate: float = 1e-3
    fused_checkpoints: int = 10
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        for key in ("epochs", "iterations_per_epoch", "batch_size", "fused_checkpoints", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"training.{key} must be a positive integer, got {value!r}")
        if self.epochs % self.checkpoint_every:
            raise ConfigError(f"training.epochs ({self.epochs}) must be a multiple of training.checkpoint_every "
                              f"({self.checkpoint_every}): training ends on a checkpoint")
        if self.fused_checkpoints > self.epochs // self.checkpoint_every:
            raise ConfigError(f"training.fused_checkpoints ({self.fused_checkpoints}) exceeds the "
                              f"{self.epochs // self.checkpoint_every} checkpoints of {self.epochs} epochs "
                              f"taken every {self.checkpoint_every}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ConfigError(f"training.learning_rate must be a positive number, got {rate!r}")

    @property
    def fused_epochs(self) -> tuple[int, ...]:
        """Epochs (1-based: the weights after that many epochs) whose checkpoints are fused."""
        first = self.epochs - (self.fused_checkpoints - 1) * self.checkpoint_every
        return tuple(range(first, self.epochs + 1, self.checkpoint_every))

    @property
    def keras_checkpoint_numbers(self) -> tuple[int, ...]:
        """The fused checkpoints as the original's Keras 2 file names number them (0-based epochs)."""
        return tuple(epoch - 1 for epoch in self.fused_epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The original scripts' schedules (yongxuUSTC/dcase2017_task4_cvssp; Keras 2.0.8 numbers its
#: checkpoint files from 0, so file ``.NN-`` holds the weights after NN + 1 epochs). Both train
#: unbounded ("epochs=2000000010", stopped by hand) on 100 iterations of balanced batches of 44
#: per "epoch" with Adam's defaults; what differs is which checkpoints the predictions average:
ORIGINAL_SCHEDULES: dict[str, TrainSchedule] = {
    # main_crnn_at.py and main_crnn_sed.py (Kong, 2017-09-24): a checkpoint per epoch (period=1),
    # recognize() fuses files 20..29 = the weights after epochs 21..30.
    "main_crnn_at": TrainSchedule(epochs=30, fused_checkpoints=10, checkpoint_every=1),
    # main_cnnrnn_balbatch_norm_baseline_icassp2018.py and the challenge-era scripts (Xu,
    # 2017-09-20/21): period=10; predict_audio_tagging_icassp2018_cnnrnn_baseline.py, predict_crnn_at.py
    # and predict_crnn_sed.py fuse files range(19, 81, 10) = the weights after epochs 20, 30, ..., 80.
    "icassp2018_baseline": TrainSchedule(epochs=80, fused_checkpoints=7, checkpoint_every=10),
}


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
    payload = ckpt.checkpoint_payload(model, {"epoch": epoch, "iteration": history[-1]["iteration"],
                                              "run": identity["name"]})
    payload["training"] = {
        "format": TRAINING_STATE_FORMAT,
        "version": TRAINING_STATE_VERSION,
        "epoch": epoch,
        "identity": json.dumps(identity["trained"], sort_keys=True),
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
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
    classes: Sequence[str] | None = None,
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
        classes: names of the outputs (default: the DCASE 2017 labels for 17 classes, else
            ``class_<k>``); with ``scaler`` and the original feature recipe they make every
            checkpoint self-describing (``model.preprocessing`` after ``devinet.load``).

    Returns:
        A :class:`TrainResult`. Raises ConfigError when ``run_dir`` holds a run of another setup
        (unless ``force``).
    """
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
                "optimizer": OPTIMIZER,
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

        preprocessing = Preprocessing(classes=tuple(classes or default_classes(model_config.num_classes)),
                                      scaler=scaler)
        job = _Job(folder, identity, model_config, features, labels, scaler, schedule, seed, monitor,
                   eval_batch_size, keep_checkpoints, stop_after, device, progress, preprocessing)
        with deterministic_algorithms(deterministic):
            return _train_loop(job)
    finally:
        folder.unlock()


#: the recipe's optimizer, recorded in a run's identity (a run folder is resumed only by the same one)
OPTIMIZER = "keras2_adam"


def make_optimizer(model: DeviNet, learning_rate: float) -> torch.optim.Optimizer:
    """The recipe's optimizer: Keras 2.0.8's Adam (:class:`devinet.optim.Keras2Adam`) at ``learning_rate``,
    its other settings Keras 2.0.8's defaults, as the original's ``optimizer='adam'``."""
    return Keras2Adam(model.parameters(), lr=learning_rate)


class TrainingStep:
    """One step of the recipe: forward, Keras binary cross-entropy on the clip output, backward,
    optimizer step. ``step(x, y)`` returns the loss (a 0-d tensor, not synchronised)."""

    def __init__(self, model: DeviNet, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = keras_bce(self.model(x)["clipwise"], y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


@dataclass
class _Job:
    """What one call of :func:`train` trains (its arguments, checked), and where."""

    folder: RunFolder
    identity: dict[str, Any]
    model_config: DeviNetConfig
    features: Any
    labels: np.ndarray
    scaler: Scaler
    schedule: TrainSchedule
    seed: int
    monitor: EvalSet | None
    eval_batch_size: int
    keep_checkpoints: str
    stop_after: int | None
    device: str | torch.device
    progress: bool
    preprocessing: Preprocessing


def _restore(job: _Job, model: DeviNet, optimizer: torch.optim.Optimizer,
             sampler: BalancedBatchSampler) -> tuple[int, list[dict[str, Any]]]:
    """Load the last checkpoint of the run folder, if any: (its epoch, the history so far)."""
    done = job.folder.completed_epochs()
    if not done:
        return 0, []
    path = job.folder.checkpoint(done[-1])
    payload = _read_training_state(path, job.identity)
    ckpt.load_state_dict_strict(model, payload["state_dict"], source=str(path))
    state = payload["training"]
    optimizer.load_state_dict(state["optimizer"])
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    return done[-1], list(state["history"])


def _train_loop(job: _Job) -> TrainResult:
    from tqdm.auto import tqdm

    schedule = job.schedule
    torch.manual_seed(job.seed)
    model = DeviNet(job.model_config).to(job.device)
    model.preprocessing = job.preprocessing
    optimizer = make_optimizer(model, schedule.learning_rate)
    step = TrainingStep(model, optimizer)
    sampler = BalancedBatchSampler(job.labels, batch_size=schedule.batch_size, seed=job.seed)
    start, history = _restore(job, model, optimizer, sampler)
    # The log may hold a record newer than the last checkpoint (killed in between): the
    # checkpoint's history is the truth.
    job.folder.write_history(history)
    target = schedule.epochs if job.stop_after is None else min(schedule.epochs, max(job.stop_after, start))
    y_all = torch.from_numpy(job.labels)
    bar = tqdm(total=schedule.epochs * schedule.iterations_per_epoch, initial=start * schedule.iterations_per_epoch,
               unit="it", desc=job.identity["name"], disable=not job.progress, dynamic_ncols=True)
    try:
        for epoch in range(start + 1, target + 1):
            model.train()
            began = time.perf_counter()
            losses = []
            for _ in range(schedule.iterations_per_epoch):
                index = next(sampler)
                x = torch.from_numpy(job.scaler.transform(gather(job.features, index))).to(job.device)
                losses.append(step(x, y_all[index].to(job.device)).item())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}", refresh=False)
            record = {"epoch": epoch, "iteration": epoch * schedule.iterations_per_epoch,
                      "loss": float(np.mean(losses)), "loss_last": losses[-1],
                      "train_seconds": time.perf_counter() - began}
            history.append(record | _monitor(job, model, epoch))
            _save_checkpoint(job.folder, model, optimizer, sampler, epoch, history, job.identity)
            job.folder.write_history(history)
            if job.keep_checkpoints == "fused":
                job.folder.prune(epoch, set(schedule.fused_epochs))
    finally:
        bar.close()
    return TrainResult(job.folder.path, schedule.epochs, len(history), history, start)


def _monitor(job: _Job, model: DeviNet, epoch: int) -> dict[str, Any]:
    """Predict the monitored set after ``epoch``: its AT micro F1 for the log; its predictions are
    kept when the epoch is fused."""
    monitor = job.monitor
    if monitor is None:
        return {}
    began = time.perf_counter()
    clip, frame = predict(model, monitor.features, job.scaler, job.eval_batch_size, job.device)
    record = {f"{monitor.name}_at_f1": at_micro_f1(clip, monitor.labels),
              f"{monitor.name}_seconds": time.perf_counter() - began}
    if epoch in job.schedule.fused_epochs:
        _save_predictions(job.folder.predictions(monitor.name, epoch), clip, frame, _eval_fingerprint(monitor))
    return record


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
    "TrainSchedule", "ORIGINAL_SCHEDULES", "EvalSet", "TrainResult", "RunFolder", "train", "predict",
    "fused_predictions", "run_schedule",
    "keras_bce", "at_micro_f1", "gather", "data_fingerprint", "deterministic_algorithms", "make_optimizer",
    "TrainingStep",
]

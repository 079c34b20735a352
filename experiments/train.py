"""Train a DeviNet on packed log-mel arrays with the original CVSSP recipe, resumably, on one or many processes.

The recipe (yongxuUSTC/dcase2017_task4_cvssp): Keras 2.0.8's Adam (:class:`devinet.optim.Keras2Adam`)
with learning rate 1e-3, Keras 2.0.8's binary cross-entropy on the clip-level output, class-ratio balanced batches of 44
(:class:`experiments.batching.BalancedBatchSampler`), 100 iterations make an "epoch", a checkpoint
after every epoch, and predictions averaged over chosen checkpoints (:class:`TrainSchedule`;
the original scripts' two schedules are :data:`ORIGINAL_SCHEDULES`). Features are standardised
per mel bin with the scaler fitted on the training split. BatchNorm's moving statistics follow
Keras 2.0.8 on Theano (the presets' ``bn_moving_variance``); docs/training-parity.md shows the
whole step equal to genuine Keras 2.0.8 recordings.

A run lives in one folder (:mod:`experiments.runfolder`): ``run.json``, one checkpoint per
epoch, ``metrics.jsonl`` and the monitored predictions of the fused epochs. Every file is
written atomically, so a run killed at any moment, even by SIGKILL in the middle of a
checkpoint write, leaves only complete checkpoints; :func:`train` called again on the folder
resumes after the last one. In deterministic mode (the default; on CPU) a resumed run ends
with the same weights and metrics, bit for bit, as one that was never interrupted: the sampler
is keyed by counters, and its state, the optimizer's and torch's RNG state are saved with
every checkpoint.

Scale (docs/scaling.md): features are read lazily, batch by batch, optionally by DataLoader
workers (:mod:`experiments.trainingdata`); under a torch launcher the run is data-parallel
(:mod:`experiments.distributed`: each process trains on its slice of every global batch, the
result equals one process's up to float32 rounding, rank 0 writes the folder); ``precision``
bf16 or fp16 trains under autocast (:mod:`experiments.precision`).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from devinet import checkpoint as ckpt
from devinet._io import atomic_write_json
from devinet.config import DeviNetConfig
from devinet.errors import ConfigError, FileFormatError, InputError
from devinet.features import Scaler
from devinet.losses import keras2_binary_crossentropy as keras_bce
from devinet.model import DeviNet
from devinet.optim import Keras2Adam
from devinet.preprocessing import FeatureRecipe, Preprocessing, default_classes
from experiments import distributed, precision as amp
from experiments.batching import BalancedBatchSampler
from experiments.evaluation.tagging import at_micro_f1
from experiments.runfolder import RUN_FILE, RunFolder, data_fingerprint, differences, eval_fingerprint
from experiments.schedules import ORIGINAL_SCHEDULES, TrainSchedule
from experiments.trainingdata import ClipBatches, EpochBatches, batch_loader, gather

KEEP_POLICIES = ("fused", "all")


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
        world_size: training processes of this call (data-parallel; 1 for one process).
    """

    run_dir: Path
    epochs: int
    epochs_done: int
    history: list[dict[str, Any]]
    resumed_from: int
    world_size: int = 1

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs


# ---------------------------------------------------------------------- small pieces
@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, warn_only: bool = False) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` for the duration, then the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


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
            out = model(torch.from_numpy(scaler.transform(x)).to(device, dtype=next(model.parameters()).dtype))
            clips.append(out["clipwise"].float().cpu().numpy())
            frames.append(out["framewise"].float().cpu().numpy())
    return np.concatenate(clips), np.concatenate(frames)


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
    precision: str = "fp32",
    sync_batchnorm: bool = True,
    workers: int = 0,
    feature_recipe: FeatureRecipe | None = None,
) -> TrainResult:
    """Train (or resume training) ``model_config`` on ``features``/``labels`` in ``run_dir``.

    Args:
        model_config: the model to build (its weights start from ``torch.manual_seed(seed)``).
        features: (N, T, n_mels) unscaled log-mel of the training clips: numpy, an h5py dataset
            or an :class:`experiments.trainingdata.ClipFeatures` (read batch by batch).
        labels: (N, C) multi-hot weak labels (any numeric dtype, e.g. uint8).
        scaler: per-mel-bin standardisation fitted on the training split.
        run_dir: the run folder (created; resumed when it holds a run of the same setup).
        schedule: epochs, iterations per epoch, batch size, learning rate, fused checkpoints.
        seed: seeds the weights, the batch sampler and torch's RNG.
        deterministic: ``torch.use_deterministic_algorithms(True)`` while training (on CPU a
            resumed run then equals an uninterrupted one bit for bit; on CUDA a warning marks
            the operations that are not deterministic).
        monitor: a labelled set predicted after every epoch: its AT micro F1 is logged, and
            its predictions of the fused epochs are kept for :func:`fused_predictions`.
        eval_batch_size: clips per forward pass when predicting ``monitor``.
        keep_checkpoints: "fused" keeps the fused epochs' checkpoints and the latest; "all" keeps all.
        stop_after: return once this many epochs are complete (the run stays resumable).
        force: discard a previous run in ``run_dir`` (also one with another setup) and start over.
        device: torch device to train on (determinism is guaranteed on CPU); in a distributed
            CUDA run each process uses ``cuda:LOCAL_RANK``.
        name: the run's name, recorded in run.json and the checkpoints.
        progress: show a tqdm progress bar.
        classes: names of the outputs (default: the DCASE 2017 labels for 17 classes, else
            ``class_<k>``); with ``scaler`` and ``feature_recipe`` (default: the original's) they
            make every checkpoint self-describing (``model.preprocessing`` after ``devinet.load``).
        precision: "fp32" (default), "bf16" or "fp16" (autocast; fp16 with a gradient scaler), or
            "fp64" (everything in float64: slow, for parity checks).
        sync_batchnorm: in a data-parallel run, BatchNorm statistics over the global batch (the
            single-process result); False: over each process's slice.
        workers: DataLoader worker processes reading the batches ahead (0: read in this process).

    Returns:
        A :class:`TrainResult`. Raises ConfigError when ``run_dir`` holds a run of another setup
        (unless ``force``).
    """
    if keep_checkpoints not in KEEP_POLICIES:
        raise ConfigError(f"keep_checkpoints must be one of {', '.join(KEEP_POLICIES)}, got {keep_checkpoints!r}")
    amp.check_precision(precision, device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer, got {workers!r}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != len(features) or labels.shape[1] != model_config.num_classes:
        raise InputError(f"labels must be ({len(features)}, {model_config.num_classes}), got {labels.shape}")
    if np.shape(features)[1:] and np.shape(features)[-1] != model_config.n_mels:
        raise InputError(f"features have {np.shape(features)[-1]} mel bins, the model expects {model_config.n_mels}")
    if torch.device(device).type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    place = distributed.join(device)
    identity = _identity(name, model_config, schedule, seed, deterministic, precision, features, labels, scaler,
                         monitor)
    folder = RunFolder(run_dir)
    if place.is_main:
        _open_folder(folder, identity, schedule, force)
    try:
        preprocessing = Preprocessing(classes=tuple(classes or default_classes(model_config.num_classes)),
                                      scaler=scaler, features=feature_recipe or FeatureRecipe())
        job = _Job(folder, identity, model_config, features, labels, scaler, schedule, seed, monitor,
                   eval_batch_size, keep_checkpoints, stop_after, distributed.training_device(device, place),
                   progress and place.is_main, preprocessing, precision, sync_batchnorm, workers, place)
        cuda = job.device.type == "cuda"
        with deterministic_algorithms(deterministic, warn_only=cuda):
            return _train_loop(job)
    finally:
        folder.unlock()


def _identity(name, model_config, schedule, seed, deterministic, precision, features, labels, scaler,
              monitor) -> dict[str, Any]:
    """What a run trains on what (compared when resuming); fp32 runs leave precision out (as before it existed)."""
    trained = {
        "model": model_config.to_dict(),
        "schedule": schedule.to_dict(),
        "seed": int(seed),
        "optimizer": OPTIMIZER,
        "deterministic": bool(deterministic),
        "data": data_fingerprint(features, labels, scaler),
        "monitor": None if monitor is None else eval_fingerprint(monitor),
    }
    if precision != "fp32":
        trained["precision"] = precision
    return {"name": name, "trained": trained}


def _open_folder(folder: RunFolder, identity: dict[str, Any], schedule: TrainSchedule, force: bool) -> None:
    """Lock the run folder and check (or start) its run: the main process's part of :func:`train`."""
    from experiments.provenance import now, versions

    folder.lock()
    try:
        previous = folder.read_identity()
        if force or (previous is None):
            folder.clear()
        elif previous.get("trained") != identity["trained"]:
            changes = "; ".join(differences(previous.get("trained", {}), identity["trained"])[:6])
            raise ConfigError(f"{folder.path} holds a run with another setup ({changes}); "
                              "use another folder, or --force to discard it")
        folder.remove_stale_temporaries()
        if previous is None or force:
            atomic_write_json(folder.path / RUN_FILE, {**identity, "schedule": schedule.to_dict(),
                                                       "created": now(), "versions": versions()})
    except BaseException:
        folder.unlock()
        raise


#: the recipe's optimizer, recorded in a run's identity (a run folder is resumed only by the same one)
OPTIMIZER = "keras2_adam"


def make_optimizer(model: DeviNet, learning_rate: float) -> torch.optim.Optimizer:
    """The recipe's optimizer: Keras 2.0.8's Adam (:class:`devinet.optim.Keras2Adam`) at ``learning_rate``,
    its other settings Keras 2.0.8's defaults, as the original's ``optimizer='adam'``."""
    return Keras2Adam(model.parameters(), lr=learning_rate)


class TrainingStep:
    """One step of the recipe: forward, Keras binary cross-entropy on the clip output, backward,
    optimizer step. ``step(x, y, weight)`` returns ``weight`` times the loss (a 0-d tensor, not synchronised).

    ``precision`` "bf16" or "fp16" runs the forward under autocast (the loss in float32); fp16
    scales the loss with ``grad_scaler`` (:func:`experiments.precision.grad_scaler`). ``weight``
    is a data-parallel process's share of the global batch (:func:`experiments.distributed.shard`).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str = "fp32",
                 grad_scaler: torch.amp.GradScaler | None = None):
        self.model = model
        self.optimizer = optimizer
        self.precision = precision
        self.grad_scaler = grad_scaler

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        dtype = amp.parameter_dtype(self.precision)
        with amp.autocast(self.precision, x.device.type):
            probs = self.model(x.to(dtype))["clipwise"]
        loss = keras_bce(probs.to(dtype), y.to(dtype))
        if weight != 1.0:
            loss = loss * weight
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
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
    device: torch.device
    progress: bool
    preprocessing: Preprocessing
    precision: str = "fp32"
    sync_batchnorm: bool = True
    workers: int = 0
    place: distributed.Processes = distributed.Processes()


@dataclass
class _State:
    """The objects a run trains with: the model (and its data-parallel wrapper), optimizer, sampler, history."""

    model: DeviNet
    step: TrainingStep
    sampler: BalancedBatchSampler
    history: list[dict[str, Any]]


def _build(job: _Job) -> tuple[_State, int]:
    """Model, optimizer, step and sampler, restored from the run's last checkpoint: (state, its epoch)."""
    torch.manual_seed(job.seed)
    model = DeviNet(job.model_config).to(job.device, dtype=amp.parameter_dtype(job.precision))
    model.preprocessing = job.preprocessing
    optimizer = make_optimizer(model, job.schedule.learning_rate)
    scaler = amp.grad_scaler(job.precision, job.device.type)
    sampler = BalancedBatchSampler(job.labels, batch_size=job.schedule.batch_size, seed=job.seed)
    done = job.folder.completed_epochs() if job.place.is_main else []
    start = distributed.broadcast_int(done[-1] if done else 0)
    history: list[dict[str, Any]] = []
    if start:
        payload = job.folder.read_checkpoint(start, job.identity)
        ckpt.load_state_dict_strict(model, payload["state_dict"], source=str(job.folder.checkpoint(start)))
        state = payload["training"]
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        history = list(state["history"])
    wrapped = distributed.data_parallel(model, job.device, job.sync_batchnorm)
    return _State(model, TrainingStep(wrapped, optimizer, job.precision, scaler), sampler, history), start


def _train_loop(job: _Job) -> TrainResult:
    from tqdm.auto import tqdm

    schedule = job.schedule
    state, start = _build(job)
    if job.place.is_main:
        # The log may hold a record newer than the last checkpoint (killed in between): the
        # checkpoint's history is the truth.
        job.folder.write_history(state.history)
    target = schedule.epochs if job.stop_after is None else min(schedule.epochs, max(job.stop_after, start))
    batches = EpochBatches()
    loader = batch_loader(ClipBatches(job.features, job.labels, job.scaler), batches, job.workers,
                          pin_memory=job.device.type == "cuda")
    bar = tqdm(total=schedule.epochs * schedule.iterations_per_epoch, initial=start * schedule.iterations_per_epoch,
               unit="it", desc=job.identity["name"], disable=not job.progress, dynamic_ncols=True)
    try:
        for epoch in range(start + 1, target + 1):
            record = _train_epoch(job, state, epoch, batches, loader, bar)
            if job.place.is_main:
                state.history.append(record | _monitor(job, state.model, epoch))
                _save(job, state, epoch)
            else:
                state.history.append(record)
    finally:
        bar.close()
    return TrainResult(job.folder.path, schedule.epochs, len(state.history), state.history, start,
                       job.place.world_size)


def _train_epoch(job: _Job, state: _State, epoch: int, batches: EpochBatches, loader, bar) -> dict[str, Any]:
    """One epoch of this process's slices of the global batches; the metrics record (losses of the global batches)."""
    schedule, place = job.schedule, job.place
    state.model.train()
    began = time.perf_counter()
    shards = [distributed.shard(next(state.sampler), place) for _ in range(schedule.iterations_per_epoch)]
    batches.batches = [part for part, _ in shards]
    losses = torch.zeros(len(shards), dtype=torch.float64, device=job.device)
    for i, ((x, y), (_, weight)) in enumerate(zip(loader, shards)):
        loss = state.step(x.to(job.device, non_blocking=True), y.to(job.device, non_blocking=True), weight)
        losses[i] = loss
        bar.update(1)
        if job.progress:
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", refresh=False)
    # the global batch's loss is the mean over processes of their weighted losses
    losses = (distributed.sum_over_processes(losses) / place.world_size).tolist()
    return {"epoch": epoch, "iteration": epoch * schedule.iterations_per_epoch,
            "loss": float(np.mean(losses)), "loss_last": losses[-1],
            "train_seconds": time.perf_counter() - began, "world_size": place.world_size}


def _save(job: _Job, state: _State, epoch: int) -> None:
    """The main process's end of an epoch: checkpoint, metrics log, pruning."""
    scaler = state.step.grad_scaler
    job.folder.save_checkpoint(state.model, epoch, job.identity, {
        "optimizer": state.step.optimizer.state_dict(),
        "sampler": state.sampler.get_state(),
        "torch_rng": torch.get_rng_state(),
        "grad_scaler": None if scaler is None else scaler.state_dict(),
        "history": state.history,
    })
    job.folder.write_history(state.history)
    if job.keep_checkpoints == "fused":
        job.folder.prune(epoch, set(job.schedule.fused_epochs))


def _monitor(job: _Job, model: DeviNet, epoch: int) -> dict[str, Any]:
    """Predict the monitored set after ``epoch``: its AT micro F1 for the log; its predictions are
    kept when the epoch is fused."""
    monitor = job.monitor
    if monitor is None:
        return {}
    began = time.perf_counter()
    # with the model's parameters (float32 but for fp64 runs), without autocast
    clip, frame = predict(model, monitor.features, job.scaler, job.eval_batch_size, job.device)
    record = {f"{monitor.name}_at_f1": at_micro_f1(clip, monitor.labels),
              f"{monitor.name}_seconds": time.perf_counter() - began}
    if epoch in job.schedule.fused_epochs:
        job.folder.save_predictions(monitor.name, epoch, clip, frame, eval_fingerprint(monitor))
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
    fingerprint = eval_fingerprint(eval_set)
    clips, frames = [], []
    for epoch in schedule.fused_epochs:
        arrays = folder.read_predictions(eval_set.name, epoch, fingerprint)
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

"""``devinet train``: train any preset or DeviNetConfig on any packed dataset and class list.

A job is packed features (``devinet features``), a weak-label file mapped onto them by clip
name, a class list, and a :class:`TrainConfig` (the model and every knob of training; the
original recipe by default). It trains through :func:`experiments.train.train`, as ``devinet
reproduce`` does, on one process, on ``--nproc N`` local processes (torch's elastic launcher)
or on the processes ``torchrun`` starts on any number of machines.

A config file (YAML) holds the model and every training knob; unknown keys are errors::

    preset: cvssp_crnn_sed        # required: the model's starting point (devinet.config.PRESETS)
    model: {dropout: 0.1}         # DeviNetConfig fields changed (num_classes follows the class list)
    training:                     # experiments.train.TrainSchedule (defaults: the original recipe)
      epochs: 30
      iterations_per_epoch: 100
      batch_size: 44              # the global batch, whatever the number of processes
      learning_rate: 0.001
      fused_checkpoints: 10
      checkpoint_every: 1         # epochs between the checkpoints fusion chooses from
    seed: 0
    precision: fp32               # fp32 | bf16 | fp16 | fp64
    sync_batchnorm: true          # data-parallel: BatchNorm over the global batch (false: per process)
    keep_checkpoints: fused       # fused | all
    eval_batch_size: 32
    deterministic: true
    workers: null                 # DataLoader workers reading batches (null: 0 on CPU, 4 on CUDA)
    torch_threads: null           # per process (null: the usable cores / processes on this machine)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from devinet._io import read_yaml
from devinet.config import DeviNetConfig, preset_config
from devinet.errors import ConfigError, FileFormatError
from experiments import distributed
from experiments.precision import PRECISIONS
from experiments.schedules import TrainSchedule
from experiments.train import KEEP_POLICIES

#: DataLoader workers when the config leaves them to us: reading overlaps GPU steps; on the CPU
#: the reads are short beside a step and extra processes would take cores from it
DEFAULT_WORKERS = {"cpu": 0, "cuda": 4}
VALID_SET = "valid"


@dataclass(frozen=True)
class TrainConfig:
    """The model and every knob of a training run (see the module docstring for the file form)."""

    preset: str
    model: Mapping[str, Any] = field(default_factory=dict)
    training: TrainSchedule = TrainSchedule()
    seed: int = 0
    precision: str = "fp32"
    sync_batchnorm: bool = True
    keep_checkpoints: str = "fused"
    eval_batch_size: int = 32
    deterministic: bool = True
    workers: int | None = None
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        _positive_int("seed", self.seed, allow_zero=True)
        _positive_int("eval_batch_size", self.eval_batch_size)
        for key in ("workers", "torch_threads"):
            if getattr(self, key) is not None:
                _positive_int(key, getattr(self, key), allow_zero=key == "workers")
        for key in ("sync_batchnorm", "deterministic"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.keep_checkpoints not in KEEP_POLICIES:
            raise ConfigError(f"keep_checkpoints must be one of {', '.join(KEEP_POLICIES)}, "
                              f"got {self.keep_checkpoints!r}")
        if not isinstance(self.model, Mapping):
            raise ConfigError(f"model must be a mapping of DeviNetConfig fields, got {self.model!r}")
        self.model_config(None)  # the preset and every model key must be valid

    def model_config(self, num_classes: int | None) -> DeviNetConfig:
        """The preset with the ``model`` changes, its outputs set to ``num_classes`` (None: as configured)."""
        changes = dict(self.model)
        if num_classes is not None:
            given = changes.get("num_classes", num_classes)
            if given != num_classes:
                raise ConfigError(f"model.num_classes is {given} but the class list has {num_classes} classes")
            changes["num_classes"] = num_classes
        base = preset_config(self.preset)
        return base.replace(**changes) if changes else base

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"model": dict(self.model)}


def _positive_int(key: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(f"{key} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def train_config_from_dict(data: Mapping[str, Any], where: str = "train config") -> TrainConfig:
    """Validate a train config's plain data (unknown or missing keys are errors, as for size configs)."""
    from experiments.systems import check_keys

    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    check_keys(data, TrainConfig, where)
    training = data.get("training", {})
    if not isinstance(training, Mapping):
        raise ConfigError(f"{where}: training must be a mapping")
    check_keys(training, TrainSchedule, f"{where}: training")
    try:
        return TrainConfig(**{**data, "training": TrainSchedule(**training)})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """A train config from a YAML file (``yaml.safe_load``: a file never runs code)."""
    data = read_yaml(path, "no such train config")
    return train_config_from_dict(data, where=str(Path(path)))


# ---------------------------------------------------------------------- the job
@dataclass(frozen=True)
class TrainJob:
    """What ``devinet train`` was asked (see experiments/commands/train.py for the flags)."""

    train: Path
    labels: Path
    out: Path
    config: TrainConfig
    classes: Path | None = None
    valid: Path | None = None
    valid_labels: Path | None = None
    scaler: Path | None = None
    device: str = "cpu"
    nproc: int = 1
    force: bool = False
    progress: bool = True
    command: str = ""

    @classmethod
    def from_args(cls, args, command: str = "") -> "TrainJob":
        """Check the arguments (before any process starts: each error is one line)."""
        if (args.preset is None) == (args.config is None):
            raise ConfigError("give one of --preset NAME or --config FILE")
        if (args.valid is None) != (args.valid_labels is None):
            raise ConfigError("--valid and --valid-labels go together")
        config = load_train_config(args.config) if args.config else train_config_from_dict({"preset": args.preset})
        overrides = {key: value for key, value in (("seed", args.seed), ("precision", args.precision),
                                                   ("workers", args.workers), ("torch_threads", args.threads))
                     if value is not None}
        if args.per_process_batchnorm:
            overrides["sync_batchnorm"] = False
        config = dataclasses.replace(config, **overrides) if overrides else config
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
        if args.nproc > 1 and distributed.launched():
            raise ConfigError("--nproc starts training processes: under torchrun give the process count to torchrun")
        device = distributed.training_device(args.device, distributed.processes())  # a device that exists here
        if device.type == "cuda" and args.nproc > _cuda_devices():
            raise ConfigError(f"--nproc {args.nproc} with --device cuda needs a GPU per process; this machine has "
                              f"{_cuda_devices()}")
        path = lambda p: None if p is None else Path(p)  # noqa: E731
        for given in (args.train, args.labels, args.classes, args.valid, args.valid_labels, args.scaler):
            if given is not None and not Path(given).is_file():
                raise FileFormatError(given, "no such file")
        return cls(Path(args.train), Path(args.labels), Path(args.out), config, path(args.classes), path(args.valid),
                   path(args.valid_labels), path(args.scaler), args.device, args.nproc, args.force, args.progress,
                   command)


def _say(message: str) -> None:
    if distributed.processes().is_main:
        print(message, flush=True)


def _open_split(features_path: Path, labels_path: Path, classes, files: list):
    """Packed features of the labelled clips (lazy) and their labels: (ClipFeatures, WeakLabels, recipe).
    The open file is appended to ``files`` (for the caller to close)."""
    import json

    from experiments.packing import open_packed
    from experiments.trainingdata import ClipFeatures, read_weak_labels

    h5 = open_packed(features_path)
    files.append(h5)
    names = h5["names"].asstr()[()]
    weak = read_weak_labels(names, labels_path, classes)
    features = ClipFeatures(h5["features"], None if weak.unlabelled == 0 else weak.rows)
    return features, weak, json.loads(h5.attrs["recipe"])


def _scaler(job: TrainJob, features):
    """The given scaler, or one fitted on the training clips (streamed: 512 clips at a time)."""
    from devinet.scaler import Scaler

    if job.scaler is not None:
        return Scaler.load(job.scaler)
    chunks = (features.read(np.arange(start, min(start + 512, len(features))))
              for start in range(0, len(features), 512))
    return Scaler.fit(chunks)


def _feature_recipe(packed: dict):
    """The checkpoints' feature recipe: the original's, with the resampler the packed file was made with."""
    from devinet.features import canonical_resampler
    from devinet.preprocessing import FeatureRecipe

    return FeatureRecipe(resampler=canonical_resampler(packed.get("resampler", FeatureRecipe().resampler)))


def run_job(job: TrainJob) -> dict[str, Any]:
    """Train (or resume) the job in this process (one of several under a launcher); its summary."""
    files: list = []
    try:
        return _run_job(job, files)
    finally:
        for handle in files:
            handle.close()


def _run_job(job: TrainJob, files: list) -> dict[str, Any]:
    from experiments.trainingdata import read_class_list
    from experiments.train import EvalSet, train

    place = distributed.join(job.device)
    config = job.config
    threads = config.torch_threads or max(1, _usable_cores() // place.local_world_size)
    _set_threads(threads)
    classes = read_class_list(job.classes) if job.classes is not None else None
    features, weak, recipe = _open_split(job.train, job.labels, classes, files)
    _say(f"[train] {len(features)} labelled clips of {job.train} ({weak.unlabelled} packed clips without labels, "
         f"{weak.missing} labelled clips not packed), {len(weak.classes)} classes; {place.world_size} process(es), "
         f"{threads} thread(s) each, precision {config.precision}")
    monitor = None
    if job.valid is not None:
        valid_features, valid_weak, _ = _open_split(job.valid, job.valid_labels, weak.classes, files)
        monitor = EvalSet(VALID_SET, valid_features, valid_weak.labels)
    model = config.model_config(len(weak.classes))
    scaler = _scaler(job, features)
    workers = config.workers if config.workers is not None else DEFAULT_WORKERS.get(job.device.split(":")[0], 0)
    result = train(model, features, weak.labels, scaler, job.out, config.training, seed=config.seed,
                   deterministic=config.deterministic, monitor=monitor, eval_batch_size=config.eval_batch_size,
                   keep_checkpoints=config.keep_checkpoints, force=job.force, device=job.device,
                   name=model.name, progress=job.progress, classes=weak.classes, precision=config.precision,
                   sync_batchnorm=config.sync_batchnorm, workers=workers, feature_recipe=_feature_recipe(recipe))
    summary = {"run_dir": str(result.run_dir), "epochs_done": result.epochs_done, "resumed_from": result.resumed_from,
               "world_size": result.world_size, "final_loss": result.history[-1]["loss"] if result.history else None}
    if place.is_main and monitor is not None and result.finished:
        summary["valid_fused_at_f1"] = _fused_valid(job, result, monitor, scaler)
    return summary


def _fused_valid(job: TrainJob, result, monitor, scaler) -> float:
    """AT micro F1 of the fused checkpoints on the validation set (written to OUT/fused_valid.json)."""
    from devinet._io import atomic_write_json
    from experiments.evaluation.tagging import at_micro_f1
    from experiments.train import fused_predictions

    config = job.config
    clip, _ = fused_predictions(result.run_dir, monitor, scaler, config.eval_batch_size,
                                distributed.training_device(job.device, distributed.processes()))
    f1 = at_micro_f1(clip, monitor.labels)
    atomic_write_json(job.out / "fused_valid.json", {"valid_at_micro_f1": f1, "fused_epochs":
                                                     list(config.training.fused_epochs), "valid": str(job.valid)})
    return f1


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _usable_cores() -> int:
    from experiments.workers import usable_cores

    return usable_cores()


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run(job: TrainJob) -> dict[str, Any]:
    """The job on ``job.nproc`` local processes (1: this one), or as one of torchrun's processes."""
    if job.nproc > 1:
        threads = job.config.torch_threads or max(1, _usable_cores() // job.nproc)
        return distributed.launch(job.nproc, "train", run_job, job, threads=threads)
    if distributed.launched():
        return distributed.run_training_process("train", run_job, job)
    return run_job(job)


__all__ = ["TrainConfig", "train_config_from_dict", "load_train_config", "TrainJob", "run_job", "run"]

"""The stages of ``devinet reproduce``: data, features, training, evaluation and report.

Each stage is a function of the :class:`Options` and what the previous stages returned, and
each resumes: the synthetic generator and the feature packer continue unfinished work and
reuse finished files, :func:`experiments.train.train` continues after the last checkpoint,
and evaluation and report are recomputed from the saved predictions (cheap). Work files::

    WORK/data/synthetic-<size>-seed<seed>/      the generated stand-in (audio/, meta/, dataset.json)
    WORK/features/<dataset>/{train,test}.h5     packed log-mel, and scaler.npz (fitted on train)
    WORK/runs/<dataset>/<size>-seed<seed>/<system>/           training runs (experiments.train)
    WORK/predictions/<dataset>/<size>-seed<seed>/<system>/    fused probabilities, official formats

Seeds: ``--seeds N`` trains every system with the training seeds S, S+1, ..., S+N-1 (S =
``--seed``), one after the other, each resumable; the data are the same for every seed (the
synthetic stand-in is generated once, with seed S), so that the seeds measure the spread
that training alone (initial weights, batch order) puts on the scores, and each claim is
compared on the same clips seed by seed. The report (:mod:`experiments.summary`) gives each
metric as mean and standard deviation over the seeds with every seed's value, and each of
the paper's orderings with its paired difference per seed and its verdict (:mod:`experiments.claims`).

Real data (``--data-root``): the training and testing splits are required; when the folder
also holds the evaluation split's audio (:data:`AUDIO_CANDIDATES` ``"evaluation"``, or
``--eval-audio``), it is packed, predicted by every system and scored against the official
evaluation ground truth (:data:`EVALUATION_META_FILES`), beside the challenge's evaluation-set
figures; the testing split stays where the claims are checked. Prediction and scoring:
:mod:`experiments.scoring`.

Results (small files only)::

    OUT/results.json, OUT/results.md, OUT/figures/*.png (+ clip_example.json, its data),
    OUT/evaluation/seed<seed>/<system>.json (full scores, testing split),
    OUT/evaluation/seed<seed>/evaluation_set/<system>.json (full scores, evaluation split, when scored),
    OUT/runs/seed<seed>/<system>/{run.json,metrics.jsonl}
    OUT/models/seed<seed>/<system>.json  the checkpoints each system averages (``devinet tag --model``)
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devinet.errors import ConfigError, FileFormatError, InputError
from devinet.features import FRAMES, N_MELS, Scaler
from experiments.datasets import AUDIO_CANDIDATES, EVALUATION_META_FILES, META_FILES, Dataset, prepare_data
from experiments.distributed import say
from experiments.meta import CLASSES, clip_key
from experiments.scoring import (EVALUATION_SET, TEST_SET, Predictions, ScoredSplit, evaluate_systems,
                                 predict_systems, truth)
from experiments.systems import SYSTEMS, SizeConfig, load_size_config, resolve_systems
from experiments.train import EvalSet, TrainResult, train

# ---------------------------------------------------------------------- options
@dataclass
class Options:
    """Everything ``devinet reproduce`` was asked to do (see ``experiments/commands/reproduce.py`` for the flags)."""

    size: SizeConfig
    out: Path
    work_dir: Path
    data_root: Path | None = None
    meta_dir: Path | None = None
    train_audio: Path | None = None
    test_audio: Path | None = None
    eval_audio: Path | None = None
    systems: tuple[str, ...] = tuple(SYSTEMS)
    seed: int = 2017
    seeds: int = 1
    jobs: int = 1
    device: str = "cpu"
    threads: int | None = None
    deterministic: bool = True
    force: bool = False
    progress: bool = True
    command: str = ""
    nproc: int = 1
    precision: str = "fp32"

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str = "") -> "Options":
        from experiments.workers import usable_cores

        chosen = [name for name, given in (("--quick", args.quick), ("--size", args.size), ("--config", args.config))
                  if given]
        if len(chosen) > 1 and not (set(chosen) == {"--quick", "--size"} and args.size == "quick"):
            raise ConfigError(f"choose one of {', '.join(chosen)}")
        size = load_size_config(args.config or args.size or ("quick" if args.quick else "full"))
        if args.data_root is None and (args.meta_dir or args.train_audio or args.test_audio or args.eval_audio):
            raise ConfigError("--meta-dir, --train-audio, --test-audio and --eval-audio describe real data: "
                              "give --data-root too")
        if args.jobs is not None and args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        if args.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {args.seed}")
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
        out = Path(args.out)
        path = lambda p: Path(p) if p is not None else None  # noqa: E731
        return cls(size=size, out=out, work_dir=Path(args.work_dir) if args.work_dir else out / "work",
                   data_root=path(args.data_root), meta_dir=path(args.meta_dir), train_audio=path(args.train_audio),
                   test_audio=path(args.test_audio), eval_audio=path(args.eval_audio),
                   systems=resolve_systems(args.systems), seed=args.seed,
                   seeds=args.seeds, jobs=args.jobs or usable_cores(), device=args.device, threads=args.threads,
                   deterministic=args.deterministic,
                   force=args.force, progress=args.progress, command=command, nproc=args.nproc,
                   precision=args.precision)

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The training seeds: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def experiment(self, seed: int) -> str:
        """The folder name of one training seed's runs and predictions under a dataset: size, seed and
        a precision other than fp32."""
        return f"{self.size.name}-seed{seed}" + ("" if self.precision == "fp32" else f"-{self.precision}")


# ---------------------------------------------------------------------- stage 2: features
@dataclass
class Split:
    """A packed split: unscaled features (N, 240, 64) (an h5py dataset, read lazily), labels (N, 17),
    clip keys, skipped clips by kind, and the packed file."""

    features: Any
    labels: np.ndarray
    names: list[str]
    skipped: dict[str, int]
    path: Path


@dataclass
class Features:
    """The packed splits (``evaluation``: None without an evaluation split), the scaler fitted on training."""

    train: Split
    test: Split
    scaler: Scaler
    folder: Path
    evaluation: Split | None = None
    _files: list = field(default_factory=list)

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()


def _pack(options: Options, wav_dir: Path, out: Path, meta: Path) -> None:
    from experiments.packing import index_wav_folder, pack_split, read_skipped

    if out.is_file():
        missing = {s.key for s in read_skipped(out) if s.kind == "missing"}
        if not missing & set(index_wav_folder(wav_dir)):
            return
        say(f"[features] {out.name}: clips missing when it was packed are there now: packing again")
    pack_split(wav_dir, out, meta, jobs=options.jobs, force=out.is_file(), progress=options.progress)


def _open_split(path: Path, handles: list) -> Split:
    import h5py

    from experiments.packing import SKIP_KINDS, read_skipped

    h5 = h5py.File(path, "r")
    dataset = h5["features"]
    if dataset.shape[1:] != (FRAMES, N_MELS):
        h5.close()
        raise FileFormatError(path, f"features of shape {dataset.shape}, expected (N, {FRAMES}, {N_MELS})")
    handles.append(h5)  # the features stay in the file (training reads them batch by batch)
    labels = h5["labels"][()]
    names = [clip_key(n) for n in h5["names"].asstr()[()]]
    skipped = {kind: 0 for kind in SKIP_KINDS}
    for item in read_skipped(path):
        skipped[item.kind] += 1
    return Split(dataset, labels.astype(np.float32), names, skipped, path)


def prepare_features(options: Options, dataset: Dataset) -> Features:
    """Pack every split (testing and evaluation against their weak ground truth) and fit the scaler on training."""
    from experiments.packing import fit_scaler

    folder = options.work_dir / "features" / dataset.tag
    folder.mkdir(parents=True, exist_ok=True)
    say(f"[features] log-mel of {dataset.train_audio} and {dataset.test_audio} into {folder}")
    _pack(options, dataset.train_audio, folder / "train.h5", dataset.meta["train_list"])
    _pack(options, dataset.test_audio, folder / "test.h5", dataset.meta["weak_truth"])
    if dataset.eval_audio is not None:
        say(f"[features] log-mel of the evaluation split {dataset.eval_audio}")
        _pack(options, dataset.eval_audio, folder / "evaluation.h5", dataset.meta["eval_weak_truth"])
    scaler_path = folder / "scaler.npz"
    train_h5 = folder / "train.h5"
    if not scaler_path.is_file() or scaler_path.stat().st_mtime < train_h5.stat().st_mtime:
        fit_scaler(train_h5).save(scaler_path)
    features = open_features(folder, evaluation=dataset.eval_audio is not None)
    for split, data, wav_dir in (("training", features.train, dataset.train_audio),
                                 ("testing", features.test, dataset.test_audio),
                                 ("evaluation", features.evaluation, dataset.eval_audio)):
        lost = sum(data.skipped.values()) if data is not None else 0
        if lost:
            say(f"[features] {split}: {lost} clips without usable audio are left out ({data.skipped})")
            _report_missing(split, data.path, wav_dir, len(data.names) + lost)
    return features


def open_features(folder: Path, evaluation: bool = False) -> Features:
    """The packed splits (train.h5, test.h5 and, with ``evaluation``, evaluation.h5; features read
    lazily) and the scaler (scaler.npz) of a features folder."""
    handles: list = []
    try:
        train_split = _open_split(folder / "train.h5", handles)
        test_split = _open_split(folder / "test.h5", handles)
        eval_split = _open_split(folder / "evaluation.h5", handles) if evaluation else None
    except BaseException:
        for h in handles:
            h.close()
        raise
    return Features(train_split, test_split, Scaler.load(folder / "scaler.npz"), folder, eval_split, handles)


def scored_splits(dataset: Dataset, features: Features) -> list[ScoredSplit]:
    """The splits scored with the official ground truth: testing, then evaluation when there is one."""
    splits = [ScoredSplit(TEST_SET, features.test, dataset.meta["weak_truth"], dataset.meta["strong_truth"])]
    if features.evaluation is not None:
        splits.append(ScoredSplit(EVALUATION_SET, features.evaluation, dataset.meta["eval_weak_truth"],
                                  dataset.meta["eval_strong_truth"]))
    return splits


def _report_missing(split: str, packed: Path, wav_dir: Path, listed: int) -> None:
    """Name an expected and a found file name when clips are missing, and warn, before any training,
    when more than half of a split is (a naming mismatch rather than lost videos, most likely)."""
    from experiments.packing import missing_summary, read_skipped

    skipped = read_skipped(packed)
    summary = missing_summary(wav_dir, skipped, listed)
    if summary is None:
        return
    missing = sum(item.kind == "missing" for item in skipped)
    warning = "warning: more than half of the clips are missing: " if 2 * missing > listed else ""
    say(f"[features] {split}: {warning}{summary} (in {wav_dir})")


# ---------------------------------------------------------------------- stage 3: training
def run_dir(options: Options, dataset: Dataset, system: str, seed: int) -> Path:
    return options.work_dir / "runs" / dataset.tag / options.experiment(seed) / system


def train_systems(options: Options, dataset: Dataset, features: Features, seed: int) -> dict[str, TrainResult]:
    """Train (or resume) every trained system of the options with training seed ``seed``, one after the
    other (on ``options.nproc`` data-parallel processes started by torch's elastic launcher when it is above 1)."""
    if options.nproc > 1:
        from experiments.distributed import launch
        from experiments.workers import usable_cores

        threads = options.threads or options.size.torch_threads or max(1, usable_cores() // options.nproc)
        return launch(options.nproc, "reproduce", _train_systems_in_process, options, dataset, features.folder,
                      seed, threads=threads)
    return _train_systems(options, dataset, features, seed)


def _train_systems_in_process(options: Options, dataset: Dataset, folder: Path, seed: int) -> dict[str, TrainResult]:
    """One data-parallel training process of :func:`train_systems` (it opens the packed files itself)."""
    features = open_features(folder)
    try:
        return _train_systems(options, dataset, features, seed)
    finally:
        features.close()


def _train_systems(options: Options, dataset: Dataset, features: Features, seed: int) -> dict[str, TrainResult]:
    monitor = EvalSet(TEST_SET, features.test.features, features.test.labels)
    results = {}
    for system in options.systems:
        if not SYSTEMS[system].trained:
            continue
        say(f"[train] seed {seed}, {system}: {SYSTEMS[system].title} ({options.size.model(system).name}, "
             f"schedule {options.size.schedule_name(system)})")
        results[system] = train(
            options.size.model(system), features.train.features, features.train.labels,
            features.scaler, run_dir(options, dataset, system, seed), options.size.schedule(system), seed=seed,
            deterministic=options.deterministic, monitor=monitor, eval_batch_size=options.size.eval_batch_size,
            precision=options.precision,
            force=options.force, device=options.device, name=system, progress=options.progress,
            classes=CLASSES)
    return results


def write_model_lists(options: Options, dataset: Dataset, seed: int) -> None:
    """OUT/models/seed<seed>/<system>.json: the checkpoints each system of training seed ``seed``
    averages (a trained system's fused epochs, a fusion's members'), so that ``devinet tag
    --model`` can run the system."""
    from devinet.model_list import write_model_list
    from experiments.train import RunFolder

    def checkpoints(system: str) -> list[Path]:
        if not SYSTEMS[system].trained:
            return [path for member in SYSTEMS[system].members for path in checkpoints(member)]
        folder = RunFolder(run_dir(options, dataset, system, seed))
        return [folder.checkpoint(epoch) for epoch in options.size.schedule(system).fused_epochs]

    folder = options.out / "models" / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for system in options.systems:
        write_model_list(folder / f"{system}.json", checkpoints(system), system, SYSTEMS[system].title)


# ---------------------------------------------------------------------- all stages
@dataclass(frozen=True)
class Start:
    """When a run started and the source revision it ran, taken before it writes anything (the
    results folder may be tracked by git, as the committed example is: written results must not
    make the revision look modified, and a modified source must show as ``+dirty``)."""

    time: str
    git: str | None


def reproduce(options: Options) -> dict:
    """Run every stage (each resuming what an earlier call left) and return the contents of results.json."""
    from experiments.provenance import git_revision, now

    start = Start(now(), git_revision())
    options.out.mkdir(parents=True, exist_ok=True)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    if options.force:
        for name in ("results.json", "results.md"):
            (options.out / name).unlink(missing_ok=True)
        shutil.rmtree(options.work_dir / "predictions", ignore_errors=True)
    wanted = options.threads or options.size.torch_threads
    if wanted is None:
        return _run_stages(options, start)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        return _run_stages(options, start)
    finally:
        torch.set_num_threads(threads)


@dataclass
class SeedOutcome:
    """What one training seed gave: the training runs, the scores of every system on the testing
    split and, when scored, on the evaluation split, and for the first seed only the testing
    predictions (the example figure shows that seed's)."""

    seed: int
    runs: dict[str, TrainResult]
    scores: dict[str, dict]
    predictions: dict[str, Predictions] | None
    evaluation_scores: dict[str, dict] | None = None


def _run_stages(options: Options, start: Start) -> dict:
    from experiments.summary import write_report

    timing: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        began = time.perf_counter()
        value = fn(*args)
        timing[stage] = round(timing.get(stage, 0.0) + time.perf_counter() - began, 1)
        return value

    dataset = timed("data", prepare_data, options)
    features = timed("features", prepare_features, options, dataset)
    try:
        if not features.test.names:
            raise InputError("no testing clip has audio: nothing to evaluate")
        outcomes = []
        for seed in options.training_seeds:
            runs = timed("training", train_systems, options, dataset, features, seed)
            write_model_lists(options, dataset, seed)
            scored = {}
            for split in scored_splits(dataset, features):
                predictions = timed("prediction", predict_systems, options, dataset, features, seed, split)
                scored[split.name] = (predictions, timed("evaluation", evaluate_systems, split, predictions))
            test_predictions, test_scores = scored[TEST_SET]
            outcomes.append(SeedOutcome(seed, runs, test_scores, test_predictions if not outcomes else None,
                                        scored[EVALUATION_SET][1] if EVALUATION_SET in scored else None))
        timing["total_before_report"] = round(sum(timing.values()), 1)
        results = write_report(options, dataset, features, outcomes, timing, start)
    finally:
        features.close()
    return results


__all__ = ["Options", "Dataset", "Features", "Split", "Predictions", "SeedOutcome", "Start", "prepare_data",
           "prepare_features", "scored_splits", "train_systems", "predict_systems", "evaluate_systems", "truth",
           "reproduce", "run_dir", "META_FILES", "EVALUATION_META_FILES", "AUDIO_CANDIDATES", "TEST_SET",
           "EVALUATION_SET"]

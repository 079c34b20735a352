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

Results (small files only)::

    OUT/results.json, OUT/results.md, OUT/figures/*.png (+ clip_example.json, its data),
    OUT/evaluation/seed<seed>/<system>.json (full official scores),
    OUT/runs/seed<seed>/<system>/{run.json,metrics.jsonl}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devinet.errors import ConfigError, FileFormatError, InputError
from devinet.features import FRAMES, N_MELS, Scaler
from experiments import evaluation
from experiments.meta import CLASSES, clip_key
from experiments.systems import SYSTEMS, SizeConfig, frames_at_input_rate, load_size_config, resolve_systems
from experiments.train import EvalSet, TrainResult, fused_predictions, train

#: the official metadata files an experiment reads from the meta folder
META_FILES = {
    "train_list": "training_set.csv",
    "test_list": "testing_set.csv",
    "weak_truth": "groundtruth_weak_label_testing_set.csv",
    "strong_truth": "groundtruth_strong_label_testing_set.csv",
}
#: audio sub-folders tried under --data-root (ours, CVSSP's, the official download's)
AUDIO_CANDIDATES = {
    "train": ("audio/train", "audio/training", "training", "train",
              "unbalanced_train_segments_training_set_audio_formatted_and_segmented_downloads"),
    "test": ("audio/test", "audio/testing", "testing", "test",
             "unbalanced_train_segments_testing_set_audio_formatted_and_segmented_downloads"),
}
#: name of the testing split, monitored during training and evaluated
TEST_SET = "test"
#: packed training features above this size are read from the HDF5 file batch by batch
IN_MEMORY_LIMIT_BYTES = 2 * 1024 ** 3


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

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str = "") -> "Options":
        from experiments.workers import usable_cores

        chosen = [name for name, given in (("--quick", args.quick), ("--size", args.size), ("--config", args.config))
                  if given]
        if len(chosen) > 1 and not (set(chosen) == {"--quick", "--size"} and args.size == "quick"):
            raise ConfigError(f"choose one of {', '.join(chosen)}")
        size = load_size_config(args.config or args.size or ("quick" if args.quick else "full"))
        if args.data_root is None and (args.meta_dir or args.train_audio or args.test_audio):
            raise ConfigError("--meta-dir, --train-audio and --test-audio describe real data: give --data-root too")
        if args.jobs is not None and args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        if args.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {args.seed}")
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        out = Path(args.out)
        path = lambda p: Path(p) if p is not None else None  # noqa: E731
        return cls(size=size, out=out, work_dir=Path(args.work_dir) if args.work_dir else out / "work",
                   data_root=path(args.data_root), meta_dir=path(args.meta_dir), train_audio=path(args.train_audio),
                   test_audio=path(args.test_audio), systems=resolve_systems(args.systems), seed=args.seed,
                   seeds=args.seeds, jobs=args.jobs or usable_cores(), device=args.device, threads=args.threads,
                   deterministic=args.deterministic,
                   force=args.force, progress=args.progress, command=command)

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The training seeds: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def experiment(self, seed: int) -> str:
        """The folder name of one training seed's runs and predictions under a dataset: size and seed."""
        return f"{self.size.name}-seed{seed}"


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------- stage 1: data
@dataclass
class Dataset:
    """Where a dataset's audio and official metadata are.

    Attributes:
        kind: "synthetic" (the built-in stand-in) or "dcase2017_task4" (real data).
        tag: folder name of its features and runs in the work folder.
        train_audio, test_audio: folders of wav clips.
        meta: key of :data:`META_FILES` -> path.
        info: what results.json says about it.
    """

    kind: str
    tag: str
    train_audio: Path
    test_audio: Path
    meta: dict[str, Path]
    info: dict[str, Any] = field(default_factory=dict)


def _meta_files(meta_dir: Path) -> dict[str, Path]:
    if not meta_dir.is_dir():
        raise FileFormatError(meta_dir, "no such metadata folder (give --meta-dir)")
    files = {key: meta_dir / name for key, name in META_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileFormatError(missing[0], f"missing official metadata file ({len(missing)} missing: "
                                          f"{', '.join(Path(m).name for m in missing)})")
    return files


def _audio_dir(root: Path, split: str, given: Path | None) -> Path:
    if given is not None:
        if not given.is_dir():
            raise FileFormatError(given, f"no such folder of {split} wav clips")
        return given
    for candidate in AUDIO_CANDIDATES[split]:
        if (root / candidate).is_dir():
            return root / candidate
    raise FileFormatError(root, f"no {split} audio folder found (tried {', '.join(AUDIO_CANDIDATES[split])}); "
                                f"give --{split}-audio")


def prepare_data(options: Options) -> Dataset:
    """The synthetic stand-in (generated, resumably) or the real data the user brought (located and checked)."""
    if options.data_root is not None:
        root = options.data_root
        if not root.is_dir():
            raise FileFormatError(root, "no such data folder")
        meta = _meta_files(options.meta_dir or root / "meta")
        train_audio = _audio_dir(root, "train", options.train_audio)
        test_audio = _audio_dir(root, "test", options.test_audio)
        where = json.dumps([str(p.resolve()) for p in (train_audio, test_audio, *meta.values())])
        tag = "dcase2017-" + hashlib.sha256(where.encode()).hexdigest()[:8]
        info = {"kind": "dcase2017_task4", "description": "DCASE 2017 Task 4 audio brought by the user "
                "(testing set scored with the official ground truth)", "root": str(root.resolve()),
                "train_audio": str(train_audio.resolve()), "test_audio": str(test_audio.resolve()),
                "meta": {key: str(p.resolve()) for key, p in meta.items()}}
        _say(f"[data] real DCASE 2017 Task 4 data: {train_audio} and {test_audio}")
        return Dataset("dcase2017_task4", tag, train_audio, test_audio, meta, info)

    from experiments.synth import generate_dataset

    size = options.size.data_size
    folder = options.work_dir / "data" / f"synthetic-{size}-seed{options.seed}"
    _say(f"[data] synthetic stand-in ({size}, seed {options.seed}) in {folder}")
    info = generate_dataset(folder, size=size, seed=options.seed, jobs=options.jobs, progress=options.progress)
    meta = _meta_files(folder / "meta")
    summary = {"kind": "synthetic", "description": info["generator"], "generator_version": info["generator_version"],
               "size": info["size"], "seed": info["seed"],
               "clips": {split: info["splits"][split]["clips"] for split in ("train", "test")},
               "events": {split: info["splits"][split]["events"] for split in ("train", "test")}}
    return Dataset("synthetic", f"synthetic-{size}-seed{options.seed}", folder / "audio" / "train",
                   folder / "audio" / "test", meta, summary)


# ---------------------------------------------------------------------- stage 2: features
@dataclass
class Split:
    """A packed split: unscaled features (N, 240, 64) (array or h5py dataset), labels (N, 17), clip keys."""

    features: Any
    labels: np.ndarray
    names: list[str]
    skipped: dict[str, int]


@dataclass
class Features:
    train: Split
    test: Split
    scaler: Scaler
    folder: Path
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
        _say(f"[features] {out.name}: clips missing when it was packed are there now: packing again")
    pack_split(wav_dir, out, meta, jobs=options.jobs, force=out.is_file(), progress=options.progress)


def _open_split(path: Path, handles: list) -> Split:
    import h5py

    from experiments.packing import SKIP_KINDS, read_skipped

    h5 = h5py.File(path, "r")
    dataset = h5["features"]
    if dataset.shape[1:] != (FRAMES, N_MELS):
        h5.close()
        raise FileFormatError(path, f"features of shape {dataset.shape}, expected (N, {FRAMES}, {N_MELS})")
    in_memory = dataset.size * dataset.dtype.itemsize <= IN_MEMORY_LIMIT_BYTES
    features = dataset[()] if in_memory else dataset
    labels = h5["labels"][()]
    names = [clip_key(n) for n in h5["names"].asstr()[()]]
    if in_memory:
        h5.close()
    else:
        handles.append(h5)
    skipped = {kind: 0 for kind in SKIP_KINDS}
    for item in read_skipped(path):
        skipped[item.kind] += 1
    return Split(features, labels.astype(np.float32), names, skipped)


def prepare_features(options: Options, dataset: Dataset) -> Features:
    """Pack both splits (the testing split against its weak ground truth) and fit the scaler on training."""
    from experiments.packing import fit_scaler

    folder = options.work_dir / "features" / dataset.tag
    folder.mkdir(parents=True, exist_ok=True)
    _say(f"[features] log-mel of {dataset.train_audio} and {dataset.test_audio} into {folder}")
    _pack(options, dataset.train_audio, folder / "train.h5", dataset.meta["train_list"])
    _pack(options, dataset.test_audio, folder / "test.h5", dataset.meta["weak_truth"])
    scaler_path = folder / "scaler.npz"
    train_h5 = folder / "train.h5"
    if not scaler_path.is_file() or scaler_path.stat().st_mtime < train_h5.stat().st_mtime:
        fit_scaler(train_h5).save(scaler_path)
    handles: list = []
    try:
        train_split = _open_split(train_h5, handles)
        test_split = _open_split(folder / "test.h5", handles)
    except BaseException:
        for h in handles:
            h.close()
        raise
    for split, data in (("training", train_split), ("testing", test_split)):
        lost = sum(data.skipped.values())
        if lost:
            _say(f"[features] {split}: {lost} clips without usable audio are left out ({data.skipped})")
    return Features(train_split, test_split, Scaler.load(scaler_path), folder, handles)


# ---------------------------------------------------------------------- stage 3: training
def run_dir(options: Options, dataset: Dataset, system: str, seed: int) -> Path:
    return options.work_dir / "runs" / dataset.tag / options.experiment(seed) / system


def train_systems(options: Options, dataset: Dataset, features: Features, seed: int) -> dict[str, TrainResult]:
    """Train (or resume) every trained system of the options with training seed ``seed``, one after the other."""
    monitor = EvalSet(TEST_SET, features.test.features, features.test.labels)
    results = {}
    for system in options.systems:
        if not SYSTEMS[system].trained:
            continue
        _say(f"[train] seed {seed}, {system}: {SYSTEMS[system].title} ({options.size.model(system).name}, "
             f"schedule {options.size.schedule_name(system)})")
        results[system] = train(
            options.size.model(system), features.train.features, features.train.labels,
            features.scaler, run_dir(options, dataset, system, seed), options.size.schedule(system), seed=seed,
            deterministic=options.deterministic, monitor=monitor, eval_batch_size=options.size.eval_batch_size,
            force=options.force, device=options.device, name=system, progress=options.progress,
            classes=CLASSES)
    return results


# ---------------------------------------------------------------------- stage 4: evaluation
@dataclass
class Predictions:
    """Fused probabilities of a system on the testing split: clip (N, 17) and frame (N, 240, 17)."""

    clipwise: np.ndarray
    framewise: np.ndarray


def predict_systems(options: Options, dataset: Dataset, features: Features, seed: int) -> dict[str, Predictions]:
    """Fused predictions of every system trained with ``seed``; written in CVSSP's probability formats
    to the work folder."""
    test = EvalSet(TEST_SET, features.test.features, features.test.labels)
    found: dict[str, Predictions] = {}
    for system in options.systems:
        spec = SYSTEMS[system]
        if spec.trained:
            clip, frame = fused_predictions(run_dir(options, dataset, system, seed), test, features.scaler,
                                            options.size.eval_batch_size, options.device)
            found[system] = Predictions(clip, frames_at_input_rate(frame, FRAMES))
        else:
            found[system] = Predictions(np.mean([found[m].clipwise for m in spec.members], axis=0),
                                        np.mean([found[m].framewise for m in spec.members], axis=0))
        folder = options.work_dir / "predictions" / dataset.tag / options.experiment(seed) / system
        folder.mkdir(parents=True, exist_ok=True)
        evaluation.write_at_probabilities(folder / "at_prob_mat.csv.gz", features.test.names, found[system].clipwise)
        evaluation.write_sed_probabilities(folder / "sed_prob_mat_list.csv.gz", features.test.names,
                                  list(found[system].framewise))
    return found


def truth(dataset: Dataset, names: list[str]) -> tuple[dict[str, frozenset[str]], list]:
    """The official ground truth restricted to the clips that have audio (the others cannot be predicted)."""
    present = set(names)
    weak = evaluation.read_at_truth(dataset.meta["weak_truth"])
    strong = evaluation.read_sed_truth(dataset.meta["strong_truth"])
    unknown = sorted(present - set(weak))
    if unknown:
        raise FileFormatError(dataset.meta["weak_truth"], f"does not list packed testing clip {unknown[0]}")
    return {k: v for k, v in weak.items() if k in present}, [e for e in strong if clip_key(e.key) in present]


def evaluate_systems(dataset: Dataset, names: list[str], predictions: dict[str, Predictions]) -> dict[str, dict]:
    """Official AT (micro P/R/F1, CVSSP's 0.3 / arg-max rule) and SED (segment-based, 1 s) scores per system."""
    weak, strong = truth(dataset, names)
    scores = {}
    for system, pred in predictions.items():
        at = evaluation.evaluate_at(pred.clipwise, names, weak)
        events = [event for key, frames in zip(names, pred.framewise) for event in evaluation.frames_to_events(frames, key)]
        sed = evaluation.evaluate_sed(events, strong)
        scores[system] = {"at": at, "sed": sed}
    return scores


# ---------------------------------------------------------------------- all stages
def reproduce(options: Options) -> dict:
    """Run every stage (each resuming what an earlier call left) and return the contents of results.json."""
    from experiments.provenance import now

    began = now()
    options.out.mkdir(parents=True, exist_ok=True)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    if options.force:
        for name in ("results.json", "results.md"):
            (options.out / name).unlink(missing_ok=True)
        shutil.rmtree(options.work_dir / "predictions", ignore_errors=True)
    wanted = options.threads or options.size.torch_threads
    if wanted is None:
        return _run_stages(options, began)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        return _run_stages(options, began)
    finally:
        torch.set_num_threads(threads)


@dataclass
class SeedOutcome:
    """What one training seed gave: the training runs, the official scores of every system and,
    for the first seed only, the predictions (the example figure shows that seed's)."""

    seed: int
    runs: dict[str, TrainResult]
    scores: dict[str, dict]
    predictions: dict[str, Predictions] | None


def _run_stages(options: Options, began: str) -> dict:
    from experiments.summary import write_report

    timing: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        timing[stage] = round(timing.get(stage, 0.0) + time.perf_counter() - start, 1)
        return value

    dataset = timed("data", prepare_data, options)
    features = timed("features", prepare_features, options, dataset)
    try:
        if not features.test.names:
            raise InputError("no testing clip has audio: nothing to evaluate")
        outcomes = []
        for seed in options.training_seeds:
            runs = timed("training", train_systems, options, dataset, features, seed)
            predictions = timed("prediction", predict_systems, options, dataset, features, seed)
            scores = timed("evaluation", evaluate_systems, dataset, features.test.names, predictions)
            outcomes.append(SeedOutcome(seed, runs, scores, predictions if not outcomes else None))
        timing["total_before_report"] = round(sum(timing.values()), 1)
        results = write_report(options, dataset, features, outcomes, timing, began)
    finally:
        features.close()
    return results


__all__ = ["Options", "Dataset", "Features", "Split", "Predictions", "SeedOutcome", "prepare_data",
           "prepare_features", "train_systems", "predict_systems", "evaluate_systems", "truth", "reproduce", "run_dir",
           "META_FILES", "AUDIO_CANDIDATES", "TEST_SET"]

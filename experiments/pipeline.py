"""The stages of ``devinet reproduce``: data, features, training, evaluation and report.

Each stage is a function of the :class:`Options` and what the previous stages returned, and
each resumes: the synthetic generator and the feature packer continue unfinished work and
reuse finished files, :func:`experiments.train.train` continues after the last checkpoint,
and evaluation and report are recomputed from the saved predictions (cheap). Work files::

    WORK/data/synthetic-<size>-seed<seed>/      the generated stand-in (audio/, meta/, dataset.json)
    WORK/features/<dataset>/{train,test}.h5     packed log-mel, and scaler.npz (fitted on train)
    WORK/runs/<dataset>/<size>-seed<seed>/<system>/           training runs (experiments.train)
    WORK/predictions/<dataset>/<size>-seed<seed>/<system>/    fused probabilities, official formats

Results (small files only)::

    OUT/results.json, OUT/results.md, OUT/figures/*.png (+ clip_example.json, its data),
    OUT/evaluation/<system>.json (full official scores), OUT/runs/<system>/{run.json,metrics.jsonl}
    OUT/models/<system>.json      the checkpoints each system averages (``devinet tag --model``)
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

from devinet._io import atomic_write_json, atomic_write_text
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
    """Everything ``devinet reproduce`` was asked to do (see ``experiments/reproduce.py`` for the flags)."""

    size: SizeConfig
    out: Path
    work_dir: Path
    data_root: Path | None = None
    meta_dir: Path | None = None
    train_audio: Path | None = None
    test_audio: Path | None = None
    systems: tuple[str, ...] = tuple(SYSTEMS)
    seed: int = 2017
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
        out = Path(args.out)
        path = lambda p: Path(p) if p is not None else None  # noqa: E731
        return cls(size=size, out=out, work_dir=Path(args.work_dir) if args.work_dir else out / "work",
                   data_root=path(args.data_root), meta_dir=path(args.meta_dir), train_audio=path(args.train_audio),
                   test_audio=path(args.test_audio), systems=resolve_systems(args.systems), seed=args.seed,
                   jobs=args.jobs or usable_cores(), device=args.device, threads=args.threads,
                   deterministic=args.deterministic,
                   force=args.force, progress=args.progress, command=command)

    @property
    def experiment(self) -> str:
        """The experiment's folder name under a dataset: size and seed."""
        return f"{self.size.name}-seed{self.seed}"


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
def run_dir(options: Options, dataset: Dataset, system: str) -> Path:
    return options.work_dir / "runs" / dataset.tag / options.experiment / system


def train_systems(options: Options, dataset: Dataset, features: Features) -> dict[str, TrainResult]:
    """Train (or resume) every trained system of the options, one after the other."""
    monitor = EvalSet(TEST_SET, features.test.features, features.test.labels)
    results = {}
    for system in options.systems:
        if not SYSTEMS[system].trained:
            continue
        _say(f"[train] {system}: {SYSTEMS[system].title} ({SYSTEMS[system].preset}, width {options.size.width:g})")
        results[system] = train(
            options.size.model(system), features.train.features, features.train.labels,
            features.scaler, run_dir(options, dataset, system), options.size.training, seed=options.seed,
            deterministic=options.deterministic, monitor=monitor, eval_batch_size=options.size.eval_batch_size,
            force=options.force, device=options.device, name=system, progress=options.progress,
            classes=CLASSES)
    return results


def write_model_lists(options: Options, dataset: Dataset) -> None:
    """OUT/models/<system>.json: the checkpoints each system averages (a trained system's fused
    epochs, a fusion's members'), so that ``devinet tag --model`` can run the system."""
    from devinet.model_list import write_model_list
    from experiments.train import RunFolder

    def checkpoints(system: str) -> list[Path]:
        if not SYSTEMS[system].trained:
            return [path for member in SYSTEMS[system].members for path in checkpoints(member)]
        folder = RunFolder(run_dir(options, dataset, system))
        return [folder.checkpoint(epoch) for epoch in options.size.training.fused_epochs]

    (options.out / "models").mkdir(parents=True, exist_ok=True)
    for system in options.systems:
        write_model_list(options.out / "models" / f"{system}.json", checkpoints(system), system, SYSTEMS[system].title)


# ---------------------------------------------------------------------- stage 4: evaluation
@dataclass
class Predictions:
    """Fused probabilities of a system on the testing split: clip (N, 17) and frame (N, 240, 17)."""

    clipwise: np.ndarray
    framewise: np.ndarray


def predict_systems(options: Options, dataset: Dataset, features: Features) -> dict[str, Predictions]:
    """Fused predictions of every system; written in CVSSP's probability formats to the work folder."""
    test = EvalSet(TEST_SET, features.test.features, features.test.labels)
    found: dict[str, Predictions] = {}
    for system in options.systems:
        spec = SYSTEMS[system]
        if spec.trained:
            clip, frame = fused_predictions(run_dir(options, dataset, system), test, features.scaler,
                                            options.size.eval_batch_size, options.device)
            found[system] = Predictions(clip, frames_at_input_rate(frame, FRAMES))
        else:
            found[system] = Predictions(np.mean([found[m].clipwise for m in spec.members], axis=0),
                                        np.mean([found[m].framewise for m in spec.members], axis=0))
        folder = options.work_dir / "predictions" / dataset.tag / options.experiment / system
        folder.mkdir(parents=True, exist_ok=True)
        evaluation.write_at_probabilities(folder / "at_prob_mat.csv.gz", features.test.names, found[system].clipwise)
        evaluation.write_sed_probabilities(folder / "sed_prob_mat_list.csv.gz", features.test.names,
                                  list(found[system].framewise))
    return found


def _truth(dataset: Dataset, names: list[str]) -> tuple[dict[str, frozenset[str]], list]:
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
    weak, strong = _truth(dataset, names)
    scores = {}
    for system, pred in predictions.items():
        at = evaluation.evaluate_at(pred.clipwise, names, weak)
        events = [event for key, frames in zip(names, pred.framewise) for event in evaluation.frames_to_events(frames, key)]
        sed = evaluation.evaluate_sed(events, strong)
        scores[system] = {"at": at, "sed": sed}
    return scores


# ---------------------------------------------------------------------- stage 5: report
def _summary(options: Options, system: str, score: dict, run: TrainResult | None, parameters: int | None) -> dict:
    spec = SYSTEMS[system]
    at, sed = score["at"], score["sed"]
    entry: dict[str, Any] = {
        "title": spec.title,
        "preset": spec.preset,
        "members": list(spec.members),
        "sed_source": spec.sed_source,
        "at": {"f1": at["f1"], "precision": at["precision"], "recall": at["recall"],
               "macro_f1": at["macro"]["f1"], "macro_auc": at["macro"].get("auc"),
               "class_wise_f1": {label: row["f1"] for label, row in at["class_wise"].items()}},
        "sed": {key: sed[key] for key in ("error_rate", "f1", "precision", "recall", "substitution_rate",
                                          "deletion_rate", "insertion_rate")}
               | {"class_wise_f1": {label: row["f1"] for label, row in sed["class_wise"].items()},
                  "class_wise_error_rate": {label: row["error_rate"] for label, row in sed["class_wise"].items()}},
    }
    if run is not None:
        schedule = options.size.training
        entry["model"] = {"width": options.size.width, "parameters_keras_count": parameters}
        entry["training"] = {
            "epochs": run.epochs_done, "iterations": run.epochs_done * schedule.iterations_per_epoch,
            "fused_epochs": list(schedule.fused_epochs),
            "final_loss": run.history[-1]["loss"] if run.history else None,
            "seconds": sum(r.get("train_seconds", 0.0) + r.get(f"{TEST_SET}_seconds", 0.0) for r in run.history),
            "history": run.history,
        }
    return entry


def _rounded(array: Any, decimals: int) -> list:
    """A float array as nested lists of short decimals (float64 first: float32 values print long)."""
    return np.round(np.asarray(array, dtype=np.float64), decimals).tolist()


def _clip_example(names: list[str], strong: list) -> int:
    """Index of the testing clip shown in the example figure: most labelled classes, then most events, then name."""
    by_clip: dict[str, list] = {}
    for event in strong:
        if event.offset > event.onset:
            by_clip.setdefault(clip_key(event.key), []).append(event)
    ranked = sorted(by_clip, key=lambda k: (-len({e.label for e in by_clip[k]}), -len(by_clip[k]), k))
    return names.index(ranked[0]) if ranked else 0


def write_report(options: Options, dataset: Dataset, features: Features, runs: dict[str, TrainResult],
                 predictions: dict[str, Predictions], scores: dict[str, dict], timing: dict[str, float],
                 began: str) -> dict:
    """results.json, results.md, figures and per-system files under ``options.out`` (all written atomically)."""
    from devinet.model import DeviNet
    from experiments import plots, report
    from experiments.provenance import now, versions

    out = options.out
    for sub in ("figures", "evaluation", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    systems = {}
    for system in options.systems:
        parameters = DeviNet(options.size.model(system)).num_parameters() if SYSTEMS[system].trained else None
        systems[system] = _summary(options, system, scores[system], runs.get(system), parameters)
        atomic_write_json(out / "evaluation" / f"{system}.json", {"system": system, **scores[system]})
        if system in runs:
            for name in ("run.json", "metrics.jsonl"):
                target = out / "runs" / system / name
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(target, (runs[system].run_dir / name).read_text(encoding="utf-8"))

    names = features.test.names
    _, strong = _truth(dataset, names)
    example = _clip_example(names, strong)
    key = names[example]
    clip_data = {
        "clip": key,
        "frame_step": evaluation.FRAME_STEP_SEC,
        "logmel": _rounded(features.test.features[example], 2),
        "events": [{"label": e.label, "onset": e.onset, "offset": e.offset} for e in strong if clip_key(e.key) == key],
        "framewise": {s: _rounded(predictions[s].framewise[example], 3) for s in options.systems},
        "classes": list(CLASSES),
        "threshold": evaluation.DEFAULT_THRESHOLD,
    }
    atomic_write_json(out / "figures" / "clip_example.json", clip_data, indent=None)

    results = {
        "title": "DeviNet: reproduction of the weak-label experiments of Xu et al. (ICASSP 2018)",
        "created": now(),
        "started": began,
        "command": options.command,
        "size": options.size.to_dict(),
        "seed": options.seed,
        "deterministic": options.deterministic,
        "dataset": dataset.info | {
            "train_clips_used": len(features.train.names), "test_clips_scored": len(names),
            "train_clips_without_audio": features.train.skipped, "test_clips_without_audio": features.test.skipped},
        "metrics": report.METRIC_DEFINITIONS,
        "systems": systems,
        "ordering": report.ordering_checks(systems),
        "paper": report.PAPER_FIGURES,
        "timing_seconds": timing,
        "versions": versions(),
    }
    figures = {
        "training_curves": plots.plot_training_curves(
            {s: e["training"]["history"] for s, e in systems.items() if "training" in e},
            out / "figures" / "training_curves.png", monitor_key=f"{TEST_SET}_at_f1"),
        "per_class_f1": plots.plot_per_class_f1(systems, out / "figures" / "per_class_f1.png",
                                                 reference=report.per_class_reference()),
        "clip_example": plots.plot_clip_example(clip_data, out / "figures" / "clip_example.png"),
    }
    results["figures"] = {name: str(path.relative_to(out)) for name, path in figures.items()}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", report.results_markdown(results))
    return results


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


def _run_stages(options: Options, began: str) -> dict:
    timing: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        timing[stage] = round(time.perf_counter() - start, 1)
        return value

    dataset = timed("data", prepare_data, options)
    features = timed("features", prepare_features, options, dataset)
    try:
        if not features.test.names:
            raise InputError("no testing clip has audio: nothing to evaluate")
        runs = timed("training", train_systems, options, dataset, features)
        write_model_lists(options, dataset)
        predictions = timed("prediction", predict_systems, options, dataset, features)
        scores = timed("evaluation", evaluate_systems, dataset, features.test.names, predictions)
        timing["total_before_report"] = round(sum(timing.values()), 1)
        results = write_report(options, dataset, features, runs, predictions, scores, timing, began)
    finally:
        features.close()
    return results


__all__ = ["Options", "Dataset", "Features", "Split", "Predictions", "prepare_data", "prepare_features",
           "train_systems", "predict_systems", "evaluate_systems", "write_report", "reproduce", "run_dir",
           "META_FILES", "AUDIO_CANDIDATES"]

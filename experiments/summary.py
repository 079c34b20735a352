"""The last stage of ``devinet reproduce``: results.json, results.md and the figures, over all seeds.

``results.json["systems"][name]`` holds, per system, what it is (title, preset, model and its
parameter counts, schedule), ``mean`` and ``std`` (sample standard deviation over the seeds;
None with one seed) of every reported metric on the testing split, and ``runs``: each seed's
scores and training record. The scores of a run: ``at`` and ``sed`` (the official metrics, and
AT mAP and macro AUC), ``sed_event`` and ``psds`` (beyond the paper's metrics). ``results.json
["claims"]`` holds the paper's orderings, on the official metrics, with their paired
differences per seed and their verdicts (:mod:`experiments.claims`). ``results.json
["evaluation"]`` holds the same scores on the evaluation split beside the challenge's
evaluation-set figures, or None when that split is not scored (the synthetic stand-in has
none). The clip example shows the first seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from devinet._io import atomic_write_json, atomic_write_text
from experiments import evaluation
from experiments.claims import aggregate, check_claims
from experiments.meta import CLASSES, clip_key
from experiments.systems import SYSTEMS
from experiments.train import TrainResult

if TYPE_CHECKING:
    from experiments.pipeline import Dataset, Features, Options, SeedOutcome, Start

#: how results.json's seeds relate to the command's options (written beside them)
SEED_RULE = ("training seeds S, S+1, ..., S+N-1 for --seed S --seeds N (initial weights, batch order); the data "
             "are the same for every seed (the synthetic stand-in is generated once, with seed S)")


#: the sections of a run's scores, each aggregated over seeds
SCORE_SECTIONS = ("at", "sed", "sed_event", "psds")


def _sed_entry(sed: dict) -> dict[str, Any]:
    return ({key: sed[key] for key in ("error_rate", "f1", "precision", "recall", "substitution_rate",
                                        "deletion_rate", "insertion_rate")}
            | {"class_wise_f1": {label: row["f1"] for label, row in sed["class_wise"].items()},
               "class_wise_error_rate": {label: row["error_rate"] for label, row in sed["class_wise"].items()}})


def scores_entry(score: dict) -> dict[str, Any]:
    """The scores results.json keeps of one system's evaluation on a split (one seed): the official
    ``at`` (with mAP and macro AUC) and ``sed`` (segment-based), and ``sed_event`` and ``psds``."""
    at = score["at"]
    return {
        "at": {"f1": at["f1"], "precision": at["precision"], "recall": at["recall"],
               "macro_f1": at["macro"]["f1"], "macro_auc": at["macro"].get("auc"), "map": at["macro"].get("ap"),
               "class_wise_f1": {label: row["f1"] for label, row in at["class_wise"].items()}},
        "sed": _sed_entry(score["sed"]),
        "sed_event": _sed_entry(score["sed_event"]),
        "psds": {name: score["psds"][name]["psds"] for name in ("scenario1", "scenario2")},
    }


def _mean_std(runs: list[dict]) -> tuple[dict, dict]:
    return aggregate([{section: run[section] for section in SCORE_SECTIONS} for run in runs])


def training_entry(run: TrainResult, iterations_per_epoch: int, monitor: str) -> dict[str, Any]:
    """What one training run did (one seed)."""
    return {
        "epochs": run.epochs_done, "iterations": run.epochs_done * iterations_per_epoch,
        "world_size": run.world_size,
        "final_loss": run.history[-1]["loss"] if run.history else None,
        "seconds": sum(r.get("train_seconds", 0.0) + r.get(f"{monitor}_seconds", 0.0) for r in run.history),
        "history": run.history,
    }


def model_entry(options: "Options", system: str) -> dict[str, Any]:
    """The model a trained system trains at this size, and its parameter counts."""
    import torch

    from devinet.model import DeviNet

    config = options.size.model(system)
    with torch.device("meta"):  # shapes only: counting needs no weights
        model = DeviNet(config)
    return {"name": config.name, "width": options.size.width, "conv_channels": config.conv_channels,
            "conv_block": "GLU" if config.gated_conv else config.conv_activation,
            "parameters": model.num_parameters(keras_style=False), "parameters_keras_count": model.num_parameters()}


def schedule_entry(options: "Options", system: str) -> dict[str, Any]:
    """The schedule a trained system trains with, by name, with its fused epochs spelled out."""
    schedule = options.size.schedule(system)
    return {"name": options.size.schedule_name(system), **schedule.to_dict(),
            "fused_epochs": list(schedule.fused_epochs),
            "keras_checkpoint_numbers": list(schedule.keras_checkpoint_numbers)}


def system_entry(options: "Options", system: str, outcomes: list["SeedOutcome"], monitor: str) -> dict[str, Any]:
    """One system over all seeds: what it is, mean and std of its scores, and each seed's run."""
    spec = SYSTEMS[system]
    runs = []
    for outcome in outcomes:
        run = {"seed": outcome.seed, **scores_entry(outcome.scores[system])}
        if system in outcome.runs:
            iterations = options.size.schedule(system).iterations_per_epoch
            run["training"] = training_entry(outcome.runs[system], iterations, monitor)
        runs.append(run)
    mean, std = _mean_std(runs)
    entry: dict[str, Any] = {"title": spec.title, "preset": spec.preset, "ablation": spec.ablation or None,
                             "members": list(spec.members), "sed_source": spec.sed_source}
    if spec.trained:
        entry["model"] = model_entry(options, system)
        entry["schedule"] = schedule_entry(options, system)
    return entry | {"mean": mean, "std": std, "runs": runs}


def _rounded(array: Any, decimals: int) -> list:
    """A float array as nested lists of short decimals (float64 first: float32 values print long)."""
    return np.round(np.asarray(array, dtype=np.float64), decimals).tolist()


def _clip_example_index(names: list[str], strong: list) -> int:
    """Index of the testing clip shown in the example figure: most labelled classes, then most events, then name."""
    by_clip: dict[str, list] = {}
    for event in strong:
        if event.offset > event.onset:
            by_clip.setdefault(clip_key(event.key), []).append(event)
    ranked = sorted(by_clip, key=lambda k: (-len({e.label for e in by_clip[k]}), -len(by_clip[k]), k))
    return names.index(ranked[0]) if ranked else 0


def clip_example(options: "Options", dataset: "Dataset", features: "Features", first: "SeedOutcome") -> dict:
    """The example figure's data: one testing clip's log-mel, strong labels and the first seed's frame outputs."""
    from experiments.pipeline import scored_splits
    from experiments.scoring import truth

    names = features.test.names
    _, strong = truth(scored_splits(dataset, features)[0])
    index = _clip_example_index(names, strong)
    key = names[index]
    return {
        "clip": key,
        "seed": first.seed,
        "synthetic": dataset.kind == "synthetic",
        "frame_step": evaluation.FRAME_STEP_SEC,
        "logmel": _rounded(features.test.features[index], 2),
        "events": [{"label": e.label, "onset": e.onset, "offset": e.offset} for e in strong if clip_key(e.key) == key],
        "framewise": {s: _rounded(first.predictions[s].framewise[index], 3) for s in options.systems},
        "classes": list(CLASSES),
        "threshold": evaluation.DEFAULT_THRESHOLD,
    }


def _copy_run_files(options: "Options", outcomes: list["SeedOutcome"]) -> None:
    """Each seed's official scores and training logs (small files) under the results folder."""
    out = options.out
    for outcome in outcomes:
        folder = out / "evaluation" / f"seed{outcome.seed}"
        folder.mkdir(parents=True, exist_ok=True)
        if outcome.evaluation_scores is not None:
            (folder / "evaluation_set").mkdir(exist_ok=True)
        for system in options.systems:
            atomic_write_json(folder / f"{system}.json",
                              {"system": system, "seed": outcome.seed, "split": "test", **outcome.scores[system]})
            if outcome.evaluation_scores is not None:
                atomic_write_json(folder / "evaluation_set" / f"{system}.json",
                                  {"system": system, "seed": outcome.seed, "split": "evaluation",
                                   **outcome.evaluation_scores[system]})
            if system in outcome.runs:
                for name in ("run.json", "metrics.jsonl"):
                    target = out / "runs" / f"seed{outcome.seed}" / system / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(target, (outcome.runs[system].run_dir / name).read_text(encoding="utf-8"))


def _figures(results: dict, clip_data: dict, out, monitor: str) -> dict[str, str]:
    from experiments import plots, report

    synthetic = results["dataset"]["kind"] == "synthetic"
    histories = {s: {run["seed"]: run["training"]["history"] for run in e["runs"]}
                 for s, e in results["systems"].items() if "schedule" in e}
    paths = {
        "training_curves": plots.plot_training_curves(histories, out / "figures" / "training_curves.png",
                                                      monitor_key=f"{monitor}_at_f1", synthetic=synthetic),
        "per_class_f1": plots.plot_per_class_f1(results["systems"], out / "figures" / "per_class_f1.png",
                                                reference=report.per_class_reference(results["dataset"]["kind"]),
                                                synthetic=synthetic),
        "clip_example": plots.plot_clip_example(clip_data, out / "figures" / "clip_example.png"),
    }
    return {name: str(path.relative_to(out)) for name, path in paths.items()}


def evaluation_split_entry(options: "Options", features: "Features", outcomes: list["SeedOutcome"]) -> dict | None:
    """The evaluation split's scores per system (mean, std, each seed) beside the challenge's
    evaluation-set figures; None when the split was not scored."""
    from experiments import report

    if outcomes[0].evaluation_scores is None:
        return None
    systems = {}
    for system in options.systems:
        runs = [{"seed": o.seed, **scores_entry(o.evaluation_scores[system])} for o in outcomes]
        mean, std = _mean_std(runs)
        systems[system] = {"title": SYSTEMS[system].title, "mean": mean, "std": std, "runs": runs}
    return {"split": "evaluation", "description": "the challenge's evaluation set (real clips), scored with its "
            "official ground truth; the claims are checked on the testing split only",
            "clips_scored": len(features.evaluation.names), "clips_without_audio": features.evaluation.skipped,
            "systems": systems, "challenge": [f for f in report.PAPER_FIGURES if f["split"] == "evaluation"]}


def write_report(options: "Options", dataset: "Dataset", features: "Features", outcomes: list["SeedOutcome"],
                 timing: dict[str, float], start: "Start") -> dict:
    """results.json, results.md, figures and per-seed files under ``options.out`` (all written atomically)."""
    from experiments import report
    from experiments.pipeline import TEST_SET
    from experiments.provenance import now, versions

    out = options.out
    for sub in ("figures", "evaluation", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _copy_run_files(options, outcomes)
    clip_data = clip_example(options, dataset, features, outcomes[0])
    atomic_write_json(out / "figures" / "clip_example.json", clip_data, indent=None)
    results = {
        "title": "DeviNet: reproduction of the weak-label experiments of Xu et al. (ICASSP 2018)",
        "created": now(),
        "started": start.time,
        "command": options.command,
        "size": options.size.to_dict(),
        "seeds": [outcome.seed for outcome in outcomes],
        "data_seed": options.seed,
        "seed_rule": SEED_RULE,
        "deterministic": options.deterministic,
        "precision": options.precision,
        "dataset": dataset.info | {
            "train_clips_used": len(features.train.names), "test_clips_scored": len(features.test.names),
            "train_clips_without_audio": features.train.skipped, "test_clips_without_audio": features.test.skipped},
        "metrics": report.METRIC_DEFINITIONS,
        "systems": {system: system_entry(options, system, outcomes, TEST_SET) for system in options.systems},
        "claims": check_claims({o.seed: {s: scores_entry(o.scores[s]) for s in options.systems} for o in outcomes}),
        "evaluation": evaluation_split_entry(options, features, outcomes),
        "paper": report.PAPER_FIGURES,
        "timing_seconds": timing,
        # the revision taken when the run started, before any result file (maybe tracked) was written
        "versions": versions(extra=("sed_scores_eval", "pandas")) | {"git": start.git},
    }
    results["figures"] = _figures(results, clip_data, out, TEST_SET)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", report.results_markdown(results))
    return results


__all__ = ["SEED_RULE", "SCORE_SECTIONS", "scores_entry", "evaluation_split_entry", "training_entry", "model_entry",
           "schedule_entry", "system_entry", "clip_example", "write_report"]

"""Stage 4 of ``devinet reproduce``: fused predictions of every system on a scored split, and their scores.

A scored split is a packed set of clips with the official ground truth: the testing split
(always; the claims are checked on it), and the evaluation split when the real data brought
with ``--data-root`` hold its audio. Each system is scored with the official metrics (AT micro
P/R/F1 with CVSSP's tagging rule, SED segment-based ER/F1 on 1-s segments) and, beyond the
paper's, AT mAP and macro ROC AUC, SED event-based ER/F1 with DCASE's collars, and PSDS of
DCASE 2021's scenarios 1 and 2 (:mod:`experiments.evaluation`; docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devinet.errors import FileFormatError
from devinet.features import FRAMES
from experiments import evaluation
from experiments.meta import clip_key
from experiments.systems import SYSTEMS, frames_at_input_rate
from experiments.train import EvalSet, fused_predictions

if TYPE_CHECKING:
    from experiments.pipeline import Dataset, Features, Options, Split

#: the testing split: monitored during training, scored, and where the claims are checked
TEST_SET = "test"
#: the evaluation split of the real data (the challenge's evaluation set), scored when present
EVALUATION_SET = "evaluation"


@dataclass
class ScoredSplit:
    """A packed split and its official ground truth.

    Attributes:
        name: :data:`TEST_SET` or :data:`EVALUATION_SET`.
        data: the packed clips (features, labels, clip keys, clips without usable audio).
        weak_truth, strong_truth: the official ground-truth files.
    """

    name: str
    data: "Split"
    weak_truth: Path
    strong_truth: Path

    @property
    def names(self) -> list[str]:
        return self.data.names

    def eval_set(self) -> EvalSet:
        return EvalSet(self.name, self.data.features, self.data.labels)


@dataclass
class Predictions:
    """Fused probabilities of a system on a split: clip (N, 17) and frame (N, 240, 17)."""

    clipwise: np.ndarray
    framewise: np.ndarray


def prediction_folder(options: "Options", dataset: "Dataset", seed: int, system: str, split: str) -> Path:
    """Where a system's fused probabilities on a split are written in CVSSP's formats (testing split:
    the system's folder itself, as before the evaluation split existed)."""
    folder = options.work_dir / "predictions" / dataset.tag / options.experiment(seed) / system
    return folder if split == TEST_SET else folder / split


def predict_systems(options: "Options", dataset: "Dataset", features: "Features", seed: int,
                    split: ScoredSplit) -> dict[str, Predictions]:
    """Fused predictions on ``split`` of every system trained with ``seed`` (a fusion: the mean of its
    members'), also written in CVSSP's probability formats to the work folder."""
    from experiments.pipeline import run_dir

    found: dict[str, Predictions] = {}
    for system in options.systems:
        spec = SYSTEMS[system]
        if spec.trained:
            clip, frame = fused_predictions(run_dir(options, dataset, system, seed), split.eval_set(),
                                            features.scaler, options.size.eval_batch_size, options.device)
            found[system] = Predictions(clip, frames_at_input_rate(frame, FRAMES))
        else:
            found[system] = Predictions(np.mean([found[m].clipwise for m in spec.members], axis=0),
                                        np.mean([found[m].framewise for m in spec.members], axis=0))
        folder = prediction_folder(options, dataset, seed, system, split.name)
        folder.mkdir(parents=True, exist_ok=True)
        evaluation.write_at_probabilities(folder / "at_prob_mat.csv.gz", split.names, found[system].clipwise)
        evaluation.write_sed_probabilities(folder / "sed_prob_mat_list.csv.gz", split.names,
                                           list(found[system].framewise))
    return found


def truth(split: ScoredSplit) -> tuple[dict[str, frozenset[str]], list]:
    """The official ground truth restricted to the clips that have audio (the others cannot be predicted)."""
    present = set(split.names)
    weak = evaluation.read_at_truth(split.weak_truth)
    strong = evaluation.read_sed_truth(split.strong_truth)
    unknown = sorted(present - set(weak))
    if unknown:
        raise FileFormatError(split.weak_truth, f"does not list packed {split.name} clip {unknown[0]}")
    return {k: v for k, v in weak.items() if k in present}, [e for e in strong if clip_key(e.key) in present]


def score_system(names: list[str], pred: Predictions, weak: dict[str, frozenset[str]], strong: list) -> dict:
    """One system's scores on a split: the official ``at`` and ``sed`` results, and beyond them
    ``sed_event`` (event-based) and ``psds`` (both scenarios); AT mAP and AUC are in ``at``."""
    at = evaluation.evaluate_at(pred.clipwise, names, weak)
    events = [event for key, frames in zip(names, pred.framewise) for event in evaluation.frames_to_events(frames, key)]
    # every clip of the split is scored: one without reference events is a valid negative
    return {"at": at, "sed": evaluation.evaluate_sed(events, strong, clips=names),
            "sed_event": evaluation.evaluate_sed_events(events, strong, clips=names),
            "psds": evaluation.evaluate_psds(names, list(pred.framewise), strong, clips=names)}


def evaluate_systems(split: ScoredSplit, predictions: dict[str, Predictions]) -> dict[str, dict]:
    """Scores (:func:`score_system`) of every system's predictions on ``split``."""
    weak, strong = truth(split)
    return {system: score_system(split.names, pred, weak, strong) for system, pred in predictions.items()}


__all__ = ["TEST_SET", "EVALUATION_SET", "ScoredSplit", "Predictions", "prediction_folder", "predict_systems",
           "truth", "score_system", "evaluate_systems"]

"""Audio tagging (subtask A) metrics, counted as the challenge's official scorer does.

Micro-averaged precision, recall and F1 over (clip, label) pairs against the weak labels: a
predicted label found in the clip's reference counts once as a true positive, and a second
copy of the same pair counts as a false positive. Probabilities become tags with CVSSP's rule
(:func:`devinet.postprocessing.at_decisions`). CVSSP's report adds per-class P/R/F, AUC and EER
(scikit-learn), and their means. Beyond the paper's metrics, the threshold-free ranking ones:
per-class average precision (scikit-learn ``average_precision_score``) and its macro mean, the
mAP, beside the macro ROC AUC. A per-class threshold search on the scored set itself is an
oracle, and is reported as one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from devinet.errors import InputError
from devinet.postprocessing import at_decisions, class_thresholds
from devinet.recipe import DEFAULT_THRESHOLD
from experiments.meta import CLASSES, clip_key

from .common import check_clip_sets, f1, mean, ratio
from .formats import check_matrix


#: Grid of the oracle per-class threshold search (CVSSP's 'auto' thresholds: 0, 0.01, ..., 1).
ORACLE_THRESHOLD_GRID: np.ndarray = np.round(np.arange(0.0, 1.0 + 1e-9, 0.01), 2)

_ORACLE_NOTE = ("per-class thresholds tuned on the scored set itself: an oracle upper bound, "
                "not a valid test result")



def decisions_to_tags(decisions: np.ndarray, keys: Sequence[str],
                      classes: Sequence[str] = CLASSES) -> dict[str, list[str]]:
    """Tags per clip, in class order, from ``(N, K)`` boolean decisions."""
    decisions = np.asarray(decisions, dtype=bool)
    if decisions.shape != (len(keys), len(classes)):
        raise InputError(f"decisions must have shape ({len(keys)}, {len(classes)}), got {decisions.shape}")
    return {key: [classes[k] for k in np.flatnonzero(row)] for key, row in zip(keys, decisions)}

def _canonical_truth(truth: Mapping[str, frozenset[str] | set[str] | Sequence[str]]) -> dict[str, frozenset[str]]:
    return {clip_key(key): frozenset(labels) for key, labels in truth.items()}

def count_tag_pairs(tags: Mapping[str, Sequence[str]], truth: Mapping[str, frozenset[str]],
                    classes: Sequence[str] = CLASSES) -> dict[str, np.ndarray]:
    """Per-class TP, FP and FN over (clip, label) pairs, as the official AT scorer counts them.

    For each reference clip, each predicted label is a TP the first time it matches a reference
    label, and an FP otherwise (a wrong label, or a second copy of a right one); each reference
    label never matched is an FN. A clip absent from ``tags`` has no predicted label. Returns
    ``{"tp", "fp", "fn"}``, each ``(K,)`` int64; their sums are the micro counts.
    """
    index = {label: k for k, label in enumerate(classes)}
    counts = {name: np.zeros(len(classes), dtype=np.int64) for name in ("tp", "fp", "fn")}
    for key, reference in truth.items():
        matched: set[str] = set()
        for label in tags.get(key, ()):
            if label not in index:
                raise InputError(f"clip {key}: unknown predicted label {label!r}")
            if label in reference and label not in matched:
                matched.add(label)
                counts["tp"][index[label]] += 1
            else:
                counts["fp"][index[label]] += 1
        for label in reference - matched:
            if label not in index:
                raise InputError(f"clip {key}: unknown reference label {label!r}")
            counts["fn"][index[label]] += 1
    return counts

def _prf(tp: int, fp: int, fn: int) -> dict:
    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1":f1(tp, fp, fn),
            "tp": int(tp), "fp": int(fp), "fn": int(fn)}

def _zero_if_none(value: float | None) -> float:
    """The official scorer reports P, R and F as 0 when their denominator is 0."""
    return 0.0 if value is None else value

def score_tags(tags: Mapping[str, Sequence[str]], truth: Mapping[str, frozenset[str]],
               classes: Sequence[str] = CLASSES) -> dict:
    """Micro P/R/F1 (the official metric) and class-wise P/R/F1 of predicted tags against weak labels.

    Micro values with a zero denominator are 0, as in the official scorer; class-wise values
    are None where undefined (a class never predicted has no precision), and the macro means
    average the classes where a value is defined (macro F1 is the mean of the class F1s, CVSSP's
    "mean f_value"; the official scorer's informative "class-based F1" is instead the harmonic
    mean of macro P and R). Class-wise counts add up to the micro ones, duplicates included.
    """
    counts = count_tag_pairs(tags, truth, classes)
    tp, fp, fn = (int(counts[name].sum()) for name in ("tp", "fp", "fn"))
    micro = _prf(tp, fp, fn)
    class_wise = {label: _prf(counts["tp"][k], counts["fp"][k], counts["fn"][k])
                  | {"n_ref": int(counts["tp"][k] + counts["fn"][k])}
                  for k, label in enumerate(classes)}
    return {
        "precision": _zero_if_none(micro["precision"]),
        "recall": _zero_if_none(micro["recall"]),
        "f1": _zero_if_none(micro["f1"]),
        "tp": tp, "fp": fp, "fn": fn,
        "n_clips": len(truth),
        "class_wise": class_wise,
        "macro": {name: mean([row[name] for row in class_wise.values()]) for name in ("precision", "recall", "f1")},
    }


def at_micro_f1(probs: np.ndarray, labels: np.ndarray, threshold: float | Sequence[float] = DEFAULT_THRESHOLD) -> float:
    """The official AT micro F1 of ``(N, K)`` probabilities (CVSSP's rule) against ``(N, K)`` multi-hot labels."""
    labels = np.asarray(labels, dtype=bool)
    keys = [str(n) for n in range(len(labels))]
    classes = [str(k) for k in range(labels.shape[1])]
    truth = {key: frozenset(classes[k] for k in np.flatnonzero(row)) for key, row in zip(keys, labels)}
    return score_tags(decisions_to_tags(at_decisions(probs, threshold), keys, classes), truth, classes)["f1"]


def equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """EER of one class: where the ROC curve (scikit-learn) crosses FPR = FNR, linearly interpolated.

    scores, targets: ``(N,)``. None when the targets hold a single class (EER undefined).
    """
    from sklearn.metrics import roc_curve

    targets = np.asarray(targets).astype(bool)
    if targets.all() or not targets.any():
        return None
    fpr, tpr, _ = roc_curve(targets, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    gap = fpr - (1.0 - tpr)  # rises from -1 at (0, 0) to +1 at (1, 1)
    i = int(np.argmax(gap >= 0.0))
    share = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + share * (fpr[i] - fpr[i - 1]))

def ranking_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str] = CLASSES) -> dict[str, dict]:
    """Per-class ROC AUC, EER and average precision (scikit-learn) of ``(N, K)`` scores against
    ``(N, K)`` 0/1 targets.

    AUC and EER are None for a class whose targets are all 0 or all 1; AP is None for a class
    without a positive clip (scikit-learn would warn and give 0), and 1 when every clip is positive.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    result = {}
    for k, label in enumerate(classes):
        column = targets[:, k].astype(bool)
        defined = column.any() and not column.all()
        result[label] = {
            "auc": float(roc_auc_score(column, probs[:, k])) if defined else None,
            "eer": equal_error_rate(probs[:, k], column),
            "ap": float(average_precision_score(column, probs[:, k])) if column.any() else None,
        }
    return result

def tune_thresholds(probs: np.ndarray, targets: np.ndarray,
                    grid: np.ndarray = ORACLE_THRESHOLD_GRID) -> np.ndarray:
    """Per-class threshold maximising that class's F1 (``probs > t``) over ``grid``.

    CVSSP's 'auto' threshold search, with one change: ties go to the highest threshold, so a
    class without positives in the scored set (F1 0 everywhere) is never switched on, where
    CVSSP's first-best rule took 0 and tagged it on every clip. Tuned on the scored set, it is
    an oracle. probs, targets: ``(N, K)``. Returns ``(K,)``.
    """
    targets = np.asarray(targets, dtype=bool)
    on = probs[None, :, :] > np.asarray(grid)[:, None, None]        # (G, N, K)
    tp = (on & targets[None]).sum(axis=1)
    fp = (on & ~targets[None]).sum(axis=1)
    fn = (~on & targets[None]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    last_best = len(grid) - 1 - f1[::-1].argmax(axis=0)
    return np.asarray(grid)[last_best]

def _truth_matrix(keys: Sequence[str], truth: Mapping[str, frozenset[str]], classes: Sequence[str]) -> np.ndarray:
    index = {label: k for k, label in enumerate(classes)}
    matrix = np.zeros((len(keys), len(classes)), dtype=bool)
    for n, key in enumerate(keys):
        for label in truth[key]:
            if label not in index:
                raise InputError(f"clip {key}: unknown reference label {label!r}")
            matrix[n, index[label]] = True
    return matrix

def evaluate_at(probs: np.ndarray, keys: Sequence[str], truth: Mapping[str, frozenset[str]],
                threshold: float | Sequence[float] = DEFAULT_THRESHOLD, classes: Sequence[str] = CLASSES,
                tune: bool = False) -> dict:
    """Score tagging probabilities against weak labels.

    probs: ``(N, K)``; keys: the N clip names (any accepted form), exactly the clips of
    ``truth`` (key -> labels). Tags follow CVSSP's rule (:func:`at_decisions`). The result holds
    the official micro ``precision``/``recall``/``f1`` (with ``tp``/``fp``/``fn``), ``class_wise``
    P/R/F1/AUC/EER/AP, their ``macro`` means (``macro["ap"]``: the mAP; means over the classes
    where a value is defined), and with ``tune`` an ``oracle_thresholds`` section.
    """
    probs = check_matrix(probs, len(classes), "probs")
    keys = [clip_key(key) for key in keys]
    if len(keys) != len(probs):
        raise InputError(f"{len(keys)} keys for {len(probs)} rows of probabilities")
    truth = _canonical_truth(truth)
    check_clip_sets(keys, list(truth))
    thresholds = class_thresholds(threshold, len(classes))
    result = {"task": "audio_tagging", "threshold": threshold_report(thresholds, classes)}
    result |= score_tags(decisions_to_tags(at_decisions(probs, thresholds), keys, classes), truth, classes)
    targets = _truth_matrix(keys, truth, classes)
    for label, ranking in ranking_metrics(probs, targets, classes).items():
        result["class_wise"][label] |= ranking
    for name in ("auc", "eer", "ap"):  # macro "ap" is the mAP
        result["macro"][name] = mean([row[name] for row in result["class_wise"].values()])
    if tune:
        tuned = tune_thresholds(probs, targets)
        oracle = score_tags(decisions_to_tags(at_decisions(probs, tuned), keys, classes), truth, classes)
        result["oracle_thresholds"] = {
            "note": _ORACLE_NOTE,
            "thresholds": {label: float(value) for label, value in zip(classes, tuned)},
            **{name: oracle[name] for name in ("precision", "recall", "f1", "tp", "fp", "fn")},
            "macro_f1": oracle["macro"]["f1"],
        }
    return result

def threshold_report(thresholds: np.ndarray, classes: Sequence[str]) -> float | dict[str, float]:
    if np.all(thresholds == thresholds[0]):
        return float(thresholds[0])
    return {label: float(value) for label, value in zip(classes, thresholds)}

def evaluate_at_tags(tags: Mapping[str, Sequence[str]], truth: Mapping[str, frozenset[str]],
                     classes: Sequence[str] = CLASSES) -> dict:
    """Score decided tags (an AT submission: key -> labels, duplicates kept) against weak labels.

    As the official scorer, the submission must list every clip of the ground truth and no
    other (a bare name lists a clip without labels). No AUC/EER: a submission has no scores.
    """
    tags = {clip_key(key): list(labels) for key, labels in tags.items()}
    truth = _canonical_truth(truth)
    check_clip_sets(list(tags), list(truth))
    return {"task": "audio_tagging", "threshold": None} | score_tags(tags, truth, classes)

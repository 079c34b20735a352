"""Sound event detection (subtask B): events from frame probabilities, scored with sed_eval.

Frame probabilities, shape ``(T, 17)`` with a step of 664/16000 s, become events with CVSSP's
smoothing (:mod:`devinet.postprocessing`); events are scored with sed_eval's
``SegmentBasedMetrics`` on 1-s segments, over every file of the reference and the reference's
label list, as the official ``task4_subtaskB_evaluation.py`` does.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from devinet.errors import InputError, MissingDependencyError
from devinet.postprocessing import detect_events
from devinet.recipe import DEFAULT_N_SALT, DEFAULT_N_SMOOTH, DEFAULT_THRESHOLD, FRAME_STEP_SEC
from experiments.meta import CLASSES, Event, clip_key

from .common import check_clip_sets, f1, mean, ratio
from .formats import check_matrix


#: Segment length of the official SED metric, in seconds.
SEGMENT_SEC: float = 1.0



def frames_to_events(frame_probs: np.ndarray, key: str, threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                     n_smooth: int = DEFAULT_N_SMOOTH, n_salt: int = DEFAULT_N_SALT,
                     frame_step: float = FRAME_STEP_SEC, classes: Sequence[str] = CLASSES,
                     labels: Sequence[str] | frozenset[str] | None = None) -> list[Event]:
    """Events of one clip from its frame probabilities, shape ``(T, K)``, with CVSSP's post-processing.

    Per class: ``probs > threshold``, smoothed by :func:`activity_runs`; an event spans
    ``onset = frame_step * first`` to ``offset = frame_step * last`` (CVSSP's convention: the
    last frame's start, so a run to the clip's end stops at ``frame_step * (T - 1)``, 9.9185 s
    for 240 frames). ``labels``, when given, gates the clip: only those classes give events
    (gating SED by the AT decision is not CVSSP's system). Events are in class, then time order.
    """
    frame_probs = check_matrix(frame_probs, len(classes), f"frame probabilities of {key}")
    key = clip_key(key)
    return [Event(key, onset, offset, label) for onset, offset, label in
            detect_events(frame_probs, classes, threshold, n_smooth, n_salt, frame_step, labels)]


def _import_sed_eval():
    """sed_eval, imported quietly (dcase_util warns about pkg_resources on import)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sed_eval
    except ImportError as exc:
        if exc.name == "pkg_resources":
            raise MissingDependencyError("pkg_resources (setuptools<81, needed by sed_eval's dcase_util)",
                                         "experiments") from exc
        raise MissingDependencyError("sed_eval", "experiments") from exc
    return sed_eval

def _sed_eval_items(events: Sequence[Event]) -> list[dict]:
    return [{"filename": event.key, "event_onset": float(event.onset), "event_offset": float(event.offset),
             "event_label": event.label} for event in events]

def _segment_based_metrics(files: list[str], labels: list[str], truth_events: Sequence[Event],
                           events: Sequence[Event], time_resolution: float):
    """sed_eval's ``SegmentBasedMetrics`` over ``labels`` after every clip of ``files``, and its overall results."""
    by_file: dict[str, tuple[list[Event], list[Event]]] = {key: ([], []) for key in files}
    for event in truth_events:
        by_file[event.key][0].append(event)
    for event in events:
        by_file[event.key][1].append(event)
    sed_eval = _import_sed_eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels,
                                                           time_resolution=float(time_resolution))
        for key in files:
            reference, estimated = by_file[key]
            metrics.evaluate(reference_event_list=_sed_eval_items(reference),
                             estimated_event_list=_sed_eval_items(estimated))
        return metrics, metrics.results_overall_metrics()


def evaluate_sed(events: Sequence[Event], truth_events: Sequence[Event],
                 time_resolution: float = SEGMENT_SEC) -> dict:
    """Official segment-based SED metrics (sed_eval ``SegmentBasedMetrics``) of events against the reference.

    Every clip of ``truth_events`` is evaluated (a clip without predicted events counts its
    active reference segments as deletions), over the reference's label list, each clip's
    length being its largest reference or predicted offset (sed_eval's default, as the official
    script). Reference rows with onset = offset = 0 put their clip and label in the evaluation
    and mark no segment. Predicted events of clips absent from the reference are refused;
    those of labels absent from the reference's list cannot be scored and are counted in
    ``n_events_outside_reference_labels``. Returns the overall ``error_rate`` (with its
    ``substitution_rate``/``deletion_rate``/``insertion_rate`` and segment counts ``S``,
    ``D``, ``I``, ``n_ref``, ``n_sys``, ``n_tp``), ``f1``/``precision``/``recall``, and
    ``class_wise`` values with their ``class_wise_average`` (None where undefined: no
    reference segment for an error rate or recall, no system segment for a precision).
    """
    if not time_resolution > 0:
        raise InputError(f"time_resolution must be > 0, got {time_resolution}")
    truth_events = [Event(clip_key(e.key), e.onset, e.offset, e.label) for e in truth_events]
    events = [Event(clip_key(e.key), e.onset, e.offset, e.label) for e in events]
    if not truth_events:
        raise InputError("the reference has no events")
    files = sorted({event.key for event in truth_events})
    labels = sorted({event.label for event in truth_events})  # the official script's list: sorted
    check_clip_sets(sorted({event.key for event in events}), files, allow_missing=True)
    scorable = [event for event in events if event.label in labels]
    metrics, overall = _segment_based_metrics(files, labels, truth_events, scorable, time_resolution)

    counts = {name: int(round(float(metrics.overall[name]))) for name in ("S", "D", "I", "Nref", "Nsys", "Ntp")}
    defined = counts["Nref"] > 0
    result = {
        "task": "sound_event_detection",
        "metric": f"segment-based, {time_resolution:g}-s segments (sed_eval SegmentBasedMetrics)",
        "time_resolution": float(time_resolution),
        "error_rate": float(overall["error_rate"]["error_rate"]) if defined else None,
        "substitution_rate": float(overall["error_rate"]["substitution_rate"]) if defined else None,
        "deletion_rate": float(overall["error_rate"]["deletion_rate"]) if defined else None,
        "insertion_rate": float(overall["error_rate"]["insertion_rate"]) if defined else None,
        # sed_eval's F-measure; it is NaN for a system without output, whose F1 is 0 (2TP/(Nref+Nsys)).
        "f1": _finite(overall["f_measure"]["f_measure"],
                      f1(counts["Ntp"], counts["Nsys"] - counts["Ntp"], counts["Nref"] - counts["Ntp"])),
        "precision": _finite(overall["f_measure"]["precision"]) if counts["Nsys"] else None,
        "recall": _finite(overall["f_measure"]["recall"]) if defined else None,
        "S": counts["S"], "D": counts["D"], "I": counts["I"],
        "n_ref": counts["Nref"], "n_sys": counts["Nsys"], "n_tp": counts["Ntp"],
        "n_files": len(files),
        "evaluated_seconds": float(metrics.evaluated_length_seconds),
        "n_events": len(events),
        "n_reference_events": len(truth_events),
        "n_events_outside_reference_labels": len(events) - len(scorable),
        "labels": labels,
        "class_wise": {label: _class_wise_sed(metrics.class_wise[label]) for label in class_order(labels)},
    }
    result["class_wise_average"] = {
        name: mean([row[name] for row in result["class_wise"].values()])
        for name in ("error_rate", "deletion_rate", "insertion_rate", "f1", "precision", "recall")
    }
    return result

def _finite(value: float, fallback: float | None = None) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else fallback

def class_order(labels: Sequence[str]) -> list[str]:
    """Labels in the official class order (others after them, alphabetically), for reports."""
    rank = {label: k for k, label in enumerate(CLASSES)}
    return sorted(labels, key=lambda label: (rank.get(label, len(rank)), label))

def _class_wise_sed(counts: Mapping[str, float]) -> dict:
    """A class's segment metrics from sed_eval's counts (its own formulas, None where it would divide by 0)."""
    tp, fp, fn = (int(round(float(counts[name]))) for name in ("Ntp", "Nfp", "Nfn"))
    n_ref, n_sys = int(round(float(counts["Nref"]))), int(round(float(counts["Nsys"])))
    return {
        "error_rate": ratio(fn + fp, n_ref),
        "deletion_rate": ratio(fn, n_ref),
        "insertion_rate": ratio(fp, n_ref),
        "f1": f1(tp, fp, fn),
        "precision": ratio(tp, n_sys),
        "recall": ratio(tp, n_ref),
        "n_ref": n_ref, "n_sys": n_sys, "n_tp": tp,
    }

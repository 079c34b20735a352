"""Sound event detection (subtask B): events from frame probabilities, scored with sed_eval.

Frame probabilities, shape ``(T, 17)`` with a step of 664/16000 s, become events with CVSSP's
smoothing (:mod:`devinet.postprocessing`); events are scored with sed_eval's
``SegmentBasedMetrics`` on 1-s segments, over every file of the reference and the reference's
label list, as the official ``task4_subtaskB_evaluation.py`` does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
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

@dataclass
class _Scoring:
    """Events of a scoring, grouped by clip: every reference clip, the reference's labels, and the
    predicted events those labels cover (the others are counted, not scored)."""

    files: list[str]
    labels: list[str]
    by_file: dict[str, tuple[list[Event], list[Event]]]
    n_events: int
    n_reference_events: int
    n_unscorable: int


def _scoring(events: Sequence[Event], truth_events: Sequence[Event], clips: Sequence[str] = ()) -> _Scoring:
    """Canonical keys, the reference's clips (and ``clips``: clips of the evaluated set without any
    reference event, valid negatives) and sorted label list (the official script's), and events
    grouped by clip; refuses predicted clips absent from both."""
    truth_events = [Event(clip_key(e.key), e.onset, e.offset, e.label) for e in truth_events]
    events = [Event(clip_key(e.key), e.onset, e.offset, e.label) for e in events]
    if not truth_events:
        raise InputError("the reference has no events")
    files = sorted({event.key for event in truth_events} | {clip_key(key) for key in clips})
    labels = sorted({event.label for event in truth_events})
    check_clip_sets(sorted({event.key for event in events}), files, allow_missing=True)
    scorable = [event for event in events if event.label in labels]
    by_file: dict[str, tuple[list[Event], list[Event]]] = {key: ([], []) for key in files}
    for event in truth_events:
        by_file[event.key][0].append(event)
    for event in scorable:
        by_file[event.key][1].append(event)
    return _Scoring(files, labels, by_file, len(events), len(truth_events), len(events) - len(scorable))


def evaluate_sed(events: Sequence[Event], truth_events: Sequence[Event],
                 time_resolution: float = SEGMENT_SEC, clips: Sequence[str] = ()) -> dict:
    """Official segment-based SED metrics (sed_eval ``SegmentBasedMetrics``) of events against the reference.

    Every clip of ``truth_events``, and of ``clips`` (clips of the evaluated set without any
    reference event: valid negatives, where every predicted event is an insertion), is evaluated (a clip without predicted events counts its
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
    scoring = _scoring(events, truth_events, clips)
    sed_eval = _import_sed_eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=scoring.labels,
                                                           time_resolution=float(time_resolution))
        for key in scoring.files:
            reference, estimated = scoring.by_file[key]
            metrics.evaluate(reference_event_list=_sed_eval_items(reference),
                             estimated_event_list=_sed_eval_items(estimated))
    return {"task": "sound_event_detection",
            "metric": f"segment-based, {time_resolution:g}-s segments (sed_eval SegmentBasedMetrics)",
            "time_resolution": float(time_resolution)} | _overall(metrics, scoring, _SEGMENT_COUNTS,
                                                                    metrics.evaluated_length_seconds)


#: Collars of the event-based metric: onset within 200 ms, offset within max(200 ms, 20 % of the
#: reference event's length). DCASE 2017 Task 4 defined no event-based metric (its official
#: subtask B script scores 1-s segments only); these are DCASE 2018 Task 4's, kept by its
#: successors (see docs/metrics.md).
EVENT_T_COLLAR: float = 0.2
EVENT_PERCENTAGE_OF_LENGTH: float = 0.2


def evaluate_sed_events(events: Sequence[Event], truth_events: Sequence[Event], t_collar: float = EVENT_T_COLLAR,
                        percentage_of_length: float = EVENT_PERCENTAGE_OF_LENGTH, clips: Sequence[str] = ()) -> dict:
    """Event-based SED metrics (sed_eval ``EventBasedMetrics``, onsets and offsets) of events against
    the reference: beyond the official metric, not part of the challenge's scoring.

    Same clips, label list and refusals as :func:`evaluate_sed`. A predicted event matches a
    reference event of its label when its onset is within ``t_collar`` seconds and its offset
    within ``max(t_collar, percentage_of_length * reference length)`` (sed_eval's optimal
    matching; a system without output scores 0, DCASE's ``zero_score``). Reference rows with
    onset = offset = 0 ("tagged but not heard") are not events here: they are left out and
    counted in ``n_reference_rows_without_extent``. Returns the same keys as :func:`evaluate_sed`,
    counts in events.
    """
    if not t_collar >= 0 or not percentage_of_length >= 0:
        raise InputError(f"collars must be >= 0, got {t_collar} and {percentage_of_length}")
    scoring = _scoring(events, truth_events, clips)
    sed_eval = _import_sed_eval()
    without_extent = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = sed_eval.sound_event.EventBasedMetrics(
            event_label_list=scoring.labels, evaluate_onset=True, evaluate_offset=True, t_collar=float(t_collar),
            percentage_of_length=float(percentage_of_length), empty_system_output_handling="zero_score")
        for key in scoring.files:
            reference, estimated = scoring.by_file[key]
            heard = [event for event in reference if event.offset > event.onset]
            without_extent += len(reference) - len(heard)
            metrics.evaluate(reference_event_list=_sed_eval_items(heard),
                             estimated_event_list=_sed_eval_items(estimated))
    metric = (f"event-based, onset collar {1000 * t_collar:g} ms, offset collar max({1000 * t_collar:g} ms, "
              f"{100 * percentage_of_length:g} % of the reference length) (sed_eval EventBasedMetrics)")
    return ({"task": "sound_event_detection", "metric": metric, "t_collar": float(t_collar),
             "percentage_of_length": float(percentage_of_length)}
            | _overall(metrics, scoring, _EVENT_COUNTS, metrics.evaluated_length)
            | {"n_reference_rows_without_extent": without_extent})


#: sed_eval's names of the overall counts S, D, I, Nref, Nsys, Ntp: segment-based, event-based
_SEGMENT_COUNTS = ("S", "D", "I", "Nref", "Nsys", "Ntp")
_EVENT_COUNTS = ("Nsubs", "Nfn", "Nfp", "Nref", "Nsys", "Ntp")


def _overall(metrics, scoring: _Scoring, count_names: tuple[str, ...], evaluated_seconds: float) -> dict:
    """Overall and class-wise values of a filled sed_eval metrics object (segments or events)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        overall = metrics.results_overall_metrics()
    counts = dict(zip(_SEGMENT_COUNTS, (int(round(float(metrics.overall[name]))) for name in count_names)))
    defined = counts["Nref"] > 0
    rates = {name: float(overall["error_rate"][name]) if defined else None
             for name in ("error_rate", "substitution_rate", "deletion_rate", "insertion_rate")}
    result = rates | {
        # sed_eval's F-measure; it is NaN for a system without output, whose F1 is 0 (2TP/(Nref+Nsys)).
        "f1": _finite(overall["f_measure"]["f_measure"],
                      f1(counts["Ntp"], counts["Nsys"] - counts["Ntp"], counts["Nref"] - counts["Ntp"])),
        "precision": _finite(overall["f_measure"]["precision"]) if counts["Nsys"] else None,
        "recall": _finite(overall["f_measure"]["recall"]) if defined else None,
        "S": counts["S"], "D": counts["D"], "I": counts["I"],
        "n_ref": counts["Nref"], "n_sys": counts["Nsys"], "n_tp": counts["Ntp"],
        "n_files": len(scoring.files),
        "evaluated_seconds": float(evaluated_seconds),
        "n_events": scoring.n_events,
        "n_reference_events": scoring.n_reference_events,
        "n_events_outside_reference_labels": scoring.n_unscorable,
        "labels": scoring.labels,
        "class_wise": {label: _class_wise_sed(metrics.class_wise[label]) for label in class_order(scoring.labels)},
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

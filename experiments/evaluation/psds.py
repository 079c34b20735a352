"""Polyphonic Sound Detection Score (PSDS) of frame probabilities, with CVSSP's post-processing.

PSDS (Bilen et al., ICASSP 2020) is the normalised area under the PSD-ROC curve: the
effective true positive rate against the effective false positive rate per hour, over every
decision threshold. It is computed here by sed_scores_eval (Ebbers et al., ICASSP 2022), exactly
over all thresholds, from per-frame scores. Beyond the official DCASE 2017 metrics: reported
beside them, never instead.

Which scores: CVSSP's system detects an event where ``probability > threshold``, after bridging
short gaps and dropping short runs (:func:`devinet.postprocessing.activity_runs`). That
smoothing is monotone (more active frames never give fewer kept frames), so the detections
at every threshold are nested, and one score per frame describes them all: the highest level
at which the frame lies in a kept run (:func:`postprocessed_scores`). Thresholding these
scores at ``t`` gives exactly CVSSP's events at ``t`` (the frames ``>= t`` instead of ``> t``:
the same set of operating points), so the PSDS below is that of CVSSP's system over all its
thresholds, not of the raw probabilities (which no CVSSP system thresholds unsmoothed). One
convention differs from CVSSP's event lists: an event's offset here is the end of its last
frame, where CVSSP writes the last frame's start (one frame, 41.5 ms, earlier).

Reference: rows with onset = offset = 0 ("tagged but not heard") are no events and are left
out; overlapping or touching events of one class in one clip (the official testing ground
truth has one such pair) are merged into their union, as PSDS needs. The classes scored are
those with at least one reference event (a class without one has no true positive rate).
Each clip lasts its nominal length, ``end - start`` of its name (10 s).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np

from devinet.errors import InputError, MissingDependencyError
from devinet.recipe import DEFAULT_N_SALT, DEFAULT_N_SMOOTH, FRAME_STEP_SEC
from experiments.meta import CLASSES, Event, clip_key

from .common import check_clip_sets
from .detection import class_order
from .formats import check_matrix, key_times


@dataclass(frozen=True)
class PSDSScenario:
    """The parameters of a PSDS (sed_scores_eval's names): detection and ground-truth intersection
    criteria, cross-trigger criterion (None: cross-triggers not counted), the weights of the
    cross-trigger rate and of the across-class instability, and the largest eFPR per hour."""

    dtc_threshold: float
    gtc_threshold: float
    cttc_threshold: float | None
    alpha_ct: float
    alpha_st: float
    max_efpr: float

    def to_dict(self) -> dict:
        return asdict(self)


#: The two scenarios of DCASE 2021 Task 4 (and 2022): 1 rewards precise localisation, 2 rewards
#: telling classes apart (cross-triggers penalised); both penalise instability across classes.
PSDS_SCENARIOS: dict[str, PSDSScenario] = {
    "scenario1": PSDSScenario(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0,
                              alpha_st=1.0, max_efpr=100.0),
    "scenario2": PSDSScenario(dtc_threshold=0.1, gtc_threshold=0.1, cttc_threshold=0.3, alpha_ct=0.5,
                              alpha_st=1.0, max_efpr=100.0),
}


def kept_frames(active: np.ndarray, n_smooth: int = DEFAULT_N_SMOOTH, n_salt: int = DEFAULT_N_SALT) -> np.ndarray:
    """CVSSP's smoothing of many activities at once: the frames inside kept runs.

    active: ``(R, T)`` bool, one activity per row. Row by row the same runs as
    :func:`devinet.postprocessing.activity_runs` (gaps between active frames ``a < b`` with
    ``b - a <= max(n_smooth, 1)`` bridged, then runs of ``n_salt`` frames or fewer dropped),
    returned as a ``(R, T)`` bool mask.
    """
    if n_smooth < 0 or n_salt < 0:
        raise InputError(f"n_smooth and n_salt must be >= 0, got {n_smooth} and {n_salt}")
    active = np.asarray(active, dtype=bool)
    if active.ndim != 2:
        raise InputError(f"activities must have shape (R, T), got {active.shape}")
    active = np.ascontiguousarray(active.T)  # (T, R): running along time is a vector operation over rows
    frames = active.shape[0]
    index = np.arange(frames, dtype=np.int32)[:, None]
    previous = np.maximum.accumulate(np.where(active, index, np.int32(-1)), axis=0)  # -1: none before
    following = np.minimum.accumulate(np.where(active, index, np.int32(frames))[::-1], axis=0)[::-1]  # T: none after
    joined = active | ((previous >= 0) & (following < frames) & (following - previous <= max(n_smooth, 1)))
    starts = joined.copy()
    starts[1:] &= ~joined[:-1]
    ends = joined.copy()
    ends[:-1] &= ~joined[1:]
    run_start = np.maximum.accumulate(np.where(starts, index, np.int32(-1)), axis=0)
    run_end = np.minimum.accumulate(np.where(ends, index, np.int32(frames))[::-1], axis=0)[::-1]
    return (joined & (run_end - run_start + 1 > n_salt)).T


def postprocessed_scores(frame_probs: np.ndarray, n_smooth: int = DEFAULT_N_SMOOTH,
                         n_salt: int = DEFAULT_N_SALT) -> np.ndarray:
    """Per-frame scores whose threshold ``>= t`` gives CVSSP's smoothed detections of ``probs >= t``.

    frame_probs: ``(T, K)``. For each class, a frame's score is the highest probability value
    ``v`` of that class in the clip such that the frame lies in a kept run of ``probs >= v``
    (0 when it lies in none). Returns ``(T, K)`` float64.
    """
    frame_probs = np.asarray(frame_probs, dtype=np.float64)
    if frame_probs.ndim != 2:
        raise InputError(f"frame probabilities must have shape (T, K), got {frame_probs.shape}")
    levels = [np.unique(frame_probs[:, k]) for k in range(frame_probs.shape[1])]
    rows = np.concatenate([frame_probs[:, k][None, :] >= values[:, None] for k, values in enumerate(levels)])
    kept = kept_frames(rows, n_smooth, n_salt)
    scores = np.zeros(frame_probs.shape, dtype=np.float64)
    first = 0
    for k, values in enumerate(levels):
        block = kept[first:first + len(values)]
        scores[:, k] = np.where(block, values[:, None], 0.0).max(axis=0)
        first += len(values)
    return scores


def psds_reference(truth_events: Sequence[Event]) -> dict[str, list[tuple[float, float, str]]]:
    """Reference events per clip as sed_scores_eval takes them: every clip of ``truth_events``,
    rows without extent left out, overlapping or touching events of a class merged."""
    by_clip: dict[str, list[Event]] = {}
    for event in truth_events:
        by_clip.setdefault(clip_key(event.key), [])
        if event.offset > event.onset:
            by_clip[clip_key(event.key)].append(event)
    merged: dict[str, list[tuple[float, float, str]]] = {}
    for key, events in by_clip.items():
        spans: list[list] = []
        for event in sorted(events, key=lambda e: (e.label, e.onset, e.offset)):
            if spans and spans[-1][2] == event.label and event.onset <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], event.offset)
            else:
                spans.append([event.onset, event.offset, event.label])
        merged[key] = [(float(onset), float(offset), label) for onset, offset, label in spans]
    return merged


def _import_sed_scores_eval():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sed_scores_eval
    except ImportError as exc:
        raise MissingDependencyError("sed_scores_eval", "experiments") from exc
    return sed_scores_eval


def _clip_seconds(key: str) -> float:
    start, end = (float(value) for value in key_times(key))
    if not end > start:
        raise InputError(f"clip {key}: its name gives no positive length ({start} to {end})")
    return end - start


def evaluate_psds(keys: Sequence[str], frame_probs: Sequence[np.ndarray], truth_events: Sequence[Event],
                  n_smooth: int = DEFAULT_N_SMOOTH, n_salt: int = DEFAULT_N_SALT,
                  frame_step: float = FRAME_STEP_SEC, scenarios: dict[str, PSDSScenario] | None = None,
                  classes: Sequence[str] = CLASSES, clips: Sequence[str] = ()) -> dict:
    """PSDS of CVSSP's post-processed frame probabilities against strong labels, per scenario.

    keys: the clips, exactly those of ``truth_events`` and ``clips`` (clips of the evaluated set
    without any reference event: valid negatives); frame_probs: one ``(T, K)`` array per clip. Returns the settings and, per scenario, its parameters, ``psds`` and the per-class
    areas ``class_wise`` (each class's own PSD-ROC, without the across-class terms).
    """
    scenarios = PSDS_SCENARIOS if scenarios is None else scenarios
    keys = [clip_key(key) for key in keys]
    if len(keys) != len(frame_probs):
        raise InputError(f"{len(keys)} clip names for {len(frame_probs)} frame-probability arrays")
    reference = psds_reference(truth_events)
    for key in clips:
        reference.setdefault(clip_key(key), [])
    check_clip_sets(keys, list(reference))
    labels = class_order({label for events in reference.values() for _, _, label in events})
    if not labels:
        raise InputError("the reference has no event with an extent: PSDS is undefined")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise InputError(f"reference label {unknown[0]!r} is not a class of the predictions")
    columns = [list(classes).index(label) for label in labels]
    sed_scores_eval = _import_sed_scores_eval()
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    scores = {}
    for key, probs in zip(keys, frame_probs):
        probs = check_matrix(probs, len(classes), f"frame probabilities of {key}")
        timestamps = frame_step * np.arange(len(probs) + 1)
        scores[key] = create_score_dataframe(postprocessed_scores(probs, n_smooth, n_salt)[:, columns],
                                             timestamps, labels)
    durations = {key: _clip_seconds(key) for key in keys}
    result = {"metric": "PSDS (sed_scores_eval, exact over all thresholds) of CVSSP's post-processed frame "
                        "probabilities", "n_smooth": n_smooth, "n_salt": n_salt, "frame_step": frame_step,
              "labels": labels, "n_files": len(keys),
              "n_reference_events": sum(len(events) for events in reference.values())}
    for name, scenario in scenarios.items():
        used, note = scenario, None
        if len(labels) < 2 and scenario.alpha_ct:
            used = replace(scenario, cttc_threshold=None, alpha_ct=0.0)
            note = "one class scored: no cross-trigger is possible, so none is counted"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value, per_class, *_ = sed_scores_eval.intersection_based.psds(
                scores=scores, ground_truth=reference, audio_durations=durations, **used.to_dict())
        result[name] = {**scenario.to_dict(), "psds": float(value),
                        "class_wise": {label: float(per_class[label]) for label in labels}}
        if note:
            result[name]["note"] = note
    return result


__all__ = ["PSDSScenario", "PSDS_SCENARIOS", "kept_frames", "postprocessed_scores", "psds_reference",
           "evaluate_psds"]

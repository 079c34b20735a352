"""Scoring prediction files end to end (what ``devinet evaluate at|sed`` runs)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

from devinet.errors import FileFormatError, InputError
from devinet.postprocessing import at_decisions, class_thresholds
from devinet.recipe import DEFAULT_N_SALT, DEFAULT_N_SMOOTH, DEFAULT_THRESHOLD, FRAME_STEP_SEC
from experiments.meta import CLASSES, clip_key, read_listed_clips
from experiments.provenance import versions

from .common import check_clip_sets
from .detection import evaluate_sed, evaluate_sed_events, frames_to_events
from .formats import (AT_PROBABILITIES, SED_PROBABILITIES, SUBMISSION, detect_prediction_format,
                      read_at_probabilities, read_at_submission, read_at_truth, read_sed_probabilities,
                      read_sed_submission, read_sed_truth, write_at_submission, write_sed_submission)
from .psds import evaluate_psds
from .tagging import decisions_to_tags, evaluate_at, evaluate_at_tags, threshold_report


@contextlib.contextmanager
def _problems_of(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a problem of the predictions as a FileFormatError naming their file."""
    try:
        yield
    except InputError as exc:
        raise FileFormatError(path, str(exc)) from None

def tags_from_file(path: str | os.PathLike, keys: Sequence[str],
                   threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                   classes: Sequence[str] = CLASSES) -> dict[str, list[str]]:
    """Tags per clip from an AT probability file (CVSSP's rule) or an AT submission, exactly for ``keys``."""
    kind = detect_prediction_format(path)
    with _problems_of(path):
        if kind == AT_PROBABILITIES:
            pred_keys, probs = read_at_probabilities(path, len(classes))
            tags = decisions_to_tags(at_decisions(probs, threshold), pred_keys, classes)
        elif kind == SUBMISSION:
            tags = read_at_submission(path, classes)
        else:
            raise InputError("frame probabilities (one line per frame) are not audio-tagging predictions")
        check_clip_sets(list(tags), [clip_key(key) for key in keys])
    return tags

def evaluate_at_file(pred_path: str | os.PathLike, truth_path: str | os.PathLike,
                     threshold: float | Sequence[float] = DEFAULT_THRESHOLD, tune: bool = False,
                     submission_out: str | os.PathLike | None = None) -> dict:
    """Score an AT probability file or AT submission against a weak-label file.

    Also writes the decided tags as an AT submission to ``submission_out`` when given.
    """
    truth = read_at_truth(truth_path)
    kind = detect_prediction_format(pred_path)
    with _problems_of(pred_path):
        if kind == AT_PROBABILITIES:
            keys, probs = read_at_probabilities(pred_path)
            result = evaluate_at(probs, keys, truth, threshold, tune=tune)
            tags = decisions_to_tags(at_decisions(probs, threshold), keys)
        elif kind == SUBMISSION:
            if tune:
                raise InputError("a submission has no scores: threshold search needs a probability file")
            tags = read_at_submission(pred_path)
            result = evaluate_at_tags(tags, truth)
        else:
            raise InputError("frame probabilities (one line per frame) given for audio tagging: "
                             "use `evaluate sed`, or an at_prob_mat file")
    if submission_out is not None:
        write_at_submission(submission_out, tags)
    return ({"prediction_format": kind, "pred": os.fspath(pred_path), "truth": os.fspath(truth_path)} | result
            | {"versions": versions(packages=("numpy", "scikit-learn"))})

def evaluate_sed_file(pred_path: str | os.PathLike, truth_path: str | os.PathLike,
                      threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                      n_smooth: int = DEFAULT_N_SMOOTH, n_salt: int = DEFAULT_N_SALT,
                      frame_step: float = FRAME_STEP_SEC, gate_path: str | os.PathLike | None = None,
                      gate_threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                      submission_out: str | os.PathLike | None = None, psds: bool = False) -> dict:
    """Score a frame-probability file (post-processed as CVSSP) or an SED submission against strong labels.

    A probability file must cover exactly the reference's clips (those with events, and those
    listed by name alone: clips without events); a submission may omit clips (no events). ``gate_path`` (AT probabilities or submission) keeps only the events of the
    clip's tagged classes: a different system from CVSSP's, reported as such. Writes the
    events as an SED submission to ``submission_out`` when given. Beside the official
    segment-based result, ``event_based`` holds the event-based metrics and, with ``psds``
    (a probability file, not gated), ``psds`` the PSDS of both DCASE 2021 scenarios.
    """
    if psds and gate_path is not None:
        raise InputError("PSDS scores CVSSP's system over all its thresholds: it cannot be gated by AT decisions")
    truth = read_sed_truth(truth_path)
    files = sorted(read_listed_clips(truth_path))
    gate = tags_from_file(gate_path, files, gate_threshold) if gate_path is not None else None
    kind = detect_prediction_format(pred_path)
    settings: dict = {}
    extra: dict = {}
    with _problems_of(pred_path):
        if kind == SED_PROBABILITIES:
            keys, frame_probs = read_sed_probabilities(pred_path)
            check_clip_sets(keys, files)
            events = [event for key, probs in zip(keys, frame_probs)
                      for event in frames_to_events(probs, key, threshold, n_smooth, n_salt, frame_step,
                                                    labels=None if gate is None else frozenset(gate[key]))]
            settings = {"threshold": threshold_report(class_thresholds(threshold, len(CLASSES)), CLASSES),
                        "n_smooth": n_smooth, "n_salt": n_salt, "frame_step": frame_step}
            extra = ({"psds": evaluate_psds(keys, frame_probs, truth, n_smooth, n_salt, frame_step, clips=files)}
                     if psds else {})
        elif kind == SUBMISSION:
            if psds:
                raise InputError("a submission has no scores: PSDS needs a frame-probability file")
            events = read_sed_submission(pred_path)
            if gate is not None:
                events = [event for event in events if event.label in gate.get(event.key, ())]
        else:
            raise InputError("clip-level probabilities (one line per clip) given for sound event "
                             "detection: use `evaluate at`, or a sed_prob_mat_list file")
        result = evaluate_sed(events, truth, clips=files) | {
            "event_based": evaluate_sed_events(events, truth, clips=files)}
    if submission_out is not None:
        write_sed_submission(submission_out, events, files)
    gating = {"gated_by_at": os.fspath(gate_path) if gate_path is not None else None}
    if gate_path is not None:
        gating["note"] = "events kept only for the clip's tagged classes: not CVSSP's system"
    return ({"prediction_format": kind, "pred": os.fspath(pred_path), "truth": os.fspath(truth_path)}
            | settings | gating | result | extra
            | {"versions": versions(packages=("numpy", "sed_eval", "dcase_util"),
                                    extra=("sed_scores_eval", "pandas") if psds else ())})

"""CVSSP's post-processing: clip tags from clip probabilities, events from frame probabilities.

Audio tagging: a label is on when its probability is above the threshold (0.3), and where no
label is on, the arg-max label is (:func:`at_decisions`). Sound event detection: per class,
frames above the threshold are smoothed (:func:`activity_runs`: gaps bridged, short runs
dropped) and each run becomes an event (:func:`detect_events`). numpy only; the official
metrics that score these decisions live in ``experiments.evaluation``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .errors import InputError
from .recipe import DEFAULT_N_SALT, DEFAULT_N_SMOOTH, DEFAULT_THRESHOLD, FRAME_STEP_SEC


class SoundEvent(NamedTuple):
    """A detected event: onset and offset in seconds from the start of the frames, and its label."""

    onset: float
    offset: float
    label: str


def class_thresholds(threshold: float | Sequence[float], n_classes: int) -> np.ndarray:
    """One threshold per class, shape ``(n_classes,)``, from a number or a sequence; each in [0, 1]."""
    values = np.asarray(threshold, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(n_classes, float(values))
    if values.shape != (n_classes,):
        raise InputError(f"threshold must be a number or {n_classes} numbers, got shape {values.shape}")
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise InputError(f"thresholds must lie in [0, 1], got {values.tolist()}")
    return values


def at_decisions(probs: np.ndarray, threshold: float | Sequence[float] = DEFAULT_THRESHOLD) -> np.ndarray:
    """CVSSP's tagging rule: ``probs > threshold``, and the arg-max label where no label passes.

    probs: ``(N, K)`` probabilities; threshold: one number or ``K``. Returns ``(N, K)`` bool.
    Ties of the arg-max go to the first class (``np.argmax``, as the original).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise InputError(f"probs must have shape (N, K), got {probs.shape}")
    on = probs > class_thresholds(threshold, probs.shape[1])[None, :]
    silent = ~on.any(axis=1)
    on[np.flatnonzero(silent), probs[silent].argmax(axis=1)] = True
    return on


def activity_runs(active: np.ndarray, n_smooth: int = DEFAULT_N_SMOOTH,
                  n_salt: int = DEFAULT_N_SALT) -> list[tuple[int, int]]:
    """CVSSP's smoothing of a frame activity: ``(first, last)`` frame of each kept run (inclusive).

    active: ``(T,)`` bool, a class's ``probs > threshold``. Two active frames ``a < b`` with
    ``b - a <= n_smooth`` are joined (gaps of up to ``n_smooth - 1`` inactive frames are
    bridged), then runs of ``n_salt`` frames or fewer are dropped; both steps in that order, as
    the original ``vad.activity_detection``. A run reaching the clip's end ends on its last
    frame ``T - 1``. Departure from the original: with ``n_salt`` 0 or 1, the original keeps a
    sentinel of its salt-noise pass (a spurious event at a negative frame); it is not produced here.
    """
    if n_smooth < 0 or n_salt < 0:
        raise InputError(f"n_smooth and n_salt must be >= 0, got {n_smooth} and {n_salt}")
    frames = np.flatnonzero(np.asarray(active, dtype=bool).reshape(-1))
    if frames.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(frames) > max(n_smooth, 1))
    firsts = frames[np.r_[0, breaks + 1]]
    lasts = frames[np.r_[breaks, frames.size - 1]]
    keep = lasts - firsts + 1 > n_salt
    return [(int(first), int(last)) for first, last in zip(firsts[keep], lasts[keep])]


def detect_events(frame_probs: np.ndarray, classes: Sequence[str],
                  threshold: float | Sequence[float] = DEFAULT_THRESHOLD, n_smooth: int = DEFAULT_N_SMOOTH,
                  n_salt: int = DEFAULT_N_SALT, frame_step: float = FRAME_STEP_SEC,
                  labels: Sequence[str] | frozenset[str] | None = None) -> list[SoundEvent]:
    """Events from frame probabilities ``(T, K)`` with CVSSP's post-processing.

    Per class: ``probs > threshold``, smoothed by :func:`activity_runs`; an event spans
    ``onset = frame_step * first`` to ``offset = frame_step * last`` (CVSSP's convention: the
    last frame's start, so a run to the clip's end stops at ``frame_step * (T - 1)``, 9.9185 s
    for 240 frames). ``labels``, when given, gates the clip: only those classes give events
    (gating SED by the AT decision is not CVSSP's system). Events are in class, then time order.
    """
    frame_probs = np.asarray(frame_probs, dtype=np.float64)
    if frame_probs.ndim != 2 or frame_probs.shape[1] != len(classes):
        raise InputError(f"frame probabilities must have shape (T, {len(classes)}), got {frame_probs.shape}")
    if not frame_step > 0:
        raise InputError(f"frame_step must be > 0, got {frame_step}")
    thresholds = class_thresholds(threshold, len(classes))
    events = []
    for k, label in enumerate(classes):
        if labels is not None and label not in labels:
            continue
        for first, last in activity_runs(frame_probs[:, k] > thresholds[k], n_smooth, n_salt):
            events.append(SoundEvent(frame_step * first, frame_step * last, label))
    return events


__all__ = ["SoundEvent", "class_thresholds", "at_decisions", "activity_runs", "detect_events"]

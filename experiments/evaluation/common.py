"""Helpers shared by the audio-tagging and event-detection metrics: ratios, F1, means, clip sets."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from devinet.errors import InputError


def check_clip_sets(predicted: Sequence[str], reference: Sequence[str], allow_missing: bool = False) -> None:
    """Refuse duplicated clips, clips absent from the reference and, unless allowed, missing clips."""
    duplicates = sorted(key for key, count in Counter(predicted).items() if count > 1)
    if duplicates:
        raise InputError(f"{len(duplicates)} clip(s) predicted more than once, e.g. {duplicates[0]}")
    seen = set(predicted)
    reference_set = set(reference)
    extra = sorted(seen - reference_set)
    if extra:
        raise InputError(f"{len(extra)} predicted clip(s) are not in the ground truth, e.g. {extra[0]} "
                         f"(predictions for another set?)")
    missing = sorted(reference_set - seen)
    if missing and not allow_missing:
        raise InputError(f"predictions miss {len(missing)} of the {len(reference_set)} clips of the ground "
                         f"truth, e.g. {missing[0]}")

def ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None

def f1(tp: float, fp: float, fn: float) -> float | None:
    """2TP / (2TP + FP + FN), i.e. 2PR/(P+R), and 0 when P or R is 0; None when nothing is scored."""
    return ratio(2 * tp, 2 * tp + fp + fn)

def mean(values: Sequence[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None

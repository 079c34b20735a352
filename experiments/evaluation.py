"""Official DCASE 2017 Task 4 evaluation, CVSSP post-processing and prediction file formats.

Audio tagging (subtask A)
    Micro-averaged precision, recall and F1 over (clip, label) pairs, scored against the weak
    labels, counted as the official scorer of the challenge does: a predicted label found in
    the clip's reference counts once as a true positive, and a second copy of the same pair
    counts as a false positive. Probabilities become tags with CVSSP's rule: a label is on
    when its probability is above the threshold (0.3), and when no label is on the arg-max
    label is. CVSSP's report adds per-class P/R/F, AUC and EER (scikit-learn), and their means.
    A per-class threshold search on the scored set itself is an oracle, and is reported as one.

Sound event detection (subtask B)
    Frame probabilities, shape ``(T, 17)`` with a step of 664/16000 s, become events with
    CVSSP's smoothing (:func:`activity_runs`); events are scored with sed_eval's
    ``SegmentBasedMetrics`` on 1-s segments, over every file of the reference and the
    reference's label list, as the official ``task4_subtaskB_evaluation.py`` does.

File formats
    ``at_prob_mat.csv.gz`` (``name<TAB>17 probabilities``, one line per clip),
    ``sed_prob_mat_list.csv.gz`` (the same, one line per frame, a clip's frames on consecutive
    lines), the AT submission (``name<TAB>start<TAB>end<TAB>label``) and the SED submission
    (``name<TAB>onset<TAB>offset<TAB>label``); in both submissions a line holding a name alone
    lists a clip without predictions. Probability files may be gzip-compressed (recognised by
    content); clip names match with or without the leading 'Y' and the '.wav' suffix.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import warnings
import zlib
from collections import Counter
from typing import Iterator, Mapping, Sequence

import numpy as np

from devinet._io import atomic_path
from devinet.errors import FileFormatError, InputError, MissingDependencyError
from experiments.meta import CLASSES, Event, clip_key, is_number, read_strong_labels, read_weak_labels

#: Hop of the CVSSP features: 664 samples at 16 kHz (1024-sample window, 360 overlap) = 0.0415 s.
FRAME_STEP_SEC: float = 664 / 16000
#: CVSSP's decision threshold, the same for every class (AT tags and SED frames).
DEFAULT_THRESHOLD: float = 0.3
#: CVSSP's smoothing: bridge gaps of up to this many frames (difference of frame indices).
DEFAULT_N_SMOOTH: int = 10
#: CVSSP's smoothing: drop runs of this many frames or fewer.
DEFAULT_N_SALT: int = 10
#: Segment length of the official SED metric, in seconds.
SEGMENT_SEC: float = 1.0
#: Grid of the oracle per-class threshold search (CVSSP's 'auto' thresholds: 0, 0.01, ..., 1).
ORACLE_THRESHOLD_GRID: np.ndarray = np.round(np.arange(0.0, 1.0 + 1e-9, 0.01), 2)

#: Kinds of prediction file that :func:`detect_prediction_format` recognises.
AT_PROBABILITIES = "at_probabilities"
SED_PROBABILITIES = "sed_probabilities"
SUBMISSION = "submission"

_GZIP_MAGIC = b"\x1f\x8b"
_ORACLE_NOTE = ("per-class thresholds tuned on the scored set itself: an oracle upper bound, "
                "not a valid test result")


# --------------------------------------------------------------------------------------------
# Reading and writing prediction files
# --------------------------------------------------------------------------------------------

def _iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of the data lines of a plain or gzip text file (blank and ``#`` lines skipped)."""
    try:
        with open(path, "rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            for line_no, line in enumerate(handle, start=1):
                text = line.rstrip("\r\n")
                if text.strip() and not text.lstrip().startswith("#"):
                    yield line_no, text
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise FileFormatError(path, "is a directory, expected a prediction file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise FileFormatError(path, f"corrupt gzip file ({exc or 'truncated'})") from None
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _is_gzip(path: str | os.PathLike) -> bool:
    with contextlib.suppress(OSError):
        with open(path, "rb") as probe:
            return probe.read(2) == _GZIP_MAGIC
    return False


def detect_prediction_format(path: str | os.PathLike) -> str:
    """Recognise a prediction file by its content.

    Returns :data:`AT_PROBABILITIES` (one line of probabilities per clip),
    :data:`SED_PROBABILITIES` (the first clip's name repeats on the following lines: one line
    per frame) or :data:`SUBMISSION` (``name<TAB>t<TAB>t<TAB>label`` rows or bare names; an
    empty file is an empty submission). Anything else is a :class:`FileFormatError`.
    """
    first: list[str] | None = None
    for line_no, text in _iter_lines(path):
        fields = text.split("\t")
        if first is None:
            if len(fields) >= 2 and all(is_number(value) for value in fields[1:]):
                first = fields
                continue
            if len(fields) == 1 or (len(fields) == 4 and is_number(fields[1]) and is_number(fields[2])):
                if _is_gzip(path):
                    raise FileFormatError(path, "gzip-compressed submission: submissions are plain text files")
                return SUBMISSION
            raise FileFormatError(
                path, f"line {line_no}: not a prediction file: expected name<TAB>probabilities "
                      f"(CVSSP probability file) or name<TAB>onset<TAB>offset<TAB>label (submission), "
                      f"got {len(fields)} TAB-separated fields")
        return SED_PROBABILITIES if fields[0] == first[0] else AT_PROBABILITIES
    return SUBMISSION if first is None else AT_PROBABILITIES


def _parse_probability_rows(path: str | os.PathLike, n_classes: int) -> tuple[list[str], list[int], np.ndarray]:
    """Keys, line numbers and values, shape ``(L, n_classes)`` float64, of a probability file."""
    keys: list[str] = []
    line_numbers: list[int] = []
    rows: list[str] = []
    canonical: dict[str, str] = {}
    for line_no, text in _iter_lines(path):
        name, _, values = text.partition("\t")
        n_values = values.count("\t") + 1 if values else 0
        if n_values != n_classes:
            raise FileFormatError(path, f"line {line_no}: expected a name and {n_classes} probabilities "
                                        f"(one per class), got {n_values} values")
        key = canonical.get(name)
        if key is None:  # a clip's frames share one name: parse each name once
            try:
                key = canonical[name] = clip_key(name)
            except InputError as exc:
                raise FileFormatError(path, f"line {line_no}: {exc}") from None
        keys.append(key)
        line_numbers.append(line_no)
        rows.append(values)
    if not rows:
        raise FileFormatError(path, "no predictions in the file")
    try:
        values = np.loadtxt(io.StringIO("\n".join(rows)), delimiter="\t", dtype=np.float64, ndmin=2,
                            comments=None)
    except ValueError:
        for line_no, row in zip(line_numbers, rows):
            bad = next((value for value in row.split("\t") if not is_number(value)), None)
            if bad is not None:
                raise FileFormatError(path, f"line {line_no}: {bad!r} is not a number") from None
        raise
    outside = ~((values >= 0.0) & (values <= 1.0))  # also catches NaN
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise FileFormatError(path, f"line {line_numbers[row]}: probability {values[row, column]!r} "
                                    f"of class {column + 1} is outside [0, 1]")
    return keys, line_numbers, values


def read_at_probabilities(path: str | os.PathLike, n_classes: int = len(CLASSES)) -> tuple[list[str], np.ndarray]:
    """Read an ``at_prob_mat.csv(.gz)`` file: clip keys (file order) and probabilities ``(N, n_classes)``."""
    keys, line_numbers, values = _parse_probability_rows(path, n_classes)
    seen: dict[str, int] = {}
    for key, line_no in zip(keys, line_numbers):
        if key in seen:
            raise FileFormatError(path, f"line {line_no}: clip {key} already listed on line {seen[key]} "
                                        f"(a frame-probability file given as audio-tagging predictions?)")
        seen[key] = line_no
    return keys, values


def read_sed_probabilities(path: str | os.PathLike,
                           n_classes: int = len(CLASSES)) -> tuple[list[str], list[np.ndarray]]:
    """Read a ``sed_prob_mat_list.csv(.gz)`` file: clip keys and per-clip frame probabilities ``(T, n_classes)``.

    A clip's frames are its consecutive lines, in time order (CVSSP writes 240 per clip).
    """
    keys, line_numbers, values = _parse_probability_rows(path, n_classes)
    starts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    clip_keys: list[str] = []
    first_line: dict[str, int] = {}
    for start in starts:
        key = keys[start]
        if key in first_line:
            raise FileFormatError(path, f"line {line_numbers[start]}: frames of clip {key} resume after "
                                        f"other clips (its block started on line {first_line[key]}); "
                                        f"a clip's frames must be on consecutive lines")
        first_line[key] = line_numbers[start]
        clip_keys.append(key)
    blocks = np.split(values, starts[1:])
    return clip_keys, blocks


def _format_probability(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


@contextlib.contextmanager
def _open_output(path: str | os.PathLike) -> Iterator:
    """Text handle onto a temporary file that replaces ``path`` on success; gzip if it ends in ``.gz``."""
    with atomic_path(path) as tmp:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8", newline="") as handle:
            yield handle


def _check_matrix(probs: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise InputError(f"{what} must have shape (n, {n_classes}), got {probs.shape}")
    if not np.all((probs >= 0.0) & (probs <= 1.0)):
        raise InputError(f"{what} must hold probabilities in [0, 1]")
    return probs


def write_at_probabilities(path: str | os.PathLike, keys: Sequence[str], probs: np.ndarray,
                           decimals: int = 6) -> None:
    """Write an ``at_prob_mat.csv(.gz)`` file: ``<key>.wav<TAB>p1<TAB>...<TAB>p17`` per clip, atomically.

    CVSSP wrote 3 decimals; 6 keep decisions at the threshold stable.
    """
    probs = _check_matrix(probs, len(CLASSES), "probs")
    if len(keys) != len(probs):
        raise InputError(f"{len(keys)} keys for {len(probs)} rows of probabilities")
    with _open_output(path) as handle:
        for key, row in zip(keys, probs):
            handle.write(f"{clip_key(key)}.wav\t" + "\t".join(_format_probability(p, decimals) for p in row) + "\n")


def write_sed_probabilities(path: str | os.PathLike, keys: Sequence[str], frame_probs: Sequence[np.ndarray],
                            decimals: int = 6) -> None:
    """Write a ``sed_prob_mat_list.csv(.gz)`` file: one line per frame, ``(T, 17)`` per clip, atomically."""
    if len(keys) != len(frame_probs):
        raise InputError(f"{len(keys)} keys for {len(frame_probs)} frame-probability matrices")
    with _open_output(path) as handle:
        for key, probs in zip(keys, frame_probs):
            name = f"{clip_key(key)}.wav"
            for row in _check_matrix(probs, len(CLASSES), f"frame probabilities of {key}"):
                handle.write(name + "\t" + "\t".join(_format_probability(p, decimals) for p in row) + "\n")


def read_at_submission(path: str | os.PathLike, classes: Sequence[str] = CLASSES) -> dict[str, list[str]]:
    """Read an AT submission: clip key -> predicted labels, duplicates kept (they are scored).

    A line with the name alone lists a clip with no label. Start and end times are not scored.
    """
    known = set(classes)
    tags: dict[str, list[str]] = {}
    for line_no, text in _iter_lines(path):
        fields = text.split("\t")
        try:
            key = clip_key(fields[0])
        except InputError as exc:
            raise FileFormatError(path, f"line {line_no}: {exc}") from None
        labels = tags.setdefault(key, [])
        if len(fields) == 1:
            continue
        if len(fields) != 4 or not (is_number(fields[1]) and is_number(fields[2])):
            raise FileFormatError(path, f"line {line_no}: expected name<TAB>start<TAB>end<TAB>label")
        label = fields[3].strip()
        if label not in known:
            raise FileFormatError(path, f"line {line_no}: unknown label {label!r}")
        labels.append(label)
    return tags


def read_sed_submission(path: str | os.PathLike, classes: Sequence[str] = CLASSES) -> list[Event]:
    """Read an SED submission into events (``name<TAB>onset<TAB>offset<TAB>label``; bare names give none)."""
    events = read_strong_labels(path)
    _check_event_labels(path, events, classes)
    return events


def _key_times(key: str) -> tuple[str, str]:
    """The start and end of a clip key as written in it, e.g. ``('30.000', '40.000')``."""
    _, start, end = key.rsplit("_", 2)
    return start, end


def write_at_submission(path: str | os.PathLike, tags: Mapping[str, Sequence[str]]) -> None:
    """Write an AT submission in the weak-label format, atomically.

    One ``<key>.wav<TAB>start<TAB>end<TAB>label`` row per predicted label (start/end of the clip
    in its video, as in the ground truth); a clip without labels gets a line with its name alone,
    so that the file still lists it.
    """
    with _open_output(path) as handle:
        for key, labels in tags.items():
            key = clip_key(key)
            start, end = _key_times(key)
            if not labels:
                handle.write(f"{key}.wav\n")
            for label in labels:
                handle.write(f"{key}.wav\t{start}\t{end}\t{label}\n")


def _format_seconds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def write_sed_submission(path: str | os.PathLike, events: Sequence[Event], keys: Sequence[str] = ()) -> None:
    """Write an SED submission, atomically.

    One ``<key>.wav<TAB>onset<TAB>offset<TAB>label`` row per event, then a line with the name
    alone for each clip of ``keys`` without events (as CVSSP's writer), so the file lists it.
    """
    with_events = {clip_key(event.key) for event in events}
    with _open_output(path) as handle:
        for event in events:
            handle.write(f"{clip_key(event.key)}.wav\t{_format_seconds(event.onset)}\t"
                         f"{_format_seconds(event.offset)}\t{event.label}\n")
        for key in keys:
            if clip_key(key) not in with_events:
                handle.write(f"{clip_key(key)}.wav\n")


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------

def _check_event_labels(path, events: Sequence[Event], classes: Sequence[str]) -> None:
    known = set(classes)
    for event in events:
        if event.label not in known:
            raise FileFormatError(path, f"clip {event.key}: unknown label {event.label!r}")


def read_at_truth(path: str | os.PathLike, classes: Sequence[str] = CLASSES) -> dict[str, frozenset[str]]:
    """Read a weak-label ground truth (``groundtruth_weak_label_*.csv``): clip key -> labels."""
    truth = read_weak_labels(path)
    if not truth:
        raise FileFormatError(path, "no clips in the ground truth")
    known = set(classes)
    for key, labels in truth.items():
        unknown = sorted(labels - known)
        if unknown:
            raise FileFormatError(path, f"clip {key}: unknown label {unknown[0]!r}")
    return truth


def read_sed_truth(path: str | os.PathLike, classes: Sequence[str] = CLASSES) -> list[Event]:
    """Read a strong-label ground truth (``groundtruth_strong_label_*.csv``) into events.

    Rows with onset = offset = 0 ("tagged but not heard") are kept: they put their clip and
    label in the evaluation without marking any segment active. An event ending after the
    clip's duration (taken from its key) is refused: it is the sign of a weak-label file.
    """
    events = read_strong_labels(path)
    if not events:
        raise FileFormatError(path, "no events in the ground truth")
    _check_event_labels(path, events, classes)
    for event in events:
        start, end = _key_times(event.key)
        duration = float(end) - float(start)
        if event.offset > duration + 1e-6:
            raise FileFormatError(path, f"clip {event.key}: event {event.label!r} ends at {event.offset} s, "
                                        f"after the clip's {duration:g} s (a weak-label file given as "
                                        f"strong labels?)")
    return events


# --------------------------------------------------------------------------------------------
# Audio tagging
# --------------------------------------------------------------------------------------------

def _thresholds(threshold: float | Sequence[float], n_classes: int) -> np.ndarray:
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
    on = probs > _thresholds(threshold, probs.shape[1])[None, :]
    silent = ~on.any(axis=1)
    on[np.flatnonzero(silent), probs[silent].argmax(axis=1)] = True
    return on


def decisions_to_tags(decisions: np.ndarray, keys: Sequence[str],
                      classes: Sequence[str] = CLASSES) -> dict[str, list[str]]:
    """Tags per clip, in class order, from ``(N, K)`` boolean decisions."""
    decisions = np.asarray(decisions, dtype=bool)
    if decisions.shape != (len(keys), len(classes)):
        raise InputError(f"decisions must have shape ({len(keys)}, {len(classes)}), got {decisions.shape}")
    return {key: [classes[k] for k in np.flatnonzero(row)] for key, row in zip(keys, decisions)}


def _check_clip_sets(predicted: Sequence[str], reference: Sequence[str], allow_missing: bool = False) -> None:
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


def _canonical_truth(truth: Mapping[str, frozenset[str] | set[str] | Sequence[str]]) -> dict[str, frozenset[str]]:
    return {clip_key(key): frozenset(labels) for key, labels in truth.items()}


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _f1(tp: float, fp: float, fn: float) -> float | None:
    """2TP / (2TP + FP + FN), i.e. 2PR/(P+R), and 0 when P or R is 0; None when nothing is scored."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


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
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _f1(tp, fp, fn),
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
        "macro": {name: _mean([row[name] for row in class_wise.values()]) for name in ("precision", "recall", "f1")},
    }


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
    """Per-class ROC AUC and EER (scikit-learn) of ``(N, K)`` scores against ``(N, K)`` 0/1 targets."""
    from sklearn.metrics import roc_auc_score

    result = {}
    for k, label in enumerate(classes):
        column = targets[:, k].astype(bool)
        defined = column.any() and not column.all()
        result[label] = {
            "auc": float(roc_auc_score(column, probs[:, k])) if defined else None,
            "eer": equal_error_rate(probs[:, k], column),
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
    P/R/F1/AUC/EER, their ``macro`` means, and with ``tune`` an ``oracle_thresholds`` section.
    """
    probs = _check_matrix(probs, len(classes), "probs")
    keys = [clip_key(key) for key in keys]
    if len(keys) != len(probs):
        raise InputError(f"{len(keys)} keys for {len(probs)} rows of probabilities")
    truth = _canonical_truth(truth)
    _check_clip_sets(keys, list(truth))
    thresholds = _thresholds(threshold, len(classes))
    result = {"task": "audio_tagging", "threshold": _threshold_report(thresholds, classes)}
    result |= score_tags(decisions_to_tags(at_decisions(probs, thresholds), keys, classes), truth, classes)
    targets = _truth_matrix(keys, truth, classes)
    for label, ranking in ranking_metrics(probs, targets, classes).items():
        result["class_wise"][label] |= ranking
    for name in ("auc", "eer"):
        result["macro"][name] = _mean([row[name] for row in result["class_wise"].values()])
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


def _threshold_report(thresholds: np.ndarray, classes: Sequence[str]) -> float | dict[str, float]:
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
    _check_clip_sets(list(tags), list(truth))
    return {"task": "audio_tagging", "threshold": None} | score_tags(tags, truth, classes)


# --------------------------------------------------------------------------------------------
# Sound event detection
# --------------------------------------------------------------------------------------------

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
    frame_probs = _check_matrix(frame_probs, len(classes), f"frame probabilities of {key}")
    if not frame_step > 0:
        raise InputError(f"frame_step must be > 0, got {frame_step}")
    thresholds = _thresholds(threshold, len(classes))
    key = clip_key(key)
    events = []
    for k, label in enumerate(classes):
        if labels is not None and label not in labels:
            continue
        for first, last in activity_runs(frame_probs[:, k] > thresholds[k], n_smooth, n_salt):
            events.append(Event(key, frame_step * first, frame_step * last, label))
    return events


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
    _check_clip_sets(sorted({event.key for event in events}), files, allow_missing=True)
    scorable = [event for event in events if event.label in labels]

    by_file: dict[str, tuple[list[Event], list[Event]]] = {key: ([], []) for key in files}
    for event in truth_events:
        by_file[event.key][0].append(event)
    for event in scorable:
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
        overall = metrics.results_overall_metrics()

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
                      _f1(counts["Ntp"], counts["Nsys"] - counts["Ntp"], counts["Nref"] - counts["Ntp"])),
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
        "class_wise": {label: _class_wise_sed(metrics.class_wise[label]) for label in _class_order(labels)},
    }
    result["class_wise_average"] = {
        name: _mean([row[name] for row in result["class_wise"].values()])
        for name in ("error_rate", "deletion_rate", "insertion_rate", "f1", "precision", "recall")
    }
    return result


def _finite(value: float, fallback: float | None = None) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else fallback


def _class_order(labels: Sequence[str]) -> list[str]:
    """Labels in the official class order (others after them, alphabetically), for reports."""
    rank = {label: k for k, label in enumerate(CLASSES)}
    return sorted(labels, key=lambda label: (rank.get(label, len(rank)), label))


def _class_wise_sed(counts: Mapping[str, float]) -> dict:
    """A class's segment metrics from sed_eval's counts (its own formulas, None where it would divide by 0)."""
    tp, fp, fn = (int(round(float(counts[name]))) for name in ("Ntp", "Nfp", "Nfn"))
    n_ref, n_sys = int(round(float(counts["Nref"]))), int(round(float(counts["Nsys"])))
    return {
        "error_rate": _ratio(fn + fp, n_ref),
        "deletion_rate": _ratio(fn, n_ref),
        "insertion_rate": _ratio(fp, n_ref),
        "f1": _f1(tp, fp, fn),
        "precision": _ratio(tp, n_sys),
        "recall": _ratio(tp, n_ref),
        "n_ref": n_ref, "n_sys": n_sys, "n_tp": tp,
    }


# --------------------------------------------------------------------------------------------
# Files end to end (what `devinet evaluate` runs)
# --------------------------------------------------------------------------------------------

def _versions(*packages: str) -> dict[str, str]:
    """Versions of devinet and the packages that computed a result, recorded beside it."""
    from importlib.metadata import PackageNotFoundError, version

    import devinet

    found = {"devinet": devinet.__version__}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


@contextlib.contextmanager
def _about(path: str | os.PathLike) -> Iterator[None]:
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
    with _about(path):
        if kind == AT_PROBABILITIES:
            pred_keys, probs = read_at_probabilities(path, len(classes))
            tags = decisions_to_tags(at_decisions(probs, threshold), pred_keys, classes)
        elif kind == SUBMISSION:
            tags = read_at_submission(path, classes)
        else:
            raise InputError("frame probabilities (one line per frame) are not audio-tagging predictions")
        _check_clip_sets(list(tags), [clip_key(key) for key in keys])
    return tags


def evaluate_at_file(pred_path: str | os.PathLike, truth_path: str | os.PathLike,
                     threshold: float | Sequence[float] = DEFAULT_THRESHOLD, tune: bool = False,
                     submission_out: str | os.PathLike | None = None) -> dict:
    """Score an AT probability file or AT submission against a weak-label file.

    Also writes the decided tags as an AT submission to ``submission_out`` when given.
    """
    truth = read_at_truth(truth_path)
    kind = detect_prediction_format(pred_path)
    with _about(pred_path):
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
            | {"versions": _versions("numpy", "scikit-learn")})


def evaluate_sed_file(pred_path: str | os.PathLike, truth_path: str | os.PathLike,
                      threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                      n_smooth: int = DEFAULT_N_SMOOTH, n_salt: int = DEFAULT_N_SALT,
                      frame_step: float = FRAME_STEP_SEC, gate_path: str | os.PathLike | None = None,
                      gate_threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                      submission_out: str | os.PathLike | None = None) -> dict:
    """Score a frame-probability file (post-processed as CVSSP) or an SED submission against strong labels.

    A probability file must cover exactly the reference's clips; a submission may omit clips
    (no events). ``gate_path`` (AT probabilities or submission) keeps only the events of the
    clip's tagged classes: a different system from CVSSP's, reported as such. Writes the
    events as an SED submission to ``submission_out`` when given.
    """
    truth = read_sed_truth(truth_path)
    files = sorted({event.key for event in truth})
    gate = tags_from_file(gate_path, files, gate_threshold) if gate_path is not None else None
    kind = detect_prediction_format(pred_path)
    settings: dict = {}
    with _about(pred_path):
        if kind == SED_PROBABILITIES:
            keys, frame_probs = read_sed_probabilities(pred_path)
            _check_clip_sets(keys, files)
            events = [event for key, probs in zip(keys, frame_probs)
                      for event in frames_to_events(probs, key, threshold, n_smooth, n_salt, frame_step,
                                                    labels=None if gate is None else frozenset(gate[key]))]
            settings = {"threshold": _threshold_report(_thresholds(threshold, len(CLASSES)), CLASSES),
                        "n_smooth": n_smooth, "n_salt": n_salt, "frame_step": frame_step}
        elif kind == SUBMISSION:
            events = read_sed_submission(pred_path)
            if gate is not None:
                events = [event for event in events if event.label in gate.get(event.key, ())]
        else:
            raise InputError("clip-level probabilities (one line per clip) given for sound event "
                             "detection: use `evaluate at`, or a sed_prob_mat_list file")
        result = evaluate_sed(events, truth)
    if submission_out is not None:
        write_sed_submission(submission_out, events, files)
    gating = {"gated_by_at": os.fspath(gate_path) if gate_path is not None else None}
    if gate_path is not None:
        gating["note"] = "events kept only for the clip's tagged classes: not CVSSP's system"
    return ({"prediction_format": kind, "pred": os.fspath(pred_path), "truth": os.fspath(truth_path)}
            | settings | gating | result | {"versions": _versions("numpy", "sed_eval", "dcase_util")})


__all__ = [
    "FRAME_STEP_SEC", "DEFAULT_THRESHOLD", "DEFAULT_N_SMOOTH", "DEFAULT_N_SALT", "SEGMENT_SEC",
    "AT_PROBABILITIES", "SED_PROBABILITIES", "SUBMISSION",
    "detect_prediction_format", "read_at_probabilities", "write_at_probabilities",
    "read_sed_probabilities", "write_sed_probabilities", "read_at_submission", "write_at_submission",
    "read_sed_submission", "write_sed_submission", "read_at_truth", "read_sed_truth",
    "at_decisions", "decisions_to_tags", "count_tag_pairs", "score_tags", "equal_error_rate",
    "ranking_metrics", "tune_thresholds", "evaluate_at", "evaluate_at_tags",
    "activity_runs", "frames_to_events", "evaluate_sed",
    "tags_from_file", "evaluate_at_file", "evaluate_sed_file",
]

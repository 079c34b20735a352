"""DCASE 2017 Task 4 prediction and ground-truth files: reading, writing, recognising.

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
import os
from typing import Iterator, Mapping, Sequence

import numpy as np

from devinet._io import atomic_path
from devinet.errors import FileFormatError, InputError
from devinet.limits import MAX_CLIP_SECONDS
from devinet.submission import write_submission
from experiments.meta import (CLASSES, Event, clip_key, is_gzip, is_number, read_strong_labels, read_weak_labels,
                              text_lines)


#: Kinds of prediction file that :func:`detect_prediction_format` recognises.
AT_PROBABILITIES = "at_probabilities"

SED_PROBABILITIES = "sed_probabilities"

SUBMISSION = "submission"


def _iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of the data lines of a plain or gzip text file (blank and ``#`` lines skipped)."""
    for line_no, text in text_lines(path, gzipped=is_gzip(path)):
        if text.strip() and not text.lstrip().startswith("#"):
            yield line_no, text

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
            if len(fields) >= 2 and all(is_number(value, finite=False) for value in fields[1:]):
                first = fields
                continue
            if len(fields) == 1 or (len(fields) == 4 and is_number(fields[1]) and is_number(fields[2])):
                if is_gzip(path):
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
            bad = next((value for value in row.split("\t") if not is_number(value, finite=False)), None)
            if bad is not None:
                raise FileFormatError(path, f"line {line_no}: {bad!r} is not a number") from None
        raise
    outside = ~((values >= 0.0) & (values <= 1.0))  # also catches NaN
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise FileFormatError(path, f"line {line_numbers[row]}: probability {float(values[row, column])!r} "
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

def check_matrix(probs: np.ndarray, n_classes: int, what: str) -> np.ndarray:
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
    probs = check_matrix(probs, len(CLASSES), "probs")
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
            for row in check_matrix(probs, len(CLASSES), f"frame probabilities of {key}"):
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
    """Read an SED submission into events (``name<TAB>onset<TAB>offset<TAB>label``; bare names give none).

    An event ending after its clip (duration from the clip's name) is refused.
    """
    events = read_strong_labels(path)
    _check_event_labels(path, events, classes)
    _check_within_clips(path, events, "")
    return events

def key_times(key: str) -> tuple[str, str]:
    """The start and end of a clip key as written in it, e.g. ``('30.000', '40.000')``."""
    _, start, end = key.rsplit("_", 2)
    return start, end

def write_at_submission(path: str | os.PathLike, tags: Mapping[str, Sequence[str]]) -> None:
    """Write an AT submission in the weak-label format, atomically (:func:`devinet.submission.write_submission`).

    One ``<key>.wav<TAB>start<TAB>end<TAB>label`` row per predicted label (start/end of the clip
    in its video, as in the ground truth); a clip without labels gets a line with its name alone,
    so that the file still lists it.
    """
    names = {key: f"{clip_key(key)}.wav" for key in tags}
    rows = [(names[key], *key_times(clip_key(key)), label) for key, labels in tags.items() for label in labels]
    write_submission(path, rows, listed=list(names.values()))

def write_sed_submission(path: str | os.PathLike, events: Sequence[Event], keys: Sequence[str] = ()) -> None:
    """Write an SED submission, atomically (:func:`devinet.submission.write_submission`).

    One ``<key>.wav<TAB>onset<TAB>offset<TAB>label`` row per event, then a line with the name
    alone for each clip of ``keys`` without events (as CVSSP's writer), so the file lists it.
    """
    rows = [(f"{clip_key(event.key)}.wav", event.onset, event.offset, event.label) for event in events]
    write_submission(path, rows, listed=[f"{clip_key(key)}.wav" for key in keys])

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
    _check_within_clips(path, events, " (a weak-label file given as strong labels?)")
    return events


def _check_within_clips(path, events: Sequence[Event], hint: str) -> None:
    """Refuse an event that ends after its clip: the clip's duration is ``end - start`` of its name,
    and no clip is longer than :data:`devinet.limits.MAX_CLIP_SECONDS`."""
    for event in events:
        start, end = key_times(event.key)
        duration = min(float(end) - float(start), MAX_CLIP_SECONDS)
        if event.offset > duration + 1e-6:
            raise FileFormatError(path, f"clip {event.key}: event {event.label!r} ends at {event.offset:g} s, "
                                        f"after the clip's {duration:g} s{hint}")

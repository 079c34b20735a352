"""Readers for the official DCASE 2017 Task 4 metadata.

Files (see docs/evaluation.md): the clip lists ``training_set.csv`` / ``testing_set.csv``
(``youtube_id,start,end,"label,label","mid,mid"``), the weak ground truth
``groundtruth_weak_label_*.csv`` (``name<TAB>start<TAB>end<TAB>label``, one row per
(clip, label) pair) and the strong ground truth ``groundtruth_strong_label_*.csv``
(``name<TAB>onset<TAB>offset<TAB>label``). The same readers accept the AT and SED
submission files, which share those formats.

All readers tolerate CRLF line ends, a UTF-8 byte-order mark, blank lines and ``#``
comment lines, and report a malformed row as one :class:`FileFormatError` naming the file
and the line number. Every clip is identified by its canonical key
``<youtube_id>_<start>_<end>`` (start and end as written in the file, e.g. ``30.000``).
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from devinet.errors import FileFormatError, InputError
from devinet.limits import MAX_LINE_CHARS
from devinet.recipe import DCASE2017_CLASSES

#: The 17 labels in the official order (the order of the original CVSSP config).
CLASSES: tuple[str, ...] = DCASE2017_CLASSES

_YOUTUBE_ID_LENGTH = 11
# In the clip lists, labels are joined by a bare comma while two labels contain ", "
# ("Air horn, truck horn"): split only on commas not followed by a space.
_LABEL_SEPARATOR = re.compile(r",(?! )")
# Header words of the submission/ground-truth formats written by other tools.
_HEADER_FIELDS = {"filename", "file", "name", "audio_file", "youtube_id", "ytid"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ClipEntry:
    """One row of a clip list: a 10-s AudioSet excerpt and its weak labels (file order)."""

    key: str
    youtube_id: str
    start: float
    end: float
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Event:
    """One row of a strong-label file; ``onset == offset == 0`` means "tagged but not heard"."""

    key: str
    onset: float
    offset: float
    label: str


def clip_key(name: str) -> str:
    """Canonical key ``<youtube_id>_<start>_<end>`` of a clip name.

    Accepts ``Y<id>_<s>_<e>.wav``, ``<id>_<s>_<e>.wav``, ``<id>_<s>_<e>`` and
    ``Y<id>_<s>_<e>`` (with or without a folder). YouTube ids are 11 characters and may
    themselves start with 'Y' or contain '_', so the id is everything before the last two
    underscores and a leading 'Y' is stripped only from a 12-character id part.
    """
    base = os.path.basename(str(name).strip())
    if base.lower().endswith(".wav"):
        base = base[:-4]
    parts = base.rsplit("_", 2)
    if len(parts) != 3 or not parts[0]:
        raise InputError(f"clip name {name!r} is not of the form [Y]<youtube_id>_<start>_<end>[.wav]")
    youtube_id, start, end = parts
    for value in (start, end):
        if not is_number(value):
            raise InputError(f"clip name {name!r}: {value!r} is not a time in seconds")
    if len(youtube_id) == _YOUTUBE_ID_LENGTH + 1 and youtube_id.startswith("Y"):
        youtube_id = youtube_id[1:]
    return f"{youtube_id}_{start}_{end}"


def wav_name(key: str) -> str:
    """The audio file name of a clip key, as the DCASE 2017 download names it: ``Y<key>.wav``."""
    return f"Y{key}.wav"


def read_clip_list(path: str | os.PathLike) -> list[ClipEntry]:
    """Read ``training_set.csv`` / ``testing_set.csv`` into entries, in file order."""
    entries: list[ClipEntry] = []
    seen: dict[str, int] = {}
    for line_no, row in _csv_rows(path):
        if line_no == 1 and row[0].strip().lstrip("# ").lower() in _HEADER_FIELDS:
            continue
        if len(row) != 5:
            raise FileFormatError(path, f"line {line_no}: expected 5 comma-separated fields "
                                        f"(youtube_id,start,end,labels,mids), got {len(row)}")
        youtube_id, start, end, labels_field, mids_field = (field.strip() for field in row)
        if not youtube_id or not is_number(start) or not is_number(end):
            raise FileFormatError(path, f"line {line_no}: bad youtube_id/start/end {row[:3]!r}")
        labels = tuple(label.strip() for label in _LABEL_SEPARATOR.split(labels_field) if label.strip())
        mids = [mid for mid in mids_field.split(",") if mid.strip()]
        if not labels or len(labels) != len(mids):
            raise FileFormatError(path, f"line {line_no}: {len(labels)} labels {labels!r} "
                                        f"but {len(mids)} label ids {mids_field!r}")
        key = f"{youtube_id}_{start}_{end}"
        if key in seen:
            raise FileFormatError(path, f"line {line_no}: clip {key} already listed on line {seen[key]}")
        seen[key] = line_no
        entries.append(ClipEntry(key, youtube_id, float(start), float(end), labels))
    return entries


def read_weak_labels(path: str | os.PathLike) -> dict[str, frozenset[str]]:
    """Read a weak-label file (or an AT submission): clip key -> set of labels.

    Rows are ``name<TAB>start<TAB>end<TAB>label``; a row with the name alone lists a clip
    without labels (allowed in submissions). Keys keep the file's order of first appearance.
    """
    labels: dict[str, set[str]] = {}
    for line_no, fields in _tsv_rows(path):
        key = _key_of(path, line_no, fields[0])
        if len(fields) == 1:
            labels.setdefault(key, set())
            continue
        if len(fields) != 4:
            raise FileFormatError(path, f"line {line_no}: expected name<TAB>start<TAB>end<TAB>label, "
                                        f"got {len(fields)} fields")
        _times(path, line_no, fields[1], fields[2], "start", "end")
        label = fields[3].strip()
        if not label:
            raise FileFormatError(path, f"line {line_no}: empty label")
        labels.setdefault(key, set()).add(label)
    return {key: frozenset(values) for key, values in labels.items()}


def read_strong_labels(path: str | os.PathLike) -> list[Event]:
    """Read a strong-label file (or an SED submission) into events, in file order.

    Rows are ``name<TAB>onset<TAB>offset<TAB>label``; rows with onset = offset = 0 ("tagged
    but not heard") are kept. A row with the name alone (a clip without events, allowed in
    submissions) yields no event.
    """
    events: list[Event] = []
    for line_no, fields in _tsv_rows(path):
        key = _key_of(path, line_no, fields[0])
        if len(fields) == 1:
            continue
        if len(fields) != 4:
            raise FileFormatError(path, f"line {line_no}: expected name<TAB>onset<TAB>offset<TAB>label, "
                                        f"got {len(fields)} fields")
        onset, offset = _times(path, line_no, fields[1], fields[2], "onset", "offset")
        label = fields[3].strip()
        if not label:
            raise FileFormatError(path, f"line {line_no}: empty label")
        events.append(Event(key, onset, offset, label))
    return events


def read_listed_clips(path: str | os.PathLike) -> list[str]:
    """Keys of every clip a TAB-separated label file lists, with labels or events or by its name
    alone (a clip without any: a valid negative), in the order of first appearance."""
    keys: dict[str, None] = {}
    for line_no, fields in _tsv_rows(path):
        keys.setdefault(_key_of(path, line_no, fields[0]), None)
    return list(keys)


def read_clip_labels(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Clip key -> labels from either a clip list (comma-separated) or a weak-label file (TAB).

    The format is recognised from the first data line: a TAB, or a name alone (no comma: a
    clip without labels), means a weak-label file. Weak labels are returned in the official
    class order, clip-list labels in file order.
    """
    first = next((line for _, line in text_lines(path) if line.strip() and not line.startswith("#")), None)
    if first is None:
        raise FileFormatError(path, "no clips listed")
    if "\t" in first or "," not in first:
        order = {label: index for index, label in enumerate(CLASSES)}
        return {key: tuple(sorted(labels, key=lambda label: (order.get(label, len(order)), label)))
                for key, labels in read_weak_labels(path).items()}
    return {entry.key: entry.labels for entry in read_clip_list(path)}


def labels_to_multihot(labels: Iterable[str], classes: tuple[str, ...] = CLASSES) -> np.ndarray:
    """Multi-hot vector, shape ``(len(classes),)`` float32, of a clip's labels."""
    index = {label: position for position, label in enumerate(classes)}
    target = np.zeros(len(classes), dtype=np.float32)
    for label in labels:
        if label not in index:
            raise InputError(f"unknown label {label!r}; expected one of: {', '.join(classes)}")
        target[index[label]] = 1.0
    return target


def is_number(text: str, finite: bool = True) -> bool:
    """Whether ``text`` parses as a float (a time or a probability field of the official files);
    with ``finite`` (the default), a finite one: 'nan' and 'inf' are no time."""
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) or not finite


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with gzip's magic number (False when it cannot be read)."""
    try:
        with open(path, "rb") as probe:
            return probe.read(2) == _GZIP_MAGIC
    except OSError:
        return False


def text_lines(path: str | os.PathLike, gzipped: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text without the line end) of a UTF-8 text file (gzip-compressed when
    ``gzipped``); LF or CRLF. A line longer than :data:`devinet.limits.MAX_LINE_CHARS` is
    refused before it is read whole (also inside gzip, where a few MB inflate to GB)."""
    try:
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            for line_no, line in enumerate(iter(lambda: handle.readline(MAX_LINE_CHARS + 2), ""), start=1):
                text = line.rstrip("\r\n")
                if len(text) > MAX_LINE_CHARS:
                    raise FileFormatError(path, f"line {line_no} is longer than {MAX_LINE_CHARS:,} characters "
                                                "(the longest line a DCASE metadata or prediction file needs)")
                yield line_no, text
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise FileFormatError(path, "is a directory, expected a text file") from None
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise FileFormatError(path, f"corrupt gzip file ({exc or 'truncated'})") from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})") from None


def _csv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a comma-separated file, skipping blank and ``#`` lines."""
    for line_no, line in text_lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = next(csv.reader([line], skipinitialspace=False, strict=True))
        except csv.Error as exc:
            raise FileFormatError(path, f"line {line_no}: {exc}") from None
        yield line_no, row


def _tsv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a TAB-separated file, skipping blank, ``#`` and header lines."""
    for line_no, line in text_lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if line_no == 1 and fields[0].strip().lower() in _HEADER_FIELDS:
            continue
        yield line_no, fields


def _key_of(path: str | os.PathLike, line_no: int, name: str) -> str:
    try:
        return clip_key(name)
    except InputError as exc:
        raise FileFormatError(path, f"line {line_no}: {exc}") from None


def _times(path, line_no: int, first: str, second: str, first_name: str, second_name: str) -> tuple[float, float]:
    """Parse two times in seconds; both >= 0 and in order, else a FileFormatError."""
    try:
        begin, finish = float(first), float(second)
    except ValueError:
        raise FileFormatError(path, f"line {line_no}: {first_name}/{second_name} "
                                    f"{first!r}/{second!r} are not numbers") from None
    if not (0.0 <= begin <= finish) or not np.isfinite(finish):
        raise FileFormatError(path, f"line {line_no}: {first_name} {begin} and {second_name} {finish} "
                                    f"must satisfy 0 <= {first_name} <= {second_name}")
    return begin, finish


__all__ = [
    "CLASSES",
    "ClipEntry",
    "Event",
    "clip_key",
    "wav_name",
    "read_clip_list",
    "read_weak_labels",
    "read_strong_labels",
    "read_listed_clips",
    "read_clip_labels",
    "labels_to_multihot",
]

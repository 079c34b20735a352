"""DCASE 2017 Task 4 submission files: audio tagging (subtask A) and sound event detection (subtask B).

Both are plain TAB-separated text with one row per tag or event,
``name<TAB>start<TAB>end<TAB>label`` (subtask A: the span the tag applies to; subtask B: the
event's onset and offset in seconds), and a line holding a name alone for a recording
without rows, so that the file still lists it. ``devinet tag`` writes them, and
``experiments.evaluation`` writes its clips' submissions with the same writer.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence, Union

from ._io import atomic_path
from .errors import InputError

#: a time as a number of seconds, or as already written (e.g. a DCASE key's "30.000")
Time = Union[float, str]
#: (name, start or onset, end or offset, label)
Row = tuple[str, Time, Time, str]

_FIELD_BREAKS = ("\t", "\r", "\n")


def format_seconds(value: float) -> str:
    """Seconds with up to 6 decimals and no trailing zeros: 0.498, 9.9185, 10."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def escape_name(name: str) -> str:
    """A name written in one field: TAB, CR and LF (possible in file paths) as ``\\t``, ``\\r``, ``\\n``."""
    return name.replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def write_submission(path: str | os.PathLike, rows: Iterable[Row], listed: Sequence[str] = ()) -> None:
    """Write a submission atomically: ``rows`` in order, then a line with the name alone for each
    name of ``listed`` that has no row. Fields must not hold TAB or line breaks (:func:`escape_name`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        named = set()
        for name, start, end, label in rows:
            _check_field(name, "name")
            _check_field(label, "label")
            named.add(name)
            handle.write(f"{name}\t{_time(start)}\t{_time(end)}\t{label}\n")
        for name in listed:
            if name not in named:
                _check_field(name, "name")
                handle.write(f"{name}\n")


def _time(value: Time) -> str:
    return value if isinstance(value, str) else format_seconds(float(value))


def _check_field(value: str, what: str) -> None:
    if not value or any(mark in value for mark in _FIELD_BREAKS):
        raise InputError(f"a submission {what} must be non-empty without TAB or line breaks, got {value!r}")


__all__ = ["format_seconds", "escape_name", "write_submission", "Row", "Time"]

"""Model list files: the checkpoints that make one system, for ``devinet tag --model LIST``.

A system of the paper is an average of several checkpoints: a trained system fuses the
checkpoints of its last epochs, the fusion system the checkpoints of its members. ``devinet
reproduce`` writes one list per system (``OUT/models/seed<seed>/<system>.json``)::

    {"format": "devinet-model-list", "format_version": 1, "system": "fusion",
     "description": "...", "checkpoints": ["../work/runs/.../epoch_0029.pt", ...]}

Relative checkpoint paths are relative to the list file's folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ._io import atomic_write_json
from .errors import FileFormatError

FORMAT = "devinet-model-list"
FORMAT_VERSION = 1


def write_model_list(path: str | os.PathLike, checkpoints: Sequence[str | os.PathLike], system: str,
                     description: str = "") -> Path:
    """Write a list of checkpoints (stored relative to the list's folder), atomically."""
    path = Path(path)
    folder = path.parent.resolve()
    entries = [Path(os.path.relpath(Path(c).resolve(), folder)).as_posix() for c in checkpoints]
    atomic_write_json(path, {"format": FORMAT, "format_version": FORMAT_VERSION, "system": system,
                             "description": description, "checkpoints": entries})
    return path


def is_model_list(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model list (a JSON object) rather than a checkpoint (a zip archive)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(64).lstrip().startswith(b"{")
    except OSError:
        return False


def read_model_list(path: str | os.PathLike) -> list[Path]:
    """The checkpoints of a model list, as paths (relative ones resolved against its folder)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError(path, f"not a readable model list ({' '.join(str(exc).split())})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FileFormatError(path, f"not a model list (a JSON object with \"format\": \"{FORMAT}\")")
    if document.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(path, f"unsupported model list version {document.get('format_version')!r}")
    entries = document.get("checkpoints")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) and e for e in entries):
        raise FileFormatError(path, "\"checkpoints\" must be a non-empty list of paths")
    return [path.parent / entry for entry in entries]


def expand_models(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint paths from checkpoints and model lists (a list's entries in its order)."""
    found: list[Path] = []
    for path in paths:
        found.extend(read_model_list(path) if is_model_list(path) else [Path(path)])
    return found


__all__ = ["FORMAT", "write_model_list", "read_model_list", "is_model_list", "expand_models"]

"""devinet checkpoints: a model's config and weights in one file that loads without running code.

A checkpoint is a ``torch.save`` of plain data only (dicts, lists, strings, numbers and
tensors)::

    {"format": "devinet-checkpoint", "format_version": 1,
     "config": DeviNetConfig.to_dict(), "state_dict": {...}, "metadata": {...}}

:func:`load` reads it with ``torch.load(weights_only=True)``, so a crafted pickle cannot
execute code, checks it completely and returns the model in eval mode.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_path, check_destination
from .config import DeviNetConfig
from .errors import DevinetError, FileFormatError
from .model import DeviNet

FORMAT = "devinet-checkpoint"
FORMAT_VERSION = 1


def save(model: DeviNet, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
         force: bool = False) -> Path:
    """Write ``model`` (config + weights + plain ``metadata``) to ``path`` atomically."""
    path = check_destination(path, force=force)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's raw payload safely (no code execution), validating its envelope."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(path, "no such file")
    if path.is_dir():
        raise FileFormatError(path, "is a directory, not a devinet checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise FileFormatError(path, f"refused to load: not plain data ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(path, f"not a readable devinet checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FileFormatError(path, "not a devinet checkpoint (missing format marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(path, f"unsupported checkpoint format version {payload.get('format_version')!r}")
    for key, kind in (("config", dict), ("state_dict", dict), ("metadata", dict)):
        if not isinstance(payload.get(key), kind):
            raise FileFormatError(path, f"checkpoint field {key!r} is missing or not a {kind.__name__}")
    return payload


def load(path: str | os.PathLike, allow_nonfinite: bool = False) -> DeviNet:
    """Load a devinet checkpoint into a :class:`DeviNet` in eval mode.

    Every weight of the model must be present with the right shape and no other may be;
    NaN or infinite weights are refused unless ``allow_nonfinite``.
    """
    payload = read(path)
    try:
        config = DeviNetConfig.from_dict(payload["config"])
    except DevinetError as exc:
        raise FileFormatError(path, f"bad model config: {exc}") from None
    except TypeError as exc:
        raise FileFormatError(path, f"bad model config: {exc}") from None
    model = DeviNet(config)
    load_state_dict_strict(model, payload["state_dict"], source=str(path), allow_nonfinite=allow_nonfinite)
    model.eval()
    model.checkpoint_metadata = payload["metadata"]
    return model


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, Any], source: str,
                           allow_nonfinite: bool = False) -> None:
    """Copy ``state`` into ``model`` after checking names, shapes, dtypes and values; one error lists all problems."""
    expected = model.state_dict()
    problems = []
    for key in sorted(set(expected) - set(state)):
        problems.append(f"missing {key} {tuple(expected[key].shape)}")
    for key in sorted(set(state) - set(expected)):
        problems.append(f"unexpected {key}")
    for key in sorted(set(state) & set(expected)):
        value, target = state[key], expected[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is not a tensor")
        elif tuple(value.shape) != tuple(target.shape):
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
        elif value.is_floating_point() != target.is_floating_point():
            problems.append(f"{key} has dtype {value.dtype}, expected {target.dtype}")
        elif value.is_floating_point() and not allow_nonfinite and not torch.isfinite(value).all():
            problems.append(f"{key} holds NaN or infinite values")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise FileFormatError(source, f"weights do not fit the model: {shown}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})

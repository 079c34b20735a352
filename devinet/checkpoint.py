"""devinet checkpoints: a model's config and weights in one file that loads without running code.

A checkpoint is a ``torch.save`` of plain data only (dicts, lists, strings, numbers and
tensors)::

    {"format": "devinet-checkpoint", "format_version": 1,
     "config": DeviNetConfig.to_dict(), "state_dict": {...}, "metadata": {...},
     "preprocessing": Preprocessing.to_dict() or None}

``preprocessing`` (class names, feature recipe, scaler, post-processing defaults) makes the
checkpoint usable on audio by itself; files written before it existed have none.

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
from .errors import DevinetError, FileFormatError, first_line
from .model import DeviNet
from .preprocessing import Preprocessing

FORMAT = "devinet-checkpoint"
FORMAT_VERSION = 1


def save(model: DeviNet, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
         force: bool = False, preprocessing: Preprocessing | None = None) -> Path:
    """Write ``model`` (config + weights + plain ``metadata`` + ``preprocessing``) to ``path`` atomically.

    ``preprocessing`` defaults to the model's own (``model.preprocessing``, set by :func:`load`).
    """
    path = check_destination(path, force=force)
    with atomic_path(path) as tmp:
        torch.save(checkpoint_payload(model, metadata, preprocessing), tmp)
    return path


def checkpoint_payload(model: DeviNet, metadata: dict[str, Any] | None = None,
            preprocessing: Preprocessing | None = None) -> dict[str, Any]:
    """The plain data of a checkpoint of ``model`` (what :func:`save` writes)."""
    preprocessing = preprocessing if preprocessing is not None else model.preprocessing
    if preprocessing is not None:
        preprocessing.check_model(model.config.num_classes, model.config.n_mels)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
        "preprocessing": None if preprocessing is None else preprocessing.to_dict(),
    }


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's raw payload safely (no code execution), validating its envelope."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(path, "no such file")
    if path.is_dir():
        raise FileFormatError(path, "is a directory, not a devinet checkpoint")
    try:
        size, is_zip = path.stat().st_size, zipfile.is_zipfile(path)
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise FileFormatError(path, "empty file (0 bytes), not a devinet checkpoint")
    if not is_zip:  # devinet writes torch's zip format only; older pickle files are never unpickled
        raise FileFormatError(path, "not a devinet checkpoint (not a torch zip archive: truncated, "
                                    "damaged or another kind of file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FileFormatError(path, f"refused to load: it holds more than plain data ({_unpickling_detail(exc)}); "
                                    "devinet never runs code from a file") from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever torch raises on a foreign or damaged file
        raise FileFormatError(path, f"not a readable devinet checkpoint ({first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FileFormatError(path, "not a devinet checkpoint (missing format marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(path, f"unsupported checkpoint format version {payload.get('format_version')!r}")
    for key, kind in (("config", dict), ("state_dict", dict), ("metadata", dict)):
        if not isinstance(payload.get(key), kind):
            raise FileFormatError(path, f"checkpoint field {key!r} is missing or not a {kind.__name__}")
    return payload


def _unpickling_detail(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file unsafely."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported", "Unsupported", "WeightsUnpickler error: ")) and \
                line != "WeightsUnpickler error:":
            return first_line(Exception(line.removeprefix("WeightsUnpickler error: ")))
    return "not a torch weights file"


def load(path: str | os.PathLike, allow_nonfinite: bool = False) -> DeviNet:
    """Load a devinet checkpoint into a :class:`DeviNet` in eval mode.

    Every weight of the model must be present with the right shape and no other may be;
    NaN or infinite weights are refused unless ``allow_nonfinite``. The weights are checked
    against the config's shapes before any model memory is allocated, so a config that
    describes a huge model cannot exhaust memory.
    """
    payload = read(path)
    try:
        config = DeviNetConfig.from_dict(payload["config"])
    except (DevinetError, TypeError, ValueError) as exc:
        raise FileFormatError(path, f"bad model config: {first_line(exc)}") from None
    state = payload["state_dict"]
    layers = config.num_blocks + len(config.rnn_hidden) + len(config.linear_layers)
    if layers > len(state):  # every layer holds at least one weight: refuse before building anything
        raise FileFormatError(path, f"the config describes {layers} layers but the file holds only "
                                    f"{len(state)} weights")
    with torch.device("meta"):  # shapes only, no memory
        skeleton = DeviNet(config)
    check_state_dict(skeleton.state_dict(), state, source=str(path), allow_nonfinite=allow_nonfinite)
    model = DeviNet(config)
    load_state_dict_strict(model, state, source=str(path), allow_nonfinite=allow_nonfinite)
    model.eval()
    model.checkpoint_metadata = payload["metadata"]
    model.preprocessing = _preprocessing(path, payload.get("preprocessing"), config)
    return model


def _preprocessing(path: str | os.PathLike, data: Any, config: DeviNetConfig) -> Preprocessing | None:
    if data is None:
        return None
    try:
        found = Preprocessing.from_dict(data)
        found.check_model(config.num_classes, config.n_mels)
    except DevinetError as exc:
        raise FileFormatError(path, f"bad preprocessing description: {first_line(exc)}") from None
    return found


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, Any], source: str,
                           allow_nonfinite: bool = False) -> None:
    """Copy ``state`` into ``model`` after :func:`check_state_dict`; floating weights are cast to the model's dtype."""
    expected = model.state_dict()
    check_state_dict(expected, state, source=source, allow_nonfinite=allow_nonfinite)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def check_state_dict(expected: dict[str, torch.Tensor], state: dict[Any, Any], source: str,
                     allow_nonfinite: bool = False) -> None:
    """Check names, shapes, dtypes and values of ``state`` against ``expected``; one error lists all problems.

    A weight must be a dense tensor holding data (not sparse, quantized or on the meta
    device), floating exactly where the model's is (any float precision is accepted), and
    finite unless ``allow_nonfinite``.
    """
    problems = []
    for key in sorted(set(expected) - set(state)):
        problems.append(f"missing {key} {tuple(expected[key].shape)}")
    for key in sorted(set(state) - set(expected), key=repr):
        problems.append(f"unexpected {key}" if isinstance(key, str) and key.isprintable() else f"unexpected {key!r}")
    for key in sorted(set(state) & set(expected)):
        value, target = state[key], expected[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is not a tensor ({type(value).__name__})")
        elif value.layout != torch.strided or value.is_quantized or value.is_meta:
            problems.append(f"{key} is not a dense tensor with data ({value.layout}, {value.device.type})")
        elif tuple(value.shape) != tuple(target.shape):
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
        elif value.is_floating_point() != target.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            problems.append(f"{key} has dtype {value.dtype}, expected {target.dtype}")
        elif value.is_floating_point() and not allow_nonfinite and not _all_finite(value):
            problems.append(f"{key} holds NaN or infinite values")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise FileFormatError(source, f"weights do not fit the model: {shown}")


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN or infinity in a floating tensor of any type: torch has no ``isfinite`` for its
    one-byte float8 types, whose values float32 holds exactly."""
    return bool(torch.isfinite(value.float() if value.element_size() == 1 else value).all())

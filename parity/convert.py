"""Keras files <-> devinet models, through the one mapping table, checked complete every time.

- :func:`keras_to_torch`: a legacy Keras 2 HDF5 file, a ``.keras`` archive or a ``.weights.h5``
  file -> a :class:`devinet.DeviNet` in eval mode (architecture detected from the file).
- :func:`torch_to_keras`: a DeviNet -> ``.keras``, ``.weights.h5`` or a legacy-layout ``.h5``.

Both run :func:`parity.mapping.check_complete` before returning: every destination weight
written exactly once, every source weight read (or dropped by a table row), equal parameter
counts; a single :class:`parity.mapping.ConversionError` lists all problems otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import devinet
from devinet._io import atomic_path, check_destination
from devinet.checkpoint import load_state_dict_strict
from devinet.errors import ConfigError, DevinetError, FileFormatError
from devinet.layers import count_keras_params
from devinet.model import DeviNet

from . import legacy_h5, keras3_files
from .mapping import (
    CONSTANT_VALUE,
    TABLE,
    ConversionError,
    DETECTABLE_PRESETS,
    IMAGE_INPUT_PRESETS,
    Detection,
    assignments,
    canonical_layers_of,
    check_complete,
    detect,
    layer_pairs,
    nonfinite_weights,
)
from .topology import KerasFile, assign_roles
from .transforms import TRANSFORMS, theano_flip

FLIP_CHOICES = ("auto", "yes", "no")
KerasWeights = dict[str, dict[str, np.ndarray]]


# ----------------------------------------------------------------------------- file kinds
def keras_format(path: str | os.PathLike) -> str | None:
    """'keras3' (.keras), 'keras3-weights' (.weights.h5), 'legacy' (.h5/.hdf5), or None (not a Keras file)."""
    name = Path(path).name.lower()
    if name.endswith(".keras"):
        return "keras3"
    if name.endswith(".weights.h5"):
        return "keras3-weights"
    if name.endswith((".h5", ".hdf5")):
        return "legacy"
    return None


def read_keras_file(path: str | os.PathLike) -> KerasFile:
    """Read any supported Keras file (no code from it runs) and give each layer its canonical role."""
    fmt = keras_format(path)
    if fmt is None:
        raise FileFormatError(path, "not a Keras file (expected .h5, .hdf5, .keras or .weights.h5)")
    file = legacy_h5.read_legacy_h5(path) if fmt == "legacy" else keras3_files.read_keras3(path)
    assign_roles(file)
    return file


def resolve_flip(file: KerasFile, theano_flip_option: str) -> bool:
    """Whether kernels of ``file`` must be flipped: 'auto' follows its ``backend`` attribute."""
    if theano_flip_option not in FLIP_CHOICES:
        raise ConfigError(f"theano_flip must be one of {FLIP_CHOICES}, got {theano_flip_option!r}")
    if theano_flip_option != "auto":
        return theano_flip_option == "yes"
    if not file.is_legacy:
        return False  # Keras 3 always cross-correlates
    if file.backend is None:
        raise FileFormatError(file.path, "no 'backend' attribute: cannot tell whether kernels are Theano's "
                              "(convolution); pass --theano-flip yes or no")
    return file.backend == "theano"


# ----------------------------------------------------------------------------- Keras -> devinet
@dataclass
class Conversion:
    """A converted model and where it came from."""

    model: DeviNet
    detection: Detection
    file: KerasFile
    flipped: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def keras_to_torch(source: str | os.PathLike | KerasFile, *, preset: str | None = None, theano_flip: str = "auto",
                   allow_nonfinite: bool = False) -> Conversion:
    """Convert a Keras file to a DeviNet (eval mode, float32).

    Args:
        source: a file path, or a :class:`KerasFile` already read with :func:`read_keras_file`.
        preset: the devinet preset when the file alone is ambiguous; else detected.
        theano_flip: 'auto' (flip when the file's backend is Theano), 'yes' or 'no'.
        allow_nonfinite: accept NaN/inf weights instead of refusing them.
    """
    file = source if isinstance(source, KerasFile) else read_keras_file(source)
    try:
        detection = detect(file, preset)
    except DevinetError as exc:
        raise FileFormatError(file.path, str(exc).removeprefix(f"{file.path}: ")) from None
    flip = resolve_flip(file, theano_flip)
    model = DeviNet(detection.config)
    state = keras_weights_to_state(file, model, flip=flip, allow_nonfinite=allow_nonfinite)
    load_state_dict_strict(model, state, source=str(file.path), allow_nonfinite=allow_nonfinite)
    model.eval()
    metadata = {
        "converted_from": file.path.name,
        "source_sha256": _sha256(file.path),
        "source_format": file.kind,
        "source_backend": file.backend,
        "source_keras_version": file.keras_version,
        "preset": detection.preset,
        "theano_flip": flip,
        "notes": [*file.notes, *detection.notes],
        "devinet_version": devinet.__version__,
    }
    return Conversion(model=model, detection=detection, file=file, flipped=flip, metadata=metadata)


def keras_weights_to_state(file: KerasFile, model: DeviNet, *, flip: bool,
                           allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """Apply the table to a role-annotated file: the complete state dict for ``model`` (checked)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = model.state_dict()
    layers = {layer.name: layer for layer in file.layers}
    state: dict[str, torch.Tensor] = {}
    assigned: dict[str, list[str]] = defaultdict(list)
    parts_read: dict[str, set[int | None]] = defaultdict(set)
    problems = []
    for a in assignments(layer_pairs(file), model.config):
        if a.keras_weight is None:  # a devinet entry with no Keras counterpart
            if a.torch_key in reference:
                state[a.torch_key] = torch.full_like(reference[a.torch_key], CONSTANT_VALUE)
            assigned[a.torch_key].append(f"(constant {CONSTANT_VALUE})")
            continue
        layer = layers[a.keras_layer]
        source_name = f"{a.keras_layer}/{a.keras_weight}"
        if a.keras_weight not in layer.weights:
            problems.append(f"{source_name} is missing (needed for {a.torch_key})")
            continue
        array = layer.weights[a.keras_weight]
        if a.row.part is not None:
            if array.ndim < 2 or a.row.part >= array.shape[0]:
                problems.append(f"{source_name} {tuple(array.shape)} has no row {a.row.part} (for {a.torch_key})")
                continue
            array = array[a.row.part]
        parts_read[source_name].add(a.row.part)
        if a.row.flip and flip:
            array = theano_flip(array)
        try:
            value = TRANSFORMS[a.row.transform].to_torch(array)
        except ValueError as exc:
            problems.append(f"{a.keras_name} -> {a.torch_key}: {exc}")
            continue
        assigned[a.torch_key].append(a.keras_name)
        if a.torch_key in reference:
            state[a.torch_key] = torch.from_numpy(value).to(reference[a.torch_key].dtype)
    if problems:
        raise ConversionError(str(file.path), problems)
    source_weights = {f"{l.name}/{w}": tuple(a.shape) for l in file.layers for w, a in l.weights.items()}
    read = [name for name, parts in parts_read.items() if _fully_read(parts, source_weights[name])]
    check_complete(
        str(file.path), assigned=assigned, expected=expected,
        produced_shapes={k: tuple(v.shape) for k, v in state.items()},
        source_weights=source_weights, read=read, dropped=(),
        source_count=file.num_weights(), target_count=count_keras_params(model),
        nonfinite=() if allow_nonfinite else [
            f"{l.name}/{w}" for l in file.layers for w in nonfinite_weights(l.weights)],
    )
    return state


def _fully_read(parts: set[int | None], shape: tuple[int, ...]) -> bool:
    return None in parts or parts == set(range(shape[0]))


# ----------------------------------------------------------------------------- devinet -> Keras
def state_to_keras_weights(model: DeviNet, expected: Mapping[str, Mapping[str, tuple[int, ...]]], *, flip: bool,
                           source: str = "devinet model", allow_nonfinite: bool = False) -> KerasWeights:
    """The table inverted: devinet weights -> canonical layer -> Keras weight name -> array (checked).

    ``expected`` is the destination's layout (canonical layer -> weight name -> shape) from an
    independent statement: the Keras 3 model itself, or :func:`legacy_h5.keras2_shapes`.
    """
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    layers = [(name, name) for name in canonical_layers_of(state)]
    parts: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    out: KerasWeights = defaultdict(dict)
    assigned: dict[str, list[str]] = defaultdict(list)
    read, dropped, problems = [], [], []
    for a in assignments(layers, model.config):
        if a.torch_key not in state:
            problems.append(f"{a.torch_key} is missing (needed for {a.keras_name})")
            continue
        if a.keras_weight is None:
            dropped.append(a.torch_key)
            continue
        read.append(a.torch_key)
        array = TRANSFORMS[a.row.transform].to_keras(state[a.torch_key])
        if a.row.flip and flip:
            array = theano_flip(array)
        target = f"{a.keras_layer}/{a.keras_weight}"
        if a.row.part is None:
            out[a.keras_layer][a.keras_weight] = array
            assigned[target].append(a.torch_key)
        else:
            parts[(a.keras_layer, a.keras_weight)][a.row.part] = array
            if a.row.part == 0:
                assigned[target].append(a.torch_key)
    if problems:
        raise ConversionError(source, problems)
    for (layer, weight), rows in parts.items():
        out[layer][weight] = np.stack([rows[i] for i in sorted(rows)])
    flat_expected = {f"{l}/{w}": tuple(s) for l, ws in expected.items() for w, s in ws.items()}
    check_complete(
        source, assigned=assigned, expected=flat_expected,
        produced_shapes={f"{l}/{w}": tuple(a.shape) for l, ws in out.items() for w, a in ws.items()},
        source_weights={k: tuple(v.shape) for k, v in state.items()}, read=read, dropped=dropped,
        source_count=count_keras_params(model),
        target_count=sum(int(np.prod(s)) for s in flat_expected.values()),
        nonfinite=() if allow_nonfinite else nonfinite_weights(state),
    )
    return {layer: dict(weights) for layer, weights in out.items()}


def model_preset(model: DeviNet, preset: str | None = None) -> str:
    """The published preset ``model`` is (its config's name unless ``preset`` is given)."""
    name = preset or model.config.name
    if name not in DETECTABLE_PRESETS:
        raise ConfigError(f"model preset {name!r} has no Keras form; pass --preset with one of "
                          f"{', '.join(DETECTABLE_PRESETS)}")
    return name


def torch_to_keras(model: DeviNet, destination: str | os.PathLike, *, preset: str | None = None,
                   theano_flip: str = "auto", force: bool = False, allow_nonfinite: bool = False,
                   n_frames: int | None = 240) -> Path:
    """Write ``model`` as a Keras file; the format follows the suffix.

    ``.keras`` / ``.weights.h5``: Keras 3 files of :mod:`keras_reference` (TensorFlow needed).
    ``.h5`` / ``.hdf5``: the original Keras 2 ``save_weights`` layout with the original's
    layer names; ``theano_flip='yes'`` writes a Theano-backend file (flipped kernels, names
    without ':0') like the original checkpoints, otherwise a TensorFlow-backend one.
    ``n_frames`` is the input length of a Keras 3 model (240 as the original; None: any length).
    The written file is read back and compared with the model before it is moved into place.
    """
    fmt = keras_format(destination)
    if fmt is None:
        raise FileFormatError(destination, "not a Keras file name (use .keras, .weights.h5, .h5 or .hdf5)")
    if theano_flip not in FLIP_CHOICES:
        raise ConfigError(f"theano_flip must be one of {FLIP_CHOICES}, got {theano_flip!r}")
    destination = check_destination(destination, force=force)
    name = model_preset(model, preset)
    config = model.config
    if fmt == "legacy":
        flip = theano_flip == "yes"
        weights = state_to_keras_weights(model, legacy_h5.keras2_shapes(config), flip=flip,
                                         allow_nonfinite=allow_nonfinite)
        layout = legacy_h5.original_layer_names(config, image_input=name in IMAGE_INPUT_PRESETS)
        specs = [(layer_name, cls, weights.get(role, {}) if role else {}) for layer_name, cls, role in layout]
        with atomic_path(destination, suffix=destination.suffix) as tmp:
            legacy_h5.write_legacy_h5(tmp, specs, backend="theano" if flip else "tensorflow",
                                      writer=f"devinet {devinet.__version__}")
            _verify_written(tmp, model, name, theano_flip="yes" if flip else "no")
        return destination
    if theano_flip == "yes":
        raise ConfigError("Keras 3 files cross-correlate; --theano-flip yes applies to legacy .h5 files only")
    keras_model = keras3_files.build_keras_model(name, config, n_frames=n_frames)
    expected: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for (layer, weight), variable in keras3_files.keras_variables(keras_model).items():
        expected[layer][weight] = tuple(variable.shape)
    weights = state_to_keras_weights(model, expected, flip=False, allow_nonfinite=allow_nonfinite)
    suffix = ".weights.h5" if fmt == "keras3-weights" else ".keras"
    with atomic_path(destination, suffix=suffix) as tmp:
        keras3_files.assign_keras_weights(keras_model, weights)
        if fmt == "keras3-weights":
            keras_model.save_weights(tmp)
        else:
            keras_model.save(tmp)
        _verify_written(tmp, model, name, theano_flip="no")
    return destination


def _verify_written(path: Path, model: DeviNet, preset: str, theano_flip: str) -> None:
    """Read a just-written file back through the converter; its weights must equal the model's exactly."""
    file = read_keras_file(path)
    back = keras_to_torch(file, preset=preset, theano_flip=theano_flip, allow_nonfinite=True).model
    mine, theirs = model.state_dict(), back.state_dict()
    differ = [k for k in mine if "num_batches_tracked" not in k
              and not torch.equal(mine[k].detach().cpu().float(), theirs[k].float())]
    if differ:
        raise DevinetError(f"{path}: the written file does not read back to the same weights ({', '.join(differ)})")


def keras_weights_of_file(file: KerasFile, flip: bool) -> KerasWeights:
    """Canonical layer -> weight name -> array straight from a file, kernels flipped when ``flip``.

    This bypasses the devinet side entirely, so running the Keras reference on these weights
    is an independent check of the conversion.
    """
    flip_rows = [row for row in TABLE if row.flip]
    out: KerasWeights = {}
    for layer in file.layers:
        if not layer.role or not layer.weights:
            continue
        out[layer.role] = {}
        for weight, array in layer.weights.items():
            flips = flip and any(row.keras_weight == weight and row.match(layer.role) for row in flip_rows)
            out[layer.role][weight] = theano_flip(array) if flips else array.copy()
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

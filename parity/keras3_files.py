"""Keras 3 files: ``.keras`` archives and ``.weights.h5`` files.

Reading needs h5py only (no TensorFlow) and runs no code: ``config.json`` is parsed as plain
JSON and the weights are read from ``model.weights.h5``. Keras 3 does not key those files by
layer name: each layer is a group named after its class (``layers/conv2d_3``) whose ``vars``
group carries the layer's name in its ``name`` attribute, variables are ``vars/0``,
``vars/1``, ... in the layer's variable order, and wrapped layers sit below their wrapper
(``layers/bidirectional/forward_layer/cell/vars/0``, ``layers/time_distributed/layer/vars/0``).

Writing builds the model with :mod:`keras_reference` (imported lazily, so TensorFlow is only
needed for writing and for running Keras) and lets Keras save it.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from devinet.config import DeviNetConfig, preset_config
from devinet._io import import_h5py, open_h5
from devinet.errors import ConfigError, DevinetError, FileFormatError, MissingDependencyError, first_line
from devinet.limits import MAX_ARCHIVE_MEMBER_BYTES, MAX_CONFIG_BYTES, MAX_LAYERS

from .topology import KerasFile, KerasLayer, WeightReader, canonical_sort_key, normalise_weight_name

#: a Keras 3 class -> names of its variables in creation order (BatchNormalization: see _var_names)
_VARS = {
    "Conv2D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "GRUCell": ("kernel", "recurrent_kernel", "bias"),
}

#: class of a layer group in a weights file without config, from its snake-cased group name
_CLASS_OF_GROUP = {
    "conv2d": "Conv2D", "batch_normalization": "BatchNormalization", "dense": "Dense",
    "time_distributed": "TimeDistributed", "bidirectional": "Bidirectional", "gru": "GRU",
    "input_layer": "InputLayer", "reshape": "Reshape", "max_pooling2d": "MaxPooling2D",
    "multiply": "Multiply", "activation": "Activation",
}

def _h5py():
    return import_h5py("h5py (needed for Keras files)", "keras")


# ----------------------------------------------------------------------------- reading
def read_keras3(path: str | os.PathLike) -> KerasFile:
    """Read a ``.keras`` archive or a ``.weights.h5`` file into a :class:`KerasFile`."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "no such file")
    h5py = _h5py()
    if path.name.endswith(".weights.h5"):
        with open_h5(path, "h5py (needed for Keras files)", "keras") as handle:
            return _guarded(path, lambda: _from_weights(path, handle, None, "keras3-weights", ""))
    try:
        with zipfile.ZipFile(path) as archive:
            config = _json_member(path, archive, "config.json")
            if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
                raise FileFormatError(path, "config.json does not describe a model")
            specs = _guarded(path, lambda: _config_layers(path, config))
            version = _version(path, archive)
            data = _member(path, archive, "model.weights.h5", MAX_ARCHIVE_MEMBER_BYTES)
    except zipfile.BadZipFile:
        raise FileFormatError(path, "not a .keras archive (not a zip file)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise FileFormatError(path, f"not a readable .keras archive ({first_line(exc, with_type=True)})") from None
    try:
        handle = h5py.File(io.BytesIO(data), "r")
    except OSError as exc:
        raise FileFormatError(path, f"model.weights.h5 is not an HDF5 file ({exc})") from None
    with handle:
        return _guarded(path, lambda: _from_weights(path, handle, specs, "keras3", version))


def _guarded(path: Path, read):
    """``read()``; a failure caused by the file's content becomes one FileFormatError naming the file."""
    try:
        return read()
    except FileFormatError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OSError, RuntimeError) as exc:
        raise FileFormatError(path, f"damaged or malformed Keras 3 file ({first_line(exc, with_type=True)})") from None


def _member(path: Path, archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """Member ``name`` inflated, if the size it declares is at most ``limit`` bytes (checked before
    inflating: the size declared is the most ``zipfile`` ever returns); damage is one FileFormatError."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise FileFormatError(path, f"not a .keras archive: no {name}") from None
    if info.file_size > limit:
        raise FileFormatError(path, f"{name} declares {info.file_size:,} bytes uncompressed; no model of the "
                                    f"family needs more than {limit:,}")
    try:
        return archive.read(info)
    except RuntimeError as exc:  # an encrypted member; NotImplementedError: an unknown compression method
        raise FileFormatError(path, f"{name} cannot be read ({first_line(exc)})") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError) as exc:
        raise FileFormatError(path, f"{name} is damaged ({first_line(exc, with_type=True)})") from None


def _json_member(path: Path, archive: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(_member(path, archive, name, MAX_CONFIG_BYTES))
    except RecursionError:
        raise FileFormatError(path, f"unreadable {name} (nested too deeply to be a model description)") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise FileFormatError(path, f"unreadable {name} ({first_line(exc)})") from None


def _group_names(handle) -> dict[str, str]:
    """Layer name (``vars`` attribute) -> group path under ``layers/``."""
    out = {}
    for group_name in handle["layers"]:
        vars_group = handle["layers"][group_name].get("vars")
        name = vars_group.attrs.get("name") if vars_group is not None else None
        out[_decode(name) if name is not None else group_name] = f"layers/{group_name}"
    return out


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def _from_weights(path: Path, handle, specs: list | None, kind: str, version: str) -> KerasFile:
    """The file's layers from its weights; ``specs`` (name, class, config) of config.json's layers, or
    None for a weights file without config (classes then come from the group names)."""
    if "layers" not in handle:
        raise FileFormatError(path, "not a Keras 3 weights file (no 'layers' group)")
    if len(handle["layers"]) > MAX_LAYERS:
        raise FileFormatError(path, f"{len(handle['layers']):,} layer groups; no model of the family has more than "
                                    f"{MAX_LAYERS:,} layers")
    groups = _group_names(handle)
    has_config = specs is not None
    if specs is None:
        specs = sorted(((name, _CLASS_OF_GROUP.get(re.sub(r"_\d+$", "", g.rpartition("/")[2])), None)
                        for name, g in groups.items()), key=lambda s: canonical_sort_key(s[0]))
    layers, input_shape = [], None
    reader = WeightReader(path)
    for name, cls, cfg in specs:
        if name not in groups:
            raise FileFormatError(path, f"layer {name!r} has no weights group")
        weights, origins = _layer_weights(reader, handle[groups[name]], groups[name], cls, cfg)
        layers.append(KerasLayer(name=name, class_name=cls, weights=weights, origins=origins, config=cfg))
        if cls == "InputLayer" and cfg and cfg.get("batch_shape"):
            input_shape = tuple(cfg["batch_shape"][1:])
    return KerasFile(path=path, kind=kind, layers=layers, backend=None, keras_version=version,
                     has_config=has_config, input_shape=input_shape, notes=list(reader.notes))


def _config_layers(path: Path, config: dict) -> list[tuple[Any, str, dict]]:
    """(name, class, config) of each layer of ``config.json``: at most MAX_LAYERS, each name once."""
    entries = config["config"].get("layers", [])
    if len(entries) > MAX_LAYERS:
        raise FileFormatError(path, f"config.json describes {len(entries):,} layers; no model of the family has "
                                    f"more than {MAX_LAYERS:,}")
    specs = [(entry.get("config", {}).get("name"), entry["class_name"], entry.get("config", {})) for entry in entries]
    seen: set = set()
    for name, _, _ in specs:
        if name in seen:
            raise FileFormatError(path, f"config.json describes layer {name!r} twice")
        seen.add(name)
    return specs


def _version(path: Path, archive: zipfile.ZipFile) -> str:
    """The Keras version in ``metadata.json`` ('' when the archive has none)."""
    if "metadata.json" not in archive.namelist():
        return ""
    metadata = _json_member(path, archive, "metadata.json")
    return str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""


def _layer_weights(reader: WeightReader, group, group_path: str, cls: str | None,
                   cfg: dict | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    weights: dict[str, np.ndarray] = {}
    origins: dict[str, str] = {}

    def take(vars_path: str, var_class: str | None, var_cfg: dict | None, prefix: str = "") -> None:
        arrays = _vars(reader, group, vars_path)
        names = _var_names(var_class, var_cfg, len(arrays))
        if names is None:
            names = [f"vars/{i}" for i in range(len(arrays))]  # unknown: left for the completeness check
        for i, (short, array) in enumerate(zip(names, arrays)):
            weights[prefix + short] = array
            origins[prefix + short] = f"{group_path}/{vars_path}/{i}"

    if cls == "Bidirectional":
        for direction in ("forward", "backward"):
            take(f"{direction}_layer/cell/vars", "GRUCell", None, prefix=f"{direction}/")
    elif cls == "GRU":
        take("cell/vars", "GRUCell", None)
    elif cls == "TimeDistributed":
        inner = (cfg or {}).get("layer", {})
        take("layer/vars", inner.get("class_name", "Dense"), inner.get("config"))
    else:
        take("vars", cls, cfg)
    return weights, origins


def _vars(reader: WeightReader, group, vars_path: str) -> list[np.ndarray]:
    if vars_path not in group:
        return []
    vars_group = group[vars_path]
    count = len([k for k in vars_group if k.isdigit()])
    return [reader.read(vars_group[str(i)], f"{vars_group.name}/{i}") for i in range(count)]


def _var_names(cls: str | None, cfg: dict | None, count: int) -> list[str] | None:
    if count == 0:
        return []
    if cls == "BatchNormalization":
        scale = (cfg or {}).get("scale", True)
        center = (cfg or {}).get("center", True)
        names = (["gamma"] if scale else []) + (["beta"] if center else []) + ["moving_mean", "moving_variance"]
        return names if len(names) == count else None
    names = _VARS.get(cls or "")
    return list(names[:count]) if names and count <= len(names) else None


# ----------------------------------------------------------------------------- Keras models
def _keras_reference():
    try:
        import keras_reference
    except ImportError as exc:
        raise MissingDependencyError(f"TensorFlow/Keras ({exc})", "keras") from None
    return keras_reference


@contextlib.contextmanager
def floatx(dtype: str) -> Iterator[None]:
    """Build Keras layers in ``dtype`` ('float32' or 'float64') inside the block.

    Both settings are needed: Keras caches its global dtype policy on first use, after
    which ``set_floatx`` alone no longer changes the dtype of new layers.
    """
    import keras

    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous_policy)
        keras.config.set_floatx(previous_floatx)


def reference_config(preset: str, config: DeviNetConfig) -> DeviNetConfig:
    """The devinet config that ``keras_reference.build(preset, ...)`` computes, for ``config``'s sizes."""
    return preset_config(preset, blocks=config.num_blocks, num_classes=config.num_classes, n_mels=config.n_mels,
                         attention_eps=config.attention_eps)


def check_reference_buildable(preset: str, config: DeviNetConfig) -> None:
    """Refuse a devinet config that the Keras reference cannot express (it builds the published presets)."""
    try:
        expected = reference_config(preset, config)
    except ConfigError as exc:
        raise ConfigError(f"the Keras reference cannot build this model: {exc}") from None
    mine, theirs = config.to_dict(), expected.to_dict()
    diffs = [f"{k}={mine[k]!r} (preset: {theirs[k]!r})" for k in mine if k != "name" and mine[k] != theirs[k]]
    if diffs:
        raise ConfigError(f"the Keras reference builds {preset} as published; this model differs: {', '.join(diffs)}")


def build_keras_model(preset: str, config: DeviNetConfig, weights: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                      dtype: str = "float32", n_frames: int | None = 240):
    """``keras_reference.build`` for ``config`` in ``dtype``, with ``weights`` (canonical layer ->
    normalised weight name -> array) assigned when given. Every variable must be given exactly once.

    ``n_frames``: the input length the model is built for (240 as the original; None: any).
    """
    kr = _keras_reference()
    check_reference_buildable(preset, config)
    with floatx(dtype):
        model = kr.build(preset, blocks=config.num_blocks, num_classes=config.num_classes, n_mels=config.n_mels,
                         attention_eps=config.attention_eps, n_frames=n_frames)
    if weights is not None:
        assign_keras_weights(model, weights)
    return model


def keras_variables(model) -> dict[tuple[str, str], Any]:
    """(layer name, normalised weight name) -> variable, for every variable of a Keras 3 model."""
    out = {}
    for layer in model.layers:
        for variable in layer.weights:
            # Built models prefix paths with the layer name; loaded Bidirectional ones may not.
            path = variable.path.removeprefix(f"{layer.name}/")
            out[(layer.name, normalise_weight_name(path))] = variable
    return out


def assign_keras_weights(model, weights: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Set every variable of ``model`` from ``weights``; one error lists missing, extra and misshaped ones."""
    variables = keras_variables(model)
    given = {(layer, name): a for layer, arrays in weights.items() for name, a in arrays.items()}
    problems = [f"Keras variable {l}/{w} {tuple(v.shape)} not given" for (l, w), v in variables.items()
                if (l, w) not in given]
    problems += [f"{l}/{w} has no Keras variable" for (l, w) in given if (l, w) not in variables]
    for key, variable in variables.items():
        if key in given and tuple(given[key].shape) != tuple(variable.shape):
            problems.append(f"{key[0]}/{key[1]}: shape {tuple(given[key].shape)}, Keras expects {tuple(variable.shape)}")
    if problems:
        from .mapping import ConversionError

        raise ConversionError(model.name, problems)
    for key, variable in variables.items():
        variable.assign(np.asarray(given[key], dtype=variable.dtype))


def load_keras_model(path: str | os.PathLike, preset: str | None = None, config: DeviNetConfig | None = None):
    """Load a Keras 3 file for running: ``.keras`` with Keras itself in safe mode; ``.weights.h5``
    into ``keras_reference.build(preset)`` (``preset`` and ``config`` needed then).

    Keras' own refusals (a Lambda layer in safe mode, an unknown class, a damaged file) are one
    FileFormatError naming the file.
    """
    import keras

    _keras_reference()  # registers the reference's custom layers for safe-mode loading
    path = Path(path)
    if path.name.endswith(".weights.h5") and (preset is None or config is None):
        raise ConfigError(f"{path}: a weights file needs the preset to build its model")
    try:
        if path.name.endswith(".weights.h5"):
            model = build_keras_model(preset, config)
            model.load_weights(path)
            return model
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except DevinetError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises when it refuses or fails to load a file
        # Keras wraps the refusal of a layer in its model's: the innermost reason says what is wrong.
        reason = str(exc).rpartition("Exception encountered: ")[2]
        raise FileFormatError(path, f"Keras refuses to load it ({type(exc).__name__}: "
                                    f"{first_line(Exception(reason))})") from None

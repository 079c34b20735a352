"""Legacy Keras 2.x HDF5 files: read them without Keras, and write the original's weight layout.

Two layouts, both read here:

- ``model.save``: attributes ``keras_version``, ``backend``, ``model_config`` (JSON) and
  ``training_config`` at the root, layer weights under ``model_weights``, optimizer state
  under ``optimizer_weights`` (ignored: it is not part of the model);
- ``model.save_weights``: the ``model_weights`` tree at the root.

In both, ``layer_names`` (on the weights group) lists every layer in ``model.layers`` order,
and each layer group's ``weight_names`` lists its weights in ``layer.weights`` order, e.g.
``conv2d_1/kernel`` (Theano) or ``conv2d_1/kernel:0`` (TensorFlow). Order always comes from
those attributes, never from h5py's alphabetical listing (``conv2d_10`` sorts before
``conv2d_2``). The attributes may be fixed-length bytes (h5py 2) or str.

``model_config`` is parsed as plain JSON only, for layer classes and settings; Lambda layers
inside it hold marshalled Python bytecode that is never decoded, let alone run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from devinet.config import SEVEN_BLOCKS, DeviNetConfig
from devinet._io import import_h5py, open_h5
from devinet.errors import ConfigError, FileFormatError, first_line
from devinet.limits import MAX_CONFIG_BYTES, MAX_LAYERS

from .topology import KerasFile, KerasLayer, WeightReader, decode, infer_class, normalise_weight_name

#: weights of each Keras 2 layer class, in ``layer.weights`` order (what ``load_weights`` expects)
KERAS2_WEIGHTS = {
    "Conv2D": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Bidirectional": ("forward/kernel", "forward/recurrent_kernel", "forward/bias",
                      "backward/kernel", "backward/recurrent_kernel", "backward/bias"),
    "TimeDistributed": ("kernel", "bias"),
}

#: the Keras version written into legacy files: the layout is Keras 2.0.8's
LEGACY_KERAS_VERSION = "2.0.8"


def _h5py():
    return import_h5py("h5py (needed for Keras HDF5 files)", "keras")


def read_legacy_h5(path: str | os.PathLike) -> KerasFile:
    """Read a Keras 2.x ``model.save`` or ``save_weights`` HDF5 file into a :class:`KerasFile`."""
    path = Path(path)
    _h5py()  # a missing h5py is reported before anything about the file
    if not path.is_file():
        raise FileFormatError(path, "no such file")
    with open_h5(path, "h5py (needed for Keras HDF5 files)", "keras") as handle:
        try:
            return _read_handle(path, handle)
        except FileFormatError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, OSError, RuntimeError) as exc:
            # h5py on a damaged file, or attributes of unexpected types (bytes that are not UTF-8,
            # a number where a list of names belongs): the file's fault, said on one line.
            raise FileFormatError(path, f"damaged or malformed Keras 2 file ({first_line(exc, with_type=True)})") from None


def _read_handle(path: Path, handle) -> KerasFile:
    if "model_weights" in handle:
        group, kind = handle["model_weights"], "keras2-model"
    elif "layer_names" in handle.attrs:
        group, kind = handle, "keras2-weights"
    elif "layers" in handle and "vars" in handle:
        raise FileFormatError(path, "a Keras 3 weights file: name it *.weights.h5")
    else:
        raise FileFormatError(path, "not a Keras 2 HDF5 file (no model_weights group nor layer_names attribute)")
    owners = {k: handle for k in handle.attrs} | {k: group for k in group.attrs}
    _check_attribute_sizes(path, owners)
    attrs = {key: owner.attrs[key] for key, owner in owners.items()}
    backend = decode(attrs["backend"]) if "backend" in attrs else None
    keras_version = decode(attrs.get("keras_version", ""))
    if keras_version.startswith("1"):
        raise FileFormatError(path, f"Keras {keras_version} files are not supported (Keras 2.x only)")
    configs, input_shape = _layer_configs(path, attrs.get("model_config"))
    reader = WeightReader(path)
    layers = [_read_layer(path, group, name, configs, reader) for name in _layer_names(path, group)]
    return KerasFile(path=path, kind=kind, layers=layers, backend=backend, keras_version=keras_version,
                     has_config=bool(configs), input_shape=input_shape, notes=list(reader.notes))


def _check_attribute_sizes(path: Path, owners: dict) -> None:
    """Refuse, before reading them, root attributes larger than any Keras file of the family writes."""
    for key, owner in owners.items():
        size = owner.attrs.get_id(key).get_storage_size()
        if size > MAX_CONFIG_BYTES:
            raise FileFormatError(path, f"attribute {key} declares {size:,} bytes; a model description of the "
                                        f"family takes far less than {MAX_CONFIG_BYTES:,}")


def _layer_names(path: Path, group) -> list[str]:
    """``layer_names``: at most :data:`MAX_LAYERS` names, each once."""
    names = _names(path, group, "layer_names")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileFormatError(path, f"layer {name!r} is listed twice in layer_names")
        seen.add(name)
    return names


def _names(path: Path, group, key: str) -> list[str]:
    """The list of names in attribute ``key`` of ``group`` (fixed-length bytes or str)."""
    where = f"layer {group.name.rpartition('/')[2]!r}: " if key == "weight_names" else ""
    count = group.attrs.get_id(key).shape
    if count and count[0] > MAX_LAYERS:
        raise FileFormatError(path, f"{where}attribute {key} lists {count[0]:,} names; no model of the family "
                                    f"has more than {MAX_LAYERS:,} layers")
    value = group.attrs[key]
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1:
        raise FileFormatError(path, f"{where}attribute {key} is not a list of names ({value!r:.60})")
    try:
        return [decode(item) for item in value]
    except UnicodeDecodeError:
        raise FileFormatError(path, f"{where}attribute {key} holds a name that is not UTF-8 text") from None


def _read_layer(path: Path, group, name: str, configs: dict[str, tuple[str, dict]],
                reader: WeightReader) -> KerasLayer:
    if name not in group:
        raise FileFormatError(path, f"layer {name!r} is listed in layer_names but has no group")
    layer_group = group[name]
    if "weight_names" not in layer_group.attrs:
        raise FileFormatError(path, f"layer {name!r} has no weight_names attribute")
    weights: dict[str, np.ndarray] = {}
    origins: dict[str, str] = {}
    for full in _names(path, layer_group, "weight_names"):
        if full not in layer_group:
            raise FileFormatError(path, f"weight {name}/{full} is listed but missing")
        short = normalise_weight_name(full)
        if short in weights:
            raise FileFormatError(path, f"layer {name!r} has two weights named {short!r}")
        weights[short] = reader.read(layer_group[full], f"{name}/{full}")
        origins[short] = f"{name}/{full}"
    class_name, config = configs.get(name, (None, None))
    return KerasLayer(name=name, class_name=class_name or infer_class(name, weights), weights=weights,
                      origins=origins, config=config)


def _layer_configs(path: Path, raw: Any) -> tuple[dict[str, tuple[str, dict]], tuple | None]:
    """Layer name -> (class name, config) from the ``model_config`` JSON, and the input shape."""
    if raw is None:
        return {}, None
    try:
        model = json.loads(decode(raw))
        body = model["config"]
        layers = body["layers"] if isinstance(body, dict) else body  # Model vs Keras 2.0 Sequential
        if len(layers) > MAX_LAYERS:
            raise FileFormatError(path, f"model_config describes {len(layers):,} layers; no model of the family "
                                        f"has more than {MAX_LAYERS:,}")
        configs = {entry["config"]["name"]: (entry["class_name"], entry["config"]) for entry in layers}
        if len(configs) != len(layers):
            twice = Counter(entry["config"]["name"] for entry in layers).most_common(1)[0][0]
            raise FileFormatError(path, f"model_config describes layer {twice!r} twice")
    except RecursionError:
        raise FileFormatError(path, "unreadable model_config (nested too deeply to be a model description)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise FileFormatError(path, f"unreadable model_config ({first_line(exc, with_type=True)})") from None
    input_shape = None
    for class_name, config in configs.values():
        shape = config.get("batch_input_shape")
        if shape:
            input_shape = tuple(shape[1:])
            if class_name == "InputLayer":
                break
    return configs, input_shape


# ----------------------------------------------------------------------------- writing
def original_layer_names(config: DeviNetConfig, image_input: bool) -> list[tuple[str, str, str | None]]:
    """The layers of the original script's Keras 2 model: (automatic name, class, canonical role).

    Keras 2 names layers ``<class>_<n>`` with one counter per class, in construction order.
    The original scripts build an eighth, dead block (its names are used up but the layers are
    not in the model) when the model has 7 blocks; crnn scripts name their input 'in_layer'
    and reshape it, cnnrnn_at takes an unnamed image input. Only gated models exist in that form.
    """
    if not (config.gated_conv and config.gated_rnn and config.final_conv_channels):
        raise ConfigError(f"preset {config.name!r}: the original Keras 2 layout exists for the gated CRNN models only")
    counts: Counter[str] = Counter()

    def auto(prefix: str) -> str:
        counts[prefix] += 1
        return f"{prefix}_{counts[prefix]}"

    out: list[tuple[str, str, str | None]] = []

    def add(name: str, cls: str, role: str | None) -> None:
        out.append((name, cls, role))

    if image_input:
        add(auto("input"), "InputLayer", "input")
    else:
        add("in_layer", "InputLayer", "input")
        add(auto("reshape"), "Reshape", "to_image")

    def block(index: int | None) -> None:
        names = [(auto("conv2d"), "Conv2D", "conv"), (auto("batch_normalization"), "BatchNormalization", "bn"),
                 (auto("lambda"), "Lambda", "split_a"), (auto("lambda"), "Lambda", "split_b"),
                 (auto("activation"), "Activation", "act_a"), (auto("activation"), "Activation", "act_b"),
                 (auto("multiply"), "Multiply", "glu")]
        if index is not None:  # a live block; a dead one only uses up names
            for name, cls, part in names:
                add(name, cls, f"gcnn_{index}_{part}")

    index = 0
    dead_block = config.conv_groups == SEVEN_BLOCKS
    for group, n_blocks in enumerate(config.conv_groups):
        for _ in range(n_blocks):
            block(index)
            index += 1
        if dead_block and group == len(config.conv_groups) - 1:
            block(None)
        add(auto("max_pooling2d"), "MaxPooling2D", f"pool_{group}")
    add(auto("conv2d"), "Conv2D", "final_conv")
    add(auto("max_pooling2d"), "MaxPooling2D", "final_pool")
    add(auto("reshape"), "Reshape", "to_sequence")
    for k in range(len(config.rnn_hidden)):
        for kind in ("linear", "sigmoid"):
            gru = auto("gru")  # the wrapped GRU is built before its Bidirectional wrapper
            add(f"{auto('bidirectional')}:{gru}", "Bidirectional", f"rnn_{k}_{kind}")
        add(auto("multiply"), "Multiply", f"rnn_{k}_gate")
    auto("dense")
    add("localization_layer", "TimeDistributed", "head_frame")
    if config.head == "attention":
        auto("dense")
        add(auto("time_distributed"), "TimeDistributed", "head_attention")
        add(auto("multiply"), "Multiply", "head_weighted")
    add(auto("lambda"), "Lambda", "head_pool")
    return out


def write_legacy_h5(path: str | os.PathLike, layers: Sequence[tuple[str, str, dict[str, np.ndarray]]],
                    backend: str, writer: str) -> None:
    """Write a ``save_weights``-layout Keras 2 file at ``path`` (which must be a fresh temporary path).

    Args:
        layers: (layer name, Keras class, normalised weight name -> array) for EVERY layer of
            the model in order, weightless ones included (``layer_names`` lists them all).
            A Bidirectional's name may carry its GRU's name after ':' ('bidirectional_1:gru_1').
        backend: 'theano' (names without ':0'; kernels must already be flipped) or 'tensorflow'.
        writer: recorded in a ``devinet_writer`` attribute.
    """
    h5py = _h5py()
    suffix = "" if backend == "theano" else ":0"
    with h5py.File(path, "w") as handle:
        handle.attrs["backend"] = np.bytes_(backend)
        handle.attrs["keras_version"] = np.bytes_(LEGACY_KERAS_VERSION)
        handle.attrs["devinet_writer"] = np.bytes_(writer)
        names = [spec[0].split(":")[0] for spec in layers]
        handle.attrs["layer_names"] = np.array([n.encode() for n in names], dtype=f"S{max(map(len, names))}")
        for (spec_name, cls, weights), name in zip(layers, names):
            group = handle.create_group(name)
            full_names = []
            for short in KERAS2_WEIGHTS.get(cls, ()):
                if short not in weights:
                    continue
                full_names.append(_full_weight_name(spec_name, short) + suffix)
                group.create_dataset(full_names[-1], data=weights[short])
            extra = sorted(set(weights) - set(KERAS2_WEIGHTS.get(cls, ())))
            if extra:
                raise ValueError(f"layer {name}: {cls} has no weight(s) {extra} in Keras 2")
            width = max([len(n) for n in full_names] or [1])
            group.attrs["weight_names"] = np.array([n.encode() for n in full_names], dtype=f"S{width}")


def _full_weight_name(spec_name: str, short: str) -> str:
    """Keras 2's dataset name: 'conv2d_1/kernel', 'bidirectional_1/forward_gru_1/kernel'."""
    name, _, inner = spec_name.partition(":")
    if "/" in short:
        direction, var = short.split("/")
        return f"{name}/{direction}_{inner}/{var}"
    return f"{name}/{short}"


def keras2_shapes(config: DeviNetConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Canonical layer -> Keras weight name -> shape of the original Keras 2 model for ``config``.

    Written from the Keras 2 layer definitions (not from the mapping table), so writing a
    legacy file checks the table against an independent statement of the layout.
    """
    k, c = config.kernel_size, config.conv_channels
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    channels = 1
    for i in range(config.num_blocks):
        maps = 2 * c if config.gated_conv else c
        shapes[f"gcnn_{i}_conv"] = {"kernel": (k, k, channels, maps)}
        shapes[f"gcnn_{i}_bn"] = {name: (maps,) for name in KERAS2_WEIGHTS["BatchNormalization"]}
        channels = c
    if config.final_conv_channels:
        shapes["final_conv"] = {"kernel": (k, k, channels, config.final_conv_channels),
                                "bias": (config.final_conv_channels,)}
        channels = config.final_conv_channels
    kinds = ("linear", "sigmoid") if config.gated_rnn else ("gru",)
    for index, hidden in enumerate(config.rnn_hidden):
        bias = (2, 3 * hidden) if config.rnn_reset_after else (3 * hidden,)
        for kind in kinds:
            shapes[f"rnn_{index}_{kind}"] = {
                f"{d}/{name}": shape for d in ("forward", "backward")
                for name, shape in (("kernel", (channels, 3 * hidden)), ("recurrent_kernel", (hidden, 3 * hidden)),
                                    ("bias", bias))}
        channels = 2 * hidden
    shapes["head_frame"] = {"kernel": (channels, config.num_classes), "bias": (config.num_classes,)}
    if config.head == "attention":
        shapes["head_attention"] = {"kernel": (config.num_classes, config.num_classes), "bias": (config.num_classes,)}
    return shapes

"""What a Keras file holds, framework-neutral: its layers in forward order, their weights, their roles.

Readers (:mod:`parity.legacy_h5`, :mod:`parity.keras3_files`) turn a file into a
:class:`KerasFile`; :func:`assign_roles` then gives every layer its *canonical name*: the
Keras 3 reference's layer name, which is devinet's module name with '_' for '.'
(``gcnn_3_conv`` is ``gcnn.3.conv``). Keras 3 files already use those names; legacy Keras 2
files use automatic names (``conv2d_9``, ``bidirectional_2``) and get them from the layer
order and kinds, never from h5py's alphabetical listing.

Roles that exist only in the original graph and have no Keras 3 layer carry names of their
own (``gcnn_{i}_split_a``/``_b`` for the Lambda slices of a gated block, ``gcnn_{i}_act_a``/
``_b`` for its Activation layers, ``head_weighted`` for the attention head's Multiply); the
layer-by-layer comparison derives them from devinet's BatchNorm and head outputs.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devinet.errors import FileFormatError
from devinet.limits import MAX_MODEL_ELEMENTS, MAX_WEIGHT_ELEMENTS

#: Keras class of a weightless legacy layer, from its automatic name (weights-only files have no config)
_CLASS_BY_PREFIX = {
    "input": "InputLayer",
    "in_layer": "InputLayer",
    "reshape": "Reshape",
    "lambda": "Lambda",
    "activation": "Activation",
    "multiply": "Multiply",
    "max_pooling2d": "MaxPooling2D",
    "dropout": "Dropout",
    "time_distributed": "TimeDistributed",
    "bidirectional": "Bidirectional",
    "conv2d": "Conv2D",
    "batch_normalization": "BatchNormalization",
    "dense": "Dense",
}

RECURRENT_CLASSES = ("Bidirectional", "GRU")
DENSE_CLASSES = ("TimeDistributed", "Dense")


@dataclass
class KerasLayer:
    """One layer of a Keras file.

    Attributes:
        name: the layer's name in the file.
        class_name: Keras class (from the file's config, or inferred from weights and name).
        weights: normalised weight name -> array, in file order. Names are the variable's
            own name (``kernel``, ``gamma``), prefixed ``forward/`` or ``backward/`` inside a
            Bidirectional wrapper.
        origins: normalised weight name -> the dataset path it was read from (for messages).
        config: the layer's plain-JSON config when the file has one (never deserialized).
        role: canonical name, set by :func:`assign_roles` (None: no devinet counterpart).
    """

    name: str
    class_name: str | None
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    role: str | None = None

    def inner_config(self) -> dict[str, Any]:
        """Config of the wrapped layer (Bidirectional/TimeDistributed), else the layer's own; {} if none."""
        if not self.config:
            return {}
        inner = self.config.get("layer")
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            return inner["config"]
        return self.config


@dataclass
class KerasFile:
    """A Keras file, read without running any of its code.

    Attributes:
        path: the file.
        kind: 'keras2-model' (``model.save``), 'keras2-weights' (``save_weights``),
            'keras3' (``.keras`` archive) or 'keras3-weights' (``.weights.h5``).
        layers: every layer in forward order (weightless ones included when the file lists them).
        backend: the Keras 2 backend attribute ('theano', 'tensorflow', ...); None for Keras 3.
        keras_version: as recorded in the file, '' if absent.
        has_config: the file carries the model's architecture (layer classes and configs).
        input_shape: the model input's shape without the batch axis, when known.
        notes: what reading changed in the stored values (byte order, precision), for the report.
    """

    path: Path
    kind: str
    layers: list[KerasLayer]
    backend: str | None = None
    keras_version: str = ""
    has_config: bool = False
    input_shape: tuple[int | None, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_legacy(self) -> bool:
        return self.kind.startswith("keras2")

    def layer(self, name: str) -> KerasLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def by_role(self) -> dict[str, KerasLayer]:
        return {layer.role: layer for layer in self.layers if layer.role}

    def num_weights(self) -> int:
        """Scalars in all layer weights (what Keras' ``count_params`` reports)."""
        return sum(int(a.size) for layer in self.layers for a in layer.weights.values())


class WeightReader:
    """Reads the weights of one file within :mod:`devinet.limits`, in the machine's float types.

    Each dataset's declared shape is checked before it is read (one weight, and all of the
    file's weights together), so a small file declaring a huge dataset allocates nothing.
    Floating data of any precision and byte order is accepted: big-endian values are brought
    to the native byte order (exact) and long double (float96/float128, which torch cannot
    hold) is rounded to float64; each change is recorded once in :attr:`notes`.
    """

    def __init__(self, path: Path):
        self.path = path
        self.elements = 0
        self.notes: dict[str, None] = {}

    def read(self, dataset: Any, where: str) -> np.ndarray:
        """The array of h5py ``dataset`` (named ``where`` in messages), checked and converted."""
        shape = getattr(dataset, "shape", None)
        if shape is None or not hasattr(dataset, "dtype"):
            raise FileFormatError(self.path, f"weight {where} is not an array of numbers")
        size = math.prod(shape)
        if size > MAX_WEIGHT_ELEMENTS:
            raise FileFormatError(self.path, f"weight {where} declares shape {tuple(shape)} ({size:,} elements); "
                                             f"no model of the family has a weight of more than "
                                             f"{MAX_WEIGHT_ELEMENTS:,}")
        self.elements += size
        if self.elements > MAX_MODEL_ELEMENTS:
            raise FileFormatError(self.path, f"the weights declare more than {MAX_MODEL_ELEMENTS:,} elements in all "
                                             f"(at {where}); no model of the family holds that many")
        if dataset.dtype.kind != "f":
            raise FileFormatError(self.path, f"weight {where} has dtype {dataset.dtype}; "
                                             "Keras weights are floating point")
        return self._native(np.asarray(dataset[()]))

    def _native(self, array: np.ndarray) -> np.ndarray:
        stored = array.dtype
        if not stored.isnative:
            array = array.astype(stored.newbyteorder("="))
            self.notes.setdefault(f"weights stored big-endian ({stored.str}) were read in the machine's byte order")
        if array.dtype.itemsize > 8:  # long double: torch has no such type
            with warnings.catch_warnings(), np.errstate(over="ignore"):
                warnings.simplefilter("ignore")
                array = array.astype(np.float64)
            self.notes.setdefault(f"weights stored as {stored.name} (long double) were rounded to float64, "
                                  "then to the model's float32")
        return array


def decode(value: Any) -> str:
    """An HDF5 string attribute as ``str``: fixed-length bytes (h5py 2 style), numpy bytes or str."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def normalise_weight_name(full_name: str) -> str:
    """'bidirectional_1/forward_gru_1/kernel:0' -> 'forward/kernel'; 'conv2d_1/kernel' -> 'kernel'."""
    parts = full_name.split(":")[0].split("/")
    direction = [p.split("_")[0] for p in parts[:-1] if p.startswith(("forward_", "backward_"))]
    return "/".join(direction[-1:] + parts[-1:])


def infer_class(name: str, weights: dict[str, np.ndarray]) -> str | None:
    """Keras class of a layer of a file without config, from its weights (or, if it has none, its name)."""
    if any(k.startswith(("forward/", "backward/")) for k in weights):
        return "Bidirectional"
    if {"gamma", "beta", "moving_mean", "moving_variance"} & set(weights):
        return "BatchNormalization"
    kernel = weights.get("kernel")
    if kernel is not None and kernel.ndim == 4:
        return "Conv2D"
    if kernel is not None and kernel.ndim == 2:
        return "TimeDistributed" if "recurrent_kernel" not in weights else "GRU"
    prefix = re.sub(r"_\d+$", "", name)
    return _CLASS_BY_PREFIX.get(prefix)


# ----------------------------------------------------------------------------- roles
class _RoleState:
    """Walks legacy layers in forward order and names each one canonically."""

    def __init__(self, file: KerasFile):
        self.file = file
        self.block = -1          # index of the current conv block
        self.splits = 0          # Lambda slices seen in the current block
        self.acts = 0            # Activation layers seen in the current block
        self.pools = 0
        self.seen_conv = False
        self.seen_final_conv = False
        self.rnn = 0             # index of the current recurrent layer
        self.rnn_roles: list[str] = []
        self.heads = 0

    def fail(self, layer: KerasLayer, problem: str) -> FileFormatError:
        return FileFormatError(self.file.path, f"layer {layer.name!r} ({layer.class_name}): {problem}")

    def role(self, layer: KerasLayer, index: int, layers: list[KerasLayer]) -> str | None:
        cls = layer.class_name
        if cls == "InputLayer":
            return "input"
        if cls == "Reshape":
            return "to_sequence" if self.seen_conv else "to_image"
        if cls == "Conv2D":
            return self._conv_role(layer)
        if cls == "BatchNormalization":
            if self.block < 0 or self.seen_final_conv:
                raise self.fail(layer, "BatchNormalization outside a convolution block")
            return f"gcnn_{self.block}_bn"
        if cls == "Lambda":
            if self.heads:
                return "head_pool"
            if self.block >= 0 and not self.seen_final_conv and self.splits < 2:
                self.splits += 1
                return f"gcnn_{self.block}_split_{'ab'[self.splits - 1]}"
            return None
        if cls == "Activation":
            if self.block < 0 or self.seen_final_conv:
                return None
            if self.splits == 0:
                return f"gcnn_{self.block}_relu"
            self.acts += 1
            return f"gcnn_{self.block}_act_{'ab'[self.acts - 1]}" if self.acts <= 2 else None
        if cls == "Multiply":
            if self.heads:
                return "head_weighted"
            if self.rnn_roles:
                self.rnn_roles = []
                self.rnn += 1
                return f"rnn_{self.rnn - 1}_gate"
            if self.block >= 0 and not self.seen_final_conv:
                return f"gcnn_{self.block}_glu"
            return None
        if cls == "MaxPooling2D":
            if self.seen_final_conv:
                return "final_pool"
            self.pools += 1
            return f"pool_{self.pools - 1}"
        if cls in RECURRENT_CLASSES:
            return self._recurrent_role(layer, index, layers)
        if cls in DENSE_CLASSES and layer.weights:
            self._close_single_rnn()
            self.heads += 1
            if self.heads > 2:
                raise self.fail(layer, "more than two frame-wise dense layers (devinet heads have one or two)")
            return "head_frame" if self.heads == 1 else "head_attention"
        return None

    def _conv_role(self, layer: KerasLayer) -> str:
        """A convolution with a bias is the final one; one without opens the next gated block."""
        self.seen_conv = True
        if self._has_bias(layer):
            if self.seen_final_conv:
                raise self.fail(layer, "a second convolution with bias after the final one")
            self.seen_final_conv = True
            return "final_conv"
        if self.seen_final_conv:
            raise self.fail(layer, "a gated block after the final convolution")
        self.block += 1
        self.splits = self.acts = 0
        return f"gcnn_{self.block}_conv"

    @staticmethod
    def _has_bias(layer: KerasLayer) -> bool:
        if layer.config and "use_bias" in layer.config:
            return bool(layer.config["use_bias"])
        return "bias" in layer.weights

    def _recurrent_role(self, layer: KerasLayer, index: int, layers: list[KerasLayer]) -> str:
        activation = layer.inner_config().get("activation")
        if activation is None:
            # No config (weights-only file): the original scripts build the linear GRU first,
            # then the sigmoid one, and gate them with a Multiply; a lone recurrent layer
            # followed by no Multiply is a plain (tanh) BiGRU.
            pair = self._next_is_recurrent(index, layers) or len(self.rnn_roles) == 1
            kind = ("linear" if not self.rnn_roles else "sigmoid") if pair else "gru"
        else:
            kind = {"linear": "linear", "sigmoid": "sigmoid"}.get(activation, "gru")
        role = f"rnn_{self.rnn}_{kind}"
        if role in self.rnn_roles:
            raise self.fail(layer, f"two recurrent layers with the same role {role!r} (activation {activation!r})")
        self.rnn_roles.append(role)
        return role

    @staticmethod
    def _next_is_recurrent(index: int, layers: list[KerasLayer]) -> bool:
        return index + 1 < len(layers) and layers[index + 1].class_name in RECURRENT_CLASSES

    def _close_single_rnn(self) -> None:
        if self.rnn_roles:  # a non-gated recurrent layer feeds the head directly
            self.rnn_roles = []
            self.rnn += 1


def assign_roles(file: KerasFile) -> None:
    """Set ``layer.role`` for every layer of ``file`` (in place).

    Keras 3 files: the names are canonical already and are checked. Legacy files: roles follow
    the layer order and kinds (config when present, else weights and automatic names).
    Raises FileFormatError when a layer with weights gets no role.
    """
    if file.is_legacy:
        state = _RoleState(file)
        for index, layer in enumerate(file.layers):
            layer.role = state.role(layer, index, file.layers)
    else:
        for layer in file.layers:
            layer.role = layer.name if is_canonical(layer.name) else None
    problems = [f"{layer.name!r} ({layer.class_name or 'unknown class'})" for layer in file.layers
                if layer.weights and layer.role is None]
    if problems:
        raise FileFormatError(file.path, "layers with weights but no devinet counterpart: " + ", ".join(problems))
    roles = [layer.role for layer in file.layers if layer.role]
    duplicates = sorted({r for r in roles if roles.count(r) > 1})
    if duplicates:
        raise FileFormatError(file.path, f"several layers take the role(s) {', '.join(duplicates)}")


#: canonical names of layers that exist in the Keras 3 reference (and in devinet as modules)
_CANONICAL = re.compile(
    r"^(input|to_image|to_sequence|final_conv|final_pool|head_frame|head_attention|head_pool"
    r"|gcnn_\d+_(conv|bn|glu|relu)|pool_\d+|rnn_\d+_(linear|sigmoid|gru|gate))$"
)


def is_canonical(name: str) -> bool:
    return bool(_CANONICAL.match(name))


def canonical_sort_key(name: str) -> tuple:
    """An order of canonical names for files that do not store their layer order (Keras 3 ``.weights.h5``).

    Forward order except that pools come after all blocks (without the architecture the
    group sizes are unknown); used to list layers, never to assign roles.
    """
    m = re.match(r"^gcnn_(\d+)_(\w+)$", name)
    part_order = {"conv": 0, "bn": 1, "split_a": 2, "split_b": 3, "act_a": 4, "act_b": 5, "glu": 6, "relu": 6}
    if m:
        return (1, int(m.group(1)), part_order.get(m.group(2), 9), 0)
    m = re.match(r"^rnn_(\d+)_(\w+)$", name)
    if m:
        return (4, int(m.group(1)), {"linear": 0, "sigmoid": 1, "gru": 0, "gate": 2}.get(m.group(2), 9), 0)
    fixed = {"input": (0,), "to_image": (0, 1), "final_conv": (3, 0), "final_pool": (3, 1), "to_sequence": (3, 2),
             "head_frame": (5, 0), "head_attention": (5, 1), "head_weighted": (5, 2), "head_pool": (5, 3)}
    if name in fixed:
        return fixed[name]
    m = re.match(r"^pool_(\d+)$", name)
    if m:
        return (2, int(m.group(1)))
    return (9, name)

"""THE mapping between Keras weights and devinet weights, architecture detection, completeness check.

One declarative table, :data:`TABLE`. Each row says: the weight ``keras_weight`` of a Keras
layer whose canonical name matches ``keras_layer`` is the devinet state-dict entry
``torch_key`` (regex groups of the layer fill ``{0}``, ``{1}``), through the transform kind
``transform`` (:mod:`parity.transforms`). Exceptions live in the table, not in the converter:

- ``flip``: Theano convolved, so kernels of Theano files are flipped (when the backend says so);
- ``part``: one row of a stacked Keras weight (a reset-after GRU bias (2, 3H) holds the input
  and the recurrent bias);
- ``when``: the row applies only for that model configuration (reset-before vs reset-after GRU);
- ``keras_weight=None``: a devinet entry with no Keras counterpart, set to a constant
  (``num_batches_tracked``), and dropped in the other direction.

Canonical layer names are devinet module names with '_' for '.' (``rnn.0.linear`` is
``rnn_0_linear``); legacy Keras 2 layers get theirs from :func:`parity.topology.assign_roles`.

:func:`detect` tells which devinet preset a file is, from its topology and shapes, and
:func:`check_complete` is the completeness check run after every conversion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from devinet.config import DeviNetConfig, preset_config
from devinet.errors import DevinetError

from .facts import contradictions
from .topology import KerasFile, KerasLayer


@dataclass(frozen=True)
class Row:
    """One line of the mapping table (see the module docstring)."""

    keras_layer: str
    keras_weight: str | None
    torch_key: str | None
    transform: str
    part: int | None = None
    flip: bool = False
    when: str | None = None

    def active(self, config: DeviNetConfig) -> bool:
        if self.when is None:
            return True
        negate = self.when.startswith("!")
        return bool(getattr(config, self.when.lstrip("!"))) != negate

    def match(self, canonical: str) -> re.Match | None:
        return re.fullmatch(self.keras_layer, canonical)


_GRU = r"rnn_(\d+)_(linear|sigmoid|gru)"
_HEAD = r"head_(frame|attention)"


def _gru_rows(direction: str, suffix: str) -> list[Row]:
    key = "rnn.{0}.{1}.%s_l0" + suffix
    return [
        Row(_GRU, f"{direction}/kernel", key % "weight_ih", "gru_kernel"),
        Row(_GRU, f"{direction}/recurrent_kernel", key % "weight_hh", "gru_kernel"),
        # Keras 2.0.8 / reset_after=False: one bias (3H,), added to the input projection.
        Row(_GRU, f"{direction}/bias", key % "bias_ih", "gru_bias", when="!rnn_reset_after"),
        # reset_after=True: bias (2, 3H) = [input bias, recurrent bias].
        Row(_GRU, f"{direction}/bias", key % "bias_ih", "gru_bias", part=0, when="rnn_reset_after"),
        Row(_GRU, f"{direction}/bias", key % "bias_hh", "gru_bias", part=1, when="rnn_reset_after"),
    ]


TABLE: tuple[Row, ...] = (
    Row(r"gcnn_(\d+)_conv", "kernel", "gcnn.{0}.conv.weight", "conv2d", flip=True),
    Row(r"gcnn_(\d+)_bn", "gamma", "gcnn.{0}.bn.weight", "batchnorm"),
    Row(r"gcnn_(\d+)_bn", "beta", "gcnn.{0}.bn.bias", "batchnorm"),
    Row(r"gcnn_(\d+)_bn", "moving_mean", "gcnn.{0}.bn.running_mean", "batchnorm"),
    Row(r"gcnn_(\d+)_bn", "moving_variance", "gcnn.{0}.bn.running_var", "batchnorm"),
    # Keras keeps no batch counter; PyTorch uses it only when momentum is None (never here).
    Row(r"gcnn_(\d+)_bn", None, "gcnn.{0}.bn.num_batches_tracked", "constant"),
    Row(r"final_conv", "kernel", "final_conv.weight", "conv2d", flip=True),
    Row(r"final_conv", "bias", "final_conv.bias", "identity"),
    *_gru_rows("forward", ""),
    *_gru_rows("backward", "_reverse"),
    Row(_HEAD, "kernel", "head.{0}.weight", "dense"),
    Row(_HEAD, "bias", "head.{0}.bias", "identity"),
)

#: value of target-only ('constant') rows
CONSTANT_VALUE = 0


class ConversionError(DevinetError):
    """A conversion that is not complete and exact; the message lists every problem."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        shown = "; ".join(self.problems[:12])
        more = f"; and {len(self.problems) - 12} more" if len(self.problems) > 12 else ""
        super().__init__(f"{source}: conversion incomplete ({len(self.problems)} problem"
                         f"{'s' if len(self.problems) != 1 else ''}): {shown}{more}")


# ----------------------------------------------------------------------------- row application
@dataclass(frozen=True)
class Assignment:
    """One application of a row to one layer: Keras ``layer``/``weight`` (row ``part``) <-> ``torch_key``."""

    row: Row
    canonical: str
    keras_layer: str
    keras_weight: str | None
    torch_key: str | None

    @property
    def keras_name(self) -> str:
        part = f"[{self.row.part}]" if self.row.part is not None else ""
        return f"{self.keras_layer}/{self.keras_weight}{part}"


def assignments(layers: Iterable[tuple[str, str]], config: DeviNetConfig) -> Iterator[Assignment]:
    """Every active row applied to every (canonical name, file layer name) pair it matches."""
    for canonical, file_name in layers:
        for row in TABLE:
            m = row.match(canonical)
            if m is None or not row.active(config):
                continue
            key = row.torch_key.format(*m.groups()) if row.torch_key else None
            yield Assignment(row, canonical, file_name, row.keras_weight, key)


def canonical_layers_of(state_keys: Iterable[str]) -> list[str]:
    """Canonical Keras layer names of a devinet state dict: module path with '_' ('rnn.0.linear' -> 'rnn_0_linear')."""
    seen: dict[str, None] = {}
    for key in state_keys:
        seen.setdefault(key.rpartition(".")[0].replace(".", "_"), None)
    return list(seen)


# ----------------------------------------------------------------------------- completeness
def check_complete(source: str, *, assigned: Mapping[str, Sequence[str]], expected: Mapping[str, tuple[int, ...]],
                   produced_shapes: Mapping[str, tuple[int, ...]], source_weights: Mapping[str, tuple[int, ...]],
                   read: Iterable[str], dropped: Iterable[str], source_count: int, target_count: int,
                   nonfinite: Iterable[str] = ()) -> None:
    """Raise one :class:`ConversionError` listing every problem of a finished conversion.

    Args:
        source: what was converted (file path), for the message.
        assigned: target name -> source names that wrote it (must be exactly one each).
        expected: every target name the destination must hold -> its shape.
        produced_shapes: target name -> shape the conversion produced.
        source_weights: every source weight name -> its shape.
        read: source names some row read; ``dropped``: source names a row drops on purpose.
        source_count / target_count: parameter counts (Keras' way: BatchNorm statistics
            included, counters excluded) of what was read and of the destination.
        nonfinite: source names holding NaN/inf values (refused unless the caller allowed them).
    """
    problems = []
    for name, shape in expected.items():
        writers = assigned.get(name, ())
        if not writers:
            problems.append(f"target {name} {tuple(shape)} was not assigned")
        elif len(writers) > 1:
            problems.append(f"target {name} was assigned {len(writers)} times (from {', '.join(writers)})")
        elif tuple(produced_shapes[name]) != tuple(shape):
            problems.append(f"{writers[0]} -> {name}: converted shape {tuple(produced_shapes[name])}, "
                            f"expected {tuple(shape)}")
    for name in assigned:
        if name not in expected:
            problems.append(f"{', '.join(assigned[name])} -> {name}: the destination has no such weight")
    used = set(read) | set(dropped)
    for name, shape in source_weights.items():
        if name not in used:
            problems.append(f"source weight {name} {tuple(shape)} was not read")
    for name in nonfinite:
        problems.append(f"source weight {name} holds NaN or infinite values (allow with --allow-nonfinite)")
    if not problems and source_count != target_count:
        problems.append(f"parameter counts differ: source {source_count:,}, destination {target_count:,}")
    if problems:
        raise ConversionError(source, problems)


# ----------------------------------------------------------------------------- detection
#: presets a file can be detected as; 'image_input': the Keras model takes (T, F, 1) with no Reshape
DETECTABLE_PRESETS = ("cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at", "cvssp_crnn_baseline")
IMAGE_INPUT_PRESETS = frozenset({"cvssp_cnnrnn_at", "cvssp_crnn_baseline"})


@dataclass(frozen=True)
class Signature:
    """What a file shows of its architecture; ``None``: not observable in this file."""

    blocks: int
    gated_conv: bool
    conv_channels: int
    kernel_size: int
    final_conv_channels: int
    rnn_hidden: tuple[int, ...]
    gated_rnn: bool
    rnn_activation: str | None
    rnn_reset_after: bool
    rnn_recurrent_activation: str
    head: str
    num_classes: int
    image_input: bool | None
    n_mels: int | None
    pools: tuple[tuple[int, int], ...] | None
    final_pool: tuple[int, int] | None

    def describe(self) -> str:
        parts = [f"{self.blocks} {'gated' if self.gated_conv else 'plain'} blocks of {self.conv_channels}",
                 f"final conv {self.final_conv_channels}",
                 f"{'gated ' if self.gated_rnn else ''}BiGRU {list(self.rnn_hidden)}",
                 f"{self.head} head, {self.num_classes} classes"]
        if self.pools is not None:
            parts.append(f"pools {[list(p) for p in self.pools]} then {list(self.final_pool or ())}")
        if self.image_input is not None:
            parts.append("image input" if self.image_input else "reshaped input")
        return ", ".join(parts)


@dataclass(frozen=True)
class Detection:
    """The devinet configuration of a Keras file."""

    preset: str
    config: DeviNetConfig
    signature: Signature
    notes: tuple[str, ...] = field(default=())


def _recurrent_activation(layer: KerasLayer, legacy: bool) -> str:
    value = layer.inner_config().get("recurrent_activation")
    if isinstance(value, dict):  # Keras 3: a registered function, e.g. 'devinet>keras2_hard_sigmoid'
        value = str(value.get("config", "")).rpartition(">")[2]
    if value is None or (legacy and value == "hard_sigmoid"):
        # Keras 2's GRU default, and what 'hard_sigmoid' meant in Keras 2 files.
        return "keras2_hard_sigmoid"
    if value in ("keras2_hard_sigmoid", "sigmoid"):
        return value
    raise DevinetError(f"GRU {layer.name!r}: recurrent activation {value!r} has no devinet counterpart "
                       "(Keras 3's 'hard_sigmoid' is not Keras 2's)")


def _pool(layer: KerasLayer | None) -> tuple[int, int] | None:
    if layer is None or not layer.config or "pool_size" not in layer.config:
        return None
    size = layer.config["pool_size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def signature_of(file: KerasFile) -> Signature:
    """Read the architecture's signature from a role-annotated file (see :func:`topology.assign_roles`)."""
    roles = file.by_role()
    convs, final, head, rnn_layers = _signature_layers(file, roles)
    next_in = [c.shape[2] for c in convs[1:]] + [final.weights["kernel"].shape[2]]
    gated_conv = all(c.shape[3] == 2 * n for c, n in zip(convs, next_in))
    kernel_sizes = {tuple(c.shape[:2]) for c in convs} | {tuple(final.weights["kernel"].shape[:2])}
    if len(kernel_sizes) != 1 or len({*next(iter(kernel_sizes))}) != 1:
        raise DevinetError(f"{file.path}: kernels must be square and all the same size, got {sorted(kernel_sizes)}")
    gated_rnn = bool(rnn_layers) and all(len(group) == 2 for group in rnn_layers)
    rnn_all = [layer for group in rnn_layers for layer in group]
    reset_after = {layer.weights["forward/bias"].ndim == 2 for layer in rnn_all}
    rec_acts = {_recurrent_activation(layer, file.is_legacy) for layer in rnn_all}
    if len(reset_after) > 1 or len(rec_acts) > 1:
        raise DevinetError(f"{file.path}: all GRUs must share reset_after and recurrent activation")
    # Weights-only files carry no config: the activation is then unknown, not Keras' default tanh.
    plain_acts = {layer.inner_config().get("activation", "tanh") for layer in rnn_all
                  if layer.role.endswith("_gru") and layer.config}
    image_input, n_mels = _input_facts(file, roles)
    pools = [_pool(roles.get(f"pool_{j}")) for j in range(sum(1 for r in roles if re.fullmatch(r"pool_\d+", r)))]
    known_pools = tuple(pools) if pools and all(p is not None for p in pools) else None
    return Signature(
        blocks=len(convs),
        gated_conv=gated_conv,
        conv_channels=int(convs[0].shape[3] // (2 if gated_conv else 1)),
        kernel_size=int(convs[0].shape[0]),
        final_conv_channels=int(final.weights["kernel"].shape[3]),
        rnn_hidden=tuple(int(group[0].weights["forward/recurrent_kernel"].shape[0]) for group in rnn_layers),
        gated_rnn=gated_rnn,
        rnn_activation=plain_acts.pop() if len(plain_acts) == 1 else None,
        rnn_reset_after=reset_after.pop() if reset_after else False,
        rnn_recurrent_activation=rec_acts.pop() if rec_acts else "keras2_hard_sigmoid",
        head="attention" if "head_attention" in roles else "mean",
        num_classes=int(head.weights["kernel"].shape[1]),
        image_input=image_input,
        n_mels=n_mels,
        pools=known_pools,
        final_pool=_pool(roles.get("final_pool")),
    )


def _signature_layers(file: KerasFile, roles: dict[str, KerasLayer]):
    """(conv kernels, final convolution, frame-wise dense layer, GRUs grouped per recurrent layer) of a
    role-annotated file, with the weights the signature reads checked; DevinetError naming what is missing."""
    problems = []
    convs = []
    while f"gcnn_{len(convs)}_conv" in roles:
        convs.append(_weight(file, roles[f"gcnn_{len(convs)}_conv"], "kernel", 4))
    final = roles.get("final_conv")
    head = roles.get("head_frame")
    if not convs:
        problems.append("no convolution block")
    if final is None:
        problems.append("no final convolution")
    if head is None:
        problems.append("no frame-wise dense layer")
    rnn_layers: list[list[KerasLayer]] = []
    while any(f"rnn_{len(rnn_layers)}_{k}" in roles for k in ("linear", "sigmoid", "gru")):
        k = len(rnn_layers)
        rnn_layers.append([roles[f"rnn_{k}_{kind}"] for kind in ("linear", "sigmoid", "gru") if f"rnn_{k}_{kind}" in roles])
    if problems:
        raise DevinetError(f"{file.path}: not a CVSSP gated CRNN: " + "; ".join(problems))
    _weight(file, final, "kernel", 4)
    _weight(file, head, "kernel", 2)
    for layer in (layer for group in rnn_layers for layer in group):
        _weight(file, layer, "forward/recurrent_kernel", 2)
        _weight(file, layer, "forward/bias", (1, 2))
    return convs, final, head, rnn_layers


def _input_facts(file: KerasFile, roles: dict[str, KerasLayer]) -> tuple[bool | None, int | None]:
    """(whether the model takes (T, F, 1) images with no Reshape, its mel bins); None where the file does not say."""
    image_input = None
    if file.input_shape is not None:
        image_input = len(file.input_shape) == 3
    elif any(layer.class_name in ("InputLayer", "Reshape") for layer in file.layers):
        image_input = "to_image" not in roles
    n_mels = file.input_shape[1] if file.input_shape is not None and len(file.input_shape) >= 2 else None
    return image_input, int(n_mels) if n_mels else None


def _weight(file: KerasFile, layer: KerasLayer, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """``layer``'s weight ``name``, which must exist with ``ndim`` dimensions (the architecture is read from it)."""
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    array = layer.weights.get(name)
    if array is None:
        raise DevinetError(f"{file.path}: layer {layer.name!r} ({layer.role}) has no weight {name!r}")
    if array.ndim not in ranks:
        raise DevinetError(f"{file.path}: layer {layer.name!r} ({layer.role}): weight {name} has shape "
                           f"{tuple(array.shape)}, expected {' or '.join(map(str, ranks))} dimensions")
    return array


def _differences(name: str, sig: Signature) -> tuple[DeviNetConfig | None, list[str]]:
    """The preset's config for this file's sizes, and how the file differs from it."""
    overrides: dict[str, Any] = {"num_classes": sig.num_classes, "rnn_reset_after": sig.rnn_reset_after,
                                 "rnn_recurrent_activation": sig.rnn_recurrent_activation}
    if sig.n_mels:
        overrides["n_mels"] = sig.n_mels
    if sig.blocks in (7, 8):
        overrides["blocks"] = sig.blocks
    try:
        config = preset_config(name, **overrides)
    except DevinetError as exc:
        return None, [str(exc)]
    diffs = []
    expect = {
        "blocks": (config.num_blocks, sig.blocks),
        "gated blocks": (config.gated_conv, sig.gated_conv),
        "block channels": (config.conv_channels, sig.conv_channels),
        "kernel size": (config.kernel_size, sig.kernel_size),
        "final conv channels": (config.final_conv_channels, sig.final_conv_channels),
        "GRU sizes": (config.rnn_hidden, sig.rnn_hidden),
        "gated GRU": (config.gated_rnn, sig.gated_rnn),
        "head": (config.head, sig.head),
    }
    if not config.gated_rnn and sig.rnn_activation is not None:
        expect["GRU activation"] = (config.rnn_activation, sig.rnn_activation)
    if sig.pools is not None:
        expect["pools"] = (config.pools, sig.pools)
    if sig.final_pool is not None:
        expect["final pool"] = (config.final_pool, sig.final_pool)
    if sig.image_input is not None:
        expect["image input (no Reshape)"] = (name in IMAGE_INPUT_PRESETS, sig.image_input)
    for what, (want, got) in expect.items():
        if want != got:
            diffs.append(f"{what}: preset {_show(want)}, file {_show(got)}")
    return config, diffs


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return str([_show_inner(v) for v in value])
    return str(value)


def _show_inner(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def detect(file: KerasFile, preset: str | None = None) -> Detection:
    """Which devinet preset ``file`` (roles assigned) is, by topology and shapes.

    With ``preset`` given, the file must be compatible with it (used when the file alone is
    ambiguous). Raises DevinetError naming the differences when nothing (or several) match.
    """
    sig = signature_of(file)
    names = (preset,) if preset else DETECTABLE_PRESETS
    if preset is not None and preset not in DETECTABLE_PRESETS:
        raise DevinetError(f"--preset {preset!r}: Keras files convert to {', '.join(DETECTABLE_PRESETS)}")
    matches, misses = [], {}
    for name in names:
        config, diffs = _differences(name, sig)
        if config is not None and not diffs:
            matches.append((name, config))
        else:
            misses[name] = diffs
    if len(matches) == 1:
        name, config = matches[0]
        _refuse_contradictions(file, config)
        notes = []
        if sig.pools is None:
            notes.append("poolings are not stored in this file; they are the preset's")
        if file.is_legacy and not file.has_config and sig.gated_rnn:
            notes.append("weights-only file: the first GRU of each pair is taken as the linear one, "
                         "as the original scripts built them")
        return Detection(name, config, sig, tuple(notes))
    if matches:
        raise DevinetError(f"{file.path}: the file fits several presets ({', '.join(n for n, _ in matches)}); "
                           "choose one with --preset")
    detail = "; ".join(f"{name}: {', '.join(d)}" for name, d in misses.items())
    raise DevinetError(f"{file.path}: architecture ({sig.describe()}) matches no devinet preset; {detail}")


def _refuse_contradictions(file: KerasFile, config: DeviNetConfig) -> None:
    """Refuse a file whose config states another architecture than the one its weights fit."""
    problems = contradictions(file, config)
    if problems:
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise DevinetError(f"{file.path}: the model config describes another network than devinet builds from "
                           f"its weights: {'; '.join(problems[:6])}{more}")


def layer_pairs(file: KerasFile) -> list[tuple[str, str]]:
    """(canonical name, file layer name) of the file's layers with a role."""
    return [(layer.role, layer.name) for layer in file.layers if layer.role]


def nonfinite_weights(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the floating arrays holding NaN or infinite values. The floating types of ml_dtypes
    (float8_*, bfloat16), which numpy does not count as floating, are checked through float32."""
    found = []
    for name, a in arrays.items():
        if not np.issubdtype(a.dtype, np.floating):
            if not a.dtype.name.startswith(("float", "bfloat")):
                continue
            a = a.astype(np.float32)
        if not np.isfinite(a).all():
            found.append(name)
    return found

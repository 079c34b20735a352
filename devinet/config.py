"""Configuration of the DeviNet family and its presets.

A :class:`DeviNetConfig` describes one model completely; it is frozen, validated at
construction and round-trips through plain dicts (checkpoints store it that way).

Presets:

- ``cvssp_crnn_at``: main_crnn_at.py of the original (mean pooling over 30 frames).
- ``cvssp_crnn_sed``: main_crnn_sed.py (attention pooling over 240 frames).
- ``cvssp_cnnrnn_at``: main_cnnrnn_at.py (different last pools, mean pooling).
- ``cvssp_crnn_baseline``: the paper's non-gated CRNN (main_cnnrnn_balbatch_norm_baseline_icassp2018.py).
- ``pyannote_devinet``: the older pyannote port's configuration keys, bugs fixed.

The original scripts build eight gated blocks but the eighth is dead (its output is never
used), so real checkpoints hold seven; ``blocks=8`` gives the intended architecture.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import ConfigError

CVSSP_NUM_CLASSES = 17
CVSSP_NUM_MELS = 64
CVSSP_NUM_FRAMES = 240

#: gated blocks per pooled group: 7 live blocks (the original, dead 8th dropped) or the intended 8
SEVEN_BLOCKS = (2, 2, 2, 1)
EIGHT_BLOCKS = (2, 2, 2, 2)

Pool = tuple[int, int]

#: how BatchNorm updates its moving variance in training mode: as Keras 2.0.8 on Theano, or as torch
BN_MOVING_VARIANCE = ("keras2_theano", "torch")


@dataclass(frozen=True)
class DeviNetConfig:
    """Everything needed to build a :class:`devinet.DeviNet`.

    Attributes:
        n_mels: mel bins of the input (N, T, n_mels).
        num_classes: output classes.
        conv_groups: number of conv blocks in each pooled group.
        conv_channels: channels of each block's output (a gated block's conv makes twice this).
        pools: (time, mel) max-pooling after each group; one per group.
        gated_conv: gated (GLU) blocks, or conv-BN-activation blocks for the non-gated baseline.
        conv_activation: activation of non-gated blocks ('linear' in the original baseline, or 'relu').
        kernel_size: conv kernel size (square, 'same' padding).
        final_conv_channels: channels of the final conv (ReLU, with bias); 0 for none.
        final_pool: (time, mel) pooling after the final conv; the mel axis must end at 1.
        rnn_hidden: hidden size of each stacked bidirectional GRU layer; empty for none.
        gated_rnn: product of a linear and a sigmoid BiGRU (CVSSP), or one BiGRU.
        rnn_activation: candidate activation of the non-gated BiGRU.
        rnn_recurrent_activation: 'keras2_hard_sigmoid' (Keras 2 default) or 'sigmoid'.
        rnn_reset_after: Keras 3 / cuDNN reset-after GRU instead of Keras 2's reset-before.
        linear_layers: sizes of tanh dense layers between the RNN and the head (pyannote port).
        dropout: dropout after each pooled group and before each dense layer (0 disables).
        head: 'mean' (crnn_at) or 'attention' (crnn_sed).
        attention_eps: lower clip of the attention weights in the attention head.
        bn_eps, bn_momentum: BatchNorm settings in PyTorch terms (Keras 2 defaults).
        bn_moving_variance: how BatchNorm updates its moving variance in training mode:
            'keras2_theano' (default: the original's Keras 2.0.8 on Theano, biased batch
            variance plus eps; :class:`devinet.layers.Keras2BatchNorm2d`) or 'torch'
            (``nn.BatchNorm2d``: unbiased, no eps). Eval mode and weights are the same either way.
    """

    n_mels: int = CVSSP_NUM_MELS
    num_classes: int = CVSSP_NUM_CLASSES
    conv_groups: tuple[int, ...] = SEVEN_BLOCKS
    conv_channels: int = 64
    pools: tuple[Pool, ...] = ((2, 2), (2, 2), (2, 2), (1, 2))
    gated_conv: bool = True
    conv_activation: str = "relu"
    kernel_size: int = 3
    final_conv_channels: int = 256
    final_pool: Pool = (1, 4)
    rnn_hidden: tuple[int, ...] = (128,)
    gated_rnn: bool = True
    rnn_activation: str = "tanh"
    rnn_recurrent_activation: str = "keras2_hard_sigmoid"
    rnn_reset_after: bool = False
    linear_layers: tuple[int, ...] = ()
    dropout: float = 0.0
    head: str = "mean"
    attention_eps: float = 1e-7
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    bn_moving_variance: str = "keras2_theano"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Normalise list inputs (YAML, JSON, checkpoints) to tuples so the config is hashable.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("conv_groups", _int_tuple("conv_groups", self.conv_groups))
        set_("pools", tuple(_pool("pools", p) for p in _seq("pools", self.pools)))
        set_("final_pool", _pool("final_pool", self.final_pool))
        set_("rnn_hidden", _int_tuple("rnn_hidden", self.rnn_hidden))
        set_("linear_layers", _int_tuple("linear_layers", self.linear_layers))
        self._validate()

    def _validate(self) -> None:
        problems = []
        for key in ("n_mels", "num_classes", "conv_channels", "kernel_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                problems.append(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if not self.conv_groups or any(n < 1 for n in self.conv_groups):
            problems.append(f"conv_groups must list at least one group of >= 1 blocks, got {self.conv_groups}")
        if len(self.pools) != len(self.conv_groups):
            problems.append(
                f"pools has {len(self.pools)} entries but conv_groups has {len(self.conv_groups)} groups; "
                "give one pooling per group"
            )
        if any(n < 1 for n in self.rnn_hidden + self.linear_layers):
            problems.append("rnn_hidden and linear_layers sizes must be positive")
        if self.final_conv_channels < 0:
            problems.append("final_conv_channels must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head not in ("mean", "attention"):
            problems.append(f"head must be 'mean' or 'attention', got {self.head!r}")
        if self.rnn_recurrent_activation not in ("keras2_hard_sigmoid", "sigmoid"):
            problems.append("rnn_recurrent_activation must be 'keras2_hard_sigmoid' or 'sigmoid'")
        if self.conv_activation not in ("linear", "relu"):
            problems.append(f"conv_activation must be 'linear' or 'relu', got {self.conv_activation!r}")
        if self.bn_moving_variance not in BN_MOVING_VARIANCE:
            problems.append(f"bn_moving_variance must be one of {BN_MOVING_VARIANCE}, got {self.bn_moving_variance!r}")
        if self.rnn_activation not in ("tanh", "linear", "sigmoid", "relu"):
            problems.append(f"unknown rnn_activation {self.rnn_activation!r}")
        if not problems:
            mels = self.n_mels
            for _, f in self.pools + (self.final_pool,):
                mels //= f
            if mels != 1:
                problems.append(
                    f"n_mels={self.n_mels} becomes {mels} after mel pooling "
                    f"{[p[1] for p in self.pools]} then {self.final_pool[1]}; it must reduce to exactly 1"
                )
        if problems:
            raise ConfigError("invalid DeviNet configuration: " + "; ".join(problems))

    # ------------------------------------------------------------------ geometry
    @property
    def time_pools(self) -> tuple[int, ...]:
        return tuple(p[0] for p in self.pools) + (self.final_pool[0],)

    @property
    def time_stride(self) -> int:
        """Input frames per output frame."""
        return math.prod(self.time_pools)

    @property
    def num_blocks(self) -> int:
        return sum(self.conv_groups)

    def num_frames(self, num_input_frames: int) -> int:
        """Output frames for ``num_input_frames`` input frames (pools floor, like Keras 'valid')."""
        n = int(num_input_frames)
        for p in self.time_pools:
            n //= p
        return n

    @property
    def min_input_frames(self) -> int:
        return self.time_stride

    def receptive_field(self) -> tuple[int, int]:
        """(size, step) in input frames of one output frame of the convolutional front end.

        The bidirectional GRU that follows sees the whole input, so this is the local
        receptive field of the features each GRU step reads.
        """
        size, jump = 1, 1
        for n_blocks, (t, _) in zip(self.conv_groups, self.pools):
            size += n_blocks * (self.kernel_size - 1) * jump
            size += (t - 1) * jump
            jump *= t
        if self.final_conv_channels:
            size += (self.kernel_size - 1) * jump
        size += (self.final_pool[0] - 1) * jump
        jump *= self.final_pool[0]
        return size, jump

    def receptive_field_center(self, frame: int = 0) -> float:
        """Center (in input frames, may be fractional) of output frame ``frame``'s receptive field."""
        _, step = self.receptive_field()
        return frame * step + (step - 1) / 2

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (lists instead of tuples)."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeviNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown DeviNet configuration keys: {', '.join(unknown)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "DeviNetConfig":
        return self.from_dict({**dataclasses.asdict(self), **changes})


def json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _seq(key: str, value: Any) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    return value


def _int_tuple(key: str, value: Any) -> tuple[int, ...]:
    value = _seq(key, value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key} must be a list of integers, got {list(value)!r}")
    return tuple(value)


def _pool(key: str, value: Any) -> Pool:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (1, value)
    value = _int_tuple(key, value)
    if len(value) != 2 or min(value) < 1:
        raise ConfigError(f"{key}: a pooling is an integer (mel only) or a [time, mel] pair >= 1, got {list(value)}")
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------- presets
def _blocks_to_groups(blocks: int) -> tuple[int, ...]:
    if blocks == 7:
        return SEVEN_BLOCKS
    if blocks == 8:
        return EIGHT_BLOCKS
    raise ConfigError(f"CVSSP presets have 7 live gated blocks (original) or 8 (intended), got blocks={blocks}")


def cvssp_crnn_at(blocks: int = 7, **overrides: Any) -> DeviNetConfig:
    return DeviNetConfig(name="cvssp_crnn_at", conv_groups=_blocks_to_groups(blocks),
                         pools=((2, 2), (2, 2), (2, 2), (1, 2)), final_pool=(1, 4), head="mean", **overrides)


def cvssp_crnn_sed(blocks: int = 7, **overrides: Any) -> DeviNetConfig:
    return DeviNetConfig(name="cvssp_crnn_sed", conv_groups=_blocks_to_groups(blocks),
                         pools=((1, 2), (1, 2), (1, 2), (1, 2)), final_pool=(1, 4), head="attention", **overrides)


def cvssp_cnnrnn_at(blocks: int = 7, **overrides: Any) -> DeviNetConfig:
    return DeviNetConfig(name="cvssp_cnnrnn_at", conv_groups=_blocks_to_groups(blocks),
                         pools=((2, 2), (2, 2), (2, 2), (1, 3)), final_pool=(1, 2), head="mean", **overrides)


def cvssp_crnn_baseline(blocks: int = 7, **overrides: Any) -> DeviNetConfig:
    """The paper's non-gated CRNN baseline, as main_cnnrnn_balbatch_norm_baseline_icassp2018.py built it.

    Seven live blocks of Conv2D(64, 3x3, no bias, linear) -> BatchNorm with no nonlinearity
    (the 8th is dead as in the other scripts), the cnnrnn_at poolings, the same final conv,
    one Bidirectional(GRU(128, activation='relu')) and the mean head.
    """
    overrides = {"conv_channels": 64, "gated_conv": False, "conv_activation": "linear", "gated_rnn": False,
                 "rnn_activation": "relu", **overrides}
    return DeviNetConfig(name="cvssp_crnn_baseline", conv_groups=_blocks_to_groups(blocks),
                         pools=((2, 2), (2, 2), (2, 2), (1, 3)), final_pool=(1, 2), head="mean", **overrides)



# ---------------------------------------------------------------------- capacity-matched ablation
def conv_front_end_parameters(config: DeviNetConfig, keras_style: bool = False) -> int:
    """Parameters of the convolutional front end (conv blocks with their BatchNorm, final conv).

    The rest of the model (GRU, dense layers, head) depends only on ``final_conv_channels`` (or
    the last block's channels when there is no final conv). ``keras_style`` also counts
    BatchNorm's moving mean and variance, as Keras' ``count_params`` does.
    """
    k2 = config.kernel_size ** 2
    per_bn_channel = 4 if keras_style else 2  # gamma, beta (+ moving mean, moving variance)
    conv_out = 2 * config.conv_channels if config.gated_conv else config.conv_channels
    total, in_ch = 0, 1
    for _ in range(config.num_blocks):
        total += k2 * in_ch * conv_out + per_bn_channel * conv_out  # conv without bias, then BatchNorm
        in_ch = config.conv_channels
    if config.final_conv_channels:
        total += k2 * in_ch * config.final_conv_channels + config.final_conv_channels
    return total


def ungated_matched(config: DeviNetConfig) -> DeviNetConfig:
    """``config`` with every gated (GLU) block replaced by a plain ReLU block of the same size.

    A GLU block with C outputs convolves to 2C maps and gates one half with the other; the
    replacement is conv (no bias) -> BatchNorm -> ReLU with K outputs, where K is the integer
    that brings the model's trainable parameter count closest to ``config``'s (counting the
    next block's and the final conv's inputs, which change with K). Everything else
    (pooling, final conv, GRU, head) is unchanged, so the two models differ in gating alone.
    With a final conv the GRU and the head keep their sizes; without one they would see K
    channels instead of C, and the match would not hold: that is refused.
    """
    if not config.gated_conv:
        raise ConfigError("ungated_matched needs a gated model (gated_conv=True)")
    if not config.final_conv_channels:
        raise ConfigError("ungated_matched needs a final conv (final_conv_channels > 0) to keep the GRU's input")
    target = conv_front_end_parameters(config)

    def candidate(channels: int) -> DeviNetConfig:
        return config.replace(gated_conv=False, conv_activation="relu", conv_channels=channels,
                              name=f"{config.name}+ungated_matched")

    low, high = 1, 2 * config.conv_channels  # 2C ReLU channels already exceed the gated count
    while low < high:  # smallest K whose count reaches the target (the count grows with K)
        middle = (low + high) // 2
        if conv_front_end_parameters(candidate(middle)) < target:
            low = middle + 1
        else:
            high = middle
    best = min((k for k in (low - 1, low) if k >= 1),
               key=lambda k: abs(conv_front_end_parameters(candidate(k)) - target))
    return candidate(best)

#: the older port's configuration keys and the defaults it documented (its list defaults of None crashed)
PYANNOTE_KEYS = {
    "conv_blocks": 4,
    "conv_channels": 128,
    "layers_pooling": [2, 2, 2, 2],
    "final_pooling": 4,
    "dropout": 0.0,
    "recurrent": [128],
    "gated_rnn": True,
    "linear_layers": [],
}


def pyannote_devinet(num_classes: int = 1, n_mels: int = CVSSP_NUM_MELS, head: str = "mean",
                     **params: Any) -> DeviNetConfig:
    """A config from the older pyannote port's keys, with its bugs fixed.

    Keys: conv_blocks (pooled groups of two gated blocks), conv_channels (channels after
    gating), layers_pooling (mel pooling per group, or [time, mel] pairs), final_pooling,
    dropout, recurrent (hidden sizes of stacked gated BiGRUs), gated_rnn, linear_layers.
    Fixed against the old port: the second half gates (as in CVSSP), no conv bias, Keras
    BatchNorm settings, Keras-2 GRUs with directions concatenated (not summed), a stride-1
    final conv, and one pooling per block group required (the old sample config listed four
    poolings for three groups and crashed at construction).
    """
    unknown = sorted(set(params) - set(PYANNOTE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown pyannote DeviNet parameters: {', '.join(unknown)} (known: {', '.join(PYANNOTE_KEYS)})"
        )
    p = {**PYANNOTE_KEYS, **{k: v for k, v in params.items() if v is not None}}
    conv_blocks = p["conv_blocks"]
    if not isinstance(conv_blocks, int) or isinstance(conv_blocks, bool) or conv_blocks < 1:
        raise ConfigError(f"conv_blocks must be a positive integer, got {conv_blocks!r}")
    pooling = _seq("layers_pooling", p["layers_pooling"])
    if len(pooling) != conv_blocks:
        raise ConfigError(
            f"conv_blocks={conv_blocks} but layers_pooling has {len(pooling)} values {list(pooling)}: "
            f"give one pooling per block group (e.g. conv_blocks: {len(pooling)})"
        )
    return DeviNetConfig(
        name="pyannote_devinet",
        n_mels=n_mels,
        num_classes=num_classes,
        conv_groups=(2,) * conv_blocks,
        conv_channels=p["conv_channels"],
        pools=tuple(pooling),
        final_pool=p["final_pooling"],
        rnn_hidden=p["recurrent"],
        gated_rnn=bool(p["gated_rnn"]),
        linear_layers=p["linear_layers"],
        dropout=float(p["dropout"]),
        head=head,
    )


PRESETS = {
    "cvssp_crnn_at": cvssp_crnn_at,
    "cvssp_crnn_sed": cvssp_crnn_sed,
    "cvssp_cnnrnn_at": cvssp_cnnrnn_at,
    "cvssp_crnn_baseline": cvssp_crnn_baseline,
    "pyannote_devinet": pyannote_devinet,
}


def preset_config(name: str, **overrides: Any) -> DeviNetConfig:
    """Build a preset's config; ``overrides`` are DeviNetConfig fields (or the preset's own keys)."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    try:
        return factory(**overrides)
    except TypeError as exc:  # an override that is neither a config field nor a preset key
        raise ConfigError(f"preset {name!r}: {exc}") from None

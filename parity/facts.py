"""What a Keras file's config states about its architecture, checked against what devinet builds.

Detection (:func:`parity.mapping.detect`) reads the architecture from the weights' shapes and
the layer order; a file's config (``model_config`` of a Keras 2 file, ``config.json`` of a
``.keras`` archive) states more: strides, dilation, padding, BatchNorm epsilon, GRU units and
direction, merge mode, activations. A config that says something else than the model devinet
builds describes another network, whose genuine weights would silently compute something
else once converted; :func:`contradictions` lists every such fact, naming the layer.

The table :data:`FACTS` says, per canonical layer role, which config entry holds each fact
and the value devinet builds (a constant, or a function of the detected config and the
role's indices). An entry the config does not state is not checked (weights-only files
have no config at all).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from devinet.config import DeviNetConfig

from .topology import KerasFile, KerasLayer

Expected = Any  # a value, a OneOf, or a function (config, role indices) -> one of those


@dataclass(frozen=True)
class OneOf:
    """Several spellings of the same fact (Keras 2 and 3 write BatchNorm's channel axis as -1 or 3)."""

    values: tuple

    def __str__(self) -> str:
        return " or ".join(map(repr, self.values))


@dataclass(frozen=True)
class Fact:
    """One stated fact: the config entry at ``path`` must equal ``expected``.

    ``pair``: an int stands for the same value on both axes (Keras' ``strides=1``);
    ``absent_means``: the entry that gives the value of one written as null (MaxPooling2D's
    strides); ``view``: the part of the entry that is the fact (a Reshape's last axes).
    """

    what: str
    path: tuple[str, ...]
    expected: Expected
    pair: bool = False
    absent_means: str | None = None
    view: Callable[[tuple], Any] | None = None


def _conv(filters: Callable[[DeviNetConfig], int], use_bias: bool, activation: Expected) -> tuple[Fact, ...]:
    return (
        Fact("filters", ("filters",), lambda c, _: filters(c)),
        Fact("kernel_size", ("kernel_size",), lambda c, _: (c.kernel_size, c.kernel_size), pair=True),
        Fact("strides", ("strides",), (1, 1), pair=True),
        Fact("dilation_rate", ("dilation_rate",), (1, 1), pair=True),
        Fact("padding", ("padding",), "same"),
        Fact("data_format", ("data_format",), "channels_last"),
        Fact("groups", ("groups",), 1),
        Fact("use_bias", ("use_bias",), use_bias),
        Fact("activation", ("activation",), activation),
    )


def _pool(size: Callable[[DeviNetConfig, tuple[str, ...]], tuple[int, int]]) -> tuple[Fact, ...]:
    return (
        Fact("pool_size", ("pool_size",), size, pair=True),
        Fact("strides", ("strides",), size, pair=True, absent_means="pool_size"),
        Fact("padding", ("padding",), "valid"),
        Fact("data_format", ("data_format",), "channels_last"),
    )


def _gru(activation: Expected) -> tuple[Fact, ...]:
    """A Bidirectional GRU: its wrapper, its forward layer ('layer') and, in Keras 3, its backward layer."""
    facts = [Fact("merge_mode", ("merge_mode",), "concat")]
    for side, backwards in (("layer", False), ("backward_layer", True)):
        facts += [
            Fact(f"{side} units", (side, "config", "units"), lambda c, g: c.rnn_hidden[int(g[0])]),
            Fact(f"{side} go_backwards", (side, "config", "go_backwards"), backwards),
            Fact(f"{side} return_sequences", (side, "config", "return_sequences"), True),
            Fact(f"{side} stateful", (side, "config", "stateful"), False),
            Fact(f"{side} use_bias", (side, "config", "use_bias"), True),
            Fact(f"{side} reset_after", (side, "config", "reset_after"), lambda c, _: c.rnn_reset_after),
            Fact(f"{side} activation", (side, "config", "activation"), activation),
        ]
    return tuple(facts)


def _dense(activation: str) -> tuple[Fact, ...]:
    return (
        Fact("units", ("layer", "config", "units"), lambda c, _: c.num_classes),
        Fact("activation", ("layer", "config", "activation"), activation),
        Fact("use_bias", ("layer", "config", "use_bias"), True),
    )


#: canonical role (regex) -> the facts its config may state
FACTS: tuple[tuple[str, tuple[Fact, ...]], ...] = (
    (r"gcnn_\d+_conv", _conv(lambda c: 2 * c.conv_channels if c.gated_conv else c.conv_channels, False, "linear")),
    (r"final_conv", _conv(lambda c: c.final_conv_channels, True, "relu")),
    (r"gcnn_\d+_bn", (
        Fact("epsilon", ("epsilon",), lambda c, _: c.bn_eps),
        Fact("momentum", ("momentum",), lambda c, _: 1.0 - c.bn_momentum),
        Fact("axis", ("axis",), OneOf((-1, 3, (-1,), (3,)))),
        Fact("center", ("center",), True),
        Fact("scale", ("scale",), True),
    )),
    (r"gcnn_\d+_act_a", (Fact("activation", ("activation",), "linear"),)),
    (r"gcnn_\d+_act_b", (Fact("activation", ("activation",), "sigmoid"),)),
    (r"gcnn_\d+_relu", (Fact("activation", ("activation",), lambda c, _: c.conv_activation),)),
    (r"pool_(\d+)", _pool(lambda c, g: c.pools[int(g[0])])),
    (r"final_pool", _pool(lambda c, _: c.final_pool)),
    (r"rnn_(\d+)_linear", _gru("linear")),
    (r"rnn_(\d+)_sigmoid", _gru("sigmoid")),
    (r"rnn_(\d+)_gru", _gru(lambda c, _: c.rnn_activation)),
    (r"head_frame", _dense("sigmoid")),
    (r"head_attention", _dense("softmax")),
    (r"head_pool", (Fact("eps", ("eps",), lambda c, _: c.attention_eps),)),
    (r"to_image", (Fact("target_shape (mel bins, channels)", ("target_shape",), lambda c, _: (c.n_mels, 1),
                        view=lambda shape: shape[-2:]),)),
    (r"to_sequence", (Fact("target_shape (features)", ("target_shape",), lambda c, _: c.final_conv_channels,
                           view=lambda shape: shape[-1]),)),
)

_MISSING = object()


def contradictions(file: KerasFile, config: DeviNetConfig) -> list[str]:
    """Every fact the file's layer configs state that differs from ``config`` (what devinet builds)."""
    problems = []
    for layer in file.layers:
        if not layer.role or not layer.config:
            continue
        for pattern, facts in FACTS:
            match = re.fullmatch(pattern, layer.role)
            if match is None:
                continue
            for fact in facts:
                problem = _check(layer, fact, config, match.groups())
                if problem:
                    problems.append(problem)
    return problems


def _check(layer: KerasLayer, fact: Fact, config: DeviNetConfig, groups: tuple[str, ...]) -> str | None:
    found = _lookup(layer.config, fact.path)
    if found is _MISSING:
        return None
    if found is None and fact.absent_means is not None:
        found = _lookup(layer.config, (fact.absent_means,))
    expected = fact.expected(config, groups) if callable(fact.expected) else fact.expected
    value = _plain(found, fact.pair)
    if fact.view is not None:
        value = fact.view(value) if isinstance(value, tuple) and value else found
    if _equal(value, expected):
        return None
    return (f"layer {layer.name!r} ({layer.role}): the config says {fact.what} {_show(found)}, "
            f"devinet builds {_show(expected)}")


def _lookup(config: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return _MISSING
        config = config[key]
    return config


def _plain(value: Any, pair: bool) -> Any:
    """JSON lists as tuples; with ``pair``, an int as the same value on both axes."""
    if pair and isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list):
        return tuple(_plain(v, False) for v in value)
    return value


def _equal(value: Any, expected: Any) -> bool:
    if isinstance(expected, OneOf):
        return any(_equal(value, option) for option in expected.values)
    if isinstance(expected, bool) or isinstance(value, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(expected, float) and isinstance(value, (int, float)):
        return math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(expected, tuple) and isinstance(value, tuple):
        return len(value) == len(expected) and all(_equal(v, e) for v, e in zip(value, expected))
    return value == expected


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value) if isinstance(value, str) else str(value)

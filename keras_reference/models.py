"""The original CVSSP models (Xu et al., ICASSP 2018) rebuilt in Keras 3 with their exact semantics.

Every model follows the layer order of its original script and keeps Keras 2.0.8's
semantics: GRUs with the reset gate before the recurrent matmul (``reset_after=False``,
one bias of 3H) and the Keras 2 hard sigmoid as recurrent activation, Keras BatchNorm
defaults (eps 1e-3, momentum 0.99), channels-last images (N, time, mel, channels).

Layer names are stable and equal to devinet's module names with '.' replaced by '_'
(devinet ``gcnn.3.conv`` is Keras ``gcnn_3_conv``):

- ``input`` (N, T, 64), then ``to_image`` Reshape -> (N, T, 64, 1); cnnrnn_at takes
  (N, T, 64, 1) directly, as its script did;
- ``gcnn_{i}_conv`` / ``gcnn_{i}_bn`` / ``gcnn_{i}_glu`` per gated block (the baseline's
  blocks end at their BatchNorm: the original has no nonlinearity there);
- ``pool_{j}`` after each group of blocks; ``final_conv`` (256, ReLU, bias), ``final_pool``,
  ``to_sequence`` Reshape -> (N, T', 256);
- ``rnn_0_linear`` and ``rnn_0_sigmoid`` bidirectional GRUs multiplied in ``rnn_0_gate``
  (baseline: one ``rnn_0_gru``);
- ``head_frame`` frame-wise sigmoid (N, T', C); ``head_attention`` (attention head only);
  ``head_pool`` the clip output (N, C), which is the model's output, as in the original.

The original scripts build eight gated blocks, but the eighth is dead: they compute
``cnn3 = block(cnn1)`` and then pool ``cnn1``, so Keras dropped that block from the model
and from every saved file. ``blocks=7`` (the default) reproduces that and loads real
checkpoints; ``blocks=8`` builds the intended architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers  # noqa: E402

from devinet.errors import ConfigError  # noqa: E402

from .layers import GLU, AttentionPooling, Keras2BatchNormalization, TimeMean, keras2_hard_sigmoid  # noqa: E402

Pool = tuple[int, int]

NUM_CLASSES = 17
NUM_MELS = 64
NUM_FRAMES = 240
GRU_UNITS = 128
FINAL_CONV_CHANNELS = 256

#: gated blocks per pooled group: the original's 7 live blocks, or the intended 8
BLOCK_GROUPS = {7: (2, 2, 2, 1), 8: (2, 2, 2, 2)}


@dataclass(frozen=True)
class Preset:
    """One original model: its script and the choices that tell it from the others.

    Attributes:
        script: the original training script it reproduces.
        pools: (time, mel) max-pooling after each of the four groups of blocks.
        final_pool: (time, mel) max-pooling after the final conv.
        head: 'mean' (clip = mean of frame outputs) or 'attention'.
        image_input: the input is (T, 64, 1) with no Reshape (main_cnnrnn_at.py).
        gated: gated blocks and gated BiGRU; False gives the paper's non-gated CRNN baseline.
        block_channels: channels of each block's output (a gated conv makes twice as many).
        block_activation: activation after a non-gated block's BatchNorm ('linear': none).
        rnn_activation: candidate activation of the non-gated model's single BiGRU.
    """

    script: str
    pools: tuple[Pool, Pool, Pool, Pool]
    final_pool: Pool
    head: str
    image_input: bool = False
    gated: bool = True
    block_channels: int = 64
    block_activation: str = "relu"
    rnn_activation: str = "tanh"


PRESETS: dict[str, Preset] = {
    "cvssp_crnn_at": Preset("main_crnn_at.py", ((2, 2), (2, 2), (2, 2), (1, 2)), (1, 4), "mean"),
    "cvssp_crnn_sed": Preset("main_crnn_sed.py", ((1, 2), (1, 2), (1, 2), (1, 2)), (1, 4), "attention"),
    "cvssp_cnnrnn_at": Preset("main_cnnrnn_at.py", ((2, 2), (2, 2), (2, 2), (1, 3)), (1, 2), "mean",
                              image_input=True),
    # The paper's non-gated CRNN: conv(64, linear) -> BN blocks with no nonlinearity, the
    # cnnrnn_at poolings and input, one Bidirectional(GRU(128, activation='relu')), mean head.
    "cvssp_crnn_baseline": Preset("main_cnnrnn_balbatch_norm_baseline_icassp2018.py",
                                  ((2, 2), (2, 2), (2, 2), (1, 3)), (1, 2), "mean", image_input=True,
                                  gated=False, block_channels=64, block_activation="linear",
                                  rnn_activation="relu"),
}


def build(name: str, *, blocks: int = 7, num_classes: int = NUM_CLASSES, n_frames: int | None = NUM_FRAMES,
          n_mels: int = NUM_MELS, attention_eps: float = 1e-7, keras2_batchnorm: bool = False) -> keras.Model:
    """Build an original model by its preset name (``cvssp_crnn_at``, ``cvssp_crnn_sed``, ...).

    Args:
        name: a key of :data:`PRESETS`.
        blocks: 7 live gated blocks as the original actually ran (default), or the intended 8.
        num_classes: output classes (17 in DCASE 2017 Task 4).
        n_frames: input frames (240 = 10 s); None accepts any length (the time pools floor).
        n_mels: mel bins; the mel pools must bring them down to exactly 1.
        attention_eps: lower clip of the attention weights (attention head only).
        keras2_batchnorm: BatchNorm layers that update their moving variance in training as
            Keras 2.0.8 on Theano did (:class:`Keras2BatchNormalization`), for training like the
            original; off by default, so that saved files hold Keras' own BatchNormalization.

    Returns:
        A ``keras.Model`` from (N, n_frames, n_mels) — (N, n_frames, n_mels, 1) for
        cvssp_cnnrnn_at — to the clip output (N, num_classes). Uncompiled; weights carry
        Keras' default initialisers, as in the original.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown Keras reference model {name!r}; choose one of {', '.join(PRESETS)}") from None
    if blocks not in BLOCK_GROUPS:
        raise ConfigError(f"blocks must be 7 (the original's live blocks) or 8 (intended), got {blocks!r}")
    _check_mel_pooling(name, preset, n_mels)

    if preset.image_input:
        inputs = keras.Input(shape=(n_frames, n_mels, 1), name="input")
        x = inputs
    else:
        inputs = keras.Input(shape=(n_frames, n_mels), name="input")
        x = layers.Reshape((-1, n_mels, 1), name="to_image")(inputs)

    index = 0
    for group, (n_blocks, pool) in enumerate(zip(BLOCK_GROUPS[blocks], preset.pools)):
        for _ in range(n_blocks):
            x = _conv_block(x, index, preset, keras2_batchnorm)
            index += 1
        x = layers.MaxPooling2D(pool_size=pool, name=f"pool_{group}")(x)

    x = layers.Conv2D(FINAL_CONV_CHANNELS, 3, padding="same", activation="relu", use_bias=True,
                      name="final_conv")(x)
    x = layers.MaxPooling2D(pool_size=preset.final_pool, name="final_pool")(x)
    x = layers.Reshape((-1, FINAL_CONV_CHANNELS), name="to_sequence")(x)

    if preset.gated:
        linear = _bigru("rnn_0_linear", "linear")(x)
        sigmoid = _bigru("rnn_0_sigmoid", "sigmoid")(x)
        x = layers.Multiply(name="rnn_0_gate")([linear, sigmoid])
    else:
        x = _bigru("rnn_0_gru", preset.rnn_activation)(x)

    cla = _time_dense("head_frame", num_classes, "sigmoid")(x)
    if preset.head == "mean":
        clip = TimeMean(name="head_pool")(cla)
    else:
        att = _time_dense("head_attention", num_classes, "softmax")(cla)
        clip = AttentionPooling(eps=attention_eps, name="head_pool")([cla, att])
    return keras.Model(inputs, clip, name=name)


def _check_mel_pooling(name: str, preset: Preset, n_mels: int) -> None:
    mels = n_mels
    for _, mel_pool in preset.pools + (preset.final_pool,):
        mels //= mel_pool
    if mels != 1:
        raise ConfigError(
            f"{name}: n_mels={n_mels} becomes {mels} after the mel pools "
            f"{[p[1] for p in preset.pools + (preset.final_pool,)]}; it must reduce to exactly 1"
        )


def _conv_block(x, index: int, preset: Preset, keras2_batchnorm: bool = False):
    """Gated block: Conv2D(2C, 3x3, same, no bias) -> BN -> GLU; baseline: Conv2D(C) -> BN [-> ReLU]."""
    prefix = f"gcnn_{index}"
    filters = 2 * preset.block_channels if preset.gated else preset.block_channels
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    batch_norm = Keras2BatchNormalization if keras2_batchnorm else layers.BatchNormalization
    x = batch_norm(axis=-1, name=f"{prefix}_bn")(x)
    if preset.gated:
        return GLU(name=f"{prefix}_glu")(x)
    if preset.block_activation == "linear":
        return x
    return layers.Activation(preset.block_activation, name=f"{prefix}_{preset.block_activation}")(x)


def _bigru(name: str, activation: str) -> layers.Bidirectional:
    """Keras 2.0.8 GRU semantics, both directions concatenated (forward first), all time steps."""
    gru = layers.GRU(GRU_UNITS, activation=activation, recurrent_activation=keras2_hard_sigmoid,
                     reset_after=False, return_sequences=True, name=f"{name}_gru")
    return layers.Bidirectional(gru, merge_mode="concat", name=name)


def _time_dense(name: str, units: int, activation: str) -> layers.TimeDistributed:
    return layers.TimeDistributed(layers.Dense(units, activation=activation, name=f"{name}_dense"), name=name)


def build_intermediate_model(model: keras.Model, layer_names: Sequence[str] | None = None) -> keras.Model:
    """A model with the same inputs whose outputs are the named layers' outputs, as a dict.

    ``layer_names`` defaults to every layer but the input, in forward order. ``predict``
    then returns ``{name: array}``: the Keras side of the layer-by-layer parity check.
    """
    available = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = list(available if layer_names is None else layer_names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"model {model.name!r} has no layer {', '.join(map(repr, unknown))}; "
                          f"layers: {', '.join(available)}")
    outputs = {n: model.get_layer(n).output for n in names}
    return keras.Model(model.input, outputs, name=f"{model.name}_intermediates")


def framewise_model(model: keras.Model) -> keras.Model:
    """The frame-wise (SED) output of a built model, (N, T', C): the ``head_frame`` layer."""
    return keras.Model(model.input, model.get_layer("head_frame").output, name=f"{model.name}_framewise")

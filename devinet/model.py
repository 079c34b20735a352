"""DeviNet: the CVSSP gated CRNN family.

Module names are the canonical layer names shared with ``keras_reference`` (PyTorch
``gcnn.3.conv`` is Keras ``gcnn_3_conv``); the conversion table in ``parity`` relies on them.

::

    (N, T, F) log-mel
      -> unsqueeze            (N, 1, T, F)
      -> gcnn.{i} blocks with pool.{j} after each group      (N, C, T', F')
      -> final_conv (ReLU) -> final_pool                      (N, 256, T_out, 1)
      -> to sequence                                          (N, T_out, 256)
      -> rnn.{k} (gated BiGRU)                                (N, T_out, 2H)
      -> dense.{m} (tanh, optional)
      -> head: frame-wise sigmoid + mean or attention pooling
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import DeviNetConfig, preset_config
from .errors import ConfigError, InputError
from .layers import (
    AttentionPoolingHead,
    ConvBlock,
    Conv2dAct,
    Dense,
    GatedBiGRU,
    GatedConvBlock,
    MeanPoolingHead,
    count_keras_params,
    keras_glorot_init_,
)
from .preprocessing import Preprocessing


class DeviNet(nn.Module):
    """The CVSSP gated CRNN (and its configurable family).

    ``forward(x)`` takes a (N, T, n_mels) float log-mel batch and returns a dict with
    ``clipwise`` (N, C) and ``framewise`` (N, T_out, C) probabilities (``attention`` too
    for the attention head), where ``T_out = self.num_frames(T)``.
    """

    def __init__(self, config: DeviNetConfig):
        super().__init__()
        if not isinstance(config, DeviNetConfig):
            raise TypeError(f"DeviNet needs a DeviNetConfig, got {type(config).__name__}")
        self.config = config
        #: how to run it on audio (classes, feature recipe, scaler, post-processing); set by devinet.load
        self.preprocessing: Preprocessing | None = None
        c = config
        if c.gated_conv:
            def block(*args):
                return GatedConvBlock(*args, bn_moving_variance=c.bn_moving_variance)
        else:
            def block(*args):
                return ConvBlock(*args, activation=c.conv_activation, bn_moving_variance=c.bn_moving_variance)
        blocks, pools = [], []
        in_ch = 1
        for n_blocks, pool in zip(c.conv_groups, c.pools):
            for _ in range(n_blocks):
                blocks.append(block(in_ch, c.conv_channels, c.kernel_size, c.bn_eps, c.bn_momentum))
                in_ch = c.conv_channels
            pools.append(nn.MaxPool2d(pool))
        self.gcnn = nn.ModuleList(blocks)
        self.pool = nn.ModuleList(pools)
        #: index of the last block of each group, after which pool.{j} applies
        self._pool_after = [sum(c.conv_groups[: j + 1]) - 1 for j in range(len(c.conv_groups))]
        if c.final_conv_channels:
            self.final_conv = Conv2dAct(in_ch, c.final_conv_channels, c.kernel_size, bias=True, activation="relu")
            in_ch = c.final_conv_channels
        else:
            self.final_conv = None
        self.final_pool = nn.MaxPool2d(c.final_pool)
        self.dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        rnns = []
        for hidden in c.rnn_hidden:
            rnns.append(GatedBiGRU(in_ch, hidden, gated=c.gated_rnn,
                                   recurrent_activation=c.rnn_recurrent_activation,
                                   reset_after=c.rnn_reset_after, activation=c.rnn_activation))
            in_ch = 2 * hidden
        self.rnn = nn.ModuleList(rnns)
        dense = []
        for size in c.linear_layers:
            dense.append(Dense(in_ch, size, activation="tanh"))
            in_ch = size
        self.dense = nn.ModuleList(dense)
        #: features per frame that the head reads (the pyannote integration builds its own head on them)
        self.embedding_size = in_ch
        if c.head == "attention":
            self.head = AttentionPoolingHead(in_ch, c.num_classes, eps=c.attention_eps)
        else:
            self.head = MeanPoolingHead(in_ch, c.num_classes)
        #: conv front-end micro-batch budget in bytes, set by :meth:`optimize_for_inference` (None: off)
        self._micro_batch_bytes: int | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DeviNet":
        """Build a preset (``cvssp_crnn_at``, ``cvssp_crnn_sed``, ``cvssp_cnnrnn_at``,
        ``cvssp_crnn_baseline``, ``pyannote_devinet``); ``overrides`` are config fields, ``blocks=8``
        for the intended eight gated blocks, or the pyannote port's keys for ``pyannote_devinet``."""
        return cls(preset_config(name, **overrides))

    def reset_parameters(self) -> None:
        """Keras' default initialisers (glorot-uniform kernels, orthogonal recurrent kernels, zero biases)."""
        self.apply(keras_glorot_init_)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    # ------------------------------------------------------------------ geometry
    def num_frames(self, num_input_frames: int) -> int:
        """Output frames for an input of ``num_input_frames`` frames."""
        return self.config.num_frames(num_input_frames)

    def receptive_field(self) -> tuple[int, int]:
        """(size, step) in input frames of one output frame of the convolutional front end."""
        return self.config.receptive_field()

    def num_parameters(self, keras_style: bool = True) -> int:
        """Parameter count; ``keras_style`` adds BatchNorm moving statistics as Keras counts them."""
        return count_keras_params(self) if keras_style else sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if not isinstance(x, torch.Tensor):
            raise InputError(f"DeviNet expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise InputError(f"DeviNet expects a (batch, frames, {c.n_mels}) log-mel tensor, got shape {tuple(x.shape)}")
        if x.shape[-1] != c.n_mels:
            raise InputError(f"DeviNet expects {c.n_mels} mel bins in the last dimension, got shape {tuple(x.shape)}")
        if x.shape[1] < c.min_input_frames:
            raise InputError(f"DeviNet needs at least {c.min_input_frames} frames (its time pooling), got {x.shape[1]}")
        if not x.is_floating_point():
            raise InputError(f"DeviNet expects a floating-point tensor, got {x.dtype}")
        dtype = self.gcnn[0].conv.weight.dtype
        if x.dtype != dtype:
            raise InputError(f"input dtype {x.dtype} does not match the model's {dtype} (convert one of them)")

    def forward_conv(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, n_mels) log-mel -> (N, T_out, C) output of the convolutional front end.

        After :meth:`optimize_for_inference`, an eval-mode forward on the CPU runs the front
        end over micro-batches of clips (see there); the clips are independent then, so the
        output is the same.
        """
        self._check_input(x)
        clips = self._micro_batch_clips(x)
        if clips < x.shape[0]:
            return torch.cat([self._conv_front(part) for part in x.split(clips)])
        return self._conv_front(x)

    def _conv_front(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        pool_after = dict(zip(self._pool_after, self.pool))
        for i, block in enumerate(self.gcnn):
            h = block(h)
            if i in pool_after:
                h = self.dropout(pool_after[i](h))
        if self.final_conv is not None:
            h = self.final_conv(h)
        h = self.final_pool(h)
        return h.squeeze(-1).transpose(1, 2)  # (N, C, T_out, 1) -> (N, T_out, C)

    def _micro_batch_clips(self, x: torch.Tensor) -> int:
        """Clips per micro-batch of the conv front end for input ``x`` (N, T, n_mels); N for one batch."""
        budget = self._micro_batch_bytes
        if budget is None or self.training or x.device.type != "cpu":
            return x.shape[0]
        # the largest activation: the first block's conv output at full resolution
        per_clip = self.gcnn[0].conv.out_channels * x.shape[1] * self.config.n_mels * x.element_size()
        return max(1, budget // per_clip)

    def optimize_for_inference(self, channels_last: bool = True, micro_batch_mb: float | None = 16.0) -> "DeviNet":
        """Opt in to a faster eval-mode forward that computes the same outputs; returns ``self``.

        In eval mode:

        - every conv + BatchNorm block (``gcnn.{i}``) runs as ONE convolution whose weight and bias
          have the BatchNorm folded in (:func:`devinet.layers.fold_batchnorm`), recomputed at each
          call from the current weights and running statistics, so later changes to them are
          followed;
        - on the CPU, the convolutional front end runs over micro-batches of clips whose largest
          activation (the first block's conv output, ``maps * T * n_mels`` values per clip) stays
          under ``micro_batch_mb`` MiB, so that the activations stay in the cache between
          layers (at least one clip per micro-batch; ``None``: the whole batch at once). The
          GRUs and the head still see the whole batch. The default, 16 MiB, is two clips of
          240 frames (docs/benchmarks.md, "Code choices", says how it was chosen).

        With ``channels_last`` the model's 4-d weights (and so its conv activations) move to
        ``torch.channels_last``, which oneDNN's convolutions run faster on the CPU.

        Outputs equal the unoptimized model's up to float32 rounding. Training mode runs the
        normal path (BatchNorm on batch statistics, updating its running statistics; the whole
        batch at once), so training is unchanged: bit for bit without ``channels_last``; with
        it, up to float32 rounding, and dropout draws its masks in another order. Parameters,
        buffers and ``state_dict`` keys are unchanged; the optimization itself is not saved
        with them. Default models are not optimized.

        Note: in eval mode, forward hooks on ``gcnn.{i}.conv`` and ``gcnn.{i}.bn`` do NOT fire
        (the folded block calls neither module), and hooks on other front-end modules fire once
        per micro-batch. Layer-by-layer tools (``parity.compare``) need an unoptimized model.

        Args:
            channels_last: convert the model to ``torch.channels_last``.
            micro_batch_mb: cache budget in MiB for the micro-batches, or None for none.
        """
        if micro_batch_mb is not None and not micro_batch_mb > 0:
            raise ConfigError(f"micro_batch_mb must be positive or None, got {micro_batch_mb!r}")
        for block in self.gcnn:
            block.fold_bn = True
        self._micro_batch_bytes = None if micro_batch_mb is None else int(micro_batch_mb * 2 ** 20)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, n_mels) log-mel -> (N, T_out, embedding_size) per-frame features before the head."""
        h = self.forward_conv(x)
        for rnn in self.rnn:
            h = rnn(h)
        for dense in self.dense:
            h = dense(self.dropout(h))
        return h

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"preset={self.config.name}"

"""Layers of the CVSSP gated CRNN, with the exact semantics of the original Keras 2.0.8 model.

Every layer here computes what its Keras 2.0.8 counterpart computed, so that weights
converted from an original checkpoint reproduce the original outputs. Where PyTorch's
built-in layer differs (GRU, hard sigmoid, BatchNorm defaults) the emulation says so in
its name.

Shapes follow PyTorch conventions: images are (N, C, T, F) (time, then mel bins), sequences
are batch-first (N, T, D).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import BN_MOVING_VARIANCE
from .errors import ConfigError
from .gru_scan import ScanSpec, keras2_gru_scan

# Keras 2 BatchNormalization defaults, expressed in PyTorch terms
# (Keras momentum 0.99 is the weight of the old statistic; PyTorch's momentum is 1 - that).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01


def keras2_hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2.x ``hard_sigmoid``: clip(0.2 x + 0.5, 0, 1).

    Not ``torch.nn.functional.hardsigmoid`` (x/6 + 1/2), nor Keras 3's 'hard_sigmoid'.
    """
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": _linear,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "keras2_hard_sigmoid": keras2_hard_sigmoid,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class Conv2dAct(nn.Conv2d):
    """Conv2d with 'same' padding followed by an activation, like a Keras ``Conv2D(activation=...)``.

    The module's output is the activated map, so a forward hook sees what Keras reports as
    the layer's output. (N, C_in, T, F) -> (N, C_out, T, F).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
                 activation: str = "linear"):
        if kernel_size % 2 != 1:
            raise ConfigError(f"'same' padding needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.activation = activation
        self._act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(super().forward(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


class Dense(nn.Linear):
    """Linear layer followed by an activation, like Keras ``Dense(activation=...)``.

    'softmax' is taken over the last dimension (Keras' default axis). Applied to (..., in)
    it acts frame by frame, like ``TimeDistributed(Dense)``.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "linear", bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if activation != "softmax":
            get_activation(activation)  # validate the name
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.activation == "softmax":
            return torch.softmax(y, dim=-1)
        return ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one convolution that computes ``bn(conv(x))`` with ``bn`` in eval mode.

    Eval-mode BatchNorm is a per-channel affine map ``(y - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)``, so ``W' = W * s`` (per output channel) and
    ``b' = (b - mean) * s + beta`` (``b = 0`` for a conv without bias). Computed from the current
    parameters and running statistics, so it follows any change to them, and differentiable
    in the parameters. ``W'`` keeps ``conv.weight``'s memory format.

    Args:
        conv: a (C_out, C_in, k, k) convolution with no activation after it.
        bn: BatchNorm over its C_out maps, with running statistics.

    Returns:
        ``(W', b')`` of shapes (C_out, C_in, k, k) and (C_out,).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = shift * scale if bn.bias is None else torch.addcmul(bn.bias, shift, scale)
    return conv.weight * scale.view(-1, 1, 1, 1), bias


class Keras2BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training mode updates the moving statistics as Keras 2.0.8 on Theano did.

    Keras 2.0.8's ``BatchNormalization`` on Theano normalizes with the biased batch variance
    (as ``nn.BatchNorm2d`` does) and then updates, with ``m = momentum`` in PyTorch terms (0.01)::

        running_mean = (1 - m) * running_mean + m * batch_mean
        running_var  = (1 - m) * running_var  + m * (biased_batch_var + eps)

    (Theano's ``batch_normalization_train`` returns ``1 / sqrt(var + eps)``, from which Keras
    takes ``var + eps``.) ``nn.BatchNorm2d`` puts the unbiased variance without eps there. Eval
    mode, parameters, buffers and ``state_dict`` keys are those of ``nn.BatchNorm2d``.

    The fused ``F.batch_norm`` runs as usual but updates a copy of the moving variance; from
    it and the previous value Keras' value follows: with ``n`` values per channel, torch gives
    ``r = (1 - m) * old + m * var * n / (n - 1)``, so Keras' is
    ``r * (n - 1) / n + (1 - m) * old / n + m * eps`` (sums of positive terms: no cancellation).
    That costs one per-channel copy instead of a second pass over the activations; the
    buffer itself is only written after the op (autograd saved the op's inputs).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.running_var is not None):
            return super().forward(x)
        if self.momentum is None:
            raise ConfigError("Keras2BatchNorm2d needs a momentum (Keras has no cumulative moving average)")
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        m = self.momentum
        torch_var = self.running_var.clone()
        y = F.batch_norm(x, self.running_mean, torch_var, self.weight, self.bias, True, m, self.eps)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            self.running_var.mul_((1.0 - m) / n).add_(torch_var, alpha=(n - 1) / n).add_(m * self.eps)
        return y


def batch_norm_2d(channels: int, eps: float, momentum: float, moving_variance: str = "keras2_theano") -> nn.BatchNorm2d:
    """The BatchNorm of the conv blocks: :class:`Keras2BatchNorm2d` ('keras2_theano') or ``nn.BatchNorm2d`` ('torch')."""
    if moving_variance not in BN_MOVING_VARIANCE:
        raise ConfigError(f"bn_moving_variance must be one of {BN_MOVING_VARIANCE}, got {moving_variance!r}")
    cls = Keras2BatchNorm2d if moving_variance == "keras2_theano" else nn.BatchNorm2d
    return cls(channels, eps=eps, momentum=momentum)


class _ConvBatchNorm(nn.Module):
    """Conv2d (no bias, no activation) -> BatchNorm, the front of the conv blocks; (N, C_in, T, F) -> (N, C, T, F).

    With ``fold_bn`` set (by :meth:`devinet.DeviNet.optimize_for_inference`) and BatchNorm in
    eval mode, the two run as one convolution with :func:`fold_batchnorm`'s weights: the same
    values up to float32 rounding, but forward hooks on ``conv`` and ``bn`` do not fire.
    In training mode the two modules always run as they are.
    """

    def __init__(self, in_channels: int, conv_channels: int, kernel_size: int, bn_eps: float,
                 bn_momentum: float, bn_moving_variance: str = "keras2_theano"):
        super().__init__()
        self.conv = Conv2dAct(in_channels, conv_channels, kernel_size, bias=False)
        self.bn = batch_norm_2d(conv_channels, bn_eps, bn_momentum, bn_moving_variance)
        #: fold ``bn`` into ``conv`` while ``bn`` is in eval mode (a plain flag: not in the state dict)
        self.fold_bn = False

    def conv_bn(self, x: torch.Tensor) -> torch.Tensor:
        """``bn(conv(x))``, folded into one convolution when ``fold_bn`` and ``bn`` is in eval mode."""
        if self.fold_bn and not self.bn.training and self.bn.running_mean is not None:
            return self.conv._conv_forward(x, *fold_batchnorm(self.conv, self.bn))
        return self.bn(self.conv(x))


class GatedConvBlock(_ConvBatchNorm):
    """The CVSSP gated convolution: Conv2d (no bias) -> BatchNorm -> GLU.

    The convolution produces ``2 * out_channels`` maps; the SECOND half gates the first:
    ``y = a * sigmoid(b)`` with ``a, b = split(x, 2, dim=1)``, i.e. ``F.glu(x, dim=1)``.
    (N, C_in, T, F) -> (N, out_channels, T, F).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bn_eps: float = KERAS_BN_EPS, bn_momentum: float = KERAS_BN_MOMENTUM,
                 bn_moving_variance: str = "keras2_theano"):
        super().__init__(in_channels, 2 * out_channels, kernel_size, bn_eps, bn_momentum, bn_moving_variance)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.conv_bn(x), dim=1)


class ConvBlock(_ConvBatchNorm):
    """Non-gated block: Conv2d (no bias) -> BatchNorm -> activation, (N, C_in, T, F) -> (N, C, T, F).

    The original ICASSP 2018 baseline (main_cnnrnn_balbatch_norm_baseline_icassp2018.py) uses
    ``activation='linear'``: its blocks are conv -> BatchNorm with no nonlinearity.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bn_eps: float = KERAS_BN_EPS, bn_momentum: float = KERAS_BN_MOMENTUM,
                 activation: str = "relu", bn_moving_variance: str = "keras2_theano"):
        super().__init__(in_channels, out_channels, kernel_size, bn_eps, bn_momentum, bn_moving_variance)
        self.activation = activation
        self._act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.conv_bn(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


# ---------------------------------------------------------------------------------------------
# The Keras-2 GRU: the recurrence itself runs in devinet.gru_scan.


def _run_keras2_grus(grus: tuple["Keras2GRU", ...], x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """Every direction of several Keras2GRUs of one form (all but the candidate activation) in one scan.

    The input projections of all directions and time steps are one matmul. x (N, T, I),
    h0 (D, N, H) or None; returns (N, T, D, H), directions ordered as in :class:`ScanSpec`.
    """
    first = grus[0]
    spec = ScanSpec(tuple(g.activation for g in grus), first.recurrent_activation, first.reset_after,
                     first.bidirectional)
    weights = [g._direction_weights(s) for g in grus for s in g._suffixes()]
    N, T, _ = x.shape
    D, H = len(weights), first.hidden_size
    xw = F.linear(x, torch.cat([w[0] for w in weights]), torch.cat([w[2] for w in weights])).view(N, T, D, 3 * H)
    w_hh = torch.stack([w[1].t() for w in weights])
    b_hh = torch.stack([w[3] for w in weights]).unsqueeze(1) if first.reset_after else None
    if h0 is None:
        h0 = x.new_zeros(D, N, H)
    if torch.is_autocast_enabled(x.device.type):
        # Under autocast (mixed-precision training) the input projection above runs in the low
        # precision; the recurrence runs in float32 (its matmuls are small, and 240 steps of
        # bfloat16 rounding would compound), so its output is float32.
        with torch.autocast(x.device.type, enabled=False):
            return keras2_gru_scan(xw.float(), w_hh.float(), None if b_hh is None else b_hh.float(), h0.float(),
                                    spec)
    return keras2_gru_scan(xw, w_hh, b_hh, h0, spec)


class Keras2GRU(nn.Module):
    """A GRU that computes exactly what Keras 2.0.8's ``GRU`` computed (and its reset-after form).

    Keras 2.0.8 (``reset_after=False``, one bias)::

        z  = rec_act(x W_z + b_z + h U_z)
        r  = rec_act(x W_r + b_r + h U_r)
        h~ = act(x W_h + b_h + (r * h) U_h)        # reset applied BEFORE the recurrent matmul
        h' = z * h + (1 - z) * h~

    ``reset_after=True`` (Keras 3 default, CuDNN, ``torch.nn.GRU``) uses two biases and
    ``h~ = act(x W_h + b_ih + r * (h U_h + b_hh))``; with tanh/sigmoid activations it is
    exactly ``torch.nn.GRU`` and takes its fused kernel.

    Parameters are stored the way ``torch.nn.GRU`` stores them (``weight_ih_l0`` (3H, I),
    ``weight_hh_l0`` (3H, H), ``bias_ih_l0`` (3H,), ``bias_hh_l0`` only with reset_after,
    ``*_reverse`` for the backward direction) in PyTorch's gate order r, z, n. Keras stores
    z, r, h; conversion reorders.

    The backward direction reads the sequence reversed and its outputs are re-reversed, as
    Keras' ``Bidirectional`` does with ``return_sequences=True``; directions are concatenated
    (forward first). Input (N, T, I) batch-first; output (N, T, D*H).

    Otherwise the recurrence runs in :mod:`devinet.gru_scan`: the input projections of every
    step and direction in one matmul, both directions advanced by one batched matmul per step,
    and a hand-written backward through time.
    """

    def __init__(self, input_size: int, hidden_size: int, activation: str = "tanh",
                 recurrent_activation: str = "keras2_hard_sigmoid", reset_after: bool = False,
                 bidirectional: bool = False):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.reset_after = reset_after
        self.bidirectional = bidirectional
        get_activation(activation)  # validate the names
        get_activation(recurrent_activation)
        H = hidden_size
        for suffix in self._suffixes():
            self.register_parameter(f"weight_ih_l0{suffix}", nn.Parameter(torch.empty(3 * H, input_size)))
            self.register_parameter(f"weight_hh_l0{suffix}", nn.Parameter(torch.empty(3 * H, H)))
            self.register_parameter(f"bias_ih_l0{suffix}", nn.Parameter(torch.empty(3 * H)))
            if reset_after:
                self.register_parameter(f"bias_hh_l0{suffix}", nn.Parameter(torch.empty(3 * H)))
        self.reset_parameters()

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Keras defaults: glorot-uniform input kernel, orthogonal recurrent kernel, zero biases."""
        H = self.hidden_size
        for suffix in self._suffixes():
            nn.init.xavier_uniform_(getattr(self, f"weight_ih_l0{suffix}"))
            w_hh = getattr(self, f"weight_hh_l0{suffix}")
            with torch.no_grad():
                # Keras initialises the whole (H, 3H) recurrent kernel as one orthogonal matrix.
                w_hh.copy_(nn.init.orthogonal_(torch.empty(H, 3 * H)).t())
            nn.init.zeros_(getattr(self, f"bias_ih_l0{suffix}"))
            if self.reset_after:
                nn.init.zeros_(getattr(self, f"bias_hh_l0{suffix}"))

    @property
    def uses_fused_kernel(self) -> bool:
        """True when the semantics equal ``torch.nn.GRU`` exactly, so its fused kernel is used."""
        return self.reset_after and self.activation == "tanh" and self.recurrent_activation == "sigmoid"

    def _direction_weights(self, suffix: str):
        b_hh = getattr(self, f"bias_hh_l0{suffix}") if self.reset_after else None
        return (getattr(self, f"weight_ih_l0{suffix}"), getattr(self, f"weight_hh_l0{suffix}"),
                getattr(self, f"bias_ih_l0{suffix}"), b_hh)

    def _check(self, x: torch.Tensor, h0: torch.Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"Keras2GRU expects (batch, time, {self.input_size}), got {tuple(x.shape)}")
        want = (self.num_directions, x.shape[0], self.hidden_size)
        if h0 is not None and tuple(h0.shape) != want:
            raise ValueError(f"Keras2GRU expects h0 of shape (directions, batch, hidden) = {want}, "
                             f"got {tuple(h0.shape)}")

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, I) -> (N, T, D*H); ``h0`` optional (D, N, H) initial state (zeros by default)."""
        self._check(x, h0)
        if self.uses_fused_kernel:
            return self._forward_fused(x, h0)
        N, T, _ = x.shape
        return _run_keras2_grus((self,), x, h0).reshape(N, T, self.num_directions * self.hidden_size)

    def _forward_fused(self, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        flat = [p for s in self._suffixes() for p in self._direction_weights(s)]
        if h0 is None:
            h0 = x.new_zeros(self.num_directions, x.shape[0], self.hidden_size)
        out, _ = torch._VF.gru(x, h0, flat, True, 1, 0.0, self.training, self.bidirectional, True)
        return out

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, activation={self.activation}, "
                f"recurrent_activation={self.recurrent_activation}, reset_after={self.reset_after}, "
                f"bidirectional={self.bidirectional}")


class GatedBiGRU(nn.Module):
    """The CVSSP gated bidirectional GRU: ``linear_bigru(x) * sigmoid_bigru(x)``.

    Two bidirectional Keras-2 GRUs read the same input, one with a linear candidate
    activation and one with a sigmoid; their (concatenated-direction) outputs are multiplied.
    With ``gated=False`` a single bidirectional GRU with ``activation`` is used instead.
    (N, T, I) -> (N, T, 2H).

    The gated form runs the four directions (linear forward/backward, sigmoid forward/backward)
    in one scan: one input-projection matmul and one batched recurrent matmul per step.
    """

    def __init__(self, input_size: int, hidden_size: int, gated: bool = True,
                 recurrent_activation: str = "keras2_hard_sigmoid", reset_after: bool = False,
                 activation: str = "tanh"):
        super().__init__()
        self.gated = gated
        kwargs = dict(recurrent_activation=recurrent_activation, reset_after=reset_after, bidirectional=True)
        if gated:
            self.linear = Keras2GRU(input_size, hidden_size, activation="linear", **kwargs)
            self.sigmoid = Keras2GRU(input_size, hidden_size, activation="sigmoid", **kwargs)
        else:
            self.gru = Keras2GRU(input_size, hidden_size, activation=activation, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.gru(x)
        self.linear._check(x, None)
        N, T, _ = x.shape
        out = _run_keras2_grus((self.linear, self.sigmoid), x, None)  # (N, T, 4, H)
        return (out[:, :, :2] * out[:, :, 2:]).reshape(N, T, 2 * self.linear.hidden_size)


class MeanPoolingHead(nn.Module):
    """Frame-wise sigmoid classifier, clip output = mean over time (CVSSP crnn_at).

    (N, T, D) -> {'framewise': (N, T, C), 'clipwise': (N, C)}.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.frame = Dense(in_features, num_classes, activation="sigmoid")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        frame = self.frame(x)
        return {"clipwise": frame.mean(dim=1), "framewise": frame}


class AttentionPoolingHead(nn.Module):
    """CVSSP attention pooling (crnn_sed).

    ``cla = sigmoid(W x)`` per frame; ``att = softmax(V cla)`` over CLASSES at each frame
    (applied to the sigmoid output, not to the features); clip output
    ``sum_t(cla * att) / sum_t(clip(att, eps, 1))`` with eps 1e-7 as in the original.
    (N, T, D) -> {'framewise': cla, 'attention': att (N, T, C), 'clipwise': (N, C)}.
    """

    def __init__(self, in_features: int, num_classes: int, eps: float = 1e-7):
        super().__init__()
        self.eps = eps
        self.frame = Dense(in_features, num_classes, activation="sigmoid")
        self.attention = Dense(num_classes, num_classes, activation="softmax")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cla = self.frame(x)
        att = self.attention(cla)
        clip = (cla * att).sum(dim=1) / att.clamp(self.eps, 1.0).sum(dim=1)
        return {"clipwise": clip, "framewise": cla, "attention": att}

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def keras_glorot_init_(module: nn.Module) -> None:
    """Keras defaults for conv and dense layers: glorot-uniform kernels, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_keras_params(module: nn.Module) -> int:
    """Parameter count as Keras reports it: trainable parameters plus BatchNorm moving statistics."""
    n = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n += m.running_mean.numel() + m.running_var.numel()
    return n

"""Known porting mistakes, each planted in a correctly converted model, must be caught at the right layer.

The reference is the real Keras 2.0.8 recording of crnn_at (../shared/reference/keras208). The
mistakes are the ones of the older PyTorch port and of naive conversions: a missing Theano
flip, the GLU gating the wrong half, PyTorch's BatchNorm eps, torch.nn.GRU instead of the
Keras 2 GRU, and GRU directions summed instead of concatenated.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from devinet.layers import GatedConvBlock, Keras2GRU
from parity.compare import Recording, compare_with_recording, format_report
from parity.convert import keras_to_torch


@pytest.fixture(scope="module")
def k208(reference_dir):
    return reference_dir / "keras208"


@pytest.fixture(scope="module")
def conversion(k208):
    return keras_to_torch(k208 / "k208_theano_crnn_at.h5")


@pytest.fixture(scope="module")
def recording(k208):
    return Recording.from_npz(k208 / "k208_theano_crnn_at_ref.npz")


def first_divergence(model, conversion, recording):
    roles = {layer.name: layer.role for layer in conversion.file.layers}
    report = compare_with_recording(model, recording, roles, dtype=torch.float32)
    index = report.first_divergence
    return report, (report.rows[index] if index is not None else None)


# ----------------------------------------------------------------------------- the planted mistakes
class FirstHalfGatedBlock(GatedConvBlock):
    """The older port's GLU: the FIRST half gates the second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.bn(self.conv(x)).chunk(2, dim=1)
        return b * torch.sigmoid(a)


class UnfusedGatedBiGRU(nn.Module):
    """Calls its two bidirectional GRUs as modules, so that either can be swapped for a faulty one."""

    def __init__(self, linear: nn.Module, sigmoid: nn.Module):
        super().__init__()
        self.linear, self.sigmoid = linear, sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.sigmoid(x)


class TorchNNGRU(nn.Module):
    """torch.nn.GRU holding a Keras2GRU's weights: tanh candidate, sigmoid gates, reset after the matmul."""

    def __init__(self, keras2: Keras2GRU):
        super().__init__()
        self.gru = nn.GRU(keras2.input_size, keras2.hidden_size, batch_first=True, bidirectional=True)
        with torch.no_grad():
            for name, param in self.gru.named_parameters():
                if name.startswith("bias_hh"):
                    param.zero_()
                else:
                    param.copy_(getattr(keras2, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class SummedDirectionsGRU(Keras2GRU):
    """The older port's merge: forward + backward instead of their concatenation."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x, h0)
        return y[..., : self.hidden_size] + y[..., self.hidden_size:]


def _swap_blocks(model):
    for i, block in enumerate(model.gcnn):
        faulty = FirstHalfGatedBlock(1, 1)
        faulty.conv, faulty.bn = block.conv, block.bn
        model.gcnn[i] = faulty


def _torch_bn_eps(model):
    for block in model.gcnn:
        block.bn.eps = 1e-5


def _rnn(model, wrap):
    gated = model.rnn[0]
    model.rnn[0] = UnfusedGatedBiGRU(wrap(gated.linear), wrap(gated.sigmoid))


def _summed(gru: Keras2GRU) -> Keras2GRU:
    faulty = SummedDirectionsGRU(gru.input_size, gru.hidden_size, activation=gru.activation, bidirectional=True)
    faulty.load_state_dict(gru.state_dict())
    return faulty


MISTAKES = {
    "glu_gates_first_half": (_swap_blocks, "multiply_1"),
    "torch_batchnorm_eps": (_torch_bn_eps, "batch_normalization_1"),
    "torch_nn_gru": (lambda m: _rnn(m, TorchNNGRU), "bidirectional_1"),
    "summed_directions": (lambda m: _rnn(m, _summed), "bidirectional_1"),
}


@pytest.mark.slow
def test_control_unfused_gru_wrapper_passes(conversion, recording):
    """The wrapper used below is innocent: with the right GRUs inside, everything matches."""
    model = copy.deepcopy(conversion.model)
    _rnn(model, lambda gru: gru)
    report, row = first_divergence(model, conversion, recording)
    assert row is None and report.passed, format_report(report)


@pytest.mark.slow
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_planted_mistake_is_reported_at_its_layer(conversion, recording, mistake):
    plant, layer = MISTAKES[mistake]
    model = copy.deepcopy(conversion.model)
    plant(model)
    report, row = first_divergence(model, conversion, recording)
    assert row is not None and row.name == layer, format_report(report)
    assert not report.passed
    index = report.first_divergence
    assert all(r.status == "ok" for r in report.rows[:index])  # everything before it still matches
    assert "<-- first divergence" in format_report(report).splitlines()[index + 2]


@pytest.mark.slow
def test_summed_directions_show_as_a_shape_mismatch(conversion, recording):
    model = copy.deepcopy(conversion.model)
    _rnn(model, _summed)
    report, row = first_divergence(model, conversion, recording)
    assert row.status == "shape" and row.got_shape == (2, 30, 128) and row.shape == (2, 30, 256)
    assert report.error is not None  # the head cannot read 128 features: later layers are not reached
    assert report.row("localization_layer").status == "not reached"


@pytest.mark.slow
def test_missing_theano_flip_is_reported_at_the_first_convolution(k208, recording):
    unflipped = keras_to_torch(k208 / "k208_theano_crnn_at.h5", theano_flip="no")
    report, row = first_divergence(unflipped.model, unflipped, recording)
    assert row.name == "conv2d_1" and row.max_abs > 1.0
    # ... although the final output moves by less than 1e-3: only a layer-by-layer check sees it
    assert report.rows[-1].max_abs < 1e-3


@pytest.mark.slow
def test_nn_gru_error_is_large_at_its_layer(conversion, recording):
    model = copy.deepcopy(conversion.model)
    _rnn(model, TorchNNGRU)
    report, row = first_divergence(model, conversion, recording)
    assert row.max_rel > 1e-2
    assert report.row("multiply_7").status == "ok"  # the convolutional part is untouched

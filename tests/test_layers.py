"""Each devinet layer against the Keras 2.0.8 equations, written out independently in numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from devinet.errors import ConfigError
from devinet.layers import (
    AttentionPoolingHead,
    Dense,
    GatedBiGRU,
    GatedConvBlock,
    Keras2GRU,
    MeanPoolingHead,
    keras2_hard_sigmoid,
)

# ----------------------------------------------------------------------------- numpy Keras 2
NP_ACT = {
    "linear": lambda v: v,
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "tanh": np.tanh,
    "keras2_hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0),
}


def keras2_gru_numpy(x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
                     go_backwards=False, reset_after=False):
    """Keras 2.0.8 GRU (return_sequences=True) in Keras' own layout: gates z, r, h.

    kernel (I, 3H), recurrent_kernel (H, 3H), bias (3H,) or, for reset_after, (2, 3H).
    With go_backwards the sequence is read reversed and the outputs come out in reading order
    (Bidirectional re-reverses them; see keras2_bigru_numpy).
    """
    act, rec = NP_ACT[activation], NP_ACT[recurrent_activation]
    H = recurrent_kernel.shape[0]
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, np.zeros_like(bias))
    seq = x[:, ::-1] if go_backwards else x
    h = np.zeros((x.shape[0], H), dtype=x.dtype)
    out = []
    for t in range(seq.shape[1]):
        xt = seq[:, t] @ kernel + b_in
        x_z, x_r, x_h = xt[:, :H], xt[:, H:2 * H], xt[:, 2 * H:]
        u_z, u_r, u_h = recurrent_kernel[:, :H], recurrent_kernel[:, H:2 * H], recurrent_kernel[:, 2 * H:]
        hb = h @ recurrent_kernel + b_rec
        z = rec(x_z + hb[:, :H])
        r = rec(x_r + hb[:, H:2 * H])
        if reset_after:
            hh = act(x_h + r * hb[:, 2 * H:])
        else:
            hh = act(x_h + (r * h) @ u_h)
        h = z * h + (1 - z) * hh
        out.append(h)
        del u_z, u_r
    return np.stack(out, axis=1)


def keras2_bigru_numpy(x, fwd, bwd, activation, recurrent_activation, reset_after=False):
    """Bidirectional(GRU(return_sequences=True), merge_mode='concat') of Keras 2.0.8."""
    y_f = keras2_gru_numpy(x, *fwd, activation, recurrent_activation, reset_after=reset_after)
    y_b = keras2_gru_numpy(x, *bwd, activation, recurrent_activation, go_backwards=True, reset_after=reset_after)
    return np.concatenate([y_f, y_b[:, ::-1]], axis=-1)


def zrh_to_rzn(a, axis):
    """Keras gate order (z, r, h) -> PyTorch (r, z, n) along ``axis``."""
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def load_keras_weights(gru: Keras2GRU, suffix: str, kernel, recurrent_kernel, bias) -> None:
    """Write Keras-layout weights into a Keras2GRU direction (independent of parity/)."""
    with torch.no_grad():
        getattr(gru, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(zrh_to_rzn(kernel, 1).T.copy()))
        getattr(gru, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(zrh_to_rzn(recurrent_kernel, 1).T.copy()))
        if gru.reset_after:
            getattr(gru, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(zrh_to_rzn(bias[0], 0).copy()))
            getattr(gru, f"bias_hh_l0{suffix}").copy_(torch.from_numpy(zrh_to_rzn(bias[1], 0).copy()))
        else:
            getattr(gru, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(zrh_to_rzn(bias, 0).copy()))


def random_keras_gru_weights(rng, I, H, reset_after, dtype=np.float64):
    bias_shape = (2, 3 * H) if reset_after else (3 * H,)
    return (rng.normal(0, 0.5, (I, 3 * H)).astype(dtype), rng.normal(0, 0.5, (H, 3 * H)).astype(dtype),
            rng.normal(0, 0.5, bias_shape).astype(dtype))


# ----------------------------------------------------------------------------- activations
def test_keras2_hard_sigmoid_is_clip_of_0_2x_plus_half():
    x = torch.linspace(-6, 6, 121, dtype=torch.float64)
    np.testing.assert_array_equal(keras2_hard_sigmoid(x).numpy(), np.clip(0.2 * x.numpy() + 0.5, 0, 1))
    # and it is NOT PyTorch's hardsigmoid (x/6 + 1/2), which Keras 3's 'hard_sigmoid' also is
    assert not torch.allclose(keras2_hard_sigmoid(x), F.hardsigmoid(x))


# ----------------------------------------------------------------------------- GRU
def test_golden_gru_by_hand():
    """One unit, two steps, linear candidate: values worked out by hand.

    step 1 (h=0, x=1): z = hs(0.5+0.1) = 0.62, r = hs(-0.5) = 0.4, h~ = 1-0.1 = 0.9,
                       h = 0.38 * 0.9 = 0.342
    step 2 (x=-2):     z = hs(-1+0.1+0.3*0.342) = 0.34052, r = hs(1+0.2*0.342) = 0.71368,
                       h~ = -2-0.1-0.4*(0.71368*0.342) = -2.197631424,
                       h = 0.34052*0.342 + 0.65948*h~ = -1.33283613149952
    """
    kernel = np.array([[0.5, -0.5, 1.0]])  # z, r, h
    recurrent = np.array([[0.3, 0.2, -0.4]])
    bias = np.array([0.1, 0.0, -0.1])
    gru = Keras2GRU(1, 1, activation="linear", recurrent_activation="keras2_hard_sigmoid").double()
    load_keras_weights(gru, "", kernel, recurrent, bias)
    y = gru(torch.tensor([[[1.0], [-2.0]]], dtype=torch.float64))
    np.testing.assert_allclose(y.detach().numpy().ravel(), [0.342, -1.33283613149952], rtol=0, atol=1e-12)
    np.testing.assert_allclose(keras2_gru_numpy(np.array([[[1.0], [-2.0]]]), kernel, recurrent, bias,
                                                "linear", "keras2_hard_sigmoid").ravel(),
                               [0.342, -1.33283613149952], atol=1e-12)


@pytest.mark.parametrize("activation,recurrent_activation,reset_after", [
    (a, r, ra) for a, r, ra in itertools.product(["linear", "sigmoid", "tanh"],
                                                  ["keras2_hard_sigmoid", "sigmoid"], [False, True])
])
def test_bigru_matches_keras2_equations(activation, recurrent_activation, reset_after):
    rng = np.random.default_rng(7)
    I, H, N, T = 5, 4, 3, 9
    x = rng.normal(0, 1, (N, T, I))
    fwd = random_keras_gru_weights(rng, I, H, reset_after)
    bwd = random_keras_gru_weights(rng, I, H, reset_after)
    gru = Keras2GRU(I, H, activation=activation, recurrent_activation=recurrent_activation,
                    reset_after=reset_after, bidirectional=True).double()
    load_keras_weights(gru, "", *fwd)
    load_keras_weights(gru, "_reverse", *bwd)
    expected = keras2_bigru_numpy(x, fwd, bwd, activation, recurrent_activation, reset_after)
    got = gru(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reset_after", [False, True])
def test_unidirectional_gru_forward_direction(reset_after):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 6, 3))
    w = random_keras_gru_weights(rng, 3, 2, reset_after)
    gru = Keras2GRU(3, 2, activation="tanh", reset_after=reset_after).double()
    load_keras_weights(gru, "", *w)
    expected = keras2_gru_numpy(x, *w, "tanh", "keras2_hard_sigmoid", reset_after=reset_after)
    np.testing.assert_allclose(gru(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-12)


def test_reset_after_with_sigmoid_and_tanh_is_torch_gru():
    """With tanh / sigmoid / reset-after the semantics are nn.GRU's: same state dict, same output."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(6, 5, batch_first=True, bidirectional=True)
    gru = Keras2GRU(6, 5, activation="tanh", recurrent_activation="sigmoid", reset_after=True, bidirectional=True)
    gru.load_state_dict(ref.state_dict())
    assert gru.uses_fused_kernel
    x = torch.randn(2, 11, 6)
    torch.testing.assert_close(gru(x), ref(x)[0], rtol=0, atol=0)


def test_keras2_gru_differs_from_torch_gru():
    """The original model cannot be nn.GRU: reset-before and hard sigmoid change the output."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(6, 5, batch_first=True)
    gru = Keras2GRU(6, 5, activation="tanh", recurrent_activation="sigmoid", reset_after=False)
    state = ref.state_dict()
    gru.load_state_dict({k: v for k, v in state.items() if k != "bias_hh_l0"})
    with torch.no_grad():
        ref.bias_hh_l0.zero_()
    x = torch.randn(2, 11, 6)
    assert (gru(x) - ref(x)[0]).abs().max() > 1e-3


def test_gru_rejects_wrong_input_size():
    gru = Keras2GRU(4, 3)
    with pytest.raises(ValueError, match=r"\(batch, time, 4\)"):
        gru(torch.randn(2, 5, 3))


def test_unknown_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown activation 'swish'"):
        Keras2GRU(4, 3, activation="swish")


def test_gated_bigru_is_product_of_linear_and_sigmoid_bigrus():
    rng = np.random.default_rng(11)
    I, H = 4, 3
    x = rng.normal(0, 1, (2, 7, I))
    layer = GatedBiGRU(I, H).double()
    weights = {}
    for name in ("linear", "sigmoid"):
        weights[name] = (random_keras_gru_weights(rng, I, H, False), random_keras_gru_weights(rng, I, H, False))
        load_keras_weights(getattr(layer, name), "", *weights[name][0])
        load_keras_weights(getattr(layer, name), "_reverse", *weights[name][1])
    expected = (keras2_bigru_numpy(x, *weights["linear"], "linear", "keras2_hard_sigmoid")
                * keras2_bigru_numpy(x, *weights["sigmoid"], "sigmoid", "keras2_hard_sigmoid"))
    got = layer(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (2, 7, 2 * H)  # directions concatenated, not summed
    np.testing.assert_allclose(got, expected, atol=1e-12)


# ----------------------------------------------------------------------------- conv block
def conv2d_same_numpy(x, kernel):
    """Cross-correlation with 'same' padding; x (N, T, F, Cin) channels-last, kernel (kh, kw, Cin, Cout)."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("ntfc,cd->ntfd", xp[:, i:i + x.shape[1], j:j + x.shape[2]], kernel[i, j])
    return out


def test_gated_conv_block_matches_keras_equations_in_eval():
    rng = np.random.default_rng(5)
    N, T, Fq, Cin, C = 2, 6, 5, 3, 4
    x = rng.normal(0, 1, (N, T, Fq, Cin))
    kernel = rng.normal(0, 0.5, (3, 3, Cin, 2 * C))
    gamma, beta = rng.normal(1, 0.2, 2 * C), rng.normal(0, 0.2, 2 * C)
    mean, var = rng.normal(0, 0.3, 2 * C), rng.uniform(0.5, 2, 2 * C)
    block = GatedConvBlock(Cin, C).double().eval()
    with torch.no_grad():
        block.conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
        block.bn.weight.copy_(torch.from_numpy(gamma))
        block.bn.bias.copy_(torch.from_numpy(beta))
        block.bn.running_mean.copy_(torch.from_numpy(mean))
        block.bn.running_var.copy_(torch.from_numpy(var))
    y = conv2d_same_numpy(x, kernel)
    y = gamma * (y - mean) / np.sqrt(var + 1e-3) + beta  # Keras 2 BatchNormalization, eps 1e-3
    expected = y[..., :C] * (1 / (1 + np.exp(-y[..., C:])))  # the SECOND half gates
    got = block(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert block.conv.bias is None
    assert block.bn.eps == 1e-3 and block.bn.momentum == pytest.approx(0.01)


def test_batchnorm_training_update_uses_keras_momentum():
    """Keras: moving = 0.99 * moving + 0.01 * batch statistic (the variance's update: tests/test_keras2_training.py)."""
    torch.manual_seed(0)
    block = GatedConvBlock(1, 2).train()
    x = torch.randn(4, 1, 5, 5)
    with torch.no_grad():
        conv = block.conv(x)
        block(x)
    batch_mean = conv.mean(dim=(0, 2, 3))
    torch.testing.assert_close(block.bn.running_mean, 0.01 * batch_mean)


# ----------------------------------------------------------------------------- heads
def test_mean_pooling_head():
    torch.manual_seed(0)
    head = MeanPoolingHead(6, 4).double()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    out = head(x)
    cla = torch.sigmoid(x @ head.frame.weight.T + head.frame.bias)
    torch.testing.assert_close(out["framewise"], cla)
    torch.testing.assert_close(out["clipwise"], cla.mean(1))


def test_attention_pooling_head_matches_cvssp_equation():
    rng = np.random.default_rng(9)
    D, C = 6, 4
    x = rng.normal(0, 1, (2, 7, D))
    W, b = rng.normal(0, 1, (D, C)), rng.normal(0, 1, C)
    V, c = rng.normal(0, 3, (C, C)), rng.normal(0, 3, C)
    head = AttentionPoolingHead(D, C).double()
    with torch.no_grad():
        head.frame.weight.copy_(torch.from_numpy(W.T.copy()))
        head.frame.bias.copy_(torch.from_numpy(b))
        head.attention.weight.copy_(torch.from_numpy(V.T.copy()))
        head.attention.bias.copy_(torch.from_numpy(c))
    cla = 1 / (1 + np.exp(-(x @ W + b)))
    logits = cla @ V + c  # softmax over CLASSES, applied to the sigmoid output
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    expected = (cla * att).sum(1) / np.clip(att, 1e-7, 1).sum(1)
    out = head(torch.from_numpy(x))
    np.testing.assert_allclose(out["clipwise"].detach().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(out["attention"].detach().numpy(), att, atol=1e-12)
    np.testing.assert_allclose(out["framewise"].detach().numpy(), cla, atol=1e-12)


def test_attention_eps_clip_is_active_for_tiny_weights():
    head = AttentionPoolingHead(2, 3).double()
    with torch.no_grad():
        head.frame.weight.zero_()
        head.frame.bias.zero_()
        head.attention.weight.zero_()
        head.attention.bias.copy_(torch.tensor([0.0, -60.0, -60.0], dtype=torch.float64))
    with torch.no_grad():
        out = head(torch.zeros(1, 4, 2, dtype=torch.float64))
    # classes 1, 2 get attention ~8.8e-27 per frame: the clip at 1e-7 dominates the denominator
    att = float(out["attention"][0, 0, 1])
    expected = 4 * 0.5 * att / (4 * 1e-7)
    assert float(out["clipwise"][0, 1]) == pytest.approx(expected, rel=1e-9)


def test_dense_softmax_is_over_last_axis_and_unknown_activation_rejected():
    d = Dense(3, 5, activation="softmax")
    y = d(torch.randn(2, 4, 3))
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 4))
    with pytest.raises(ConfigError):
        Dense(3, 5, activation="gelu2")

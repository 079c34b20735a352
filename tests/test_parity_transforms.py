"""Each weight transform against the computation it must preserve, both directions; the table; the completeness check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import convolve2d, correlate2d

from devinet import DeviNet
from devinet.layers import Keras2GRU
from parity.legacy_h5 import keras2_shapes
from parity.mapping import TABLE, ConversionError, assignments, canonical_layers_of, check_complete
from parity.transforms import (
    TRANSFORMS,
    batchnorm_to_keras,
    batchnorm_to_torch,
    conv2d_to_keras,
    conv2d_to_torch,
    dense_to_keras,
    dense_to_torch,
    gru_bias_to_keras,
    gru_bias_to_torch,
    gru_kernel_to_keras,
    gru_kernel_to_torch,
    keras_gates_to_torch,
    theano_flip,
    torch_gates_to_keras,
)


# ----------------------------------------------------------------------------- conv2d + flip
def keras_conv_same(x, kernel, correlate=True):
    """Keras Conv2D 'same', channels last, in numpy: x (T, F, I), kernel (kh, kw, I, O) -> (T, F, O).

    ``correlate=False`` is Theano's true convolution (kernel rotated by 180 degrees).
    """
    op = correlate2d if correlate else convolve2d
    return np.stack([sum(op(x[..., i], kernel[:, :, i, o], mode="same") for i in range(kernel.shape[2]))
                     for o in range(kernel.shape[3])], axis=-1)


def torch_conv_same(x, weight):
    y = F.conv2d(torch.from_numpy(x).permute(2, 0, 1)[None], torch.from_numpy(weight), padding=weight.shape[-1] // 2)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("k,cin,cout", [(3, 1, 4), (3, 5, 6), (5, 2, 3), (1, 3, 2)])
def test_conv2d_transform_preserves_cross_correlation(rng, k, cin, cout):
    x = rng.standard_normal((9, 7, cin))
    kernel = rng.standard_normal((k, k, cin, cout))
    weight = conv2d_to_torch(kernel)
    assert weight.shape == (cout, cin, k, k)
    np.testing.assert_allclose(torch_conv_same(x, weight), keras_conv_same(x, kernel), atol=1e-12)
    np.testing.assert_array_equal(conv2d_to_keras(weight), kernel)


@pytest.mark.parametrize("k,cin,cout", [(3, 1, 4), (3, 4, 2), (5, 2, 3)])
def test_theano_flip_turns_convolution_into_cross_correlation(rng, k, cin, cout):
    x = rng.standard_normal((8, 6, cin))
    theano_kernel = rng.standard_normal((k, k, cin, cout))  # what a Theano file stores
    theano_output = keras_conv_same(x, theano_kernel, correlate=False)
    flipped = conv2d_to_torch(theano_flip(theano_kernel))
    np.testing.assert_allclose(torch_conv_same(x, flipped), theano_output, atol=1e-12)
    # without the flip the result is different (this is the bug the flip prevents)
    assert np.abs(torch_conv_same(x, conv2d_to_torch(theano_kernel)) - theano_output).max() > 1e-2
    np.testing.assert_array_equal(theano_flip(theano_flip(theano_kernel)), theano_kernel)


def test_theano_flip_rotates_spatial_axes_only():
    kernel = np.arange(3 * 3 * 2 * 1, dtype=float).reshape(3, 3, 2, 1)
    flipped = theano_flip(kernel)
    assert flipped[0, 0, 1, 0] == kernel[2, 2, 1, 0] and flipped[0, 2, 0, 0] == kernel[2, 0, 0, 0]
    with pytest.raises(ValueError):
        theano_flip(np.zeros(3))


# ----------------------------------------------------------------------------- dense + batchnorm
@pytest.mark.parametrize("n_in,n_out", [(256, 17), (17, 17), (3, 1)])
def test_dense_transform_preserves_the_product(rng, n_in, n_out):
    x = rng.standard_normal((5, n_in))
    kernel, bias = rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)
    y = F.linear(torch.from_numpy(x), torch.from_numpy(dense_to_torch(kernel)), torch.from_numpy(bias)).numpy()
    np.testing.assert_allclose(y, x @ kernel + bias, atol=1e-12)
    np.testing.assert_array_equal(dense_to_keras(dense_to_torch(kernel)), kernel)


def test_batchnorm_vectors_are_copied_unchanged(rng):
    gamma = rng.standard_normal(8)
    out = batchnorm_to_torch(gamma)
    np.testing.assert_array_equal(out, gamma)
    out[0] = 123.0  # a fresh array: the source is untouched
    assert gamma[0] != 123.0
    np.testing.assert_array_equal(batchnorm_to_keras(batchnorm_to_torch(gamma)), gamma)
    with pytest.raises(ValueError):
        batchnorm_to_torch(np.zeros((2, 2)))


# ----------------------------------------------------------------------------- GRU
def test_gate_reorder_on_a_labelled_vector():
    keras = np.array(["z0", "z1", "r0", "r1", "h0", "h1"])
    assert list(keras_gates_to_torch(keras, axis=0)) == ["r0", "r1", "z0", "z1", "h0", "h1"]
    assert list(torch_gates_to_keras(keras_gates_to_torch(keras, axis=0), axis=0)) == list(keras)


ACT = {"linear": lambda v: v, "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh,
       "keras2_hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0, 1)}


def keras_gru(x, kernel, rec, bias, act, reset_after, backwards=False):
    """Keras GRU (return_sequences) in Keras' own layout and gate order z, r, h; x (N, T, I)."""
    H = rec.shape[0]
    b_x, b_h = (bias[0], bias[1]) if reset_after else (bias, np.zeros(3 * H))
    h = np.zeros((x.shape[0], H))
    outs = []
    for t in (range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])):
        xz, xr, xh = np.split(x[:, t] @ kernel + b_x, 3, axis=-1)
        hz, hr, hh = np.split(h @ rec + b_h, 3, axis=-1)
        z, r = ACT["keras2_hard_sigmoid"](xz + hz), ACT["keras2_hard_sigmoid"](xr + hr)
        cand = ACT[act](xh + r * hh) if reset_after else ACT[act](xh + (r * h) @ rec[:, 2 * H:])
        h = z * h + (1 - z) * cand
        outs.append(h)
    y = np.stack(outs, axis=1)
    return y[:, ::-1] if backwards else y


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("activation", ["linear", "sigmoid", "tanh"])
def test_gru_transforms_give_the_keras_gru(rng, activation, reset_after):
    """Keras-layout weights through the transforms into Keras2GRU == the Keras equations on the originals."""
    I, H = 5, 4
    x = rng.standard_normal((2, 6, I))
    gru = Keras2GRU(I, H, activation=activation, reset_after=reset_after, bidirectional=True).double()
    expected = []
    for suffix, backwards in (("", False), ("_reverse", True)):
        kernel, rec = rng.standard_normal((I, 3 * H)) * 0.5, rng.standard_normal((H, 3 * H)) * 0.5
        bias = rng.standard_normal((2, 3 * H) if reset_after else (3 * H,)) * 0.5
        with torch.no_grad():
            getattr(gru, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(gru_kernel_to_torch(kernel)))
            getattr(gru, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(gru_kernel_to_torch(rec)))
            getattr(gru, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(gru_bias_to_torch(bias[0] if reset_after else bias)))
            if reset_after:
                getattr(gru, f"bias_hh_l0{suffix}").copy_(torch.from_numpy(gru_bias_to_torch(bias[1])))
        expected.append(keras_gru(x, kernel, rec, bias, activation, reset_after, backwards))
        np.testing.assert_array_equal(gru_kernel_to_keras(gru_kernel_to_torch(kernel)), kernel)
        np.testing.assert_array_equal(gru_bias_to_keras(gru_bias_to_torch(bias.reshape(-1, 3 * H)[0])),
                                      bias.reshape(-1, 3 * H)[0])
    with torch.no_grad():
        got = gru(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, np.concatenate(expected, axis=-1), atol=1e-12)


def test_gru_kernel_without_reorder_would_be_wrong(rng):
    """The z/r swap matters: a plain transpose gives a different GRU."""
    kernel = rng.standard_normal((3, 6))
    assert not np.array_equal(gru_kernel_to_torch(kernel), kernel.T)
    with pytest.raises(ValueError, match="3 gates"):
        gru_kernel_to_torch(rng.standard_normal((3, 7)))


# ----------------------------------------------------------------------------- every kind, both ways
_SHAPES = {"identity": st.tuples(st.integers(1, 6)), "batchnorm": st.tuples(st.integers(1, 6)),
           "conv2d": st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
           "dense": st.tuples(st.integers(1, 5), st.integers(1, 5)),
           "gru_kernel": st.tuples(st.integers(1, 5), st.integers(1, 3).map(lambda h: 3 * h)),
           "gru_bias": st.tuples(st.integers(1, 4).map(lambda h: 3 * h))}


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_transform_is_inverted_by_its_pair(kind, data):
    shape = data.draw(_SHAPES[kind])
    a = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    pair = TRANSFORMS[kind]
    np.testing.assert_array_equal(pair.to_keras(pair.to_torch(a)), a)
    back = pair.to_torch(a)
    np.testing.assert_array_equal(pair.to_torch(pair.to_keras(back)), back)


# ----------------------------------------------------------------------------- the table
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at", "cvssp_crnn_baseline"])
@pytest.mark.parametrize("reset_after", [False, True])
def test_table_covers_every_devinet_entry_exactly_once(preset, reset_after):
    model = DeviNet.from_preset(preset, rnn_reset_after=reset_after)
    keys = list(model.state_dict())
    layers = [(name, name) for name in canonical_layers_of(keys)]
    targets = [a.torch_key for a in assignments(layers, model.config)]
    assert sorted(targets) == sorted(keys)
    sources = [(a.keras_layer, a.keras_weight) for a in assignments(layers, model.config) if a.keras_weight]
    layout = keras2_shapes(model.config)  # the Keras layout stated independently of the table
    assert sorted(set(sources)) == sorted((layer, w) for layer, ws in layout.items() for w in ws)


def test_table_rows_name_known_transforms_and_theano_flip_only_conv_kernels():
    for row in TABLE:
        assert row.transform in TRANSFORMS or (row.transform == "constant" and row.keras_weight is None)
        assert not row.flip or row.transform == "conv2d"


# ----------------------------------------------------------------------------- completeness
def test_completeness_check_lists_every_problem_in_one_error():
    with pytest.raises(ConversionError) as info:
        check_complete(
            "src.h5",
            assigned={"a": ["k/a"], "b": ["k/b1", "k/b2"], "c": ["k/c"], "ghost": ["k/g"]},
            expected={"a": (2,), "b": (3,), "c": (4,), "missing": (5, 5)},
            produced_shapes={"a": (2,), "b": (3,), "c": (5,), "ghost": (1,)},
            source_weights={"k/a": (2,), "k/b1": (3,), "k/b2": (3,), "k/c": (4,), "k/g": (1,), "k/unread": (7,)},
            read=["k/a", "k/b1", "k/b2", "k/c", "k/g"], dropped=(), source_count=1, target_count=1,
            nonfinite=["k/a"])
    message = str(info.value)
    assert message.startswith("src.h5: conversion incomplete (6 problems)")
    for needle in ["target missing (5, 5) was not assigned", "target b was assigned 2 times (from k/b1, k/b2)",
                   "k/c -> c: converted shape (5,), expected (4,)", "k/g -> ghost: the destination has no such weight",
                   "source weight k/unread (7,) was not read", "k/a holds NaN"]:
        assert needle in message


def test_completeness_check_compares_parameter_counts():
    with pytest.raises(ConversionError, match="parameter counts differ: source 10, destination 12"):
        check_complete("x", assigned={"a": ["s"]}, expected={"a": (2,)}, produced_shapes={"a": (2,)},
                       source_weights={"s": (2,)}, read=["s"], dropped=(), source_count=10, target_count=12)
    check_complete("x", assigned={"a": ["s"]}, expected={"a": (2,)}, produced_shapes={"a": (2,)},
                   source_weights={"s": (2,), "t": (1,)}, read=["s"], dropped=["t"], source_count=2, target_count=2)

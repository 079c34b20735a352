"""Keras 2.0.8's training semantics: Adam, BatchNorm's moving statistics and binary cross-entropy.

devinet's versions (devinet.optim.Keras2Adam, devinet.layers.Keras2BatchNorm2d,
devinet.losses.keras2_binary_crossentropy) against numpy implementations of the Keras 2.0.8
equations in float64, and the Keras 3 reference's versions (keras_reference.keras2_training) likewise.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from devinet import DeviNet
from devinet.errors import ConfigError
from devinet.layers import Keras2BatchNorm2d, fold_batchnorm
from devinet.losses import keras2_binary_crossentropy
from devinet.optim import Keras2Adam


# ----------------------------------------------------------------------------- Adam
def numpy_keras2_adam(p0: list[np.ndarray], grads: list[list[np.ndarray]], lr=0.001, beta_1=0.9, beta_2=0.999,
                      epsilon=1e-8, decay=0.0) -> list[list[np.ndarray]]:
    """keras/optimizers.py Adam.get_updates of Keras 2.0.8, step by step; returns the parameters after each step."""
    p = [a.copy() for a in p0]
    m = [np.zeros_like(a) for a in p0]
    v = [np.zeros_like(a) for a in p0]
    out = []
    for iterations, g_step in enumerate(grads):
        lr_now = lr * (1.0 / (1.0 + decay * iterations)) if decay > 0 else lr
        t = iterations + 1
        lr_t = lr_now * (np.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t))
        for i, g in enumerate(g_step):
            m[i] = beta_1 * m[i] + (1.0 - beta_1) * g
            v[i] = beta_2 * v[i] + (1.0 - beta_2) * np.square(g)
            p[i] = p[i] - lr_t * m[i] / (np.sqrt(v[i]) + epsilon)
        out.append([a.copy() for a in p])
    return out


def random_problem(rng, steps=6, shapes=((3, 4), (5,))):
    p0 = [rng.normal(0, 1, s) for s in shapes]
    # gradients over several magnitudes, some near epsilon, where its placement matters
    grads = [[rng.normal(0, 1, s) * 10.0 ** rng.uniform(-9, 0, s) for s in shapes] for _ in range(steps)]
    return p0, grads


def run_torch(optimizer_factory, p0, grads):
    params = [nn.Parameter(torch.from_numpy(a.copy())) for a in p0]
    opt = optimizer_factory(params)
    out = []
    for g_step in grads:
        for p, g in zip(params, g_step):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
        out.append([p.detach().numpy().copy() for p in params])
    return out


@pytest.mark.parametrize("kwargs", [{}, {"decay": 0.05}, {"lr": 0.01, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-4},
                                    {"epsilon": 1e-6, "decay": 1.0}])
def test_keras2_adam_is_keras208_adam(rng, kwargs):
    p0, grads = random_problem(rng)
    expected = numpy_keras2_adam(p0, grads, **kwargs)
    got = run_torch(lambda ps: Keras2Adam(ps, **kwargs), p0, grads)
    for want_step, got_step in zip(expected, got):
        for want, have in zip(want_step, got_step):
            np.testing.assert_allclose(have, want, rtol=1e-14, atol=1e-16)


def test_keras2_adam_is_not_torch_adam(rng):
    """Same epsilon, different optimizer: torch adds it after the bias correction. At step 1
    Keras 2.0.8 equals torch's Adam with eps / sqrt(1 - beta_2) (~31.6x larger)."""
    p0, grads = random_problem(rng, steps=1)
    keras2 = run_torch(lambda ps: Keras2Adam(ps, epsilon=1e-6), p0, grads)[0]
    torch_same_eps = run_torch(lambda ps: torch.optim.Adam(ps, lr=0.001, eps=1e-6), p0, grads)[0]
    torch_scaled = run_torch(lambda ps: torch.optim.Adam(ps, lr=0.001, eps=1e-6 / math.sqrt(1 - 0.999)), p0, grads)[0]
    assert max(np.abs(a - b).max() for a, b in zip(keras2, torch_same_eps)) > 1e-5
    for a, b in zip(keras2, torch_scaled):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_keras2_adam_state_dict_round_trip(rng):
    """A checkpoint of the optimizer (torch.save / weights_only load) resumes to the same parameters, bit for bit."""
    p0, grads = random_problem(rng, steps=5)
    straight = run_torch(lambda ps: Keras2Adam(ps, decay=0.1), p0, grads)[-1]

    params = [nn.Parameter(torch.from_numpy(a.copy())) for a in p0]
    opt = Keras2Adam(params, decay=0.1)
    for g_step in grads[:2]:
        for p, g in zip(params, g_step):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = Keras2Adam(resumed)  # hyper-parameters come back from the state dict
    opt2.load_state_dict(saved["optimizer"])
    assert opt2.param_groups[0]["decay"] == 0.1 and opt2.state[resumed[0]]["step"] == 2
    for g_step in grads[2:]:
        for p, g in zip(resumed, g_step):
            p.grad = torch.from_numpy(g.copy())
        opt2.step()
    for a, b in zip(straight, resumed):
        assert np.array_equal(a, b.detach().numpy())


def test_keras2_adam_refuses_the_state_of_torch_adam():
    param = nn.Parameter(torch.ones(2))
    torch_adam = torch.optim.Adam([param])
    param.grad = torch.ones(2)
    torch_adam.step()
    with pytest.raises(ConfigError, match="not a Keras2Adam state .*exp_avg"):
        Keras2Adam([param]).load_state_dict(torch_adam.state_dict())


def test_keras2_adam_skips_parameters_without_gradient_and_works_with_schedulers():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = Keras2Adam([a, b], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9), rtol=0, atol=1e-6)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs, problem", [({"lr": -1.0}, "lr"), ({"beta_1": 1.0}, "beta_1"),
                                             ({"beta_2": -0.1}, "beta_2"), ({"epsilon": -1e-8}, "epsilon"),
                                             ({"decay": -0.5}, "decay"), ({"lr": float("nan")}, "lr")])
def test_keras2_adam_rejects_bad_arguments(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        Keras2Adam([nn.Parameter(torch.ones(1))], **kwargs)


def test_public_names_load_lazily():
    import devinet

    assert devinet.Keras2Adam is Keras2Adam and devinet.Keras2BatchNorm2d is Keras2BatchNorm2d
    assert devinet.keras2_binary_crossentropy is keras2_binary_crossentropy
    assert {"Keras2Adam", "Keras2BatchNorm2d", "keras2_binary_crossentropy"} <= set(devinet.__all__)


def test_keras2_adam_defaults_are_keras208():
    group = Keras2Adam([nn.Parameter(torch.ones(1))]).param_groups[0]
    assert {k: group[k] for k in ("lr", "beta_1", "beta_2", "epsilon", "decay")} == \
        {"lr": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8, "decay": 0.0}


# ----------------------------------------------------------------------------- BatchNorm
def keras2_bn_update(x: np.ndarray, mean0: np.ndarray, var0: np.ndarray, momentum=0.99, eps=1e-3):
    """Keras 2.0.8 + Theano: moving = momentum * moving + (1 - momentum) * batch statistic, variance biased + eps."""
    axes = (0, 2, 3)
    return (momentum * mean0 + (1 - momentum) * x.mean(axis=axes),
            momentum * var0 + (1 - momentum) * (x.var(axis=axes) + eps))


@pytest.mark.parametrize("channels_last", [False, True])
def test_keras2_batchnorm_moving_statistics(rng, channels_last):
    bn = Keras2BatchNorm2d(5, eps=1e-3, momentum=0.01).double()
    reference = nn.BatchNorm2d(5, eps=1e-3, momentum=0.01).double()
    start = [rng.normal(0, 1, 5), rng.uniform(0.5, 2, 5), rng.normal(1, 0.2, 5), rng.normal(0, 0.2, 5)]
    with torch.no_grad():
        for module in (bn, reference):
            for tensor, value in zip((module.running_mean, module.running_var, module.weight, module.bias), start):
                tensor.copy_(torch.from_numpy(value))
    mean0, var0 = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    x = rng.normal(1, 3, (4, 5, 6, 7))
    xt = torch.from_numpy(x).requires_grad_()
    xr = torch.from_numpy(x).requires_grad_()
    if channels_last:
        bn, reference = bn.to(memory_format=torch.channels_last), reference.to(memory_format=torch.channels_last)
    y, y_ref = bn.train()(xt), reference.train()(xr)
    (y * y).sum().backward()
    (y_ref * y_ref).sum().backward()
    want_mean, want_var = keras2_bn_update(x, mean0, var0)
    np.testing.assert_allclose(bn.running_mean.numpy(), want_mean, rtol=1e-14)
    np.testing.assert_allclose(bn.running_var.numpy(), want_var, rtol=1e-14)
    # torch's own update differs: unbiased variance, no eps
    assert np.abs(reference.running_var.detach().numpy() - want_var).max() > 1e-6
    # normalizing, gradients and eval mode are nn.BatchNorm2d's
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(xt.grad, xr.grad, rtol=0, atol=0)
    torch.testing.assert_close(bn.weight.grad, reference.weight.grad, rtol=0, atol=0)
    assert bn.num_batches_tracked.item() == 1
    with torch.no_grad():
        reference.running_var.copy_(bn.running_var)
        torch.testing.assert_close(bn.eval()(xt), reference.eval()(xr), rtol=0, atol=0)
    assert list(bn.state_dict()) == list(reference.state_dict())


def test_keras2_batchnorm_is_the_default_and_torch_is_an_option():
    default = DeviNet.from_preset("cvssp_crnn_sed")
    assert default.config.bn_moving_variance == "keras2_theano"
    assert all(type(block.bn) is Keras2BatchNorm2d for block in default.gcnn)
    baseline = DeviNet.from_preset("cvssp_crnn_baseline")
    assert all(type(block.bn) is Keras2BatchNorm2d for block in baseline.gcnn)
    plain = DeviNet.from_preset("cvssp_crnn_at", bn_moving_variance="torch")
    assert all(type(block.bn) is nn.BatchNorm2d for block in plain.gcnn)
    assert list(plain.state_dict()) == list(DeviNet.from_preset("cvssp_crnn_at").state_dict())
    with pytest.raises(ConfigError, match="bn_moving_variance"):
        DeviNet.from_preset("cvssp_crnn_at", bn_moving_variance="keras3")
    with pytest.raises(ConfigError, match="momentum"):
        Keras2BatchNorm2d(2, momentum=None).train()(torch.randn(2, 2, 3, 3))


def test_keras2_batchnorm_folds_for_inference(rng):
    model = DeviNet.from_preset("cvssp_crnn_at").double()
    block = model.gcnn[1]
    x = torch.from_numpy(rng.normal(0, 1, (2, 64, 8, 8)))
    model.train()
    block(x)  # moving statistics move the Keras way
    block.eval()
    w, b = fold_batchnorm(block.conv, block.bn)
    torch.testing.assert_close(block.conv._conv_forward(x, w, b), block.bn(block.conv(x)), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- loss
def numpy_keras2_bce(p: np.ndarray, t: np.ndarray, upper: float) -> float:
    p = np.clip(p, 1e-7, upper)
    return float(np.mean(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=-1)))


def test_keras2_bce_value_and_reduction(rng):
    p = rng.uniform(0, 1, (4, 17))
    p[0, :3] = [0.0, 1.0, 5e-8]
    t = (rng.uniform(0, 1, (4, 17)) < 0.3).astype(np.float64)
    got = keras2_binary_crossentropy(torch.from_numpy(p), torch.from_numpy(t)).item()
    assert got == pytest.approx(numpy_keras2_bce(p, t, 1 - 1e-7), rel=1e-14)
    # float32: the upper bound is float32(1 - 1e-7) = 0.99999988, as in Theano
    upper32 = float(np.float32(1 - 1e-7))
    assert upper32 == pytest.approx(0.99999988, abs=1e-9)
    got32 = keras2_binary_crossentropy(torch.tensor([[1.0]]), torch.tensor([[0.0]])).item()
    assert got32 == pytest.approx(-math.log(1 - upper32), rel=1e-6)


def test_keras2_bce_gradient_passes_only_inside_the_clip():
    lo = float(np.float32(1e-7))
    p = torch.tensor([[0.0, lo, 0.3, 1.0, 0.9]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    keras2_binary_crossentropy(p, t).backward()
    g = p.grad[0]
    assert g[0] == 0 and g[3] == 0  # outside [1e-7, 1 - 1e-7]: clipped, no gradient
    assert g[1] != 0  # at the bound: passes (Theano's clip gradient is inclusive)
    assert g[2].item() == pytest.approx(-1 / 0.3 / 5, rel=1e-6)


def test_training_uses_the_one_loss_definition():
    from experiments import train

    assert train.keras_bce is keras2_binary_crossentropy


# ----------------------------------------------------------------------------- the Keras 3 reference's versions
@pytest.mark.keras
@pytest.mark.parametrize("kwargs", [{}, {"decay": 0.05, "epsilon": 1e-4}])
def test_keras_reference_keras2_adam_is_keras208_adam(keras, rng, kwargs):
    from keras_reference import Keras2Adam as KerasSideAdam
    from parity.keras3_files import floatx

    p0, grads = random_problem(rng, steps=4)
    expected = numpy_keras2_adam(p0, grads, **kwargs)
    with floatx("float64"):
        variables = [keras.Variable(a) for a in p0]
        opt = KerasSideAdam(**kwargs)
    for step, g_step in enumerate(grads):
        opt.apply([keras.ops.convert_to_tensor(g) for g in g_step], variables)
        for want, var in zip(expected[step], variables):
            np.testing.assert_allclose(np.asarray(var.numpy()), want, rtol=1e-13, atol=1e-16)


@pytest.mark.keras
def test_keras_reference_keras2_batchnorm_and_loss(keras, rng):
    from keras_reference import Keras2BatchNormalization, keras2_binary_crossentropy as keras_side_bce
    from parity.keras3_files import floatx

    x = rng.normal(1, 3, (4, 6, 7, 5))
    with floatx("float64"):
        bn = Keras2BatchNormalization(axis=-1)
        bn.build(x.shape)
        mean0, var0 = rng.normal(0, 1, 5), rng.uniform(0.5, 2, 5)
        bn.moving_mean.assign(mean0)
        bn.moving_variance.assign(var0)
        y = np.asarray(bn(keras.ops.convert_to_tensor(x), training=True))
    want_mean, want_var = keras2_bn_update(x.transpose(0, 3, 1, 2), mean0, var0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), want_mean, rtol=1e-14)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-14)
    normed = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3)
    np.testing.assert_allclose(y, normed, rtol=1e-12, atol=1e-12)  # gamma 1, beta 0

    p = rng.uniform(0, 1, (3, 17))
    p[0, :2] = [0.0, 1.0]
    t = (rng.uniform(0, 1, (3, 17)) < 0.3).astype(np.float64)
    per_sample = np.asarray(keras_side_bce(keras.ops.convert_to_tensor(t), keras.ops.convert_to_tensor(p)))
    assert per_sample.shape == (3,)
    assert per_sample.mean() == pytest.approx(numpy_keras2_bce(p, t, 1 - 1e-7), rel=1e-14)
    assert per_sample.mean() == pytest.approx(keras2_binary_crossentropy(torch.from_numpy(p), torch.from_numpy(t)).item(),
                                              rel=1e-14)

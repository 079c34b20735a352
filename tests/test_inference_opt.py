"""DeviNet.optimize_for_inference: BatchNorm folded into the convs, channels-last, micro-batches.

The optimized eval-mode forward must compute what the unoptimized model computes (float32:
up to rounding; float64: to 1e-12), training mode must be untouched, and the BatchNorms get
random running statistics and affine parameters so that a wrong fold cannot pass.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import devinet.layers as layers
from devinet import DeviNet
from devinet.errors import ConfigError
from devinet.layers import fold_batchnorm

PRESETS = ["cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at", "cvssp_crnn_baseline", "pyannote_devinet"]
FRAMES = 48
# float32 tolerance, relative to max(1, max|reference|). Measured here: at most 1.5e-6 for the
# conv front end's output and 3e-7 for the model outputs; 2e-5 leaves room for other CPUs'
# convolution kernels, while a fold that forgets BatchNorm's eps is off by 1e-3 at the front
# end and 7e-5 at the outputs (crnn_at), and other wrong folds by more than 1e-2.
TOL32 = 2e-5
TOL64 = 1e-12


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from their defaults (mean 0, var 1, gamma 1, beta 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.3)
    return model


def make_pair(preset: str, dtype: torch.dtype = torch.float32, **optimize):
    """(unoptimized, optimized) eval-mode models with the same random weights and statistics."""
    torch.manual_seed(0)
    reference = randomize_batchnorms(DeviNet.from_preset(preset)).to(dtype).eval()
    optimized = copy.deepcopy(reference).optimize_for_inference(**optimize)
    return reference, optimized


def batch(dtype: torch.dtype = torch.float32, clips: int = 3) -> torch.Tensor:
    x = torch.randn(clips, FRAMES, 64, generator=torch.Generator().manual_seed(1), dtype=dtype)
    x[1] = 0.0  # an all-zero clip
    return x


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert a.keys() == b.keys()
    return {k: ((a[k] - b[k]).abs().max() / max(1.0, b[k].abs().max().item())).item() for k in a}


def block_calls(model: DeviNet) -> list[str]:
    """Register hooks on the first block and its conv/bn; returns the list the calls are logged in."""
    calls: list[str] = []
    for name in ("gcnn.0", "gcnn.0.conv", "gcnn.0.bn"):
        model.get_submodule(name).register_forward_hook(lambda *_, name=name: calls.append(name))
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_optimized_eval_forward_equals_the_unoptimized(preset, channels_last):
    # a tiny cache budget: one clip per micro-batch
    reference, optimized = make_pair(preset, channels_last=channels_last, micro_batch_mb=1e-3)
    x = batch()
    with torch.inference_mode():
        want, got = reference(x), optimized(x)
    assert got.keys() == want.keys() == ({"clipwise", "framewise", "attention"} if preset == "cvssp_crnn_sed"
                                         else {"clipwise", "framewise"})
    for key, diff in max_rel_diff(got, want).items():
        assert diff <= TOL32, (key, diff)
    # the conv front end alone, which the head's sigmoids do not flatten
    with torch.inference_mode():
        front = max_rel_diff({"conv": optimized.forward_conv(x)}, {"conv": reference.forward_conv(x)})
    assert front["conv"] <= TOL32, front


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cvssp_crnn_at", "cvssp_crnn_baseline"])
def test_float64_fold_is_exact_to_rounding(preset):
    reference, optimized = make_pair(preset, torch.float64, micro_batch_mb=1e-3)
    x = batch(torch.float64)
    with torch.no_grad():
        diffs = max_rel_diff({"conv": optimized.forward_conv(x), **optimized(x)},
                             {"conv": reference.forward_conv(x), **reference(x)})
    assert max(diffs.values()) <= TOL64, diffs


def _fold_without_mean(conv, bn):
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return conv.weight * scale.view(-1, 1, 1, 1), bn.bias


def _fold_without_eps(conv, bn):
    scale = bn.weight * torch.rsqrt(bn.running_var)
    return conv.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


@pytest.mark.parametrize("wrong_fold", [_fold_without_mean, _fold_without_eps])
def test_a_wrong_fold_is_caught(monkeypatch, wrong_fold):
    """The comparison above can fail: wrong folds are far outside its tolerance."""
    reference, optimized = make_pair("cvssp_crnn_at", micro_batch_mb=None)
    monkeypatch.setattr(layers, "fold_batchnorm", wrong_fold)
    x = batch()
    with torch.inference_mode():
        diff = max_rel_diff({"conv": optimized.forward_conv(x)}, {"conv": reference.forward_conv(x)})["conv"]
    assert diff > 10 * TOL32


@pytest.mark.parametrize("conv_bias,affine", [(False, True), (True, True), (True, False), (False, False)])
def test_fold_batchnorm_equals_conv_then_batchnorm(conv_bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=conv_bias).double()
    bn = nn.BatchNorm2d(6, eps=1e-3, affine=affine).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    weight, bias = fold_batchnorm(conv, bn)
    assert weight.shape == conv.weight.shape and bias.shape == (6,)
    torch.testing.assert_close(conv._conv_forward(x, weight, bias), bn(conv(x)), rtol=0, atol=1e-12)


def test_fold_batchnorm_needs_running_statistics():
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with pytest.raises(ConfigError, match="running statistics"):
        fold_batchnorm(conv, nn.BatchNorm2d(2, track_running_stats=False))


def test_fold_follows_later_changes_of_weights_and_statistics():
    reference, optimized = make_pair("cvssp_crnn_at")
    x = batch()
    with torch.inference_mode():
        optimized(x)  # folded once before the change
    for model in (reference, optimized):
        randomize_batchnorms(model, seed=7)
        with torch.no_grad():
            model.gcnn[2].conv.weight.mul_(-1.5)
    with torch.inference_mode():
        diffs = max_rel_diff(optimized(x), reference(x))
    assert max(diffs.values()) <= TOL32, diffs


def train_step_results(model: DeviNet, x: torch.Tensor):
    """Outputs, parameter gradients and the BatchNorms' updated running statistics of one training forward."""
    torch.manual_seed(3)  # the same dropout masks
    out = model.train()(x)
    grads = torch.autograd.grad(sum(v.sum() for v in out.values()), list(model.parameters()))
    stats = [s.clone() for b in model.gcnn for s in (b.bn.running_mean, b.bn.running_var)]
    return out, list(grads), stats


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_training_mode_is_unchanged_bit_for_bit(preset):
    """Without channels-last, training runs the original path: identical outputs, gradients, statistics."""
    overrides = {"dropout": 0.2, "linear_layers": [16]} if preset == "pyannote_devinet" else {}
    torch.manual_seed(0)
    reference = randomize_batchnorms(DeviNet.from_preset(preset, **overrides))
    optimized = copy.deepcopy(reference).optimize_for_inference(channels_last=False)
    before = reference.gcnn[0].bn.running_mean.clone()
    x = batch()
    want, got = train_step_results(reference, x), train_step_results(optimized, x)
    assert not torch.equal(want[2][0], before)  # the running statistics were updated
    for key in want[0]:
        assert torch.equal(got[0][key], want[0][key]), key
    for g, w in zip(got[1] + got[2], want[1] + want[2]):
        assert torch.equal(g, w)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cvssp_crnn_at", "cvssp_crnn_baseline"])
def test_training_mode_with_channels_last_is_unchanged(preset):
    """With channels-last, the same up to rounding; in float64 so that rounding cannot hide a difference.

    (In float32 the training-mode gradients of channels-last and contiguous convolutions differ by
    up to 1e-5 relative here: BatchNorm's batch statistics sum and cancel over the whole batch.)
    """
    torch.manual_seed(0)
    reference = randomize_batchnorms(DeviNet.from_preset(preset)).double()
    optimized = copy.deepcopy(reference).optimize_for_inference()
    x = batch(torch.float64)
    want, got = train_step_results(reference, x), train_step_results(optimized, x)
    assert max(max_rel_diff(got[0], want[0]).values()) <= TOL64
    for g, w in zip(got[1] + got[2], want[1] + want[2]):
        assert (g - w).abs().max() <= TOL64 * max(1.0, w.abs().max().item())


@pytest.mark.slow
def test_eval_mode_gradients_flow_through_the_fold():
    reference, optimized = make_pair("cvssp_crnn_sed", micro_batch_mb=1e-3)
    x = batch()
    grads = []
    for model in (reference, optimized):
        xg = x.clone().requires_grad_()
        loss = model(xg)["clipwise"].sum()
        params = [model.gcnn[1].conv.weight, model.gcnn[1].bn.weight, model.gcnn[1].bn.bias]
        grads.append(torch.autograd.grad(loss, [xg, *params]))
    for got, want in zip(grads[1], grads[0]):
        assert (got - want).abs().max() <= TOL32 * max(1.0, want.abs().max().item())


def test_state_dict_keys_and_values_unchanged():
    reference, optimized = make_pair("cvssp_crnn_sed")
    want, got = reference.state_dict(), optimized.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # an unoptimized checkpoint loads strictly into an optimized model and vice versa
    optimized.load_state_dict(want)
    DeviNet.from_preset("cvssp_crnn_sed").load_state_dict(got)


def test_default_models_are_not_optimized_and_fire_conv_and_bn_hooks():
    model = DeviNet.from_preset("cvssp_crnn_at").eval()
    assert not any(block.fold_bn for block in model.gcnn)
    calls = block_calls(model)
    with torch.inference_mode():
        model(batch())
    assert calls == ["gcnn.0.conv", "gcnn.0.bn", "gcnn.0"]


def test_optimized_eval_skips_conv_and_bn_hooks_and_runs_micro_batches():
    _, optimized = make_pair("cvssp_crnn_at", micro_batch_mb=1e-3)
    calls = block_calls(optimized)
    with torch.inference_mode():
        optimized(batch(clips=3))
    assert calls == ["gcnn.0"] * 3  # one call per clip, folded: neither conv nor bn runs
    calls.clear()
    optimized.train()
    optimized(batch(clips=3))  # training: the whole batch, conv then BatchNorm
    assert calls == ["gcnn.0.conv", "gcnn.0.bn", "gcnn.0"]


def test_micro_batch_size_follows_the_budget():
    model = DeviNet.from_preset("cvssp_crnn_at").optimize_for_inference(channels_last=False).eval()
    x = torch.zeros(44, 240, 64)
    per_clip = 128 * 240 * 64 * 4  # the first gated block's conv output: 7.5 MiB
    assert model._micro_batch_clips(x) == (16 * 2 ** 20) // per_clip == 2
    model.optimize_for_inference(channels_last=False, micro_batch_mb=None)
    assert model._micro_batch_clips(x) == 44
    model.optimize_for_inference(channels_last=False, micro_batch_mb=1e-3)
    assert model._micro_batch_clips(x) == 1
    assert model.train()._micro_batch_clips(x) == 44
    for bad in (0, -1.0):
        with pytest.raises(ConfigError, match="micro_batch_mb"):
            model.optimize_for_inference(micro_batch_mb=bad)


def test_optimize_returns_self_and_converts_to_channels_last():
    model = DeviNet.from_preset("cvssp_crnn_at")
    assert model.optimize_for_inference() is model
    assert model.gcnn[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(block.fold_bn for block in model.gcnn)
    plain = DeviNet.from_preset("cvssp_crnn_at").optimize_for_inference(channels_last=False)
    assert not plain.gcnn[1].conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["crnn_at", "crnn_sed"])
def test_optimized_converted_checkpoint_matches_real_keras208_outputs(reference_dir, variant):
    """A genuine Keras 2.0.8 checkpoint, converted and optimized, still gives the recorded Keras outputs."""
    from parity.compare import TOLERANCE_FLOAT32, Recording
    from parity.convert import keras_to_torch

    k208 = reference_dir / "keras208"
    recording = Recording.from_npz(k208 / f"k208_theano_{variant}_ref.npz")
    model = keras_to_torch(k208 / f"k208_theano_{variant}.h5").model.optimize_for_inference(micro_batch_mb=1e-3)
    assert model._micro_batch_clips(torch.from_numpy(recording.x)) == 1  # the micro-batch path really runs
    with torch.inference_mode():
        clipwise = model(torch.from_numpy(recording.x))["clipwise"]
    want = torch.from_numpy(recording.y)
    assert ((clipwise - want).abs().max() / max(1.0, want.abs().max().item())).item() <= TOLERANCE_FLOAT32

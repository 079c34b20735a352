"""DeviNet presets: parameter counts, shapes, geometry, configuration and input checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import devinet
from devinet import DeviNet, DeviNetConfig
from devinet.config import PYANNOTE_KEYS, preset_config
from devinet.errors import ConfigError, InputError

CVSSP = ["cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: DeviNet.from_preset(name).eval() for name in CVSSP + ["cvssp_crnn_baseline"]}


@pytest.mark.parametrize("name,expected", [
    ("cvssp_crnn_at", 1_190_545),   # the original main_crnn_at.py model, as Keras counts it
    ("cvssp_crnn_sed", 1_190_851),  # main_crnn_sed.py: + the 17x17 attention dense (306)
    ("cvssp_cnnrnn_at", 1_190_545),  # main_cnnrnn_at.py: only the poolings differ from crnn_at
])
def test_parameter_counts_equal_the_original(models, name, expected):
    model = models[name]
    assert model.num_parameters() == expected
    # BatchNorm moving statistics are buffers in PyTorch: 7 blocks x 128 maps x 2
    assert model.num_parameters(keras_style=False) == expected - 7 * 128 * 2


def test_intended_eight_blocks_adds_one_gated_block():
    eight = DeviNet.from_preset("cvssp_crnn_at", blocks=8)
    assert len(eight.gcnn) == 8
    # one more 3x3 conv 64 -> 128 without bias, plus its BatchNorm (4 x 128)
    assert eight.num_parameters() == 1_190_545 + 3 * 3 * 64 * 128 + 4 * 128
    with pytest.raises(ConfigError, match="7 live gated blocks"):
        preset_config("cvssp_crnn_at", blocks=6)


@pytest.mark.slow
@pytest.mark.parametrize("name,frames", [
    ("cvssp_crnn_at", 30), ("cvssp_crnn_sed", 240), ("cvssp_cnnrnn_at", 30), ("cvssp_crnn_baseline", 30)])
def test_output_shapes(models, name, frames):
    with torch.no_grad():
        out = models[name](torch.randn(3, 240, 64))
    assert out["clipwise"].shape == (3, 17)
    assert out["framewise"].shape == (3, frames, 17)
    assert ((out["clipwise"] >= 0) & (out["clipwise"] <= 1)).all()
    assert ("attention" in out) == (name == "cvssp_crnn_sed")


@pytest.mark.slow
@pytest.mark.parametrize("name", CVSSP)
def test_num_frames_matches_real_output_over_input_lengths(models, name):
    model = models[name]
    for T in [8, 9, 15, 16, 17, 63, 100, 239, 240, 241, 333]:
        with torch.no_grad():
            out = model(torch.randn(1, T, 64))
        assert out["framewise"].shape[1] == model.num_frames(T), (name, T)


def test_module_names_are_the_canonical_layer_names(models):
    names = {n for n, _ in models["cvssp_crnn_sed"].named_modules()}
    expected = {f"gcnn.{i}.conv" for i in range(7)} | {f"gcnn.{i}.bn" for i in range(7)}
    expected |= {f"pool.{j}" for j in range(4)} | {"final_conv", "final_pool", "rnn.0.linear",
                                                    "rnn.0.sigmoid", "head.frame", "head.attention"}
    assert expected <= names
    assert "gcnn.7" not in names  # the dead 8th block is not there by default


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at"])
def test_receptive_field_is_measured_by_perturbation(name):
    """Perturb one input frame at a time and see which front-end output frames change.

    Max pooling and ReLU can hide a change, so the measurement uses a monotone copy of the
    front end: positive conv weights, identity BatchNorm, average pools of the same geometry
    and positive input. Then an output frame changes iff the frame is in its receptive field.
    """
    # Narrow channels keep it cheap; the time geometry is the preset's.
    model = DeviNet.from_preset(name, conv_channels=4, final_conv_channels=4, rnn_hidden=()).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.abs_()
        for j, pool in enumerate(model.pool):
            model.pool[j] = torch.nn.AvgPool2d(pool.kernel_size)
        model.final_pool = torch.nn.AvgPool2d(model.final_pool.kernel_size)
    size, step = model.receptive_field()
    assert step == model.config.time_stride
    T = 240
    k = model.num_frames(T) // 2  # an output frame far from the edges
    torch.manual_seed(0)
    x = torch.rand(1, T, 64, dtype=torch.float64) + 0.5
    candidates = list(range(max(0, k * step - size - step), min(T, k * step + size + 2 * step)))
    batch = x.repeat(len(candidates), 1, 1)
    for row, t in enumerate(candidates):
        batch[row, t] += 1.0
    with torch.no_grad():
        base = model.forward_conv(x)[0, k]
        changed = (model.forward_conv(batch)[:, k] - base).abs().amax(dim=-1) > 0
    influencing = [t for t, c in zip(candidates, changed.tolist()) if c]
    assert influencing[0] > candidates[0] and influencing[-1] < candidates[-1]  # the window was wide enough
    assert len(influencing) == size == influencing[-1] - influencing[0] + 1
    assert (influencing[0] + influencing[-1]) / 2 == pytest.approx(model.config.receptive_field_center(k))


def test_config_round_trips_through_plain_dict():
    config = preset_config("cvssp_crnn_sed", blocks=8)
    data = config.to_dict()
    assert isinstance(data["pools"][0], list)
    assert DeviNetConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="unknown DeviNet configuration keys: bogus"):
        DeviNetConfig.from_dict({**data, "bogus": 1})


def test_mel_dimension_that_cannot_reduce_to_one_is_rejected():
    with pytest.raises(ConfigError, match="n_mels=40 becomes 0"):
        preset_config("cvssp_crnn_at", n_mels=40)
    with pytest.raises(ConfigError, match="pools has 3 entries but conv_groups has 4"):
        DeviNetConfig(pools=((2, 2),) * 3)


def test_unknown_preset_and_override():
    with pytest.raises(ConfigError, match="unknown preset 'crnn'"):
        DeviNet.from_preset("crnn")
    with pytest.raises(ConfigError, match="preset 'cvssp_crnn_at'"):
        DeviNet.from_preset("cvssp_crnn_at", not_a_field=3)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(240, 64), r"\(batch, frames, 64\)"),
    (torch.randn(2, 240, 63), "64 mel bins"),
    (torch.randn(2, 4, 64), "at least 8 frames"),
    (torch.zeros(2, 240, 64, dtype=torch.int64), "floating-point"),
    (torch.randn(2, 240, 64, dtype=torch.float64), "does not match the model's torch.float32"),
])
def test_clear_errors_for_bad_input(models, bad, match):
    with pytest.raises(InputError, match=match):
        models["cvssp_crnn_at"](bad)


def test_non_tensor_input_is_rejected(models):
    with pytest.raises(InputError, match="torch.Tensor"):
        models["cvssp_crnn_at"]([[0.0] * 64] * 240)


# ----------------------------------------------------------------------------- pyannote preset
SEED_SAMPLE_CONFIG = {  # the sample config of the older port's README, verbatim
    "conv_blocks": 3, "conv_channels": 128, "layers_pooling": [2, 2, 2, 2], "final_pooling": 4,
    "dropout": 0.3, "recurrent": [128], "gated_rnn": True, "linear_layers": [32, 32],
}


def test_seed_sample_config_is_rejected_with_a_clear_message():
    with pytest.raises(ConfigError, match=r"conv_blocks=3 but layers_pooling has 4 values .*conv_blocks: 4"):
        DeviNet.from_preset("pyannote_devinet", **SEED_SAMPLE_CONFIG)


def test_seed_sample_config_fixed_builds_the_corrected_model():
    model = DeviNet.from_preset("pyannote_devinet", num_classes=4, **{**SEED_SAMPLE_CONFIG, "conv_blocks": 4})
    assert len(model.gcnn) == 8 and model.gcnn[0].conv.out_channels == 256  # 2 x 128, then GLU
    assert model.gcnn[0].conv.bias is None and model.gcnn[0].bn.eps == 1e-3
    assert model.rnn[0].linear.bidirectional and model.embedding_size == 32
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 100, 64))
    assert out["framewise"].shape == (2, 100, 4)  # the port pools mel only: full time resolution


def test_pyannote_preset_defaults_and_errors():
    assert set(PYANNOTE_KEYS) == {"conv_blocks", "conv_channels", "layers_pooling", "final_pooling",
                                  "dropout", "recurrent", "gated_rnn", "linear_layers"}
    DeviNet.from_preset("pyannote_devinet", recurrent=None)  # None means the default, no crash
    with pytest.raises(ConfigError, match="unknown pyannote DeviNet parameters: sample_rate"):
        DeviNet.from_preset("pyannote_devinet", sample_rate=16000)
    with pytest.raises(ConfigError, match="dropout must be in"):
        DeviNet.from_preset("pyannote_devinet", dropout=1.5)
    with pytest.raises(ConfigError, match="becomes 2 after mel pooling"):
        DeviNet.from_preset("pyannote_devinet", conv_blocks=3, layers_pooling=[2, 2, 2])


def test_importing_devinet_does_not_import_tensorflow():
    code = "import devinet, devinet.cli, sys; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_is_exposed():
    assert devinet.__version__

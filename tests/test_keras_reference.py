"""The Keras 3 port of the original CVSSP models (keras_reference): structure, semantics, files, training.

Every test here runs TensorFlow through the ``keras`` fixture: it skips on a machine without
TensorFlow and fails in CI.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.keras

# Layers of the original model files, in order, for the gated presets (7 live blocks).
GATED_7_LAYERS = (
    ["input", "to_image"]
    + [f"gcnn_{i}_{part}" for i in range(2) for part in ("conv", "bn", "glu")] + ["pool_0"]
    + [f"gcnn_{i}_{part}" for i in range(2, 4) for part in ("conv", "bn", "glu")] + ["pool_1"]
    + [f"gcnn_{i}_{part}" for i in range(4, 6) for part in ("conv", "bn", "glu")] + ["pool_2"]
    + ["gcnn_6_conv", "gcnn_6_bn", "gcnn_6_glu", "pool_3"]
    + ["final_conv", "final_pool", "to_sequence", "rnn_0_linear", "rnn_0_sigmoid", "rnn_0_gate", "head_frame"]
)


def param_count(blocks: int, block_channels: int, gated: bool, attention: bool, classes: int = 17) -> int:
    """Keras parameter count of a CVSSP model from its layer shapes (BN statistics included).

    Pooling does not change any weight shape, so crnn_at, crnn_sed and cnnrnn_at share the
    count of their layer types: that is how cvssp_cnnrnn_at's 1,190,545 is derived.
    """
    conv_out = 2 * block_channels if gated else block_channels
    convs = 9 * 1 * conv_out + (blocks - 1) * 9 * block_channels * conv_out
    batchnorms = blocks * 4 * conv_out
    final_conv = 9 * block_channels * 256 + 256
    gru_direction = 3 * (256 * 128 + 128 * 128 + 128)  # kernel, recurrent kernel, one bias (reset before)
    grus = (4 if gated else 2) * gru_direction
    heads = 256 * classes + classes + (classes * classes + classes if attention else 0)
    return convs + batchnorms + final_conv + grus + heads


@pytest.fixture(scope="module")
def kr(keras):
    import keras_reference

    return keras_reference


def randomize(model, rng, scale: float = 0.2) -> None:
    """Random values in every variable, BN statistics included, so no layer is an identity."""
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0.0, scale, shape)
        variable.assign(value.astype(np.float32))


def clips(rng, n_frames: int = 240, image: bool = False) -> np.ndarray:
    """Two clips (N=2): one standard normal, one all zeros."""
    x = np.stack([rng.standard_normal((n_frames, 64)), np.zeros((n_frames, 64))]).astype(np.float32)
    return x[..., None] if image else x


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize(
    "name, blocks, expected",
    [
        ("cvssp_crnn_at", 7, 1_190_545),  # the original's count (keras208 meta)
        ("cvssp_crnn_sed", 7, 1_190_851),  # the original's count (keras208 meta)
        ("cvssp_cnnrnn_at", 7, 1_190_545),  # same layer shapes as crnn_at: see param_count
        ("cvssp_crnn_at", 8, 1_264_785),  # + one gated block: 9*64*128 + 4*128
        ("cvssp_crnn_baseline", 7, 671_313),  # main_cnnrnn_balbatch_norm_baseline_icassp2018.py
    ],
)
def test_parameter_counts(kr, name, blocks, expected):
    model = kr.build(name, blocks=blocks)
    preset = kr.PRESETS[name]
    assert model.count_params() == expected
    assert expected == param_count(blocks, preset.block_channels, preset.gated, preset.head == "attention")
    conv_out = 2 * preset.block_channels if preset.gated else preset.block_channels
    bn_statistics = blocks * 2 * conv_out  # moving mean and variance: PyTorch buffers, not parameters
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == bn_statistics


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at", "cvssp_crnn_baseline"])
@pytest.mark.parametrize("blocks", [7, 8])
def test_weighted_layers_are_devinets_modules(kr, name, blocks):
    """Same Keras-style parameter count as devinet, and one Keras layer per devinet module with weights."""
    from devinet.model import DeviNet

    torch_model = DeviNet.from_preset(name, blocks=blocks)
    keras_model = kr.build(name, blocks=blocks)
    assert keras_model.count_params() == torch_model.num_parameters(keras_style=True)
    torch_names = {
        module_name.replace(".", "_")
        for module_name, module in torch_model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    }
    assert {layer.name for layer in keras_model.layers if layer.weights} == torch_names


def test_layer_names_order_and_shapes(kr):
    at = kr.build("cvssp_crnn_at")
    assert [layer.name for layer in at.layers] == GATED_7_LAYERS + ["head_pool"]
    shapes = {layer.name: layer.output.shape for layer in at.layers}
    assert shapes["pool_3"] == (None, 30, 4, 64)
    assert shapes["to_sequence"] == (None, 30, 256)
    assert shapes["head_frame"] == (None, 30, 17)
    assert at.output_shape == (None, 17)

    sed = kr.build("cvssp_crnn_sed")
    assert [layer.name for layer in sed.layers] == GATED_7_LAYERS + ["head_attention", "head_pool"]
    assert sed.get_layer("to_sequence").output.shape == (None, 240, 256)

    cnnrnn = kr.build("cvssp_cnnrnn_at")
    assert cnnrnn.input_shape == (None, 240, 64, 1)  # 4-D input, no Reshape, as its script
    assert "to_image" not in [layer.name for layer in cnnrnn.layers]
    assert cnnrnn.get_layer("pool_3").output.shape == (None, 30, 2, 64)  # (1, 3) pool
    assert cnnrnn.get_layer("final_pool").output.shape == (None, 30, 1, 256)  # (1, 2) pool


def test_intended_eight_blocks_pool_after_every_pair(kr):
    names = [layer.name for layer in kr.build("cvssp_crnn_at", blocks=8).layers]
    after = {f"pool_{j}": names[names.index(f"pool_{j}") - 1] for j in range(4)}
    assert after == {"pool_0": "gcnn_1_glu", "pool_1": "gcnn_3_glu", "pool_2": "gcnn_5_glu", "pool_3": "gcnn_7_glu"}


def test_layer_semantics_match_the_original_settings(kr, keras):
    model = kr.build("cvssp_crnn_sed", attention_eps=1e-9)
    conv = model.get_layer("gcnn_3_conv")
    assert (conv.filters, conv.kernel_size, conv.padding, conv.use_bias) == (128, (3, 3), "same", False)
    bn = model.get_layer("gcnn_3_bn")
    assert (bn.axis, bn.epsilon, bn.momentum) == (-1, 1e-3, 0.99)
    final = model.get_layer("final_conv")
    assert (final.filters, final.use_bias, final.activation.__name__) == (256, True, "relu")
    for name, activation in (("rnn_0_linear", "linear"), ("rnn_0_sigmoid", "sigmoid")):
        bidirectional = model.get_layer(name)
        assert bidirectional.merge_mode == "concat"
        for gru in (bidirectional.forward_layer, bidirectional.backward_layer):
            assert gru.cell.reset_after is False and gru.return_sequences
            assert gru.cell.activation.__name__ == activation
            assert gru.cell.recurrent_activation is kr.keras2_hard_sigmoid
    assert model.get_layer("head_pool").eps == 1e-9


def test_bad_build_arguments(kr):
    from devinet.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown Keras reference model"):
        kr.build("crnn_at")
    with pytest.raises(ConfigError, match="blocks must be 7"):
        kr.build("cvssp_crnn_at", blocks=6)
    with pytest.raises(ConfigError, match="reduce to exactly 1"):
        kr.build("cvssp_crnn_at", n_mels=128)


def test_no_lambda_layers_anywhere(kr, keras):
    for name in kr.PRESETS:
        model = kr.build(name)
        assert not any(isinstance(layer, keras.layers.Lambda) for layer in model._flatten_layers())
        assert '"Lambda"' not in json.dumps(model.get_config())


# --------------------------------------------------------------------------- layers
def test_keras2_hard_sigmoid_is_not_keras3_hard_sigmoid(kr, keras):
    x = np.linspace(-4.0, 4.0, 81).astype(np.float32)
    ours = np.asarray(kr.keras2_hard_sigmoid(x))
    np.testing.assert_array_equal(ours, np.clip(np.float32(0.2) * x + np.float32(0.5), 0.0, 1.0))
    keras3 = np.asarray(keras.activations.hard_sigmoid(x))
    np.testing.assert_allclose(keras3, np.clip(x / 6 + 0.5, 0, 1), atol=1e-7)
    assert np.abs(ours - keras3).max() > 0.08  # largest at x = +-2.5: 1.0 vs 0.9167
    serialized = keras.activations.serialize(kr.keras2_hard_sigmoid)
    assert serialized["config"] == "devinet>keras2_hard_sigmoid"
    assert keras.activations.deserialize(serialized) is kr.keras2_hard_sigmoid


def test_glu_gates_with_the_second_half(kr, rng):
    x = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
    y = np.asarray(kr.GLU()(x))
    np.testing.assert_allclose(y, x[..., :3] / (1 + np.exp(-x[..., 3:])), rtol=1e-6, atol=1e-7)
    assert not np.allclose(y, x[..., 3:] / (1 + np.exp(-x[..., :3])), atol=1e-3)
    with pytest.raises(ValueError, match="even channel count"):
        kr.GLU()(x[..., :5])


def test_time_mean_and_attention_pooling(kr, rng):
    cla = rng.uniform(0, 1, (3, 7, 5)).astype(np.float32)
    logits = rng.standard_normal((3, 7, 5))
    att = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    att[0, :, 0] = 0.0  # a class with zero attention everywhere: the eps clip keeps it finite
    np.testing.assert_allclose(np.asarray(kr.TimeMean()(cla)), cla.mean(axis=1), rtol=1e-6)
    expected = (cla * att).sum(1) / np.clip(att, 1e-7, 1).sum(1)
    pooled = np.asarray(kr.AttentionPooling()([cla, att]))
    np.testing.assert_allclose(pooled, expected, rtol=1e-5)
    assert np.all(np.isfinite(pooled))
    assert kr.AttentionPooling.from_config(kr.AttentionPooling(eps=1e-9).get_config()).eps == 1e-9


def keras2_gru(x, kernel, recurrent, bias, activation, go_backwards=False, reset_after=False):
    """Keras 2.0.8's GRU in numpy, float64. Gates z, r, h in the weights; outputs in step order."""
    hard_sigmoid = lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)  # noqa: E731
    H = recurrent.shape[0]
    h = np.zeros((x.shape[0], H))
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    outputs = []
    for t in steps:
        xz, xr, xh = np.split(x[:, t] @ kernel + bias, 3, axis=-1)
        z = hard_sigmoid(xz + h @ recurrent[:, :H])
        r = hard_sigmoid(xr + h @ recurrent[:, H:2 * H])
        if reset_after:
            hh = activation(xh + r * (h @ recurrent[:, 2 * H:]))
        else:  # Keras 2: the reset gate scales h BEFORE the recurrent matmul
            hh = activation(xh + (r * h) @ recurrent[:, 2 * H:])
        h = z * h + (1 - z) * hh
        outputs.append(h)
    return np.stack(outputs, axis=1)


ACTIVATIONS = {
    "linear": lambda v: v,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "tanh": np.tanh,
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_bidirectional_gru_follows_the_keras2_equations(kr, keras, rng, activation):
    units, features, steps = 4, 3, 6
    inputs = keras.Input((steps, features), dtype="float64")
    gru = keras.layers.GRU(units, activation=activation, recurrent_activation=kr.keras2_hard_sigmoid,
                           reset_after=False, return_sequences=True, dtype="float64")
    model = keras.Model(inputs, keras.layers.Bidirectional(gru, dtype="float64")(inputs))
    forward = [rng.normal(0, 0.7, s) for s in ((features, 3 * units), (units, 3 * units), (3 * units,))]
    backward = [rng.normal(0, 0.7, s) for s in ((features, 3 * units), (units, 3 * units), (3 * units,))]
    model.layers[1].set_weights(forward + backward)  # Keras 2 file order: forward then backward
    x = rng.standard_normal((2, steps, features))
    act = ACTIVATIONS[activation]
    expected = np.concatenate(
        [keras2_gru(x, *forward, act), keras2_gru(x, *backward, act, go_backwards=True)[:, ::-1]], axis=-1
    )
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-12, atol=1e-12)
    # The test tells the Keras 2 and Keras 3 reset gates apart.
    reset_after = keras2_gru(x, *forward, act, reset_after=True)
    assert np.abs(reset_after - expected[..., :units]).max() > 1e-3


# --------------------------------------------------------------------------- files
ROUND_TRIP_CASES = [
    ("cvssp_crnn_at", 240),
    ("cvssp_crnn_sed", None),
    ("cvssp_cnnrnn_at", None),
    ("cvssp_crnn_baseline", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, n_frames", ROUND_TRIP_CASES)
def test_keras_file_round_trip_is_exact(kr, keras, rng, tmp_path, name, n_frames):
    model = kr.build(name, n_frames=n_frames)
    randomize(model, rng)
    x = clips(rng, n_frames or 24, image=kr.PRESETS[name].image_input)
    expected = np.asarray(model(x, training=False))

    path = tmp_path / f"{name}.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config and '"reset_after": false' in config
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert loaded.get_layer("head_frame").output.shape == model.get_layer("head_frame").output.shape
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)

    weights = tmp_path / f"{name}.weights.h5"
    model.save_weights(weights)
    fresh = kr.build(name, n_frames=n_frames)
    fresh.load_weights(weights)
    np.testing.assert_array_equal(np.asarray(fresh(x, training=False)), expected)


def test_weight_file_layout_names_every_dataset(kr, rng, tmp_path):
    import h5py

    model = kr.build("cvssp_crnn_sed")
    randomize(model, rng)
    layout = kr.weight_file_layout(model)
    assert len(layout) == len(model.weights) == len(set(layout.values()))
    assert {
        "gcnn_0_conv/kernel": "layers/conv2d/vars/0",
        "gcnn_6_bn/moving_variance": "layers/batch_normalization_6/vars/3",
        "final_conv/bias": "layers/conv2d_7/vars/1",
        "rnn_0_linear/forward_rnn_0_linear_gru/gru_cell/kernel": "layers/bidirectional/forward_layer/cell/vars/0",
        "rnn_0_sigmoid/backward_rnn_0_sigmoid_gru/gru_cell/bias":
            "layers/bidirectional_1/backward_layer/cell/vars/2",
        "head_frame/head_frame_dense/kernel": "layers/time_distributed/layer/vars/0",
        "head_attention/head_attention_dense/bias": "layers/time_distributed_1/layer/vars/1",
    }.items() <= layout.items()
    # The layout holds for both file kinds, and computing it left the weights untouched.
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        (tmp_path / "inner.h5").write_bytes(archive.read("model.weights.h5"))
    for path in (tmp_path / "m.weights.h5", tmp_path / "inner.h5"):
        with h5py.File(path, "r") as handle:
            for variable in model.weights:
                np.testing.assert_array_equal(handle[layout[variable.path]][()], variable.numpy())
            assert handle[layout["gcnn_0_conv/kernel"]].parent.attrs["name"] == "gcnn_0_conv"


def test_intermediate_and_framewise_models(kr, rng):
    from devinet.errors import ConfigError

    model = kr.build("cvssp_crnn_at", n_frames=None)
    randomize(model, rng)
    x = clips(rng, n_frames=48)
    outputs = {k: np.asarray(v) for k, v in kr.build_intermediate_model(model)(x, training=False).items()}
    assert list(outputs) == [layer.name for layer in model.layers[1:]]
    assert outputs["gcnn_0_bn"].shape == (2, 48, 64, 128) and outputs["gcnn_0_glu"].shape == (2, 48, 64, 64)
    np.testing.assert_allclose(outputs["head_pool"], outputs["head_frame"].mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(outputs["head_pool"], np.asarray(model(x, training=False)))
    frames = np.asarray(kr.framewise_model(model)(x, training=False))
    np.testing.assert_array_equal(frames, outputs["head_frame"])
    assert frames.shape == (2, 6, 17)
    assert list(kr.build_intermediate_model(model, ["rnn_0_gate"]).output) == ["rnn_0_gate"]
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        kr.build_intermediate_model(model, ["nope"])


# --------------------------------------------------------------------------- the original
def original_layer_name(name: str) -> str | None:
    """Our layer -> the layer of the original Keras 2.0.8 model holding the same output."""
    fixed = {
        "to_image": "reshape_1", "final_conv": "conv2d_9", "final_pool": "max_pooling2d_5",
        "to_sequence": "reshape_2", "rnn_0_linear": "bidirectional_1", "rnn_0_sigmoid": "bidirectional_2",
        "rnn_0_gate": "multiply_9", "head_frame": "localization_layer", "head_attention": "time_distributed_1",
        "head_pool": "lambda_17",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split("_")
    if parts[0] == "pool":
        return f"max_pooling2d_{int(parts[1]) + 1}"
    block, part = int(parts[1]) + 1, parts[2]
    return {"conv": f"conv2d_{block}", "bn": f"batch_normalization_{block}", "glu": f"multiply_{block}"}[part]


def load_keras208_weights(model, path) -> None:
    """Assign a Keras 2.0.8 save_weights file, layer by layer in the file's order.

    Theano convolved: its conv kernels are flipped in both spatial axes for TensorFlow.
    """
    import h5py

    with h5py.File(path, "r") as handle:
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        stored = []
        for layer_name in map(text, handle.attrs["layer_names"]):
            names = [text(n) for n in handle[layer_name].attrs["weight_names"]]
            if names:
                values = [handle[layer_name][n][()] for n in names]
                if layer_name.startswith("conv2d"):
                    values[0] = values[0][::-1, ::-1]
                stored.append((layer_name, values))
    ours = [layer for layer in model.layers if layer.weights]
    assert [original_layer_name(layer.name) for layer in ours] == [name for name, _ in stored]
    for layer, (_, values) in zip(ours, stored):
        layer.set_weights(values)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["crnn_at", "crnn_sed"])
def test_reproduces_the_original_keras208_model_layer_by_layer(kr, reference_dir, variant):
    folder = reference_dir / "keras208"
    model = kr.build(f"cvssp_{variant}")
    load_keras208_weights(model, folder / f"k208_theano_{variant}_weights.h5")
    ref = np.load(folder / f"k208_theano_{variant}_ref.npz", allow_pickle=False)
    ref_names = [str(n) for n in ref["names"]]
    outputs = kr.build_intermediate_model(model).predict_on_batch(ref["x"])
    for name, output in outputs.items():
        i = ref_names.index(original_layer_name(name))
        assert output.shape == tuple(ref[f"shape_{i:03d}"]), name
        sampled = output.reshape(-1)[ref[f"idx_{i:03d}"]]
        pairs = [(sampled, ref[f"val_{i:03d}"])]
        if f"full_{i:03d}" in ref.files:
            pairs.append((output, ref[f"full_{i:03d}"]))
        for ours, expected in pairs:
            # float32 rounding, TensorFlow vs Theano: measured <= 1.2e-6 relative to
            # max(1, max|ref|) over all layers of both models (gcnn_1_bn of crnn_sed).
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-6 * scale, err_msg=name)
    np.testing.assert_allclose(outputs["head_pool"], ref["y"], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- training
def tiny_data(rng, n: int = 10):
    x = rng.standard_normal((n, 16, 64)).astype(np.float32)
    y = (rng.random((n, 17)) < 0.2).astype(np.float32)
    y[0] = 1.0  # every class has a clip
    return x, y


def fresh_model(kr, keras):
    keras.utils.set_random_seed(1)  # the same initial weights for every run
    return kr.build("cvssp_crnn_at", n_frames=16)


def assert_same_weights(a, b) -> None:
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)


def sampler(y, batch_size, seed):
    from experiments.batching import BalancedBatchSampler

    return BalancedBatchSampler(y, batch_size=batch_size, seed=seed)


@pytest.mark.slow
def test_training_smoke_checkpoint_resume_and_fusion(kr, keras, rng, tmp_path):
    from devinet.errors import FileFormatError, InputError

    # Eager steps: no graph tracing, so the 2-iteration runs stay quick.
    x, y = tiny_data(rng)
    recipe = kr.Recipe(iterations_per_epoch=1)
    options = dict(recipe=recipe, progress=False, run_eagerly=True)
    run = tmp_path / "run"
    kr.train(fresh_model(kr, keras), x, y, run, epochs=1, sampler=sampler(y, 4, 2), **options)
    assert sorted(p.name for p in run.iterdir()) == ["epoch_0001.json", "epoch_0001.keras"]
    resumed = kr.train(fresh_model(kr, keras), x, y, run, epochs=2, sampler=sampler(y, 4, 2), **options)
    straight = kr.train(fresh_model(kr, keras), x, y, tmp_path / "straight", epochs=2, sampler=sampler(y, 4, 2),
                        validation=(x[:3], y[:3]), **options)
    assert_same_weights(resumed, straight)  # model, optimizer and batch sequence were resumed
    assert sorted(kr.list_checkpoints(run)) == [1, 2]
    assert int(resumed.optimizer.iterations.numpy()) == 2
    assert resumed.optimizer.epsilon == 1e-8 and resumed.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    state = json.loads((run / "epoch_0002.json").read_text())
    assert state["sampler"]["iteration"] == 2 and state["iterations"] == 2
    assert np.isfinite(state["loss"]) and len(state["losses"]) == 1
    logged = json.loads((tmp_path / "straight" / "epoch_0002.json").read_text())
    assert np.isfinite(logged["val_loss"]) and "val_loss" not in state

    checkpoints = kr.fusion_checkpoints(run, [1, 2])
    fused = kr.fuse_predictions(checkpoints, x, progress=False)
    each = [np.asarray(kr.load_checkpoint(p, compile=False)(x, training=False)) for p in checkpoints]
    np.testing.assert_allclose(fused, (each[0] + each[1]) / 2, rtol=1e-6, atol=1e-7)
    assert not np.allclose(each[0], each[1])  # the second epoch changed the model
    frames = kr.fuse_predictions(checkpoints[:1], x, framewise=True, progress=False)
    first = kr.load_checkpoint(checkpoints[0], compile=False)
    np.testing.assert_allclose(frames, np.asarray(kr.framewise_model(first)(x, training=False)), rtol=1e-6,
                               atol=1e-7)

    with pytest.raises(FileFormatError, match="already holds checkpoints up to epoch 2"):
        kr.train(fresh_model(kr, keras), x, y, run, epochs=3, sampler=sampler(y, 4, 2), recipe=recipe, resume=False)
    with pytest.raises(FileFormatError, match="was trained with recipe"):
        kr.train(fresh_model(kr, keras), x, y, run, epochs=3, sampler=sampler(y, 4, 2), recipe=kr.Recipe())
    with pytest.raises(InputError, match="sampler state is for seed 2"):
        kr.train(fresh_model(kr, keras), x, y, run, epochs=3, sampler=sampler(y, 4, 9), recipe=recipe)
    with pytest.raises(FileFormatError, match=r"no complete checkpoint for epochs \[21"):
        kr.fusion_checkpoints(run)


def test_training_refuses_bad_input(kr, rng, tmp_path):
    from devinet.errors import ConfigError, FileFormatError, InputError

    x, y = tiny_data(rng)
    model = kr.build("cvssp_crnn_at", n_frames=16)
    with pytest.raises(InputError, match="expects inputs"):
        kr.train(model, x[:, :, :32], y, tmp_path, epochs=1, sampler=sampler(y, 4, 0))
    with pytest.raises(InputError, match="x has 10 clips but y has 9"):
        kr.train(model, x, y[:9], tmp_path, epochs=1, sampler=sampler(y, 4, 0))
    with pytest.raises(ConfigError, match="iterations_per_epoch"):
        kr.Recipe(iterations_per_epoch=0)
    assert not list(tmp_path.iterdir())
    (tmp_path / "epoch_0001.keras").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FileFormatError, match="epoch_0001.keras: not a loadable Keras 3 model"):
        kr.load_checkpoint(tmp_path / "epoch_0001.keras")
    with pytest.raises(FileFormatError, match="checkpoint not found"):
        kr.load_checkpoint(tmp_path / "missing.keras")


@pytest.mark.slow
def test_graph_mode_training_resumes_exactly(kr, keras, rng, tmp_path):
    x, y = tiny_data(rng, n=12)
    options = dict(recipe=kr.Recipe(iterations_per_epoch=2), progress=False)
    straight = kr.train(fresh_model(kr, keras), x, y, tmp_path / "a", epochs=2, sampler=sampler(y, 4, 3), **options)
    kr.train(fresh_model(kr, keras), x, y, tmp_path / "b", epochs=1, sampler=sampler(y, 4, 3), **options)
    resumed = kr.train(fresh_model(kr, keras), x, y, tmp_path / "b", epochs=2, sampler=sampler(y, 4, 3), **options)
    assert_same_weights(resumed, straight)

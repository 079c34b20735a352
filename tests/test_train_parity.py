"""Training parity: devinet trains like the original, against genuine Keras 2.0.8 and against the Keras reference.

Against the original itself (../shared/reference/keras208/NAME_train.npz: three genuine Keras
2.0.8 + Theano ``train_on_batch`` steps of the original compile line from NAME.h5): devinet,
converted from NAME.h5, in training mode with ``Keras2Adam`` (the recording's optimizer
arguments) on the recorded batches must

- reproduce the recorded losses of steps 1 and 2 within 2e-5 relative, and
- reproduce the recorded weights after step 1 within 1e-3 of the step's size, median over
  tensors, where for each tensor W (all of them: 51 in crnn_at, 53 in crnn_sed, kernels, biases,
  BatchNorm gamma/beta and moving mean/variance; devinet's num_batches_tracked counters are left
  out, Keras has none), with
  W0 its value in NAME.h5, K the value Keras recorded after step 1 and D devinet's after step 1:
  step size s(W) = max_i |K_i - W0_i|, error e(W) = max_i |D_i - K_i|, and the ratio
  e(W) / s(W) is what the median is taken over (parity.train_recording, ``rel_step``);
- and, since the median does not see the 14 BatchNorm statistics, keep each of those within
  1e-4 of its step (torch's moving-variance update shows 6.7e-4).

Measured (torch 2.13 CPU; also printed by ``devinet parity NAME.h5 --train-steps K``; see
docs/training-parity.md), loss
relative errors of steps 1/2/3, step-1 median and largest ratio, BatchNorm largest, step-3 median:

- crnn_sed float32: 0 / 6.0e-7 / 2.5e-5; 2.5e-4, 0.20; 8.0e-6; 0.036
- crnn_sed float64: 7.0e-9 / 6.2e-7 / 2.5e-5; 2.5e-4, 0.19; 8.4e-6; 0.042
- crnn_at  float32: 8.2e-8 / 1.2e-7 / 1.2e-6; 6.0e-5, 0.53; 8.3e-6; 0.011
- crnn_at  float64: 9.5e-8 / 1.1e-8 / 1.5e-6; 5.9e-5, 0.013; 7.7e-6; 0.0053

The largest ratios are elements whose gradient is below float32's rounding error in Theano's
run, where Adam's step takes either sign; the recording itself is float32, so float64 devinet
is no closer. Step 3 is float32 chaos (two runs whose inputs differ by 1e-7 differ by ~1e-4 in
loss there, README of the recordings): only a sanity bound is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

from devinet import DeviNet
from devinet.cli import main
from parity.convert import keras_to_torch, read_keras_file
from parity.train_recording import (BN_STEP_TOLERANCE, LOSS_TOLERANCE, STEP_TOLERANCE, TrainRecording,
                                    replay_recording, train_recording_for)
from parity.training import TOLERANCE_FLOAT64, train_parity

NAMES = ["k208_theano_crnn_at", "k208_theano_crnn_sed"]


@pytest.fixture(scope="module")
def k208(reference_dir):
    return reference_dir / "keras208"


@pytest.fixture(scope="module", params=NAMES)
def genuine(request, k208):
    """(the checkpoint read, its conversion, its recording)."""
    file = read_keras_file(k208 / f"{request.param}.h5")
    recording = TrainRecording.from_npz(train_recording_for(file.path))
    return file, keras_to_torch(file), recording


def replay(genuine, dtype, model=None, optimizer=None):
    file, conversion, recording = genuine
    return replay_recording(file, model or conversion.model, recording, dtype, flip=conversion.flipped,
                            optimizer=optimizer)


def assert_reproduces_the_original(result, recording):
    errors = result.loss_errors()
    assert len(errors) == 3 and sorted(result.weights) == [1, 3]
    assert max(errors[:2]) <= LOSS_TOLERANCE, errors
    assert len(result.weights[1]) == len(recording.initial_sums) >= 51
    assert result.median_rel_step(1) <= STEP_TOLERANCE, result.median_rel_step(1)
    assert result.max_rel_step(1, batchnorm_statistics=True) <= BN_STEP_TOLERANCE
    # step 3: sanity bounds, ten times the float32 noise of the recordings' README
    assert errors[2] <= 1e-3 and result.median_rel_step(3) <= 0.2
    assert result.passed


@pytest.mark.slow
def test_devinet_trains_like_genuine_keras208_float32(genuine):
    assert_reproduces_the_original(replay(genuine, torch.float32), genuine[2])


@pytest.mark.slow
def test_devinet_trains_like_genuine_keras208_float64(genuine):
    assert_reproduces_the_original(replay(genuine, torch.float64), genuine[2])


@pytest.mark.slow
def test_replay_tells_torch_adam_and_torch_batchnorm_from_the_original(k208):
    """The criteria discriminate: torch's Adam (epsilon after the bias correction) fails the step-1 median,
    torch's BatchNorm update (unbiased variance, no eps) the BatchNorm bound."""
    file = read_keras_file(k208 / "k208_theano_crnn_sed.h5")
    conversion = keras_to_torch(file)
    recording = TrainRecording.from_npz(train_recording_for(file.path))
    recording.weights = {1: recording.weights[1]}
    recording.x, recording.y, recording.loss = recording.x[:1], recording.y[:1], recording.loss[:1]
    genuine = (file, conversion, recording)
    config = recording.optimizer_config
    torch_adam = replay(genuine, torch.float32, optimizer=lambda params: torch.optim.Adam(
        params, lr=config["lr"], betas=(config["beta_1"], config["beta_2"]), eps=config["epsilon"]))
    assert torch_adam.median_rel_step(1) > 100 * STEP_TOLERANCE  # measured 0.35
    torch_bn = DeviNet(conversion.model.config.replace(bn_moving_variance="torch"))
    torch_bn.load_state_dict(conversion.model.state_dict())
    result = replay(genuine, torch.float32, model=torch_bn)
    assert result.max_rel_step(1, batchnorm_statistics=True) > 5 * BN_STEP_TOLERANCE  # measured 6.7e-4
    assert not torch_adam.passed and not result.passed


def test_recording_of_another_checkpoint_is_refused(k208):
    from devinet.errors import FileFormatError

    file = read_keras_file(k208 / "k208_theano_crnn_at.h5")
    model = keras_to_torch(file).model
    recording = TrainRecording.from_npz(k208 / "k208_theano_crnn_sed_train.npz")
    with pytest.raises(FileFormatError, match="does not record the weights of k208_theano_crnn_at.h5: "
                                              "time_distributed_1/bias, time_distributed_1/kernel"):
        recording.states(file, model, flip=True)
    recording = TrainRecording.from_npz(k208 / "k208_theano_crnn_at_train.npz")
    assert sorted(recording.states(file, model, flip=True)) == [1, 3]
    recording.initial_sums["conv2d_3/kernel"] += 1.0
    with pytest.raises(FileFormatError, match="did not start from k208_theano_crnn_at.h5: conv2d_3/kernel sums to"):
        recording.states(file, model, flip=True)
    assert recording.optimizer_config == pytest.approx({"lr": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8,
                                                        "decay": 0.0}, rel=1e-7)


# ----------------------------------------------------------------------------- against the Keras reference
@pytest.mark.slow
def test_parity_train_steps_cli(keras, k208, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    code = main(["parity", str(k208 / "k208_theano_crnn_at.h5"), "--train-steps", "2", "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text())
    train = report["train"]
    assert report["passed"] and train["steps"] == 2
    assert 0 <= train["max_rel_weight_error"] <= TOLERANCE_FLOAT64  # measured 6.4e-13
    assert 0 <= train["max_rel_loss_error"] <= TOLERANCE_FLOAT64
    float32 = train["float32"]
    for key in ("max_rel_weight_error", "max_rel_loss_error"):
        assert float32[key] <= float32["margin"] * float32["noise_floor"][key]
    assert {"devinet", "keras", "perturbation"} <= set(float32["noise_floor"])
    steps = train["float64_steps"]
    assert [s["step"] for s in steps] == [1, 2] and len(steps[0]["weights"]) == 51
    assert "gcnn.0.bn.running_var" in steps[1]["weights"]
    assert [r["dtype"] for r in train["recording"]] == ["float64", "float32"]
    assert all(r["passed"] for r in train["recording"])
    assert "[float64] tolerance 1e-09" in out and out.rstrip().endswith("PASS")


@pytest.mark.slow
def test_train_parity_reports_torch_adam_as_divergence(keras, k208):
    report = train_parity(k208 / "k208_theano_crnn_at.h5", 1, dtypes=(torch.float64,), replay_genuine=False,
                          optimizer=lambda params: torch.optim.Adam(params, lr=1e-3, eps=1e-8))
    assert report.float64_passed() is False and not report.passed
    assert report.to_dict()["train"]["max_rel_weight_error"] > 1e3 * TOLERANCE_FLOAT64


def test_train_steps_must_be_positive(k208, capsys):
    assert main(["parity", str(k208 / "k208_theano_crnn_at.h5"), "--train-steps", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "devinet parity: error: --train-steps must be at least 1, got 0"

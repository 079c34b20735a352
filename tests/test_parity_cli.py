"""`devinet convert` and `devinet parity`: directions, flags, reports, one-line errors, no partial output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import devinet
from devinet.cli import main
from parity.convert import keras_to_torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def k208(reference_dir):
    return reference_dir / "keras208"


@pytest.fixture(scope="module")
def at_h5(k208):
    return k208 / "k208_theano_crnn_at.h5"


@pytest.fixture(scope="module")
def checkpoint(at_h5, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "crnn_at.pt"
    assert main(["convert", str(at_h5), str(path)]) == 0
    return path


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"devinet {command}: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.slow
def test_convert_keras_to_checkpoint_loads_in_eval_mode(checkpoint, at_h5):
    model = devinet.load(checkpoint)
    assert not model.training and model.config.name == "cvssp_crnn_at"
    meta = model.checkpoint_metadata
    assert meta["preset"] == "cvssp_crnn_at" and meta["theano_flip"] is True
    assert meta["source_format"] == "keras2-model" and meta["converted_from"] == at_h5.name
    expected = keras_to_torch(at_h5).model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_convert_checkpoint_to_theano_h5_gives_back_the_original(checkpoint, k208, tmp_path):
    out = tmp_path / "back.h5"
    assert main(["convert", str(checkpoint), str(out), "--theano-flip", "yes"]) == 0
    with h5py.File(k208 / "k208_theano_crnn_at_weights.h5", "r") as a, h5py.File(out, "r") as b:
        for layer, weight in [("conv2d_1", "conv2d_1/kernel"), ("bidirectional_2", "bidirectional_2/backward_gru_2/bias"),
                              ("batch_normalization_7", "batch_normalization_7/moving_variance")]:
            np.testing.assert_array_equal(a[layer][weight][()], b[layer][weight][()])


@pytest.mark.slow
def test_destination_is_never_overwritten_without_force(checkpoint, at_h5, capsys):
    before = checkpoint.read_bytes()
    assert main(["convert", str(at_h5), str(checkpoint)]) == 1
    assert "destination exists (use --force to overwrite)" in one_line_error(capsys, "convert")
    assert checkpoint.read_bytes() == before
    assert main(["convert", str(at_h5), str(checkpoint), "--force"]) == 0


@pytest.mark.parametrize("args,message", [
    (["missing.h5", "out.pt"], "missing.h5: no such file"),
    (["a.pt", "b.pt"], "neither SRC nor DST is a Keras file"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.pt").write_bytes(b"x")
    assert main(["convert", *args]) == 1
    assert message in one_line_error(capsys, "convert")


def test_corrupt_input_leaves_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "out.pt"
    assert main(["convert", str(bad), str(out)]) == 1
    assert "not an HDF5 file" in one_line_error(capsys, "convert")
    assert list(tmp_path.iterdir()) == [bad]  # no output, no temporary left behind


def test_preset_flag_is_checked_against_the_file(at_h5, tmp_path, capsys):
    assert main(["convert", str(at_h5), str(tmp_path / "x.pt"), "--preset", "cvssp_cnnrnn_at"]) == 1
    assert "image input (no Reshape): preset True, file False" in one_line_error(capsys, "convert")


def test_allow_nonfinite(k208, tmp_path, capsys):
    src = tmp_path / "nan_weights.h5"
    shutil.copy(k208 / "k208_theano_crnn_at_weights.h5", src)
    src.chmod(0o644)
    with h5py.File(src, "r+") as handle:
        handle["localization_layer"]["localization_layer/bias"][3] = np.inf
    assert main(["convert", str(src), str(tmp_path / "a.pt")]) == 1
    assert "localization_layer/bias holds NaN or infinite values (allow with --allow-nonfinite)" in \
        one_line_error(capsys, "convert")
    assert main(["convert", str(src), str(tmp_path / "a.pt"), "--allow-nonfinite"]) == 0
    assert torch.isinf(devinet.load(tmp_path / "a.pt", allow_nonfinite=True).head.frame.bias).any()


@pytest.mark.slow
def test_parity_prints_both_dtypes_and_writes_a_report(at_h5, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["parity", str(at_h5), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "[float32]" in out and "[float64]" in out and out.count("PASS") == 2
    assert "conv2d_1" in out and "lambda_17" in out
    data = json.loads(report.read_text())
    assert [d["dtype"] for d in data] == ["float32", "float64"] and all(d["passed"] for d in data)
    assert all(d["max_rel"] <= 1e-5 for d in data)
    assert len(data[0]["rows"]) == 62 + 1  # every recorded layer, then the model output


@pytest.mark.slow
def test_parity_failure_marks_the_first_divergence(at_h5, tmp_path, capsys):
    text = tmp_path / "report.txt"
    assert main(["parity", str(at_h5), "--theano-flip", "no", "--dtype", "float32", "--report", str(text)]) == 1
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if "<-- first divergence" in line]
    assert len(marked) == 1 and marked[0].startswith("conv2d_1 ") and "[float64]" not in out
    assert text.read_text().strip() == out.strip()


@pytest.mark.slow
def test_parity_of_a_checkpoint_against_its_source(at_h5, checkpoint, capsys):
    assert main(["parity", str(at_h5), "--checkpoint", str(checkpoint), "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "devinet side: checkpoint crnn_at.pt" in out and "[float64]" in out and "[float32]" not in out


@pytest.mark.slow
def test_cli_subprocess(at_h5, tmp_path):
    out = tmp_path / "sub.pt"
    run = subprocess.run([sys.executable, "-m", "devinet.cli", "convert", str(at_h5), str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "cvssp_crnn_at, 1,190,545 parameters, Theano kernels flipped" in run.stdout
    again = subprocess.run([sys.executable, "-m", "devinet.cli", "convert", str(at_h5), str(out)],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "destination exists" in again.stderr


@pytest.mark.keras
@pytest.mark.slow
def test_keras_to_keras_then_parity_on_the_keras3_file(keras, at_h5, tmp_path, capsys):
    out = tmp_path / "crnn_at.keras"
    assert main(["convert", str(at_h5), str(out)]) == 0
    assert main(["parity", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "vs Keras 3 loading crnn_at.keras" in printed and "keras_reference cvssp_crnn_at holding" in printed


@pytest.mark.keras
@pytest.mark.slow
def test_parity_of_a_legacy_file_without_recording_runs_the_keras_reference(keras, at_h5, tmp_path, capsys):
    lone = tmp_path / "model.h5"  # no model_ref.npz beside it
    shutil.copy(at_h5, lone)
    assert main(["parity", str(lone), "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "vs keras_reference cvssp_crnn_at holding the weights of model.h5" in out and "PASS" in out

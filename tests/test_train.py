"""Training (experiments.train): the recipe's pieces, checkpoints, resume bit for bit (also after SIGKILL), fusion."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import devinet
from devinet.preprocessing import default_classes
from devinet.errors import ConfigError, FileFormatError
from devinet.features import Scaler
from experiments.systems import model_config
from experiments.train import (EvalSet, RunFolder, TrainSchedule, at_micro_f1, fused_predictions, gather, keras_bce,
                               predict, train)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = TrainSchedule(epochs=3, iterations_per_epoch=2, batch_size=6, fused_checkpoints=2)
#: metrics that differ between two identical runs (wall-clock times)
TIMES = ("train_seconds", "test_seconds")


def toy_data(n: int = 24, frames: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, frames, 64) features where each class adds its own spectral pattern, and (n, 17) labels.

    Shorter than the 240 frames of a clip: the trainer does not depend on the length, and
    the tests run five times faster.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 17), np.float32)
    labels[np.arange(n), np.arange(n) % 17] = 1
    labels[rng.random((n, 17)) < 0.05] = 1
    patterns = rng.normal(size=(17, 64)).astype(np.float32)
    features = rng.normal(size=(n, frames, 64)).astype(np.float32) + (labels @ patterns)[:, None, :] * 2
    return features, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the recurrences' many small ops are faster so on a busy machine, and every
    run of this module (the killed subprocesses' too) then computes with the same thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data():
    features, labels = toy_data()
    return features, labels, Scaler.fit(features)


@pytest.fixture(scope="module")
def config():
    # The attention system: 240 frames, attention head; 1/8 width keeps the test fast.
    return model_config("gated_crnn_attention", 0.125)


def run(config, data, folder, schedule=SCHEDULE, **kwargs):
    features, labels, scaler = data
    kwargs.setdefault("monitor", EvalSet("test", features[:8], labels[:8]))
    return train(config, features, labels, scaler, folder, schedule, seed=5, progress=False, **kwargs)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMES} for record in history]


def assert_same_run(a: Path, b: Path, epoch: int) -> None:
    """Same weights, optimizer state, sampler state and metrics, bit for bit."""
    pa = torch.load(RunFolder(a).checkpoint(epoch), weights_only=True)
    pb = torch.load(RunFolder(b).checkpoint(epoch), weights_only=True)
    assert pa["state_dict"].keys() == pb["state_dict"].keys()
    for key in pa["state_dict"]:
        assert torch.equal(pa["state_dict"][key], pb["state_dict"][key]), key
    oa, ob = pa["training"]["optimizer"]["state"], pb["training"]["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for index in oa:
        for name in oa[index]:
            assert torch.equal(torch.as_tensor(oa[index][name]), torch.as_tensor(ob[index][name])), (index, name)
    assert pa["training"]["sampler"] == pb["training"]["sampler"]
    assert torch.equal(pa["training"]["torch_rng"], pb["training"]["torch_rng"])
    ha, hb = RunFolder(a).read_history(), RunFolder(b).read_history()
    assert without_times(ha) == without_times(hb)
    assert len(ha) == epoch


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, config, data):
    """An uninterrupted run that the interrupted ones must equal."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    result = run(config, data, folder)
    return folder, result


# ---------------------------------------------------------------------- pieces of the recipe
def test_schedule_validation_and_fused_epochs():
    assert TrainSchedule().fused_epochs == tuple(range(21, 31))  # the original fused checkpoints 20..29 of 30
    assert TrainSchedule(epochs=5, fused_checkpoints=2).fused_epochs == (4, 5)
    with pytest.raises(ConfigError, match="fused_checkpoints"):
        TrainSchedule(epochs=2, fused_checkpoints=3)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainSchedule(batch_size=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainSchedule(learning_rate=-1.0)


def test_keras_bce_clips_like_keras():
    probs = torch.tensor([[0.0, 1.0, 0.25], [1.0, 0.5, 0.9]])
    targets = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    clipped = probs.clamp(1e-7, 1 - 1e-7).double()
    t = targets.double()
    expected = -(t * clipped.log() + (1 - t) * (1 - clipped).log()).mean()
    assert keras_bce(probs, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # an exactly wrong 0/1 prediction costs -log(1 - (1 - 1e-7)) in float32 (as in Keras), not torch's 100
    upper = np.float32(1 - 1e-7)
    assert keras_bce(torch.tensor([[1.0]]), torch.tensor([[0.0]])).item() == pytest.approx(-np.log(1 - float(upper)),
                                                                                          rel=1e-5)


def test_gather_repeats_and_order_from_numpy_and_hdf5(tmp_path):
    import h5py

    array = np.arange(10 * 3 * 2, dtype=np.float32).reshape(10, 3, 2)
    index = np.array([7, 2, 7, 0, 9])
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["x"] = array
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        from_h5 = gather(h5["x"], index)
    np.testing.assert_array_equal(gather(array, index), array[index])
    np.testing.assert_array_equal(from_h5, array[index])


def test_at_micro_f1_uses_the_cvssp_rule():
    labels = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32)
    # clip 0: nothing above 0.3 -> arg-max (class 0) is on: TP; clip 1: class 1 on (TP), class 2 missed (FN)
    probs = np.array([[0.2, 0.1, 0.05], [0.1, 0.9, 0.2]])
    assert at_micro_f1(probs, labels) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


# ---------------------------------------------------------------------- checkpoints and the run folder
def test_checkpoints_are_plain_data_devinet_checkpoints(reference_run, config):
    folder, result = reference_run
    assert result.finished and result.resumed_from == 0 and result.epochs_done == 3
    # 'fused' policy: the fused epochs (2, 3) stay, epoch 1 was removed once superseded
    assert RunFolder(folder).completed_epochs() == [2, 3]
    path = RunFolder(folder).checkpoint(3)
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no code can run from it
    state = payload["training"]
    assert state["epoch"] == 3 and state["sampler"]["iteration"] == 6
    assert set(state["optimizer"]) == {"state", "param_groups"}
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    model = devinet.load(path)  # also an ordinary devinet checkpoint
    assert model.config == config and model.checkpoint_metadata["epoch"] == 3
    # self-describing: class names, the original feature recipe and the run's scaler
    assert model.preprocessing.classes == default_classes(config.num_classes)
    assert model.preprocessing.features.is_original() and model.preprocessing.scaler is not None
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    record = json.loads(lines[-1])
    assert {"loss", "loss_last", "iteration", "train_seconds", "test_at_f1"} <= set(record)
    run_json = json.loads((folder / "run.json").read_text())
    assert run_json["trained"]["model"] == config.to_dict()
    assert run_json["versions"]["torch"] and "git" in run_json["versions"]
    assert not list(folder.rglob(".*.tmp"))


def test_training_reduces_the_loss(reference_run):
    _, result = reference_run
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]


def test_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, reference_run, config, data):
    folder = tmp_path / "run"
    first = run(config, data, folder, stop_after=1)
    assert first.epochs_done == 1 and not first.finished
    second = run(config, data, folder)
    assert second.resumed_from == 1 and second.finished
    assert_same_run(reference_run[0], folder, 3)
    # and a finished run called again does nothing
    again = run(config, data, folder)
    assert again.resumed_from == 3 and without_times(again.history) == without_times(second.history)


def test_metrics_log_follows_the_last_checkpoint(tmp_path, config, data):
    """A record logged after the last checkpoint (killed in between) is dropped on resume."""
    folder = tmp_path / "run"
    run(config, data, folder, stop_after=1)
    with open(folder / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"epoch": 2, "loss": 123.0}) + "\n")
    result = run(config, data, folder, stop_after=2)
    assert [r["epoch"] for r in RunFolder(folder).read_history()] == [1, 2]
    assert result.history[-1]["loss"] != 123.0


def test_other_setup_in_the_folder_is_refused_then_forced(tmp_path, config, data):
    folder = tmp_path / "run"
    run(config, data, folder, stop_after=1)
    other = TrainSchedule(epochs=4, iterations_per_epoch=2, batch_size=6, fused_checkpoints=2)
    with pytest.raises(ConfigError, match="epochs: 3 -> 4"):
        run(config, data, folder, schedule=other)
    result = run(config, data, folder, schedule=other, force=True, stop_after=1)
    assert result.resumed_from == 0 and result.epochs_done == 1


def test_a_locked_folder_is_refused(tmp_path, config, data):
    holder = RunFolder(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(FileFormatError, match="another process is training"):
            run(config, data, tmp_path / "run")
    finally:
        holder.unlock()


def test_fused_predictions_average_the_fused_checkpoints(reference_run, data):
    folder, _ = reference_run
    features, labels, scaler = data
    monitored = EvalSet("test", features[:8], labels[:8])
    fresh = EvalSet("other", features[:8], labels[:8])  # no cached predictions: computed from checkpoints
    clip_cached, frame_cached = fused_predictions(folder, monitored, scaler)
    clip, frame = fused_predictions(folder, fresh, scaler)
    per_epoch = [predict(devinet.load(RunFolder(folder).checkpoint(e)), features[:8], scaler) for e in (2, 3)]
    np.testing.assert_allclose(clip, np.mean([p[0] for p in per_epoch], axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(frame, np.mean([p[1] for p in per_epoch], axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(clip_cached, clip, rtol=0, atol=1e-6)
    np.testing.assert_allclose(frame_cached, frame, rtol=0, atol=1e-6)
    assert clip.shape == (8, 17) and frame.shape == (8, 48, 17)


# ---------------------------------------------------------------------- SIGKILL, then resume
KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_train import SCHEDULE, toy_data
    from devinet.features import Scaler
    from experiments import train as T
    from experiments.systems import model_config

    torch.set_num_threads(1)
    where, folder = sys.argv[1], sys.argv[2]
    if where == "checkpoint":
        real_save = torch.save
        def save_then_die(obj, path, *args, **kwargs):
            real_save(obj, path, *args, **kwargs)
            if obj.get("training", {{}}).get("epoch") == 2:
                with open(path, "r+b") as f:   # half written, as a kill during the write leaves it
                    f.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save_then_die
    else:
        optimizer_class = type(T.make_optimizer(torch.nn.Linear(1, 1), 1e-3))  # the recipe's optimizer
        real_step = optimizer_class.step
        def step_then_die(self, *args, **kwargs):
            out = real_step(self, *args, **kwargs)
            if int(torch.as_tensor(self.state[self.param_groups[0]["params"][0]]["step"])) == 3:  # inside epoch 2
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        optimizer_class.step = step_then_die
    features, labels = toy_data()
    T.train(model_config("gated_crnn_attention", 0.125), features, labels, Scaler.fit(features), folder,
            SCHEDULE, seed=5, progress=False, monitor=T.EvalSet("test", features[:8], labels[:8]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch", "checkpoint"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, where, reference_run, config, data):
    folder = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(REPO_ROOT), tests=str(REPO_ROOT / "tests")))
    proc = subprocess.run([sys.executable, str(script), where, str(folder)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert RunFolder(folder).completed_epochs() == [1]  # epoch 2 never became a checkpoint
    if where == "checkpoint":
        assert list((folder / "checkpoints").glob(".epoch_0002.pt.*")), "the half-written temporary file"
    result = run(config, data, folder)
    assert result.resumed_from == 1
    assert not list(folder.rglob(".*.tmp"))
    assert_same_run(reference_run[0], folder, 3)

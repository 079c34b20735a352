"""Training interrupted again and again by SIGKILL from outside ends exactly like an uninterrupted run.

tests/test_train.py kills a run from inside (during an epoch, and after truncating its own
checkpoint). Here a parent process kills the training process at chosen moments, one per run,
and resumes each time: with a checkpoint half written to disk, with a checkpoint (or the
metrics log, or a predictions file) complete but not yet renamed into place, and in the
middle of the last epoch, five kills in all. The child stops at each
moment and waits, so every kill lands exactly there. After the last resume the run must
equal an uninterrupted one with the same seed, bit for bit: weights, optimizer, sampler and
RNG states, every metric but wall-clock times, and the monitored predictions (CPU,
deterministic mode). Also: a damaged or hostile checkpoint in a run folder is refused with a
clear error and never executed.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import code_running_payloads
from devinet.errors import FileFormatError
from devinet.features import Scaler
from experiments.systems import model_config
from experiments.train import EvalSet, RunFolder, TrainSchedule, train

SCHEDULE = TrainSchedule(epochs=3, iterations_per_epoch=2, batch_size=6, fused_checkpoints=2)
SEED = 11
TIMES = ("train_seconds", "test_seconds")

#: one kill per run, in this order; the run after the last one finishes
KILLS = [
    "half-written 1",           # half of epoch 1's checkpoint on disk (no checkpoint yet)
    "replace metrics.jsonl 1",  # epoch 1's checkpoint in place, its metrics not yet logged
    "replace epoch_0002.npz",   # epoch 2's monitored predictions written, not yet renamed
    "replace epoch_0002.pt",    # epoch 2's checkpoint complete, not yet renamed
    "step 5",                   # inside the last epoch
]


#: torch threads of the reference run and of every child (bit-for-bit comparisons need the same)
THREADS = 1


def _child(connection, data_path: str, folder: str) -> None:
    """Train in a child process that reports each moment below and waits for "go" (or its SIGKILL).

    Moments: after every optimizer step (``step N``, N counted across resumes), half-way through
    writing a checkpoint to disk (``half-written E``), and just before any file is renamed into
    place (``replace NAME``, with the number of records for the metrics log).
    """
    import io

    from experiments import train as T

    torch.set_num_threads(THREADS)  # as the reference run: float sums in the same order

    def pause(marker: str) -> None:
        connection.send(marker)
        if connection.recv() != "go":
            os._exit(3)

    optimizer_class = type(T.make_optimizer(torch.nn.Linear(1, 1), 1e-3))  # the recipe's optimizer
    real_step = optimizer_class.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        pause(f"step {int(self.state[self.param_groups[0]['params'][0]]['step'])}")
        return out

    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(path, "wb") as handle:  # the first half reaches the disk, then the pause
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            pause(f"half-written {obj['training']['epoch']}")
            handle.write(data[len(data) // 2:])

    real_replace = os.replace

    def replace(source, destination, *args, **kwargs):
        name = os.path.basename(destination)
        if name == "metrics.jsonl":
            name += f" {len(Path(source).read_text().splitlines())}"
        pause(f"replace {name}")
        return real_replace(source, destination, *args, **kwargs)

    optimizer_class.step, torch.save, os.replace = step, save, replace
    with np.load(data_path, allow_pickle=False) as data:
        features, labels = data["features"], data["labels"]
    T.train(model_config("gated_crnn_attention", 0.125), features, labels, Scaler.fit(features), folder, SCHEDULE,
            seed=SEED, progress=False, monitor=T.EvalSet("test", features[:8], labels[:8]))
    connection.send("finished")


def toy_data(n: int = 24, frames: int = 48, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(n, frames, 64) features with a spectral pattern per class, and (n, 17) multi-hot labels
    (48 frames instead of 240: the model takes any length, and the test runs five times faster)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 17), np.float32)
    labels[np.arange(n), np.arange(n) % 17] = 1
    patterns = rng.normal(size=(17, 64)).astype(np.float32)
    features = rng.normal(size=(n, frames, 64)).astype(np.float32) + (labels @ patterns)[:, None, :] * 2
    return features, labels


def train_here(folder: Path, **kwargs):
    features, labels = toy_data()
    return train(model_config("gated_crnn_attention", 0.125), features, labels, Scaler.fit(features), folder,
                 SCHEDULE, seed=SEED, progress=False, monitor=EvalSet("test", features[:8], labels[:8]), **kwargs)


def run_child_until(marker: str | None, data_path: Path, folder: Path) -> list[str]:
    """Train in a child process; SIGKILL it when it reports ``marker`` (None: let it finish). Its markers.

    Children fork from a forkserver that imported torch once, so that each start is cheap.
    """
    context = multiprocessing.get_context("forkserver")
    # (no effect when this process's fork server is already running, e.g. started by the packing tests)
    context.set_forkserver_preload(["experiments.train", "experiments.systems", "experiments.evaluation",
                                    "sklearn.metrics"])
    ours, theirs = context.Pipe()
    process = context.Process(target=_child, args=(theirs, str(data_path), str(folder)))
    process.start()
    theirs.close()
    seen: list[str] = []
    deadline = time.monotonic() + 300
    try:
        while True:
            # Wait for a message or the child's exit: a copy of its pipe end may outlive it (fork
            # server), so its death does not always show as end-of-file.
            ready = multiprocessing.connection.wait([ours, process.sentinel], max(0.0, deadline - time.monotonic()))
            assert ready, f"the training child went silent after {seen[-3:]}"
            if ours not in ready:
                break  # it ended on its own: the exit code below says how
            try:
                seen.append(ours.recv())
            except EOFError:
                break
            if seen[-1] == marker:
                process.kill()
                break
            if seen[-1] == "finished":
                break
            ours.send("go")
        process.join(60)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        ours.close()
    if marker is None:
        assert process.exitcode == 0 and seen[-1:] == ["finished"], (process.exitcode, seen)
    else:
        assert process.exitcode == -signal.SIGKILL and seen[-1:] == [marker], (process.exitcode, seen)
    return seen


def _optimizer_states_equal(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name, value in a["state"][index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][name])), (index, name)
    assert a["param_groups"] == b["param_groups"]


def assert_same_run(reference: Path, resumed: Path) -> None:
    ref, res = RunFolder(reference), RunFolder(resumed)
    assert ref.completed_epochs() == res.completed_epochs() == [2, 3]
    for epoch in (2, 3):
        a = torch.load(ref.checkpoint(epoch), weights_only=True)
        b = torch.load(res.checkpoint(epoch), weights_only=True)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (epoch, key)
        _optimizer_states_equal(a["training"]["optimizer"], b["training"]["optimizer"])
        assert a["training"]["sampler"] == b["training"]["sampler"]
        assert torch.equal(a["training"]["torch_rng"], b["training"]["torch_rng"])
        with np.load(ref.predictions("test", epoch)) as pa, np.load(res.predictions("test", epoch)) as pb:
            for name in ("clipwise", "framewise"):
                np.testing.assert_array_equal(pa[name], pb[name])
    strip = lambda history: [{k: v for k, v in r.items() if k not in TIMES} for r in history]  # noqa: E731
    assert strip(ref.read_history()) == strip(res.read_history())
    assert len(res.read_history()) == 3
    assert not [p for p in resumed.rglob(".*") if p.is_file()]  # no temporary file survives the last run


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # whatever an earlier test left: the children use the same
    try:
        assert train_here(folder).finished
    finally:
        torch.set_num_threads(previous)
    return folder


@pytest.mark.slow
def test_repeated_sigkill_from_outside_then_resume_equals_uninterrupted(reference, tmp_path):
    features, labels = toy_data()
    data_path = tmp_path / "data.npz"
    np.savez(data_path, features=features, labels=labels)
    folder = tmp_path / "run"
    for marker in KILLS:
        seen = run_child_until(marker, data_path, folder)
        if marker == "half-written 1":  # the kill left half a checkpoint on disk, under a temporary name
            assert [p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith(".epoch_0001.pt.")]
            assert RunFolder(folder).completed_epochs() == []
        if marker == "replace epoch_0002.pt":
            assert RunFolder(folder).completed_epochs() == [1]
        if marker == "step 5":  # this run resumed after epoch 1 (epoch 2's checkpoint was never renamed)
            assert seen[0] == "replace metrics.jsonl 1" and "step 2" not in seen and "step 3" in seen
    seen = run_child_until(None, data_path, folder)
    assert seen[0] == "replace metrics.jsonl 2" and seen[1] == "step 5"  # resumed after epoch 2
    assert_same_run(reference, folder)


def _first_epoch(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    result = train_here(folder, stop_after=1)
    assert result.epochs_done == 1
    return folder


@pytest.mark.slow
def test_damaged_last_checkpoint_is_a_clear_error(tmp_path):
    folder = _first_epoch(tmp_path)
    path = RunFolder(folder).checkpoint(1)
    path.write_bytes(path.read_bytes()[:1000])  # damaged behind the writer's back (disk, copy)
    with pytest.raises(FileFormatError) as info:
        train_here(folder)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


@pytest.mark.slow
def test_hostile_checkpoint_in_a_run_folder_is_never_executed(tmp_path):
    folder = _first_epoch(tmp_path)
    path = RunFolder(folder).checkpoint(1)
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "marker"
    payload["training"]["history"].append({"epoch": code_running_payloads(marker)["os.system"]})
    torch.save(payload, path)
    with pytest.raises(FileFormatError, match="refused to load: it holds more than plain data"):
        train_here(folder)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unsafe load runs it
    assert marker.exists()


@pytest.mark.slow
def test_training_state_holds_plain_data_only(reference):
    """What a resume reads: dicts, lists, strings, numbers and tensors, nothing that needs a class."""
    state = torch.load(RunFolder(reference).checkpoint(3), weights_only=True)

    def walk(value) -> None:
        assert isinstance(value, (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)), type(value)
        for item in (value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()):
            walk(item)

    walk(state)
    json.loads((reference / "run.json").read_text())

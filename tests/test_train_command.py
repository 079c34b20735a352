"""`devinet train` (experiments.trainjob): any class list, configs, precision, lazy data, the allocator default."""

from __future__ import annotations

import json
import pickle
import re
import textwrap

import numpy as np
import pytest
import torch

import devinet
from devinet.cli import build_parser, main
from devinet.errors import ConfigError, FileFormatError
from devinet.features import Scaler
from experiments import runtime
from experiments.bench.dataload import synthetic_names, write_synthetic_packed
from experiments.systems import model_config
from experiments.train import EvalSet, RunFolder, TrainSchedule, train
from experiments.trainingdata import ClipBatches, ClipFeatures, EpochBatches, batch_loader, read_class_list
from experiments.trainjob import load_train_config, train_config_from_dict

CLASSES = ("dog", "cat", "bird")
#: the crnn_sed architecture at 1/8 width, one short epoch
TINY = textwrap.dedent("""
    preset: cvssp_crnn_sed
    model: {conv_channels: 8, final_conv_channels: 32, rnn_hidden: [16], bn_momentum: 0.1}
    training: {epochs: 1, iterations_per_epoch: 1, batch_size: 4, fused_checkpoints: 1}
    torch_threads: 1
""")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """40 packed clips labelled over three classes of our own; the label file lists 30 of them and 2 others."""
    folder = tmp_path_factory.mktemp("packed")
    labels = write_synthetic_packed(folder / "train.h5", 40, classes=CLASSES)
    lines = labels.read_text().splitlines()
    kept = [line for line in lines if not any(name in line for name in synthetic_names(40)[30:])]
    kept += ["Yabsent00001_0.000_10.000.wav\t0.000\t10.000\tdog", "Yabsent00002_0.000_10.000.wav\t0.000\t10.000\tcat"]
    labels.write_text("\n".join(kept) + "\n")
    (folder / "classes.txt").write_text("# our classes\n" + "\n".join(CLASSES) + "\n")
    (folder / "tiny.yaml").write_text(TINY)
    return folder


def train_args(folder, out, *extra):
    return ["train", "--train", str(folder / "train.h5"), "--labels", str(folder / "train.tsv"), "--config",
            str(folder / "tiny.yaml"), "--out", str(out), "--no-progress", "--no-huge-pages", *map(str, extra)]


@pytest.mark.slow
def test_any_class_list_trains_into_self_describing_checkpoints(packed, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(packed, out, "--classes", packed / "classes.txt")) == 0
    printed = capsys.readouterr().out
    assert "30 labelled clips" in printed and "10 packed clips without labels" in printed
    assert "2 labelled clips not packed" in printed and "3 classes" in printed
    model = devinet.load(RunFolder(out).checkpoint(1))
    assert model.config.num_classes == 3 and model.preprocessing.classes == CLASSES
    assert model.preprocessing.scaler is not None and model.preprocessing.features.is_original()
    assert json.loads((out / "run.json").read_text())["trained"]["model"]["num_classes"] == 3


def test_labels_outside_the_class_list_are_one_line_errors(packed, tmp_path, capsys):
    assert main(train_args(packed, tmp_path / "run")) == 1  # default classes: DCASE 2017's
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.tsv" in err
    assert re.search(r"clip syn00000000_0.000_10.000: label '(dog|cat|bird)' is not in the class list "
                     r"\(not a DCASE 2017 class: give --classes\)", err), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_class_lists_are_checked(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\nb\na\n")
    with pytest.raises(FileFormatError, match="lists class 'a' twice"):
        read_class_list(path)
    path.write_text("\n# none\n")
    with pytest.raises(FileFormatError, match="lists no class"):
        read_class_list(path)


def test_configs_are_validated_like_size_configs(tmp_path):
    config = train_config_from_dict({"preset": "cvssp_crnn_at"})
    assert config.training == TrainSchedule() and config.precision == "fp32" and config.sync_batchnorm
    assert config.model_config(5).num_classes == 5
    bad = {
        "trainig: {epochs: 2}": r"unknown key\(s\) trainig",
        "training: {epoch: 2}": r"training: unknown key\(s\) epoch",
        "model: {channels: 3}": "unknown DeviNet configuration keys: channels",
        "precision: fp8": "precision must be one of fp32, bf16, fp16",
        "workers: -1": "workers must be a non-negative integer",
        "model: {num_classes: 3}": None,  # valid alone; a conflict with the class list below
    }
    for text, message in bad.items():
        path = tmp_path / "c.yaml"
        path.write_text(f"preset: cvssp_crnn_sed\n{text}\n")
        if message is None:
            with pytest.raises(ConfigError, match="model.num_classes is 3 but the class list has 17"):
                load_train_config(path).model_config(17)
            continue
        with pytest.raises(ConfigError, match=message):
            load_train_config(path)
    path.write_text("model: {}\n")
    with pytest.raises(ConfigError, match=r"missing key\(s\) preset"):
        load_train_config(path)


def test_preset_or_config_and_nproc_are_checked(packed, tmp_path, capsys):
    base = ["train", "--train", str(packed / "train.h5"), "--labels", str(packed / "train.tsv"), "--out",
            str(tmp_path / "o"), "--no-huge-pages"]
    assert main(base) == 1
    assert "give one of --preset NAME or --config FILE" in capsys.readouterr().err
    assert main([*base, "--preset", "cvssp_crnn_at", "--nproc", "0"]) == 1
    assert "--nproc must be at least 1" in capsys.readouterr().err
    assert main([*base, "--preset", "cvssp_crnn_at", "--valid", str(packed / "train.h5")]) == 1
    assert "--valid and --valid-labels go together" in capsys.readouterr().err
    assert main([*base, "--preset", "cvssp_crnn_at", "--device", "gpu"]) == 1
    assert "--device gpu: not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--preset", "cvssp_crnn_at", "--device", "cuda"]) == 1
        assert capsys.readouterr().err.startswith("devinet train: error: --device cuda: CUDA is not available here")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- precision
def toy(n=16, frames=48):
    rng = np.random.default_rng(0)
    labels = np.zeros((n, 17), np.float32)
    labels[np.arange(n), np.arange(n) % 17] = 1
    features = rng.normal(size=(n, frames, 64)).astype(np.float32) + labels[:, None, :1] * 2
    return features, labels, Scaler.fit(features)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_bit_for_bit(tmp_path, precision):
    features, labels, scaler = toy()
    schedule = TrainSchedule(epochs=2, iterations_per_epoch=2, batch_size=4, fused_checkpoints=1)

    def run(folder, **kwargs):
        return train(model_config("gated_crnn_attention", 0.125), features, labels, scaler, folder, schedule,
                     seed=1, progress=False, precision=precision, monitor=EvalSet("v", features[:4], labels[:4]),
                     **kwargs)

    whole = run(tmp_path / "a")
    assert whole.finished and all(np.isfinite(r["loss"]) for r in whole.history)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["trained"]["precision"] == precision
    payload = torch.load(RunFolder(tmp_path / "a").checkpoint(2), weights_only=True)
    assert {t.dtype for t in payload["state_dict"].values() if t.is_floating_point()} == {torch.float32}
    assert (payload["training"]["grad_scaler"] is not None) == (precision == "fp16")
    run(tmp_path / "b", stop_after=1)
    resumed = run(tmp_path / "b")
    assert resumed.resumed_from == 1
    other = torch.load(RunFolder(tmp_path / "b").checkpoint(2), weights_only=True)["state_dict"]
    for key, value in payload["state_dict"].items():
        assert torch.equal(value, other[key]), key


def test_the_keras2_gru_runs_in_float32_under_autocast():
    from devinet.layers import GatedBiGRU

    gru = GatedBiGRU(8, 5)
    x = torch.randn(2, 7, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gru(x)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in gru.parameters())
    # the recurrence itself is float32: only the input projection is rounded to bfloat16
    plain = gru(x.detach())
    assert (out - plain).abs().max().item() < 0.05 * plain.abs().max().item()


# ---------------------------------------------------------------------- lazy data
def test_clip_features_read_rows_lazily_in_any_process(tmp_path):
    import h5py

    data = np.random.default_rng(0).normal(size=(10, 6, 4)).astype(np.float16)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["x"] = data
    rows = np.array([1, 4, 5, 9])
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        features = ClipFeatures(h5["x"], rows)
        assert features.shape == (4, 6, 4) and len(features) == 4
        got = features.read(np.array([3, 0, 3]))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, data[[9, 1, 9]].astype(np.float32))
        copy = pickle.loads(pickle.dumps(features))  # what a spawned DataLoader worker gets: it reopens the file
        np.testing.assert_array_equal(copy[2], data[5].astype(np.float32))
        with pytest.raises(Exception, match="rows must be increasing"):
            ClipFeatures(h5["x"], np.array([3, 2]))


def test_worker_processes_load_the_same_batches(tmp_path):
    import h5py

    features, labels, scaler = toy(12)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["x"] = features
    batches = EpochBatches()
    batches.batches = [np.array([3, 1, 3]), np.array([0, 11])]
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        dataset = ClipBatches(h5["x"], labels, scaler)
        here = list(batch_loader(dataset, batches, workers=0, pin_memory=False))
        there = list(batch_loader(dataset, batches, workers=1, pin_memory=False))
    for (x0, y0), (x1, y1), index in zip(here, there, batches.batches):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        torch.testing.assert_close(x0, torch.from_numpy(scaler.transform(features[index])), rtol=0, atol=0)


# ---------------------------------------------------------------------- the allocator default
@pytest.mark.parametrize("command", ["train", "reproduce", "bench"])
def test_huge_pages_are_the_default_with_an_opt_out(command):
    extra = {"bench": ["--json", "b.json"], "reproduce": ["--out", "o"],
             "train": ["--train", "t", "--labels", "l", "--preset", "p", "--out", "o"]}[command]
    assert build_parser().parse_args([command, *extra]).huge_pages is None  # where available
    assert build_parser().parse_args([command, *extra, "--no-huge-pages"]).huge_pages is False
    assert build_parser().parse_args([command, *extra, "--huge-pages"]).huge_pages is True


def test_the_default_relaunches_with_huge_pages_or_says_why_not(monkeypatch, capsys):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    relaunched = []
    monkeypatch.setattr(runtime, "run_devinet_with_huge_pages", lambda argv: relaunched.append(argv) or 7)
    monkeypatch.setattr(runtime, "huge_pages_unavailable", lambda: None)
    assert runtime.huge_pages_by_default(["train", "x"], None) == 7 and relaunched == [["train", "x"]]
    assert runtime.huge_pages_by_default(["train", "x"], False) is None
    assert capsys.readouterr().out == "[runtime] allocator: glibc's default (--no-huge-pages)\n"
    monkeypatch.setattr(runtime, "huge_pages_unavailable", lambda: "transparent huge pages are disabled")
    assert runtime.huge_pages_by_default(["train", "x"], None) is None and len(relaunched) == 1
    assert "glibc's default (huge pages unavailable: transparent huge pages are disabled)" in capsys.readouterr().out
    monkeypatch.setenv("GLIBC_TUNABLES", runtime.HUGE_PAGE_TUNABLE)
    monkeypatch.setattr(runtime, "huge_pages_unavailable", lambda: None)
    assert runtime.huge_pages_by_default(["train", "x"], None) is None  # the relaunched process goes on
    assert "transparent huge pages" in capsys.readouterr().out

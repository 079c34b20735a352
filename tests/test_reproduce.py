"""`devinet reproduce` end to end on the tiny size, its resume, real-data mode, configs, systems and report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devinet.cli import main
from devinet.errors import ConfigError
from experiments import evaluation as E
from experiments import report
from experiments.systems import (SYSTEMS, frames_at_input_rate, load_size_config, model_config, resolve_systems,
                                 size_config_from_dict)

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tiny_reproduction):
    """One tiny run of the whole pipeline (conftest: shared with test_tagging)."""
    return tiny_reproduction


def test_tiny_pipeline_writes_results_table_and_figures(tiny):
    results = json.loads((tiny / "results.json").read_text())
    assert set(results["systems"]) == {"crnn_baseline", "gated_crnn_mean", "gated_crnn_attention", "fusion"}
    for name, entry in results["systems"].items():
        assert {"f1", "precision", "recall"} <= set(entry["at"]), name
        assert {"error_rate", "f1"} <= set(entry["sed"]), name
        assert 0 <= entry["at"]["f1"] <= 1 and entry["sed"]["error_rate"] >= 0
    attention = results["systems"]["gated_crnn_attention"]
    assert attention["training"]["epochs"] == 2 and attention["training"]["fused_epochs"] == [1, 2]
    assert attention["model"]["parameters_keras_count"] > 0
    assert results["dataset"]["kind"] == "synthetic" and results["dataset"]["test_clips_scored"] == 34
    assert results["versions"]["torch"] and results["versions"]["devinet"] and "git" in results["versions"]
    assert results["command"].startswith("devinet reproduce --size tiny --out ")
    assert results["timing_seconds"]["training"] > 0
    assert [c["metric"] for c in results["ordering"]] == ["AT micro F1", "AT micro F1", "SED segment ER (1 s)",
                                                          "SED segment F1 (1 s)"]
    md = (tiny / "results.md").read_text()
    for needle in ("AT micro F1", "SED segment ER (1 s)", "arXiv:1709.00551", "Does the paper's ordering hold",
                   "not real recordings", "`gated_crnn_attention`"):
        assert needle in md
    for name in ("training_curves", "per_class_f1", "clip_example"):
        assert (tiny / "figures" / f"{name}.png").read_bytes().startswith(PNG)
    for system in ("crnn_baseline", "gated_crnn_mean", "gated_crnn_attention"):
        assert (tiny / "runs" / system / "metrics.jsonl").is_file() and (tiny / "runs" / system / "run.json").is_file()
    # results hold small files only: no checkpoints, audio or features outside the work folder
    big = [p for p in tiny.rglob("*") if p.is_file() and "work" not in p.relative_to(tiny).parts
           and p.suffix not in (".json", ".jsonl", ".md", ".png")]
    assert not big


def test_reported_scores_match_the_official_files(tiny):
    """results.json agrees with scoring the written CVSSP probability files through `devinet evaluate`'s path."""
    results = json.loads((tiny / "results.json").read_text())
    meta = tiny / "work" / "data" / "synthetic-tiny-seed2017" / "meta"
    for system in ("gated_crnn_attention", "fusion"):
        folder = tiny / "work" / "predictions" / "synthetic-tiny-seed2017" / "tiny-seed2017" / system
        at = E.evaluate_at_file(folder / "at_prob_mat.csv.gz", meta / "groundtruth_weak_label_testing_set.csv")
        sed = E.evaluate_sed_file(folder / "sed_prob_mat_list.csv.gz",
                                  meta / "groundtruth_strong_label_testing_set.csv")
        ours = results["systems"][system]
        assert ours["at"]["f1"] == pytest.approx(at["f1"], abs=1e-9)
        assert ours["sed"]["error_rate"] == pytest.approx(sed["error_rate"], abs=1e-9)
        assert ours["sed"]["f1"] == pytest.approx(sed["f1"], abs=1e-9)


def test_fusion_averages_its_members(tiny):
    base = tiny / "work" / "predictions" / "synthetic-tiny-seed2017" / "tiny-seed2017"
    keys, fused = E.read_at_probabilities(base / "fusion" / "at_prob_mat.csv.gz")
    members = [E.read_at_probabilities(base / m / "at_prob_mat.csv.gz")[1] for m in SYSTEMS["fusion"].members]
    np.testing.assert_allclose(fused, np.mean(members, axis=0), atol=2e-6)


def test_rerun_resumes_without_training_again(tiny):
    before = {p: p.stat().st_mtime_ns for p in (tiny / "work" / "runs").rglob("epoch_*.pt")}
    first = json.loads((tiny / "results.json").read_text())
    assert main(["reproduce", "--size", "tiny", "--out", str(tiny), "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in (tiny / "work" / "runs").rglob("epoch_*.pt")}
    assert before == after  # no checkpoint rewritten: every run was complete
    second = json.loads((tiny / "results.json").read_text())
    for name in first["systems"]:
        assert second["systems"][name]["at"] == first["systems"][name]["at"]
        assert second["systems"][name]["sed"] == first["systems"][name]["sed"]


def test_real_data_mode_tolerates_missing_clips(tiny, tmp_path):
    """--data-root: the same pipeline on a folder in the official layout, some testing clips missing."""
    source = tiny / "work" / "data" / "synthetic-tiny-seed2017"
    root = tmp_path / "dcase"
    shutil.copytree(source / "meta", root / "meta")
    (root / "audio").mkdir()
    for split in ("train", "test"):
        (root / "audio" / split).mkdir()
        for wav in sorted((source / "audio" / split).glob("*.wav")):
            (root / "audio" / split / wav.name).symlink_to(wav)
    removed = sorted((root / "audio" / "test").glob("*.wav"))[:3]
    for wav in removed:
        wav.unlink()
    out = tmp_path / "out"
    assert main(["reproduce", "--size", "tiny", "--data-root", str(root), "--out", str(out), "--systems",
                 "gated_crnn_attention", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["systems"]) == ["gated_crnn_attention"]
    assert results["dataset"]["kind"] == "dcase2017_task4"
    assert results["dataset"]["test_clips_scored"] == 31
    assert results["dataset"]["test_clips_without_audio"]["missing"] == 3
    assert results["ordering"] == []  # one system: nothing to compare


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "devinet.cli", "reproduce", "--size", "tiny", "--data-root",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"devinet reproduce: error: {tmp_path / 'nowhere'}: no such data folder"
    (tmp_path / "root" / "meta").mkdir(parents=True)
    assert main(["reproduce", "--size", "tiny", "--data-root", str(tmp_path / "root"), "--out",
                 str(tmp_path / "out")]) == 1
    assert main(["reproduce", "--size", "tiny", "--systems", "gated_crnn", "--out", str(tmp_path / "out")]) == 1
    assert main(["reproduce", "--quick", "--size", "full", "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "results.json").exists()


# ---------------------------------------------------------------------- configs and systems
def test_size_configs_are_validated():
    quick = load_size_config("quick")
    assert quick.data_size == "quick" and quick.training.fused_checkpoints <= quick.training.epochs
    full = load_size_config("full")
    # the original recipe
    assert (full.width, full.training.batch_size, full.training.iterations_per_epoch, full.training.learning_rate,
            full.training.epochs, full.training.fused_checkpoints) == (1.0, 44, 100, 0.001, 30, 10)
    data = quick.to_dict()
    with pytest.raises(ConfigError, match="unknown key"):
        size_config_from_dict({**data, "epochs": 3})
    with pytest.raises(ConfigError, match="training: unknown key"):
        size_config_from_dict({**data, "training": {**data["training"], "lr": 0.1}})
    with pytest.raises(ConfigError, match="missing key"):
        size_config_from_dict({k: v for k, v in data.items() if k != "width"})
    with pytest.raises(ConfigError, match="width"):
        size_config_from_dict({**data, "width": 2})
    with pytest.raises(ConfigError, match="torch_threads"):
        size_config_from_dict({**data, "torch_threads": 0})
    with pytest.raises(ConfigError, match="unknown DeviNet configuration keys"):
        size_config_from_dict({**data, "model_overrides": {"bn_momentm": 0.1}})
    assert quick.torch_threads == 1 and full.torch_threads is None


def test_systems_are_the_papers_presets():
    assert model_config("gated_crnn_attention") == model_config("gated_crnn_attention", 1.0)
    assert model_config("gated_crnn_attention").head == "attention"
    assert model_config("gated_crnn_mean").name == "cvssp_crnn_at"
    baseline = model_config("crnn_baseline")
    assert baseline.name == "cvssp_crnn_baseline" and not baseline.gated_conv and not baseline.gated_rnn
    quarter = model_config("crnn_baseline", 0.25, {"bn_momentum": 0.1})
    assert (quarter.conv_channels, quarter.final_conv_channels, quarter.rnn_hidden) == (16, 64, (32,))
    assert quarter.name == "cvssp_crnn_baseline@width0.25,bn_momentum=0.1"
    # only the widths and the override differ from the paper's model (config equality ignores the name)
    assert quarter.replace(conv_channels=64, final_conv_channels=256, rnn_hidden=(128,), bn_momentum=0.01) == baseline
    with pytest.raises(ConfigError, match="unknown DeviNet configuration keys: bn_eps_typo"):
        model_config("crnn_baseline", 1.0, {"bn_eps_typo": 1})
    with pytest.raises(ConfigError, match="fusion"):
        model_config("fusion")
    assert resolve_systems(["fusion"]) == ("crnn_baseline", "gated_crnn_mean", "gated_crnn_attention", "fusion")
    assert resolve_systems(["gated_crnn_attention"]) == ("gated_crnn_attention",)


def test_frames_at_input_rate_repeats_each_pooled_frame():
    frames = np.arange(2 * 30 * 17, dtype=np.float32).reshape(2, 30, 17)
    up = frames_at_input_rate(frames, 240)
    assert up.shape == (2, 240, 17)
    np.testing.assert_array_equal(up[:, 8 * 5: 8 * 6], np.repeat(frames[:, 5:6], 8, axis=1))
    assert frames_at_input_rate(up, 240) is up
    odd = frames_at_input_rate(frames[:, :7], 30)  # 30 // 7 = 4, the 2 left-over frames take the last one
    np.testing.assert_array_equal(odd[:, 28:], np.repeat(frames[:, 6:7], 2, axis=1))


# ---------------------------------------------------------------------- report
def _entry(at_f1: float, er: float, sed_f1: float) -> dict:
    return {"at": {"f1": at_f1}, "sed": {"error_rate": er, "f1": sed_f1}}


def test_ordering_checks_follow_the_papers_claims():
    systems = {"crnn_baseline": _entry(0.5, 0.9, 0.3), "gated_crnn_mean": _entry(0.6, 0.8, 0.4),
               "gated_crnn_attention": _entry(0.55, 0.85, 0.45)}
    checks = report.ordering_checks(systems)
    assert [c["holds"] for c in checks] == [True, True, False, True]
    assert checks[2]["values"] == [0.85, 0.8] and checks[2]["better"] == "lower"


def test_paper_figures_keep_their_metric_columns():
    md = report.results_markdown({
        "size": load_size_config("tiny").to_dict(), "systems": {}, "command": "devinet reproduce", "created": "now",
        "versions": {"devinet": "0"}, "seed": 1, "paper": report.PAPER_FIGURES, "metrics": report.METRIC_DEFINITIONS,
        "dataset": {"kind": "synthetic", "generator_version": "1", "size": "tiny", "seed": 1,
                    "train_clips_used": 1, "test_clips_scored": 1}})
    rows = [line for line in md.splitlines() if "technical report" in line or "challenge results" in line]
    assert len(rows) == 3
    # AT micro F1 %, SED segment ER, SED segment F1 (not reported: never filled from another metric)
    assert rows[0].endswith("| 61.0 | 0.73 | – |") and rows[1].endswith("| 13.1 | 1.02 | – |")
    assert rows[2].endswith("| 55.6 | 0.73 | – |")
    assert all(f["source"] for f in report.PAPER_FIGURES)

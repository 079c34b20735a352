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
from experiments.claims import VERDICTS
from experiments.systems import (SYSTEMS, frames_at_input_rate, load_size_config, model_config, resolve_systems,
                                 size_config_from_dict)
from experiments.train import ORIGINAL_SCHEDULES

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


SEEDS = [2017, 2018]
ALL_SYSTEMS = ["crnn_baseline", "crnn_ungated_matched", "gated_crnn_mean", "gated_crnn_attention", "fusion"]


@pytest.fixture(scope="module")
def tiny(tiny_reproduction):
    """One tiny run of the whole pipeline with two training seeds (conftest: shared with test_tagging)."""
    return tiny_reproduction


@pytest.mark.slow
def test_tiny_pipeline_writes_results_table_and_figures(tiny):
    results = json.loads((tiny / "results.json").read_text())
    assert list(results["systems"]) == ALL_SYSTEMS
    assert results["seeds"] == SEEDS and results["data_seed"] == 2017
    for name, entry in results["systems"].items():
        assert {"f1", "precision", "recall"} <= set(entry["mean"]["at"]), name
        assert {"error_rate", "f1"} <= set(entry["mean"]["sed"]), name
        assert 0 <= entry["mean"]["at"]["f1"] <= 1 and entry["mean"]["sed"]["error_rate"] >= 0
    attention = results["systems"]["gated_crnn_attention"]
    assert attention["schedule"]["name"] == "size tiny" and attention["schedule"]["fused_epochs"] == [1, 2]
    assert [run["training"]["epochs"] for run in attention["runs"]] == [2, 2]
    assert attention["model"]["parameters_keras_count"] > attention["model"]["parameters"] > 0
    assert results["dataset"]["kind"] == "synthetic" and results["dataset"]["test_clips_scored"] == 34
    assert results["versions"]["torch"] and results["versions"]["devinet"] and results["versions"]["sed_scores_eval"]
    assert results["versions"]["git"] == "0123abc-at-start"  # taken before any result file was written
    assert results["evaluation"] is None  # the synthetic stand-in has no evaluation split
    for entry in results["systems"].values():
        assert {"map", "macro_auc"} <= set(entry["mean"]["at"]) and set(entry["mean"]["psds"]) == {"scenario1",
                                                                                                    "scenario2"}
        assert {"error_rate", "f1"} <= set(entry["mean"]["sed_event"])
    assert results["command"].startswith("devinet reproduce --size tiny --no-huge-pages --out ")  # one flag of the pair
    assert results["timing_seconds"]["training"] > 0
    md = (tiny / "results.md").read_text()
    for needle in ("AT micro F1", "SED segment ER (1 s)", "Do the paper's orderings hold", "### Each seed",
                   "not real recordings", "`gated_crnn_attention`", "Capacity-matched ablation", "10.9",
                   "unverifiable here", "Seeds: 2017, 2018", "Beyond the paper's metrics (testing split)",
                   "PSDS 1", "DCASE 2021 Task 4 scenario 2"):
        assert needle in md
    for name in ("training_curves", "per_class_f1", "clip_example"):
        assert (tiny / "figures" / f"{name}.png").read_bytes().startswith(PNG)
    for seed in SEEDS:
        for system in ALL_SYSTEMS[:-1]:
            folder = tiny / "runs" / f"seed{seed}" / system
            assert (folder / "metrics.jsonl").is_file() and (folder / "run.json").is_file()
        assert {p.stem for p in (tiny / "evaluation" / f"seed{seed}").glob("*.json")} == set(ALL_SYSTEMS)
    # results hold small files only: no checkpoints, audio or features outside the work folder
    big = [p for p in tiny.rglob("*") if p.is_file() and "work" not in p.relative_to(tiny).parts
           and p.suffix not in (".json", ".jsonl", ".md", ".png")]
    assert not big


@pytest.mark.slow
def test_seeds_give_mean_std_and_per_seed_runs(tiny):
    """Each metric's mean and sample standard deviation are those of the per-seed values, which differ."""
    results = json.loads((tiny / "results.json").read_text())
    for name, entry in results["systems"].items():
        assert [run["seed"] for run in entry["runs"]] == SEEDS, name
        for task, key in (("at", "f1"), ("at", "precision"), ("sed", "error_rate"), ("sed", "f1"), ("at", "map"),
                          ("sed_event", "error_rate"), ("psds", "scenario2")):
            values = [run[task][key] for run in entry["runs"]]
            assert entry["mean"][task][key] == pytest.approx(np.mean(values), abs=1e-12)
            assert entry["std"][task][key] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        label = next(iter(entry["mean"]["at"]["class_wise_f1"]))
        assert entry["mean"]["at"]["class_wise_f1"][label] == pytest.approx(
            np.mean([run["at"]["class_wise_f1"][label] for run in entry["runs"]]), abs=1e-12)
    # the two seeds trained different weights: their monitored losses differ
    runs = results["systems"]["gated_crnn_mean"]["runs"]
    assert runs[0]["training"]["final_loss"] != runs[1]["training"]["final_loss"]


@pytest.mark.slow
def test_claims_carry_paired_differences_and_verdicts(tiny):
    results = json.loads((tiny / "results.json").read_text())
    claims = results["claims"]
    assert [(c["system"], c["against"], c["metric"]) for c in claims] == [
        ("gated_crnn_mean", "crnn_baseline", "AT micro F1"),
        ("gated_crnn_mean", "crnn_ungated_matched", "AT micro F1"),
        ("gated_crnn_attention", "crnn_baseline", "AT micro F1"),
        ("gated_crnn_attention", "gated_crnn_mean", "SED segment ER (1 s)"),
        ("gated_crnn_attention", "gated_crnn_mean", "SED segment F1 (1 s)")]
    for claim in claims:
        task, key = claim["metric_key"].split(".")
        assert [row["seed"] for row in claim["per_seed"]] == SEEDS
        for row, seed in zip(claim["per_seed"], SEEDS):
            run = {s: next(r for r in results["systems"][s]["runs"] if r["seed"] == seed)
                   for s in (claim["system"], claim["against"])}
            assert row["system"] == run[claim["system"]][task][key]
            assert row["against"] == run[claim["against"]][task][key]
            assert row["difference"] == pytest.approx(row["system"] - row["against"], abs=1e-15)
            assert row["holds"] == (row["difference"] > 0 if claim["better"] == "higher" else row["difference"] < 0)
        assert claim["holds_in"] == sum(row["holds"] for row in claim["per_seed"]) and claim["seeds"] == 2
        assert claim["verdict"] in VERDICTS
        assert (claim["verdict"] == "holds") == (claim["holds_in"] == 2)
    assert "ablation" in {c["origin"] for c in claims}


@pytest.mark.slow
def test_reported_scores_match_the_official_files(tiny):
    """results.json agrees with scoring the written CVSSP probability files through `devinet evaluate`'s path."""
    results = json.loads((tiny / "results.json").read_text())
    meta = tiny / "work" / "data" / "synthetic-tiny-seed2017" / "meta"
    for seed_index, seed in enumerate(SEEDS):
        for system in ("gated_crnn_attention", "fusion"):
            folder = tiny / "work" / "predictions" / "synthetic-tiny-seed2017" / f"tiny-seed{seed}" / system
            at = E.evaluate_at_file(folder / "at_prob_mat.csv.gz", meta / "groundtruth_weak_label_testing_set.csv")
            sed = E.evaluate_sed_file(folder / "sed_prob_mat_list.csv.gz",
                                      meta / "groundtruth_strong_label_testing_set.csv")
            ours = results["systems"][system]["runs"][seed_index]
            assert ours["seed"] == seed
            assert ours["at"]["f1"] == pytest.approx(at["f1"], abs=1e-9)
            assert ours["sed"]["error_rate"] == pytest.approx(sed["error_rate"], abs=1e-9)
            assert ours["sed"]["f1"] == pytest.approx(sed["f1"], abs=1e-9)


@pytest.mark.slow
def test_fusion_averages_its_members(tiny):
    base = tiny / "work" / "predictions" / "synthetic-tiny-seed2017" / "tiny-seed2017"
    keys, fused = E.read_at_probabilities(base / "fusion" / "at_prob_mat.csv.gz")
    members = [E.read_at_probabilities(base / m / "at_prob_mat.csv.gz")[1] for m in SYSTEMS["fusion"].members]
    np.testing.assert_allclose(fused, np.mean(members, axis=0), atol=2e-6)


@pytest.mark.slow
def test_rerun_resumes_without_training_again(tiny):
    before = {p: p.stat().st_mtime_ns for p in (tiny / "work" / "runs").rglob("epoch_*.pt")}
    first = json.loads((tiny / "results.json").read_text())
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--seeds", "2", "--out", str(tiny), "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in (tiny / "work" / "runs").rglob("epoch_*.pt")}
    assert before == after  # no checkpoint rewritten: every run of both seeds was complete
    second = json.loads((tiny / "results.json").read_text())
    for name in first["systems"]:
        assert second["systems"][name]["runs"] == first["systems"][name]["runs"]
    assert second["claims"] == first["claims"]


@pytest.mark.slow
def test_a_third_seed_resumes_the_first_two(tiny, tmp_path):
    """--seeds 3 over a finished --seeds 2 trains the third seed only."""
    out = tmp_path / "three"
    before = {p: p.stat().st_mtime_ns for p in (tiny / "work" / "runs").rglob("epoch_*.pt")}
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--seeds", "3", "--systems", "gated_crnn_mean", "--out", str(out),
                 "--work-dir", str(tiny / "work"), "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in (tiny / "work" / "runs").rglob("epoch_*.pt")}
    assert {p: t for p, t in after.items() if p in before} == before
    assert {p.relative_to(tiny / "work").parts[2] for p in set(after) - set(before)} == {"tiny-seed2019"}
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [2017, 2018, 2019] and results["claims"] == []


@pytest.mark.slow
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
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--data-root", str(root), "--out", str(out), "--systems",
                 "gated_crnn_attention", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["systems"]) == ["gated_crnn_attention"]
    assert results["dataset"]["kind"] == "dcase2017_task4"
    assert results["dataset"]["test_clips_scored"] == 31
    assert results["dataset"]["test_clips_without_audio"]["missing"] == 3
    assert results["claims"] == []  # one system: nothing to compare
    assert results["seeds"] == [2017] and results["systems"]["gated_crnn_attention"]["std"]["at"]["f1"] is None
    assert "One training run per system (seed 2017)" not in (out / "results.md").read_text()  # no claims table


def _fake_evaluation_split(root: Path, reference_dir: Path, wavs: list[Path], n_clips: int) -> list[str]:
    """Evaluation clips in the official layout: ``n_clips`` clips of the official evaluation ground truth
    (those with a heard event), their audio borrowed from synthetic wavs, and the official weak and strong
    ground truth restricted to them (their lines copied as they are)."""
    from experiments.meta import clip_key, wav_name

    meta = reference_dir / "dcase2017_task4" / "meta"
    strong_lines = (meta / "groundtruth_strong_label_evaluation_set.csv").read_text().splitlines(keepends=True)
    heard = []
    for line in strong_lines:
        name, onset, offset, _ = line.rstrip("\r\n").split("\t")
        if float(offset) > float(onset) and clip_key(name) not in heard:
            heard.append(clip_key(name))
    chosen = heard[:n_clips]
    for kind in ("weak", "strong"):
        path = meta / f"groundtruth_{kind}_label_evaluation_set.csv"
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if clip_key(line.split("\t")[0]) in chosen]
        (root / "meta" / path.name).write_text("".join(kept))
    folder = root / "evaluation_set_formatted_audio_segments"  # the official download's folder name
    folder.mkdir()
    for key, wav in zip(chosen, wavs):
        (folder / wav_name(key)).symlink_to(wav)
    return chosen


@pytest.mark.slow
def test_real_data_with_the_evaluation_split(tiny, tmp_path, reference_dir, capsys):
    """--data-root holding the evaluation split: it is packed, predicted, scored against the official
    evaluation ground truth and reported beside the challenge's evaluation-set figures."""
    source = tiny / "work" / "data" / "synthetic-tiny-seed2017"
    root = tmp_path / "dcase"
    shutil.copytree(source / "meta", root / "meta")
    for split in ("train", "test"):
        (root / "audio" / split).mkdir(parents=True)
        for wav in sorted((source / "audio" / split).glob("*.wav")):
            (root / "audio" / split / wav.name).symlink_to(wav)
    chosen = _fake_evaluation_split(root, reference_dir, sorted((source / "audio" / "test").glob("*.wav")), 6)
    out = tmp_path / "out"
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--data-root", str(root), "--out", str(out), "--systems",
                 "gated_crnn_attention", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    evaluation = results["evaluation"]
    assert evaluation["split"] == "evaluation" and evaluation["clips_scored"] == 6
    assert results["dataset"]["eval_audio"].endswith("evaluation_set_formatted_audio_segments")
    assert [f["split"] for f in evaluation["challenge"]] == ["evaluation"] * len(evaluation["challenge"])
    assert {f["at_f1"] for f in evaluation["challenge"]} >= {0.182, 0.556}
    run = evaluation["systems"]["gated_crnn_attention"]["runs"][0]
    assert run["seed"] == 2017 and {"at", "sed", "sed_event", "psds"} <= set(run)
    # the scores are those of the written probability files against the restricted official ground truth
    folder = next((out / "work" / "predictions").glob("dcase2017-*/tiny-seed2017/gated_crnn_attention/evaluation"))
    keys, _ = E.read_at_probabilities(folder / "at_prob_mat.csv.gz")
    assert sorted(keys) == sorted(chosen)
    at = E.evaluate_at_file(folder / "at_prob_mat.csv.gz", root / "meta" / "groundtruth_weak_label_evaluation_set.csv")
    sed = E.evaluate_sed_file(folder / "sed_prob_mat_list.csv.gz",
                              root / "meta" / "groundtruth_strong_label_evaluation_set.csv")
    # decisions at the thresholds survive the files' 6 decimals; rankings of a 2-epoch model, whose outputs
    # are nearly constant, do not (rounding makes ties): mAP and PSDS are checked for being there only
    assert run["at"]["f1"] == pytest.approx(at["f1"], abs=1e-12)
    assert run["sed"]["error_rate"] == pytest.approx(sed["error_rate"], abs=1e-12)
    assert run["sed_event"]["f1"] == pytest.approx(sed["event_based"]["f1"], abs=1e-12)
    assert 0 <= run["at"]["map"] <= 1 and 0 <= run["psds"]["scenario1"] <= 1 and 0 <= run["psds"]["scenario2"] <= 1
    assert (out / "evaluation" / "seed2017" / "evaluation_set" / "gated_crnn_attention.json").is_file()
    md = (out / "results.md").read_text()
    assert "## Our results (evaluation split: the challenge's evaluation set)" in md
    assert "6 clips of the challenge's evaluation set scored" in md and "18.2" in md
    # the testing split's results and the claims do not move: the same training runs as without it
    assert results["dataset"]["test_clips_scored"] == 34

    # evaluation audio without its ground truth: one line naming the missing file, before any work
    (root / "meta" / "groundtruth_strong_label_evaluation_set.csv").unlink()
    capsys.readouterr()
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--data-root", str(root), "--out", str(tmp_path / "again"),
                 "--systems", "gated_crnn_attention", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "groundtruth_strong_label_evaluation_set.csv: missing official metadata" in err


def test_git_revision_shows_modified_sources(tmp_path):
    from experiments.provenance import git_revision

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_revision(tmp_path) == head
    (tmp_path / "new.txt").write_text("untracked files are not sources of the run\n")
    assert git_revision(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == head + "+dirty"


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "devinet.cli", "reproduce", "--size", "tiny", "--data-root",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"devinet reproduce: error: {tmp_path / 'nowhere'}: no such data folder"
    (tmp_path / "root" / "meta").mkdir(parents=True)
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--data-root", str(tmp_path / "root"), "--out",
                 str(tmp_path / "out")]) == 1
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--systems", "gated_crnn", "--out", str(tmp_path / "out")]) == 1
    assert main(["reproduce", "--no-huge-pages", "--quick", "--size", "full", "--out", str(tmp_path / "out")]) == 1
    assert main(["reproduce", "--no-huge-pages", "--size", "tiny", "--seeds", "0", "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "results.json").exists()


# ---------------------------------------------------------------------- configs and systems
def test_size_configs_are_validated():
    quick = load_size_config("quick")
    assert quick.data_size == "quick" and quick.training.fused_checkpoints <= quick.training.epochs
    assert {quick.schedule_name(s) for s in SYSTEMS if SYSTEMS[s].trained} == {"size quick"}
    full = load_size_config("full")
    # the original recipe: each system the schedule of its original script
    assert full.width == 1.0 and full.training == "original"
    assert full.schedule("crnn_baseline") == ORIGINAL_SCHEDULES["icassp2018_baseline"]
    for system in ("gated_crnn_mean", "gated_crnn_attention", "crnn_ungated_matched"):
        assert full.schedule_name(system) == "main_crnn_at"
        schedule = full.schedule(system)
        assert (schedule.batch_size, schedule.iterations_per_epoch, schedule.learning_rate, schedule.epochs,
                schedule.fused_epochs) == (44, 100, 0.001, 30, tuple(range(21, 31)))
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
    with pytest.raises(ConfigError, match="training must be a schedule"):
        size_config_from_dict({**data, "training": "main_crnn_sed"})
    named = size_config_from_dict({**data, "training": "icassp2018_baseline"})
    assert named.schedule("gated_crnn_attention").fused_epochs == (20, 30, 40, 50, 60, 70, 80)
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
    assert resolve_systems(None) == tuple(ALL_SYSTEMS)


@pytest.mark.parametrize("width", [1.0, 0.25, 0.125])
def test_the_ablation_is_the_gated_crnn_without_gating(width):
    """crnn_ungated_matched: gated_crnn_mean's config with ReLU blocks, matched at each width (not scaled)."""
    gated = model_config("gated_crnn_mean", width, {"bn_momentum": 0.1})
    twin = model_config("crnn_ungated_matched", width, {"bn_momentum": 0.1})
    assert (twin.gated_conv, twin.conv_activation) == (False, "relu") and twin.conv_channels > gated.conv_channels
    assert twin.replace(gated_conv=True, conv_activation=gated.conv_activation,
                        conv_channels=gated.conv_channels) == gated
    assert twin.name == f"{gated.name}+ungated_matched"


def test_frames_at_input_rate_repeats_each_pooled_frame():
    frames = np.arange(2 * 30 * 17, dtype=np.float32).reshape(2, 30, 17)
    up = frames_at_input_rate(frames, 240)
    assert up.shape == (2, 240, 17)
    np.testing.assert_array_equal(up[:, 8 * 5: 8 * 6], np.repeat(frames[:, 5:6], 8, axis=1))
    assert frames_at_input_rate(up, 240) is up
    odd = frames_at_input_rate(frames[:, :7], 30)  # 30 // 7 = 4, the 2 left-over frames take the last one
    np.testing.assert_array_equal(odd[:, 28:], np.repeat(frames[:, 6:7], 2, axis=1))


# ---------------------------------------------------------------------- report
def test_paper_figures_keep_their_metric_columns():
    md = report.results_markdown({
        "size": load_size_config("tiny").to_dict(), "systems": {}, "command": "devinet reproduce", "created": "now",
        "versions": {"devinet": "0"}, "seeds": [1], "seed_rule": "rule", "paper": report.PAPER_FIGURES,
        "metrics": report.METRIC_DEFINITIONS, "claims": [],
        "dataset": {"kind": "synthetic", "generator_version": "1", "size": "tiny", "seed": 1,
                    "train_clips_used": 1, "test_clips_scored": 1}})
    rows = [line for line in md.splitlines() if line.startswith(("| development |", "| evaluation |"))]
    assert len(rows) == len(report.PAPER_FIGURES) == 4
    # AT micro F1 / P / R (%), SED segment ER, SED segment F1 (%): "?" where the source was not read
    assert "| DCASE2017 baseline | 10.9 | 7.8 | 17.5 | ? | ? |" in rows[0] and rows[0].endswith("| yes |")
    assert "| DCASE2017 baseline | 18.2 | 15.0 | 23.1 | ? | ? |" in rows[1]
    assert "| ? | 55.6 | ? | ? | 0.73 | ? |" in rows[2] and "ICASSP 2018" in rows[2]
    assert "| 61.0 | – | – | 0.73 | – |" in rows[3] and rows[3].endswith("| **no: unverifiable here** |")
    assert "13.1" not in "".join(rows)
    for figure in report.PAPER_FIGURES:
        assert figure["source"] and figure["split"] in ("development", "evaluation")
        assert set(figure["not_read"]) <= {"submission", "at_f1", "at_precision", "at_recall", "sed_error_rate",
                                           "sed_f1"}
        assert all(figure[key] is None for key in figure["not_read"])  # a figure not read is never filled in
    assert "own construction" in md


def test_no_real_data_reference_line_on_synthetic_plots():
    assert report.per_class_reference("synthetic") == {}
    value, label = report.per_class_reference("dcase2017_task4")["at"]
    assert value == 0.109 and "real development set" in label

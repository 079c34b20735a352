"""``devinet bench``: FLOP counting, the timing harness, argument errors, and a --quick smoke run.

Timings are never asserted (they depend on the machine and its load); the smoke run checks
that every figure exists, is finite and positive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments import runtime
from devinet.cli import main
from devinet.model import DeviNet
from experiments import bench
from experiments.bench import flops, report as bench_report, timing

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("forward_speedup_vs_keras", "train_step_speedup_vs_keras", "gru_train_ratio_vs_nngru",
            "features_speedup_vs_reference", "forward_fraction_of_matmul_peak", "peak_train_memory_mb",
            "train_step_fraction_of_matmul_peak", "train_step_speedup_bf16_vs_fp32",
            "tag_realtime_factor_crnn_at", "tag_realtime_factor_crnn_sed")


@pytest.mark.slow
@pytest.mark.parametrize("preset, frames", [("cvssp_crnn_at", 48), ("cvssp_crnn_sed", 16),
                                            ("cvssp_cnnrnn_at", 40), ("cvssp_crnn_baseline", 16)])
def test_forward_flops_equal_what_torch_counts(preset, frames):
    """The analytic count equals torch's FLOP counter on the real forward (convs, GRU matmuls, dense)."""
    model = DeviNet.from_preset(preset).eval()
    x = torch.randn(3, frames, model.config.n_mels)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    counted = flops.forward_flops(model.config, frames)
    assert counted["total"] == counted["conv"] + counted["gru"] + counted["dense"]
    assert counted["gru"] > 0 and counted["dense"] > 0
    assert 3 * counted["total"] == counter.get_total_flops()


def test_full_size_flops_of_the_original_models():
    """Per clip at 240 x 64: hand-computed conv FLOPs of the original geometry."""
    at = flops.forward_flops(DeviNet.from_preset("cvssp_crnn_at").config, 240)
    # 2 * 9 * C_in * 128 * T * F per gated block; pools (2,2) x3 then (1,2); final conv 64 -> 256 on 30 x 4.
    blocks = [(1, 240, 64), (64, 240, 64), (64, 120, 32), (64, 120, 32), (64, 60, 16), (64, 60, 16), (64, 30, 8)]
    conv = sum(2 * 9 * c * 128 * t * f for c, t, f in blocks) + 2 * 9 * 64 * 256 * 30 * 4
    assert at["conv"] == conv
    # two bidirectional GRUs, 30 steps, 3 gates, input 256, hidden 128
    assert at["gru"] == 2 * 2 * 30 * 2 * 3 * 128 * (256 + 128)


@pytest.mark.slow
def test_runner_warms_up_then_interleaves_and_takes_medians(monkeypatch):
    calls = []
    clock = iter(range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    runner = timing.Runner("cpu", total_runs=10)
    try:
        timings = runner.compare("t", {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                 warmup=2, repeats=3)
    finally:
        runner.bar.close()
    # the warm-up interleaves as the timed runs do
    assert calls == ["a", "b"] * 2 + ["a", "b"] * 3
    for result in timings.values():
        assert result.runs == 3
        assert result.min_s <= result.median_s <= result.max_s
    rate = timings["a"].rate(10)
    assert rate["min"] <= rate["median"] <= rate["max"]


def test_runner_lets_idle_threads_settle_outside_the_timed_span(monkeypatch):
    events = []
    clock = iter(range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: events.append("clock") or float(next(clock)))
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(("sleep", s)))
    monkeypatch.setattr(timing.gc, "collect", lambda: events.append("gc"))
    runner = timing.Runner("cpu", total_runs=2, settle_s=0.25)
    try:
        timings = runner.compare("t", {"a": lambda: events.append("run")}, warmup=1, repeats=1)
    finally:
        runner.bar.close()
    assert events == [("sleep", 0.25), "gc", "clock", "run", "clock"] * 2
    assert timings["a"].median_s == 1.0


def test_goals_are_judged_in_the_right_direction():
    goals = bench_report.goals({"forward_speedup_vs_keras": 2.0, "gru_train_ratio_vs_nngru": 2.0,
                          "features_speedup_vs_reference": None})
    assert goals["forward_speedup_vs_keras"]["met"] is True
    assert goals["gru_train_ratio_vs_nngru"]["met"] is False
    assert goals["features_speedup_vs_reference"]["met"] is None


def test_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("keep")
    assert main(["bench", "--quick", "--json", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_text() == "keep"


def test_threads_must_be_positive(tmp_path, capsys):
    assert main(["bench", "--quick", "--threads", "0", "--json", str(tmp_path / "b.json")]) == 1
    assert "--threads" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the missing-CUDA error cannot occur")
def test_cuda_without_cuda_is_one_clear_line(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "devinet", "bench", "--device", "cuda", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devinet bench: error: --device cuda: CUDA is not available")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.keras
def test_quick_run_reports_every_figure(tmp_path, keras, capsys):
    out = tmp_path / "bench.json"
    # in this process (the default would run the benchmark again in a child with huge pages)
    assert main(["bench", "--quick", "--no-huge-pages", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in HEADLINE:
        value = report[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert report["quick"] is True and report["device"] == "cpu"
    assert set(report["goals"]) == set(bench_report.GOALS)
    threads = report["threads"]
    assert threads["torch_intra_op"] >= 1 and "tf_intra_op" in threads and "tf_inter_op" in threads
    assert report["machine"]["cpu"] and report["versions"]["torch"]
    for name in bench.MODELS:
        forward = report["forward"][name]
        for contender in ("devinet", "devinet_channels_last", "devinet_optimized", "keras_predict", "keras_call"):
            rate = forward[f"{contender}_clips_per_s"]
            assert 0 < rate["min"] <= rate["median"] <= rate["max"]
        assert report["train_step"][name]["speedup_vs_keras"] > 0
        assert report["train_memory"][name]["step_peak_mb"] > 0
    train = report["train_step"].values()
    assert report["train_step_speedup_bf16_vs_fp32"] == min(t["bf16_speedup_vs_fp32"] for t in train)
    assert report["train_step_fraction_of_matmul_peak"] == min(t["devinet_fraction_of_matmul_peak_estimate"]
                                                               for t in train)
    # the headline forward figures are the optimized model's, the default model's are kept beside them
    forward = report["forward"].values()
    assert report["forward_speedup_vs_keras"] == min(f["devinet_optimized_speedup_vs_keras_predict"] for f in forward)
    assert report["forward_speedup_vs_keras_default_model"] == min(f["devinet_speedup_vs_keras_predict"] for f in forward)
    assert report["forward_fraction_of_matmul_peak"] == min(f["devinet_optimized_fraction_of_matmul_peak"] for f in forward)
    # the features of the fast extractor match the reference recipe
    assert report["features"]["max_abs_difference"] < 1e-2
    original = report["features_speedup_vs_original_pipeline"]  # only where resampy 0.2 is installed
    assert original is None or (original > 0 and report["features"]["original_pipeline_max_abs_difference_to_reference"] < 1e-2)
    assert threads["numpy_blas"]
    allocator = report["allocator"]
    assert allocator["retain_freed_memory_requested"] is False and allocator["freed_memory_retained"] is False
    assert allocator["malloc_huge_pages"] == (runtime.huge_pages_requested() and runtime.huge_pages_unavailable() is None)
    assert allocator["transparent_huge_pages"] == runtime.transparent_huge_pages()
    assert allocator["anon_huge_pages_mb_at_end"] is None or allocator["anon_huge_pages_mb_at_end"] >= 0
    assert "--retain-freed-memory" not in report["command"]
    printed = capsys.readouterr().out
    assert "goals:" in printed and "threads: torch" in printed

"""The headline figures of a benchmark run, its goals, and the printed summary."""

from __future__ import annotations

import math
from typing import Any

from .models import BEST_FORWARD

#: goals: headline key -> (comparison, target)
GOALS = {
    "forward_speedup_vs_keras": (">=", 1.5),
    # issue 18: at default settings (huge pages where available), >= 1.2x for both models
    "train_step_speedup_vs_keras": (">=", 1.2),
    "gru_train_ratio_vs_nngru": ("<=", 1.5),
    "features_speedup_vs_reference": (">=", 5.0),
    "forward_fraction_of_matmul_peak": (">=", 0.5),
    "train_step_fraction_of_matmul_peak": (">=", 0.6),
    "tag_realtime_factor_crnn_sed": (">=", 150.0),
    "tag_realtime_factor_crnn_at": (">=", 300.0),
}
SUMMARY_RULE = ("each headline figure is the least favourable over crnn_at and crnn_sed (memory: the largest); "
                "speedups and ratios are of median wall-clock times measured interleaved; the forward figures are "
                f"of '{BEST_FORWARD}' (DeviNet.optimize_for_inference(): the same outputs up to float32 rounding), "
                "the *_default_model ones of a model as constructed")


def _least_favourable(values, pick=min):
    """``pick`` of the values that exist (None when none does)."""
    values = [v for v in values if v is not None]
    return pick(values) if values else None


def headline(forward: dict, train: dict, memory: dict, gru: dict, features: dict, tagging: dict) -> dict[str, Any]:
    """The headline figures from the sections' results (see :data:`SUMMARY_RULE`)."""
    def over_models(section: dict, key: str):
        return _least_favourable(figures.get(key) for figures in section.values())

    return {
        "forward_speedup_vs_keras": over_models(forward, f"{BEST_FORWARD}_speedup_vs_keras_predict"),
        "train_step_speedup_vs_keras": over_models(train, "speedup_vs_keras"),
        "train_step_fraction_of_matmul_peak": over_models(train, "devinet_fraction_of_matmul_peak_estimate"),
        "train_step_speedup_bf16_vs_fp32": over_models(train, "bf16_speedup_vs_fp32"),
        "gru_train_ratio_vs_nngru": gru["train_ratio_vs_nngru"],
        "features_speedup_vs_reference": features["speedup_vs_reference"],
        "features_speedup_vs_original_pipeline": features["speedup_vs_original_pipeline"],
        "forward_fraction_of_matmul_peak": over_models(forward, f"{BEST_FORWARD}_fraction_of_matmul_peak"),
        "peak_train_memory_mb": _least_favourable((m["step_peak_mb"] for m in memory.values()), pick=max),
        "forward_speedup_vs_keras_default_model": over_models(forward, "devinet_speedup_vs_keras_predict"),
        "forward_fraction_of_matmul_peak_default_model": over_models(forward, "devinet_fraction_of_matmul_peak"),
        # seconds of 10-s clips tagged per wall-clock second, files to tags and events
        "tag_realtime_factor_crnn_at": tagging["crnn_at_clips_realtime_factor"],
        "tag_realtime_factor_crnn_sed": tagging["crnn_sed_clips_realtime_factor"],
    }


def goals(summary: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for key, (op, target) in GOALS.items():
        value = summary.get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        found[key] = {"target": f"{op} {target}", "value": value, "met": met}
    return found


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def print_summary(report: dict[str, Any]) -> None:
    t = report["threads"]
    print(f"devinet bench ({'quick' if report['quick'] else 'full'}, {report['device']}) on {report['machine']['cpu']}, "
          f"{report['machine']['usable_cpus']} usable CPUs; threads: torch {t['torch_intra_op']} intra / "
          f"{t['torch_inter_op']} inter-op, TF {t['tf_intra_op']} intra / {t['tf_inter_op']} inter-op; "
          f"load average {report['load_average']['start']} -> {report['load_average']['end']}")
    a = report["allocator"]
    print(f"allocator: huge pages {'on' if a.get('malloc_huge_pages') else 'off'} (transparent huge pages: "
          f"{a.get('transparent_huge_pages')}), freed memory retained: {'yes' if a.get('freed_memory_retained') else 'no'}")
    print(f"float32 matmul peak: {_fmt(report['matmul_peak']['gflop_per_s']['median'], '.1f')} GFLOP/s")
    for name, f in report["forward"].items():
        print(f"{name} forward clips/s: devinet {_fmt(f['devinet_clips_per_s']['median'], '.1f')}, channels-last "
              f"{_fmt(f['devinet_channels_last_clips_per_s']['median'], '.1f')}, optimized "
              f"{_fmt(f['devinet_optimized_clips_per_s']['median'], '.1f')}, keras predict "
              f"{_fmt(f.get('keras_predict_clips_per_s', {}).get('median'), '.1f')}, keras call "
              f"{_fmt(f.get('keras_call_clips_per_s', {}).get('median'), '.1f')}; GFLOP/s (% of peak): devinet "
              f"{_fmt(f['devinet_gflop_per_s'], '.1f')} ({_fmt(100 * f['devinet_fraction_of_matmul_peak'], '.0f')}%), "
              f"optimized {_fmt(f['devinet_optimized_gflop_per_s'], '.1f')} "
              f"({_fmt(100 * f['devinet_optimized_fraction_of_matmul_peak'], '.0f')}%), keras predict "
              f"{_fmt(100 * f.get('keras_predict_fraction_of_matmul_peak', math.nan), '.0f')}%")
    for name, s in report["train_step"].items():
        print(f"{name} training step clips/s: devinet {_fmt(s['devinet_clips_per_s']['median'], '.1f')} "
              f"({_fmt(100 * s['devinet_fraction_of_matmul_peak_estimate'], '.0f')}% of peak), bf16 autocast "
              f"{_fmt(s.get('devinet_bf16_clips_per_s', {}).get('median'), '.1f')}, keras "
              f"{_fmt(s.get('keras_clips_per_s', {}).get('median'), '.1f')}")
    tag = report["tagging"]
    print(f"tagging real-time factor (audio s per wall s), 10-s clips / {tag['long_file_seconds']:g}-s file: "
          + "; ".join(f"{name} {_fmt(tag[f'{name}_clips_realtime_factor'], '.0f')} / "
                      f"{_fmt(tag[f'{name}_long_file_realtime_factor'], '.0f')}" for name in ("crnn_at", "crnn_sed"))
          + f"; peak memory tagging a {report['tagging_memory']['duration_s'] / 60:.0f}-min file: "
            f"{_fmt(report['tagging_memory']['peak_rss_mb'], '.0f')} MiB")
    print("goals:")
    for key, goal in report["goals"].items():
        state = {True: "met", False: "NOT met", None: "n/a"}[goal["met"]]
        print(f"  {key:34s} {_fmt(goal['value'], '.3f'):>8} (target {goal['target']}): {state}")
    print(f"  {'peak_train_memory_mb':34s} {_fmt(report['peak_train_memory_mb'], '.0f'):>8}")

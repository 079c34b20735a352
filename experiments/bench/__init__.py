"""Benchmark devinet against the Keras reference, side by side in one process run.

Every figure is the median of repeated runs after warm-up (min and max kept), and the
contenders of one comparison run interleaved (A, B, A, B, ...) so that a change in the
machine's load hits both: the ratios are the point, not lone absolute times. Thread counts
are fixed for both frameworks and recorded with the machine, the versions and the load.

Measured:

- forward throughput (clips/s) of crnn_at and crnn_sed: devinet (eval, inference mode; as
  constructed, with channels-last weights, and after :meth:`DeviNet.optimize_for_inference`)
  against the Keras reference's ``predict`` and direct call;
- one training step (forward, backward, Adam; Keras binary cross-entropy) of each, in float32
  and under bfloat16 autocast;
- ``Keras2GRU`` against ``torch.nn.GRU`` (bidirectional), inference and forward+backward;
- feature extraction: the batched torch extractor against the reference numpy/scipy recipe;
- tagging (``devinet.Tagger``, files to tags and events): the real-time factor of crnn_at and
  crnn_sed on 10-s clips and on a long file, and the peak memory of tagging a long file;
- devinet's forward GFLOP/s against a large float32 matmul on the same threads;
- the peak memory of a devinet training step.

FLOPs are counted analytically (:mod:`experiments.bench.flops`). The command is
``devinet bench`` (experiments/commands/bench.py); :func:`run_bench` runs it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devinet._io import atomic_write_json
from experiments.runtime import anon_huge_pages_mb

from . import environment, features, kernels, models, report, tagging
from .timing import SETTLE_S, Runner

#: the models compared with the Keras reference
MODELS = ("cvssp_crnn_at", "cvssp_crnn_sed")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and repetitions of one benchmark run."""

    batch: int
    frames: int
    gru_batch: int
    gru_steps: int
    gru_input: int
    gru_hidden: int
    matmul: int
    feature_clips: int
    feature_seconds: float
    feature_rate: int
    warmup: int
    repeats: int        # small, fast figures (matmul, GRU, features)
    model_repeats: int  # whole-model forward and training steps
    #: warm-up training steps: a training loop runs thousands, so its steady state is the figure;
    #: with retain_freed_memory the heap needs 4 to 5 steps to reach its working set
    train_warmup: int = 1
    #: tagging: 10-s clips per timed run, seconds of the long file, seconds of the memory probe's file
    tag_clips: int = 16
    tag_long_seconds: int = 300
    tag_memory_seconds: int = 3600


FULL = Sizes(batch=44, frames=240, gru_batch=44, gru_steps=240, gru_input=256, gru_hidden=128, matmul=4096,
             feature_clips=8, feature_seconds=10.0, feature_rate=44100, warmup=1, repeats=5, model_repeats=3,
             train_warmup=3)
QUICK = Sizes(batch=2, frames=48, gru_batch=4, gru_steps=16, gru_input=32, gru_hidden=16, matmul=512,
              feature_clips=2, feature_seconds=1.5, feature_rate=44100, warmup=1, repeats=2, model_repeats=2,
              tag_clips=2, tag_long_seconds=25, tag_memory_seconds=60)


def planned_runs(sizes: Sizes, with_keras: bool) -> int:
    """Timed and warm-up runs of one bench run, for the progress bar."""
    per = sizes.warmup + sizes.repeats
    per_model = sizes.warmup + sizes.model_repeats
    # devinet, channels-last, optimized (+ keras predict, keras call)
    forward = len(MODELS) * (5 if with_keras else 3) * per_model
    # devinet, devinet bf16 (+ keras)
    train = len(MODELS) * (3 if with_keras else 2) * (sizes.train_warmup + sizes.model_repeats)
    feature_contenders = 3 if features.original_resampler() is not None else 2
    # matmul peak, GRU (3 contenders x inference, forward+backward), forward, training, features
    return per + 6 * per + forward + train + feature_contenders * per + tagging.planned_runs(sizes)


@dataclass(frozen=True)
class BenchOptions:
    """What ``devinet bench`` was asked (see experiments/commands/bench.py)."""

    destination: Path
    device: str
    threads: int
    quick: bool
    allocator: dict
    command: str
    with_keras: bool = True
    notes: tuple[str, ...] = ()


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every section, write the JSON report atomically, print the summary; returns the report."""
    sizes = QUICK if options.quick else FULL
    thread_info = environment.set_threads(options.threads)
    started, load_start = time.time(), environment.load_average()
    runner = Runner(options.device, planned_runs(sizes, options.with_keras),
                    settle_s=0.0 if options.quick else SETTLE_S)
    try:
        sections = _sections(runner, sizes, options)
    finally:
        runner.bar.close()
    summary = report.headline(sections["forward"], sections["train_step"], sections["train_memory"],
                              sections["gru"], sections["features"], sections["tagging"])
    from experiments.provenance import versions

    result = {
        "format": "devinet-bench", "version": 1, "command": options.command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1), "quick": options.quick, "device": options.device,
        **summary,
        "cpu_time_note": ("*_cpu_time ratios compare process CPU seconds; with one thread per framework they "
                          "are insensitive to other jobs sharing the machine (wall-clock ratios are not)"),
        "summary_rule": report.SUMMARY_RULE,
        "goals": report.goals(summary),
        "machine": environment.machine(options.device),
        "threads": thread_info,
        "allocator": {**options.allocator, "anon_huge_pages_mb_at_end": anon_huge_pages_mb()},
        "load_average": {"start": load_start, "end": environment.load_average()},
        "versions": versions(extra=("tensorflow", "tensorflow-cpu", "keras")),
        "sizes": asdict(sizes),
        "notes": list(options.notes),
        **sections,
    }
    atomic_write_json(options.destination, result)
    report.print_summary(result)
    return result


def _sections(runner: Runner, sizes: Sizes, options: BenchOptions) -> dict[str, Any]:
    peak = kernels.matmul_peak(runner, sizes)
    peak_gflops = peak["gflop_per_s"]["median"]
    with_keras = options.with_keras
    return {
        "matmul_peak": peak,
        "gru": kernels.gru(runner, sizes),
        "forward": {name: models.forward(runner, sizes, name, with_keras, peak_gflops) for name in MODELS},
        "train_step": {name: models.train_step(runner, sizes, name, with_keras, peak_gflops) for name in MODELS},
        "train_memory": {name: models.train_memory(runner, sizes, name, options.threads) for name in MODELS},
        "features": features.features(runner, sizes),
        "tagging": tagging.tagging(runner, sizes),
        "tagging_memory": tagging.tagging_memory(runner, sizes),
    }


__all__ = ["MODELS", "Sizes", "FULL", "QUICK", "BenchOptions", "run_bench", "planned_runs"]

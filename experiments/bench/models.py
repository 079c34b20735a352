"""Whole-model figures: forward throughput, one training step, and the training step's peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .environment import process_status_mb
from .flops import forward_flops
from .timing import Runner

_REPO_ROOT = Path(__file__).resolve().parents[2]
#: the forward contender of the headline figures: devinet's fastest exact inference path
BEST_FORWARD = "devinet_optimized"


def _build(name: str, sizes, device: str, with_keras: bool, with_variants: bool = True):
    """devinet, its faster inference variants with the same weights, and the Keras reference with the same shapes.

    Returns ``(model, variants, keras_model)``: ``variants`` maps a contender name to a copy of
    ``model`` (channels-last weights; :meth:`DeviNet.optimize_for_inference`), empty without
    ``with_variants``; ``keras_model`` is None without Keras.
    """
    import copy

    import torch

    from devinet.model import DeviNet

    torch.manual_seed(0)
    model = DeviNet.from_preset(name).to(device)
    variants = {}
    if with_variants:
        variants = {"devinet_channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last),
                    "devinet_optimized": copy.deepcopy(model).optimize_for_inference()}
    keras_model = None
    if with_keras:
        import keras_reference

        keras_model = keras_reference.build(name, n_frames=sizes.frames)
    return model, variants, keras_model


def _batch(batch: int, frames: int, seed: int = 0):
    """A random (batch, frames, 64) float32 input and (batch, 17) multi-hot targets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, frames, 64)).astype(np.float32)
    y = (rng.random((batch, 17)) < 0.3).astype(np.float32)
    return x, y


def forward(runner: Runner, sizes, name: str, with_keras: bool, peak_gflops: float) -> dict[str, Any]:
    import torch

    model, variants, keras_model = _build(name, sizes, runner.device, with_keras)
    model.eval()
    for variant in variants.values():
        variant.eval()
    x, _ = _batch(sizes.batch, sizes.frames)
    xt = torch.from_numpy(x).to(runner.device)

    def devinet(m):
        def call():
            with torch.inference_mode():
                return m(xt)["clipwise"]

        return call

    contenders = {"devinet": devinet(model), **{key: devinet(variant) for key, variant in variants.items()}}
    if keras_model is not None:
        import tensorflow as tf

        x_tf = tf.constant(x)
        contenders["keras_predict"] = lambda: keras_model.predict(x, batch_size=sizes.batch, verbose=0)
        contenders["keras_call"] = lambda: keras_model(x_tf, training=False).numpy()
    timings = runner.compare(f"{name} forward", contenders, sizes.warmup, sizes.model_repeats)
    flops = forward_flops(model.config, sizes.frames)
    result: dict[str, Any] = {"flops_per_clip": flops, "timing": {k: asdict(v) for k, v in timings.items()}}
    for key, timing in timings.items():
        result[f"{key}_clips_per_s"] = timing.rate(sizes.batch)
        gflops = flops["total"] * sizes.batch / timing.median_s / 1e9
        result[f"{key}_gflop_per_s"] = gflops
        result[f"{key}_fraction_of_matmul_peak"] = gflops / peak_gflops
    if keras_model is not None:
        for key in ("devinet", *variants):
            result[f"{key}_speedup_vs_keras_predict"] = timings["keras_predict"].median_s / timings[key].median_s
            result[f"{key}_speedup_vs_keras_call"] = timings["keras_call"].median_s / timings[key].median_s
            result[f"{key}_speedup_vs_keras_predict_cpu_time"] = (timings["keras_predict"].cpu_median_s
                                                                  / timings[key].cpu_median_s)
    return result


def _training_step(model, batch_size: int, frames: int, device: str, seed: int = 1, precision: str = "fp32"):
    """The training recipe's step on one random batch: a callable running forward, loss, backward, update
    (``precision`` bf16: under autocast, :class:`experiments.train.TrainingStep`)."""
    import torch

    from experiments.precision import grad_scaler
    from experiments.train import TrainingStep, make_optimizer

    x, y = _batch(batch_size, frames, seed)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    step = TrainingStep(model.train(), make_optimizer(model, 1e-3), precision,
                        grad_scaler(precision, torch.device(device).type))
    return lambda: step(xt, yt)


def bf16_trainable(device: str) -> bool:
    """Whether ``device`` trains in bfloat16 autocast (on CPUs: emulated where not native)."""
    import torch

    return device != "cuda" or torch.cuda.is_bf16_supported()


def train_step(runner: Runner, sizes, name: str, with_keras: bool, peak_gflops: float) -> dict[str, Any]:
    import copy

    model, _, keras_model = _build(name, sizes, runner.device, with_keras, with_variants=False)
    contenders = {"devinet": _training_step(model, sizes.batch, sizes.frames, runner.device)}
    if bf16_trainable(runner.device):
        contenders["devinet_bf16"] = _training_step(copy.deepcopy(model), sizes.batch, sizes.frames, runner.device,
                                                    precision="bf16")
    if keras_model is not None:
        from keras_reference import compile_original

        x, y = _batch(sizes.batch, sizes.frames, seed=1)
        compile_original(keras_model)
        contenders["keras"] = lambda: keras_model.train_on_batch(x, y)
    timings = runner.compare(f"{name} training step", contenders, sizes.train_warmup, sizes.model_repeats)
    result: dict[str, Any] = {"timing": {k: asdict(v) for k, v in timings.items()},
                              "recipe": "experiments.train.TrainingStep: the training recipe's optimizer "
                                        "(lr 1e-3), Keras binary cross-entropy on the clip output"}
    # A training step costs about three forwards: the backward of a convolution or matmul is
    # two products of the forward's size (input and weight gradients).
    flops = 3 * forward_flops(model.config, sizes.frames)["total"]
    result["flops_per_clip_estimate"] = flops
    for key, timing in timings.items():
        result[f"{key}_clips_per_s"] = timing.rate(sizes.batch)
        gflops = flops * sizes.batch / timing.median_s / 1e9
        result[f"{key}_gflop_per_s_estimate"] = gflops
        result[f"{key}_fraction_of_matmul_peak_estimate"] = gflops / peak_gflops
    if keras_model is not None:
        result["speedup_vs_keras"] = timings["keras"].median_s / timings["devinet"].median_s
        result["speedup_vs_keras_cpu_time"] = timings["keras"].cpu_median_s / timings["devinet"].cpu_median_s
    if "devinet_bf16" in timings:
        result["bf16_speedup_vs_fp32"] = timings["devinet"].median_s / timings["devinet_bf16"].median_s
        from experiments.precision import native_cpu_bf16

        result["bf16_native_on_cpu"] = native_cpu_bf16()
    return result


def memory_probe(name: str, batch: str, frames: str, threads: str) -> dict[str, float]:
    """Peak resident memory of one devinet training step on the CPU (run in a fresh process).

    One step runs first (gradients and the optimizer's state exist afterwards); the kernel's
    peak-RSS mark is then reset (``/proc/self/clear_refs``) and the next step's peak is read
    from ``VmHWM``. The parent sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors go back to
    the system at once and the resident size follows the live tensors.
    """
    import torch

    from devinet.model import DeviNet

    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    step = _training_step(DeviNet.from_preset(name), int(batch), int(frames), "cpu")
    step()
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")
    before = process_status_mb("VmRSS")
    step()
    peak = process_status_mb("VmHWM")
    return {"step_peak_mb": peak - before, "process_peak_rss_mb": peak, "resting_rss_mb": before}


def train_memory(runner: Runner, sizes, name: str, threads: int) -> dict[str, Any]:
    if runner.device == "cuda":
        return _cuda_train_memory(sizes, name)
    if not Path("/proc/self/clear_refs").exists():
        return {"step_peak_mb": None, "method": "unavailable: needs Linux /proc/self/clear_refs"}
    runner.bar.set_description(f"{name} training-step memory (subprocess)")
    code = ("import json, sys; from experiments.bench.models import memory_probe; "
            "print(json.dumps(memory_probe(*sys.argv[1:])))")
    from experiments.runtime import environment_without_huge_pages

    # 4 KiB pages whatever this run uses (--huge-pages): the resident size then follows the live
    # tensors, not whole 2 MiB pages
    env = environment_without_huge_pages(dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))))
    done = subprocess.run([sys.executable, "-c", code, name, str(sizes.batch), str(sizes.frames), str(threads)],
                          cwd=_REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["method"] = ("peak RSS of a second training step in a fresh process (VmHWM after clear_refs) minus "
                        "the RSS before it, freed memory returned at once (MALLOC_MMAP_THRESHOLD_=65536)")
    return result


def _cuda_train_memory(sizes, name: str) -> dict[str, Any]:
    import torch

    from devinet.model import DeviNet

    step = _training_step(DeviNet.from_preset(name).to("cuda"), sizes.batch, sizes.frames, "cuda", seed=0)
    step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"step_peak_mb": (peak - before) / 2 ** 20, "resting_mb": before / 2 ** 20,
            "method": "torch.cuda.max_memory_allocated over one step, minus the memory allocated before it"}

"""Benchmark devinet against the Keras reference, side by side in one process run.

Every figure is the median of repeated runs after warm-up (min and max kept), and the
contenders of one comparison run interleaved (A, B, A, B, ...) so that a change in the
machine's load hits both: the ratios are the point, not lone absolute times. Thread counts
are fixed for both frameworks and recorded with the machine, the versions and the load.

Measured:

- forward throughput (clips/s) of crnn_at and crnn_sed: devinet (eval, inference mode; as
  constructed, with channels-last weights, and after :meth:`DeviNet.optimize_for_inference`)
  against the Keras reference's ``predict`` and direct call;
- one training step (forward, backward, Adam; Keras binary cross-entropy) of each;
- ``Keras2GRU`` against ``torch.nn.GRU`` (bidirectional), inference and forward+backward;
- feature extraction: the batched torch extractor against the reference numpy/scipy recipe;
- devinet's forward GFLOP/s against a large float32 matmul on the same threads;
- the peak memory of a devinet training step.

FLOPs are counted analytically by :func:`forward_flops`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

#: the models compared with the Keras reference
MODELS = ("cvssp_crnn_at", "cvssp_crnn_sed")
#: the forward contender of the headline figures: devinet's fastest exact inference path
BEST_FORWARD = "devinet_optimized"
#: goals of the issue: key -> (comparison, target)
GOALS = {
    "forward_speedup_vs_keras": (">=", 1.5),
    "train_step_speedup_vs_keras": (">=", 1.5),
    "gru_train_ratio_vs_nngru": ("<=", 1.5),
    "features_speedup_vs_reference": (">=", 5.0),
    "forward_fraction_of_matmul_peak": (">=", 0.5),
}
_REPO_ROOT = Path(__file__).resolve().parents[1]
#: sleep before each timed run, so that spinning idle threads of the previous run do not
#: count against the next (measured here: without it, the batched extractor timed right
#: after the numpy reference was 2x slower with 2 threads)
SETTLE_S = 0.25
#: keeps the BLAS thread limit of :func:`_set_threads` in force for the whole run
_BLAS_LIMITS: list[Any] = []


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


FULL = Sizes(batch=44, frames=240, gru_batch=44, gru_steps=240, gru_input=256, gru_hidden=128, matmul=4096,
             feature_clips=8, feature_seconds=10.0, feature_rate=44100, warmup=1, repeats=5, model_repeats=3,
             train_warmup=3)
QUICK = Sizes(batch=2, frames=48, gru_batch=4, gru_steps=16, gru_input=32, gru_hidden=16, matmul=512,
              feature_clips=2, feature_seconds=1.5, feature_rate=44100, warmup=1, repeats=2, model_repeats=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, metavar="OUT", help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and two repeats: checks that everything runs (figures not meaningful)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where devinet (and Keras, if TensorFlow sees a GPU) runs (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both frameworks (default: every core this process may use)")
    parser.add_argument("--retain-freed-memory", action="store_true",
                        help="keep freed C-heap memory mapped for reuse, for the whole run "
                             "(devinet.runtime.retain_freed_memory: faster CPU training steps, more resident memory)")
    parser.add_argument("--huge-pages", action="store_true",
                        help="run with glibc's malloc asking for transparent huge pages (GLIBC_TUNABLES="
                             "glibc.malloc.hugetlb=1, for both frameworks): far fewer page faults, no memory cost")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


# ------------------------------------------------------------------------------ FLOPs


def forward_flops(config, frames: int) -> dict[str, int]:
    """Floating-point operations of one clip's forward pass, counted from the architecture.

    A multiply-add counts 2. Counted: every convolution (``2 k^2 C_in C_out T F`` at its
    output size, 'same' padding), the GRUs (per GRU, direction and step: the input
    projection ``2 * 3H * I`` and the recurrent matmuls ``2 * 3H * H``) and the dense layers
    (``2 * in * out`` per frame). Not counted: BatchNorm, GLU, pooling, activations and gate
    arithmetic (elementwise, a few FLOPs per value), so the figure slightly undercounts.

    Args:
        config: a :class:`devinet.config.DeviNetConfig`.
        frames: input frames T of the (T, n_mels) clip.

    Returns:
        ``{"conv", "gru", "dense", "total"}`` FLOPs per clip.
    """
    k2 = config.kernel_size ** 2
    block_out = 2 * config.conv_channels if config.gated_conv else config.conv_channels
    t, f, channels = frames, config.n_mels, 1
    conv = 0
    for n_blocks, (pool_t, pool_f) in zip(config.conv_groups, config.pools):
        for _ in range(n_blocks):
            conv += 2 * k2 * channels * block_out * t * f
            channels = config.conv_channels
        t, f = t // pool_t, f // pool_f
    if config.final_conv_channels:
        conv += 2 * k2 * channels * config.final_conv_channels * t * f
        channels = config.final_conv_channels
    t = t // config.final_pool[0]
    grus_per_layer = 2 if config.gated_rnn else 1
    gru = 0
    for hidden in config.rnn_hidden:
        gru += grus_per_layer * 2 * t * 2 * 3 * hidden * (channels + hidden)
        channels = 2 * hidden
    dense = 0
    for size in config.linear_layers:
        dense += 2 * t * channels * size
        channels = size
    dense += 2 * t * channels * config.num_classes
    if config.head == "attention":
        dense += 2 * t * config.num_classes * config.num_classes
    return {"conv": conv, "gru": gru, "dense": dense, "total": conv + gru + dense}


# ------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs (and the process CPU seconds, for judging the load)."""

    median_s: float
    min_s: float
    max_s: float
    cpu_median_s: float
    runs: int

    def rate(self, items: float) -> dict[str, float]:
        """Items per second: median, and min/max from the slowest/fastest run."""
        return {"median": items / self.median_s, "min": items / self.max_s, "max": items / self.min_s}


class Runner:
    """Times callables (interleaved, after warm-up) and shows progress."""

    def __init__(self, device: str, total_runs: int, settle_s: float = 0.0):
        from tqdm.auto import tqdm

        self.device = device
        #: seconds of sleep before each run (not timed), see :meth:`once`
        self.settle_s = settle_s
        self.bar = tqdm(total=total_runs, desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def once(self, fn: Callable[[], Any]) -> tuple[float, float]:
        # Idle threads of the previous contender (OpenBLAS, OpenMP, TensorFlow's pool) spin for a
        # while after their work and would steal the cores from this run: let them go to sleep.
        time.sleep(self.settle_s)
        gc.collect()  # garbage of earlier runs is collected here, not inside the timed one
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return time.perf_counter() - wall, time.process_time() - cpu

    def compare(self, label: str, contenders: dict[str, Callable[[], Any]], warmup: int,
                repeats: int) -> dict[str, Timing]:
        """Warm the contenders up in turn, then run them in turn ``repeats`` times.

        The warm-up interleaves too, so that the timed runs start from the state they keep
        (each contender's allocations made with the others' in between: a contender whose
        memory the other one disturbed pays for it in the warm-up, not in the first timed run).
        """
        for _ in range(warmup):
            for name, fn in contenders.items():
                self.bar.set_description(f"{label}: warm-up {name}")
                self.once(fn)
                self.bar.update()
        walls: dict[str, list[float]] = {name: [] for name in contenders}
        cpus: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, fn in contenders.items():
                self.bar.set_description(f"{label}: {name}")
                wall, cpu = self.once(fn)
                walls[name].append(wall)
                cpus[name].append(cpu)
                self.bar.update()
        return {name: Timing(statistics.median(walls[name]), min(walls[name]), max(walls[name]),
                             statistics.median(cpus[name]), repeats) for name in contenders}


# ------------------------------------------------------------------------------ environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _machine(device: str) -> dict[str, Any]:
    import torch

    found = {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": _usable_cores(),
             "memory_gb": _memory_gb(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        found["gpu"] = props.name
        found["gpu_memory_gb"] = round(props.total_memory / 2 ** 30, 1)
    return found


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from experiments.provenance import versions

    found = versions()
    for package in ("tensorflow", "tensorflow-cpu", "keras"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _set_threads(threads: int) -> dict[str, Any]:
    """Fix the thread pools of torch and TensorFlow; returns what is actually in effect."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started in this process
        pass
    import tensorflow as tf

    notes = []
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as exc:  # TensorFlow already initialised in this process
        notes.append(f"TensorFlow thread pools already fixed: {exc}")
    # numpy's BLAS (the reference feature recipe's matrix products) gets the same count.
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        blas = ["unknown: threadpoolctl is not installed, numpy's BLAS keeps its own thread count"]
    else:
        _BLAS_LIMITS.append(threadpool_limits(limits=threads, user_api="blas"))
        blas = sorted({f"{pool['internal_api']} {pool['num_threads']}" for pool in threadpool_info()
                       if pool["user_api"] == "blas"})
    found = {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
             "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
             "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
             "numpy_blas": blas}
    if notes:
        found["notes"] = notes
    return found


# ------------------------------------------------------------------------------ sections


def _matmul_peak(runner: Runner, sizes: Sizes) -> dict[str, Any]:
    import torch

    n = sizes.matmul
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(runner.device)
    b = torch.randn(n, n, generator=gen).to(runner.device)
    # into a preallocated result: a fresh 64 MiB result would be mapped and faulted in page by
    # page at every run, which is not arithmetic
    out = torch.empty(n, n, device=runner.device)
    timing = runner.compare("matmul", {"matmul": lambda: torch.matmul(a, b, out=out)}, sizes.warmup,
                            sizes.repeats)["matmul"]
    gflops = {k: v / 1e9 for k, v in timing.rate(2 * n ** 3).items()}
    return {"size": n, "dtype": "float32", "gflop_per_s": gflops, "timing": asdict(timing)}


def _gru(runner: Runner, sizes: Sizes) -> dict[str, Any]:
    import torch

    from devinet.layers import GatedBiGRU, Keras2GRU

    torch.manual_seed(0)
    N, T, I, H = sizes.gru_batch, sizes.gru_steps, sizes.gru_input, sizes.gru_hidden
    dev = runner.device
    # The CVSSP form: linear candidate, Keras 2 hard sigmoid, reset before the recurrent matmul.
    keras2 = Keras2GRU(I, H, activation="linear", bidirectional=True).to(dev)
    gated = GatedBiGRU(I, H).to(dev)
    reference = torch.nn.GRU(I, H, batch_first=True, bidirectional=True).to(dev)
    x = torch.randn(N, T, I, device=dev)
    x_grad = x.clone().requires_grad_()
    grad_out = torch.randn(N, T, 2 * H, device=dev)

    def infer(module):
        def call():
            with torch.inference_mode():
                out = module(x)
            return out

        return call

    def train(module):
        params = [x_grad, *module.parameters()]

        def call():
            out = module(x_grad)
            out = out[0] if isinstance(out, tuple) else out
            return torch.autograd.grad(out, params, grad_out)

        return call

    inference = runner.compare("GRU inference", {"keras2gru": infer(keras2), "nn_gru": infer(reference),
                                                 "gated_bigru": infer(gated)}, sizes.warmup, sizes.repeats)
    training = runner.compare("GRU forward+backward", {"keras2gru": train(keras2), "nn_gru": train(reference),
                                                       "gated_bigru": train(gated)}, sizes.warmup, sizes.repeats)
    return {
        "shape": {"batch": N, "steps": T, "input": I, "hidden": H, "bidirectional": True},
        "keras2gru": "Keras2GRU(activation='linear', recurrent_activation='keras2_hard_sigmoid', reset_after=False)",
        "inference_ratio_vs_nngru": inference["keras2gru"].median_s / inference["nn_gru"].median_s,
        "train_ratio_vs_nngru": training["keras2gru"].median_s / training["nn_gru"].median_s,
        "train_ratio_vs_nngru_cpu_time": training["keras2gru"].cpu_median_s / training["nn_gru"].cpu_median_s,
        "gated_bigru_train_ratio_vs_two_nngru": training["gated_bigru"].median_s / (2 * training["nn_gru"].median_s),
        "inference": {k: asdict(v) for k, v in inference.items()},
        "forward_backward": {k: asdict(v) for k, v in training.items()},
    }


def _models(name: str, sizes: Sizes, device: str, with_keras: bool, with_variants: bool = True):
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


def _batch(sizes: Sizes, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sizes.batch, sizes.frames, 64)).astype(np.float32)
    y = (rng.random((sizes.batch, 17)) < 0.3).astype(np.float32)
    return x, y


def _forward(runner: Runner, sizes: Sizes, name: str, with_keras: bool, peak_gflops: float) -> dict[str, Any]:
    import torch

    model, variants, keras_model = _models(name, sizes, runner.device, with_keras)
    model.eval()
    for variant in variants.values():
        variant.eval()
    x, _ = _batch(sizes)
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


def _train_step(runner: Runner, sizes: Sizes, name: str, with_keras: bool, peak_gflops: float) -> dict[str, Any]:
    import torch

    from experiments.train import keras_bce

    model, _, keras_model = _models(name, sizes, runner.device, with_keras, with_variants=False)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    x, y = _batch(sizes, seed=1)
    xt, yt = torch.from_numpy(x).to(runner.device), torch.from_numpy(y).to(runner.device)

    def devinet_step():
        optimizer.zero_grad(set_to_none=True)
        loss = keras_bce(model(xt)["clipwise"], yt)
        loss.backward()
        optimizer.step()
        return loss

    contenders = {"devinet": devinet_step}
    if keras_model is not None:
        from keras_reference import compile_original

        compile_original(keras_model)
        contenders["keras"] = lambda: keras_model.train_on_batch(x, y)
    timings = runner.compare(f"{name} training step", contenders, sizes.train_warmup, sizes.model_repeats)
    result: dict[str, Any] = {"timing": {k: asdict(v) for k, v in timings.items()},
                              "recipe": "Adam(lr 1e-3, eps 1e-8), Keras binary cross-entropy on the clip output"}
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
    return result


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {key}")


def _memory_probe(name: str, batch: str, frames: str, threads: str) -> dict[str, float]:
    """Peak resident memory of one devinet training step on the CPU (run in a fresh process).

    One step runs first (gradients and Adam's state exist afterwards); the kernel's peak-RSS
    mark is then reset (``/proc/self/clear_refs``) and the next step's peak is read from
    ``VmHWM``. The parent sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors go back to the
    system at once and the resident size follows the live tensors.
    """
    import torch

    from devinet.model import DeviNet
    from experiments.train import keras_bce

    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = DeviNet.from_preset(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    x = torch.randn(int(batch), int(frames), model.config.n_mels)
    y = (torch.rand(int(batch), model.config.num_classes) < 0.3).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        keras_bce(model(x)["clipwise"], y).backward()
        optimizer.step()

    step()
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")
    before = _proc_status_mb("VmRSS")
    step()
    peak = _proc_status_mb("VmHWM")
    return {"step_peak_mb": peak - before, "process_peak_rss_mb": peak, "resting_rss_mb": before}


def _train_memory(runner: Runner, sizes: Sizes, name: str, threads: int) -> dict[str, Any]:
    if runner.device == "cuda":
        import torch

        from devinet.model import DeviNet
        from experiments.train import keras_bce

        model = DeviNet.from_preset(name).to("cuda").train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
        x, y = (torch.from_numpy(a).cuda() for a in _batch(sizes))

        def step():
            optimizer.zero_grad(set_to_none=True)
            keras_bce(model(x)["clipwise"], y).backward()
            optimizer.step()

        step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"step_peak_mb": (peak - before) / 2 ** 20, "resting_mb": before / 2 ** 20,
                "method": "torch.cuda.max_memory_allocated over one step, minus the memory allocated before it"}
    if not Path("/proc/self/clear_refs").exists():
        return {"step_peak_mb": None, "method": "unavailable: needs Linux /proc/self/clear_refs"}
    runner.bar.set_description(f"{name} training-step memory (subprocess)")
    code = ("import json, sys; from experiments.bench import _memory_probe; "
            "print(json.dumps(_memory_probe(*sys.argv[1:])))")
    from devinet.runtime import environment_without_huge_pages

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


def _features(runner: Runner, sizes: Sizes) -> dict[str, Any]:
    import numpy as np

    from devinet.features import extract_logmel, extract_logmel_batch

    rng = np.random.default_rng(0)
    n = int(sizes.feature_seconds * sizes.feature_rate)
    t = np.arange(n) / sizes.feature_rate
    # Noise plus a few tones: a waveform with structure at every frequency, like real clips.
    clips = [0.1 * rng.standard_normal(n) + sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 7000, 3))
             for _ in range(sizes.feature_clips)]
    rate = sizes.feature_rate
    outputs: dict[str, list] = {}

    def reference():
        outputs["reference"] = [extract_logmel(c, rate) for c in clips]

    def fast():
        outputs["fast"] = extract_logmel_batch(clips, rate, device=runner.device)

    contenders = {"reference": reference, "fast": fast}
    original = _original_resampler()
    if original is not None:
        def original_pipeline():
            outputs["original_pipeline"] = [extract_logmel(original(c, rate, 16000, filter="kaiser_best"), 16000)
                                            for c in clips]

        contenders["original_pipeline"] = original_pipeline
    timings = runner.compare("features", contenders, sizes.warmup, sizes.repeats)
    result = {
        "clips": sizes.feature_clips, "seconds_per_clip": sizes.feature_seconds, "sample_rate": rate,
        "reference": "devinet.features.extract_logmel (numpy/scipy/librosa, one clip at a time)",
        "fast": f"devinet.features.extract_logmel_batch (torch float32, {runner.device}, all clips in one batch)",
        "reference_clips_per_s": timings["reference"].rate(sizes.feature_clips),
        "fast_clips_per_s": timings["fast"].rate(sizes.feature_clips),
        "speedup_vs_reference": timings["reference"].median_s / timings["fast"].median_s,
        "speedup_vs_reference_cpu_time": timings["reference"].cpu_median_s / timings["fast"].cpu_median_s,
        "max_abs_difference": max(float(np.abs(a - b).max()) for a, b in zip(outputs["reference"], outputs["fast"])),
        "original_pipeline": None,
        "speedup_vs_original_pipeline": None,
        "timing": {k: asdict(v) for k, v in timings.items()},
    }
    if original is not None:
        result["original_pipeline"] = ("resampy 0.2 kaiser_best (the resampler of the original pipeline, a numba "
                                       "loop over output samples), then the reference recipe at 16 kHz, one clip at a time")
        result["original_pipeline_clips_per_s"] = timings["original_pipeline"].rate(sizes.feature_clips)
        result["speedup_vs_original_pipeline"] = timings["original_pipeline"].median_s / timings["fast"].median_s
        result["original_pipeline_max_abs_difference_to_reference"] = max(
            float(np.abs(a - b).max()) for a, b in zip(outputs["reference"], outputs["original_pipeline"]))
    return result


@functools.lru_cache(maxsize=1)
def _original_resampler() -> Callable[..., Any] | None:
    """``resampy.resample`` when resampy 0.2.x (the original pipeline's resampler, with the
    original ``kaiser_best`` filter) is installed (``pip install -e .[bench]``); else None.
    Looked up once per process (the run plan and the features section both ask)."""
    try:
        from importlib.metadata import version

        if not version("resampy").startswith("0.2."):
            return None
        import warnings

        with warnings.catch_warnings():  # resampy 0.2 finds its filter files through pkg_resources
            warnings.simplefilter("ignore")
            import resampy
    except Exception:  # absent, or broken with today's numba: the comparison is optional
        return None
    return resampy.resample


# ------------------------------------------------------------------------------ driver


def _planned_runs(sizes: Sizes, with_keras: bool) -> int:
    """Timed and warm-up runs of one bench run, for the progress bar."""
    per = sizes.warmup + sizes.repeats
    per_model = sizes.warmup + sizes.model_repeats
    # devinet, channels-last, optimized (+ keras predict, keras call)
    forward = len(MODELS) * (5 if with_keras else 3) * per_model
    train = len(MODELS) * (2 if with_keras else 1) * (sizes.train_warmup + sizes.model_repeats)
    features = 3 if _original_resampler() is not None else 2
    # matmul peak, GRU (3 contenders x inference, forward+backward), forward, training, features
    return per + 6 * per + forward + train + features * per


def _goals(summary: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for key, (op, target) in GOALS.items():
        value = summary.get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        found[key] = {"target": f"{op} {target}", "value": value, "met": met}
    return found


def _huge_pages_record() -> dict[str, Any]:
    from devinet.runtime import HUGE_PAGE_TUNABLE, huge_pages_requested, huge_pages_unavailable, transparent_huge_pages

    return {"malloc_huge_pages": huge_pages_requested() and huge_pages_unavailable() is None,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "transparent_huge_pages": transparent_huge_pages(),
            "huge_pages_note": (f"GLIBC_TUNABLES={HUGE_PAGE_TUNABLE} (--huge-pages): glibc's malloc asks the kernel "
                                "for 2 MiB pages for large blocks, for the whole process (Keras included)")}


def _command(args: argparse.Namespace, threads: int) -> str:
    parts = ["devinet bench"] + (["--quick"] if args.quick else [])
    parts += ["--retain-freed-memory"] if args.retain_freed_memory else []
    parts += ["--huge-pages"] if args.huge_pages else []
    parts += [f"--device {args.device}", f"--threads {threads}", f"--json {args.json}"]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from devinet._io import atomic_write_json, check_destination
    from devinet.runtime import anon_huge_pages_mb
    from devinet.errors import ConfigError, DevinetError, MissingDependencyError

    destination = check_destination(args.json, args.force)
    threads = args.threads if args.threads is not None else _usable_cores()
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise DevinetError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False; "
                           f"torch {torch.__version__} built with CUDA {torch.version.cuda}); use --device cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf  # noqa: F401
    except ImportError:
        raise MissingDependencyError("TensorFlow (for the Keras reference)", "keras") from None
    thread_info = _set_threads(threads)
    allocator = {"retain_freed_memory_requested": bool(args.retain_freed_memory), "freed_memory_retained": False}
    if args.retain_freed_memory:
        from devinet.runtime import retain_freed_memory

        if not retain_freed_memory():
            raise DevinetError("--retain-freed-memory: needs Linux with glibc's malloc (mallopt)")
        allocator["freed_memory_retained"] = True
        allocator["note"] = ("devinet.runtime.retain_freed_memory(): glibc mallopt M_MMAP_MAX=0, "
                             "M_TRIM_THRESHOLD=2**31-1, for the whole process (Keras included)")
    allocator.update(_huge_pages_record())
    with_keras = True
    notes: list[str] = []
    if args.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        with_keras = False
        notes.append("TensorFlow sees no GPU: Keras figures omitted (a GPU-vs-CPU ratio would mislead)")

    sizes = QUICK if args.quick else FULL
    started = time.time()
    load_start = _load_average()
    runner = Runner(args.device, _planned_runs(sizes, with_keras), settle_s=0.0 if args.quick else SETTLE_S)
    try:
        peak = _matmul_peak(runner, sizes)
        gru = _gru(runner, sizes)
        forward = {name: _forward(runner, sizes, name, with_keras, peak["gflop_per_s"]["median"]) for name in MODELS}
        train = {name: _train_step(runner, sizes, name, with_keras, peak["gflop_per_s"]["median"]) for name in MODELS}
        memory = {name: _train_memory(runner, sizes, name, threads) for name in MODELS}
        features = _features(runner, sizes)
    finally:
        runner.bar.close()

    def worst(values, pick=min):
        values = [v for v in values if v is not None]
        return pick(values) if values else None

    def forward_worst(key):
        """The least favourable ``key`` of the forward figures over the models (None without it)."""
        return worst(f.get(key) for f in forward.values())

    summary = {
        # forward: devinet's fastest inference path that computes the same outputs (optimize_for_inference)
        "forward_speedup_vs_keras": forward_worst(f"{BEST_FORWARD}_speedup_vs_keras_predict"),
        "train_step_speedup_vs_keras": worst(t.get("speedup_vs_keras") for t in train.values()),
        "gru_train_ratio_vs_nngru": gru["train_ratio_vs_nngru"],
        "features_speedup_vs_reference": features["speedup_vs_reference"],
        "features_speedup_vs_original_pipeline": features["speedup_vs_original_pipeline"],
        "forward_fraction_of_matmul_peak": forward_worst(f"{BEST_FORWARD}_fraction_of_matmul_peak"),
        "peak_train_memory_mb": worst((m["step_peak_mb"] for m in memory.values()), pick=max),
        "forward_speedup_vs_keras_default_model": forward_worst("devinet_speedup_vs_keras_predict"),
        "forward_fraction_of_matmul_peak_default_model": forward_worst("devinet_fraction_of_matmul_peak"),
    }
    report = {
        "format": "devinet-bench",
        "version": 1,
        "command": _command(args, threads),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "quick": bool(args.quick),
        "device": args.device,
        **summary,
        "cpu_time_note": ("*_cpu_time ratios compare process CPU seconds; with one thread per framework they "
                          "are insensitive to other jobs sharing the machine (wall-clock ratios are not)"),
        "summary_rule": ("each headline figure is the least favourable over crnn_at and crnn_sed (memory: the "
                         "largest); speedups and ratios are of median wall-clock times measured interleaved; the "
                         f"forward figures are of '{BEST_FORWARD}' (DeviNet.optimize_for_inference(): the same outputs "
                         "up to float32 rounding), the *_default_model ones of a model as constructed"),
        "goals": _goals(summary),
        "machine": _machine(args.device),
        "threads": thread_info,
        "allocator": allocator,
        "load_average": {"start": load_start, "end": _load_average()},
        "versions": _versions(),
        "sizes": asdict(sizes),
        "notes": notes,
        "matmul_peak": peak,
        "gru": gru,
        "forward": forward,
        "train_step": train,
        "train_memory": memory,
        "features": features,
    }
    allocator["anon_huge_pages_mb_at_end"] = anon_huge_pages_mb()
    atomic_write_json(destination, report)
    _print_summary(report)
    return 0


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _print_summary(report: dict[str, Any]) -> None:
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
        print(f"{name} training step clips/s: devinet {_fmt(s['devinet_clips_per_s']['median'], '.1f')}, keras "
              f"{_fmt(s.get('keras_clips_per_s', {}).get('median'), '.1f')}")
    print("goals:")
    for key, goal in report["goals"].items():
        state = {True: "met", False: "NOT met", None: "n/a"}[goal["met"]]
        print(f"  {key:34s} {_fmt(goal['value'], '.3f'):>8} (target {goal['target']}): {state}")
    print(f"  {'peak_train_memory_mb':34s} {_fmt(report['peak_train_memory_mb'], '.0f'):>8}")

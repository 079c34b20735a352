"""Kernel figures: the float32 matmul peak of the machine and the Keras-2 GRU against ``nn.GRU``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .timing import Runner


def matmul_peak(runner: Runner, sizes) -> dict[str, Any]:
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


def gru(runner: Runner, sizes) -> dict[str, Any]:
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

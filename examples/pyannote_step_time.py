"""Training-step time of DeviNetSegmentation and pyannote's PyanNet for voice activity detection.

One step: forward, binary cross-entropy, backward and Adam on a batch of 32 chunks of 2 s
(the setting of examples/pyannote_vad.py), on random input. The models take turns, so that
they share whatever load the machine has. Figures obtained: docs/pyannote.md.

    .venv-pyannote/bin/python examples/pyannote_step_time.py
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")  # pyannote.audio 4 telemetry: off

import torch  # noqa: E402
from pyannote.audio.core.task import Problem, Resolution, Specifications  # noqa: E402
from pyannote.audio.models.segmentation import PyanNet  # noqa: E402

from devinet.integrations.pyannote import DeviNetSegmentation  # noqa: E402

BATCH, SECONDS, REPEATS = 32, 2.0, 6


def build_models() -> dict[str, torch.nn.Module]:
    """The example's DeviNet, the seed's DeviNet and PyanNet, each with a one-class voice-activity head."""
    specifications = Specifications(problem=Problem.BINARY_CLASSIFICATION, resolution=Resolution.FRAME,
                                    duration=SECONDS, classes=["speech"])
    models = {"DeviNet, example (conv_channels 32, recurrent [32])": DeviNetSegmentation(
                  conv_channels=32, recurrent=[32], bn_momentum=0.1),
              "DeviNet, seed configuration (defaults)": DeviNetSegmentation(),
              "PyanNet, pyannote defaults": PyanNet()}
    for model in models.values():
        model.specifications = specifications
        model.build()
    return models


def step_seconds(models: dict[str, torch.nn.Module]) -> dict[str, list[float]]:
    """Seconds of each training step, models interleaved, the first (warm-up) round dropped."""
    batch = torch.randn(BATCH, 1, int(SECONDS * 16000)) * 0.1
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-3) for name, model in models.items()}
    seconds = {name: [] for name in models}
    for repeat in range(REPEATS):
        for name, model in models.items():
            started = time.perf_counter()
            scores = model(batch)
            target = (torch.arange(scores.shape[1]) < scores.shape[1] // 2).float()[None, :, None]
            loss = torch.nn.functional.binary_cross_entropy(scores, target.expand_as(scores))
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            if repeat:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def main() -> None:
    torch.manual_seed(0)
    models = build_models()
    for name, seconds in step_seconds(models).items():
        parameters = sum(p.numel() for p in models[name].parameters() if p.requires_grad)
        print(f"{name}: {parameters} parameters, {statistics.median(seconds):.2f} s per step "
              f"(median of {len(seconds)}; batch {BATCH} x {SECONDS:.0f} s, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

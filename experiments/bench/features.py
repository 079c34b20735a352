"""Feature extraction figures: the batched torch extractor against the reference recipe and the original pipeline."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any, Callable

from .timing import Runner


def features(runner: Runner, sizes) -> dict[str, Any]:
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
    original = original_resampler()
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
def original_resampler() -> Callable[..., Any] | None:
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

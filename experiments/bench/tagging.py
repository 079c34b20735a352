"""Tagging speed and memory: ``devinet.Tagger`` from sound files to tags and events.

The real-time factor is seconds of audio per wall-clock second, from opening the files to the
post-processed tags and events (decoding, resampling 44.1 kHz -> 16 kHz, log-mel, scaler,
model, stitching, post-processing), for 10-s clips (the DCASE clips: 44.1 kHz WAV, windows of
several files batched) and for one long file (FLAC), crnn_at and crnn_sed run side by side.
The models have random weights and a neutral scaler: speed does not depend on the values.

:func:`peak_memory_mb` measures the peak resident memory of tagging a long generated file in
a fresh process (``VmHWM``), the figure that must not grow with the duration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .environment import process_status_mb
from .timing import Runner

#: the presets whose tagging speed is measured, by headline name
TAGGED = {"crnn_at": "cvssp_crnn_at", "crnn_sed": "cvssp_crnn_sed"}
#: rate and format of the generated test audio (the DCASE 2017 clips': 44.1 kHz WAV)
CLIP_RATE = 44100
_REPO_ROOT = Path(__file__).resolve().parents[2]


def write_test_audio(path: Path, seconds: float, rate: int = CLIP_RATE, seed: int = 0, block_s: float = 60.0) -> Path:
    """Noise and tones (structure at every frequency), written block by block (any duration)."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(seed)
    tones = rng.uniform(100, 7000, 3)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1) as handle:
        for start in range(0, int(seconds * rate), int(block_s * rate)):
            n = min(int(block_s * rate), int(seconds * rate) - start)
            t = (start + np.arange(n)) / rate
            handle.write(0.05 * rng.standard_normal(n) + sum(0.1 * np.sin(2 * np.pi * f * t) for f in tones))
    return path


def write_checkpoint(path: Path, preset: str) -> Path:
    """A self-describing checkpoint of ``preset`` with random weights and a neutral scaler."""
    import numpy as np

    import devinet
    from devinet.preprocessing import Preprocessing
    from devinet.scaler import Scaler

    model = devinet.DeviNet.from_preset(preset)
    devinet.save(model, path, force=True,
                 preprocessing=Preprocessing(scaler=Scaler(np.zeros(model.config.n_mels), np.ones(model.config.n_mels))))
    return path


def tagging(runner: Runner, sizes) -> dict[str, Any]:
    """Real-time factors of crnn_at and crnn_sed on ``sizes.tag_clips`` 10-s clips and on one
    ``sizes.tag_long_seconds`` file, interleaved per kind of input; CPU, and CUDA where available."""
    import torch

    from devinet.tagging import Tagger

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="devinet-bench-tag-") as folder:
        folder = Path(folder)
        clips = [write_test_audio(folder / f"clip{k}.wav", 10.0, seed=k) for k in range(sizes.tag_clips)]
        long_file = write_test_audio(folder / "long.flac", sizes.tag_long_seconds, seed=99)
        checkpoints = {name: write_checkpoint(folder / f"{name}.pt", preset) for name, preset in TAGGED.items()}
        result: dict[str, Any] = {
            "clips": sizes.tag_clips, "clip_seconds": 10.0, "long_file_seconds": sizes.tag_long_seconds,
            "sample_rate": CLIP_RATE, "measured": ("seconds of audio per wall-clock second, from opening the files "
                                                   "to tags and events (devinet.Tagger.tag_files, default options)"),
        }
        for device in devices:
            taggers = {name: Tagger.from_checkpoint(path, device=device) for name, path in checkpoints.items()}
            suffix = "" if device == "cpu" else f"_{device}"
            for kind, files, seconds in (("clips", clips, 10.0 * len(clips)),
                                         ("long_file", [long_file], float(sizes.tag_long_seconds))):
                contenders = {name: (lambda t=tagger, f=files: list(t.tag_files(f)))
                              for name, tagger in taggers.items()}
                timings = runner.compare(f"tag {kind} ({device})", contenders, sizes.warmup, sizes.model_repeats)
                for name, timing in timings.items():
                    key = f"{name}_{kind}{suffix}"
                    result[f"{key}_realtime_factor"] = seconds / timing.median_s
                    result[f"{key}_timing"] = asdict(timing)
    return result


def planned_runs(sizes) -> int:
    """Timed and warm-up runs of :func:`tagging` on the CPU (CUDA adds as many)."""
    return 2 * len(TAGGED) * (sizes.warmup + sizes.model_repeats)


def memory_probe(audio: str, checkpoint: str, threads: str) -> dict[str, float]:
    """Tag one file in this (fresh) process; its peak resident memory in MiB (``VmHWM``)."""
    import torch

    from devinet.tagging import Tagger

    torch.set_num_threads(int(threads))
    tagger = Tagger.from_checkpoint(checkpoint)
    result = tagger.tag(audio)
    return {"peak_rss_mb": process_status_mb("VmHWM"),
            "duration_s": result.duration, "frames": int(result.framewise.shape[0])}


def peak_memory_mb(audio: Path, checkpoint: Path, threads: int = 2) -> dict[str, float]:
    """:func:`memory_probe` in a fresh interpreter (the peak of this process would include earlier work)."""
    code = ("import json, sys; from experiments.bench.tagging import memory_probe; "
            "print(json.dumps(memory_probe(*sys.argv[1:])))")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code, str(audio), str(checkpoint), str(threads)], cwd=_REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"tagging memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tagging_memory(runner: Runner, sizes) -> dict[str, Any]:
    """Peak memory of tagging a ``sizes.tag_memory_seconds`` file (crnn_sed) in a fresh process."""
    runner.bar.set_description(f"tagging memory ({sizes.tag_memory_seconds / 60:g} min file, subprocess)")
    with tempfile.TemporaryDirectory(prefix="devinet-bench-tagmem-") as folder:
        folder = Path(folder)
        audio = write_test_audio(folder / "long.flac", sizes.tag_memory_seconds, seed=7)
        checkpoint = write_checkpoint(folder / "crnn_sed.pt", TAGGED["crnn_sed"])
        probe = peak_memory_mb(audio, checkpoint)
    return {**probe, "model": "crnn_sed", "method": "VmHWM of a fresh process that tags the file "
                                                    "(devinet.Tagger.tag, default options, 2 threads)"}


__all__ = ["tagging", "tagging_memory", "planned_runs", "peak_memory_mb", "memory_probe", "write_test_audio",
           "write_checkpoint", "TAGGED"]

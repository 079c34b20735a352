"""Tag recordings and detect their sound events with self-describing devinet checkpoints.

::

    from devinet import Tagger

    tagger = Tagger.from_checkpoint("crnn_sed.pt")      # several paths: their fusion
    result = tagger.tag("street.flac")                  # or tagger.tag(waveform, sample_rate=44100)
    result.tags        # [(label, probability)], most probable first
    result.events      # [SoundEvent(onset, offset, label)], seconds from the start
    result.clipwise    # (C,)    result.framewise (T, C)    result.frame_times (T,) seconds

A recording of any length, rate and channel count: channels averaged, resampled to 16 kHz as
the original (:mod:`devinet.streaming`, block by block in bounded memory), log-mel, the
checkpoint's scaler, the model, CVSSP's post-processing. The rules (docs/tagging.md):

- **Windows.** The model sees windows of its training clips' length (240 frames, 10 s). A
  recording of at most 240 frames is ONE window, zero-padded at its end in the log-mel domain
  before scaling, as the original packer padded clips (:func:`devinet.features.pad_or_truncate`):
  its clip probabilities are exactly the model's on that clip. Longer recordings get a window
  every ``hop`` seconds (default 5 s; whole frames, a multiple of the model's time stride),
  and a last window that ends with the recording (aligned to the stride, so at most
  stride - 1 padded frames).
- **Frame probabilities** of the recording: each output frame is the mean of the outputs of
  every window covering it.
- **Clip probabilities** of the recording: the maximum over windows of each window's clip
  probabilities: a label is as probable as in the 10-s excerpt most likely to hold it, the
  question the model answers for its training clips (a mean over windows would dilute an
  event heard once in a long recording). One window: the model's clip output itself.
- **Fusion** (several checkpoints): their clip and frame probabilities averaged per window,
  before stitching, as the paper fused checkpoints and systems.
- **Times.** Input frame i is at i * 664 / 16000 s (CVSSP's convention: an event's onset is
  step * its first frame). A model that pools time by s (crnn_at: 8) gives one output per s
  input frames; it is placed at their centre, the centre of its receptive field:
  (s * j + (s - 1) / 2) * step.
- **Events**: the frame probabilities at the input frame rate (each output repeated over the
  s input frames it pools, as ``devinet reproduce`` evaluates the 30-frame models), cut to the
  recording's frames, then CVSSP's threshold and smoothing (:mod:`devinet.postprocessing`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from . import __version__
from .errors import ConfigError, DevinetError, FileFormatError
from .features import pad_or_truncate, read_audio
from .model import DeviNet
from .postprocessing import SoundEvent, at_decisions, class_thresholds, detect_events
from .preprocessing import FeatureRecipe, Preprocessing
from .streaming import DEFAULT_BLOCK_SECONDS, LogMelStream, LogMelFrames, Waveform, logmel_of_short_recordings

#: seconds between the starts of consecutive windows of a long recording
DEFAULT_HOP_SECONDS = 5.0
#: windows run through the model at once (from one or several recordings); 16 measured 7-14 %
#: faster than 8 for both presets (docs/benchmarks.md, "Tagging")
DEFAULT_BATCH_SIZE = 16

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class TagResult:
    """What a recording holds, and when.

    Attributes:
        classes: class names, in the order of the probability columns.
        clipwise: (C,) clip probabilities of the recording (max over windows).
        framewise: (T, C) frame probabilities (mean over the windows covering each frame).
        frame_times: (T,) seconds of each frame (see the module's notes).
        tags: (label, probability) of the labels on, most probable first.
        events: detected events, in class then time order.
        duration: seconds of audio.
        sample_rate: the recording's own rate.
        logmel: (frames, 64) unscaled log-mel of the recording, when asked for (plots).
    """

    classes: tuple[str, ...]
    clipwise: np.ndarray
    framewise: np.ndarray
    frame_times: np.ndarray
    tags: list[tuple[str, float]]
    events: list[SoundEvent]
    duration: float
    sample_rate: int
    logmel: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry of ``devinet tag``'s results.json for this recording."""
        return {"duration": self.duration,
                "tags": [{"label": label, "probability": round(float(p), 6)} for label, p in self.tags],
                "events": [{"onset": round(e.onset, 6), "offset": round(e.offset, 6), "label": e.label}
                           for e in self.events],
                "error": None}


@dataclass(frozen=True)
class _Member:
    """One checkpoint of the tagger, its scaler as tensors and its time stride."""

    model: DeviNet
    mean: torch.Tensor
    std: torch.Tensor
    stride: int
    outputs: int  # output frames per window
    source: str


@dataclass(frozen=True)
class _Geometry:
    """Frames of the windows and of the output grid (all in input frames)."""

    window: int  # frames of a window (the training clips')
    grid: int  # input frames per output frame of the (fused) result
    unit: int  # window starts are multiples of this (every member's stride divides it)
    cells: int  # output frames of a window on the grid
    hop: int  # frames between regular window starts

    @property
    def cover(self) -> int:
        """Input frames a window's outputs cover (the window, less frames a floor of pooling drops)."""
        return self.cells * self.grid


class Tagger:
    """Runs one checkpoint, or the fusion of several, on recordings (see the module's notes).

    Args:
        models: DeviNets that carry their preprocessing (``devinet.load`` of a self-describing
            checkpoint); several are fused. They must share class names, feature recipe and
            post-processing.
        device: "cpu" or "cuda".
        hop: seconds between window starts for recordings longer than one window.
        threshold: decision threshold for tags and events (default: the checkpoints').
        batch_size: windows per forward pass.
        block_seconds: audio decoded and resampled at once (memory does not grow with duration).
        optimize: run the models with :meth:`DeviNet.optimize_for_inference` (same outputs up to
            float32 rounding, faster on the CPU).
        sources: names of the models (checkpoint paths), for :meth:`describe`.
    """

    def __init__(self, models: Sequence[DeviNet], *, device: str | torch.device = "cpu",
                 hop: float = DEFAULT_HOP_SECONDS, threshold: float | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, block_seconds: float = DEFAULT_BLOCK_SECONDS,
                 optimize: bool = True, sources: Sequence[str] | None = None):
        if not models:
            raise ConfigError("a Tagger needs at least one model")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        sources = list(sources) if sources is not None else [f"model {k}" for k in range(len(models))]
        self.device = str(torch.device(device))
        self.preprocessing = _common_preprocessing(models, sources)
        post = self.preprocessing.postprocessing
        self.threshold = float(post.threshold if threshold is None else threshold)
        class_thresholds(self.threshold, len(self.classes))  # refuses a threshold outside [0, 1]
        self.batch_size = batch_size
        self.block_seconds = block_seconds
        self._members = [_member(model, source, self.device, optimize) for model, source in zip(models, sources)]
        self._geometry = _geometry(self._members, self.preprocessing.features, hop)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path_or_paths: PathLike | Sequence[PathLike], device: str | torch.device = "cpu",
                        **options: Any) -> "Tagger":
        """A tagger from checkpoint files and model lists (:mod:`devinet.model_list`); several = fusion."""
        from .checkpoint import load
        from .model_list import expand_models

        paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
        checkpoints = expand_models(paths)
        if not checkpoints:
            raise ConfigError("no checkpoint given")
        return cls([load(path) for path in checkpoints], device=device, sources=[str(p) for p in checkpoints],
                   **options)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.preprocessing.classes

    @property
    def hop_seconds(self) -> float:
        return self._geometry.hop * self.preprocessing.features.frame_step

    def describe(self) -> dict[str, Any]:
        """The models and rules, for the records written beside results."""
        features, post, geometry = self.preprocessing.features, self.preprocessing.postprocessing, self._geometry
        return {
            "checkpoints": [m.source for m in self._members],
            "presets": [m.model.config.name for m in self._members],
            "classes": list(self.classes),
            "features": dataclasses.asdict(features),
            "postprocessing": {**dataclasses.asdict(post), "threshold": self.threshold},
            "window_frames": geometry.window,
            "hop_seconds": self.hop_seconds,
            "frame_step_seconds": geometry.grid * features.frame_step,
            "frame_probabilities": "mean over the windows covering each frame",
            "clip_probabilities": "max over windows of the window clip probabilities (one window: the model's own)",
            "fusion": "probabilities averaged over the checkpoints per window" if len(self._members) > 1 else None,
            "device": self.device,
            "devinet_version": __version__,
        }

    # ------------------------------------------------------------------ tagging
    def tag(self, path_or_waveform: PathLike | Waveform, sample_rate: int | None = None,
            keep_logmel: bool = False) -> TagResult:
        """Tag one recording: a sound file's path, or a waveform (samples,) / (samples, channels)
        with its ``sample_rate``. Errors are raised (FileFormatError naming the file, InputError)."""
        job = self._job(path_or_waveform, sample_rate, keep_logmel)
        for _, outcome in self._run_jobs(iter([job])):
            if isinstance(outcome, DevinetError):
                raise outcome
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    def tag_files(self, paths: Iterable[PathLike], keep_logmel: bool = False
                  ) -> Iterator[tuple[PathLike, TagResult | DevinetError]]:
        """Tag sound files, windows of several files batched together; yields ``(path, result)``
        in input order, ``result`` being the error (FileFormatError naming the file) for a file
        that cannot be read. Memory holds the files in flight, not all the results."""
        yield from self._run_jobs(self._file_jobs(paths, keep_logmel))

    def _file_jobs(self, paths: Iterable[PathLike], keep_logmel: bool) -> Iterator["_Job"]:
        """A job per file, in order. Files of at most one block are decoded whole and their
        log-mel computed together (the batched resampler is several times faster than one clip
        at a time; the features are those of a one-block stream); longer ones are streamed."""
        short: list[tuple[str, np.ndarray, int]] = []

        def flush() -> Iterator[_Job]:
            if short:
                computed = logmel_of_short_recordings(short, self.device)
                yield from (_Job(name, frames, self._geometry, keep_logmel) for (name, _, _), frames in
                            zip(short, computed))
                short.clear()

        for path in paths:
            try:
                whole = read_audio(path, max_seconds=self.block_seconds)
                job = self._job(path, None, keep_logmel) if whole is None else None
            except DevinetError as exc:
                whole, job = None, _Job.failed(path, exc)
            if whole is not None:
                short.append((path, *whole))
                if len(short) == self.batch_size or sum(x.shape[0] / r for _, x, r in short) > 4 * self.block_seconds:
                    yield from flush()
                continue
            yield from flush()
            yield job
        yield from flush()

    def _job(self, source: PathLike | Waveform, sample_rate: int | None, keep_logmel: bool) -> "_Job":
        stream = LogMelStream(source, sample_rate, block_seconds=self.block_seconds, device=self.device)
        return _Job(source, stream, self._geometry, keep_logmel)

    def _run_jobs(self, jobs: Iterator["_Job"]) -> Iterator[tuple[Any, TagResult | DevinetError]]:
        pending: deque[_Job] = deque()
        batch: list[tuple[_Job, int, np.ndarray]] = []
        for job in jobs:
            pending.append(job)
            if job.error is not None:  # could not be opened
                yield from self._finished(pending)
                continue
            try:
                for start, window in job.windows():
                    batch.append((job, start, window))
                    job.in_flight += 1
                    if len(batch) == self.batch_size:
                        self._run_batch(batch)
                        batch = []
                        yield from self._finished(pending)
            except DevinetError as exc:
                job.error = exc
                batch = [item for item in batch if item[0] is not job]
            job.closed = True
            yield from self._finished(pending)
        if batch:
            self._run_batch(batch)
        yield from self._finished(pending)

    def _finished(self, pending: deque["_Job"]) -> Iterator[tuple[Any, TagResult | DevinetError]]:
        while pending and pending[0].closed and (pending[0].error is not None or pending[0].in_flight == 0):
            job = pending.popleft()
            yield job.source, job.error if job.error is not None else self._result(job)

    def _run_batch(self, batch: list[tuple["_Job", int, np.ndarray]]) -> None:
        clip, cells = self._forward(np.stack([window for _, _, window in batch]))
        for row, (job, start, _) in enumerate(batch):
            job.add(start, clip[row], cells[row])
            job.in_flight -= 1

    def _forward(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, window, 64) unscaled log-mel -> clip (B, C) and grid frame (B, cells, C) probabilities,
        averaged over the members."""
        geometry = self._geometry
        x = torch.from_numpy(windows).to(self.device)
        clip = cells = None
        with torch.inference_mode():
            for member in self._members:
                out = member.model((x - member.mean) / member.std)
                frames = out["framewise"]
                if member.stride > geometry.grid:
                    frames = frames.repeat_interleave(member.stride // geometry.grid, dim=1)
                frames = frames[:, : geometry.cells]
                clip = out["clipwise"] if clip is None else clip + out["clipwise"]
                cells = frames if cells is None else cells + frames
        count = len(self._members)
        return (clip / count).double().cpu().numpy(), (cells / count).double().cpu().numpy()

    def _result(self, job: "_Job") -> TagResult:
        features, post, geometry = self.preprocessing.features, self.preprocessing.postprocessing, self._geometry
        frames = job.stream.frames
        framewise, clipwise = job.stitched(math.ceil(frames / geometry.grid))
        step = features.frame_step
        frame_times = (np.arange(framewise.shape[0]) * geometry.grid + (geometry.grid - 1) / 2) * step
        at_input_rate = np.repeat(framewise, geometry.grid, axis=0)[:frames]
        events = detect_events(at_input_rate, self.classes, self.threshold, post.n_smooth, post.n_salt, step)
        if post.at_fallback == "argmax":
            on = at_decisions(clipwise[None], self.threshold)[0]
        else:
            on = clipwise > self.threshold
        order = np.argsort(-clipwise, kind="stable")
        tags = [(self.classes[k], float(clipwise[k])) for k in order if on[k]]
        return TagResult(self.classes, clipwise.astype(np.float32), framewise.astype(np.float32),
                         frame_times, tags, events, job.stream.duration, job.stream.sample_rate, job.logmel())


class _Job:
    """One recording in flight: its log-mel stream, its windows and the stitched outputs so far."""

    def __init__(self, source: Any, stream: LogMelStream | LogMelFrames | None, geometry: _Geometry,
                 keep_logmel: bool):
        self.source = source
        self.stream = stream
        self.geometry = geometry
        self.error: DevinetError | None = None
        self.closed = False
        self.in_flight = 0
        self._sum = np.zeros((0, 0))
        self._count = np.zeros(0)
        self._clip: np.ndarray | None = None
        self._logmel: list[np.ndarray] | None = [] if keep_logmel else None

    @classmethod
    def failed(cls, source: Any, error: DevinetError) -> "_Job":
        job = cls(source, None, None, False)  # type: ignore[arg-type]
        job.error, job.closed = error, True
        return job

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first frame, (window, 64) log-mel) of each window, in order (see the module's notes)."""
        g = self.geometry
        held, held_start, start, last = np.zeros((0, 0), np.float32), 0, 0, None
        for block in self.stream:
            if self._logmel is not None:
                self._logmel.append(block)
            held = np.concatenate([held, block]) if held.size else block
            while held_start + held.shape[0] >= start + g.window:
                yield start, held[start - held_start : start - held_start + g.window]
                last, start = start, start + g.hop
            # keep what the next regular window and a last window ending with the recording need
            drop = min(start, held_start + held.shape[0] - g.window) - held_start
            if drop > 0:
                held, held_start = held[drop:], held_start + drop
        frames = self.stream.frames
        if last is None:  # at most one window of frames: one zero-padded clip
            yield 0, pad_or_truncate(held, g.window)
        elif last + g.cover < frames:
            final = math.ceil((frames - g.cover) / g.unit) * g.unit
            yield final, pad_or_truncate(held[final - held_start :], g.window)

    def add(self, start: int, clip: np.ndarray, cells: np.ndarray) -> None:
        first = start // self.geometry.grid
        end = first + cells.shape[0]
        if end > self._count.shape[0]:  # grow geometrically: the outputs of a long recording
            size = max(end, 2 * self._count.shape[0])
            self._sum = np.concatenate([self._sum.reshape(-1, cells.shape[1]),
                                        np.zeros((size - self._count.shape[0], cells.shape[1]))])
            self._count = np.concatenate([self._count, np.zeros(size - self._count.shape[0])])
        self._sum[first:end] += cells
        self._count[first:end] += 1
        self._clip = clip.copy() if self._clip is None else np.maximum(self._clip, clip)

    def stitched(self, cells: int) -> tuple[np.ndarray, np.ndarray]:
        """(cells, C) mean frame probabilities over the windows covering each, and the clip's."""
        count = self._count[:cells]
        if cells == 0 or self._clip is None or count.shape[0] < cells or not np.all(count > 0):
            raise AssertionError("windows do not cover the recording")  # pragma: no cover - a bug if reached
        return self._sum[:cells] / count[:, None], self._clip

    def logmel(self) -> np.ndarray | None:
        if self._logmel is None:
            return None
        return np.concatenate(self._logmel) if self._logmel else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------- checks and set-up
def _common_preprocessing(models: Sequence[DeviNet], sources: Sequence[str]) -> Preprocessing:
    """The preprocessing every model shares (class names, recipe, post-processing); each must
    have a scaler and the original feature recipe (the only one computed here)."""
    first: Preprocessing | None = None
    for model, source in zip(models, sources):
        described = getattr(model, "preprocessing", None)
        if described is None:
            raise FileFormatError(source, "the checkpoint does not describe its preprocessing (class names, scaler); "
                                          "convert it with: devinet convert SRC DST --scaler FILE")
        if described.scaler is None:
            raise FileFormatError(source, "the checkpoint has no scaler, so it cannot run on audio; convert it "
                                          "again with: devinet convert SRC DST --scaler FILE")
        if not dataclasses.replace(described.features, frames=FeatureRecipe().frames).is_original():
            raise FileFormatError(source, f"feature recipe {dataclasses.asdict(described.features)} is not the "
                                          "original one, the only one devinet tag computes")
        if first is None:
            first = described
            continue
        for what in ("classes", "features", "postprocessing"):
            if getattr(described, what) != getattr(first, what):
                raise FileFormatError(source, f"its {what} differ from those of {sources[0]}: fused checkpoints "
                                              "must share class names, feature recipe and post-processing")
    assert first is not None
    return first


def _member(model: DeviNet, source: str, device: str, optimize: bool) -> _Member:
    model = model.to(device).eval()
    if optimize:
        model.optimize_for_inference()
    scaler = model.preprocessing.scaler
    config = model.config
    window = model.preprocessing.features.frames
    if window < config.min_input_frames:
        raise FileFormatError(source, f"windows of {window} frames are too short for the model's time pooling")
    as_tensor = lambda v: torch.as_tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    return _Member(model, as_tensor(scaler.mean), as_tensor(scaler.std), config.time_stride,
                   config.num_frames(window), source)


def _geometry(members: Sequence[_Member], features: FeatureRecipe, hop_seconds: float) -> _Geometry:
    strides = [m.stride for m in members]
    grid, unit = math.gcd(*strides), math.lcm(*strides)
    cells = min(m.outputs * m.stride // grid for m in members)
    if not (isinstance(hop_seconds, (int, float)) and math.isfinite(hop_seconds) and hop_seconds > 0):
        raise ConfigError(f"hop must be a positive number of seconds, got {hop_seconds!r}")
    hop = max(unit, round(hop_seconds / features.frame_step / unit) * unit)
    if hop > cells * grid:
        raise ConfigError(f"hop {hop_seconds:g} s is longer than a window ({cells * grid * features.frame_step:.2f} s): "
                          "frames between windows would get no probabilities")
    return _Geometry(features.frames, grid, unit, cells, hop)


__all__ = ["Tagger", "TagResult", "DEFAULT_HOP_SECONDS", "DEFAULT_BATCH_SIZE"]

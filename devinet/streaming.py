"""Log-mel frames of a recording of any length in bounded memory: decoded, resampled and
transformed block by block.

:class:`LogMelStream` reads a sound file (``soundfile``, blocks of ``block_seconds``) or a
waveform, averages its channels (float64, as the original), resamples it to 16 kHz with the
original's resampler (:mod:`devinet.resampy02`) and yields its log-mel frames (the torch
:class:`devinet.features.LogMel`) as consecutive blocks. Memory holds one block of audio and
its context, whatever the duration.

Equality with whole-file processing:

- A recording of at most one block (60 s by default) is resampled in one piece: exactly
  :func:`devinet.features.extract_logmel_batch`'s features (the packed-feature path up to
  float32 rounding: 7e-4 at most in the log domain on real clips).
- Longer recordings are resampled block by block. Each block is resampled together with
  ``context`` input samples on both sides (more than the filter's reach), so no block edge
  is ever zero-padded; the input is only zero-padded at the recording's own ends, as
  resampy did. What differs from resampling the whole file at once is resampy's float64
  time register (the emulation reproduces its rounding drift, :mod:`devinet.resampy02`): it
  restarts at each block's context, so the 0.3 % or so of outputs where the drift moves a
  table position are those a clip of one block would have, instead of a drift that grows with
  the file (after 10 minutes at 44.1 kHz, 17 % of whole-file outputs; after an hour, 84 %).
  docs/tagging.md gives the measured difference. Rates whose ratio to 16 kHz is exact in
  floating point (48, 32, 16 or 8 kHz) have no drift: block and whole-file results are equal.
- Log-mel frames are computed on the resampled stream every 664 samples, as for a whole file:
  block edges never change a frame.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Iterator, Union

import numpy as np
import torch

from .errors import InputError
from .features import (AudioFileError, LogMel, extract_logmel_batch, mono_samples, open_audio, read_block,
                       resample_kaiser_best)
from .recipe import HOP, N_FFT, SAMPLE_RATE
from .resampy02 import Resample, resample_plan

#: default seconds of audio decoded and resampled at once
DEFAULT_BLOCK_SECONDS = 60.0

Waveform = Union[np.ndarray, torch.Tensor]


class _FileReader:
    """Blocks of a sound file: (n, channels) float64 arrays, then an empty one at the end."""

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        self._handle = open_audio(path, whole=False)  # read block by block: any duration
        self.sample_rate = int(self._handle.samplerate)

    def read(self, frames: int) -> np.ndarray:
        return read_block(self._handle, self.name, frames)

    def close(self) -> None:
        self._handle.close()


class _ArrayReader:
    """Blocks of an in-memory waveform (samples,) or (samples, channels)."""

    def __init__(self, waveform: Waveform, sample_rate: int, name: str = "<waveform>"):
        if isinstance(waveform, torch.Tensor):
            waveform = waveform.detach().cpu().numpy()
        array = np.asarray(waveform)
        if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] == 0):
            raise InputError(f"expected a waveform of shape (samples,) or (samples, channels), got {array.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"expected float samples in [-1, 1] (as soundfile.read gives), got dtype {array.dtype}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
            raise InputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        self.name = name
        self.sample_rate = int(sample_rate)
        self._array = array.reshape(array.shape[0], -1)
        self._position = 0

    def read(self, frames: int) -> np.ndarray:
        block = self._array[self._position : self._position + frames]
        self._position += block.shape[0]
        return np.asarray(block, dtype=np.float64)

    def close(self) -> None:
        pass


@functools.lru_cache(maxsize=8)
def _resampler(orig_sr: int, device: str) -> Resample:
    return Resample(orig_sr).to(device)


@functools.lru_cache(maxsize=2)
def _logmel(device: str) -> LogMel:
    return LogMel().to(device)


class LogMelStream:
    """The log-mel frames (unpadded, unscaled, float32 ``(n, 64)`` blocks) of a file or waveform.

    Iterate once. After the iteration, ``samples`` (input samples), ``sample_rate``,
    ``duration`` (seconds) and ``frames`` (log-mel frames) describe the whole recording.

    Args:
        source: a sound file's path, or a waveform (samples,) / (samples, channels), float.
        sample_rate: the waveform's rate (required for a waveform, not allowed for a path).
        block_seconds: audio decoded and resampled at once.
        device, dtype: where and in which precision the resampler and log-mel run.
    """

    def __init__(self, source: str | os.PathLike | Waveform, sample_rate: int | None = None, *,
                 block_seconds: float = DEFAULT_BLOCK_SECONDS, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        if isinstance(source, (str, os.PathLike)):
            if sample_rate is not None:
                raise InputError("sample_rate is only for waveforms; a file's own rate is used")
            self._reader: _FileReader | _ArrayReader = _FileReader(source)
        else:
            if sample_rate is None:
                raise InputError("sample_rate is required with a waveform")
            self._reader = _ArrayReader(source, sample_rate)
        if not block_seconds > 0:
            raise InputError(f"block_seconds must be positive, got {block_seconds!r}")
        self.name = self._reader.name
        self.sample_rate = self._reader.sample_rate
        self.device = str(torch.device(device))
        self.dtype = dtype
        self.samples = 0
        self.frames = 0
        self._block_seconds = block_seconds

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def close(self) -> None:
        self._reader.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            yield from self._frames(self._resampled_blocks())
        finally:
            self.close()

    # ------------------------------------------------------------------ decoding and resampling
    def _mono_blocks(self, size: int) -> Iterator[np.ndarray]:
        """The recording as float64 mono blocks of ``size`` samples (the last one shorter)."""
        while True:
            block = self._reader.read(size)
            if block.shape[0] == 0:
                break
            mono = mono_samples(block, self.name)
            self.samples += mono.shape[0]
            yield mono
            if block.shape[0] < size:
                break
        if self.samples == 0:
            raise AudioFileError(self.name, "empty", "no audio samples")

    def _resampled_blocks(self) -> Iterator[torch.Tensor]:
        """The recording at 16 kHz, as consecutive 1-D tensors (librosa's zero padding at the end)."""
        rate = self.sample_rate
        if rate == SAMPLE_RATE:
            size = max(1, int(self._block_seconds * rate))
            for mono in self._mono_blocks(size):
                yield torch.from_numpy(mono).to(device=self.device, dtype=self.dtype)
            return
        plan = resample_plan(rate, SAMPLE_RATE)
        # Block starts are multiples of the polyphase period (whole output samples, phase 0);
        # the context reaches beyond the filter's wings on both sides.
        unit = plan.block_inputs if plan.kernel is not None else plan.down
        block = max(1, round(self._block_seconds * rate / unit)) * unit
        context = math.ceil((plan.wing + 2) / plan.down) * plan.down
        held = np.zeros(0)  # input samples from held_start on
        held_start, start, ended = 0, 0, False
        reads = self._mono_blocks(block)
        while True:
            while not ended and held_start + held.shape[0] < start + block + context:
                more = next(reads, None)
                if more is None:
                    ended = True
                else:
                    held = np.concatenate([held, more])
            available = held_start + held.shape[0]
            if available <= start:
                return
            end = min(start + block, available)
            last = ended and end == available
            first = max(0, start - context)
            piece = held[first - held_start : min(end + context, available) - held_start]
            out = self._resample(piece, plan.orig_sr)
            offset = (start - first) * plan.up // plan.down
            yield out[offset:] if last else out[offset : offset + (end - start) * plan.up // plan.down]
            start = end
            keep = max(0, start - context) - held_start
            held, held_start = held[keep:], held_start + keep
            if last:
                return

    def _resample(self, piece: np.ndarray, rate: int) -> torch.Tensor:
        """One piece as the original resampled a clip: (n,) -> (ceil(n * 16000 / rate),)."""
        if resample_plan(rate, SAMPLE_RATE).kernel is None:  # odd rates: the numpy emulation
            return torch.from_numpy(resample_kaiser_best(piece, rate)).to(device=self.device, dtype=self.dtype)
        signal = torch.from_numpy(piece).to(device=self.device, dtype=self.dtype)
        return _resampler(rate, self.device)(signal[None])[0]

    # ------------------------------------------------------------------ frames
    def _frames(self, blocks: Iterator[torch.Tensor]) -> Iterator[np.ndarray]:
        """Log-mel frames of the 16-kHz stream, every 664 samples (frames never pad), in blocks.

        A recording shorter than one window (1024 samples at 16 kHz) is zero-padded to one
        window, as :func:`devinet.features.extract_logmel` does.
        """
        logmel = _logmel(self.device)
        pending = torch.zeros(0, device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            for chunk in blocks:
                pending = torch.cat([pending, chunk]) if pending.numel() else chunk
                if pending.shape[0] < N_FFT:
                    continue
                count = 1 + (pending.shape[0] - N_FFT) // HOP
                frames = logmel(pending[None, : (count - 1) * HOP + N_FFT])[0]
                pending = pending[count * HOP :]
                self.frames += count
                yield frames.float().cpu().numpy()
            if self.frames == 0 and pending.numel():
                padded = torch.nn.functional.pad(pending, (0, N_FFT - pending.shape[0]))
                self.frames = 1
                yield logmel(padded[None])[0].float().cpu().numpy()


class LogMelFrames:
    """The log-mel frames of a recording already computed in one piece (the interface of a
    finished :class:`LogMelStream`; iterating yields all frames as one block)."""

    def __init__(self, name: str, frames: np.ndarray, samples: int, sample_rate: int):
        self.name, self.sample_rate, self.samples = name, sample_rate, samples
        self.frames = frames.shape[0]
        self._logmel = frames

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self._logmel


def logmel_of_short_recordings(recordings: list[tuple[str, np.ndarray, int]], device: str | torch.device = "cpu",
                               dtype: torch.dtype = torch.float32) -> list[LogMelFrames]:
    """Log-mel frames of whole mono recordings ``(name, float64 samples, rate)``, batched
    (:func:`devinet.features.extract_logmel_batch`): what a :class:`LogMelStream` of one block
    gives, much faster for many short files than one stream each."""
    features = extract_logmel_batch([samples for _, samples, _ in recordings], [rate for _, _, rate in recordings],
                                    device=device, dtype=dtype)
    return [LogMelFrames(name, frames, samples.shape[0], rate)
            for (name, samples, rate), frames in zip(recordings, features)]


__all__ = ["LogMelStream", "LogMelFrames", "logmel_of_short_recordings", "DEFAULT_BLOCK_SECONDS"]

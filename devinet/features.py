"""Log-mel features of the CVSSP DCASE 2017 Task 4 system, as its ``prepare_data.py`` made them.

The original recipe (yongxuUSTC/dcase2017_task4_cvssp, ``prepare_data.py`` + ``config.py``):

1. ``soundfile.read`` (float64), stereo -> mono by the channel mean;
2. ``librosa.resample`` to 16 kHz with librosa's default of the time (librosa <= 0.9:
   resampy <= 0.2's ``kaiser_best`` filter), output length ``ceil(n * 16000 / sr)``;
3. ``scipy.signal.spectrogram`` with a symmetric 1024-point Hamming window, 360 samples of
   overlap (hop 664, so 10 s -> 240 frames), no detrending, one-sided, ``mode='magnitude'``
   and the default ``fs=1.0`` (the released script does not pass ``fs``), i.e.
   ``|rfft(window * frame)| / sqrt(sum(window ** 2))``, frames not padded;
4. a 64-band Slaney mel filterbank over 0-8000 Hz (``librosa.filters.mel`` defaults);
5. ``log(mel + 1e-8)`` as float32.

Two implementations of that recipe live here:

- :func:`extract_logmel`, the reference: float64 numpy/scipy/librosa, one clip at a time.
- :class:`Resample` + :class:`LogMel` (torch modules) and :func:`extract_logmel_batch`: the
  same recipe batched in torch, on any device, for training-time and large-scale extraction.

The resampler is the one place where today's libraries differ from the original: resampy
>= 0.3 ships a different ``kaiser_best`` filter and librosa >= 0.10 defaults to soxr. This
module therefore rebuilds the original resampler (same windowed-sinc table, same integer
table stride, same float64 time register) as an exact polyphase filter; on the 12 real
clips of the reference data it reproduces the original features to float32 rounding,
where soxr (librosa's default today) leaves a median absolute log difference of 0.0028.

Heavy optional dependencies (scipy, soundfile, librosa, soxr) are imported inside the
functions that need them: ``import devinet.features`` needs torch and numpy only.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch

from ._io import atomic_path
from .errors import FileFormatError, InputError, MissingDependencyError

#: sample rate of the features (config.sample_rate of the original)
SAMPLE_RATE = 16000
#: STFT window length (config.n_window)
N_FFT = 1024
#: window overlap (config.n_overlap); chosen so that a 10-s clip gives 240 frames
N_OVERLAP = 360
#: hop between frames: N_FFT - N_OVERLAP samples, 0.0415 s
HOP = N_FFT - N_OVERLAP
#: mel bands
N_MELS = 64
FMIN = 0.0
FMAX = 8000.0
#: frames of a packed clip (config.max_len): features are zero-padded or truncated to it
FRAMES = 240
#: added before the log (log(x + 1e-8))
LOG_OFFSET = 1e-8

#: resamplers accepted by :func:`resample` / :func:`extract_logmel`
RESAMPLERS = ("original", "soxr_hq")

# The original resampler: resampy <= 0.2 "kaiser_best" (librosa's default up to 0.9): a
# Kaiser-windowed sinc with 64 zero crossings, 2**9 table entries per crossing.
_NUM_ZEROS = 64
_TABLE_BITS = 9
_KAISER_BETA = 14.769656459379492
_ROLLOFF = 0.9475937167399596
# Beyond this many polyphase phases (e.g. 44101 Hz -> 16 kHz needs 16000) the kernel is too
# large to be worth it; outputs are then computed one by one (same values, slower).
_MAX_PHASES = 2048

ArrayLike = Union[np.ndarray, torch.Tensor]


class AudioFileError(FileFormatError):
    """An audio file that cannot give features; ``kind`` is "missing", "empty" or "unreadable"."""

    def __init__(self, path: str | os.PathLike, kind: str, problem: str):
        self.kind = kind
        super().__init__(path, problem)


# --------------------------------------------------------------------------------------------
# Frame geometry and small helpers


def num_frames(num_samples: int) -> int:
    """Frames of a 16-kHz waveform of ``num_samples`` samples (no padding; >= 1 once padded)."""
    return 1 + (max(num_samples, N_FFT) - N_FFT) // HOP


def resampled_length(num_samples: int, orig_sr: int, target_sr: int = SAMPLE_RATE) -> int:
    """Samples after resampling, as librosa <= 0.9 fixed them: ``ceil(n * target / orig)``."""
    if orig_sr == target_sr:
        return num_samples
    return int(math.ceil(num_samples * (float(target_sr) / orig_sr)))


def pad_or_truncate(features: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """(T, F) -> (frames, F): zero-padded at the end or truncated, as the original packer did."""
    out = np.zeros((frames,) + features.shape[1:], dtype=np.float32)
    keep = min(frames, features.shape[0])
    out[:keep] = features[:keep]
    return out


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module, "features") from None


# --------------------------------------------------------------------------------------------
# Mel filterbank


# Slaney's auditory mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_MEL_LINEAR_STEP = 200.0 / 3
_MEL_LOG_START_HZ = 1000.0
_MEL_LOG_STEP = float(np.log(6.4) / 27.0)
_MEL_LOG_START = _MEL_LOG_START_HZ / _MEL_LINEAR_STEP


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's auditory mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear_step, log_start_hz, log_step, log_start_mel = (
        _MEL_LINEAR_STEP, _MEL_LOG_START_HZ, _MEL_LOG_STEP, _MEL_LOG_START)
    return np.where(
        hz >= log_start_hz,
        log_start_mel + np.log(np.maximum(hz, log_start_hz) / log_start_hz) / log_step,
        hz / linear_step,
    )


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear_step, log_start_hz, log_step, log_start_mel = (
        _MEL_LINEAR_STEP, _MEL_LOG_START_HZ, _MEL_LOG_STEP, _MEL_LOG_START)
    return np.where(
        mel >= log_start_mel,
        log_start_hz * np.exp(log_step * (mel - log_start_mel)),
        mel * linear_step,
    )


def slaney_mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """Slaney-style mel filterbank, shape (n_mels, 1 + n_fft // 2), float64, numpy only.

    Triangles between consecutive points of ``n_mels + 2`` mel-spaced edge frequencies, each
    scaled to unit area (2 / bandwidth): what ``librosa.filters.mel`` builds with its defaults
    (``htk=False, norm='slaney'``); this copy lets the torch front end work without librosa.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


def librosa_mel_filterbank() -> np.ndarray:
    """The original's filterbank: ``librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000)``.

    Shape (64, 513), librosa's default dtype (float32), exactly the call of ``prepare_data.py``.
    """
    librosa = _require("librosa")
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def default_mel_filterbank() -> np.ndarray:
    """librosa's filterbank when librosa is installed, else the identical numpy construction."""
    try:
        return librosa_mel_filterbank()
    except MissingDependencyError:
        return slaney_mel_filterbank()


# --------------------------------------------------------------------------------------------
# The original resampler (resampy <= 0.2 "kaiser_best"), as an exact polyphase filter
#
# resampy computes output t from the float64 time register tau_t (t additions of
# 1 / ratio): with n = floor(tau_t) and frac = scale * (tau_t - n), input x[n - i] is weighted
# by the interpolated table entry at offset(frac) + i * step and x[n + 1 + k] by the one at
# offset(scale - frac) + k * step, where step = int(scale * 512) is truncated (so the filter
# is not exactly the ideal sinc at the output rate; reproducing it matters). For a rational
# ratio up/down the weights repeat every ``up`` outputs: a polyphase FIR. The float register
# drifts from the exact rational time by ~1e-6 samples over 10 s; where that changes n or a
# table offset (about 0.3 % of outputs at 44.1 kHz) the outputs are recomputed one by one.


@dataclass(frozen=True, eq=False)  # hashed by identity: plans are cached per rate pair
class _ResamplePlan:
    """Everything needed to resample ``orig_sr`` -> ``target_sr`` as the original did."""

    orig_sr: int
    target_sr: int
    up: int
    down: int
    scale: float
    step: int
    window: np.ndarray  # (table,) interpolation table (right half of the sinc), scaled
    delta: np.ndarray  # (table,) forward differences of ``window``
    wing: int  # taps of the longest wing (at table offset 0)
    phase_n: np.ndarray | None  # (up,) input index n of each phase, relative to its block start
    phase_offsets: np.ndarray | None  # (up, 2) table offsets (left, right) of each phase
    kernel: np.ndarray | None  # (block_outputs, K) polyphase kernel; None for odd rates (direct only)
    kernel_start: int  # input index of kernel column 0, relative to the block start
    block_outputs: int  # outputs per kernel block: a multiple of up (small ratios are grouped)
    block_inputs: int  # input stride between blocks: block_outputs * down / up

    @property
    def ratio(self) -> float:
        return float(self.target_sr) / self.orig_sr

    def lengths(self, num_samples: int) -> tuple[int, int]:
        """(computed, returned) output samples: resampy's ``int(n * ratio)``, zero-padded by
        librosa to ``ceil(n * ratio)``."""
        return int(num_samples * self.ratio), int(math.ceil(num_samples * self.ratio))

    def wings(self, frac: np.ndarray) -> np.ndarray:
        """(F,) fractional positions -> (F, 2 * wing) weights of inputs n - wing + 1 ... n + wing."""
        table = 2**_TABLE_BITS
        out = np.zeros((frac.shape[0], 2 * self.wing))
        taps = np.arange(self.wing)
        for side, position in enumerate((frac * table, (self.scale - frac) * table)):
            offset = position.astype(np.int64)
            eta = position - offset
            index = offset[:, None] + self.step * taps[None, :]
            valid = taps[None, :] < ((self.window.shape[0] - offset) // self.step)[:, None]
            index = np.where(valid, index, 0)
            weights = np.where(valid, self.window[index] + eta[:, None] * self.delta[index], 0.0)
            if side == 0:  # left wing: x[n - i] sits at column wing - 1 - i
                out[:, : self.wing] = weights[:, ::-1]
            else:  # right wing: x[n + 1 + k] sits at column wing + k
                out[:, self.wing :] = weights
        return out

    def time_register(self, num_outputs: int) -> np.ndarray:
        """resampy's float64 time register for outputs 0 .. num_outputs - 1 (sequential sums)."""
        increment = 1.0 / self.ratio
        register = np.empty(num_outputs)
        register[:1] = 0.0
        np.cumsum(np.full(num_outputs - 1, increment), out=register[1:])
        return register

    def direct(self, register: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outputs computed one by one from their time register values (F,):
        (first input index (F,), weights (F, 2 * wing) of inputs first ... first + 2 * wing - 1)."""
        n = register.astype(np.int64)
        return n - self.wing + 1, self.wings(self.scale * (register - n))

    def irregular(self, num_outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outputs of a kernel plan that the kernel does not reproduce (see the notes above):
        (output indices (F,), first input index (F,), weights (F, 2 * wing))."""
        return _irregular_outputs(self, num_outputs)


@functools.lru_cache(maxsize=16)
def _resample_plan(orig_sr: int, target_sr: int) -> _ResamplePlan:
    if orig_sr <= 0 or target_sr <= 0:
        raise InputError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    ratio = float(target_sr) / orig_sr
    scale = min(1.0, ratio)
    table = 2**_TABLE_BITS
    size = table * _NUM_ZEROS
    taper = np.kaiser(2 * size + 1, _KAISER_BETA)[size:]
    window = _ROLLOFF * np.sinc(_ROLLOFF * np.linspace(0.0, _NUM_ZEROS, size + 1)) * taper
    if ratio < 1:
        window = window * ratio
    delta = np.zeros_like(window)
    delta[:-1] = np.diff(window)
    step = int(scale * table)
    wing = window.shape[0] // step
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    plan = _ResamplePlan(orig_sr, target_sr, up, down, scale, step, window, delta, wing, None, None, None, 0, 0, 0)
    if up > _MAX_PHASES:
        return plan
    # Few phases (48 kHz -> 16 kHz has one) are grouped into blocks of >= 64 outputs, so that
    # the block product is a real matrix product (and a conv1d with enough output channels).
    group = -(-64 // up)
    outputs = np.arange(up * group)
    output_n = (outputs * down) // up
    frac = scale * (((outputs * down) % up) / up)
    offsets = np.stack([(frac * table).astype(np.int64), ((scale - frac) * table).astype(np.int64)], axis=1)
    rows = plan.wings(frac)  # (block, 2 * wing), column c <-> input output_n - wing + 1 + c
    kernel_start = 1 - wing
    kernel = np.zeros((up * group, int(output_n[-1]) + 2 * wing))
    for output, n in enumerate(output_n):
        kernel[output, n : n + 2 * wing] = rows[output]
    phase_n, offsets = output_n[:up], offsets[:up]
    for array in (window, delta, phase_n, offsets, kernel):
        array.setflags(write=False)
    return _ResamplePlan(orig_sr, target_sr, up, down, scale, step, window, delta, wing, phase_n, offsets,
                         kernel, kernel_start, up * group, down * group)


@functools.lru_cache(maxsize=32)
def _irregular_outputs(plan: _ResamplePlan, num_outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    register = plan.time_register(num_outputs)
    n = register.astype(np.int64)
    frac = plan.scale * (register - n)
    table = 2**_TABLE_BITS
    t = np.arange(num_outputs)
    phase = t % plan.up
    exact_n = (t // plan.up) * plan.down + plan.phase_n[phase]
    left = (frac * table).astype(np.int64)
    right = ((plan.scale - frac) * table).astype(np.int64)
    chosen = np.nonzero(
        (n != exact_n) | (left != plan.phase_offsets[phase, 0]) | (right != plan.phase_offsets[phase, 1])
    )[0]
    first, weights = plan.direct(register[chosen])
    for array in (chosen, first, weights):
        array.setflags(write=False)
    return chosen, first, weights


def _resample_original(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """(n,) float64 -> (ceil(n * ratio),) float64, the original resampler (see the notes above)."""
    plan = _resample_plan(orig_sr, target_sr)
    computed, returned = plan.lengths(audio.shape[0])
    out = np.zeros(returned)
    if computed == 0:
        return out
    # Zero padding stands for resampy's truncation of the wings at the signal's edges; the
    # kernel starts wing - 1 samples before a block and spans block_inputs + 2 * wing at most.
    kernel_size = 0 if plan.kernel is None else plan.kernel.shape[1]
    pad = plan.wing
    padded = np.zeros(pad + audio.shape[0] + plan.wing + plan.block_inputs + kernel_size)
    padded[pad : pad + audio.shape[0]] = audio
    taps = np.lib.stride_tricks.sliding_window_view(padded, 2 * plan.wing)
    if plan.kernel is None:  # odd rates: every output directly, in bounded chunks
        register = plan.time_register(computed)
        for begin in range(0, computed, 8192):
            first, weights = plan.direct(register[begin : begin + 8192])
            out[begin : begin + first.shape[0]] = np.einsum("fk,fk->f", taps[first + pad], weights)
        return out
    blocks = -(-computed // plan.block_outputs)
    windows = np.lib.stride_tricks.sliding_window_view(padded[pad + plan.kernel_start :], kernel_size)
    out[:computed] = (windows[:: plan.block_inputs][:blocks] @ plan.kernel.T).reshape(-1)[:computed]
    chosen, first, weights = plan.irregular(computed)
    out[chosen] = np.einsum("fk,fk->f", taps[first + pad], weights)
    return out


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, method: str = "original") -> np.ndarray:
    """Resample a mono float waveform, shape (n,) -> (ceil(n * target_sr / orig_sr),) float64.

    ``method="original"`` reproduces the resampler of the original features (librosa <= 0.9
    with resampy <= 0.2 ``kaiser_best``); ``"soxr_hq"`` is librosa's default today (faster
    on odd rates, median |difference| 0.0028 in the log-mel domain on real clips).
    """
    if method not in RESAMPLERS:
        raise InputError(f"unknown resampler {method!r}; expected one of {', '.join(RESAMPLERS)}")
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise InputError(f"resample expects a mono waveform (n,), got shape {audio.shape}")
    if orig_sr == target_sr:
        return audio
    if method == "original":
        return _resample_original(audio, int(orig_sr), int(target_sr))
    soxr = _require("soxr")
    out = soxr.resample(audio, orig_sr, target_sr, quality="HQ")
    length = resampled_length(audio.shape[0], orig_sr, target_sr)
    return np.pad(out, (0, max(0, length - out.shape[0])))[:length]


# --------------------------------------------------------------------------------------------
# Reference extraction (numpy / scipy / librosa)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a sound file as the original did: float64, channel mean -> (n,), and its rate.

    Raises :class:`AudioFileError` (kind "missing", "empty" or "unreadable") for a file that
    is absent, holds no samples, cannot be decoded or holds non-finite samples.
    """
    soundfile = _require("soundfile")
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(path, "missing", "no such audio file")
    if path.stat().st_size == 0:
        raise AudioFileError(path, "empty", "empty file (0 bytes)")
    try:
        audio, sample_rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise AudioFileError(path, "unreadable", f"cannot decode audio ({detail})") from None
    if audio.shape[0] == 0:
        raise AudioFileError(path, "empty", "no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioFileError(path, "unreadable", "non-finite audio samples (NaN or inf)")
    return _channel_mean(audio), int(sample_rate)


def _channel_mean(audio: np.ndarray) -> np.ndarray:
    """(n, channels) -> (n,) float64: ``np.mean(audio, axis=1)`` of the original, summed
    channel by channel (same additions in the same order, without numpy's slow reduction
    over a short inner axis)."""
    total = np.array(audio[:, 0], dtype=np.float64)
    for channel in range(1, audio.shape[1]):
        total += audio[:, channel]
    return total / audio.shape[1] if audio.shape[1] > 1 else total


def _mono_float64(array: ArrayLike) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float64, channel mean."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim not in (1, 2) or array.shape[0] == 0 or (array.ndim == 2 and array.shape[1] == 0):
        raise InputError(f"expected a non-empty waveform of shape (samples,) or (samples, channels), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"expected float samples in [-1, 1] (as soundfile.read gives), got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InputError("the waveform has non-finite samples (NaN or inf)")
    return _channel_mean(array) if array.ndim == 2 else np.asarray(array, dtype=np.float64)


def extract_logmel(
    path_or_array: str | os.PathLike | ArrayLike, sample_rate: int | None = None, *, resampler: str = "original"
) -> np.ndarray:
    """Log-mel features of one clip with the original recipe (reference implementation).

    Args:
        path_or_array: a sound file, or a waveform (samples,) / (samples, channels) as
            ``soundfile.read`` returns it (float in [-1, 1]).
        sample_rate: the waveform's rate; required for an array, not allowed with a path.
        resampler: "original" (default) or "soxr_hq", see :func:`resample`.

    Returns:
        float32 (frames, 64), unpadded: ``1 + (n16k - 1024) // 664`` frames for n16k samples at
        16 kHz. A waveform shorter than one window (1024 samples at 16 kHz) is zero-padded to
        one window first (the original crashed on such clips).
    """
    if isinstance(path_or_array, (str, os.PathLike)):
        if sample_rate is not None:
            raise InputError("sample_rate is only for waveforms; a file's own rate is used")
        audio, sample_rate = read_audio(path_or_array)
    else:
        if sample_rate is None:
            raise InputError("sample_rate is required when extracting from a waveform")
        audio = _mono_float64(path_or_array)
    audio = resample(audio, int(sample_rate), SAMPLE_RATE, method=resampler)
    if audio.shape[0] < N_FFT:
        audio = np.pad(audio, (0, N_FFT - audio.shape[0]))
    signal = _require("scipy.signal")
    # fs=1.0 (scipy's default) as in the released prepare_data.py: magnitudes are scaled by
    # 1 / sqrt(sum(window**2)); passing fs=16000 would shift every feature by log(sqrt(16000)).
    _, _, magnitude = signal.spectrogram(
        audio, fs=1.0, window=np.hamming(N_FFT), nperseg=N_FFT, noverlap=N_OVERLAP,
        detrend=False, return_onesided=True, mode="magnitude",
    )
    mel = np.ascontiguousarray(magnitude.T) @ _reference_filterbank().T
    return np.log(mel + LOG_OFFSET).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _reference_filterbank() -> np.ndarray:
    # np.dot(float64, float32) in the original upcast the float32 weights: same values, and
    # an explicit float64 copy keeps the product on the BLAS path.
    return librosa_mel_filterbank().astype(np.float64)


# --------------------------------------------------------------------------------------------
# Torch implementation (batched, any device)


class Resample(torch.nn.Module):
    """The original resampler as a torch module: (N, n) at ``orig_sr`` -> (N, ceil(n * ratio)).

    The polyphase kernel applied to strided windows of the input (one matrix product per
    group of phases), plus the few outputs where the original's float time register departs
    from exact rational time, recomputed from a small cached table. Rates needing more than
    2048 phases are refused (:func:`extract_logmel_batch` resamples those with the numpy
    reference instead).

    Each row of the kernel is non-zero on a band of ``2 * wing`` inputs that moves with the
    phase, so the kernel is split into :data:`KERNEL_GROUPS` groups of consecutive phases,
    each applied to the input span its band covers: at 44.1 kHz two groups skip 28 % of the
    dense kernel's multiply-adds, and more, smaller products were slower (measured).
    """

    #: groups of consecutive phases, each applied as its own matrix product
    KERNEL_GROUPS = 2

    def __init__(self, orig_sr: int, target_sr: int = SAMPLE_RATE):
        super().__init__()
        self.plan = _resample_plan(int(orig_sr), int(target_sr))
        if self.plan.kernel is None:
            raise InputError(f"{orig_sr} Hz -> {target_sr} Hz needs {self.plan.up} polyphase phases "
                             f"(more than {_MAX_PHASES}); use devinet.features.resample")
        kernel = self.plan.kernel
        edges = np.linspace(0, kernel.shape[0], min(self.KERNEL_GROUPS, kernel.shape[0]) + 1).astype(int)
        #: per group: (first output, end output, first input column of its band)
        self.groups: list[tuple[int, int, int]] = []
        for index, (first, end) in enumerate(zip(edges[:-1], edges[1:])):
            columns = np.nonzero(kernel[first:end].any(axis=0))[0]
            low, high = int(columns[0]), int(columns[-1]) + 1
            self.groups.append((int(first), int(end), low))
            # (band width, phases) float64, cast to the input's dtype at use; not persistent:
            # fully determined by the two rates.
            weights = torch.from_numpy(np.ascontiguousarray(kernel[first:end, low:high].T))
            self.register_buffer(f"kernel_{index}", weights, persistent=False)

    def extra_repr(self) -> str:
        return f"orig_sr={self.plan.orig_sr}, target_sr={self.plan.target_sr}, phases={self.plan.up}"

    @property
    def left_pad(self) -> int:
        """Zeros :meth:`resample_padded` expects before each clip's first sample."""
        return self.plan.wing

    def padded_length(self, samples: int) -> int:
        """Length of the zero-padded rows :meth:`resample_padded` expects for ``samples`` inputs:
        room for the wings and the last block, rounded up to whole blocks of input."""
        plan = self.plan
        length = plan.wing + samples + plan.wing + plan.block_inputs + plan.kernel.shape[1]
        return -(-length // plan.block_inputs) * plan.block_inputs

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(N, n) -> (N, ceil(n * ratio)); clips shorter than n (``lengths``) are zero beyond their end.

        Samples past a clip's own ``int(len * ratio)`` are zero, as librosa's padding made them.
        """
        if waveforms.ndim != 2:
            raise InputError(f"Resample expects (N, samples), got shape {tuple(waveforms.shape)}")
        samples = waveforms.shape[1]
        # Zero padding stands for resampy's truncation of the wings at the signal's edges.
        padded = torch.nn.functional.pad(waveforms, (self.left_pad, self.padded_length(samples) - samples - self.left_pad))
        return self.resample_padded(padded, samples, lengths)

    def resample_padded(self, padded: torch.Tensor, samples: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` on clips already laid out as ``padded[:, left_pad : left_pad + samples]``
        with zeros around them (contiguous, ``padded_length(samples)`` columns): saves a copy."""
        plan = self.plan
        batch = padded.shape[0]
        if padded.ndim != 2 or padded.shape[1] != self.padded_length(samples) or not padded.is_contiguous():
            raise InputError(f"expected contiguous ({batch}, {self.padded_length(samples)}) padded clips, "
                             f"got {tuple(padded.shape)}")
        lengths = torch.full((batch,), samples, dtype=torch.long) if lengths is None else lengths.cpu()
        computed = [plan.lengths(int(n))[0] for n in lengths]
        returned = plan.lengths(samples)[1]
        most = max(computed, default=0)
        if most == 0:
            return padded.new_zeros((batch, returned))
        # The batch as one (rows, block_inputs) matrix: clip n's block b is row n * rows + b, and
        # the input window of a kernel column range is the same matrix shifted by its offset.
        # Each group of phases and each block_inputs-wide slice of its band is then one plain
        # matrix product over every block of every clip, with no copy of overlapping windows.
        step, rows = plan.block_inputs, padded.shape[1] // plan.block_inputs
        flat = padded.view(-1)
        phases = padded.new_zeros((batch * rows, plan.block_outputs))
        start = self.left_pad + plan.kernel_start
        for index, (first, end, low) in enumerate(self.groups):
            weights = getattr(self, f"kernel_{index}").to(padded.dtype)
            for column in range(0, weights.shape[0], step):
                offset = start + low + column
                width = min(step, weights.shape[0] - column)
                count = (flat.shape[0] - offset) // step  # rows that fit; the last clip's tail rows drop out
                windows = flat[offset : offset + count * step].view(count, step)[:, :width]
                phases[:count, first:end].addmm_(windows, weights[column : column + width])
        out = phases.view(batch, rows * plan.block_outputs)  # time order: block b, phase p -> b * up + p
        chosen, first_input, weights = plan.irregular(most)
        if chosen.shape[0]:
            device = padded.device
            # (N, F, 2 * wing): the input span of each irregular output, gathered from a view.
            taps = padded.unfold(1, weights.shape[1], 1)[:, torch.from_numpy(first_input + self.left_pad).to(device)]
            values = torch.einsum("nfk,fk->nf", taps, torch.from_numpy(np.array(weights)).to(device=device, dtype=padded.dtype))
            out[:, torch.from_numpy(np.array(chosen)).to(device)] = values
        for row, end in enumerate(computed):  # librosa's zero padding, and beyond a shorter clip's end
            out[row, end:] = 0
        return out[:, :returned]


class LogMel(torch.nn.Module):
    """The original log-mel front end in torch: (N, samples) at 16 kHz -> (N, frames, 64).

    ``frames = 1 + (samples - 1024) // 664`` (no padding, like scipy); ``samples`` must be at
    least 1024. The window (pre-scaled by 1 / sqrt(sum(window**2)), scipy's scaling with
    fs=1) and the mel filterbank (64, 513) are float64 non-persistent buffers: they follow
    ``.to(device)``, never enter a checkpoint, and are cast to the input's dtype at use, so
    float32 input computes in float32 and float64 input matches the reference to ~1e-9.

    Args:
        filterbank: (64, 513) mel weights; default: librosa's when installed, else the
            identical :func:`slaney_mel_filterbank`.
    """

    def __init__(self, filterbank: np.ndarray | None = None):
        super().__init__()
        weights = default_mel_filterbank() if filterbank is None else np.asarray(filterbank)
        if weights.shape != (N_MELS, N_FFT // 2 + 1):
            raise InputError(f"filterbank must have shape ({N_MELS}, {N_FFT // 2 + 1}), got {weights.shape}")
        window = torch.hamming_window(N_FFT, periodic=False, dtype=torch.float64)
        window = window / window.square().sum().sqrt()
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(np.asarray(weights, dtype=np.float64)), persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(N, samples) float -> (N, frames, 64) log-mel, in the input's floating dtype."""
        if waveforms.ndim != 2:
            raise InputError(f"LogMel expects (N, samples), got shape {tuple(waveforms.shape)}")
        if waveforms.shape[1] < N_FFT:
            raise InputError(f"LogMel needs at least {N_FFT} samples per clip, got {waveforms.shape[1]}")
        if not waveforms.is_floating_point():
            raise InputError(f"LogMel expects float samples in [-1, 1], got {waveforms.dtype}")
        window, mel_fb = self.window.to(waveforms.dtype), self.mel_fb.to(waveforms.dtype)
        # scipy's frames (no padding): strided views, one batched real FFT. |X| as
        # sqrt(re^2 + im^2) in place: 2.7x faster than hypot or complex abs here (measured on
        # 8 x 240 x 513 bins), within one rounding of them; the squares could overflow only for
        # spectra above 1e19 (float32), far beyond any waveform in [-1, 1].
        frames = waveforms.unfold(1, N_FFT, HOP)  # (N, frames, 1024), a view
        spectrum = torch.view_as_real(torch.fft.rfft(frames * window, dim=-1))  # (N, frames, 513, 2)
        real, imag = spectrum[..., 0], spectrum[..., 1]
        magnitude = (real * real).addcmul_(imag, imag).sqrt_()
        mel = torch.matmul(magnitude, mel_fb.t())  # (N, frames, 64)
        return mel.add_(LOG_OFFSET).log_()


@functools.lru_cache(maxsize=8)
def _cached_modules(device: str, orig_sr: int | None):
    return (LogMel() if orig_sr is None else Resample(orig_sr)).to(device=device)


def extract_logmel_batch(
    waveforms: Sequence[ArrayLike],
    sample_rate: int | Sequence[int] = SAMPLE_RATE,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[np.ndarray]:
    """Log-mel features of many clips with the torch modules (same recipe as :func:`extract_logmel`).

    Args:
        waveforms: clips of shape (samples,) or (samples, channels) (channel mean), any lengths.
        sample_rate: one rate for all clips or one per clip; clips are grouped by rate.
        device: where to compute ("cuda" for large-scale extraction).
        dtype: torch.float32 (fast; measured max |difference| to the reference 7e-4, mean 8e-7
            on real clips) or torch.float64 (equal to the reference up to float32 rounding).

    Returns:
        One float32 (frames_i, 64) array per clip, unpadded, in input order.
    """
    rates = [int(sample_rate)] * len(waveforms) if isinstance(sample_rate, (int, np.integer)) else [int(r) for r in sample_rate]
    if len(rates) != len(waveforms):
        raise InputError(f"{len(waveforms)} waveforms but {len(rates)} sample rates")
    device = str(torch.device(device))
    clips = [_mono_float64(w) for w in waveforms]
    results: list[np.ndarray | None] = [None] * len(clips)
    logmel = _cached_modules(device, None)
    for rate in sorted(set(rates)):
        members = [i for i, r in enumerate(rates) if r == rate]
        with torch.no_grad():
            # (N, samples) at 16 kHz, each clip followed by zeros, and each clip's own length;
            # the zeros leave a clip's own frames unchanged (frames never pad).
            signals, lengths = _to_16k([clips[i] for i in members], rate, device, dtype)
            if signals.shape[1] < N_FFT:
                signals = torch.nn.functional.pad(signals, (0, N_FFT - signals.shape[1]))
            features = logmel(signals).float().cpu().numpy()
        for row, index in enumerate(members):
            results[index] = features[row, : num_frames(max(lengths[row], N_FFT))].copy()
    return results  # type: ignore[return-value]


def _to_16k(clips: list[np.ndarray], rate: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
    """Clips at ``rate`` -> ((N, longest) batch at 16 kHz, zero after each clip, [16-kHz length of each])."""
    if rate == SAMPLE_RATE:
        batch = torch.zeros((len(clips), max(c.shape[0] for c in clips)), dtype=dtype, device=device)
        for row, clip in enumerate(clips):
            batch[row, : clip.shape[0]] = torch.from_numpy(clip)
        return batch, [c.shape[0] for c in clips]
    plan = _resample_plan(rate, SAMPLE_RATE)
    lengths = [plan.lengths(c.shape[0])[1] for c in clips]
    if plan.kernel is None:
        batch = torch.zeros((len(clips), max(lengths)), dtype=dtype, device=device)
        for row, clip in enumerate(clips):
            batch[row, : lengths[row]] = torch.from_numpy(resample(clip, rate))
        return batch, lengths
    module = _cached_modules(device, rate)
    samples = max(c.shape[0] for c in clips)
    # The resampler's zero-padded layout, filled in place: no intermediate batch.
    padded = torch.zeros((len(clips), module.padded_length(samples)), dtype=dtype, device=device)
    for row, clip in enumerate(clips):
        padded[row, module.left_pad : module.left_pad + clip.shape[0]] = torch.from_numpy(clip)
    return module.resample_padded(padded, samples, torch.tensor([c.shape[0] for c in clips])), lengths


# --------------------------------------------------------------------------------------------
# Per-mel-bin standardisation


@dataclass
class Scaler:
    """Per mel bin mean and standard deviation, fitted on the training split.

    Like the original's ``sklearn.preprocessing.StandardScaler``: population std (ddof 0), a
    zero std replaced by 1. Saved as plain arrays (``.npz`` or ``.json``), never pickled.

    Attributes:
        mean: (F,) float64.
        std: (F,) float64, > 0.
        count: number of frames it was fitted on.
    """

    mean: np.ndarray
    std: np.ndarray
    count: int = 0

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise InputError(f"scaler mean and std must be 1-D of equal length, got {self.mean.shape} and {self.std.shape}")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise InputError("scaler mean must be finite and std finite and positive")

    @classmethod
    def fit(cls, batches: ArrayLike | Iterable[ArrayLike]) -> "Scaler":
        """Fit on an array (..., F) or on an iterable of such arrays (streamed, float64 merges)."""
        if isinstance(batches, (np.ndarray, torch.Tensor)):
            batches = [batches]
        count, mean, m2 = 0, None, None
        for batch in batches:
            if isinstance(batch, torch.Tensor):
                batch = batch.detach().cpu().numpy()
            frames = np.asarray(batch, dtype=np.float64).reshape(-1, np.shape(batch)[-1])
            if frames.shape[0] == 0:
                continue
            batch_mean = frames.mean(axis=0)
            batch_m2 = np.square(frames - batch_mean).sum(axis=0)
            if mean is None:
                count, mean, m2 = frames.shape[0], batch_mean, batch_m2
                continue
            # Chan et al.'s pairwise update: exact merging of (count, mean, M2) summaries.
            total = count + frames.shape[0]
            shift = batch_mean - mean
            mean = mean + shift * (frames.shape[0] / total)
            m2 = m2 + batch_m2 + np.square(shift) * (count * frames.shape[0] / total)
            count = total
        if mean is None:
            raise InputError("cannot fit a scaler on no frames")
        std = np.sqrt(m2 / count)
        return cls(mean, np.where(std > 0, std, 1.0), count)

    def transform(self, features: ArrayLike) -> ArrayLike:
        """(..., F) -> (features - mean) / std, same type (numpy or torch), dtype and device."""
        if features.shape[-1] != self.mean.shape[0]:
            raise InputError(f"features have {features.shape[-1]} bins, the scaler {self.mean.shape[0]}")
        if isinstance(features, torch.Tensor):
            mean = torch.as_tensor(self.mean, dtype=features.dtype, device=features.device)
            std = torch.as_tensor(self.std, dtype=features.dtype, device=features.device)
            return (features - mean) / std
        features = np.asarray(features)
        dtype = features.dtype if np.issubdtype(features.dtype, np.floating) else np.float64
        return ((features - self.mean) / self.std).astype(dtype, copy=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` (arrays mean, std, count) or ``.json``, atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".json"):
            raise InputError(f"{path}: a scaler is saved as .npz or .json")
        with atomic_path(path, suffix=suffix) as tmp:
            if suffix == ".npz":
                with open(tmp, "wb") as handle:
                    np.savez(handle, mean=self.mean, std=self.std, count=np.int64(self.count))
            else:
                document = {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": int(self.count)}
                tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scaler":
        """Read a scaler written by :meth:`save` (no pickle is ever loaded)."""
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(path, "no such scaler file")
        try:
            if path.suffix.lower() == ".json":
                document = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(document, dict):
                    raise ValueError("not a JSON object")
                mean, std, count = document["mean"], document["std"], document.get("count", 0)
            else:
                with np.load(path, allow_pickle=False) as arrays:
                    mean, std = arrays["mean"], arrays["std"]
                    count = arrays["count"] if "count" in arrays.files else 0
            return cls(np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), int(count))
        except (KeyError, ValueError, TypeError, OSError, InputError) as exc:
            raise FileFormatError(path, f"not a scaler file ({exc})") from None


__all__ = [
    "SAMPLE_RATE", "N_FFT", "N_OVERLAP", "HOP", "N_MELS", "FMIN", "FMAX", "FRAMES", "LOG_OFFSET", "RESAMPLERS",
    "AudioFileError", "num_frames", "resampled_length", "pad_or_truncate",
    "slaney_mel_filterbank", "librosa_mel_filterbank", "default_mel_filterbank",
    "resample", "read_audio", "extract_logmel",
    "Resample", "LogMel", "extract_logmel_batch", "Scaler",
]

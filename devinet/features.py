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

The resampler is the one place where today's libraries differ from the original; both
implementations use the exact emulation of the original's in :mod:`devinet.resampy02`
(soxr, librosa's default today, is available as ``resampler="soxr_hq"``). Per-mel-bin
standardisation is :mod:`devinet.scaler`.

Heavy optional dependencies (scipy, soundfile, librosa, soxr) are imported inside the
functions that need them: ``import devinet.features`` needs torch and numpy only.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from . import limits
from .errors import FileFormatError, InputError, MissingDependencyError, one_line
from .recipe import FMAX, FMIN, FRAME_STEP_SEC, FRAMES, HOP, LOG_OFFSET, N_FFT, N_MELS, N_OVERLAP, SAMPLE_RATE  # noqa: F401
from .resampy02 import Resample, resample_kaiser_best, resample_plan
from .scaler import Scaler  # noqa: F401 (re-exported: the features' standardisation)

#: resamplers of :func:`resample` / :func:`extract_logmel`: an exact emulation of the original
#: features' (resampy 0.2 kaiser_best, :mod:`devinet.resampy02`), or librosa's default today
RESAMPLERS = ("resampy02_kaiser_best", "soxr_hq")
ORIGINAL_RESAMPLER = RESAMPLERS[0]
#: earlier names still accepted
_RESAMPLER_ALIASES = {"original": ORIGINAL_RESAMPLER}

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


def canonical_resampler(name: str) -> str:
    """The name of a resampler of :data:`RESAMPLERS` ("original" is read as the emulation of resampy 0.2)."""
    name = _RESAMPLER_ALIASES.get(name, name)
    if name not in RESAMPLERS:
        raise InputError(f"unknown resampler {name!r}; expected one of {', '.join(RESAMPLERS)}")
    return name


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE,
             method: str = ORIGINAL_RESAMPLER) -> np.ndarray:
    """Resample a mono float waveform, shape (n,) -> (ceil(n * target_sr / orig_sr),) float64.

    ``method="resampy02_kaiser_best"`` reproduces the resampler of the original features
    (librosa <= 0.9 with resampy 0.2 ``kaiser_best``, :mod:`devinet.resampy02`); ``"soxr_hq"``
    is librosa's default today (faster on odd rates, median |difference| 0.0028 in the log-mel
    domain on real clips).
    """
    method = canonical_resampler(method)
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise InputError(f"resample expects a mono waveform (n,), got shape {audio.shape}")
    if orig_sr == target_sr:
        return audio
    if method == ORIGINAL_RESAMPLER:
        return resample_kaiser_best(audio, int(orig_sr), int(target_sr))
    soxr = _require("soxr")
    out = soxr.resample(audio, orig_sr, target_sr, quality="HQ")
    length = resampled_length(audio.shape[0], orig_sr, target_sr)
    return np.pad(out, (0, max(0, length - out.shape[0])))[:length]


# --------------------------------------------------------------------------------------------
# Reference extraction (numpy / scipy / librosa)


def check_sample_rate(rate: int) -> None:
    """Refuse a sample rate outside ``limits.MIN_SAMPLE_RATE`` .. ``limits.MAX_SAMPLE_RATE`` (InputError)."""
    if not limits.MIN_SAMPLE_RATE <= rate <= limits.MAX_SAMPLE_RATE:
        raise InputError(f"sample rate {rate:,} Hz is outside the {limits.MIN_SAMPLE_RATE:,}-"
                         f"{limits.MAX_SAMPLE_RATE:,} Hz accepted")


def check_audio_file(path: str | os.PathLike, whole: bool = True) -> object:
    """What a sound file's header declares (``soundfile.info``, returned), checked before anything
    is decoded.

    Raises :class:`AudioFileError`: "missing" (no such file, or a link to nothing), "empty"
    (0 bytes), "unreadable" (not a regular file: a FIFO would block the reader forever; no
    readable header; a rate outside the accepted range; and, when the ``whole`` file is to be
    decoded at once, longer than ``limits.MAX_CLIP_SECONDS`` or more samples than
    ``limits.MAX_DECODED_SAMPLES``; files read block by block may be longer).
    """
    soundfile = _require("soundfile")
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise AudioFileError(path, "missing", "no such audio file") from None
    except OSError as exc:
        raise AudioFileError(path, "unreadable", f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(status.st_mode):
        raise AudioFileError(path, "unreadable", "not a regular file (a FIFO, device or socket)")
    if status.st_size == 0:
        raise AudioFileError(path, "empty", "empty file (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioFileError(path, "unreadable", f"cannot decode audio ({_decode_detail(exc)})") from None
    try:
        check_sample_rate(info.samplerate)
    except InputError as exc:
        raise AudioFileError(path, "unreadable", str(exc)) from None
    seconds = info.frames / info.samplerate
    if whole and seconds > limits.MAX_CLIP_SECONDS:
        raise AudioFileError(path, "unreadable", f"too long to decode: {seconds:.0f} s (the limit is "
                                                 f"{limits.MAX_CLIP_SECONDS:.0f} s; only the first "
                                                 f"{FRAMES * HOP / SAMPLE_RATE:.0f} s are packed: trim it)")
    if whole and info.frames * info.channels > limits.MAX_DECODED_SAMPLES:
        raise AudioFileError(path, "unreadable", f"too many samples to decode: {info.frames:,} frames of "
                                                 f"{info.channels} channels (the limit is "
                                                 f"{limits.MAX_DECODED_SAMPLES:,} samples: trim it)")
    return info


def open_audio(path: str | os.PathLike, whole: bool = True):
    """Open a sound file for reading (``soundfile.SoundFile``) once :func:`check_audio_file` accepts
    it (``whole``: it is to be decoded at once), or raise :class:`AudioFileError` naming it."""
    soundfile = _require("soundfile")
    path = Path(path)
    check_audio_file(path, whole)
    try:
        return soundfile.SoundFile(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioFileError(path, "unreadable", f"cannot decode audio ({_decode_detail(exc)})") from None


def _decode_detail(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


def read_audio(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int] | None:
    """Read a sound file as the original did: float64, channel mean -> (n,), and its rate.

    Raises :class:`AudioFileError` (kind "missing", "empty" or "unreadable") for a file that
    :func:`check_audio_file` refuses, that holds no samples, cannot be decoded or holds
    non-finite samples. With ``max_seconds``, a file declaring a longer duration is not
    decoded: None is returned (read it block by block instead).
    """
    path = Path(path)
    with open_audio(path, whole=max_seconds is None) as handle:
        if max_seconds is not None and handle.frames > max_seconds * handle.samplerate:
            return None
        audio = read_block(handle, path, -1)
        return mono_samples(audio, path), int(handle.samplerate)


def read_block(handle, path: str | os.PathLike, frames: int) -> np.ndarray:
    """Up to ``frames`` samples (-1: all) from an open sound file, (n, channels) float64."""
    soundfile = _require("soundfile")
    try:
        return handle.read(frames, dtype="float64", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioFileError(path, "unreadable", f"cannot decode audio ({_decode_detail(exc)})") from None


def mono_samples(audio: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """(n, channels) decoded samples of ``path`` -> (n,) float64 channel mean; no samples or
    non-finite ones are an :class:`AudioFileError`."""
    if audio.shape[0] == 0:
        raise AudioFileError(path, "empty", "no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioFileError(path, "unreadable", "non-finite audio samples (NaN or inf)")
    return _channel_mean(audio)


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
    path_or_array: str | os.PathLike | ArrayLike, sample_rate: int | None = None, *, resampler: str = ORIGINAL_RESAMPLER
) -> np.ndarray:
    """Log-mel features of one clip with the original recipe (reference implementation).

    Args:
        path_or_array: a sound file, or a waveform (samples,) / (samples, channels) as
            ``soundfile.read`` returns it (float in [-1, 1]).
        sample_rate: the waveform's rate; required for an array, not allowed with a path.
        resampler: "resampy02_kaiser_best" (default: the original's) or "soxr_hq", see :func:`resample`.

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
        check_sample_rate(int(sample_rate))
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
        # sqrt(re^2 + im^2) in place (faster than hypot or complex abs, within one rounding of
        # them; docs/benchmarks.md); the squares overflow only for spectra above 1e19 (float32),
        # far beyond any waveform in [-1, 1].
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
        dtype: torch.float32 (fast; close to the reference, not equal: figures in
            docs/benchmarks.md, "Code choices") or torch.float64 (equal to the reference up to
            float32 rounding).

    Returns:
        One float32 (frames_i, 64) array per clip, unpadded, in input order.
    """
    rates = [int(sample_rate)] * len(waveforms) if isinstance(sample_rate, (int, np.integer)) else [int(r) for r in sample_rate]
    if len(rates) != len(waveforms):
        raise InputError(f"{len(waveforms)} waveforms but {len(rates)} sample rates")
    for rate in set(rates):
        check_sample_rate(rate)
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
    plan = resample_plan(rate, SAMPLE_RATE)
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


__all__ = [
    "SAMPLE_RATE", "N_FFT", "N_OVERLAP", "HOP", "N_MELS", "FMIN", "FMAX", "FRAMES", "LOG_OFFSET", "RESAMPLERS",
    "ORIGINAL_RESAMPLER", "canonical_resampler",
    "AudioFileError", "num_frames", "resampled_length", "pad_or_truncate", "check_sample_rate", "check_audio_file",
    "slaney_mel_filterbank", "librosa_mel_filterbank", "default_mel_filterbank",
    "resample", "open_audio", "read_audio", "read_block", "mono_samples", "extract_logmel",
    "Resample", "LogMel", "extract_logmel_batch", "Scaler",
]

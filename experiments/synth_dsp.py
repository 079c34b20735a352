"""Signal primitives of the synthetic dataset's sound synthesizers (experiments.synth_sounds).

Random draws, tones, envelopes, coloured noise, filters, struck modes, impulse trains,
reverberation and a moving source's Doppler pass-by: numpy and scipy only, float64 signals
of shape (n,) at sample rate ``sr``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

#: in air, m/s (the Doppler shift of :func:`pass_by`)
_SPEED_OF_SOUND = 343.0


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def time_axis(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def unit_rms(x: np.ndarray) -> np.ndarray:
    level = rms(x)
    return x / level if level > 0 else x


_TABLE_SIZE = 4096


def harmonic_tone(freq: np.ndarray, amps, sr: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Harmonic tone ``sum_k amps[k-1] * sin(k * phase + phi_k)``, shape ``freq.shape``.

    ``freq`` (n,) is the instantaneous fundamental in Hz. Harmonics that would pass 0.45 of
    the sample rate at the highest fundamental are left out, so a sweep never aliases. One
    period is tabulated and read at the running phase (linear interpolation), so the cost
    does not grow with the number of harmonics; ``rng`` draws the harmonics' phases.
    """
    top = float(np.max(freq))
    table_phase = 2 * np.pi * np.arange(_TABLE_SIZE) / _TABLE_SIZE
    table = np.zeros(_TABLE_SIZE + 1)
    for k, amp in enumerate(amps, start=1):
        if k * top >= 0.45 * sr:
            break
        offset = rng.uniform(0, 2 * np.pi) if rng is not None else 0.0
        table[:-1] += amp * np.sin(k * table_phase + offset)
    table[-1] = table[0]
    position = (np.cumsum(freq) / sr % 1.0) * _TABLE_SIZE
    index = position.astype(np.int64)
    fraction = position - index
    return table[index] * (1 - fraction) + table[index + 1] * fraction


def envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine attack and release (seconds) around a flat top, shape (n,)."""
    env = np.ones(n)
    m = min(n, max(1, int(round(attack * sr))))
    env[:m] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
    m = min(n, max(1, int(round(release * sr))))
    env[n - m:] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(m) + 1) / m)
    return env


def smooth_curve(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """Smooth random curve in [-1, 1], shape (n,): control points every ``1/rate`` s, cosine-interpolated.

    The cosine interpolation is evaluated every 32 samples and joined linearly in between
    (a curve slower than 50 Hz is unchanged by that, and it costs a tenth).
    """
    step = 32
    points = rng.uniform(-1.0, 1.0, int(np.ceil(n / sr * rate)) + 3)
    position = np.arange(n // step + 2) * (step / sr * rate)
    index = position.astype(int)
    weight = 0.5 - 0.5 * np.cos(np.pi * (position - index))
    coarse = points[index] * (1 - weight) + points[index + 1] * weight
    ramp = np.arange(step) / step
    return (coarse[:-1, None] + np.diff(coarse)[:, None] * ramp[None, :]).ravel()[:n]


def butterworth_gain(freqs: np.ndarray, low: float | None, high: float | None, order: int) -> np.ndarray:
    """Magnitude response of a Butterworth highpass at ``low`` and lowpass at ``high`` (Hz; None: no edge)."""
    gain = np.ones_like(freqs)
    if high is not None:
        gain /= np.sqrt(1 + (freqs / high) ** (2 * order))
    if low is not None:
        gain /= np.sqrt(1 + (low / np.maximum(freqs, 1e-3)) ** (2 * order))
    return gain


def white_spectrum(rng: np.random.Generator, bins: int) -> np.ndarray:
    """Complex Gaussian spectrum (complex64; single precision halves the FFT cost, noise needs no more)."""
    spectrum = np.empty(bins, dtype=np.complex64)
    spectrum.real = rng.standard_normal(bins, dtype=np.float32)
    spectrum.imag = rng.standard_normal(bins, dtype=np.float32)
    return spectrum


def shaped_noise(rng: np.random.Generator, n: int, sr: int, beta: float = 0.0, low: float | None = None,
                 high: float | None = None, order: int = 2) -> np.ndarray:
    """Unit-RMS Gaussian noise, shape (n,), with power spectrum ``f**-beta`` (0 white, 1 pink, 2 brown)
    through Butterworth band edges ``low``/``high`` (Hz).

    Drawn directly in the frequency domain (a white Gaussian spectrum, shaped, one inverse FFT).
    """
    freqs = sp_fft.rfftfreq(n, 1 / sr).astype(np.float32)
    gain = butterworth_gain(freqs, low, high, order)
    if beta:
        gain[1:] *= freqs[1:] ** np.float32(-beta / 2)
    gain[0] = 0.0
    return unit_rms(sp_fft.irfft(white_spectrum(rng, freqs.size) * gain, n).astype(np.float64))


def filtered(x: np.ndarray, sr: int, kind: str, cutoff, order: int = 2) -> np.ndarray:
    """Butterworth ``lowpass``/``highpass``/``bandpass`` filter (cutoffs in Hz, clipped below Nyquist)."""
    cutoff = np.minimum(np.atleast_1d(np.asarray(cutoff, dtype=float)), 0.49 * sr)
    sos = signal.butter(order, cutoff if cutoff.size > 1 else cutoff[0], btype=kind, fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def resonance(x: np.ndarray, sr: int, freq: float, q: float) -> np.ndarray:
    """Second-order resonant peak filter (a formant or a body mode) at ``freq`` Hz."""
    b, a = signal.iirpeak(min(freq, 0.45 * sr), q, fs=sr)
    return signal.lfilter(b, a, x)


def damped_modes(n: int, sr: int, modes, rng: np.random.Generator) -> np.ndarray:
    """Sum of exponentially damped sinusoids ``(freq Hz, decay s, gain)``, shape (n,): a struck object."""
    t = time_axis(n, sr)
    out = np.zeros(n)
    for freq, decay, gain in modes:
        if freq < 0.45 * sr:
            out += gain * np.exp(-t / decay) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return out


def noise_burst(rng: np.random.Generator, n: int, sr: int, decay: float, highpass: float | None = None) -> np.ndarray:
    """Exponentially decaying white-noise burst (a click or a knock), shape (n,)."""
    burst = rng.standard_normal(n) * np.exp(-time_axis(n, sr) / decay)
    return filtered(burst, sr, "highpass", highpass) if highpass else burst


def impulses_at(times: np.ndarray, gains: np.ndarray, n: int, sr: int) -> np.ndarray:
    """Sparse impulse train with ``gains`` at ``times`` (s); impulses outside [0, n) are dropped."""
    out = np.zeros(n)
    index = np.round(np.asarray(times) * sr).astype(int)
    keep = (index >= 0) & (index < n)
    np.add.at(out, index[keep], np.asarray(gains)[keep])
    return out


def convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``x`` (n,) convolved with ``kernel``, cut to length n (float64 out): an impulse train
    exciting a per-pulse sound, or a reverberation tail.

    Computed in single precision, which halves the FFT cost; its rounding stays far below
    the 16-bit floor (-96 dB) of the written clips.
    """
    return signal.fftconvolve(x.astype(np.float32), kernel.astype(np.float32))[: x.size].astype(np.float64)



def firing_times(cycle_freq: np.ndarray, offsets, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) and cylinder index of engine pulses, for a cycle frequency track (n,) in Hz.

    ``offsets`` are the pulse positions within a cycle in [0, 1): evenly spaced for an
    inline engine, uneven for a V-twin.
    """
    cycles = np.cumsum(cycle_freq) / sr
    times, cylinders = [], []
    for cylinder, offset in enumerate(offsets):
        counts = np.floor(cycles - offset)
        index = np.flatnonzero(np.diff(counts) > 0) + 1
        times.append(index / sr)
        cylinders.append(np.full(index.size, cylinder))
    return np.concatenate(times), np.concatenate(cylinders)


def reverb(rng: np.random.Generator, x: np.ndarray, sr: int, rt60: float, wet: float) -> np.ndarray:
    """Mix ``x`` with itself convolved by an exponentially decaying noise tail (a diffuse room/street)."""
    m = max(2, int(rt60 * sr))
    tail = rng.standard_normal(m) * np.exp(-6.9 * time_axis(m, sr) / rt60)
    tail = filtered(tail, sr, "lowpass", 4000.0)
    tail /= np.sqrt(np.sum(tail**2))
    diffuse = convolve(x, tail)
    return (1 - wet) * x + wet * rms(x) / max(rms(diffuse), 1e-12) * diffuse


def pass_by(render: Callable[[int], np.ndarray], n: int, sr: int, speed: float, distance: float,
            t_closest: float) -> np.ndarray:
    """A source driving past on a straight line: Doppler shift, 1/r loudness and air absorption.

    ``render(m)`` returns m samples of the source as heard at 1 m while at rest. The
    received sample at time t is the source emitted at tau with t = tau + r(tau)/c, read
    by linear interpolation; the gain is ``distance / r``, normalised to 1 at the closest point.
    """
    t = time_axis(n, sr)
    tau = t.copy()
    for _ in range(4):  # fixed point of tau = t - r(tau)/c; converges fast since speed << c
        tau = t - np.hypot(distance, speed * (tau - t_closest)) / _SPEED_OF_SOUND
    start = tau[0]
    source = render(int(np.ceil((tau[-1] - start) * sr)) + 2)
    heard = np.interp((tau - start) * sr, np.arange(source.size), source)
    r = np.hypot(distance, speed * (tau - t_closest))
    dull = filtered(heard, sr, "lowpass", 1200.0)
    far = np.clip((r - distance) / 40.0, 0.0, 1.0)  # high frequencies die first with distance
    return (distance / r) * ((1 - far) * heard + far * dull)

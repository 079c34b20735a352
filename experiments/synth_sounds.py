"""Sound synthesizers of the synthetic DCASE 2017 Task 4 stand-in: one per class, and backgrounds.

Every class synthesizer has the signature ``synth(rng, n, sr) -> np.ndarray`` of shape
``(n,)`` (float64, arbitrary scale: the scene mixer sets the level) and draws every
parameter of the instance from ``rng``, so two instances of a class share a structure
(a two-tone alternation, a Doppler pass-by, a diesel knock...) but differ in pitch, rate,
timbre, distance and reverberation. ``SYNTHESIZERS`` maps each official label to its
synthesizer; :func:`background` makes the non-target ambience a clip is mixed over.

Only numpy and scipy.signal are used. What each class sounds like, and the limits of the
approach, are described in ``experiments/README_synthetic.md``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

#: Sample rate of every synthesized signal (the rate of the DCASE 2017 Task 4 pipeline).
SR = 16_000
_SPEED_OF_SOUND = 343.0

Synthesizer = Callable[[np.random.Generator, int, int], np.ndarray]


# --------------------------------------------------------------------------- primitives
def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    level = _rms(x)
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


def _butterworth_gain(freqs: np.ndarray, low: float | None, high: float | None, order: int) -> np.ndarray:
    """Magnitude response of a Butterworth highpass at ``low`` and lowpass at ``high`` (Hz; None: no edge)."""
    gain = np.ones_like(freqs)
    if high is not None:
        gain /= np.sqrt(1 + (freqs / high) ** (2 * order))
    if low is not None:
        gain /= np.sqrt(1 + (low / np.maximum(freqs, 1e-3)) ** (2 * order))
    return gain


def _white_spectrum(rng: np.random.Generator, bins: int) -> np.ndarray:
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
    gain = _butterworth_gain(freqs, low, high, order)
    if beta:
        gain[1:] *= freqs[1:] ** np.float32(-beta / 2)
    gain[0] = 0.0
    return _unit_rms(sp_fft.irfft(_white_spectrum(rng, freqs.size) * gain, n).astype(np.float64))


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
    t = _time(n, sr)
    out = np.zeros(n)
    for freq, decay, gain in modes:
        if freq < 0.45 * sr:
            out += gain * np.exp(-t / decay) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return out


def noise_burst(rng: np.random.Generator, n: int, sr: int, decay: float, highpass: float | None = None) -> np.ndarray:
    """Exponentially decaying white-noise burst (a click or a knock), shape (n,)."""
    burst = rng.standard_normal(n) * np.exp(-_time(n, sr) / decay)
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
    tail = rng.standard_normal(m) * np.exp(-6.9 * _time(m, sr) / rt60)
    tail = filtered(tail, sr, "lowpass", 4000.0)
    tail /= np.sqrt(np.sum(tail**2))
    diffuse = convolve(x, tail)
    return (1 - wet) * x + wet * _rms(x) / max(_rms(diffuse), 1e-12) * diffuse


def pass_by(render: Callable[[int], np.ndarray], n: int, sr: int, speed: float, distance: float,
            t_closest: float) -> np.ndarray:
    """A source driving past on a straight line: Doppler shift, 1/r loudness and air absorption.

    ``render(m)`` returns m samples of the source as heard at 1 m while at rest. The
    received sample at time t is the source emitted at tau with t = tau + r(tau)/c, read
    by linear interpolation; the gain is ``distance / r``, normalised to 1 at the closest point.
    """
    t = _time(n, sr)
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


# --------------------------------------------------------------------------- horns and alarms
_TRAIN_HORN_CHORDS = ((1.0, 1.189, 1.414, 1.682, 2.0), (1.0, 1.26, 1.5, 1.89),
                      (1.0, 1.189, 1.5, 1.782, 2.378), (1.0, 1.335, 1.587, 2.0))


def train_horn(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Loud multi-chime chord (3-5 reed notes, 200-440 Hz), long blasts, Doppler drift, reverb."""
    t = _time(n, sr)
    chord = _TRAIN_HORN_CHORDS[rng.integers(len(_TRAIN_HORN_CHORDS))]
    notes = chord[: int(rng.integers(3, len(chord) + 1))]
    base = _log_uniform(rng, 200, 440)
    drift = 1 + _uniform(rng, 0.0, 0.04) * -np.tanh((t - _uniform(rng, 0.2, 0.8) * t[-1]) / _uniform(rng, 0.5, 2.0))
    rolloff = _uniform(rng, 1.0, 1.8)
    amps = [k ** -rolloff for k in range(1, 10)]
    tone = sum(harmonic_tone(base * ratio * (1 + rng.normal(0, 0.004)) * drift, amps, sr, rng)
               * _uniform(rng, 0.6, 1.0) for ratio in notes)
    gate = envelope(n, sr, _uniform(rng, 0.05, 0.2), _uniform(rng, 0.1, 0.4))
    if n > 1.5 * sr and rng.random() < 0.4:  # two blasts: a short break inside the event
        cut, gap = int(_uniform(rng, 0.3, 0.6) * n), int(_uniform(rng, 0.1, 0.3) * sr)
        gate[cut:cut + gap] *= 0.02
        gate = filtered(gate, sr, "lowpass", 30.0)
    return reverb(rng, tone * gate, sr, _uniform(rng, 0.4, 1.2), _uniform(rng, 0.15, 0.45))


def air_horn(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Brassy low blast (1-2 notes, 110-300 Hz, up to 24 harmonics), air noise, optional stutter."""
    t = _time(n, sr)
    f0 = _log_uniform(rng, 110, 300)
    onset_glide = 1 - _uniform(rng, 0.02, 0.08) * np.exp(-t / _uniform(rng, 0.03, 0.1))
    amps = [k ** -_uniform(rng, 0.6, 1.0) for k in range(1, 25)]
    tone = harmonic_tone(f0 * onset_glide, amps, sr, rng)
    if rng.random() < 0.5:
        tone += 0.8 * harmonic_tone(f0 * _uniform(rng, 1.19, 1.34) * onset_glide, amps, sr, rng)
    air = shaped_noise(rng, n, sr, low=2 * f0, high=8 * f0) * _uniform(rng, 0.05, 0.2) * _rms(tone)
    gate = envelope(n, sr, _uniform(rng, 0.01, 0.03), _uniform(rng, 0.03, 0.1))
    if n > 0.8 * sr and rng.random() < 0.4:  # stuttered toots
        toots = int(rng.integers(2, 5))
        on = (np.floor(t / t[-1] * toots * 2 - 1e-9) % 2 == 0).astype(float)
        gate *= np.maximum(filtered(on, sr, "lowpass", 40.0), 0.0)
    return reverb(rng, (tone + air) * gate, sr, _uniform(rng, 0.2, 0.8), _uniform(rng, 0.1, 0.35))


def car_alarm(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Piezo alarm (1.4-2.2 kHz base) cycling through 2-4 chirp patterns: whoops, warbles, beeps, sweeps."""
    t = _time(n, sr)
    low = _uniform(rng, 1400, 2200)
    high = low * _uniform(rng, 1.4, 2.0)
    kinds = rng.permutation(["whoop", "warble", "beep", "sweep", "fall"])[: int(rng.integers(2, 5))]
    freq, gate = np.empty(n), np.ones(n)
    position, turn = 0, 0
    while position < n:
        length = min(n - position, int(_uniform(rng, 1.0, 2.5) * sr))
        span = slice(position, position + length)
        local = t[:length]
        kind = kinds[turn % len(kinds)]
        if kind == "whoop":
            freq[span] = low + (high - low) * ((local * _uniform(rng, 3, 8)) % 1.0)
        elif kind == "warble":
            freq[span] = np.where((local * _uniform(rng, 4, 10)) % 1.0 < 0.5, low, high)
        elif kind == "beep":
            freq[span] = high
            gate[span] = ((local * _uniform(rng, 1.5, 4)) % 1.0 < _uniform(rng, 0.3, 0.6)).astype(float)
        elif kind == "sweep":
            freq[span] = low + (high - low) * np.abs(2 * ((local * _uniform(rng, 0.7, 2)) % 1.0) - 1)
        else:
            freq[span] = high - (high - low) * ((local * _uniform(rng, 2, 5)) % 1.0)
        position += length
        turn += 1
    freq = filtered(freq, sr, "lowpass", 200.0, order=1)  # piezo inertia: no instant jumps
    tone = harmonic_tone(freq, [1, 0, 0.35, 0, 0.2, 0, 0.1], sr, rng)
    gate = filtered(gate, sr, "lowpass", 150.0, order=1)
    return reverb(rng, tone * gate, sr, _uniform(rng, 0.3, 1.0), _uniform(rng, 0.1, 0.4))


def reversing_beeps(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Periodic ~1 kHz beeps at about 1 Hz (duty 35-60 %); one in six is a broadband-noise alarm."""
    t = _time(n, sr)
    period, duty = _uniform(rng, 0.7, 1.4), _uniform(rng, 0.35, 0.6)
    phase = rng.uniform(0, 1)
    gate = filtered((((t / period) + phase) % 1.0 < duty).astype(float), sr, "lowpass", 120.0, order=1)
    if rng.random() < 1 / 6:
        source = shaped_noise(rng, n, sr, low=500.0, high=4000.0)
    else:
        freq = _uniform(rng, 900, 1400) * np.ones(n)
        source = harmonic_tone(freq, [1, 0.05, _uniform(rng, 0.1, 0.35), 0.03, 0.1], sr, rng)
    return reverb(rng, source * gate, sr, _uniform(rng, 0.2, 0.8), _uniform(rng, 0.1, 0.4))


# --------------------------------------------------------------------------- small vehicles
def bicycle(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Bell rings (inharmonic beating partials, 2-3.8 kHz, decaying) in groups; sometimes a freewheel ticking."""
    f1 = _log_uniform(rng, 2000, 3800)
    partials = [(f1, _uniform(rng, 0.3, 0.9), 1.0),
                (f1 * (1 + _uniform(rng, 0.002, 0.012)), _uniform(rng, 0.3, 0.9), _uniform(rng, 0.5, 1.0)),
                (f1 * _uniform(rng, 1.45, 1.65), _uniform(rng, 0.1, 0.4), _uniform(rng, 0.2, 0.6)),
                (f1 * _uniform(rng, 2.6, 2.95), _uniform(rng, 0.05, 0.2), _uniform(rng, 0.1, 0.4))]
    strike = damped_modes(int(1.2 * sr), sr, partials, rng)
    strike[: int(0.003 * sr)] += noise_burst(rng, int(0.003 * sr), sr, 0.001, highpass=2000.0)
    duration = n / sr
    times, when = [], 0.0
    while when < duration:
        if rng.random() < 0.35:  # rotary "brrring"
            count, spacing = int(rng.integers(6, 20)), 1 / _uniform(rng, 12, 20)
        else:  # "ring-ring"
            count, spacing = int(rng.integers(1, 4)), _uniform(rng, 0.1, 0.25)
        times.extend(when + spacing * np.arange(count))
        when += spacing * count + _uniform(rng, 0.3, 1.0)
    times = np.array(times)
    out = convolve(impulses_at(times, rng.uniform(0.6, 1.0, times.size), n, sr), strike)
    if rng.random() < 0.35:
        tick_rate = _uniform(rng, 12, 30)
        ticks = np.arange(rng.uniform(0, 1 / tick_rate), duration, 1 / tick_rate)
        click = noise_burst(rng, int(0.01 * sr), sr, 0.002, highpass=3000.0)
        out += _uniform(rng, 0.05, 0.2) * _rms(out) / max(_rms(click), 1e-9) * 3 * convolve(
            impulses_at(ticks, rng.uniform(0.5, 1.0, ticks.size), n, sr), click)
    return out


def skateboard(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Rolling noise with surface roughness, pairs of clacks over pavement joints, sometimes an ollie."""
    t = _time(n, sr)
    roll = shaped_noise(rng, n, sr, low=_uniform(rng, 150, 400), high=_uniform(rng, 1500, 4000))
    roll += _uniform(rng, 0.2, 0.6) * shaped_noise(rng, n, sr, high=150.0)
    roll *= 1 + 0.5 * smooth_curve(rng, n, sr, _uniform(rng, 3, 8))
    roll *= 0.7 + 0.3 * smooth_curve(rng, n, sr, 0.5)
    period = _uniform(rng, 0.35, 1.2)
    joints = np.arange(rng.uniform(0, period), n / sr, period)
    joints = joints + rng.normal(0, 0.03 * period, joints.size)
    wheelbase = _uniform(rng, 0.06, 0.15)
    hits = np.concatenate([joints, joints + wheelbase])
    board = _uniform(rng, 150, 400)
    clack = (noise_burst(rng, int(0.05 * sr), sr, 0.008)
             + damped_modes(int(0.05 * sr), sr, [(board, 0.03, 2.0)], rng))
    clacks = convolve(impulses_at(hits, rng.uniform(0.5, 1.0, hits.size), n, sr), clack)
    if n > 2 * sr and rng.random() < 0.35:  # ollie: pop, airborne silence, landing
        pop = _uniform(rng, 0.2, 0.6) * t[-1]
        air = _uniform(rng, 0.3, 0.6)
        roll *= 1 - ((t > pop) & (t < pop + air))
        clacks += 3 * convolve(impulses_at(np.array([pop, pop + air]), np.array([1.0, 1.5]), n, sr), clack)
    return roll / max(_rms(roll), 1e-9) + _uniform(rng, 0.5, 1.2) * clacks / max(_rms(clacks), 1e-9)


# --------------------------------------------------------------------------- sirens
_SQUARE_ISH = [1, 0.25, 0.55, 0.15, 0.35, 0.1, 0.2, 0.05, 0.1]


def _doppler_drift(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Slowly falling pitch factor of a vehicle siren passing by (up to -3 %)."""
    return 1 + _uniform(rng, 0.0, 0.03) * -np.tanh((t - _uniform(rng, 0.0, 1.0) * t[-1]) / _uniform(rng, 0.5, 2.5))


def _distance(rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    """Random distance colouring: a lowpass and a street reverb."""
    x = filtered(x, sr, "lowpass", _log_uniform(rng, 2500, 7500))
    return reverb(rng, x, sr, _uniform(rng, 0.4, 1.5), _uniform(rng, 0.1, 0.5))


def ambulance_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Two-tone hi-lo alternation (550-800 Hz low tone, ratio 1.2-1.35), one cycle per 1-2 s."""
    t = _time(n, sr)
    low, ratio, cycle = _log_uniform(rng, 550, 800), _uniform(rng, 1.2, 1.35), _uniform(rng, 1.0, 2.0)
    high_tone = ((t / cycle + rng.uniform(0, 1)) % 1.0 < 0.5).astype(float)
    high_tone = filtered(high_tone, sr, "lowpass", _uniform(rng, 15, 40), order=1)
    freq = low * ratio**high_tone * _doppler_drift(rng, t)
    swell = 1 + _uniform(rng, 0.0, 0.5) * smooth_curve(rng, n, sr, 0.3)
    return _distance(rng, harmonic_tone(freq, _SQUARE_ISH, sr, rng) * swell, sr)


def police_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Electronic siren alternating wail (0.2-0.5 Hz sweeps) with yelp (2.5-5 Hz) or phaser (9-14 Hz)."""
    t = _time(n, sr)
    low = _log_uniform(rng, 550, 800)
    high = low * _uniform(rng, 1.9, 2.3)
    rate = np.empty(n)
    fast_kind = 1 if rng.random() < 0.8 else 2
    position, fast = 0, bool(rng.random() < 0.5)
    while position < n:
        length = int(_uniform(rng, 1.5, 4.0) * sr)
        rate[position:position + length] = (_uniform(rng, 2.5, 5) if fast_kind == 1 else _uniform(rng, 9, 14)) \
            if fast else _uniform(rng, 0.2, 0.5)
        position += length
        fast = not fast
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * (np.cumsum(rate) / sr + rng.uniform(0, 1)))
    freq = (low + (high - low) * sweep) * _doppler_drift(rng, t)
    return _distance(rng, harmonic_tone(freq, _SQUARE_ISH, sr, rng), sr)


def _rotor_speed(rng: np.random.Generator, n: int, sr: int, up: tuple[float, float], down: tuple[float, float],
                 floor: float) -> np.ndarray:
    """Speed in [0, 1] of a motor-driven siren rotor that is wound up and released in turns, shape (n,)."""
    speed = np.empty(n)
    position, value, winding = 0, _uniform(rng, 0.0, 1.0), bool(rng.random() < 0.6)
    while position < n:
        length = min(n - position, int(_uniform(rng, *(up if winding else down)) * sr))
        local = _time(length, sr)
        tau = length / sr / _uniform(rng, 1.5, 3.0)
        target = 1.0 if winding else floor
        speed[position:position + length] = target + (value - target) * np.exp(-local / tau)
        value = speed[position + length - 1]
        position += length
        winding = not winding
    return speed


def fire_truck_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Mechanical wail: slow wind-up and coast-down (cycles of 3-9 s), sawtooth timbre, rotor growl."""
    top = _log_uniform(rng, 700, 1150)
    speed = _rotor_speed(rng, n, sr, (1.5, 4.0), (2.0, 5.0), floor=_uniform(rng, 0.0, 0.3))
    floor = _uniform(rng, 0.2, 0.45)
    freq = top * (floor + (1 - floor) * speed)
    tone = harmonic_tone(freq, [1 / k for k in range(1, 13)], sr, rng)
    tone += _uniform(rng, 0.15, 0.35) * harmonic_tone(freq / 2, [1, 0.3], sr, rng)
    growl = 1 + _uniform(rng, 0.2, 0.45) * shaped_noise(rng, n, sr, low=15.0, high=45.0)
    whoosh = shaped_noise(rng, n, sr, low=600.0) * _uniform(rng, 0.05, 0.15) * _rms(tone)
    out = (tone * growl + whoosh * speed) * (0.3 + 0.7 * speed)
    return _distance(rng, out, sr)


def civil_defense_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Distant two-note chord (330-560 Hz): steady alert or very slow rise/fall, rotating horn, long echoes."""
    t = _time(n, sr)
    base = _log_uniform(rng, 330, 560)
    ratio = (1.2, 1.25, 1.335, 1.5)[rng.integers(4)]
    if rng.random() < 0.5:  # alert: a wind-up to a steady tone
        speed = 1 - (1 - _uniform(rng, 0.3, 1.0)) * np.exp(-t / _uniform(rng, 1.0, 3.0))
    else:  # attack: slow waving rise and fall
        speed = 0.775 + 0.225 * np.sin(2 * np.pi * t / _uniform(rng, 8, 20) + rng.uniform(0, 2 * np.pi))
    freq = base * (0.3 + 0.7 * speed)
    amps = [k ** -1.3 for k in range(1, 11)]
    tone = harmonic_tone(freq, amps, sr, rng) + 0.8 * harmonic_tone(freq * ratio, amps, sr, rng)
    rotation = 0.5 - 0.5 * np.cos(2 * np.pi * t / _uniform(rng, 4, 15) + rng.uniform(0, 2 * np.pi))
    tone *= 10 ** (-_uniform(rng, 4, 14) * rotation / 20)
    tone = filtered(tone, sr, "lowpass", _uniform(rng, 2000, 4000))
    echoes = tone.copy()
    for _ in range(int(rng.integers(2, 4))):
        delay = int(_uniform(rng, 0.2, 1.0) * sr)
        echoes[delay:] += _uniform(rng, 0.2, 0.5) * tone[: n - delay]
    return reverb(rng, echoes, sr, _uniform(rng, 1.5, 3.0), _uniform(rng, 0.4, 0.7))


# --------------------------------------------------------------------------- voice
def screaming(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """1-3 screams: high f0 (400-1100 Hz) rise-hold-fall, vibrato, jitter, formants, breath, roughness."""
    out = np.zeros(n)
    count = 1 + (int(rng.integers(0, 3)) if n > 2 * sr else 0)
    bounds = np.sort(rng.uniform(0.25, 0.75, count - 1)) * n if count > 1 else np.array([])
    edges = np.concatenate([[0], bounds, [n]]).astype(int)
    formants = [(_uniform(rng, 700, 1200), 1.0), (_uniform(rng, 1200, 2000), 0.7), (_uniform(rng, 2600, 3400), 0.4)]
    for start, stop in zip(edges[:-1], edges[1:]):
        breath = int(min(_uniform(rng, 0.1, 0.3) * sr, 0.3 * (stop - start))) if stop < n else 0
        m = stop - start - breath
        t = _time(m, sr)
        peak = _log_uniform(rng, 400, 1100)
        rise = np.minimum(1, t / (0.2 * t[-1] + 1e-9))
        fall = np.maximum(0, (t - 0.7 * t[-1]) / (0.3 * t[-1] + 1e-9))
        contour = 0.7 + 0.3 * rise - 0.2 * fall
        vibrato = 1 + _uniform(rng, 0.005, 0.03) * np.sin(2 * np.pi * _uniform(rng, 4, 8) * t)
        jitter = 1 + 0.01 * smooth_curve(rng, m, sr, 20)
        f0 = peak * contour * vibrato * jitter
        source = harmonic_tone(f0, [k ** -0.8 for k in range(1, 20)], sr, rng)
        if rng.random() < 0.3:  # rough scream: subharmonic
            source += _uniform(rng, 0.2, 0.5) * harmonic_tone(f0 / 2, [1, 0.5, 0.3], sr, rng)
        source += _uniform(rng, 0.05, 0.15) * _rms(source) * shaped_noise(rng, m, sr, low=1000.0, high=5000.0)
        voiced = 0.1 * source + sum(gain * resonance(source, sr, freq, _uniform(rng, 4, 7)) for freq, gain in formants)
        out[start:start + m] += voiced * envelope(m, sr, _uniform(rng, 0.03, 0.1), _uniform(rng, 0.05, 0.2))
    return reverb(rng, out, sr, _uniform(rng, 0.2, 0.8), _uniform(rng, 0.1, 0.35))


# --------------------------------------------------------------------------- engines
def _engine(rng: np.random.Generator, n: int, sr: int, firing: np.ndarray, offsets, cylinder_spread: float,
            modes, knock: float) -> np.ndarray:
    """Source-filter engine: firing pulses (n,) excite body/exhaust resonances ``modes``, plus a knock click.

    ``firing`` is the pulse rate track in Hz; a cycle holds ``len(offsets)`` pulses whose
    gains differ by ``cylinder_spread``, which puts sub-harmonics under the firing rate.
    """
    times, cylinder = firing_times(firing / len(offsets), offsets, sr)
    gains = (1 + rng.normal(0, cylinder_spread, len(offsets)))[cylinder] * rng.uniform(0.85, 1.0, times.size)
    pulses = impulses_at(times + rng.normal(0, 0.0004, times.size), gains, n, sr)
    length = int(0.08 * sr)
    kernel = damped_modes(length, sr, modes, rng) + 0.3 * noise_burst(rng, length, sr, 0.004)
    if knock:
        kernel += knock * noise_burst(rng, length, sr, 0.003, highpass=1500.0) * np.max(np.abs(kernel))
    return convolve(pulses, kernel)


def _rpm_track(rng: np.random.Generator, n: int, sr: int, low: float, high: float, wander: float) -> np.ndarray:
    """Firing-rate track (n,) in Hz: a base rate in [low, high] wandering by +-``wander`` (relative)."""
    return _log_uniform(rng, low, high) * (1 + wander * smooth_curve(rng, n, sr, _uniform(rng, 0.2, 0.6)))


def _gear_run(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """Accelerating firing rate (n,) in Hz: rises in each gear, drops at each shift."""
    t = _time(n, sr)
    shift = _uniform(rng, 1.5, 4.0)
    within = (t / shift + rng.uniform(0, 1)) % 1.0
    return low + (high - low) * (0.35 + 0.65 * within) ** 1.3


def _tyres(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS tyre/road noise: pink noise band-limited to 300-3000 Hz (random edges)."""
    return shaped_noise(rng, n, sr, beta=1.0, low=_uniform(rng, 200, 400), high=_uniform(rng, 2000, 4500))


def car_engine_at_rest(rng: np.random.Generator, n: int, sr: int, firing: np.ndarray) -> np.ndarray:
    """Unit-RMS petrol four-cylinder: smooth pulses, 90-200 Hz and 350-700 Hz exhaust modes."""
    modes = [(_uniform(rng, 90, 200), _uniform(rng, 0.008, 0.02), 1.0),
             (_uniform(rng, 350, 700), _uniform(rng, 0.004, 0.008), 0.5),
             (_uniform(rng, 1000, 1800), _uniform(rng, 0.002, 0.004), 0.2)]
    return _unit_rms(_engine(rng, n, sr, firing, (0, 0.25, 0.5, 0.75), 0.06, modes, knock=0.0))


def car(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """A car nearby (idling or driving): four-cylinder engine 28-80 Hz firing, tyre noise, no pass-by."""
    firing = (_gear_run(rng, n, sr, _uniform(rng, 28, 40), _uniform(rng, 55, 80)) if rng.random() < 0.4
              else _rpm_track(rng, n, sr, 28, 70, _uniform(rng, 0.05, 0.2)))
    out = car_engine_at_rest(rng, n, sr, firing) + _uniform(rng, 0.2, 0.8) * _tyres(rng, n, sr)
    out *= 1 + 0.2 * smooth_curve(rng, n, sr, 0.3)
    return reverb(rng, filtered(out, sr, "lowpass", _uniform(rng, 3000, 6000)), sr, _uniform(rng, 0.2, 0.6), 0.2)


def car_passing_by(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """A car driving past at 8-28 m/s, 2-10 m away: Doppler drop, loudness rise and fall, tyre hiss."""
    firing_rate, tyre_level = _uniform(rng, 45, 110), _uniform(rng, 0.8, 2.0)

    def render(m: int) -> np.ndarray:
        firing = firing_rate * (1 + 0.05 * smooth_curve(rng, m, sr, 0.5))
        engine = car_engine_at_rest(rng, m, sr, firing)
        return engine + tyre_level * shaped_noise(rng, m, sr, beta=0.8, low=200.0, high=5000.0)

    out = pass_by(render, n, sr, speed=_uniform(rng, 8, 28), distance=_uniform(rng, 2, 10),
                  t_closest=_uniform(rng, 0.3, 0.7) * n / sr)
    return out * envelope(n, sr, 0.3, 0.3)


def bus(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Smooth six-cylinder diesel (18-40 Hz firing), transmission whine tracking the rpm, door air hiss."""
    firing = (_gear_run(rng, n, sr, _uniform(rng, 18, 24), _uniform(rng, 32, 40)) if rng.random() < 0.5
              else _rpm_track(rng, n, sr, 18, 35, 0.08))
    modes = [(_uniform(rng, 70, 140), _uniform(rng, 0.015, 0.03), 1.0),
             (_uniform(rng, 250, 500), _uniform(rng, 0.005, 0.01), 0.4)]
    out = _unit_rms(_engine(rng, n, sr, firing, tuple(np.arange(6) / 6), 0.05, modes, knock=0.1))
    whine = harmonic_tone(firing * _uniform(rng, 25, 60), [1, 0.3], sr, rng)
    out += _uniform(rng, 0.15, 0.4) * _unit_rms(whine)
    out += _uniform(rng, 0.2, 0.5) * _tyres(rng, n, sr)
    if rng.random() < 0.5:  # pneumatic door / brake release
        m = int(_uniform(rng, 0.4, 1.2) * sr)
        start = int(rng.integers(0, max(1, n - m)))
        hiss = shaped_noise(rng, min(m, n), sr, low=2000.0, high=6000.0)
        out[start:start + hiss.size] += _uniform(rng, 0.8, 2.0) * hiss * envelope(hiss.size, sr, 0.02, 0.3)
    return reverb(rng, out, sr, _uniform(rng, 0.2, 0.8), 0.25)


def truck(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Heavy diesel (20-45 Hz firing): knocking clatter, deep rumble, sometimes an engine brake burst."""
    firing = _rpm_track(rng, n, sr, 20, 45, _uniform(rng, 0.05, 0.25))
    modes = [(_uniform(rng, 50, 110), _uniform(rng, 0.02, 0.04), 1.5),
             (_uniform(rng, 200, 400), _uniform(rng, 0.006, 0.012), 0.5)]
    out = _unit_rms(_engine(rng, n, sr, firing, tuple(np.arange(6) / 6), 0.12, modes, knock=_uniform(rng, 0.4, 0.9)))
    out += _uniform(rng, 0.3, 0.8) * shaped_noise(rng, n, sr, high=120.0)
    if n > 2 * sr and rng.random() < 0.25:  # engine ("jake") brake: loud barking staccato
        m = int(_uniform(rng, 1.0, min(3.0, n / sr - 0.5)) * sr)
        start = int(rng.integers(0, n - m))
        bark_modes = [(_uniform(rng, 300, 600), 0.02, 1.0), (_uniform(rng, 80, 150), 0.03, 1.0)]
        bark = _engine(rng, m, sr, firing[start:start + m] * 1.5, (0, 1 / 3, 2 / 3), 0.1, bark_modes, knock=0.5)
        out[start:start + m] += _uniform(rng, 1.5, 3.0) * _unit_rms(bark) * envelope(m, sr, 0.1, 0.2)
    out += _uniform(rng, 0.1, 0.4) * _tyres(rng, n, sr)
    return reverb(rng, out, sr, _uniform(rng, 0.2, 0.8), 0.25)


def motorcycle(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """V-twin, inline-four or single: uneven or fast firing (35-200 Hz), throttle blips or gear runs, bright exhaust."""
    layout = rng.choice(3, p=[0.45, 0.35, 0.2])
    offsets, low, high = (((0.0, 0.37), 35, 60), ((0, 0.25, 0.5, 0.75), 90, 160), ((0.0,), 25, 50))[layout]
    if rng.random() < 0.5:
        firing = _gear_run(rng, n, sr, low, high * 1.8)
    else:  # revving in place: throttle blips over idle
        firing = _rpm_track(rng, n, sr, low, high, 0.05)
        blips = np.arange(rng.uniform(0.1, 1.0), n / sr, _uniform(rng, 0.8, 2.0))
        rise = np.zeros(n)
        for blip in blips:
            t = _time(n, sr) - blip
            rise += np.where(t > 0, (1 - np.exp(-t / 0.08)) * np.exp(-t / _uniform(rng, 0.3, 0.8)), 0.0)
        firing = firing * (1 + _uniform(rng, 0.8, 1.5) * np.minimum(rise, 1.0))
    modes = [(_uniform(rng, 150, 400), _uniform(rng, 0.006, 0.012), 1.0),
             (_uniform(rng, 800, 2000), _uniform(rng, 0.002, 0.005), 0.5)]
    out = _unit_rms(_engine(rng, n, sr, firing, offsets, 0.15, modes, knock=_uniform(rng, 0.1, 0.4)))
    out += _uniform(rng, 0.1, 0.3) * _tyres(rng, n, sr)
    return reverb(rng, out, sr, _uniform(rng, 0.2, 0.7), 0.2)


# --------------------------------------------------------------------------- trains
def train(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Rail traffic: clickety-clack of bogie pairs at the car period, rumble, rail roar, squeal, locomotive."""
    duration = n / sr
    speed, car_length = _uniform(rng, 8, 30), _uniform(rng, 14, 26)
    axle, bogies = _uniform(rng, 2.2, 3.0) / speed, car_length * _uniform(rng, 0.65, 0.75) / speed
    cars = np.arange(-rng.uniform(0, car_length / speed), duration, car_length / speed)
    hits = np.concatenate([cars, cars + axle, cars + bogies, cars + bogies + axle])
    hits += rng.normal(0, 0.002, hits.size)
    click_length = int(0.1 * sr)
    click = (damped_modes(click_length, sr, [(_uniform(rng, 120, 350), 0.025, 1.0),
                                             (_uniform(rng, 600, 1500), 0.008, 0.5)], rng)
             + 0.5 * noise_burst(rng, click_length, sr, 0.005, highpass=1000.0))
    out = _unit_rms(convolve(impulses_at(hits, rng.uniform(0.7, 1.3, hits.size), n, sr), click))
    out += _uniform(rng, 0.5, 1.0) * shaped_noise(rng, n, sr, beta=2.0, low=20.0, high=_uniform(rng, 60, 150))
    out += _uniform(rng, 0.3, 0.7) * shaped_noise(rng, n, sr, beta=1.0, low=200.0, high=1500.0)
    if rng.random() < 0.2:  # wheel squeal
        t = _time(n, sr)
        squeal = np.sin(2 * np.pi * np.cumsum(_uniform(rng, 2000, 4500) * (1 + 0.01 * np.sin(2 * np.pi * 3 * t))) / sr)
        out += _uniform(rng, 0.1, 0.3) * squeal * np.clip(smooth_curve(rng, n, sr, 0.7) * 2, 0, 1)
    if rng.random() < 0.35:  # diesel locomotive
        firing = _rpm_track(rng, n, sr, 25, 40, 0.05)
        modes = [(_uniform(rng, 40, 90), 0.03, 1.0), (_uniform(rng, 200, 350), 0.01, 0.4)]
        level = _uniform(rng, 0.3, 0.6)
        out += level * _unit_rms(_engine(rng, n, sr, firing, tuple(np.arange(8) / 8), 0.08, modes, knock=0.2))
    if rng.random() < 0.5:  # approaching or leaving
        t = _time(n, sr)
        centre = _uniform(rng, -0.2, 1.2) * duration
        out *= 8 / np.hypot(8, speed * 0.3 * (t - centre))
    return reverb(rng, out, sr, _uniform(rng, 0.3, 1.0), 0.25)


# --------------------------------------------------------------------------- background
def background(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Unit-RMS non-target ambience, shape (n,): a coloured-noise bed with urban rumble, and distractors.

    The bed (noise of random spectral slope plus low-frequency rumble, through a random
    recording bandwidth) slowly changes level like traffic in the distance. Distractors
    (wind gusts, speech babble, bird chirps, mains hum) are sounds outside the 17 classes,
    so a model cannot equate "something audible" with an event.
    """
    freqs = sp_fft.rfftfreq(n, 1 / sr).astype(np.float32)
    colour = np.zeros_like(freqs)
    colour[1:] = freqs[1:] ** -_uniform(rng, 0.6, 2.0)
    rumble = np.zeros_like(freqs)
    rumble[1:] = freqs[1:] ** -2.0 * _butterworth_gain(freqs[1:], None, _uniform(rng, 60, 200), 2) ** 2
    power = colour / colour.mean() + _uniform(rng, 0.5, 2.0) ** 2 * rumble / rumble.mean()
    gain = np.sqrt(power) * _butterworth_gain(freqs, 20.0, _uniform(rng, 3000, 7500), 2)
    bed = sp_fft.irfft(_white_spectrum(rng, freqs.size) * gain, n).astype(np.float64)
    out = _unit_rms(bed) * (1 + 0.3 * smooth_curve(rng, n, sr, _uniform(rng, 0.05, 0.3)))
    if rng.random() < 0.3:  # wind gusts
        gusts = np.clip(0.5 + smooth_curve(rng, n, sr, _uniform(rng, 0.2, 1.0)), 0, None) ** 2
        out += _uniform(rng, 0.5, 1.5) * shaped_noise(rng, n, sr, high=400.0) * gusts
    if rng.random() < 0.3:  # distant babble: formant bands with syllabic modulation
        babble = np.zeros(n)
        for low, high in ((300, 900), (900, 2200), (2200, 3500)):
            syllables = np.clip(smooth_curve(rng, n, sr, _uniform(rng, 6, 12)), 0, None)
            babble += syllables * shaped_noise(rng, n, sr, low=low, high=high)
        out += _uniform(rng, 0.2, 0.6) * _unit_rms(babble)
    if rng.random() < 0.25:  # birds: short FM chirps
        chirps = np.zeros(n)
        for _ in range(int(rng.integers(2, 9))):
            m = int(_uniform(rng, 0.05, 0.15) * sr)
            start = int(rng.integers(0, n - m))
            sweep = np.linspace(_uniform(rng, 2000, 6000), _uniform(rng, 2000, 6000), m)
            chirps[start:start + m] += np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.hanning(m)
        out += _uniform(rng, 0.3, 0.8) * _unit_rms(chirps)
    if rng.random() < 0.2:  # mains hum
        mains = (50.0, 60.0)[rng.integers(2)]
        out += _uniform(rng, 0.05, 0.2) * _unit_rms(harmonic_tone(np.full(n, mains), [1, 0.5, 0.3], sr, rng))
    return _unit_rms(out)


#: Synthesizer of each official label (keys in the official class order).
SYNTHESIZERS: dict[str, Synthesizer] = {
    "Train horn": train_horn,
    "Air horn, truck horn": air_horn,
    "Car alarm": car_alarm,
    "Reversing beeps": reversing_beeps,
    "Bicycle": bicycle,
    "Skateboard": skateboard,
    "Ambulance (siren)": ambulance_siren,
    "Fire engine, fire truck (siren)": fire_truck_siren,
    "Civil defense siren": civil_defense_siren,
    "Police car (siren)": police_siren,
    "Screaming": screaming,
    "Car": car,
    "Car passing by": car_passing_by,
    "Bus": bus,
    "Truck": truck,
    "Motorcycle": motorcycle,
    "Train": train,
}

"""Sound synthesizers of the synthetic DCASE 2017 Task 4 stand-in: one per class, and backgrounds.

Every class synthesizer has the signature ``synth(rng, n, sr) -> np.ndarray`` of shape
``(n,)`` (float64, arbitrary scale: the scene mixer sets the level) and draws every
parameter of the instance from ``rng``, so two instances of a class share a structure
(a two-tone alternation, a Doppler pass-by, a diesel knock...) but differ in pitch, rate,
timbre, distance and reverberation. ``SYNTHESIZERS`` maps each official label to its
synthesizer; :func:`background` makes the non-target ambience a clip is mixed over.

Only numpy and scipy are used; the signal primitives are in :mod:`experiments.synth_dsp`.
What each class sounds like, and the limits of the approach, are described in
``experiments/README_synthetic.md``. (About 500 lines: the 17 class synthesizers stay in one
module, the catalogue behind ``SYNTHESIZERS``.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import fft as sp_fft

from experiments.synth_dsp import (
    butterworth_gain, convolve, damped_modes, envelope, filtered, firing_times, harmonic_tone, impulses_at,
    log_uniform, noise_burst, pass_by, resonance, reverb, rms, shaped_noise, smooth_curve, time_axis, uniform,
    unit_rms, white_spectrum,
)

#: Sample rate of every synthesized signal (the rate of the DCASE 2017 Task 4 pipeline).
SR = 16_000

Synthesizer = Callable[[np.random.Generator, int, int], np.ndarray]

# --------------------------------------------------------------------------- horns and alarms
_TRAIN_HORN_CHORDS = ((1.0, 1.189, 1.414, 1.682, 2.0), (1.0, 1.26, 1.5, 1.89),
                      (1.0, 1.189, 1.5, 1.782, 2.378), (1.0, 1.335, 1.587, 2.0))


def train_horn(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Loud multi-chime chord (3-5 reed notes, 200-440 Hz), long blasts, Doppler drift, reverb."""
    t = time_axis(n, sr)
    chord = _TRAIN_HORN_CHORDS[rng.integers(len(_TRAIN_HORN_CHORDS))]
    notes = chord[: int(rng.integers(3, len(chord) + 1))]
    base = log_uniform(rng, 200, 440)
    drift = 1 + uniform(rng, 0.0, 0.04) * -np.tanh((t - uniform(rng, 0.2, 0.8) * t[-1]) / uniform(rng, 0.5, 2.0))
    rolloff = uniform(rng, 1.0, 1.8)
    amps = [k ** -rolloff for k in range(1, 10)]
    tone = sum(harmonic_tone(base * ratio * (1 + rng.normal(0, 0.004)) * drift, amps, sr, rng)
               * uniform(rng, 0.6, 1.0) for ratio in notes)
    gate = envelope(n, sr, uniform(rng, 0.05, 0.2), uniform(rng, 0.1, 0.4))
    if n > 1.5 * sr and rng.random() < 0.4:  # two blasts: a short break inside the event
        cut, gap = int(uniform(rng, 0.3, 0.6) * n), int(uniform(rng, 0.1, 0.3) * sr)
        gate[cut:cut + gap] *= 0.02
        gate = filtered(gate, sr, "lowpass", 30.0)
    return reverb(rng, tone * gate, sr, uniform(rng, 0.4, 1.2), uniform(rng, 0.15, 0.45))


def air_horn(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Brassy low blast (1-2 notes, 110-300 Hz, up to 24 harmonics), air noise, optional stutter."""
    t = time_axis(n, sr)
    f0 = log_uniform(rng, 110, 300)
    onset_glide = 1 - uniform(rng, 0.02, 0.08) * np.exp(-t / uniform(rng, 0.03, 0.1))
    amps = [k ** -uniform(rng, 0.6, 1.0) for k in range(1, 25)]
    tone = harmonic_tone(f0 * onset_glide, amps, sr, rng)
    if rng.random() < 0.5:
        tone += 0.8 * harmonic_tone(f0 * uniform(rng, 1.19, 1.34) * onset_glide, amps, sr, rng)
    air = shaped_noise(rng, n, sr, low=2 * f0, high=8 * f0) * uniform(rng, 0.05, 0.2) * rms(tone)
    gate = envelope(n, sr, uniform(rng, 0.01, 0.03), uniform(rng, 0.03, 0.1))
    if n > 0.8 * sr and rng.random() < 0.4:  # stuttered toots
        toots = int(rng.integers(2, 5))
        on = (np.floor(t / t[-1] * toots * 2 - 1e-9) % 2 == 0).astype(float)
        gate *= np.maximum(filtered(on, sr, "lowpass", 40.0), 0.0)
    return reverb(rng, (tone + air) * gate, sr, uniform(rng, 0.2, 0.8), uniform(rng, 0.1, 0.35))


def car_alarm(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Piezo alarm (1.4-2.2 kHz base) cycling through 2-4 chirp patterns: whoops, warbles, beeps, sweeps."""
    t = time_axis(n, sr)
    low = uniform(rng, 1400, 2200)
    high = low * uniform(rng, 1.4, 2.0)
    kinds = rng.permutation(["whoop", "warble", "beep", "sweep", "fall"])[: int(rng.integers(2, 5))]
    freq, gate = np.empty(n), np.ones(n)
    position, turn = 0, 0
    while position < n:
        length = min(n - position, int(uniform(rng, 1.0, 2.5) * sr))
        span = slice(position, position + length)
        local = t[:length]
        kind = kinds[turn % len(kinds)]
        if kind == "whoop":
            freq[span] = low + (high - low) * ((local * uniform(rng, 3, 8)) % 1.0)
        elif kind == "warble":
            freq[span] = np.where((local * uniform(rng, 4, 10)) % 1.0 < 0.5, low, high)
        elif kind == "beep":
            freq[span] = high
            gate[span] = ((local * uniform(rng, 1.5, 4)) % 1.0 < uniform(rng, 0.3, 0.6)).astype(float)
        elif kind == "sweep":
            freq[span] = low + (high - low) * np.abs(2 * ((local * uniform(rng, 0.7, 2)) % 1.0) - 1)
        else:
            freq[span] = high - (high - low) * ((local * uniform(rng, 2, 5)) % 1.0)
        position += length
        turn += 1
    freq = filtered(freq, sr, "lowpass", 200.0, order=1)  # piezo inertia: no instant jumps
    tone = harmonic_tone(freq, [1, 0, 0.35, 0, 0.2, 0, 0.1], sr, rng)
    gate = filtered(gate, sr, "lowpass", 150.0, order=1)
    return reverb(rng, tone * gate, sr, uniform(rng, 0.3, 1.0), uniform(rng, 0.1, 0.4))


def reversing_beeps(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Periodic ~1 kHz beeps at about 1 Hz (duty 35-60 %); one in six is a broadband-noise alarm."""
    t = time_axis(n, sr)
    period, duty = uniform(rng, 0.7, 1.4), uniform(rng, 0.35, 0.6)
    phase = rng.uniform(0, 1)
    gate = filtered((((t / period) + phase) % 1.0 < duty).astype(float), sr, "lowpass", 120.0, order=1)
    if rng.random() < 1 / 6:
        source = shaped_noise(rng, n, sr, low=500.0, high=4000.0)
    else:
        freq = uniform(rng, 900, 1400) * np.ones(n)
        source = harmonic_tone(freq, [1, 0.05, uniform(rng, 0.1, 0.35), 0.03, 0.1], sr, rng)
    return reverb(rng, source * gate, sr, uniform(rng, 0.2, 0.8), uniform(rng, 0.1, 0.4))


# --------------------------------------------------------------------------- small vehicles
def bicycle(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Bell rings (inharmonic beating partials, 2-3.8 kHz, decaying) in groups; sometimes a freewheel ticking."""
    f1 = log_uniform(rng, 2000, 3800)
    partials = [(f1, uniform(rng, 0.3, 0.9), 1.0),
                (f1 * (1 + uniform(rng, 0.002, 0.012)), uniform(rng, 0.3, 0.9), uniform(rng, 0.5, 1.0)),
                (f1 * uniform(rng, 1.45, 1.65), uniform(rng, 0.1, 0.4), uniform(rng, 0.2, 0.6)),
                (f1 * uniform(rng, 2.6, 2.95), uniform(rng, 0.05, 0.2), uniform(rng, 0.1, 0.4))]
    strike = damped_modes(int(1.2 * sr), sr, partials, rng)
    strike[: int(0.003 * sr)] += noise_burst(rng, int(0.003 * sr), sr, 0.001, highpass=2000.0)
    duration = n / sr
    times, when = [], 0.0
    while when < duration:
        if rng.random() < 0.35:  # rotary "brrring"
            count, spacing = int(rng.integers(6, 20)), 1 / uniform(rng, 12, 20)
        else:  # "ring-ring"
            count, spacing = int(rng.integers(1, 4)), uniform(rng, 0.1, 0.25)
        times.extend(when + spacing * np.arange(count))
        when += spacing * count + uniform(rng, 0.3, 1.0)
    times = np.array(times)
    out = convolve(impulses_at(times, rng.uniform(0.6, 1.0, times.size), n, sr), strike)
    if rng.random() < 0.35:
        tick_rate = uniform(rng, 12, 30)
        ticks = np.arange(rng.uniform(0, 1 / tick_rate), duration, 1 / tick_rate)
        click = noise_burst(rng, int(0.01 * sr), sr, 0.002, highpass=3000.0)
        out += uniform(rng, 0.05, 0.2) * rms(out) / max(rms(click), 1e-9) * 3 * convolve(
            impulses_at(ticks, rng.uniform(0.5, 1.0, ticks.size), n, sr), click)
    return out


def skateboard(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Rolling noise with surface roughness, pairs of clacks over pavement joints, sometimes an ollie."""
    t = time_axis(n, sr)
    roll = shaped_noise(rng, n, sr, low=uniform(rng, 150, 400), high=uniform(rng, 1500, 4000))
    roll += uniform(rng, 0.2, 0.6) * shaped_noise(rng, n, sr, high=150.0)
    roll *= 1 + 0.5 * smooth_curve(rng, n, sr, uniform(rng, 3, 8))
    roll *= 0.7 + 0.3 * smooth_curve(rng, n, sr, 0.5)
    period = uniform(rng, 0.35, 1.2)
    joints = np.arange(rng.uniform(0, period), n / sr, period)
    joints = joints + rng.normal(0, 0.03 * period, joints.size)
    wheelbase = uniform(rng, 0.06, 0.15)
    hits = np.concatenate([joints, joints + wheelbase])
    board = uniform(rng, 150, 400)
    clack = (noise_burst(rng, int(0.05 * sr), sr, 0.008)
             + damped_modes(int(0.05 * sr), sr, [(board, 0.03, 2.0)], rng))
    clacks = convolve(impulses_at(hits, rng.uniform(0.5, 1.0, hits.size), n, sr), clack)
    if n > 2 * sr and rng.random() < 0.35:  # ollie: pop, airborne silence, landing
        pop = uniform(rng, 0.2, 0.6) * t[-1]
        air = uniform(rng, 0.3, 0.6)
        roll *= 1 - ((t > pop) & (t < pop + air))
        clacks += 3 * convolve(impulses_at(np.array([pop, pop + air]), np.array([1.0, 1.5]), n, sr), clack)
    return roll / max(rms(roll), 1e-9) + uniform(rng, 0.5, 1.2) * clacks / max(rms(clacks), 1e-9)


# --------------------------------------------------------------------------- sirens
_SQUARE_ISH = [1, 0.25, 0.55, 0.15, 0.35, 0.1, 0.2, 0.05, 0.1]


def _doppler_drift(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Slowly falling pitch factor of a vehicle siren passing by (up to -3 %)."""
    return 1 + uniform(rng, 0.0, 0.03) * -np.tanh((t - uniform(rng, 0.0, 1.0) * t[-1]) / uniform(rng, 0.5, 2.5))


def _distance(rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    """Random distance colouring: a lowpass and a street reverb."""
    x = filtered(x, sr, "lowpass", log_uniform(rng, 2500, 7500))
    return reverb(rng, x, sr, uniform(rng, 0.4, 1.5), uniform(rng, 0.1, 0.5))


def ambulance_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Two-tone hi-lo alternation (550-800 Hz low tone, ratio 1.2-1.35), one cycle per 1-2 s."""
    t = time_axis(n, sr)
    low, ratio, cycle = log_uniform(rng, 550, 800), uniform(rng, 1.2, 1.35), uniform(rng, 1.0, 2.0)
    high_tone = ((t / cycle + rng.uniform(0, 1)) % 1.0 < 0.5).astype(float)
    high_tone = filtered(high_tone, sr, "lowpass", uniform(rng, 15, 40), order=1)
    freq = low * ratio**high_tone * _doppler_drift(rng, t)
    swell = 1 + uniform(rng, 0.0, 0.5) * smooth_curve(rng, n, sr, 0.3)
    return _distance(rng, harmonic_tone(freq, _SQUARE_ISH, sr, rng) * swell, sr)


def police_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Electronic siren alternating wail (0.2-0.5 Hz sweeps) with yelp (2.5-5 Hz) or phaser (9-14 Hz)."""
    t = time_axis(n, sr)
    low = log_uniform(rng, 550, 800)
    high = low * uniform(rng, 1.9, 2.3)
    rate = np.empty(n)
    fast_kind = 1 if rng.random() < 0.8 else 2
    position, fast = 0, bool(rng.random() < 0.5)
    while position < n:
        length = int(uniform(rng, 1.5, 4.0) * sr)
        rate[position:position + length] = (uniform(rng, 2.5, 5) if fast_kind == 1 else uniform(rng, 9, 14)) \
            if fast else uniform(rng, 0.2, 0.5)
        position += length
        fast = not fast
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * (np.cumsum(rate) / sr + rng.uniform(0, 1)))
    freq = (low + (high - low) * sweep) * _doppler_drift(rng, t)
    return _distance(rng, harmonic_tone(freq, _SQUARE_ISH, sr, rng), sr)


def _rotor_speed(rng: np.random.Generator, n: int, sr: int, up: tuple[float, float], down: tuple[float, float],
                 floor: float) -> np.ndarray:
    """Speed in [0, 1] of a motor-driven siren rotor that is wound up and released in turns, shape (n,)."""
    speed = np.empty(n)
    position, value, winding = 0, uniform(rng, 0.0, 1.0), bool(rng.random() < 0.6)
    while position < n:
        length = min(n - position, int(uniform(rng, *(up if winding else down)) * sr))
        local = time_axis(length, sr)
        tau = length / sr / uniform(rng, 1.5, 3.0)
        target = 1.0 if winding else floor
        speed[position:position + length] = target + (value - target) * np.exp(-local / tau)
        value = speed[position + length - 1]
        position += length
        winding = not winding
    return speed


def fire_truck_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Mechanical wail: slow wind-up and coast-down (cycles of 3-9 s), sawtooth timbre, rotor growl."""
    top = log_uniform(rng, 700, 1150)
    speed = _rotor_speed(rng, n, sr, (1.5, 4.0), (2.0, 5.0), floor=uniform(rng, 0.0, 0.3))
    floor = uniform(rng, 0.2, 0.45)
    freq = top * (floor + (1 - floor) * speed)
    tone = harmonic_tone(freq, [1 / k for k in range(1, 13)], sr, rng)
    tone += uniform(rng, 0.15, 0.35) * harmonic_tone(freq / 2, [1, 0.3], sr, rng)
    growl = 1 + uniform(rng, 0.2, 0.45) * shaped_noise(rng, n, sr, low=15.0, high=45.0)
    whoosh = shaped_noise(rng, n, sr, low=600.0) * uniform(rng, 0.05, 0.15) * rms(tone)
    out = (tone * growl + whoosh * speed) * (0.3 + 0.7 * speed)
    return _distance(rng, out, sr)


def civil_defense_siren(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Distant two-note chord (330-560 Hz): steady alert or very slow rise/fall, rotating horn, long echoes."""
    t = time_axis(n, sr)
    base = log_uniform(rng, 330, 560)
    ratio = (1.2, 1.25, 1.335, 1.5)[rng.integers(4)]
    if rng.random() < 0.5:  # alert: a wind-up to a steady tone
        speed = 1 - (1 - uniform(rng, 0.3, 1.0)) * np.exp(-t / uniform(rng, 1.0, 3.0))
    else:  # attack: slow waving rise and fall
        speed = 0.775 + 0.225 * np.sin(2 * np.pi * t / uniform(rng, 8, 20) + rng.uniform(0, 2 * np.pi))
    freq = base * (0.3 + 0.7 * speed)
    amps = [k ** -1.3 for k in range(1, 11)]
    tone = harmonic_tone(freq, amps, sr, rng) + 0.8 * harmonic_tone(freq * ratio, amps, sr, rng)
    rotation = 0.5 - 0.5 * np.cos(2 * np.pi * t / uniform(rng, 4, 15) + rng.uniform(0, 2 * np.pi))
    tone *= 10 ** (-uniform(rng, 4, 14) * rotation / 20)
    tone = filtered(tone, sr, "lowpass", uniform(rng, 2000, 4000))
    echoes = tone.copy()
    for _ in range(int(rng.integers(2, 4))):
        delay = int(uniform(rng, 0.2, 1.0) * sr)
        echoes[delay:] += uniform(rng, 0.2, 0.5) * tone[: n - delay]
    return reverb(rng, echoes, sr, uniform(rng, 1.5, 3.0), uniform(rng, 0.4, 0.7))


# --------------------------------------------------------------------------- voice
def screaming(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """1-3 screams: high f0 (400-1100 Hz) rise-hold-fall, vibrato, jitter, formants, breath, roughness."""
    out = np.zeros(n)
    count = 1 + (int(rng.integers(0, 3)) if n > 2 * sr else 0)
    bounds = np.sort(rng.uniform(0.25, 0.75, count - 1)) * n if count > 1 else np.array([])
    edges = np.concatenate([[0], bounds, [n]]).astype(int)
    formants = [(uniform(rng, 700, 1200), 1.0), (uniform(rng, 1200, 2000), 0.7), (uniform(rng, 2600, 3400), 0.4)]
    for start, stop in zip(edges[:-1], edges[1:]):
        breath = int(min(uniform(rng, 0.1, 0.3) * sr, 0.3 * (stop - start))) if stop < n else 0
        m = stop - start - breath
        t = time_axis(m, sr)
        peak = log_uniform(rng, 400, 1100)
        rise = np.minimum(1, t / (0.2 * t[-1] + 1e-9))
        fall = np.maximum(0, (t - 0.7 * t[-1]) / (0.3 * t[-1] + 1e-9))
        contour = 0.7 + 0.3 * rise - 0.2 * fall
        vibrato = 1 + uniform(rng, 0.005, 0.03) * np.sin(2 * np.pi * uniform(rng, 4, 8) * t)
        jitter = 1 + 0.01 * smooth_curve(rng, m, sr, 20)
        f0 = peak * contour * vibrato * jitter
        source = harmonic_tone(f0, [k ** -0.8 for k in range(1, 20)], sr, rng)
        if rng.random() < 0.3:  # rough scream: subharmonic
            source += uniform(rng, 0.2, 0.5) * harmonic_tone(f0 / 2, [1, 0.5, 0.3], sr, rng)
        source += uniform(rng, 0.05, 0.15) * rms(source) * shaped_noise(rng, m, sr, low=1000.0, high=5000.0)
        voiced = 0.1 * source + sum(gain * resonance(source, sr, freq, uniform(rng, 4, 7)) for freq, gain in formants)
        out[start:start + m] += voiced * envelope(m, sr, uniform(rng, 0.03, 0.1), uniform(rng, 0.05, 0.2))
    return reverb(rng, out, sr, uniform(rng, 0.2, 0.8), uniform(rng, 0.1, 0.35))


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
    return log_uniform(rng, low, high) * (1 + wander * smooth_curve(rng, n, sr, uniform(rng, 0.2, 0.6)))


def _gear_run(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """Accelerating firing rate (n,) in Hz: rises in each gear, drops at each shift."""
    t = time_axis(n, sr)
    shift = uniform(rng, 1.5, 4.0)
    within = (t / shift + rng.uniform(0, 1)) % 1.0
    return low + (high - low) * (0.35 + 0.65 * within) ** 1.3


def _tyres(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS tyre/road noise: pink noise band-limited to 300-3000 Hz (random edges)."""
    return shaped_noise(rng, n, sr, beta=1.0, low=uniform(rng, 200, 400), high=uniform(rng, 2000, 4500))


def car_engine_at_rest(rng: np.random.Generator, n: int, sr: int, firing: np.ndarray) -> np.ndarray:
    """Unit-RMS petrol four-cylinder: smooth pulses, 90-200 Hz and 350-700 Hz exhaust modes."""
    modes = [(uniform(rng, 90, 200), uniform(rng, 0.008, 0.02), 1.0),
             (uniform(rng, 350, 700), uniform(rng, 0.004, 0.008), 0.5),
             (uniform(rng, 1000, 1800), uniform(rng, 0.002, 0.004), 0.2)]
    return unit_rms(_engine(rng, n, sr, firing, (0, 0.25, 0.5, 0.75), 0.06, modes, knock=0.0))


def car(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """A car nearby (idling or driving): four-cylinder engine 28-80 Hz firing, tyre noise, no pass-by."""
    firing = (_gear_run(rng, n, sr, uniform(rng, 28, 40), uniform(rng, 55, 80)) if rng.random() < 0.4
              else _rpm_track(rng, n, sr, 28, 70, uniform(rng, 0.05, 0.2)))
    out = car_engine_at_rest(rng, n, sr, firing) + uniform(rng, 0.2, 0.8) * _tyres(rng, n, sr)
    out *= 1 + 0.2 * smooth_curve(rng, n, sr, 0.3)
    return reverb(rng, filtered(out, sr, "lowpass", uniform(rng, 3000, 6000)), sr, uniform(rng, 0.2, 0.6), 0.2)


def car_passing_by(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """A car driving past at 8-28 m/s, 2-10 m away: Doppler drop, loudness rise and fall, tyre hiss."""
    firing_rate, tyre_level = uniform(rng, 45, 110), uniform(rng, 0.8, 2.0)

    def render(m: int) -> np.ndarray:
        firing = firing_rate * (1 + 0.05 * smooth_curve(rng, m, sr, 0.5))
        engine = car_engine_at_rest(rng, m, sr, firing)
        return engine + tyre_level * shaped_noise(rng, m, sr, beta=0.8, low=200.0, high=5000.0)

    out = pass_by(render, n, sr, speed=uniform(rng, 8, 28), distance=uniform(rng, 2, 10),
                  t_closest=uniform(rng, 0.3, 0.7) * n / sr)
    return out * envelope(n, sr, 0.3, 0.3)


def bus(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Smooth six-cylinder diesel (18-40 Hz firing), transmission whine tracking the rpm, door air hiss."""
    firing = (_gear_run(rng, n, sr, uniform(rng, 18, 24), uniform(rng, 32, 40)) if rng.random() < 0.5
              else _rpm_track(rng, n, sr, 18, 35, 0.08))
    modes = [(uniform(rng, 70, 140), uniform(rng, 0.015, 0.03), 1.0),
             (uniform(rng, 250, 500), uniform(rng, 0.005, 0.01), 0.4)]
    out = unit_rms(_engine(rng, n, sr, firing, tuple(np.arange(6) / 6), 0.05, modes, knock=0.1))
    whine = harmonic_tone(firing * uniform(rng, 25, 60), [1, 0.3], sr, rng)
    out += uniform(rng, 0.15, 0.4) * unit_rms(whine)
    out += uniform(rng, 0.2, 0.5) * _tyres(rng, n, sr)
    if rng.random() < 0.5:  # pneumatic door / brake release
        m = int(uniform(rng, 0.4, 1.2) * sr)
        start = int(rng.integers(0, max(1, n - m)))
        hiss = shaped_noise(rng, min(m, n), sr, low=2000.0, high=6000.0)
        out[start:start + hiss.size] += uniform(rng, 0.8, 2.0) * hiss * envelope(hiss.size, sr, 0.02, 0.3)
    return reverb(rng, out, sr, uniform(rng, 0.2, 0.8), 0.25)


def truck(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Heavy diesel (20-45 Hz firing): knocking clatter, deep rumble, sometimes an engine brake burst."""
    firing = _rpm_track(rng, n, sr, 20, 45, uniform(rng, 0.05, 0.25))
    modes = [(uniform(rng, 50, 110), uniform(rng, 0.02, 0.04), 1.5),
             (uniform(rng, 200, 400), uniform(rng, 0.006, 0.012), 0.5)]
    out = unit_rms(_engine(rng, n, sr, firing, tuple(np.arange(6) / 6), 0.12, modes, knock=uniform(rng, 0.4, 0.9)))
    out += uniform(rng, 0.3, 0.8) * shaped_noise(rng, n, sr, high=120.0)
    if n > 2 * sr and rng.random() < 0.25:  # engine ("jake") brake: loud barking staccato
        m = int(uniform(rng, 1.0, min(3.0, n / sr - 0.5)) * sr)
        start = int(rng.integers(0, n - m))
        bark_modes = [(uniform(rng, 300, 600), 0.02, 1.0), (uniform(rng, 80, 150), 0.03, 1.0)]
        bark = _engine(rng, m, sr, firing[start:start + m] * 1.5, (0, 1 / 3, 2 / 3), 0.1, bark_modes, knock=0.5)
        out[start:start + m] += uniform(rng, 1.5, 3.0) * unit_rms(bark) * envelope(m, sr, 0.1, 0.2)
    out += uniform(rng, 0.1, 0.4) * _tyres(rng, n, sr)
    return reverb(rng, out, sr, uniform(rng, 0.2, 0.8), 0.25)


def motorcycle(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """V-twin, inline-four or single: uneven or fast firing (35-200 Hz), throttle blips or gear runs, bright exhaust."""
    layout = rng.choice(3, p=[0.45, 0.35, 0.2])
    offsets, low, high = (((0.0, 0.37), 35, 60), ((0, 0.25, 0.5, 0.75), 90, 160), ((0.0,), 25, 50))[layout]
    if rng.random() < 0.5:
        firing = _gear_run(rng, n, sr, low, high * 1.8)
    else:  # revving in place: throttle blips over idle
        firing = _rpm_track(rng, n, sr, low, high, 0.05)
        blips = np.arange(rng.uniform(0.1, 1.0), n / sr, uniform(rng, 0.8, 2.0))
        rise = np.zeros(n)
        for blip in blips:
            t = time_axis(n, sr) - blip
            rise += np.where(t > 0, (1 - np.exp(-t / 0.08)) * np.exp(-t / uniform(rng, 0.3, 0.8)), 0.0)
        firing = firing * (1 + uniform(rng, 0.8, 1.5) * np.minimum(rise, 1.0))
    modes = [(uniform(rng, 150, 400), uniform(rng, 0.006, 0.012), 1.0),
             (uniform(rng, 800, 2000), uniform(rng, 0.002, 0.005), 0.5)]
    out = unit_rms(_engine(rng, n, sr, firing, offsets, 0.15, modes, knock=uniform(rng, 0.1, 0.4)))
    out += uniform(rng, 0.1, 0.3) * _tyres(rng, n, sr)
    return reverb(rng, out, sr, uniform(rng, 0.2, 0.7), 0.2)


# --------------------------------------------------------------------------- trains
def train(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Rail traffic: clickety-clack of bogie pairs at the car period, rumble, rail roar, squeal, locomotive."""
    duration = n / sr
    speed, car_length = uniform(rng, 8, 30), uniform(rng, 14, 26)
    axle, bogies = uniform(rng, 2.2, 3.0) / speed, car_length * uniform(rng, 0.65, 0.75) / speed
    cars = np.arange(-rng.uniform(0, car_length / speed), duration, car_length / speed)
    hits = np.concatenate([cars, cars + axle, cars + bogies, cars + bogies + axle])
    hits += rng.normal(0, 0.002, hits.size)
    click_length = int(0.1 * sr)
    click = (damped_modes(click_length, sr, [(uniform(rng, 120, 350), 0.025, 1.0),
                                             (uniform(rng, 600, 1500), 0.008, 0.5)], rng)
             + 0.5 * noise_burst(rng, click_length, sr, 0.005, highpass=1000.0))
    out = unit_rms(convolve(impulses_at(hits, rng.uniform(0.7, 1.3, hits.size), n, sr), click))
    out += uniform(rng, 0.5, 1.0) * shaped_noise(rng, n, sr, beta=2.0, low=20.0, high=uniform(rng, 60, 150))
    out += uniform(rng, 0.3, 0.7) * shaped_noise(rng, n, sr, beta=1.0, low=200.0, high=1500.0)
    if rng.random() < 0.2:  # wheel squeal
        t = time_axis(n, sr)
        squeal = np.sin(2 * np.pi * np.cumsum(uniform(rng, 2000, 4500) * (1 + 0.01 * np.sin(2 * np.pi * 3 * t))) / sr)
        out += uniform(rng, 0.1, 0.3) * squeal * np.clip(smooth_curve(rng, n, sr, 0.7) * 2, 0, 1)
    if rng.random() < 0.35:  # diesel locomotive
        firing = _rpm_track(rng, n, sr, 25, 40, 0.05)
        modes = [(uniform(rng, 40, 90), 0.03, 1.0), (uniform(rng, 200, 350), 0.01, 0.4)]
        level = uniform(rng, 0.3, 0.6)
        out += level * unit_rms(_engine(rng, n, sr, firing, tuple(np.arange(8) / 8), 0.08, modes, knock=0.2))
    if rng.random() < 0.5:  # approaching or leaving
        t = time_axis(n, sr)
        centre = uniform(rng, -0.2, 1.2) * duration
        out *= 8 / np.hypot(8, speed * 0.3 * (t - centre))
    return reverb(rng, out, sr, uniform(rng, 0.3, 1.0), 0.25)


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
    colour[1:] = freqs[1:] ** -uniform(rng, 0.6, 2.0)
    rumble = np.zeros_like(freqs)
    rumble[1:] = freqs[1:] ** -2.0 * butterworth_gain(freqs[1:], None, uniform(rng, 60, 200), 2) ** 2
    power = colour / colour.mean() + uniform(rng, 0.5, 2.0) ** 2 * rumble / rumble.mean()
    gain = np.sqrt(power) * butterworth_gain(freqs, 20.0, uniform(rng, 3000, 7500), 2)
    bed = sp_fft.irfft(white_spectrum(rng, freqs.size) * gain, n).astype(np.float64)
    out = unit_rms(bed) * (1 + 0.3 * smooth_curve(rng, n, sr, uniform(rng, 0.05, 0.3)))
    if rng.random() < 0.3:  # wind gusts
        gusts = np.clip(0.5 + smooth_curve(rng, n, sr, uniform(rng, 0.2, 1.0)), 0, None) ** 2
        out += uniform(rng, 0.5, 1.5) * shaped_noise(rng, n, sr, high=400.0) * gusts
    if rng.random() < 0.3:  # distant babble: formant bands with syllabic modulation
        babble = np.zeros(n)
        for low, high in ((300, 900), (900, 2200), (2200, 3500)):
            syllables = np.clip(smooth_curve(rng, n, sr, uniform(rng, 6, 12)), 0, None)
            babble += syllables * shaped_noise(rng, n, sr, low=low, high=high)
        out += uniform(rng, 0.2, 0.6) * unit_rms(babble)
    if rng.random() < 0.25:  # birds: short FM chirps
        chirps = np.zeros(n)
        for _ in range(int(rng.integers(2, 9))):
            m = int(uniform(rng, 0.05, 0.15) * sr)
            start = int(rng.integers(0, n - m))
            sweep = np.linspace(uniform(rng, 2000, 6000), uniform(rng, 2000, 6000), m)
            chirps[start:start + m] += np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.hanning(m)
        out += uniform(rng, 0.3, 0.8) * unit_rms(chirps)
    if rng.random() < 0.2:  # mains hum
        mains = (50.0, 60.0)[rng.integers(2)]
        out += uniform(rng, 0.05, 0.2) * unit_rms(harmonic_tone(np.full(n, mains), [1, 0.5, 0.3], sr, rng))
    return unit_rms(out)


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

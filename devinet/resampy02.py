"""An exact re-implementation of the resampler of the original features: resampy 0.2's ``kaiser_best``.

The original pipeline resampled with ``librosa.resample``, whose default up to librosa 0.9 was
resampy <= 0.2 with its ``kaiser_best`` filter (a Kaiser-windowed sinc with 64 zero
crossings, 2**9 table entries per crossing). resampy >= 0.3 ships a different filter and
librosa >= 0.10 defaults to soxr, so today's libraries cannot rebuild the original features.
This module rebuilds that resampler (same windowed-sinc table, same integer table stride,
same float64 time register) as an exact polyphase filter: :func:`resample_kaiser_best` in
numpy, :class:`Resample` as a batched torch module.

How resampy computes output t: from the float64 time register tau_t (t additions of
1 / ratio), with n = floor(tau_t) and frac = scale * (tau_t - n), input x[n - i] is weighted
by the interpolated table entry at offset(frac) + i * step and x[n + 1 + k] by the one at
offset(scale - frac) + k * step, where step = int(scale * 512) is truncated (so the filter
is not exactly the ideal sinc at the output rate; reproducing it matters). For a rational
ratio up/down the weights repeat every ``up`` outputs: a polyphase FIR. The float register
drifts from the exact rational time by ~1e-6 samples over 10 s; where that changes n or a
table offset (about 0.3 % of outputs at 44.1 kHz) the outputs are recomputed one by one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .recipe import SAMPLE_RATE

# resampy 0.2's kaiser_best filter: 64 zero crossings, 2**9 table entries per crossing.
_NUM_ZEROS = 64
_TABLE_BITS = 9
_KAISER_BETA = 14.769656459379492
_ROLLOFF = 0.9475937167399596
# Beyond this many polyphase phases (e.g. 44101 Hz -> 16 kHz needs 16000) the kernel is too
# large to be worth it; outputs are then computed one by one (same values, slower).
_MAX_PHASES = 2048


@dataclass(frozen=True, eq=False)  # hashed by identity: plans are cached per rate pair
class ResamplePlan:
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
def resample_plan(orig_sr: int, target_sr: int) -> ResamplePlan:
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
    if step == 0:  # beyond table-fold downsampling the filter would have no taps
        raise InputError(f"{orig_sr} Hz -> {target_sr} Hz: the resampler downsamples by at most {table}x")
    wing = window.shape[0] // step
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    plan = ResamplePlan(orig_sr, target_sr, up, down, scale, step, window, delta, wing, None, None, None, 0, 0, 0)
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
    return ResamplePlan(orig_sr, target_sr, up, down, scale, step, window, delta, wing, phase_n, offsets,
                         kernel, kernel_start, up * group, down * group)


@functools.lru_cache(maxsize=32)
def _irregular_outputs(plan: ResamplePlan, num_outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def resample_kaiser_best(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """(n,) float64 -> (ceil(n * ratio),) float64, exactly as librosa <= 0.9 with resampy 0.2 ``kaiser_best``."""
    plan = resample_plan(orig_sr, target_sr)
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


class Resample(torch.nn.Module):
    """The original resampler as a torch module: (N, n) at ``orig_sr`` -> (N, ceil(n * ratio)).

    The polyphase kernel applied to strided windows of the input (one matrix product per
    group of phases), plus the few outputs where the original's float time register departs
    from exact rational time, recomputed from a small cached table. Rates needing more than
    2048 phases are refused (:func:`extract_logmel_batch` resamples those with the numpy
    reference instead).

    Each row of the kernel is non-zero on a band of ``2 * wing`` inputs that moves with the
    phase, so the kernel is split into :data:`KERNEL_GROUPS` groups of consecutive phases,
    each applied to the input span its band covers (at 44.1 kHz two groups skip 28 % of the
    dense kernel's multiply-adds; docs/benchmarks.md says why two).
    """

    #: groups of consecutive phases, each applied as its own matrix product
    KERNEL_GROUPS = 2

    def __init__(self, orig_sr: int, target_sr: int = SAMPLE_RATE):
        super().__init__()
        self.plan = resample_plan(int(orig_sr), int(target_sr))
        if self.plan.kernel is None:
            raise InputError(f"{orig_sr} Hz -> {target_sr} Hz needs {self.plan.up} polyphase phases "
                             f"(more than {_MAX_PHASES}); use resample_kaiser_best")
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


__all__ = ["ResamplePlan", "resample_plan", "resample_kaiser_best", "Resample"]

"""Class-ratio balanced mini-batches, drawn the way the original CVSSP training drew them.

The original (``RatioDataGenerator`` in yongxuUSTC/dcase2017_task4_cvssp, batch 44) gives
each class a number of *slots* from its training-set count, shuffles the list of slots,
and fills every batch by taking the next ``batch_size`` slots from a queue; each slot of
class c contributes the next clip of class c. This module reproduces that scheme, with
these choices (each compared with the original):

1. Slots per class: 1 (< 1000 clips), 2 (< 2000), 3 (< 3000), 4 (< 4000), else 5, as in
   the original. On the DCASE 2017 training set that is 43 slots in all.
2. Queue: when fewer than ``batch_size`` slots are waiting, a freshly shuffled copy of the
   slot list is appended; a batch takes the first ``batch_size`` slots and the rest stays
   queued for the next batch (with 43 slots and batch 44, cycles straddle batches), as in
   the original.
3. Per-class passes: each class walks through its clips in a shuffled order; a draw of n
   clips takes the next n. A draw that reaches the end of the pass is cut short there (the
   batch then holds fewer than ``batch_size`` clips) and the next draw of that class starts
   a new shuffled pass, as in the original. So every clip of a class is used once before
   any is reused, and a class with fewer clips than slots drawn gives what it has.
4. A clip with several labels is reachable through each of its classes, so it may appear
   twice in a batch, as in the original.
5. Batch order: classes in index order, each class's clips in pass order (the original's
   concatenation order).
6. Departure: a class with no positive clip gets no slot. The original gave it one slot
   that drew nothing, which only made its batches shorter; the official training set has
   no empty class, so this changes nothing there.
7. Departure: randomness. The original used NumPy's and Python's global generators. Here
   every permutation is drawn from ``numpy.random.default_rng((seed, stream, ...))`` keyed
   by counters (the queue cycle, or the class and its pass number), so the whole state is
   a few integers: ``get_state``/``set_state`` resume a run exactly, and the sequence of
   batches depends only on the labels, ``batch_size`` and ``seed``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from devinet.errors import InputError

#: Training-count thresholds of the original: < 1000 clips -> 1 slot, ..., >= 4000 -> 5 slots.
SLOT_THRESHOLDS = (1000, 2000, 3000, 4000)

# Stream ids of the seeded generators (one for the slot queue, one for the per-class passes).
_QUEUE_STREAM = 0
_CLASS_STREAM = 1


def class_slots(counts: np.ndarray) -> np.ndarray:
    """Slots per class in one queue cycle from the per-class training counts, (C,) -> (C,) int64.

    1 slot below 1000 clips, one more per further 1000 up to 5 (at 4000 and above); 0 for a
    class without clips (choice 6 of the module docstring).
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or np.any(counts < 0):
        raise InputError(f"class counts must be a 1-D array of non-negative numbers, got shape {counts.shape}")
    slots = 1 + np.searchsorted(SLOT_THRESHOLDS, counts, side="right")
    return np.where(counts > 0, slots, 0).astype(np.int64)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise InputError(f"labels must be a non-empty (clips, classes) multi-hot array, got shape {labels.shape}")
    if labels.dtype != bool and not np.all((labels == 0) | (labels == 1)):
        raise InputError("labels must be multi-hot: every value 0 or 1")
    positive = labels.astype(bool)
    if not positive.any():
        raise InputError("labels have no positive entry: no class has a clip to draw")
    return positive


class BalancedBatchSampler:
    """Endless iterator of class-ratio balanced batches of clip indices.

    Args:
        labels: (N, C) multi-hot training labels (bool or 0/1 numbers).
        batch_size: slots per batch (44 in the original); a batch holds at most this many
            indices, fewer when a class's pass ends inside it.
        seed: seed of every permutation (see the module docstring).

    ``next(sampler)`` returns a 1-D int64 array of row indices into ``labels``.
    """

    def __init__(self, labels: np.ndarray, batch_size: int = 44, seed: int = 0):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        positive = _check_labels(labels)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_clips, self.num_classes = positive.shape
        #: clips of each class in ascending order; passes permute these
        self.members = [np.flatnonzero(positive[:, c]) for c in range(self.num_classes)]
        self.counts = np.array([len(m) for m in self.members], dtype=np.int64)
        self.slots = class_slots(self.counts)
        self._slot_list = np.repeat(np.arange(self.num_classes), self.slots)
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.iteration = 0  # batches drawn so far
        self._cycle = 0  # shuffled copies of the slot list appended to the queue so far
        self._queue = np.zeros(0, dtype=np.int64)
        self._pointers = np.zeros(self.num_classes, dtype=np.int64)
        # Pass -1 with its pointer at the end: the first draw of a class starts pass 0.
        self._passes = np.full(self.num_classes, -1, dtype=np.int64)
        self._pointers[:] = self.counts
        self._orders: list[np.ndarray | None] = [None] * self.num_classes

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue this exact sequence of batches, as plain ints and lists."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "class_counts": self.counts.tolist(),
            "iteration": self.iteration,
            "cycle": self._cycle,
            "queue": self._queue.tolist(),
            "pointers": self._pointers.tolist(),
            "passes": self._passes.tolist(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``get_state()`` of a sampler built on the same labels, batch size and seed."""
        missing = sorted({"seed", "batch_size", "class_counts", "iteration", "cycle", "queue", "pointers",
                          "passes"} - set(state))
        if missing:
            raise InputError(f"sampler state lacks {', '.join(missing)}")
        if int(state["seed"]) != self.seed or int(state["batch_size"]) != self.batch_size:
            raise InputError(
                f"sampler state is for seed {state['seed']} and batch size {state['batch_size']}, "
                f"this sampler has seed {self.seed} and batch size {self.batch_size}"
            )
        if not np.array_equal(np.asarray(state["class_counts"]), self.counts):
            raise InputError("sampler state was saved for labels with other per-class counts")
        pointers = np.asarray(state["pointers"], dtype=np.int64)
        passes = np.asarray(state["passes"], dtype=np.int64)
        queue = np.asarray(state["queue"], dtype=np.int64).reshape(-1)
        if pointers.shape != (self.num_classes,) or passes.shape != (self.num_classes,):
            raise InputError(f"sampler state must hold {self.num_classes} pointers and passes")
        if np.any(queue < 0) or np.any(queue >= self.num_classes) or np.any(self.slots[queue] == 0):
            raise InputError("sampler state's queue names classes that have no slot")
        self.iteration = int(state["iteration"])
        self._cycle = int(state["cycle"])
        self._queue = queue
        self._pointers = pointers
        self._passes = passes
        self._orders = [self._pass_order(c, int(p)) if p >= 0 else None for c, p in enumerate(passes)]

    # ------------------------------------------------------------------ drawing
    def _pass_order(self, klass: int, pass_number: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, _CLASS_STREAM, klass, pass_number))
        return rng.permutation(self.members[klass])

    def _fill_queue(self) -> None:
        while len(self._queue) < self.batch_size:
            rng = np.random.default_rng((self.seed, _QUEUE_STREAM, self._cycle))
            self._queue = np.concatenate([self._queue, rng.permutation(self._slot_list)])
            self._cycle += 1

    def _draw(self, klass: int, n: int) -> np.ndarray:
        """The next ``n`` clips of ``klass`` (fewer at the end of a pass)."""
        if self._pointers[klass] >= self.counts[klass]:
            self._passes[klass] += 1
            self._pointers[klass] = 0
            self._orders[klass] = self._pass_order(klass, int(self._passes[klass]))
        start = int(self._pointers[klass])
        self._pointers[klass] += n
        return self._orders[klass][start:start + n]

    def __iter__(self) -> "BalancedBatchSampler":
        return self

    def __next__(self) -> np.ndarray:
        self._fill_queue()
        taken, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
        per_class = np.bincount(taken, minlength=self.num_classes)
        parts = [self._draw(c, int(n)) for c, n in enumerate(per_class) if n > 0]
        self.iteration += 1
        return np.concatenate(parts).astype(np.int64, copy=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(clips={self.num_clips}, classes={self.num_classes}, "
                f"batch_size={self.batch_size}, seed={self.seed}, slots={self.slots.tolist()})")

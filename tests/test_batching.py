"""The class-ratio balanced batch sampler (experiments.batching) against the original generator's rules."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.batching import BalancedBatchSampler, class_slots
from devinet.errors import InputError


def single_label(counts: list[int]) -> np.ndarray:
    """(sum(counts), C) one-hot labels, class c owning counts[c] consecutive clips."""
    classes = np.repeat(np.arange(len(counts)), counts)
    return np.eye(len(counts), dtype=np.float32)[classes]


def class_of(labels: np.ndarray, batch: np.ndarray) -> np.ndarray:
    return labels[batch].argmax(axis=1)


@pytest.mark.parametrize(
    "count, slots",
    [(0, 0), (1, 1), (999, 1), (1000, 2), (1999, 2), (2000, 3), (2999, 3), (3000, 4), (3999, 4), (4000, 5),
     (25077, 5)],
)
def test_slots_follow_the_original_thresholds(count, slots):
    assert class_slots(np.array([count])).tolist() == [slots]


def test_slots_of_the_official_training_set(reference_dir):
    from experiments.meta import labels_to_multihot, read_clip_list

    clips = read_clip_list(reference_dir / "dcase2017_task4" / "meta" / "training_set.csv")
    labels = np.stack([labels_to_multihot(c.labels) for c in clips])
    sampler = BalancedBatchSampler(labels)
    assert sampler.num_clips == 51172
    # Car (25077 clips) and Truck get 5 slots, the rare classes 1: 43 slots per cycle in all.
    assert sampler.slots.tolist() == [1, 1, 1, 1, 2, 2, 1, 3, 2, 3, 1, 5, 4, 4, 5, 4, 3]
    assert len(next(sampler)) <= 44


def test_class_ratio_is_exact_over_whole_cycles():
    counts = [5000, 3500, 2500, 1500, 10]  # slots 5, 4, 3, 2, 1: 15 per cycle
    labels = single_label(counts)
    sampler = BalancedBatchSampler(labels, batch_size=6, seed=1)
    # 5 batches of 6 consume exactly 2 cycles of 15 slots. Class 4 (10 clips, 1 slot a cycle)
    # never reaches the end of a pass here, and neither do the large classes.
    drawn = Counter()
    for _ in range(5):
        batch = next(sampler)
        assert len(batch) == 6
        drawn.update(class_of(labels, batch).tolist())
    assert [drawn[c] for c in range(5)] == [10, 8, 6, 4, 2]


def test_every_class_is_drawn_in_every_batch_of_an_epoch():
    counts = [4000, 3000, 1000, 50, 3, 1]  # slots 5, 4, 2, 1, 1, 1: 14 per cycle
    labels = single_label(counts)
    sampler = BalancedBatchSampler(labels, batch_size=44, seed=7)
    for _epoch in range(2):
        drawn = Counter()
        for _ in range(100):  # an original "epoch"
            classes = class_of(labels, next(sampler))
            assert set(classes.tolist()) == set(range(len(counts)))  # a batch spans > 3 cycles
            drawn.update(classes.tolist())
        # 4400 slots = 314 cycles and 4 slots. The two largest classes never reach the end of
        # a pass in 200 batches, so they get exactly their slots' worth.
        for c in (0, 1):
            assert 314 * sampler.slots[c] <= drawn[c] <= 315 * sampler.slots[c]


def test_each_pass_uses_every_clip_of_a_class_once():
    labels = single_label([1200, 7])  # class 0: 2 slots, class 1: 1 slot
    sampler = BalancedBatchSampler(labels, batch_size=3, seed=3)
    draws = {0: [], 1: []}
    while len(draws[1]) < 21:
        batch = next(sampler)
        for c in (0, 1):
            draws[c].extend(batch[class_of(labels, batch) == c].tolist())
    passes = [draws[1][i:i + 7] for i in range(0, 21, 7)]
    assert all(sorted(p) == list(range(1200, 1207)) for p in passes)
    assert passes[0] != passes[1] or passes[1] != passes[2]  # each pass is reshuffled
    assert len(set(draws[0])) == len(draws[0])  # no clip of class 0 repeats within its first pass


def test_a_pass_that_ends_inside_a_draw_gives_a_short_batch():
    # Two classes of one clip each, batch 4: each class is drawn twice per batch but has one
    # clip, so (as in the original) each batch holds the two clips once, classes in order.
    labels = single_label([1, 1])
    sampler = BalancedBatchSampler(labels, batch_size=4, seed=0)
    for _ in range(3):
        assert next(sampler).tolist() == [0, 1]


def test_a_multi_label_clip_is_reachable_through_each_of_its_classes():
    labels = np.array([[1, 1], [1, 0], [0, 1]], dtype=np.int64)
    sampler = BalancedBatchSampler(labels, batch_size=2, seed=0)
    seen = Counter(i for _ in range(20) for i in next(sampler).tolist())
    assert seen[0] == 20  # clip 0 is drawn by class 0 on every other pass and by class 1 likewise
    assert seen[1] == seen[2] == 10


def test_a_class_without_clips_gets_no_slot():
    labels = np.zeros((16, 3), dtype=bool)
    labels[:8, 0] = labels[8:, 2] = True
    sampler = BalancedBatchSampler(labels, batch_size=4, seed=0)
    assert sampler.slots.tolist() == [1, 0, 1]
    for _ in range(10):
        # 2 draws per class and batch, 8 clips per class: passes end exactly at batch ends,
        # so every batch is full: no slot is wasted on the empty class.
        assert len(next(sampler)) == 4
    with pytest.raises(InputError, match="no positive"):
        BalancedBatchSampler(np.zeros((4, 3)))


@pytest.mark.parametrize(
    "labels, batch_size, seed, message",
    [
        (np.ones(5), 4, 0, "multi-hot array"),
        (np.full((3, 2), 0.5), 4, 0, "every value 0 or 1"),
        (np.ones((3, 2)), 0, 0, "batch_size"),
        (np.ones((3, 2)), 4, -1, "seed"),
    ],
)
def test_bad_arguments_are_refused(labels, batch_size, seed, message):
    with pytest.raises(InputError, match=message):
        BalancedBatchSampler(labels, batch_size=batch_size, seed=seed)


def test_same_seed_same_batches_other_seed_other_batches(rng):
    labels = (rng.random((300, 5)) < 0.3).astype(np.float32)
    a, b, c = (BalancedBatchSampler(labels, batch_size=11, seed=s) for s in (5, 5, 6))
    seq_a = [next(a).tolist() for _ in range(30)]
    assert seq_a == [next(b).tolist() for _ in range(30)]
    assert seq_a != [next(c).tolist() for _ in range(30)]


def test_state_round_trip_through_json_continues_the_same_sequence(rng):
    labels = (rng.random((200, 6)) < 0.25).astype(np.float32)
    labels[0] = 1  # no empty class
    original = BalancedBatchSampler(labels, batch_size=9, seed=11)
    for _ in range(13):
        next(original)
    state = json.loads(json.dumps(original.get_state()))
    resumed = BalancedBatchSampler(labels, batch_size=9, seed=11)
    resumed.set_state(state)
    assert resumed.iteration == 13
    for _ in range(40):
        assert np.array_equal(next(original), next(resumed))


def test_state_of_another_run_is_refused(rng):
    labels = (rng.random((50, 3)) < 0.5).astype(np.float32)
    labels[0] = 1
    state = BalancedBatchSampler(labels, batch_size=5, seed=1).get_state()
    with pytest.raises(InputError, match="seed"):
        BalancedBatchSampler(labels, batch_size=5, seed=2).set_state(state)
    other = labels.copy()
    other[1:, 0] = 1 - other[1:, 0]
    with pytest.raises(InputError, match="per-class counts"):
        BalancedBatchSampler(other, batch_size=5, seed=1).set_state(state)
    with pytest.raises(InputError, match="lacks queue"):
        BalancedBatchSampler(labels, batch_size=5, seed=1).set_state({k: v for k, v in state.items() if k != "queue"})


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=30),
    batch_size=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_batches_are_valid_for_any_small_dataset(labels, batch_size, seed):
    labels = np.array(labels, dtype=bool)
    if not labels.any():
        return
    sampler = BalancedBatchSampler(labels, batch_size=batch_size, seed=seed)
    for _ in range(15):
        batch = next(sampler)
        assert batch.dtype == np.int64
        assert 1 <= len(batch) <= batch_size
        assert labels[batch].any(axis=1).all()  # every drawn clip belongs to some class

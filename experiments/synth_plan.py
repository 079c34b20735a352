"""Planning the synthetic DCASE 2017 Task 4 stand-in (experiments.synth): which clips, which events.

Cheap and without audio: :func:`plan_clip` draws a clip's fake YouTube id, its events
(label, onset, offset, SNR, synthesis seed) and its background level and seed from the
clip's own random stream; :func:`plan_split` plans a whole split. The draws are shaped after
the real data: event durations per class (:data:`DURATIONS`), repeats, companion classes
(:data:`COMPANIONS`) and class proportions (:data:`TRAIN_SLOTS`, :data:`TEST_SLOTS`).

Determinism: clip ``index`` of split ``split`` depends only on ``(seed, split, index)``:
its random stream is ``SeedSequence(seed, spawn_key=(split_id, 0, index))``, and training
and testing clips use different ``split_id`` (disjoint streams). Sizes only choose how many
clips are drawn, so the ``tiny`` clips are the first clips of ``quick``, and those of ``full``.
The primary class of each clip follows a shuffled cycle of class slots, so every prefix of
a split has the intended class proportions (and every class appears in every cycle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devinet.errors import ConfigError
from experiments.meta import CLASSES, Event

DEFAULT_SEED = 2017
CLIP_SECONDS = 10.0
CLIP_MS = 10_000

#: Event to background ratio: event RMS over its labelled extent / background RMS over the clip.
SNR_DB = (0.0, 20.0)
#: Background RMS level before the clip's peak limiting.
BACKGROUND_DBFS = (-50.0, -30.0)
MAX_EVENTS = 3
#: Gap between two events of the same class, so their strong labels never overlap.
SAME_CLASS_GAP_MS = 300

#: Event duration per class (seconds): log-uniform in [min, max], or the whole clip with
#: probability ``p_whole`` (the real strong labels mark most sirens, buses and trucks as
#: lasting the whole clip, and horns, bells and screams as short).
DURATIONS: dict[str, tuple[float, float, float]] = {
    "Train horn": (0.8, 4.0, 0.0),
    "Air horn, truck horn": (0.3, 2.5, 0.05),
    "Car alarm": (1.5, 8.0, 0.15),
    "Reversing beeps": (2.0, 8.0, 0.2),
    "Bicycle": (0.8, 5.0, 0.1),
    "Skateboard": (1.5, 8.0, 0.2),
    "Ambulance (siren)": (3.0, 10.0, 0.45),
    "Fire engine, fire truck (siren)": (4.0, 10.0, 0.5),
    "Civil defense siren": (5.0, 10.0, 0.6),
    "Police car (siren)": (2.0, 10.0, 0.4),
    "Screaming": (0.4, 3.0, 0.0),
    "Car": (2.0, 10.0, 0.3),
    "Car passing by": (3.0, 9.0, 0.2),
    "Bus": (3.0, 10.0, 0.5),
    "Truck": (3.0, 10.0, 0.5),
    "Motorcycle": (2.0, 10.0, 0.35),
    "Train": (3.0, 10.0, 0.4),
}

#: Probability that a clip holds a second instance of its primary class (short sounds recur).
REPEAT_PROBABILITY: dict[str, float] = {
    "Train horn": 0.35, "Air horn, truck horn": 0.35, "Bicycle": 0.3, "Screaming": 0.35, "Car passing by": 0.15,
}

#: Companion classes given the primary class, with probabilities (at most one is drawn),
#: shaped after the label co-occurrences of the real training list (e.g. 1,799 clips are
#: "Car,Car passing by", 745 "Fire engine, fire truck (siren),Truck").
COMPANIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "Train horn": (("Train", 0.5),),
    "Air horn, truck horn": (("Truck", 0.2), ("Car", 0.1)),
    "Car alarm": (("Car", 0.2),),
    "Reversing beeps": (("Truck", 0.45), ("Bus", 0.05)),
    "Bicycle": (("Skateboard", 0.05), ("Car", 0.05)),
    "Skateboard": (("Bicycle", 0.05),),
    "Ambulance (siren)": (("Police car (siren)", 0.1), ("Fire engine, fire truck (siren)", 0.1), ("Car", 0.05)),
    "Fire engine, fire truck (siren)": (("Truck", 0.35), ("Police car (siren)", 0.08), ("Car", 0.05)),
    "Civil defense siren": (("Fire engine, fire truck (siren)", 0.05), ("Police car (siren)", 0.05)),
    "Police car (siren)": (("Car", 0.3), ("Fire engine, fire truck (siren)", 0.05), ("Car passing by", 0.05)),
    "Screaming": (("Car", 0.05),),
    "Car": (("Truck", 0.1), ("Car passing by", 0.1)),
    "Car passing by": (("Car", 0.6),),
    "Bus": (("Car", 0.1), ("Truck", 0.1)),
    "Truck": (("Car", 0.2),),
    "Motorcycle": (("Car", 0.15),),
    "Train": (("Train horn", 0.1),),
}
#: Probability of one more event of a random absent class, so co-occurrence is never a rule.
DISTRACTOR_PROBABILITY = 0.1

#: Primary-class slots per training cycle (24 clips): an imbalance like the real training
#: list (where "Car" is the most frequent label), kept mild so every class stays learnable.
TRAIN_SLOTS: dict[str, int] = {
    label: {"Fire engine, fire truck (siren)": 2, "Police car (siren)": 2, "Car": 3, "Car passing by": 2,
            "Truck": 2, "Train": 2}.get(label, 1) for label in CLASSES
}
#: Testing cycles hold one clip per class, like the balanced real testing list.
TEST_SLOTS: dict[str, int] = {label: 1 for label in CLASSES}
SPLITS = ("train", "test")
_SPLIT_IDS = {"train": 0, "test": 1}
_SLOTS = {"train": TRAIN_SLOTS, "test": TEST_SLOTS}
_CLIP_STREAM, _CYCLE_STREAM = 0, 1


@dataclass(frozen=True)
class SizeSpec:
    """How many cycles of class slots each split holds (a training cycle is 24 clips, a testing cycle 17)."""

    name: str
    train_cycles: int
    test_cycles: int

    def clips(self, split: str) -> int:
        cycles = self.train_cycles if split == "train" else self.test_cycles
        return cycles * sum(_SLOTS[split].values())


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec("tiny", train_cycles=6, test_cycles=2),      # 144 + 34 clips: tests
    "quick": SizeSpec("quick", train_cycles=80, test_cycles=18),  # 1920 + 306 clips: the README main job
    "full": SizeSpec("full", train_cycles=700, test_cycles=60),   # 16800 + 1020 clips
}


@dataclass(frozen=True)
class EventPlan:
    """One event of a clip: label, extent in whole milliseconds, SNR (dB) and synthesis seed."""

    label: str
    onset_ms: int
    offset_ms: int
    snr_db: float
    seed: int

    @property
    def onset(self) -> float:
        return self.onset_ms / 1000

    @property
    def offset(self) -> float:
        return self.offset_ms / 1000


@dataclass(frozen=True)
class ClipPlan:
    """Everything about a clip except its audio: identity, events, background level and seed."""

    split: str
    index: int
    primary: str
    youtube_id: str
    start: int
    events: tuple[EventPlan, ...]
    background_dbfs: float
    background_seed: int

    @property
    def key(self) -> str:
        """Canonical clip key ``<youtube_id>_<start>_<end>`` (as in the ground-truth files, without .wav)."""
        return f"{self.youtube_id}_{self.start:.3f}_{self.start + CLIP_SECONDS:.3f}"

    @property
    def name(self) -> str:
        """Audio file name ``Y<key>.wav``, as the DCASE 2017 download names it."""
        return f"Y{self.key}.wav"

    @property
    def labels(self) -> tuple[str, ...]:
        """The clip's weak labels, in the official class order."""
        present = {event.label for event in self.events}
        return tuple(label for label in CLASSES if label in present)

    @property
    def strong_labels(self) -> tuple[Event, ...]:
        """The clip's events as strong-label rows, exactly as written to the ground-truth file."""
        return tuple(Event(self.key, event.onset, event.offset, event.label) for event in self.events)


def resolve_size(size: str | SizeSpec) -> SizeSpec:
    """The :class:`SizeSpec` of a size name (``tiny``, ``quick``, ``full``) or a spec itself."""
    if isinstance(size, SizeSpec):
        if size.train_cycles < 1 or size.test_cycles < 1:
            raise ConfigError(f"size {size.name!r}: each split needs at least one cycle")
        return size
    if size not in SIZES:
        raise ConfigError(f"unknown synthetic dataset size {size!r}; expected one of: {', '.join(SIZES)}")
    return SIZES[size]


def _check_split(split: str) -> int:
    if split not in _SPLIT_IDS:
        raise ConfigError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    return _SPLIT_IDS[split]


def _stream(seed: int, split: str, kind: int, index: int) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"the generator seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_check_split(split), kind, index)))


def clip_stream_description(seed: int, split: str) -> str:
    """How the random stream of a clip of ``split`` is seeded (recorded in ``dataset.json``)."""
    return f"SeedSequence({seed}, spawn_key=({_check_split(split)}, {_CLIP_STREAM}, index))"


def primary_class(split: str, index: int, seed: int = DEFAULT_SEED) -> str:
    """The class a clip is drawn around: slot ``index % cycle`` of a per-cycle shuffle of the class slots."""
    _check_split(split)
    slots = [label for label, count in _SLOTS[split].items() for _ in range(count)]
    cycle, position = divmod(index, len(slots))
    order = _stream(seed, split, _CYCLE_STREAM, cycle).permutation(len(slots))
    return slots[order[position]]


#: first digit of a synthetic clip id after ``synth``, per split
_ID_SPLIT_DIGIT = {"train": 0, "test": 5}
_ID_INDEX_LIMIT = 100_000


def synthetic_clip_id(split: str, index: int) -> str:
    """The 11-character id of a synthetic clip, in the place of a YouTube id: ``synth``, a digit
    naming the split (0 training, 5 testing) and the clip index on 5 digits, e.g. ``synth000123``
    (training clip 123) or ``synth500007`` (testing clip 7). Real YouTube ids are random: none is
    expected to look like this, and every tool can tell a synthetic clip by its name."""
    _check_split(split)
    if not 0 <= index < _ID_INDEX_LIMIT:
        raise ConfigError(f"synthetic clip index must lie in [0, {_ID_INDEX_LIMIT}), got {index}")
    return f"synth{_ID_SPLIT_DIGIT[split]}{index:05d}"


def _place_event(rng: np.random.Generator, label: str, placed: list[EventPlan]) -> EventPlan | None:
    """Draw an event of ``label`` that keeps SAME_CLASS_GAP_MS from events of the same class, or None."""
    low, high, p_whole = DURATIONS[label]
    for _ in range(10):
        if rng.random() < p_whole:
            onset, offset = 0, CLIP_MS
        else:
            duration = int(round(np.exp(rng.uniform(np.log(low), np.log(high))) * 1000))
            onset = int(rng.integers(0, CLIP_MS - duration + 1))
            offset = onset + duration
        snr_db = float(rng.uniform(*SNR_DB))
        seed = int(rng.integers(2**63))
        clashes = any(other.label == label and onset < other.offset_ms + SAME_CLASS_GAP_MS
                      and other.onset_ms < offset + SAME_CLASS_GAP_MS for other in placed)
        if not clashes:
            return EventPlan(label, onset, offset, snr_db, seed)
    return None


def _scene_labels(rng: np.random.Generator, primary: str) -> list[str]:
    """The labels of a clip's events: the primary (maybe twice), a companion, a distractor; at most MAX_EVENTS."""
    labels = [primary]
    if rng.random() < REPEAT_PROBABILITY.get(primary, 0.0):
        labels.append(primary)
    roll = rng.random()
    for companion, probability in COMPANIONS[primary]:
        if roll < probability:
            labels.append(companion)
            break
        roll -= probability
    if rng.random() < DISTRACTOR_PROBABILITY:
        absent = [label for label in CLASSES if label not in labels]
        labels.append(absent[int(rng.integers(len(absent)))])
    return labels[:MAX_EVENTS]


def plan_clip(split: str, index: int, seed: int = DEFAULT_SEED) -> ClipPlan:
    """Draw clip ``index`` of ``split``: id, start time, events and background (no audio)."""
    if index < 0:
        raise ConfigError(f"clip index must be >= 0, got {index}")
    rng = _stream(seed, split, _CLIP_STREAM, index)
    start = 10 * int(rng.integers(0, 30))
    primary = primary_class(split, index, seed)
    placed: list[EventPlan] = []
    for label in _scene_labels(rng, primary):
        event = _place_event(rng, label, placed)
        if event is not None:
            placed.append(event)
    events = tuple(sorted(placed, key=lambda event: (event.onset_ms, CLASSES.index(event.label))))
    return ClipPlan(split=split, index=index, primary=primary, youtube_id=synthetic_clip_id(split, index),
                    start=start,
                    events=events, background_dbfs=float(rng.uniform(*BACKGROUND_DBFS)),
                    background_seed=int(rng.integers(2**63)))


def plan_split(split: str, size: str | SizeSpec = "quick", seed: int = DEFAULT_SEED) -> list[ClipPlan]:
    """Plans of every clip of a split, in index order."""
    spec = resolve_size(size)
    _check_split(split)
    return [plan_clip(split, index, seed) for index in range(spec.clips(split))]


__all__ = [
    "DEFAULT_SEED", "CLIP_SECONDS", "CLIP_MS", "SNR_DB", "BACKGROUND_DBFS", "MAX_EVENTS", "SAME_CLASS_GAP_MS",
    "DURATIONS", "REPEAT_PROBABILITY", "COMPANIONS", "DISTRACTOR_PROBABILITY", "TRAIN_SLOTS", "TEST_SLOTS", "SPLITS",
    "SizeSpec", "SIZES", "EventPlan", "ClipPlan",
    "resolve_size", "clip_stream_description", "primary_class", "synthetic_clip_id", "plan_clip", "plan_split",
]

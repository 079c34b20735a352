"""The synthetic DCASE 2017 Task 4 stand-in: determinism, splits, file formats, levels, class structure."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy import signal

from devinet.errors import ConfigError, FileFormatError
from experiments import synth
from experiments.commands import synth as synth_cli
from experiments.meta import CLASSES, clip_key, read_clip_list, read_strong_labels, read_weak_labels, wav_name
from experiments.synth_sounds import SR, SYNTHESIZERS

#: One cycle per split: the first 24 training and 17 testing clips of every size.
MINI = synth.SizeSpec("mini", train_cycles=1, test_cycles=1)
REAL_META = "dcase2017_task4/meta"


def _digests(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    synth.generate_dataset(root, size="tiny", seed=synth.DEFAULT_SEED, jobs=2, progress=False)
    return root


# --------------------------------------------------------------------------- determinism and splits
def test_plans_depend_only_on_seed_split_and_index():
    assert synth.plan_clip("train", 5) == synth.plan_clip("train", 5)
    assert synth.plan_clip("train", 5, seed=1) != synth.plan_clip("train", 5)
    assert synth.plan_clip("test", 5) != synth.plan_clip("train", 5)
    # sizes only choose how many clips are drawn: tiny is a prefix of quick
    assert synth.plan_split("train", "tiny") == synth.plan_split("train", "quick")[: synth.SIZES["tiny"].clips("train")]


@pytest.mark.slow
def test_same_seed_gives_identical_bytes_whatever_the_jobs(tiny, tmp_path):
    """tiny was written by 2 processes; a separate 1-process run of its first clips matches it byte for byte."""
    mini = tmp_path / "mini"
    synth.generate_dataset(mini, size=MINI, jobs=1, progress=False)
    tiny_files, mini_files = _digests(tiny), _digests(mini)
    mini_audio = {name: digest for name, digest in mini_files.items() if name.startswith("audio/")}
    assert len(mini_audio) == MINI.clips("train") + MINI.clips("test")
    assert all(tiny_files[name] == digest for name, digest in mini_audio.items())
    # metadata and dataset.json are pure functions of the plans (no timestamps)
    plans = {split: synth.plan_split(split, "tiny") for split in synth.SPLITS}
    for relative, (split, writer) in synth.METADATA_FILES.items():
        assert (tiny / relative).read_bytes() == writer(plans[split]).encode("utf-8"), relative
    expected = synth._dataset_info(synth.SIZES["tiny"], synth.DEFAULT_SEED, plans)
    assert synth.read_dataset_info(tiny) == json.loads(json.dumps(expected))


@pytest.mark.slow
def test_in_memory_clip_equals_the_written_file(tiny):
    clip = synth.generate_clip("test", 3)
    again = synth.generate_clip("test", 3)
    assert clip.waveform.dtype == np.float32 and clip.waveform.shape == (synth.CLIP_SAMPLES,)
    assert clip.waveform.tobytes() == again.waveform.tobytes()
    audio, rate = soundfile.read(tiny / "audio/test" / clip.name, dtype="float32")
    assert rate == SR and np.array_equal(audio, clip.waveform)
    assert synth.wav_bytes(clip) == (tiny / "audio/test" / clip.name).read_bytes()


@pytest.mark.slow
def test_train_and_test_are_disjoint(tiny):
    train, test = (read_clip_list(tiny / f"meta/{name}_set.csv") for name in ("training", "testing"))
    assert not {entry.youtube_id for entry in train} & {entry.youtube_id for entry in test}
    digests = _digests(tiny)
    train_audio = {d for name, d in digests.items() if name.startswith("audio/train/")}
    test_audio = {d for name, d in digests.items() if name.startswith("audio/test/")}
    assert len(train_audio) == len(train) and len(test_audio) == len(test)
    assert not train_audio & test_audio
    splits = json.loads((tiny / "dataset.json").read_text())["splits"]
    streams = {split: data["seed_stream"] for split, data in splits.items()}
    assert streams["train"] != streams["test"]


@pytest.mark.slow
def test_synthetic_clip_names_start_with_synth_in_the_official_format(tiny, reference_dir):
    assert synth.synthetic_clip_id("train", 123) == "synth000123"
    assert synth.synthetic_clip_id("test", 7) == "synth500007"
    with pytest.raises(ConfigError, match="index"):
        synth.synthetic_clip_id("train", 100_000)
    wavs = sorted(path.name for path in (tiny / "audio").rglob("*.wav"))
    assert wavs and all(re.fullmatch(r"Ysynth[05]\d{5}_\d+\.000_\d+\.000\.wav", name) for name in wavs)
    for name in wavs:
        key = clip_key(name)
        assert key.startswith("synth") and len(key.split("_")[0]) == 11 and wav_name(key) == name
    for name in ("training", "testing"):
        assert all(entry.youtube_id.startswith("synth") for entry in read_clip_list(tiny / f"meta/{name}_set.csv"))
    weak = read_weak_labels(tiny / "meta/groundtruth_weak_label_testing_set.csv")
    assert all(key.startswith("synth") for key in weak)
    assert all(event.key.startswith("synth")
               for event in read_strong_labels(tiny / "meta/groundtruth_strong_label_testing_set.csv"))
    # no real clip of the official metadata is named like a synthetic one
    real = read_clip_list(reference_dir / REAL_META / "training_set.csv")
    real += read_clip_list(reference_dir / REAL_META / "testing_set.csv")
    assert not [entry for entry in real if entry.youtube_id.startswith("synth")]


@pytest.mark.slow
def test_every_class_is_in_every_split_of_tiny(tiny):
    for name in ("training", "testing"):
        labels = {label for entry in read_clip_list(tiny / f"meta/{name}_set.csv") for label in entry.labels}
        assert labels == set(CLASSES), name
    events = {event.label for event in read_strong_labels(tiny / "meta/groundtruth_strong_label_testing_set.csv")}
    assert events == set(CLASSES)
    info = json.loads((tiny / "dataset.json").read_text())
    assert info["complete"] is True and info["size"] == "tiny"
    assert all(counts["primary"] >= 1 for counts in info["splits"]["train"]["classes"].values())
    # the training set is imbalanced like the real one, the testing set balanced
    train_primary = [counts["primary"] for counts in info["splits"]["train"]["classes"].values()]
    assert max(train_primary) == 3 * min(train_primary)
    assert {counts["primary"] for counts in info["splits"]["test"]["classes"].values()} == {2}


# --------------------------------------------------------------------------- file formats
@pytest.mark.slow
def test_files_and_metadata_are_consistent(tiny):
    train = read_clip_list(tiny / "meta/training_set.csv")
    test = read_clip_list(tiny / "meta/testing_set.csv")
    assert len(train) == synth.SIZES["tiny"].clips("train") and len(test) == synth.SIZES["tiny"].clips("test")
    for split, entries in (("train", train), ("test", test)):
        names = sorted(path.name for path in (tiny / "audio" / split).iterdir())
        assert names == sorted(wav_name(entry.key) for entry in entries)
        assert all(re.fullmatch(r"Y[A-Za-z0-9_-]{11}_\d+\.000_\d+\.000\.wav", name) for name in names)
        assert all(clip_key(name) in {entry.key for entry in entries} for name in names)
    weak = read_weak_labels(tiny / "meta/groundtruth_weak_label_testing_set.csv")
    strong = read_strong_labels(tiny / "meta/groundtruth_strong_label_testing_set.csv")
    strong_labels: dict[str, set[str]] = {}
    for event in strong:
        strong_labels.setdefault(event.key, set()).add(event.label)
    assert set(weak) == set(strong_labels) == {entry.key for entry in test}
    for entry in test:
        assert weak[entry.key] == strong_labels[entry.key] == set(entry.labels)
        assert list(entry.labels) == [label for label in CLASSES if label in entry.labels]  # official order
    train_strong = read_strong_labels(tiny / "meta/synthetic_strong_label_training_set.csv")
    assert {(e.key, e.label) for e in train_strong} == {(entry.key, label) for entry in train for label in entry.labels}
    with open(tiny / "meta/training_set.csv", newline="") as handle:
        for row in csv.reader(handle):
            assert row[4].split(",") == [synth.MIDS[label] for label in re.split(r",(?! )", row[3])]


@pytest.mark.slow
def test_strong_labels_are_the_events_as_planned(tiny):
    plans = synth.plan_split("test", "tiny")
    written = read_strong_labels(tiny / "meta/groundtruth_strong_label_testing_set.csv")
    planned = [event for label in CLASSES for plan in plans for event in plan.strong_labels if event.label == label]
    assert written == planned
    assert synth.generate_clip("test", 0).events == plans[0].strong_labels


@pytest.mark.slow
def test_line_ends_and_quoting_follow_the_official_files(tiny, reference_dir):
    for name in ("training_set.csv", "testing_set.csv", "groundtruth_weak_label_testing_set.csv",
                 "groundtruth_strong_label_testing_set.csv"):
        ours, real = (tiny / "meta" / name).read_bytes(), (reference_dir / REAL_META / name).read_bytes()
        assert (b"\r\n" in ours) == (b"\r\n" in real), name
        assert ours.count(b"\n") == ours.count(b"\r\n") or b"\r\n" not in ours, name
    # the same label field renders the same way (quoted only when it holds a comma)
    real_rows = (reference_dir / REAL_META / "testing_set.csv").read_text().splitlines()
    ours_rows = (tiny / "meta/testing_set.csv").read_text().splitlines()
    def fields(row: str) -> str:
        return row.split(",", 3)[3]
    real_fields = {fields(row) for row in real_rows}
    shared = [fields(row) for row in ours_rows if fields(row) in real_fields]
    assert len(shared) >= len(ours_rows) // 2
    assert any(field.startswith('"') for field in shared) and any(not field.startswith('"') for field in shared)


# --------------------------------------------------------------------------- events, levels, SNR
def test_events_lie_within_the_clip_on_a_millisecond_grid():
    for split in synth.SPLITS:
        for plan in synth.plan_split(split, "tiny"):
            assert 1 <= len(plan.events) <= synth.MAX_EVENTS
            for event in plan.events:
                assert 0 <= event.onset_ms < event.offset_ms <= synth.CLIP_MS
                assert synth.SNR_DB[0] <= event.snr_db <= synth.SNR_DB[1]
                low, _, _ = synth.DURATIONS[event.label]
                assert event.offset_ms - event.onset_ms >= round(low * 1000) - 1
            for first in plan.events:  # same-class events never overlap (nor touch)
                for second in plan.events:
                    if first is not second and first.label == second.label:
                        assert first.offset_ms + synth.SAME_CLASS_GAP_MS <= second.onset_ms or \
                            second.offset_ms + synth.SAME_CLASS_GAP_MS <= first.onset_ms
            assert synth.BACKGROUND_DBFS[0] <= plan.background_dbfs <= synth.BACKGROUND_DBFS[1]


@pytest.mark.parametrize("index", [0, 7, 19])
def test_event_snr_and_background_level_are_as_planned(index):
    clip = synth.generate_clip("train", index, return_stems=True)
    backdrop, *events = clip.stems
    background_rms = np.sqrt(np.mean(backdrop**2))
    assert 20 * np.log10(background_rms) == pytest.approx(clip.plan.background_dbfs, abs=1e-6)
    assert len(events) == len(clip.plan.events)
    for stem, event in zip(events, clip.plan.events):
        begin, end = event.onset_ms * 16, event.offset_ms * 16
        assert not stem[:begin].any() and not stem[end:].any()
        measured = 20 * np.log10(np.sqrt(np.mean(stem[begin:end] ** 2)) / background_rms)
        assert measured == pytest.approx(event.snr_db, abs=1e-6)
    mix = sum(clip.stems) * 10 ** (clip.gain_db / 20)
    assert clip.gain_db <= 0 and np.max(np.abs(clip.waveform)) <= synth.PEAK_LIMIT + 1 / 32768
    assert np.max(np.abs(clip.waveform - mix)) <= 1 / 32768  # the only difference is 16-bit rounding


# --------------------------------------------------------------------------- class structure
def _pitch_track(x: np.ndarray) -> np.ndarray:
    """Strongest frequency between 250 and 2000 Hz per 16-ms hop."""
    freqs, _, spec = signal.stft(x, SR, nperseg=1024, noverlap=1024 - 256)
    band = (freqs > 250) & (freqs < 2000)
    return freqs[band][np.abs(spec[band]).argmax(axis=0)]


def _siren_features(x: np.ndarray) -> dict[str, float]:
    pitch = np.log(_pitch_track(x))
    speed = np.abs(np.diff(pitch)) / (256 / SR)  # |d log f / dt| per second
    return {"pitch": float(np.exp(np.median(pitch))), "steady": float(np.mean(speed < 0.05)),
            "speed": float(np.median(speed)),
            "range": float(np.exp(np.percentile(pitch, 95) - np.percentile(pitch, 5)))}


def test_sirens_have_their_own_modulation_patterns():
    kinds = ("Ambulance (siren)", "Police car (siren)", "Fire engine, fire truck (siren)", "Civil defense siren")
    stats = {kind: [_siren_features(SYNTHESIZERS[kind](np.random.default_rng(seed), 6 * SR, SR))
                    for seed in range(6)] for kind in kinds}
    median = {kind: {key: float(np.median([s[key] for s in rows])) for key in rows[0]} for kind, rows in stats.items()}
    ambulance, police, fire, civil = (median[kind] for kind in kinds)
    # two-tone: the pitch rests on two levels, a fifth to a third apart, and jumps between them
    assert ambulance["steady"] > 0.85 and 1.15 < ambulance["range"] < 1.45
    # yelp/wail: the pitch is always moving, fast, over about an octave
    assert police["speed"] > 0.3 > max(ambulance["speed"], fire["speed"], civil["speed"]) and police["range"] > 1.6
    assert police["steady"] < 0.5 < min(ambulance["steady"], fire["steady"], civil["steady"])
    # mechanical wail and civil defense: slow glides; the civil defense chord is the lowest siren
    assert fire["range"] > 1.5 and civil["pitch"] < 0.75 * min(fire["pitch"], ambulance["pitch"], police["pitch"])


def _log_mel_profile(x: np.ndarray) -> np.ndarray:
    """Level-normalised mean and spread of a 64-band log-mel spectrogram, shape (128,)."""
    import librosa

    power = np.abs(librosa.stft(x.astype(np.float32), n_fft=1024, hop_length=512)) ** 2
    log_mel = np.log(librosa.filters.mel(sr=SR, n_fft=1024, n_mels=64, fmax=8000) @ power + 1e-10)
    log_mel -= log_mel.mean()
    return np.concatenate([log_mel.mean(axis=1), log_mel.std(axis=1)])


def _band_fraction(x: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def _spectral_centroid(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    return float((power * np.fft.rfftfreq(x.size, 1 / SR)).sum() / power.sum())


@pytest.mark.slow
def test_engines_of_different_vehicles_differ():
    vehicles = ("Car", "Bus", "Truck", "Motorcycle")
    sounds = {v: [SYNTHESIZERS[v](np.random.default_rng(seed), 4 * SR, SR) for seed in range(12)] for v in vehicles}
    low = {v: np.median([_band_fraction(x, 20, 150) for x in xs]) for v, xs in sounds.items()}
    centroid = {v: np.median([_spectral_centroid(x) for x in xs]) for v, xs in sounds.items()}
    assert low["Truck"] > low["Car"] > low["Motorcycle"]  # diesel rumble vs a bright exhaust
    assert centroid["Motorcycle"] > 1.5 * centroid["Car"]
    # instances of a vehicle resemble each other more than other vehicles: nearest class mean
    profiles = {v: np.array([_log_mel_profile(x) for x in xs]) for v, xs in sounds.items()}
    means = {v: p[:6].mean(axis=0) for v, p in profiles.items()}
    hits = [min(vehicles, key=lambda m: np.linalg.norm(p - means[m])) == v for v in vehicles for p in profiles[v][6:]]
    assert np.mean(hits) >= 0.75  # chance: 0.25


def test_instances_of_a_class_vary():
    for label, synthesize in SYNTHESIZERS.items():
        first, second = (synthesize(np.random.default_rng(seed), 2 * SR, SR) for seed in (1, 2))
        assert first.shape == second.shape == (2 * SR,) and np.isfinite(first).all()
        assert np.std(first) > 0 and not np.allclose(first / np.std(first), second / np.std(second)), label


# --------------------------------------------------------------------------- resuming and refusing
@pytest.mark.slow
def test_a_rerun_remakes_only_missing_or_damaged_clips(tmp_path, monkeypatch):
    root = tmp_path / "mini"
    synth.generate_dataset(root, size=MINI, progress=False)
    before = _digests(root)
    plans = synth.plan_split("train", MINI)
    (root / "audio/train" / plans[0].name).unlink()
    (root / "audio/train" / plans[1].name).write_bytes(b"damaged")
    with open(root / synth.MANIFEST, "a") as manifest:
        manifest.write('{"file": "audio/train/cut sho')  # an interrupted append
    (root / synth.DATASET_JSON).unlink()
    made = []
    real_write = synth._write_clip
    monkeypatch.setattr(synth, "_write_clip", lambda job: made.append(job[0].name) or real_write(job))
    synth.generate_dataset(root, size=MINI, progress=False)
    assert sorted(made) == sorted([plans[0].name, plans[1].name])
    after = _digests(root)
    assert {k: v for k, v in after.items() if k != synth.MANIFEST} == \
        {k: v for k, v in before.items() if k != synth.MANIFEST}
    assert synth.read_dataset_info(root)["complete"] is True


def test_refuses_foreign_or_mismatched_folders(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileFormatError, match="not a synthetic dataset folder"):
        synth.generate_dataset(foreign, size=MINI, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / synth.MANIFEST).write_text(json.dumps({"seed": 1}) + "\n")
    with pytest.raises(FileFormatError, match=re.escape(str(other / synth.MANIFEST))):
        synth.generate_dataset(other, size=MINI, progress=False)
    with pytest.raises(FileFormatError, match="absent or incomplete"):
        synth.read_dataset_info(other)
    with pytest.raises(ConfigError, match="unknown synthetic dataset size"):
        synth.generate_dataset(tmp_path / "new", size="huge")
    with pytest.raises(ConfigError, match="unknown split"):
        synth.plan_clip("validation", 0)
    with pytest.raises(ConfigError, match="non-negative integer"):
        synth.plan_clip("train", 0, seed=-1)


@pytest.mark.slow
def test_cli_generates_and_resumes(tiny, capsys):
    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    assert synth_cli.run(parser.parse_args([str(tiny), "--size", "tiny", "--jobs", "2", "--no-progress"])) == 0
    assert "train 144 clips" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--jobs"):
        synth_cli.run(parser.parse_args([str(tiny), "--jobs", "0"]))

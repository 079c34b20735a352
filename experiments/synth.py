"""The built-in stand-in for DCASE 2017 Task 4: a deterministic, offline, synthetic dataset.

Same 17 classes, 10-s clips at 16 kHz with 1-3 events over a background, weak labels for
the training clips, weak and strong labels for the testing clips, written in the official
file formats. See ``experiments/README_synthetic.md`` for what it can and cannot show.

Three layers, usable separately:

- planning (cheap, no audio, :mod:`experiments.synth_plan`, whose names this module also
  offers): :func:`plan_clip` names the clip (:func:`synthetic_clip_id`: an id
  starting with ``synth``, so that no synthetic clip passes for a real one), draws its events (label,
  onset, offset, SNR, synthesis seed) and its background from the clip's own seed; the
  determinism rules are described there;
- rendering: :func:`render_clip` / :func:`generate_clip` synthesize the waveform, in memory
  (the sounds: :mod:`experiments.synth_sounds`);
- writing: :func:`generate_dataset` writes the wav files and the metadata, resumably.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from devinet._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from devinet.errors import FileFormatError
from experiments.meta import CLASSES, Event
from experiments.synth_plan import (  # noqa: F401  (planning names are part of this module's interface)
    BACKGROUND_DBFS, CLIP_MS, CLIP_SECONDS, COMPANIONS, DEFAULT_SEED, DISTRACTOR_PROBABILITY, DURATIONS, MAX_EVENTS,
    REPEAT_PROBABILITY, SAME_CLASS_GAP_MS, SIZES, SNR_DB, SPLITS, TEST_SLOTS, TRAIN_SLOTS, ClipPlan, EventPlan,
    SizeSpec, clip_stream_description, plan_clip, plan_split, primary_class, resolve_size, synthetic_clip_id,
)
from experiments.synth_sounds import SR, SYNTHESIZERS, background

#: Bump when any change alters the audio, the labels or the clip names drawn for a given seed
#: (2: clip ids ``synth<split digit><5 digits>`` instead of random YouTube-like ids).
GENERATOR_VERSION = "2"
CLIP_SAMPLES = int(CLIP_SECONDS * SR)
_SAMPLES_PER_MS = SR // 1000

#: AudioSet label ids of the 17 classes, as in the official clip lists.
MIDS: dict[str, str] = {
    "Train horn": "/m/0284vy3",
    "Air horn, truck horn": "/m/05x_td",
    "Car alarm": "/m/02mfyn",
    "Reversing beeps": "/m/02rhddq",
    "Bicycle": "/m/0199g",
    "Skateboard": "/m/06_fw",
    "Ambulance (siren)": "/m/012n7d",
    "Fire engine, fire truck (siren)": "/m/012ndj",
    "Civil defense siren": "/m/0dgbq",
    "Police car (siren)": "/m/04qvtq",
    "Screaming": "/m/03qc9zr",
    "Car": "/m/0k4j",
    "Car passing by": "/t/dd00134",
    "Bus": "/m/01bjv",
    "Truck": "/m/07r04",
    "Motorcycle": "/m/04_sv",
    "Train": "/m/07jdr",
}

#: A clip whose peak would pass this is scaled down as a whole (its SNRs are kept).
PEAK_LIMIT = 0.95
#: Raised-cosine fade on event edges inside the clip (none where an event is cut by the clip).
EDGE_FADE_S = 0.01


@dataclass(frozen=True)
class SyntheticClip:
    """A rendered clip. ``waveform`` (CLIP_SAMPLES,) float32 equals the written wav read back as float.

    ``stems`` (only when asked for) holds the background and each event as placed and
    scaled in the clip before the peak limiting gain ``gain_db``, each (CLIP_SAMPLES,) float64.
    """

    plan: ClipPlan
    waveform: np.ndarray
    gain_db: float
    stems: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.plan.labels

    @property
    def events(self) -> tuple[Event, ...]:
        return self.plan.strong_labels


# --------------------------------------------------------------------------- rendering
def _edge_fades(x: np.ndarray, event: EventPlan) -> np.ndarray:
    """Fade an event in and out where it starts or ends inside the clip (not where the clip cuts it)."""
    m = min(int(EDGE_FADE_S * SR), x.size // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
    if event.onset_ms > 0:
        x[:m] *= ramp
    if event.offset_ms < CLIP_MS:
        x[x.size - m:] *= ramp[::-1]
    return x


def render_clip(plan: ClipPlan, return_stems: bool = False) -> SyntheticClip:
    """Synthesize a planned clip: background at its level, each event scaled to its SNR, peak-limited, 16-bit.

    The waveform is quantized to 16 bits exactly as the wav file stores it, so the in-memory
    clip and the file read back are the same numbers.
    """
    backdrop = background(np.random.default_rng(plan.background_seed), CLIP_SAMPLES, SR)
    backdrop *= 10 ** (plan.background_dbfs / 20)
    background_rms = float(np.sqrt(np.mean(backdrop**2)))
    mix = backdrop.copy()
    stems = [backdrop]
    for event in plan.events:
        begin, end = event.onset_ms * _SAMPLES_PER_MS, event.offset_ms * _SAMPLES_PER_MS
        sound = SYNTHESIZERS[event.label](np.random.default_rng(event.seed), end - begin, SR)
        sound = _edge_fades(sound, event)
        sound *= background_rms * 10 ** (event.snr_db / 20) / max(float(np.sqrt(np.mean(sound**2))), 1e-12)
        mix[begin:end] += sound
        if return_stems:
            stem = np.zeros(CLIP_SAMPLES)
            stem[begin:end] = sound
            stems.append(stem)
    gain = min(1.0, PEAK_LIMIT / max(float(np.max(np.abs(mix))), 1e-12))
    quantized = np.clip(np.round(mix * gain * 32768), -32768, 32767).astype(np.int16)
    return SyntheticClip(plan=plan, waveform=quantized.astype(np.float32) / 32768, gain_db=float(20 * np.log10(gain)),
                         stems=tuple(stems) if return_stems else None)


def generate_clip(split: str, index: int, seed: int = DEFAULT_SEED, return_stems: bool = False) -> SyntheticClip:
    """Plan and render clip ``index`` of ``split`` in memory (no disk I/O)."""
    return render_clip(plan_clip(split, index, seed), return_stems=return_stems)


def iter_clips(split: str, size: str | SizeSpec = "quick", seed: int = DEFAULT_SEED,
               jobs: int = 1) -> Iterator[SyntheticClip]:
    """Render every clip of a split in index order, in memory (the clips :func:`generate_dataset` writes).

    ``jobs > 1`` renders in that many worker processes; the order and the audio are the same.
    """
    plans = plan_split(split, size, seed)
    if jobs <= 1:
        yield from map(render_clip, plans)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(render_clip, plans, chunksize=4)


def wav_bytes(clip: SyntheticClip) -> bytes:
    """The clip as a 16 kHz mono 16-bit PCM wav file."""
    import soundfile

    buffer = io.BytesIO()
    pcm = np.round(clip.waveform * 32768).astype(np.int16)
    soundfile.write(buffer, pcm, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --------------------------------------------------------------------------- metadata files
def _clip_list_text(plans: list[ClipPlan]) -> str:
    """``training_set.csv`` / ``testing_set.csv``: ``id,start,end,"label,label","mid,mid"``, CRLF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for plan in plans:
        writer.writerow([plan.youtube_id, f"{plan.start:.3f}", f"{plan.start + CLIP_SECONDS:.3f}",
                         ",".join(plan.labels), ",".join(MIDS[label] for label in plan.labels)])
    return buffer.getvalue()


def _weak_labels_text(plans: list[ClipPlan]) -> str:
    """Weak ground truth ``<key>.wav<TAB>start<TAB>end<TAB>label``, grouped by class like the original, CRLF."""
    return "".join(f"{plan.key}.wav\t{plan.start:.3f}\t{plan.start + CLIP_SECONDS:.3f}\t{label}\r\n"
                   for label in CLASSES for plan in plans if label in plan.labels)


def _strong_labels_text(plans: list[ClipPlan]) -> str:
    """Strong ground truth ``<key>.wav<TAB>onset<TAB>offset<TAB>label``, grouped by class, LF like the original."""
    return "".join(f"{event.key}.wav\t{event.onset:.3f}\t{event.offset:.3f}\t{event.label}\n"
                   for label in CLASSES for plan in plans for event in plan.strong_labels if event.label == label)


#: Metadata file -> (split, writer). The last is not in the official data: synthetic extra.
METADATA_FILES = {
    "meta/training_set.csv": ("train", _clip_list_text),
    "meta/testing_set.csv": ("test", _clip_list_text),
    "meta/groundtruth_weak_label_testing_set.csv": ("test", _weak_labels_text),
    "meta/groundtruth_strong_label_testing_set.csv": ("test", _strong_labels_text),
    "meta/synthetic_strong_label_training_set.csv": ("train", _strong_labels_text),
}
AUDIO_DIRS = {"train": "audio/train", "test": "audio/test"}
MANIFEST = "manifest.jsonl"
DATASET_JSON = "dataset.json"


def _class_counts(plans: list[ClipPlan]) -> dict[str, dict[str, int]]:
    """Per class: clips labelled with it, clips drawn around it (primary) and events."""
    return {label: {"clips": sum(label in plan.labels for plan in plans),
                    "primary": sum(plan.primary == label for plan in plans),
                    "events": sum(event.label == label for plan in plans for event in plan.events)}
            for label in CLASSES}


def _dataset_info(spec: SizeSpec, seed: int, plans: dict[str, list[ClipPlan]]) -> dict:
    """Contents of ``dataset.json``: parameters, seeds, files and counts. No timestamps: it is reproducible."""
    files = {"train": {"clip_list": "meta/training_set.csv",
                       "strong_labels_synthetic_extra": "meta/synthetic_strong_label_training_set.csv"},
             "test": {"clip_list": "meta/testing_set.csv",
                      "weak_labels": "meta/groundtruth_weak_label_testing_set.csv",
                      "strong_labels": "meta/groundtruth_strong_label_testing_set.csv"}}
    return {
        "generator": "devinet experiments.synth: synthetic stand-in for DCASE 2017 Task 4 (not real recordings)",
        "generator_version": GENERATOR_VERSION,
        "complete": True,
        "size": spec.name,
        "train_cycles": spec.train_cycles,
        "test_cycles": spec.test_cycles,
        "seed": seed,
        "sample_rate": SR,
        "clip_seconds": CLIP_SECONDS,
        "snr_db": list(SNR_DB),
        "background_dbfs": list(BACKGROUND_DBFS),
        "peak_limit": PEAK_LIMIT,
        "splits": {
            split: {
                "seed_stream": clip_stream_description(seed, split),
                "clips": len(split_plans),
                "audio_dir": AUDIO_DIRS[split],
                **files[split],
                "events": sum(len(plan.events) for plan in split_plans),
                "classes": _class_counts(split_plans),
            }
            for split, split_plans in plans.items()
        },
    }


def _manifest_header(spec: SizeSpec, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "size": spec.name, "train_cycles": spec.train_cycles,
            "test_cycles": spec.test_cycles, "seed": seed, "sample_rate": SR}


def _read_manifest(path: Path, header: dict) -> dict[str, str]:
    """Finished clips (relative path -> sha256) of a manifest written for the same parameters.

    A line cut short by an interrupted run is ignored: its clip is simply made again.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        found = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        found = None
    if found != header:
        raise FileFormatError(path, f"this folder holds a synthetic dataset made with {found}, not {header}; "
                                    "use another folder")
    done: dict[str, str] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            done[entry["file"]] = entry["sha256"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def _sha256_file(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _write_clip(job: tuple[ClipPlan, str]) -> tuple[str, str]:
    """Render a clip and write its wav atomically; returns (path, sha256 of the bytes written)."""
    plan, path = job
    data = wav_bytes(render_clip(plan))
    atomic_write_bytes(path, data)
    return path, hashlib.sha256(data).hexdigest()


def generate_dataset(out_dir: str | os.PathLike, size: str | SizeSpec = "quick", seed: int = DEFAULT_SEED,
                     jobs: int = 1, progress: bool = True) -> dict:
    """Write the synthetic dataset under ``out_dir`` and return the contents of its ``dataset.json``.

    Layout: ``audio/{train,test}/Y<id>_<start>_<end>.wav`` (16 kHz mono, 16-bit),
    ``meta/training_set.csv``, ``meta/testing_set.csv``,
    ``meta/groundtruth_{weak,strong}_label_testing_set.csv`` (the official formats),
    ``meta/synthetic_strong_label_training_set.csv`` (an extra the real data lacks),
    ``manifest.jsonl`` and, last, ``dataset.json``.

    Resumable: every wav is written atomically and then recorded with its sha256 in the
    manifest; a re-run skips clips whose file matches its record and makes the others.
    ``dataset.json`` (``"complete": true``) is written only when every file is in place,
    and removed while a run repairs or completes the folder. A folder made with other
    parameters, or a non-empty folder that is not a synthetic dataset, is refused.
    """
    spec = resolve_size(size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileFormatError(out, "is a file, expected a folder for the synthetic dataset")
    manifest = out / MANIFEST
    if out.is_dir() and any(out.iterdir()) and not manifest.is_file():
        raise FileFormatError(out, f"folder is not empty and holds no {MANIFEST}: not a synthetic dataset folder")
    plans = {split: plan_split(split, spec, seed) for split in SPLITS}
    header = _manifest_header(spec, seed)
    out.mkdir(parents=True, exist_ok=True)
    if manifest.is_file():
        done = _read_manifest(manifest, header)
    else:
        atomic_write_text(manifest, json.dumps(header) + "\n")
        done = {}

    todo: list[tuple[ClipPlan, str]] = []
    for split in SPLITS:
        (out / AUDIO_DIRS[split]).mkdir(parents=True, exist_ok=True)
        for plan in plans[split]:
            relative = f"{AUDIO_DIRS[split]}/{plan.name}"
            if relative not in done or _sha256_file(out / relative) != done[relative]:
                todo.append((plan, str(out / relative)))
    if todo:
        (out / DATASET_JSON).unlink(missing_ok=True)
        _write_clips(todo, out, manifest, jobs, progress)

    for relative, (split, writer) in METADATA_FILES.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / relative, writer(plans[split]))
    info = _dataset_info(spec, seed, plans)
    atomic_write_json(out / DATASET_JSON, info)
    return info


def _write_clips(todo: list[tuple[ClipPlan, str]], out: Path, manifest: Path, jobs: int, progress: bool) -> None:
    """Render and write ``todo`` clips (in ``jobs`` processes), recording each finished one in the manifest."""
    from tqdm.auto import tqdm

    with open(manifest, "a", encoding="utf-8") as record, \
            tqdm(total=len(todo), desc="synthesizing clips", unit="clip", disable=not progress) as bar:
        def finished(path: str, digest: str) -> None:
            record.write(json.dumps({"file": Path(path).relative_to(out).as_posix(), "sha256": digest}) + "\n")
            record.flush()
            bar.update()

        if jobs <= 1:
            for job in todo:
                finished(*_write_clip(job))
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for result in pool.map(_write_clip, todo, chunksize=4):
                    finished(*result)
        os.fsync(record.fileno())


def read_dataset_info(out_dir: str | os.PathLike) -> dict:
    """The ``dataset.json`` of a complete synthetic dataset; a clear error if it is absent or incomplete."""
    path = Path(out_dir) / DATASET_JSON
    if not path.is_file():
        raise FileFormatError(path, "not found: the synthetic dataset is absent or incomplete "
                                    "(generate_dataset resumes it)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, f"not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("complete") is not True:
        raise FileFormatError(path, "does not describe a complete synthetic dataset")
    return info

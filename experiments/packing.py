"""Pack a split of DCASE 2017 Task 4 clips into one HDF5 file of log-mel features.

The file's layout and its readers are in :mod:`experiments.packed`.

The work runs in a pool of processes, one chunk of clips per task. Each finished chunk is
written atomically into a work folder beside the output (``.<out>.work/``, see
:mod:`experiments.packing_work`), so a run that is interrupted, even by SIGKILL, resumes where
it stopped without redoing finished chunks; the output appears (atomically) only once every
chunk is done, and the work folder is removed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from devinet.features import (
    FMAX, FMIN, FRAMES, HOP, LOG_OFFSET, N_FFT, N_MELS, ORIGINAL_RESAMPLER, SAMPLE_RATE, AudioFileError,
    canonical_resampler,
    extract_logmel, extract_logmel_batch, num_frames, pad_or_truncate, read_audio, resampled_length,
)
from devinet._io import atomic_path, check_destination, import_h5py
from devinet.errors import DevinetError, FileFormatError, InputError, first_line

from . import meta
from .packed import (  # the file format and its readers, re-exported
    FORMAT_VERSION, SKIP_KINDS, PackedSplit, Skipped, fit_scaler, load_packed, open_packed, read_skipped,
)
from .packing_work import WorkFolder
from .workers import bounded, process_pool, usable_cores

BACKENDS = ("reference", "torch")
#: storage types of the packed features
FEATURE_DTYPES = ("float32", "float16")
#: modules the worker processes import once, up front
_PRELOAD = (__name__, "scipy.signal", "soundfile", "librosa")


class NothingPackedError(FileFormatError):
    """Not one clip of the split could be packed."""


class WorkerDiedError(DevinetError):
    """A worker process ended abruptly (killed, out of memory); the finished chunks are kept."""

    def __init__(self, out_path: Path):
        super().__init__(f"{out_path}: a feature extraction worker process died (killed, or out of memory?); "
                         "the finished chunks are kept: run the same command again to resume")


@dataclass
class PackResult:
    """What :func:`pack_split` did."""

    path: Path
    packed: int
    skipped: list[Skipped]
    reused_chunks: int
    computed_chunks: int

    def skipped_by_kind(self) -> dict[str, int]:
        counts = {kind: 0 for kind in SKIP_KINDS}
        for item in self.skipped:
            counts[item.kind] += 1
        return counts


# --------------------------------------------------------------------------------------------
# Planning: which clips, where their audio is, their labels


def recipe(backend: str = "reference", resampler: str = ORIGINAL_RESAMPLER) -> dict:
    """The feature recipe a packed file was made with (stored in its ``recipe`` attribute)."""
    return {
        "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "window": "hamming (symmetric)",
        "spectrogram": "scipy magnitude, fs=1 scaling", "n_mels": N_MELS, "fmin": FMIN, "fmax": FMAX,
        "mel": "slaney (librosa.filters.mel defaults)", "log_offset": LOG_OFFSET, "frames": FRAMES,
        "padding": "zeros at the end", "mono": "channel mean",
        "resampler": resampler,
        "backend": backend,
    }


def index_wav_folder(wav_dir: str | os.PathLike) -> dict[str, Path]:
    """Clip key -> wav path of every ``*.wav`` directly in ``wav_dir``.

    Names of the DCASE form (``Y<id>_<start>_<end>.wav`` or without the ``Y``) are keyed by
    :func:`experiments.meta.clip_key`; other names by their stem. ``Y<key>.wav`` wins when
    both spellings of a clip are present.
    """
    wav_dir = Path(wav_dir)
    if not wav_dir.is_dir():
        raise FileFormatError(wav_dir, "not a folder of wav files")
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(wav_dir), key=lambda e: e.name):
        if not entry.name.lower().endswith(".wav") or entry.is_dir():
            continue
        try:
            key = meta.clip_key(entry.name)
        except DevinetError:
            key = entry.name[:-4]
        if key not in found or entry.name == meta.wav_name(key):
            found[key] = Path(entry.path)
    return found


def missing_summary(wav_dir: str | os.PathLike, skipped: Sequence[Skipped], total: int) -> str | None:
    """How many of ``total`` clips have no audio file, with the name expected for one of them next
    to a file of the folder that holds the same YouTube id under another name (times written
    otherwise, e.g. ``_30_40`` for ``_30.000_40.000``) when there is one; None when none is missing."""
    missing = [item.key for item in skipped if item.kind == "missing"]
    if not missing:
        return None
    by_id: dict[str, str] = {}
    for key, path in index_wav_folder(wav_dir).items():
        by_id.setdefault(key.rsplit("_", 2)[0], path.name)
    near = next((key for key in missing if key.rsplit("_", 2)[0] in by_id), None)
    text = f"{len(missing)} of {total} clips have no audio file"
    if near is None:
        return f"{text}, e.g. no {meta.wav_name(missing[0])}"
    return (f"{text}, e.g. {meta.wav_name(near)} was expected but {by_id[near.rsplit('_', 2)[0]]} was found "
            "(the same clip named otherwise?)")


def _plan(wav_dir, meta_path) -> tuple[list[str], dict[str, Path], dict[str, np.ndarray] | None]:
    """(clip keys in order, key -> wav path for the present ones, key -> multi-hot or None)."""
    wavs = index_wav_folder(wav_dir)
    if meta_path is None:
        if not wavs:
            raise FileFormatError(wav_dir, "no .wav files in this folder")
        return sorted(wavs), wavs, None
    labels: dict[str, np.ndarray] = {}
    for key, names in meta.read_clip_labels(meta_path).items():
        try:
            labels[key] = meta.labels_to_multihot(names)
        except InputError as exc:
            raise FileFormatError(meta_path, f"clip {key}: {exc}") from None
    return list(labels), {key: wavs[key] for key in labels if key in wavs}, labels


def _chunks(keys: Sequence[str], chunk_size: int) -> list[list[str]]:
    return [list(keys[start : start + chunk_size]) for start in range(0, len(keys), chunk_size)]


# --------------------------------------------------------------------------------------------
# Work done in the pool's processes (module-level functions: they are pickled by name)


def _present_clips(clips: list[tuple[str, str | None]], skipped: list[Skipped]):
    """Yield the (key, path) of clips whose file exists; record the others in ``skipped`` as missing."""
    for key, path in clips:
        if path is None:
            skipped.append(Skipped(key, "missing", f"no {meta.wav_name(key)} in the wav folder"))
        else:
            yield key, path


def _extract_chunk(index: int, clips: list[tuple[str, str | None]], resampler: str) -> tuple[int, dict]:
    """Reference extraction of one chunk: features padded to 240 frames, and the skipped clips."""
    done: list[tuple[str, np.ndarray]] = []
    skipped: list[Skipped] = []
    for key, path in _present_clips(clips, skipped):
        with _clip_failures(key, skipped):
            done.append((key, _finite(key, extract_logmel(path, resampler=resampler))))
    return index, _chunk_arrays(done, skipped)


@contextlib.contextmanager
def _clip_failures(key: str, skipped: list[Skipped]) -> Iterator[None]:
    """Record any failure of one clip in ``skipped`` (with its reason) instead of ending the run:
    an AudioFileError with its kind, anything else (a bug, a MemoryError) as "unreadable" with
    the exception's type and first line. Overflows (samples near 1e308) are not warned about:
    their non-finite features are the clip's record."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            yield
    except AudioFileError as exc:
        skipped.append(Skipped(key, exc.kind, exc.problem))
    except Exception as exc:  # noqa: BLE001 - one clip must not lose the others
        skipped.append(Skipped(key, "unreadable", f"feature extraction failed ({first_line(exc, with_type=True)})"))


def _finite(key: str, features: np.ndarray) -> np.ndarray:
    """Clip ``key``'s ``features``, or an AudioFileError when some are NaN or infinite (finite samples
    too large for the filters, e.g. float samples near 1e308): such a clip would poison the scaler."""
    if not np.isfinite(features).all():
        raise AudioFileError(key, "unreadable", "non-finite features (samples too large to filter: "
                                               "float samples far beyond [-1, 1]?)")
    return features


def _decode_chunk(index: int, clips: list[tuple[str, str | None]]) -> tuple[int, list, list[Skipped]]:
    """Decoding only (torch backend): [(key, mono float32 waveform, rate, frames)], skipped clips.

    A waveform is cut to what its first 240 frames need (plus the resampler's reach): clips
    of one rate are batched, padded to the longest, so one long clip would otherwise make
    the whole batch long. ``frames`` is the clip's full frame count.
    """
    decoded, skipped = [], []
    for key, path in _present_clips(clips, skipped):
        with _clip_failures(key, skipped):
            audio, rate = read_audio(path)
            waveform = audio[: _samples_needed(rate)].astype(np.float32)
            if not np.isfinite(waveform).all():
                raise AudioFileError(path, "unreadable", "samples beyond float32's range")
            decoded.append((key, waveform, rate, num_frames(resampled_length(audio.shape[0], rate))))
    return index, decoded, skipped


def _samples_needed(rate: int) -> int:
    """Input samples at ``rate`` that the first 240 frames depend on, with a margin (0.1 s) beyond the
    resampler's reach (64 zero crossings: at most 64 * rate / 16000 input samples)."""
    at_16k = N_FFT + (FRAMES - 1) * HOP
    return math.ceil(at_16k * rate / SAMPLE_RATE) + rate // 10 + 128


def _chunk_arrays(done: list[tuple[str, np.ndarray]], skipped: list[Skipped],
                  n_frames: list[int] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one chunk file (plain arrays only: read back with allow_pickle=False).

    ``n_frames``: each clip's frames before truncation, when its features were computed from a prefix.
    """
    features = np.stack([pad_or_truncate(x) for _, x in done]) if done else np.zeros((0, FRAMES, N_MELS), np.float32)
    return {
        "names": np.array([key for key, _ in done], dtype=str).reshape(-1),
        "features": features.astype(np.float32),
        "n_frames": np.array(n_frames if n_frames is not None else [x.shape[0] for _, x in done], dtype=np.int32),
        "skipped_names": np.array([s.key for s in skipped], dtype=str).reshape(-1),
        "skipped_kinds": np.array([s.kind for s in skipped], dtype=str).reshape(-1),
        "skipped_details": np.array([s.detail for s in skipped], dtype=str).reshape(-1),
    }


# --------------------------------------------------------------------------------------------
# Packing


def pack_split(
    wav_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    meta_path: str | os.PathLike | None = None,
    *,
    jobs: int | None = None,
    chunk_size: int = 32,
    backend: str = "reference",
    resampler: str = ORIGINAL_RESAMPLER,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    dtype: str = "float32",
) -> PackResult:
    """Extract and pack every clip of a split into one HDF5 file (see the module docstring).

    Args:
        wav_dir: folder of wav clips (``Y<id>_<start>_<end>.wav``).
        out_path: the HDF5 file to create.
        meta_path: a clip list (training_set.csv, testing_set.csv) or a weak-label file; None
            packs every wav of the folder without labels.
        jobs: worker processes (default: the usable cores; 1: none, the work runs in this process).
        chunk_size: clips per task and per resumable unit of work.
        backend: "reference" (:func:`extract_logmel` in the workers) or "torch" (workers decode,
            :func:`extract_logmel_batch` runs on ``device`` in this process).
        resampler: resampler of the reference backend (:data:`devinet.features.RESAMPLERS`).
        device: torch device of the torch backend.
        force: overwrite an existing output and discard an unfinished run of another job.
        progress: show a tqdm progress bar.
        dtype: storage type of the features, "float32" or "float16" (half the size; the
            chunks of an interrupted run are float32 either way).

    Missing, empty and unreadable clips are skipped and listed, never fatal. A run cut short
    resumes when called again with the same arguments.
    """
    resampler, jobs = _checked_options(backend, resampler, chunk_size, jobs, dtype)
    out_path = check_destination(out_path, force)
    h5py = import_h5py("h5py", "features")
    keys, paths, labels = _plan(wav_dir, meta_path)
    chunks = _chunks(keys, chunk_size)
    this_recipe = recipe(backend, resampler)
    work = WorkFolder(out_path, _job(keys, chunk_size, this_recipe), force)
    try:
        finished = work.finished(chunks)
        pending = [i for i in range(len(chunks)) if i not in finished]
        tasks = {i: [(key, str(paths[key]) if key in paths else None) for key in chunks[i]] for i in pending}
        with _progress_bar(len(keys), sum(len(chunks[i]) for i in finished), progress) as bar:
            if backend == "reference":
                _run_reference(tasks, work, resampler, jobs, bar)
            else:
                _run_torch(tasks, work, device, jobs, bar)
        result = _assemble(h5py, work, chunks, out_path, labels, this_recipe, wav_dir, meta_path, dtype)
    except NothingPackedError:
        work.remove()  # its chunks only say that every clip failed: nothing worth resuming
        raise
    except concurrent.futures.process.BrokenProcessPool:
        work.release()
        raise WorkerDiedError(out_path) from None
    except BaseException:
        work.release()
        raise
    work.remove()
    return PackResult(out_path, result[0], result[1], len(finished), len(pending))


def _checked_options(backend: str, resampler: str, chunk_size: int, jobs: int | None,
                     dtype: str = "float32") -> tuple[str, int]:
    """The canonical resampler name and the number of worker processes; InputError for bad options."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    resampler = canonical_resampler(resampler)
    if backend == "torch" and resampler != ORIGINAL_RESAMPLER:
        raise InputError("the torch backend implements the original resampler only")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    if dtype not in FEATURE_DTYPES:
        raise InputError(f"unknown feature dtype {dtype!r}; expected one of {', '.join(FEATURE_DTYPES)}")
    jobs = usable_cores() if jobs is None else jobs
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, got {jobs}")
    return resampler, jobs


def _job(keys: Sequence[str], chunk_size: int, this_recipe: dict) -> dict:
    """What identifies a packing job in its work folder: the clips, their chunking and the recipe."""
    return {
        "format_version": FORMAT_VERSION,
        "clips": hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest(),
        "n_clips": len(keys), "chunk_size": chunk_size, "recipe": this_recipe,
    }


@contextlib.contextmanager
def _progress_bar(total: int, initial: int, enabled: bool) -> Iterator:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="clip", desc="log-mel", disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _run_reference(tasks: dict, work: WorkFolder, resampler: str, jobs: int, bar) -> None:
    if not tasks:
        return
    with process_pool(jobs, _PRELOAD) as pool:
        window = 2 * jobs
        submit = lambda p, i: p.submit(_extract_chunk, i, tasks[i], resampler)  # noqa: E731
        for index, arrays in bounded(pool, submit, sorted(tasks), window):
            work.write_chunk(index, arrays)
            bar.update(len(tasks[index]))


def _run_torch(tasks: dict, work: WorkFolder, device: str, jobs: int, bar) -> None:
    if not tasks:
        return
    with process_pool(jobs, _PRELOAD) as pool:
        window = jobs + 2  # decoded waveforms wait in memory: keep few in flight
        submit = lambda p, i: p.submit(_decode_chunk, i, tasks[i])  # noqa: E731
        for index, decoded, skipped in bounded(pool, submit, sorted(tasks), window):
            done, n_frames = [], []
            for (key, _, _, frames), logmel in zip(decoded, _torch_features(decoded, device, skipped)):
                if logmel is not None:
                    done.append((key, logmel))
                    n_frames.append(frames)
            work.write_chunk(index, _chunk_arrays(done, skipped, n_frames=n_frames))
            bar.update(len(tasks[index]))


def _torch_features(decoded: list, device: str, skipped: list[Skipped]) -> list[np.ndarray | None]:
    """Features of decoded clips in one batch; if the batch fails, clip by clip. A clip that fails,
    or gives non-finite features, is recorded in ``skipped`` and gets None."""
    try:
        batch = extract_logmel_batch([w for _, w, _, _ in decoded], [r for _, _, r, _ in decoded], device=device)
    except Exception:  # noqa: BLE001 - find the clip(s) at fault one by one
        batch = [None] * len(decoded)
    out: list[np.ndarray | None] = []
    for (key, waveform, rate, _), logmel in zip(decoded, batch):
        result = None
        with _clip_failures(key, skipped):
            single = logmel if logmel is not None else extract_logmel_batch([waveform], rate, device=device)[0]
            result = _finite(key, single)
        out.append(result)
    return out


def _assemble(h5py, work: WorkFolder, chunks, out_path: Path, labels, this_recipe, wav_dir, meta_path,
              dtype: str = "float32"):
    """Write the HDF5 file from the chunk files, in plan order, atomically."""
    names: list[str] = []
    n_frames: list[np.ndarray] = []
    skipped: list[Skipped] = []
    for index in range(len(chunks)):
        arrays = work.read_chunk(index)
        names += [str(name) for name in arrays["names"]]
        n_frames.append(arrays["n_frames"])
        skipped += [Skipped(str(k), str(c), str(d)) for k, c, d in
                    zip(arrays["skipped_names"], arrays["skipped_kinds"], arrays["skipped_details"])]
    if not names:
        counts = ", ".join(f"{sum(s.kind == kind for s in skipped)} {kind}" for kind in SKIP_KINDS)
        missing = missing_summary(wav_dir, skipped, len(skipped))
        raise NothingPackedError(wav_dir, f"none of the {len(skipped)} clips could be packed ({counts})"
                                          + (f"; {missing}" if missing else ""))
    order = {key: position for position, key in enumerate(k for chunk in chunks for k in chunk)}
    skipped.sort(key=lambda s: order[s.key])
    string = h5py.string_dtype("utf-8")
    with atomic_path(out_path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            features = h5.create_dataset("features", shape=(len(names), FRAMES, N_MELS), dtype=dtype)
            row = 0
            for index in range(len(chunks)):
                block = work.read_chunk(index)["features"]
                features[row : row + block.shape[0]] = block.astype(dtype)
                row += block.shape[0]
            target = np.stack([labels[name] for name in names]) if labels is not None else \
                np.zeros((len(names), len(meta.CLASSES)), np.float32)
            h5.create_dataset("labels", data=target.astype(np.float32))
            h5.create_dataset("names", data=names, dtype=string)
            h5.create_dataset("n_frames", data=np.concatenate(n_frames).astype(np.int32))
            group = h5.create_group("skipped")
            group.create_dataset("names", data=[s.key for s in skipped], dtype=string)
            group.create_dataset("kinds", data=[s.kind for s in skipped], dtype=string)
            group.create_dataset("details", data=[s.detail for s in skipped], dtype=string)
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.attrs["recipe"] = json.dumps(this_recipe | {"dtype": dtype})
            h5.attrs["classes"] = json.dumps(list(meta.CLASSES))
            h5.attrs["has_labels"] = labels is not None
            h5.attrs["backend"] = this_recipe["backend"]
            h5.attrs["meta"] = "" if meta_path is None else str(Path(meta_path).resolve())
            h5.attrs["wav_dir"] = str(Path(wav_dir).resolve())
    return len(names), skipped


__all__ = [
    "FORMAT_VERSION", "BACKENDS", "FEATURE_DTYPES", "SKIP_KINDS", "NothingPackedError", "WorkerDiedError", "Skipped",
    "PackResult", "PackedSplit", "open_packed",
    "recipe", "index_wav_folder", "missing_summary", "pack_split", "load_packed", "read_skipped", "fit_scaler",
]

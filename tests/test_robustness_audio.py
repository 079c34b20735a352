"""Bad audio through extraction and packing: what is packed, what is skipped, and why, on record.

tests/test_packing.py and tests/test_features.py already cover a missing clip, an empty file, a
corrupt header, a wav without samples, 44.1-kHz stereo, a 0.5-s clip, 300 samples and 48-kHz
silence. Here: clipped and over-range audio, 16-kHz silence, a 10-minute clip, 8/22.05/48 kHz,
multichannel and anti-phase stereo, one sample, other encodings in a .wav name, a file cut
short, NaN samples, a damaged header, random bytes behind a RIFF header, a dangling link, a
clip too long to decode, and a worker process that dies; through both packing backends and
the ``devinet features`` command.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import import_or_require
from devinet import features as F
from devinet import limits
from devinet.cli import main
from experiments import packing as P

soundfile = import_or_require("soundfile", "features")
import_or_require("h5py", "features")

SILENCE = math.log(F.LOG_OFFSET)


def _noise(rng, samples: int, channels: int | None = None, scale: float = 0.1) -> np.ndarray:
    return rng.standard_normal(samples if channels is None else (samples, channels)) * scale


def _write_bad_folder(root: Path) -> Path:
    """One clip per kind of bad audio; names say what each is."""
    rng = np.random.default_rng(9)
    wav = root / "wav"
    wav.mkdir(parents=True)
    soundfile.write(wav / "clipped_int16.wav", np.clip(_noise(rng, 160000, scale=3.0), -1, 1), 16000, subtype="PCM_16")
    soundfile.write(wav / "overrange_float.wav", _noise(rng, 160000, scale=3.0), 16000, subtype="FLOAT")
    soundfile.write(wav / "silent_16k.wav", np.zeros(160000), 16000, subtype="PCM_16")
    soundfile.write(wav / "very_long_10min.wav", _noise(rng, 16000 * 600), 16000, subtype="PCM_16")
    soundfile.write(wav / "rate_8k.wav", _noise(rng, 80000), 8000)
    soundfile.write(wav / "rate_22050.wav", _noise(rng, 220500), 22050)
    soundfile.write(wav / "rate_48k.wav", _noise(rng, 480000), 48000)
    soundfile.write(wav / "rate_48k_stereo.wav", _noise(rng, 480000, 2), 48000)
    soundfile.write(wav / "six_channels.wav", _noise(rng, 160000, 6), 16000)
    left = _noise(rng, 160000)
    soundfile.write(wav / "antiphase_stereo.wav", np.stack([left, -left], axis=1), 16000, subtype="FLOAT")
    soundfile.write(wav / "one_sample.wav", _noise(rng, 1), 16000)
    soundfile.write(wav / "flac_inside.wav", _noise(rng, 32000), 16000, format="FLAC")
    soundfile.write(wav / "unsigned_8bit.wav", _noise(rng, 32000), 16000, subtype="PCM_U8")
    soundfile.write(root / "whole.wav", _noise(rng, 160000), 16000, subtype="PCM_16")
    whole = (root / "whole.wav").read_bytes()
    (wav / "cut_short.wav").write_bytes(whole[: len(whole) // 2])
    (wav / "header_cut.wav").write_bytes(whole[:30])
    (wav / "riff_then_garbage.wav").write_bytes(whole[:12] + rng.bytes(4096))
    (wav / "random_bytes.wav").write_bytes(rng.bytes(4096))
    samples = _noise(rng, 2000)
    samples[1000] = np.nan
    soundfile.write(wav / "nan_samples.wav", samples, 16000, subtype="FLOAT")
    os.symlink(root / "nowhere.wav", wav / "dangling_link.wav")
    (wav / "a_folder.wav").mkdir()  # not a clip: ignored
    return wav


#: clip -> frames before padding/truncation
PACKED = {
    "antiphase_stereo": 240, "clipped_int16": 240, "cut_short": 119, "flac_inside": 47, "one_sample": 1,
    "overrange_float": 240, "rate_22050": 240, "rate_48k": 240, "rate_48k_stereo": 240, "rate_8k": 240,
    "silent_16k": 240, "six_channels": 240, "unsigned_8bit": 47, "very_long_10min": 14457,
}
#: clip -> (kind, words of the recorded reason)
SKIPPED = {
    "dangling_link": ("missing", "no such audio file"),
    "header_cut": ("unreadable", "cannot decode audio"),
    "nan_samples": ("unreadable", "non-finite audio samples"),
    "random_bytes": ("unreadable", "cannot decode audio"),
    "riff_then_garbage": ("unreadable", "cannot decode audio"),
}


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    return _write_bad_folder(tmp_path_factory.mktemp("bad_audio"))


@pytest.fixture(scope="module")
def packed(bad_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "bad.h5"
    result = P.pack_split(bad_folder, out, jobs=1, chunk_size=4, progress=False)
    return result, P.load_packed(out)


@pytest.mark.slow
def test_every_clip_is_packed_or_skipped_with_a_reason(packed):
    result, split = packed
    assert dict(zip(split.names, split.n_frames.tolist())) == PACKED
    assert {s.key: s.kind for s in result.skipped} == {key: kind for key, (kind, _) in SKIPPED.items()}
    for item in result.skipped:
        assert SKIPPED[item.key][1] in item.detail, item
    assert P.read_skipped(result.path) == result.skipped  # the record travels with the file
    assert np.isfinite(split.features).all()


@pytest.mark.slow
def test_packed_bad_audio_equals_the_reference_extraction(bad_folder, packed):
    _, split = packed
    for name, row in zip(split.names, split.features):
        np.testing.assert_array_equal(row, F.pad_or_truncate(F.extract_logmel(bad_folder / f"{name}.wav")), name)


@pytest.mark.slow
def test_silence_and_antiphase_stereo_give_the_log_floor(packed):
    """Digital silence is valid audio (log(0 + 1e-8)); anti-phase channels average to silence, as in the original."""
    _, split = packed
    for name in ("silent_16k", "antiphase_stereo"):
        np.testing.assert_allclose(split.features[split.names.index(name)], SILENCE, rtol=1e-6)


@pytest.mark.slow
def test_clipped_and_overrange_audio_is_kept_finite(bad_folder, packed):
    _, split = packed
    clipped = split.features[split.names.index("clipped_int16")]
    overrange = split.features[split.names.index("overrange_float")]
    assert clipped.max() < overrange.max()  # over-range float samples are not clipped away
    audio, _ = F.read_audio(bad_folder / "overrange_float.wav")
    assert np.abs(audio).max() > 1.0


@pytest.mark.slow
def test_very_long_clip_keeps_its_first_ten_seconds_and_its_length(bad_folder, packed):
    _, split = packed
    row = split.names.index("very_long_10min")
    assert split.n_frames[row] == F.num_frames(16000 * 600)
    audio, rate = soundfile.read(bad_folder / "very_long_10min.wav", frames=F.N_FFT + (F.FRAMES - 1) * F.HOP)
    np.testing.assert_array_equal(split.features[row], F.extract_logmel(audio, rate)[: F.FRAMES])


@pytest.mark.slow
def test_other_rates_and_channel_counts(bad_folder, packed):
    _, split = packed
    for name, channels in (("rate_8k", 1), ("rate_48k", 1), ("rate_48k_stereo", 2), ("six_channels", 6)):
        audio, rate = soundfile.read(bad_folder / f"{name}.wav", always_2d=True)
        assert audio.shape[1] == channels
        expected = F.pad_or_truncate(F.extract_logmel(audio.mean(axis=1) if channels > 1 else audio[:, 0], rate))
        np.testing.assert_allclose(split.features[split.names.index(name)], expected, rtol=0, atol=1e-5)
    # 8 kHz audio has nothing above 4 kHz: the upper mel bands sit near the floor
    eight = split.features[split.names.index("rate_8k")]
    assert eight[:, -8:].mean() < eight[:, :32].mean() - 5


@pytest.mark.slow
def test_torch_backend_packs_and_skips_the_same_clips(bad_folder, packed, tmp_path):
    result, split = packed
    torch_result = P.pack_split(bad_folder, tmp_path / "torch.h5", jobs=1, chunk_size=4, backend="torch",
                                progress=False)
    torch_split = P.load_packed(torch_result.path)
    assert torch_split.names == split.names
    np.testing.assert_array_equal(torch_split.n_frames, split.n_frames)
    assert torch_result.skipped == result.skipped
    np.testing.assert_allclose(torch_split.features, split.features, rtol=0, atol=2e-3)


def test_clip_too_long_to_decode_is_skipped_not_fatal(bad_folder, tmp_path, monkeypatch):
    """A clip whose decoding would exhaust memory is skipped on record before it is decoded."""
    monkeypatch.setattr(limits, "MAX_CLIP_SECONDS", 60.0)
    result = P.pack_split(bad_folder, tmp_path / "x.h5", jobs=1, chunk_size=4, progress=False)
    reasons = {s.key: (s.kind, s.detail) for s in result.skipped}
    kind, detail = reasons["very_long_10min"]
    assert kind == "unreadable" and "too long to decode: 600 s" in detail and "60 s" in detail
    assert "very_long_10min" not in P.load_packed(result.path).names


@pytest.mark.slow
def test_cli_lists_every_skipped_clip_and_why(bad_folder, tmp_path, capsys):
    out = tmp_path / "bad.h5"
    code = main(["features", "--wav-dir", str(bad_folder), "--out", str(out), "--jobs", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"packed {len(PACKED)} clips" in captured.out
    assert f"skipped {len(SKIPPED)} (1 missing, 0 empty, 4 unreadable)" in captured.out
    lines = captured.err.splitlines()
    for key, (kind, reason) in SKIPPED.items():
        assert any(line.startswith(f"  skipped {key}: {kind}: ") and reason in line for line in lines), key
    assert "Traceback" not in captured.err


@pytest.mark.slow
def test_a_dead_worker_is_one_clear_error_and_the_run_resumes(bad_folder, packed, tmp_path, capsys, monkeypatch):
    """A worker process killed mid-run (as the out-of-memory killer would): one line naming the output,
    the finished chunks kept, and the rerun completes with the same file as an uninterrupted run."""
    import signal
    from concurrent.futures.process import BrokenProcessPool

    real_bounded = P.bounded

    def bounded_then_kill_a_worker(pool, submit, items, window):
        """Once the first chunk is written (workers up and busy), a worker SIGKILLs itself."""
        results = real_bounded(pool, submit, items, window)
        yield next(results)
        death = pool.submit(signal.raise_signal, signal.SIGKILL)
        assert isinstance(death.exception(timeout=120), BrokenProcessPool)  # the pool saw it die
        yield from results

    monkeypatch.setattr(P, "bounded", bounded_then_kill_a_worker)
    out, work = tmp_path / "bad.h5", tmp_path / ".bad.h5.work"
    argv = ["features", "--wav-dir", str(bad_folder), "--out", str(out), "--jobs", "2", "--chunk-size", "2",
            "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert str(out) in err[0] and "worker process died" in err[0] and "run the same command again" in err[0]
    assert not out.exists() and list(work.glob("chunk_*.npz"))  # the finished chunks are kept
    monkeypatch.setattr(P, "bounded", real_bounded)
    assert main(argv) == 0
    assert "resumed:" in capsys.readouterr().out
    again = P.load_packed(out)
    assert again.names == packed[1].names
    np.testing.assert_array_equal(again.features, packed[1].features)
    assert P.read_skipped(out) == packed[0].skipped


# ---------------------------------------------------------------------- hostile clips (issue 22, class c9)
REAL_CLIP = "Y-_A4yJmxFdM_30.000_40.000.wav"  # a genuine 10-s 44.1-kHz clip of the reference data

#: case id -> (clip name, what its record says: the reference backend's reason, the torch backend's)
HOSTILE_CLIPS = {
    "c9-rate_above_8192000_Hz": ("rate_9_MHz", "sample rate 9,000,000 Hz is outside the 4,000-768,000 Hz accepted"),
    "c9-rate_of_1_Hz": ("rate_1_Hz", "sample rate 1 Hz is outside"),
    "c9-samples_of_1.7e308": ("samples_1e308", ("non-finite features", "samples beyond float32's range")),
    "c9-fifo_named_wav": ("fifo", "not a regular file (a FIFO, device or socket)"),
}


def _hostile_folder(reference_dir: Path, root: Path, with_good: bool = True) -> Path:
    """Hostile clips derived from a genuine clip (and, ``with_good``, the genuine clip itself)."""
    audio, rate = soundfile.read(reference_dir / "real_clips" / "wav" / REAL_CLIP)
    wav = root / "wav"
    wav.mkdir(parents=True)
    if with_good:
        soundfile.write(wav / "good.wav", audio, rate)
    soundfile.write(wav / "rate_9_MHz.wav", audio, 9_000_000)
    soundfile.write(wav / "rate_1_Hz.wav", audio[:1000], 1)  # 1,000 s, 16 million samples once resampled
    soundfile.write(wav / "samples_1e308.wav", audio / np.abs(audio).max() * 1.7e308, rate, subtype="DOUBLE")
    os.mkfifo(wav / "fifo.wav")  # soundfile.info on it would wait forever for a writer
    return wav


@pytest.fixture(scope="module", params=["reference", "torch"])
def hostile_run(request, reference_dir, tmp_path_factory):
    """`devinet features` on the hostile folder in a child process (a hang fails on its timeout)."""
    root = tmp_path_factory.mktemp(f"hostile_{request.param}")
    wav = _hostile_folder(reference_dir, root)
    out = root / "out.h5"
    done = subprocess.run([sys.executable, "-m", "devinet", "features", "--wav-dir", str(wav), "--out", str(out),
                           "--jobs", "1", "--no-progress", "--backend", request.param],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    return request.param, done, out


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE_CLIPS))
def test_hostile_clip_is_skipped_on_record_and_the_run_goes_on(case, hostile_run):
    backend, done, out = hostile_run
    assert done.returncode == 0, done.stderr
    assert all(line.startswith("  skipped ") for line in done.stderr.splitlines()), done.stderr  # no traceback
    assert "packed 1 clips" in done.stdout and P.load_packed(out).names == ["good"]
    name, reasons = HOSTILE_CLIPS[case]
    reason = reasons if isinstance(reasons, str) else reasons[backend == "torch"]
    records = {s.key: s for s in P.read_skipped(out)}
    assert records[name].kind == "unreadable" and reason in records[name].detail, records[name]
    assert any(line.startswith(f"  skipped {name}: unreadable: ") and reason in line
               for line in done.stderr.splitlines()), done.stderr
    assert np.isfinite(P.load_packed(out).features).all()


@pytest.mark.parametrize("case", ["c9-unforeseen_exception_in_one_clip"])  # the id counts the case in its class
def test_any_failure_of_one_clip_is_recorded_and_the_others_packed(case, bad_folder, tmp_path, monkeypatch):
    """Not only the audio errors foreseen: an unexpected exception in one clip's extraction is that
    clip's skip reason (the run keeps every other clip)."""
    real = P.extract_logmel

    def failing(path, **kwargs):
        if Path(path).stem == "rate_8k":
            raise RuntimeError("an unforeseen failure")
        return real(path, **kwargs)

    monkeypatch.setattr(P, "extract_logmel", failing)
    result = P.pack_split(bad_folder, tmp_path / "x.h5", jobs=1, chunk_size=4, progress=False)
    records = {s.key: (s.kind, s.detail) for s in result.skipped}
    assert records["rate_8k"] == ("unreadable", "feature extraction failed (RuntimeError: an unforeseen failure)")
    assert sorted(P.load_packed(result.path).names) == sorted(set(PACKED) - {"rate_8k"})


@pytest.mark.slow
@pytest.mark.parametrize("case", ["c9-folder_of_hostile_clips_only"])
def test_a_folder_of_hostile_clips_only_is_one_line_within_a_memory_limit(case, reference_dir, tmp_path,
                                                                          limited_devinet):
    """c9/c1: nothing packable, not even the 1-Hz clip that would resample to 16 million samples:
    one line naming the folder, under a 2 GiB address-space limit, peak resident memory under 1 GiB."""
    wav = _hostile_folder(reference_dir, tmp_path, with_good=False)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err, peak = limited_devinet("memory", 2 << 30, ["features", "--wav-dir", wav, "--out", out / "x.h5",
                                                             "--jobs", "1", "--no-progress"], timeout=300)
    assert code == 1 and len(err) == 1, err
    assert err[0] == (f"devinet features: error: {wav}: none of the 4 clips could be packed "
                      "(0 missing, 0 empty, 4 unreadable)"), err
    assert peak is not None and peak < 1 << 30, peak
    assert sorted(p.name for p in out.iterdir()) == []

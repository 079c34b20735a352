"""Packing a split into HDF5 (experiments.packing) and the ``devinet features`` command."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import import_or_require
from devinet import features as F
from devinet.cli import main
from devinet.errors import FileFormatError
from experiments import meta as M
from experiments import packing as P

soundfile = import_or_require("soundfile", "features")
h5py = import_or_require("h5py", "features")
REPO_ROOT = Path(__file__).resolve().parents[1]

# id -> (labels of the metadata row, what is on disk)
CLIPS = {
    "aaaaaaaaaaa": (("Air horn, truck horn",), "10 s, 16 kHz mono"),
    "bbbbbbbbbbb": (("Car", "Truck"), "10 s, 44.1 kHz stereo"),
    "ccccccccccc": (("Train",), "0.5 s, 16 kHz"),
    "ddddddddddd": (("Bus",), "300 samples at 44.1 kHz: shorter than one window"),
    "eeeeeeeeeee": (("Car",), "corrupt"),
    "fffffffffff": (("Car",), "empty file"),
    "Yq3nFbsQxb4": (("Screaming", "Car alarm"), "10 s of silence, 48 kHz; the id starts with Y"),
    "hhhhhhhhhhh": (("Car",), "missing"),
}
PACKED = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "ddddddddddd", "Yq3nFbsQxb4"]
SKIPPED = {"eeeeeeeeeee": "unreadable", "fffffffffff": "empty", "hhhhhhhhhhh": "missing"}


def _key(youtube_id: str) -> str:
    return f"{youtube_id}_30.000_40.000"


def _write_folder(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True)
    path = {i: wav_dir / M.wav_name(_key(i)) for i in CLIPS}
    soundfile.write(path["aaaaaaaaaaa"], rng.standard_normal(160000) * 0.1, 16000)
    soundfile.write(path["bbbbbbbbbbb"], rng.standard_normal((441000, 2)) * 0.1, 44100)
    soundfile.write(path["ccccccccccc"], rng.standard_normal(8000) * 0.1, 16000)
    soundfile.write(path["ddddddddddd"], rng.standard_normal(300) * 0.1, 44100)
    path["eeeeeeeeeee"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    path["fffffffffff"].write_bytes(b"")
    soundfile.write(path["Yq3nFbsQxb4"], np.zeros(480000), 48000)
    soundfile.write(wav_dir / "not_listed.wav", rng.standard_normal(4000) * 0.1, 16000)
    rows = [f'{i},30.000,40.000,"{",".join(labels)}","{",".join("/m/x" for _ in labels)}"'
            for i, (labels, _) in CLIPS.items()]
    meta = root / "meta.csv"
    meta.write_bytes(("\r\n".join(rows) + "\r\n").encode())  # CRLF, like the official files
    return wav_dir, meta


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory):
    """The split packed once in this process (jobs=1), read back whole."""
    wav_dir, meta = folder
    out = tmp_path_factory.mktemp("packed") / "split.h5"
    result = P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=3, progress=False)
    return result, P.load_packed(out)


def _work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.work"


def _assert_same_split(a: P.PackedSplit, b: P.PackedSplit, atol: float = 0.0) -> None:
    assert a.names == b.names
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.n_frames, b.n_frames)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=atol)


def test_packed_file_contents(folder, packed):
    wav_dir, _ = folder
    result, split = packed
    assert result.packed == 5 and result.computed_chunks == 3 and result.reused_chunks == 0
    assert split.names == [_key(i) for i in PACKED]
    assert split.features.shape == (5, 240, 64) and split.features.dtype == np.float32
    assert split.labels.shape == (5, 17) and split.labels.dtype == np.float32
    assert split.classes == M.CLASSES and split.has_labels
    expected_labels = [M.labels_to_multihot(CLIPS[i][0]) for i in PACKED]
    np.testing.assert_array_equal(split.labels, np.stack(expected_labels))
    assert split.labels[1, M.CLASSES.index("Car")] == split.labels[1, M.CLASSES.index("Truck")] == 1
    # 10 s -> 240; 0.5 s -> 11; 300 samples at 44.1 kHz -> padded to one window -> 1
    assert split.n_frames.tolist() == [240, 240, 11, 1, 240]
    for row, youtube_id in enumerate(PACKED):
        expected = F.pad_or_truncate(F.extract_logmel(wav_dir / M.wav_name(_key(youtube_id))))
        np.testing.assert_array_equal(split.features[row], expected)
    assert not split.features[2, 11:].any()  # zero padding, as the original packer
    np.testing.assert_allclose(split.features[4], math.log(F.LOG_OFFSET), rtol=1e-6)  # silence is kept
    stereo, rate = soundfile.read(wav_dir / M.wav_name(_key("bbbbbbbbbbb")))
    np.testing.assert_array_equal(split.features[1], F.extract_logmel(stereo, rate))
    assert split.recipe["hop"] == 664 and split.recipe["resampler"] == "resampy02_kaiser_best"


def test_skipped_clips_are_listed(packed):
    result, _ = packed
    skipped = P.read_skipped(result.path)
    assert skipped == result.skipped
    assert {s.key: s.kind for s in skipped} == {_key(i): kind for i, kind in SKIPPED.items()}
    assert [s.key for s in skipped] == [_key(i) for i in CLIPS if i in SKIPPED]  # metadata order
    details = {s.kind: s.detail for s in skipped}
    assert "Yhhhhhhhhhhh_30.000_40.000.wav" in details["missing"]
    assert "cannot decode audio" in details["unreadable"] and "0 bytes" in details["empty"]
    assert result.skipped_by_kind() == {"missing": 1, "empty": 1, "unreadable": 1}
    assert not _work_folder(result.path).exists()
    assert [p.name for p in result.path.parent.iterdir()] == ["split.h5"]


def test_packed_file_attributes(packed):
    result, _ = packed
    with h5py.File(result.path, "r") as h5:
        assert h5.attrs["format_version"] == P.FORMAT_VERSION
        assert json.loads(h5.attrs["classes"]) == list(M.CLASSES)
        assert h5["names"].asstr()[0] == _key("aaaaaaaaaaa")
        assert h5["n_frames"].dtype == np.int32
        assert h5.attrs["meta"].endswith("meta.csv") and h5.attrs["backend"] == "reference"


def test_existing_output_is_refused_unless_forced(folder, packed, tmp_path):
    wav_dir, meta = folder
    result, split = packed
    with pytest.raises(FileFormatError, match="destination exists"):
        P.pack_split(wav_dir, result.path, meta, jobs=1, progress=False)
    out = tmp_path / "again.h5"
    out.write_bytes(b"old")
    P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=4, force=True, progress=False)
    _assert_same_split(P.load_packed(out), split)  # chunking does not change the result


def test_interrupted_run_resumes_without_redoing_finished_chunks(folder, packed, tmp_path, monkeypatch):
    wav_dir, meta = folder
    out = tmp_path / "split.h5"
    calls = []
    real = F.extract_logmel

    def interrupted(path, *args, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 5:  # the first clip of the third chunk (chunks: ab cd ef Yh)
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(P, "extract_logmel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=2, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in _work_folder(out).glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]

    calls.clear()
    monkeypatch.setattr(P, "extract_logmel", lambda path, *a, **k: calls.append(Path(path).name) or real(path, *a, **k))
    result = P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=2, progress=False)
    assert (result.reused_chunks, result.computed_chunks) == (2, 2)
    # chunks 0-1 held a, b, c, d: only the present clips of chunks 2-3 were extracted again
    assert sorted(calls) == sorted(M.wav_name(_key(i)) for i in ("eeeeeeeeeee", "fffffffffff", "Yq3nFbsQxb4"))
    _assert_same_split(P.load_packed(out), packed[1])
    assert P.read_skipped(out) == packed[0].skipped
    assert not _work_folder(out).exists()


def test_damaged_chunk_files_are_redone(folder, packed, tmp_path, monkeypatch):
    wav_dir, meta = folder
    out = tmp_path / "split.h5"
    real = F.extract_logmel

    def stop_at_e(path, *args, **kwargs):
        if Path(path).name.startswith("Yeee"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(P, "extract_logmel", stop_at_e)
    with pytest.raises(KeyboardInterrupt):
        P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=2, progress=False)
    monkeypatch.setattr(P, "extract_logmel", real)
    work = _work_folder(out)
    (work / "chunk_000001.npz").write_bytes(b"PK\x03\x04 cut short")
    (work / "chunk_000007.npz").write_bytes(b"")  # not a chunk of this plan
    (work / ".chunk_000002.npz.x1y2.tmp").write_bytes(b"partial")  # an atomic write cut short
    result = P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=2, progress=False)
    assert (result.reused_chunks, result.computed_chunks) == (1, 3)
    _assert_same_split(P.load_packed(out), packed[1])


def test_unfinished_run_of_another_job_is_not_mixed_in(folder, tmp_path, monkeypatch):
    wav_dir, meta = folder
    out = tmp_path / "split.h5"
    real = F.extract_logmel

    def stop_at_third(path, *args, **kwargs):
        if Path(path).name.startswith("Yccc"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(P, "extract_logmel", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=2, progress=False)
    monkeypatch.setattr(P, "extract_logmel", real)
    with pytest.raises(FileFormatError, match="unfinished run of a different job"):
        P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=3, progress=False)
    with pytest.raises(FileFormatError, match="unfinished run of a different job"):
        P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=2, resampler="soxr_hq", progress=False)
    result = P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=3, force=True, progress=False)
    assert result.reused_chunks == 0 and result.packed == 5


@pytest.mark.slow
def test_sigkill_then_resume(folder, packed, tmp_path):
    """A run killed with SIGKILL leaves no output; the next run keeps its finished chunks."""
    wav_dir, meta = folder
    out = tmp_path / "split.h5"
    # The child says on stdout when two chunks are written, then waits there (mid-run, holding
    # its lock) to be killed.
    script = textwrap.dedent(f"""
        import threading
        from experiments import packing as P
        real = P.bounded
        def bounded_then_wait(*args, **kwargs):
            for taken, result in enumerate(real(*args, **kwargs)):
                if taken == 2:  # the caller has written chunks 0 and 1
                    print("two chunks written", flush=True)
                    threading.Event().wait()
                yield result
        P.bounded = bounded_then_wait
        P.pack_split({str(wav_dir)!r}, {str(out)!r}, {str(meta)!r}, jobs=1, chunk_size=1, progress=False)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        readable, _, _ = select.select([process.stdout], [], [], 120)
        said = process.stdout.readline() if readable else "(nothing within 120 s)"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    errors = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert said == "two chunks written\n", errors
    finished = len(list(_work_folder(out).glob("chunk_*.npz")))
    assert finished == 2 and not out.exists()
    result = P.pack_split(wav_dir, out, meta, jobs=1, chunk_size=1, progress=False)
    assert result.reused_chunks == finished and result.computed_chunks == len(CLIPS) - finished
    _assert_same_split(P.load_packed(out), packed[1])
    assert not _work_folder(out).exists()


def test_folder_without_metadata(folder, tmp_path):
    wav_dir, _ = folder
    result = P.pack_split(wav_dir, tmp_path / "all.h5", jobs=1, progress=False)
    split = P.load_packed(result.path)
    assert split.names == sorted([_key(i) for i in PACKED] + ["not_listed"])
    assert not split.has_labels and not split.labels.any()
    assert {s.kind for s in result.skipped} == {"empty", "unreadable"}  # nothing can be missing


def test_weak_label_file_as_metadata(folder, packed, tmp_path):
    wav_dir, _ = folder
    weak = tmp_path / "weak.csv"
    weak.write_text("".join(f"{_key(i)}.wav\t30.000\t40.000\t{label}\r\n"
                            for i in ("bbbbbbbbbbb", "aaaaaaaaaaa") for label in ("Truck", "Car")))
    split = P.load_packed(P.pack_split(wav_dir, tmp_path / "w.h5", weak, jobs=1, progress=False).path)
    assert split.names == [_key("bbbbbbbbbbb"), _key("aaaaaaaaaaa")]
    assert split.labels.sum(axis=1).tolist() == [2.0, 2.0]
    np.testing.assert_array_equal(split.features[0], packed[1].features[1])


def test_unknown_label_fails_before_any_work(folder, tmp_path):
    wav_dir, _ = folder
    meta = tmp_path / "meta.csv"
    meta.write_text("aaaaaaaaaaa,30.000,40.000,Horse,/m/x\n")
    with pytest.raises(FileFormatError, match=r"meta.csv: clip aaaaaaaaaaa_30.000_40.000: unknown label 'Horse'"):
        P.pack_split(wav_dir, tmp_path / "x.h5", meta, jobs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.csv"]


def test_nothing_packable(tmp_path):
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "Yaaaaaaaaaaa_0.000_10.000.wav").write_bytes(b"not audio")
    with pytest.raises(P.NothingPackedError, match="none of the 1 clips could be packed .*1 unreadable"):
        P.pack_split(tmp_path / "wav", tmp_path / "x.h5", jobs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wav"]
    with pytest.raises(FileFormatError, match="not a folder"):
        P.pack_split(tmp_path / "absent", tmp_path / "x.h5", jobs=1, progress=False)


def test_torch_backend_agrees_with_the_reference(folder, packed, tmp_path):
    wav_dir, meta = folder
    result = P.pack_split(wav_dir, tmp_path / "t.h5", meta, jobs=1, backend="torch", progress=False)
    split = P.load_packed(result.path)
    assert split.recipe["backend"] == "torch" and result.skipped == packed[0].skipped
    _assert_same_split(split, packed[1], atol=2e-3)  # float32 torch vs float64 reference


def test_fit_scaler(packed):
    result, split = packed
    everything = P.fit_scaler(result.path, clips_per_read=2)
    direct = F.Scaler.fit(split.features)
    np.testing.assert_allclose(everything.mean, direct.mean, rtol=1e-12)
    np.testing.assert_allclose(everything.std, direct.std, rtol=1e-12)
    valid = P.fit_scaler(result.path, valid_frames_only=True)
    frames = np.concatenate([x[:n] for x, n in zip(split.features, split.n_frames)])
    assert valid.count == frames.shape[0] == 240 * 3 + 11 + 1
    np.testing.assert_allclose(valid.mean, frames.mean(axis=0, dtype=np.float64), rtol=1e-10)


def test_load_packed_refuses_other_files(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(FileFormatError, match="not a devinet packed features file"):
        P.load_packed(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FileFormatError, match="not an HDF5 file"):
        P.load_packed(tmp_path / "text.h5")


def test_cli_in_process(folder, packed, tmp_path, capsys):
    wav_dir, meta = folder
    out, scaler = tmp_path / "cli.h5", tmp_path / "scaler.json"
    argv = ["features", "--wav-dir", str(wav_dir), "--meta", str(meta), "--out", str(out), "--jobs", "1",
            "--scaler-out", str(scaler), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "packed 5 clips" in captured.out and "skipped 3 (1 missing, 1 empty, 1 unreadable)" in captured.out
    assert f"skipped {_key('hhhhhhhhhhh')}: missing" in captured.err
    _assert_same_split(P.load_packed(out), packed[1])
    np.testing.assert_allclose(F.Scaler.load(scaler).mean, P.fit_scaler(out).mean)
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith(f"devinet features: error: {out}: destination exists")
    bad = ["features", "--wav-dir", str(wav_dir), "--out", str(tmp_path / "n.h5"), "--scaler-out", str(tmp_path / "s.pkl")]
    assert main(bad) == 1
    assert "saved as .npz or .json" in capsys.readouterr().err
    assert not (tmp_path / "n.h5").exists()


@pytest.mark.slow
def test_cli_subprocess_with_worker_pool(folder, packed, tmp_path):
    """The real command line, with two worker processes: the same file as the in-process run."""
    wav_dir, meta = folder
    out = tmp_path / "pool.h5"
    done = subprocess.run(
        [sys.executable, "-m", "devinet.cli", "features", "--wav-dir", str(wav_dir), "--meta", str(meta),
         "--out", str(out), "--jobs", "2", "--chunk-size", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "packed 5 clips" in done.stdout and "log-mel" in done.stderr  # the progress bar
    _assert_same_split(P.load_packed(out), packed[1])
    again = subprocess.run([sys.executable, "-m", "devinet.cli", "features", "--wav-dir", str(wav_dir),
                            "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.strip() == \
        f"devinet features: error: {out}: destination exists (use --force to overwrite)"


def test_float16_features_halve_the_file_and_read_back_as_float32(folder, packed, tmp_path, capsys):
    """`devinet features --dtype float16`: the same log-mel rounded to float16; every reader accepts it."""
    from devinet.cli import main
    from experiments.trainingdata import ClipFeatures

    wav_dir, meta = folder
    out = tmp_path / "half.h5"
    assert main(["features", "--wav-dir", str(wav_dir), "--meta", str(meta), "--out", str(out), "--dtype", "float16",
                 "--jobs", "1", "--chunk-size", "3", "--no-progress"]) == 0
    capsys.readouterr()
    half, full = P.load_packed(out), packed[1]
    assert half.features.dtype == np.float16 and half.recipe["dtype"] == "float16"
    assert full.recipe["dtype"] == "float32" and half.names == full.names
    np.testing.assert_array_equal(half.features, full.features.astype(np.float16))
    scaler, reference = P.fit_scaler(out), P.fit_scaler(packed[0].path)
    np.testing.assert_allclose(scaler.mean, reference.mean, atol=2e-3)
    with h5py.File(out, "r") as h5:
        clip = ClipFeatures(h5["features"])[1]
    assert clip.dtype == np.float32
    np.testing.assert_array_equal(clip, full.features[1].astype(np.float16).astype(np.float32))

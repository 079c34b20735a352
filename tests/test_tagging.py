"""Tagging recordings (issue 17): scalers and class names for converted models, block-wise
log-mel, the Tagger's windows and stitching, ``devinet tag``, and the must-show checks against
the original features and a ``devinet reproduce`` run."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import devinet
from conftest import code_running_payloads
from devinet.cli import main
from devinet.errors import ConfigError, FileFormatError, InputError
from devinet.features import extract_logmel, extract_logmel_batch, pad_or_truncate
from devinet.model_list import expand_models, read_model_list, write_model_list
from devinet.postprocessing import at_decisions, detect_events
from devinet.preprocessing import Preprocessing, read_class_names
from devinet.recipe import DCASE2017_CLASSES, FRAME_STEP_SEC
from devinet.scaler import Scaler
from devinet.streaming import LogMelStream
from devinet.tagging import Tagger

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(conv_channels=8, rnn_hidden=(8,), final_conv_channels=16)


# --------------------------------------------------------------------------- helpers
def tones(seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Noise and a few tones (structure at every frequency), (n,) or (n, channels) float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.05 * rng.standard_normal(t.shape[0]) + sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 7000, 3))
    if channels == 1:
        return x
    return np.stack([x * (0.5 + k / channels) for k in range(channels)], axis=1)


def small_checkpoint(path: Path, preset: str = "cvssp_crnn_sed", seed: int = 0, scaler: bool = True) -> Path:
    """A small self-describing checkpoint with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = devinet.DeviNet.from_preset(preset, **SMALL).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(seed)
    described = Preprocessing(scaler=Scaler(rng.normal(-6, 1, 64), rng.uniform(1, 3, 64)) if scaler else None)
    devinet.save(model, path, preprocessing=described, force=True)
    return path


def reference_outputs(checkpoint: Path, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model (as loaded, not optimized) on scaled (N, 240, 64) features: clip (N, C), frame (N, T', C)."""
    model = devinet.load(checkpoint)
    scaled = model.preprocessing.scaler.transform(features.astype(np.float32))
    with torch.no_grad():
        out = model(torch.from_numpy(scaled))
    return out["clipwise"].numpy(), out["framewise"].numpy()


@pytest.fixture(scope="module")
def sed_ckpt(tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("models") / "sed.pt", "cvssp_crnn_sed")


@pytest.fixture(scope="module")
def at_ckpt(tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("models") / "at.pt", "cvssp_crnn_at", seed=1)


# --------------------------------------------------------------------------- scalers and class names
def _py2_str(data: bytes) -> str:
    """A Python 2 ``str`` as protocol 0 writes it (S'...' with repr escapes)."""
    escapes = {"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "S'" + "".join(escapes.get(chr(c)) or (chr(c) if 32 <= c < 127 else f"\\x{c:02x}") for c in data) + "'\n"


def _py2_array(values: np.ndarray) -> str:
    """numpy 1.13's ndarray.__reduce__ under Python 2, protocol 0."""
    a = np.ascontiguousarray(values, dtype="<f8")
    return ("cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\nt" + _py2_str(b"b") + "tR"
            + f"(I1\n(I{a.shape[0]}\ntcnumpy\ndtype\n(" + _py2_str(b"f8") + "I0\nI1\ntR(I3\n" + _py2_str(b"<")
            + "NNNI-1\nI-1\nI0\ntbI00\n" + _py2_str(a.tobytes()) + "tb")


def py2_scaler_pickle(mean: np.ndarray, var: np.ndarray, count: int) -> bytes:
    """What the original ``calculate_scaler`` wrote: ``pickle.dump(StandardScaler().fit(x), f)`` under
    Python 2.7 (protocol 0) with scikit-learn 0.19 and numpy 1.13 (module names of that time)."""
    def item(key: bytes, value: str) -> str:
        return _py2_str(key) + value + "s"

    text = ("ccopy_reg\n_reconstructor\n(csklearn.preprocessing.data\nStandardScaler\nc__builtin__\nobject\nNtR(d"
            + item(b"with_std", "I01\n") + item(b"copy", "I01\n") + item(b"with_mean", "I01\n")
            + item(b"n_samples_seen_", f"I{count}\n") + item(b"mean_", _py2_array(mean))
            + item(b"var_", _py2_array(var)) + item(b"scale_", _py2_array(np.sqrt(var)))
            + item(b"_sklearn_version", _py2_str(b"0.19.0")) + "b.")
    return text.encode("latin-1")


def test_scaler_read_accepts_npz_json_and_sklearn_pickles(tmp_path, rng):
    from sklearn.preprocessing import StandardScaler

    features = rng.normal(-4, 2, (500, 64))
    fitted = StandardScaler().fit(features)
    ours = Scaler.fit(features)
    np.testing.assert_allclose(ours.mean, fitted.mean_, rtol=1e-12)
    np.testing.assert_allclose(ours.std, fitted.scale_, rtol=1e-12)
    files = {"s.npz": None, "s.json": None}
    ours.save(tmp_path / "s.npz")
    ours.save(tmp_path / "s.json")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # today's scikit-learn, every protocol
        (tmp_path / f"sk{protocol}.pkl").write_bytes(pickle.dumps(fitted, protocol=protocol))
        files[f"sk{protocol}.pkl"] = fitted
    # the original's file: Python 2 protocol 0, scikit-learn 0.19 (named by content, not suffix)
    (tmp_path / "scaler.p").write_bytes(py2_scaler_pickle(fitted.mean_, fitted.var_, 500))
    files["scaler.p"] = fitted
    for name in files:
        read = Scaler.read(tmp_path / name)
        np.testing.assert_array_equal(read.mean, fitted.mean_ if files[name] is not None else ours.mean, err_msg=name)
        np.testing.assert_array_equal(read.std, fitted.scale_ if files[name] is not None else ours.std, err_msg=name)
        assert read.count == 500, name
    # a scaler fitted without centring has no mean_: zeros
    (tmp_path / "no_mean.pkl").write_bytes(pickle.dumps(StandardScaler(with_mean=False).fit(features)))
    assert np.array_equal(Scaler.read(tmp_path / "no_mean.pkl").mean, np.zeros(64))


@pytest.mark.parametrize("kind", ["os.system", "exec", "open"])
def test_a_hostile_scaler_pickle_never_runs(kind, tmp_path, capsys):
    from sklearn.preprocessing import StandardScaler

    marker = tmp_path / "marker"
    payload = code_running_payloads(marker)[kind]
    pickle.loads(pickle.dumps(payload))  # the control: an ordinary unpickler runs it
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    scaler = StandardScaler().fit(np.ones((3, 64)))
    scaler.mean_ = payload  # hidden inside a genuine scaler's attributes
    for name, data in (("bare.pkl", pickle.dumps(payload)), ("inside.pkl", pickle.dumps(scaler)),
                       ("old.pkl", pickle.dumps({"mean_": payload}, protocol=0))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FileFormatError) as caught:
            Scaler.read(tmp_path / name)
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"{tmp_path / name}: refused to read the pickle")
        assert not marker.exists()
    # through the command line: one line on stderr, nothing written, nothing run
    (tmp_path / "model.h5").write_bytes(b"not read: the scaler is refused first")
    assert main(["convert", str(tmp_path / "model.h5"), str(tmp_path / "out.pt"),
                 "--scaler", str(tmp_path / "bare.pkl")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"devinet convert: error: {tmp_path / 'bare.pkl'}: refused")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_a_pickle_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    huge = _py2_array(np.zeros(1)).replace("(I1\ntcnumpy", f"(I{2 ** 40}\ntcnumpy")
    (tmp_path / "huge.p").write_bytes(("(dS'mean_'\n" + huge + "s.").encode("latin-1"))
    with pytest.raises(FileFormatError, match="far larger than a scaler's"):
        Scaler.read(tmp_path / "huge.p")
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01 neither zip, JSON nor pickle")
    with pytest.raises(FileFormatError, match="junk.bin: not a scaler file"):
        Scaler.read(tmp_path / "junk.bin")


def test_class_names_files(tmp_path):
    (tmp_path / "lines.txt").write_text("Car\n  Bus \n\nTrain\n")
    (tmp_path / "list.json").write_text(json.dumps(["Car", "Bus", "Train"]))
    assert read_class_names(tmp_path / "lines.txt") == read_class_names(tmp_path / "list.json") == ("Car", "Bus", "Train")
    for name, content, message in (("dup.txt", "Car\nCar\n", "'Car' is listed more than once"),
                                   ("empty.txt", "\n\n", "no class names"),
                                   ("numbers.json", "[1, 2]", "strings only"),
                                   ("bad.json", "[1, ", "not a JSON list")):
        (tmp_path / name).write_text(content)
        with pytest.raises(FileFormatError, match=f"{name}: .*{message}"):
            read_class_names(tmp_path / name)


@pytest.mark.slow
def test_convert_describes_the_model_or_names_the_file_that_does_not_fit(reference_dir, tmp_path, capsys):
    source = reference_dir / "keras208" / "k208_theano_crnn_at.h5"
    Scaler(np.zeros(64), np.ones(64)).save(tmp_path / "s.json")
    Scaler(np.zeros(40), np.ones(40)).save(tmp_path / "s40.json")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    names = [f"sound {k}" for k in range(17)]
    (tmp_path / "names.json").write_text(json.dumps(names))
    assert main(["convert", str(source), str(tmp_path / "m.pt"), "--classes", str(tmp_path / "names.json"),
                 "--scaler", str(tmp_path / "s.json")]) == 0
    assert "preprocessing: 17 class names from" in capsys.readouterr().out
    described = devinet.load(tmp_path / "m.pt").preprocessing
    assert described.classes == tuple(names) and described.scaler == Scaler.read(tmp_path / "s.json")
    assert main(["convert", str(source), str(tmp_path / "plain.pt")]) == 0
    assert "no scaler (give --scaler FILE" in capsys.readouterr().out
    plain = devinet.load(tmp_path / "plain.pt").preprocessing
    assert plain.classes == DCASE2017_CLASSES and plain.scaler is None
    for option, bad, message in (("--classes", "three.txt", "3 class names for a model with 17 outputs"),
                                 ("--scaler", "s40.json", "a scaler of 40 bins for a model of 64 mel bands")):
        assert main(["convert", str(source), str(tmp_path / "bad.pt"), option, str(tmp_path / bad)]) == 1
        assert capsys.readouterr().err.strip() == f"devinet convert: error: {tmp_path / bad}: {message}"
        assert not (tmp_path / "bad.pt").exists()
    assert main(["convert", str(tmp_path / "m.pt"), str(tmp_path / "back.h5"), "--scaler", str(tmp_path / "s.json")]) == 1
    assert "DST is a Keras file" in capsys.readouterr().err


# --------------------------------------------------------------------------- block-wise log-mel
@pytest.mark.parametrize("rate, channels", [(48000, 2), (16000, 1), (8000, 1)])
def test_block_wise_log_mel_equals_the_whole_file_where_the_ratio_is_exact(rate, channels):
    """Rates whose resampler has no float time-register drift: blocks give the whole-file features."""
    audio = tones(13.3, rate, channels=channels)
    stream = LogMelStream(audio, rate, block_seconds=3.0, dtype=torch.float64)
    blocks = list(stream)
    assert len(blocks) > 4
    whole = extract_logmel(audio, rate)
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-9)
    assert stream.frames == whole.shape[0] and stream.duration == pytest.approx(13.3, abs=1 / rate)


def test_block_wise_log_mel_at_44_1_khz():
    """One block: exactly the batched extractor (the packed-feature path's recipe). Several blocks:
    resampy's float time register restarts per block, which moves the 0.3 % of outputs where its
    drift changes a table position (docs/tagging.md); measured here: mean |difference| 2e-5."""
    audio = tones(50.0, 44100)
    one = np.concatenate(list(LogMelStream(audio, 44100)))
    np.testing.assert_array_equal(one, extract_logmel_batch([audio], 44100)[0])
    blocks = np.concatenate(list(LogMelStream(audio, 44100, block_seconds=7.0, dtype=torch.float64)))
    reference = extract_logmel(audio, 44100)
    assert blocks.shape == reference.shape
    difference = np.abs(blocks - reference)
    assert difference.mean() < 1e-4 and np.quantile(difference, 0.99) < 1e-3, (difference.mean(), difference.max())


def test_a_recording_shorter_than_one_stft_window_gives_one_frame():
    audio = tones(0.03, 22050)
    frames = np.concatenate(list(LogMelStream(audio, 22050)))
    np.testing.assert_allclose(frames, extract_logmel(audio, 22050), atol=1e-4)
    assert frames.shape == (1, 64)


# --------------------------------------------------------------------------- the Tagger's rules
def test_a_ten_second_clip_gives_exactly_the_model_outputs(sed_ckpt):
    audio = tones(10.0, 44100, seed=3)
    result = Tagger.from_checkpoint(sed_ckpt).tag(audio, sample_rate=44100)
    features = pad_or_truncate(extract_logmel_batch([audio], 44100)[0])
    clip, frame = reference_outputs(sed_ckpt, features[None])
    np.testing.assert_allclose(result.clipwise, clip[0], atol=2e-6)
    np.testing.assert_allclose(result.framewise, frame[0], atol=2e-6)
    np.testing.assert_allclose(result.frame_times, np.arange(240) * FRAME_STEP_SEC)
    assert result.duration == 10.0 and result.sample_rate == 44100 and result.classes == DCASE2017_CLASSES
    on = at_decisions(result.clipwise[None].astype(np.float64))[0]
    assert {label for label, _ in result.tags} == {DCASE2017_CLASSES[k] for k in np.flatnonzero(on)}
    assert [p for _, p in result.tags] == sorted((p for _, p in result.tags), reverse=True)
    assert result.events == detect_events(result.framewise, DCASE2017_CLASSES)


def test_a_short_clip_is_zero_padded_in_the_log_domain_before_scaling(sed_ckpt):
    audio = tones(4.0, 16000, seed=4)
    result = Tagger.from_checkpoint(sed_ckpt).tag(audio, sample_rate=16000)
    frames = extract_logmel(audio, 16000).shape[0]
    clip, frame = reference_outputs(sed_ckpt, pad_or_truncate(extract_logmel_batch([audio], 16000)[0])[None])
    np.testing.assert_allclose(result.clipwise, clip[0], atol=2e-6)
    np.testing.assert_allclose(result.framewise, frame[0, :frames], atol=2e-6)  # real frames only
    assert result.framewise.shape[0] == frames == 95
    assert all(0 <= e.onset <= e.offset < 4.0 for e in result.events)


def test_long_recordings_are_windowed_stitched_by_mean_and_tagged_by_max(sed_ckpt):
    audio = tones(17.0, 16000, seed=5)
    tagger = Tagger.from_checkpoint(sed_ckpt, hop=3.0)
    result = tagger.tag(audio, sample_rate=16000)
    features = extract_logmel_batch([audio], 16000)[0]
    total = features.shape[0]
    hop = round(3.0 / FRAME_STEP_SEC)
    starts = list(range(0, total - 240 + 1, hop))
    assert starts[-1] + 240 < total
    starts.append(total - 240)  # the last window ends with the recording
    clip, frame = reference_outputs(sed_ckpt, np.stack([features[s : s + 240] for s in starts]))
    sums, counts = np.zeros((total, 17)), np.zeros(total)
    for row, start in enumerate(starts):
        sums[start : start + 240] += frame[row]
        counts[start : start + 240] += 1
    np.testing.assert_allclose(result.framewise, sums / counts[:, None], atol=2e-6)
    np.testing.assert_allclose(result.clipwise, clip.max(axis=0), atol=2e-6)
    assert tagger.hop_seconds == pytest.approx(hop * FRAME_STEP_SEC)


def test_thirty_frame_models_place_their_outputs_at_their_real_times(at_ckpt):
    audio = tones(13.0, 16000, seed=6)
    result = Tagger.from_checkpoint(at_ckpt).tag(audio, sample_rate=16000)
    frames = extract_logmel(audio, 16000).shape[0]
    assert result.framewise.shape[0] == math.ceil(frames / 8)
    np.testing.assert_allclose(result.frame_times, (8 * np.arange(result.framewise.shape[0]) + 3.5) * FRAME_STEP_SEC)
    at_input_rate = np.repeat(result.framewise, 8, axis=0)[:frames]
    assert result.events == detect_events(at_input_rate, DCASE2017_CLASSES)
    # a 10-s clip: the model's own 30 outputs
    clip_audio = tones(10.0, 16000, seed=7)
    ten = Tagger.from_checkpoint(at_ckpt).tag(clip_audio, sample_rate=16000)
    clip, frame = reference_outputs(at_ckpt, extract_logmel_batch([clip_audio], 16000)[0][None])
    np.testing.assert_allclose(ten.framewise, frame[0], atol=2e-6)
    np.testing.assert_allclose(ten.clipwise, clip[0], atol=2e-6)


def test_fusion_averages_checkpoints_on_the_finest_grid(sed_ckpt, at_ckpt, tmp_path):
    audio = tones(10.0, 16000, seed=8)
    sed, at = (Tagger.from_checkpoint(c).tag(audio, sample_rate=16000) for c in (sed_ckpt, at_ckpt))
    (tmp_path / "lists").mkdir()
    listed = write_model_list(tmp_path / "lists" / "both.json", [sed_ckpt, at_ckpt], "both")
    assert expand_models([listed]) == [tmp_path / "lists" / Path(os.path.relpath(p, tmp_path / "lists"))
                                       for p in (sed_ckpt, at_ckpt)]
    fused = Tagger.from_checkpoint(listed).tag(audio, sample_rate=16000)
    np.testing.assert_allclose(fused.clipwise, (sed.clipwise + at.clipwise) / 2, atol=1e-6)
    np.testing.assert_allclose(fused.framewise, (sed.framewise + np.repeat(at.framewise, 8, axis=0)) / 2, atol=1e-6)
    np.testing.assert_allclose(fused.frame_times, sed.frame_times)


def test_bad_models_and_options_are_refused(tmp_path, sed_ckpt):
    no_scaler = small_checkpoint(tmp_path / "no_scaler.pt", scaler=False)
    with pytest.raises(FileFormatError, match="no_scaler.pt: the checkpoint has no scaler"):
        Tagger.from_checkpoint(no_scaler)
    model = devinet.DeviNet.from_preset("cvssp_crnn_sed", **SMALL)
    devinet.save(model, tmp_path / "bare.pt")
    with pytest.raises(FileFormatError, match="bare.pt: the checkpoint does not describe its preprocessing"):
        Tagger.from_checkpoint(tmp_path / "bare.pt")
    other = devinet.load(sed_ckpt)
    other.preprocessing = Preprocessing(classes=tuple(f"c{k}" for k in range(17)), scaler=other.preprocessing.scaler)
    devinet.save(other, tmp_path / "other.pt")
    with pytest.raises(FileFormatError, match="other.pt: its classes differ"):
        Tagger.from_checkpoint([sed_ckpt, tmp_path / "other.pt"])
    for options, error in (({"hop": 11.0}, ConfigError), ({"hop": 0}, ConfigError), ({"threshold": 1.5}, InputError),
                           ({"batch_size": 0}, ConfigError)):
        with pytest.raises(error):
            Tagger.from_checkpoint(sed_ckpt, **options)
    (tmp_path / "list.json").write_text(json.dumps({"format": "devinet-model-list", "format_version": 1,
                                                    "checkpoints": []}))
    with pytest.raises(FileFormatError, match="non-empty list"):
        read_model_list(tmp_path / "list.json")
    with pytest.raises(InputError, match="sample_rate is required"):
        Tagger.from_checkpoint(sed_ckpt).tag(np.zeros(16000))


# --------------------------------------------------------------------------- devinet tag
def test_submission_rows_and_names(tmp_path):
    from devinet.submission import escape_name, format_seconds, write_submission

    name = escape_name("odd\tname\n.wav")
    assert name == "odd\\tname\\n.wav"
    write_submission(tmp_path / "s.tsv", [(name, 0.0, 9.918500001, "Car"), ("b.wav", "30.000", "40.000", "Bus")],
                     listed=[name, "b.wav", "c.wav"])
    assert (tmp_path / "s.tsv").read_text().splitlines() == [f"{name}\t0\t9.9185\tCar", "b.wav\t30.000\t40.000\tBus",
                                                             "c.wav"]
    assert format_seconds(0.498) == "0.498" and format_seconds(-0.0) == "0"
    with pytest.raises(InputError, match="without TAB"):
        write_submission(tmp_path / "bad.tsv", [("a\tb", 0.0, 1.0, "Car")])
    assert not (tmp_path / "bad.tsv").exists()


def _write_mixed_files(folder: Path) -> dict[str, float]:
    """A 90-s file of nine clips, a stereo 48-kHz file, a 0.5-s file, an mp3 and a broken file."""
    folder.mkdir()
    clips = [tones(10.0, 44100, seed=k) for k in range(9)]
    soundfile.write(folder / "long90.flac", np.concatenate(clips), 44100)
    soundfile.write(folder / "stereo48k.wav", tones(12.5, 48000, seed=11, channels=2), 48000)
    soundfile.write(folder / "half.ogg", tones(0.5, 16000, seed=12), 16000)
    soundfile.write(folder / "clip.mp3", tones(3.0, 22050, seed=13), 22050)
    (folder / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage")
    (folder / "notes.txt").write_text("not audio: ignored in folders")
    return {"long90.flac": 90.0, "stereo48k.wav": 12.5, "half.ogg": 0.5, "clip.mp3": 3.0}


@pytest.mark.slow
def test_devinet_tag_on_mixed_files_loses_nothing_but_the_broken_one(tmp_path, sed_ckpt, at_ckpt):
    durations = _write_mixed_files(tmp_path / "audio")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "devinet", "tag", str(tmp_path / "audio"), "--model", str(sed_ckpt),
                           "--model", str(at_ckpt), "--out", str(out), "--plot", "--no-progress"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 1, done.stderr
    broken = str(tmp_path / "audio" / "broken.wav")
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith(f"devinet tag: error: {broken}: ")]
    assert len(done.stderr.strip().splitlines()) == 1
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"files", "model"}
    files = results["files"]
    assert sorted(files) == sorted(str(tmp_path / "audio" / name) for name in [*durations, "broken.wav"])
    assert files[broken]["error"] and files[broken]["duration"] is None
    assert files[broken]["tags"] == [] and files[broken]["events"] == []
    for name, seconds in durations.items():
        entry = files[str(tmp_path / "audio" / name)]
        assert set(entry) == {"duration", "tags", "events", "error"} and entry["error"] is None
        # mp3 decoders may add or drop a frame of padding (1152 samples)
        assert entry["duration"] == pytest.approx(seconds, abs=0.06 if name.endswith(".mp3") else 1e-9), name
        assert entry["tags"] and all(set(t) == {"label", "probability"} for t in entry["tags"])
        assert all(0 <= e["onset"] <= e["offset"] < entry["duration"] for e in entry["events"]), name
        assert (out / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert results["model"]["checkpoints"] == [str(sed_ckpt), str(at_ckpt)] and results["model"]["fusion"]
    tags = [line.split("\t") for line in (out / "tags.tsv").read_text().splitlines()]
    events = [line.split("\t") for line in (out / "events.tsv").read_text().splitlines()]
    for name in durations:
        path = str(tmp_path / "audio" / name)
        ours = [row for row in tags if row[0] == path]
        assert [row[3] for row in ours] == [t["label"] for t in files[path]["tags"]]
        assert all(float(row[1]) == 0 and float(row[2]) == pytest.approx(files[path]["duration"], abs=1e-6)
                   for row in ours)
        rows = [row for row in events if row[0] == path]
        expected = files[path]["events"]
        assert (rows == [[path]]) if not expected else (
            [(float(r[1]), float(r[2]), r[3]) for r in rows] == [(e["onset"], e["offset"], e["label"]) for e in expected])
    assert not any(row[0] == broken for row in tags + events)


def test_devinet_tag_errors(tmp_path, sed_ckpt, capsys):
    assert main(["tag", str(tmp_path), "--model", str(sed_ckpt), "--out", str(tmp_path / "out")]) == 1
    assert "no audio file in" in capsys.readouterr().err
    soundfile.write(tmp_path / "a.wav", tones(1.0, 16000), 16000)
    assert main(["tag", str(tmp_path / "a.wav"), "--model", str(sed_ckpt), "--out", str(tmp_path / "o"),
                 "--hop", "20"]) == 1
    assert "longer than a window" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
    (tmp_path / "sub").mkdir()
    soundfile.write(tmp_path / "sub" / "b.flac", tones(1.0, 16000), 16000)
    assert main(["tag", str(tmp_path), "--recursive", "--model", str(sed_ckpt), "--out", str(tmp_path / "o"),
                 "--no-progress", "--threshold", "0.9"]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert sorted(results["files"]) == [str(tmp_path / "a.wav"), str(tmp_path / "sub" / "b.flac")]
    assert results["model"]["postprocessing"]["threshold"] == 0.9


# --------------------------------------------------------------------------- must show
@pytest.mark.slow
def test_converted_genuine_model_on_real_clips_matches_the_original_features(reference_dir, tmp_path):
    """k208_theano_crnn_sed.h5 converted with a scaler fitted on the original features (given as
    .npz, JSON and the original's Python 2 pickle), then ``devinet tag`` on the 12 real clips:
    the clip and frame probabilities of the model on the scaled ORIGINAL features, within the
    feature difference (ours vs the original pipeline's: 6.1e-4 max, 4.8e-7 median in the log
    domain). Measured: 1.2e-7 at most for clip and frame probabilities (1 ulp); for scale, a
    one-frame shift of the features changes frame probabilities by 5e-3, no scaling by 0.2."""
    original = np.load(reference_dir / "real_clips" / "original_features" / "cvssp_logmel.npz")
    packed = np.stack([pad_or_truncate(original[key]) for key in sorted(original.files)])
    scaler = Scaler.fit(packed)
    scaler.save(tmp_path / "scaler.npz")
    scaler.save(tmp_path / "scaler.json")
    (tmp_path / "scaler.p").write_bytes(py2_scaler_pickle(scaler.mean, scaler.std ** 2, scaler.count))
    checkpoints = []
    for name in ("scaler.npz", "scaler.json", "scaler.p"):
        checkpoints.append(tmp_path / f"sed_{name}.pt")
        assert main(["convert", str(reference_dir / "keras208" / "k208_theano_crnn_sed.h5"), str(checkpoints[-1]),
                     "--scaler", str(tmp_path / name)]) == 0
    described = [devinet.load(c).preprocessing for c in checkpoints]
    assert described[0].classes == DCASE2017_CLASSES
    np.testing.assert_allclose(described[2].scaler.std, described[0].scaler.std, rtol=1e-15)
    assert described[0] == described[1]
    wav = reference_dir / "real_clips" / "wav"
    assert main(["tag", str(wav), "--model", str(checkpoints[2]), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    files = json.loads((tmp_path / "out" / "results.json").read_text())["files"]
    assert len(files) == 12
    clip, frame = reference_outputs(checkpoints[0], packed)
    tagger = Tagger.from_checkpoint(checkpoints[2])
    for row, key in enumerate(sorted(original.files)):
        path = str(wav / f"{key}.wav")
        result = tagger.tag(path)
        frames = original[key].shape[0]
        np.testing.assert_allclose(result.clipwise, clip[row], atol=1e-6, err_msg=key)
        np.testing.assert_allclose(result.framewise, frame[row, :frames], atol=1e-6, err_msg=key)
        on = at_decisions(clip[row][None].astype(np.float64))[0]
        assert {t["label"] for t in files[path]["tags"]} == {DCASE2017_CLASSES[k] for k in np.flatnonzero(on)}
        expected = detect_events(frame[row, :frames], DCASE2017_CLASSES)
        assert [(e["onset"], e["offset"], e["label"]) for e in files[path]["events"]] == [
            (pytest.approx(e.onset), pytest.approx(e.offset), e.label) for e in expected]


@pytest.mark.slow
@pytest.mark.parametrize("system", ["gated_crnn_attention", "fusion"])
def test_devinet_tag_agrees_with_a_reproduce_run(tiny_reproduction, tmp_path, system):
    """The model list reproduce writes, run by ``devinet tag`` on the run's testing clips, gives
    the run's own stored predictions (written with 6 decimals: 5e-7; measured 5.6e-7 at most)."""
    from experiments import evaluation
    from experiments.meta import clip_key

    lists = tiny_reproduction / "models" / "seed2017"  # the first training seed's systems
    assert sorted(p.name for p in lists.glob("*.json")) == [
        "crnn_baseline.json", "crnn_ungated_matched.json", "fusion.json", "gated_crnn_attention.json",
        "gated_crnn_mean.json"]
    assert sorted(p.name for p in (tiny_reproduction / "models").iterdir()) == ["seed2017", "seed2018"]
    assert len(read_model_list(lists / "fusion.json")) == 6
    work = tiny_reproduction / "work"
    audio = work / "data" / "synthetic-tiny-seed2017" / "audio" / "test"
    stored = work / "predictions" / "synthetic-tiny-seed2017" / "tiny-seed2017" / system
    keys, clip = evaluation.read_at_probabilities(stored / "at_prob_mat.csv.gz")
    frame_keys, frames = evaluation.read_sed_probabilities(stored / "sed_prob_mat_list.csv.gz")
    assert frame_keys == keys
    out = tmp_path / "out"
    assert main(["tag", str(audio), "--model", str(lists / f"{system}.json"), "--out", str(out), "--no-progress"]) == 0
    files = {clip_key(path): entry for path, entry in json.loads((out / "results.json").read_text())["files"].items()}
    assert sorted(files) == sorted(keys)
    tagger = Tagger.from_checkpoint(lists / f"{system}.json")
    probabilities = {clip_key(path): result for path, result in tagger.tag_files(sorted(audio.glob("*.wav"))[:10])}
    for key, clip_probs, frame_probs in zip(keys, clip, frames):
        if key in probabilities:  # probabilities of ten clips (results.json has the decisions of all)
            np.testing.assert_allclose(probabilities[key].clipwise, clip_probs, atol=2e-6, err_msg=key)
            np.testing.assert_allclose(probabilities[key].framewise, frame_probs, atol=2e-6, err_msg=key)
        on = at_decisions(clip_probs[None])[0]
        assert {t["label"] for t in files[key]["tags"]} == {DCASE2017_CLASSES[k] for k in np.flatnonzero(on)}
        expected = evaluation.frames_to_events(frame_probs, key)
        assert [(e["onset"], e["offset"], e["label"]) for e in files[key]["events"]] == [
            (pytest.approx(e.onset), pytest.approx(e.offset), e.label) for e in expected]
    # tags.tsv is a submission devinet evaluate reads (DCASE clip names with a folder)
    assert set(evaluation.read_at_submission(out / "tags.tsv")) == set(keys)


@pytest.mark.slow
def test_tagging_memory_does_not_grow_with_duration(tmp_path):
    """Peak resident memory of tagging 3 and 15 minutes of 22.05-kHz FLAC (resampled in 60-s
    blocks), each in a fresh process (VmHWM): twelve more minutes of audio (127 MB as
    float64) must not show; what grows is the outputs (frame probabilities, 1 MB). Measured
    (small model): 543, 539, 542 and 542 MiB for 3, 6, 12 and 24 minutes; a file of one or two
    blocks stays below (504 MiB for 2 minutes). docs/benchmarks.md has the one-hour figure of
    the full-size model."""
    from experiments.bench.tagging import peak_memory_mb, write_test_audio

    checkpoint = small_checkpoint(tmp_path / "sed.pt")
    peaks = {}
    for minutes in (3, 15):
        audio = write_test_audio(tmp_path / f"{minutes}.flac", minutes * 60.0, rate=22050)
        peaks[minutes] = peak_memory_mb(audio, checkpoint)
        assert peaks[minutes]["duration_s"] == pytest.approx(minutes * 60.0)
        audio.unlink()
    assert peaks[15]["peak_rss_mb"] - peaks[3]["peak_rss_mb"] < 25, peaks
    assert peaks[15]["peak_rss_mb"] < 1500, peaks

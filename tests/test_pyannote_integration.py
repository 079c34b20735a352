"""The pyannote.audio integration: geometry, the old port's config.yml, the import guard, and training.

Without pyannote (always run): the sample-level geometry against the real front end and
backbone, the legacy config reader, and the import guard (pyannote missing, broken or too old).

With pyannote.audio 4 (opt-in, marker ``pyannote``): DeviNetSegmentation trained for a few
steps on VoiceActivityDetection and MultiLabelSegmentation over a small protocol made here,
saved, reloaded with ``Model.from_pretrained`` and run through ``Inference``. Run them with

    bash scripts/install_pyannote_cpu.sh        # the environment, at .venv-pyannote (docs/pyannote.md)
    DEVINET_TEST_PYANNOTE=1 .venv-pyannote/bin/python -m pytest tests/test_pyannote_integration.py

Telemetry is switched off for them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import math
import os
import subprocess
import sys
import types
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from devinet.config import PYANNOTE_KEYS, DeviNetConfig, cvssp_crnn_at, pyannote_devinet
from devinet.errors import ConfigError, FileFormatError, InputError, MissingDependencyError
from devinet.features import HOP, N_FFT, SAMPLE_RATE, LogMel
from devinet.features import num_frames as mel_num_frames
from devinet.integrations.geometry import WaveformGeometry
from devinet.integrations.legacy_config import SEED_CONFIG, read_legacy_config, read_legacy_params
from devinet.model import DeviNet

REPO_ROOT = Path(__file__).resolve().parents[1]


def geometry(config: DeviNetConfig) -> WaveformGeometry:
    return WaveformGeometry(config, window=N_FFT, hop=HOP, sample_rate=SAMPLE_RATE)


def tiny(**keys) -> DeviNetConfig:
    """A pyannote_devinet config with few channels: same geometry, fast forward passes."""
    return pyannote_devinet(**{"conv_channels": 4, "recurrent": [4], **keys})


# Geometries under test: output step of 1, 4 and 8 log-mel frames, and the CVSSP crnn_at model.
GEOMETRY_CONFIGS = {
    "pyannote_default": tiny(),
    "time_pooled_x4": tiny(layers_pooling=[[2, 2], [2, 2], [1, 2], [1, 2]]),
    "time_pooled_x8": tiny(conv_blocks=3, layers_pooling=[[2, 2], [2, 2], [2, 2]], final_pooling=[1, 8]),
    "cvssp_crnn_at": cvssp_crnn_at(conv_channels=4, rnn_hidden=(4,)),
}


# ---------------------------------------------------------------------------------------------
# Geometry (no pyannote)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GEOMETRY_CONFIGS))
def test_num_frames_equals_real_output_length(name, rng):
    """geometry.num_frames(n) is the length of LogMel + DeviNet's output, over many lengths n."""
    config = GEOMETRY_CONFIGS[name]
    geo = geometry(config)
    logmel, model = LogMel(), DeviNet(config).eval()
    # Edges: the shortest valid input, one hop either side of a frame boundary, then random lengths.
    lengths = {geo.min_num_samples, geo.min_num_samples + 1, geo.min_num_samples + geo.step - 1,
               geo.min_num_samples + geo.step, 2 * SAMPLE_RATE, 10 * SAMPLE_RATE}
    lengths |= set(int(n) for n in rng.integers(geo.min_num_samples, int(2.5 * SAMPLE_RATE), size=10))
    with torch.no_grad():
        for n in sorted(lengths):
            waveform = torch.from_numpy(rng.standard_normal((1, n)).astype(np.float32))
            mel = logmel(waveform)
            assert mel.shape[1] == geo.num_mel_frames(n) == mel_num_frames(n), n
            out = model.forward_features(mel)
            assert out.shape[1] == geo.num_frames(n) >= 1, (name, n)


@pytest.mark.parametrize("name", sorted(GEOMETRY_CONFIGS))
def test_too_short_input_gives_no_frame(name):
    config = GEOMETRY_CONFIGS[name]
    geo = geometry(config)
    assert geo.num_frames(geo.min_num_samples - 1) == 0
    assert geo.num_frames(geo.min_num_samples) == 1
    with pytest.raises(InputError):
        DeviNet(config).forward_features(LogMel()(torch.zeros(1, geo.min_num_samples - 1)))


def test_crnn_at_geometry_matches_the_paper():
    """10 s at 16 kHz: 240 log-mel frames of 41.5 ms; crnn_at pools time by 8 down to 30 frames."""
    geo = geometry(GEOMETRY_CONFIGS["cvssp_crnn_at"])
    assert geo.num_mel_frames(10 * SAMPLE_RATE) == 240
    assert geo.num_frames(10 * SAMPLE_RATE) == 30
    assert geo.step == 8 * 664
    assert geometry(GEOMETRY_CONFIGS["pyannote_default"]).num_frames(10 * SAMPLE_RATE) == 240


@pytest.mark.parametrize("name", sorted(GEOMETRY_CONFIGS))
def test_receptive_field_is_the_span_of_the_pooled_logmel_frames(name):
    """Output frame f spans the samples read by its log-mel frames [f*S, (f+1)*S), and frame 0
    starts at sample 0: where pyannote puts its training targets and aggregated scores."""
    config = GEOMETRY_CONFIGS[name]
    geo = geometry(config)
    stride = config.time_stride
    size = geo.receptive_field_size(1)
    assert size == (stride - 1) * HOP + N_FFT
    assert geo.receptive_field_size(2) - size == geo.step == stride * HOP
    assert geo.receptive_field_size(5) == 4 * geo.step + size
    for frame in (0, 1, 7, 100):
        first = frame * stride * HOP  # first sample of log-mel frame f*S
        last = ((frame + 1) * stride - 1) * HOP + N_FFT - 1  # last sample of log-mel frame (f+1)*S-1
        assert geo.receptive_field_center(frame) == pytest.approx((first + last) / 2)
        # pyannote.audio's Model.receptive_field: start = center(0) - (size - 1) / 2
        assert geo.receptive_field_center(frame) - (size - 1) / 2 == pytest.approx(frame * geo.step)


def test_logmel_frame_reads_exactly_its_window(rng):
    """The front end's part of the geometry: log-mel frame m depends on samples [m*hop, m*hop+1024)."""
    logmel = LogMel().double()
    waveform = torch.from_numpy(rng.standard_normal((1, N_FFT + 5 * HOP))).requires_grad_(True)
    mel = logmel(waveform)
    for m in range(mel.shape[1]):
        (grad,) = torch.autograd.grad(mel[0, m].sum(), waveform, retain_graph=True)
        support = torch.nonzero(grad[0]).flatten()
        assert (int(support.min()), int(support.max())) == (m * HOP, m * HOP + N_FFT - 1)


def test_output_frame_reads_exactly_its_pooled_logmel_frames(rng):
    """The backbone's part: with 1x1 convolutions and no GRU, output frame f depends on log-mel
    frames [f*S, (f+1)*S) and nothing else (the 3x3 convolutions and the GRU widen what a frame
    depends on, not where it is)."""
    config = DeviNetConfig(conv_groups=(1, 1), conv_channels=16, pools=((2, 8), (2, 8)), kernel_size=1,
                           final_conv_channels=0, final_pool=(1, 1), rnn_hidden=(), num_classes=3)
    model = DeviNet(config).double().eval()
    # Max pooling passes gradient to one frame per feature: each input shows a subset of the
    # frames; a few inputs together show all of them.
    seen: dict[int, set[int]] = {f: set() for f in range(6)}
    for _ in range(4):
        mel = torch.from_numpy(rng.standard_normal((1, 4 * 6 + 3, 64))).requires_grad_(True)
        out = model.forward_features(mel)
        assert out.shape[1] == config.num_frames(mel.shape[1]) == 6
        for f in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[0, f].sum(), mel, retain_graph=True)
            frames = set(torch.nonzero(grad[0].abs().sum(-1)).flatten().tolist())
            assert frames <= set(range(4 * f, 4 * f + 4)), (f, frames)
            seen[f] |= frames
    assert all(seen[f] == set(range(4 * f, 4 * f + 4)) for f in seen), seen


def test_geometry_refuses_bad_front_end():
    with pytest.raises(ConfigError, match="hop"):
        WaveformGeometry(tiny(), window=N_FFT, hop=0, sample_rate=SAMPLE_RATE)
    with pytest.raises(ValueError, match="num_frames"):
        geometry(tiny()).receptive_field_size(0)


# ---------------------------------------------------------------------------------------------
# The older port's config.yml (no pyannote)

ARCHITECTURE_YML = """\
task:
  name: SpeechActivityDetection
  params:
    duration: 2.0
feature_extraction:
  name: RawAudio
  params:
    sample_rate: 16000
architecture:
  name: pyannote.models.DeviNet
  params:
    conv_blocks: 3
    conv_channels: 128
    layers_pooling: [2, 2, 4]
    final_pooling: 4
    dropout: 0.3
    recurrent: [128]
    gated_rnn: True
    linear_layers: [32, 32]
    activation_type: tanh
scheduler:
  name: ConstantScheduler
  params:
    learning_rate: 0.01
"""

# The sample of the old port's README, verbatim: the model under feature_extraction, and four
# poolings for three block groups.
README_YML = """\
feature_extraction:
  name: pyannote.models.DeviNet
  params:
    conv_blocks: 3
    conv_channels: 128
    layers_pooling: [2, 2, 2 ,2]
    final_pooling: 4
    dropout: 0.3
    recurrent: [128]
    gated_rnn: True
    linear_layers: [32, 32]
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_architecture_section(tmp_path):
    path = write(tmp_path, ARCHITECTURE_YML)
    params = read_legacy_params(path)
    assert params == {"conv_blocks": 3, "conv_channels": 128, "layers_pooling": [2, 2, 4], "final_pooling": 4,
                      "dropout": 0.3, "recurrent": [128], "gated_rnn": True, "linear_layers": [32, 32]}
    config = read_legacy_config(path, num_classes=2)
    assert config.name == "pyannote_devinet"
    assert config.conv_groups == (2, 2, 2)
    assert config.pools == ((1, 2), (1, 2), (1, 4))
    assert config.final_pool == (1, 4)
    assert (config.conv_channels, config.rnn_hidden, config.linear_layers) == (128, (128,), (32, 32))
    assert config.dropout == 0.3 and config.gated_rnn and config.num_classes == 2
    assert DeviNet(config).embedding_size == 32


def test_seed_config_is_the_readme_sample_with_one_group_per_pooling():
    """SEED_CONFIG (DeviNetSegmentation's defaults) is the README's block, conv_blocks 3 -> 4."""
    import yaml

    readme_params = yaml.safe_load(README_YML)["feature_extraction"]["params"]
    assert SEED_CONFIG == {**readme_params, "conv_blocks": 4}
    assert set(SEED_CONFIG) == set(PYANNOTE_KEYS)
    config = pyannote_devinet(**SEED_CONFIG)
    assert (config.dropout, config.linear_layers) == (0.3, (32, 32))
    assert (config.conv_channels, config.rnn_hidden) == (128, (128,))
    assert config.conv_groups == (2, 2, 2, 2) and config.gated_rnn and config.time_stride == 1


def test_absent_or_null_params_take_the_seed_config(tmp_path):
    assert read_legacy_params(write(tmp_path, "architecture:\n  name: pyannote.models.DeviNet\n")) == SEED_CONFIG
    path = write(tmp_path, "architecture:\n  name: DeviNet\n  params:\n    recurrent:\n    dropout: 0.1\n")
    assert read_legacy_params(path) == {**SEED_CONFIG, "dropout": 0.1}


def test_readme_placement_is_read_with_a_one_line_notice(tmp_path, caplog):
    """The README's block under feature_extraction:, with conv_blocks 4, loads; one notice says where it was."""
    path = write(tmp_path, README_YML.replace("conv_blocks: 3", "conv_blocks: 4"))
    with caplog.at_level("WARNING", logger="devinet.integrations.legacy_config"):
        params = read_legacy_params(path)
    assert params == SEED_CONFIG
    assert read_legacy_config(path, num_classes=4) == pyannote_devinet(num_classes=4, **SEED_CONFIG)
    notices = [record.getMessage() for record in caplog.records]
    assert len(notices) == 2  # one per read
    assert notices[0].startswith(f"{path}: ") and "'feature_extraction:'" in notices[0]
    assert "\n" not in notices[0]


def test_readme_placement_notice_reaches_stderr_as_one_line(tmp_path):
    """Without any logging set up (a plain script), the notice is one line on stderr."""
    path = write(tmp_path, README_YML.replace("conv_blocks: 3", "conv_blocks: 4"))
    code = ("import sys; from devinet.integrations.legacy_config import read_legacy_params; "
            "read_legacy_params(sys.argv[1])")
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: DeviNet's parameters read from 'feature_extraction:'")


@pytest.mark.parametrize("placement", ["feature_extraction:", "architecture:"])
def test_old_sample_pooling_mismatch_is_refused_in_one_line(tmp_path, caplog, placement):
    """The README's sample verbatim (three conv_blocks, four poolings) is refused wherever it sits."""
    path = write(tmp_path, README_YML.replace("feature_extraction:", placement))
    with pytest.raises(ConfigError) as info:
        read_legacy_config(path)
    assert str(info.value) == (f"{path}: conv_blocks=3 but layers_pooling has 4 values [2, 2, 2, 2]: "
                               "give one pooling per block group (e.g. conv_blocks: 4)")
    assert not caplog.records  # no placement notice for a refused file


def test_two_model_blocks_are_refused(tmp_path):
    text = README_YML.replace("conv_blocks: 3", "conv_blocks: 4") + "architecture:\n  name: pyannote.models.DeviNet\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"'feature_extraction:' names DeviNet and 'architecture:' names "
                                          r"'pyannote.models.DeviNet': keep one model block") as info:
        read_legacy_params(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "params, pattern",
    [
        ("conv_blokcs: 3", r"unknown DeviNet parameters conv_blokcs \(known: conv_blocks"),
        ("dropout: 1.5", r"dropout must be in \[0, 1\)"),
        ("conv_channels: many", r"conv_channels must be a positive integer"),
        ("recurrent: 128", r"rnn_hidden must be a list"),
        ("layers_pooling: [2, 2, 2, 2]\n    final_pooling: 2", r"n_mels=64 becomes 2"),
        ("activation_type: sigmoid", r"activation_type must be 'tanh'"),
        ("gru_cells: 128", r"gru_cells is replaced by recurrent"),
        ("n_classes: 4", r"n_classes is replaced by nothing: the task's classes"),
    ],
)
def test_bad_parameters_name_the_file(tmp_path, params, pattern):
    path = write(tmp_path, f"architecture:\n  name: pyannote.models.DeviNet\n  params:\n    {params}\n")
    with pytest.raises(ConfigError, match=pattern) as info:
        read_legacy_params(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("architecure:\n  name: DeviNet\n", r"unknown top-level sections architecure"),
        ("task:\n  name: SpeechActivityDetection\n", r"no 'architecture:' section"),
        ("architecture:\n  name: pyannote.audio.models.PyanNet\n",
         r"architecture name 'pyannote.audio.models.PyanNet' is not DeviNet"),
        ("feature_extraction:\n  name: RawAudio\n", r"no 'architecture:' section"),
        ("feature_extraction:\n  name: DeviNet\n  parms: {}\n", r"unknown keys in 'feature_extraction:': parms"),
        ("feature_extraction:\n  name: DeviNet\n  params: [1]\n", r"'feature_extraction: params:' must be a mapping"),
        ("architecture:\n  name: DeviNet\n  parms: {}\n", r"unknown keys in 'architecture:': parms"),
        ("architecture: DeviNet\n", r"'architecture:' must be a mapping"),
        ("architecture:\n  name: DeviNet\n  params: [1, 2]\n", r"'architecture: params:' must be a mapping"),
        ("- architecture\n", r"expected a mapping of sections"),
    ],
)
def test_bad_structure_names_the_file(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        read_legacy_params(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unreadable_files(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        read_legacy_params(tmp_path / "missing.yml")
    broken = write(tmp_path, "architecture:\n  name: [DeviNet\n")
    with pytest.raises(FileFormatError, match="not valid YAML") as info:
        read_legacy_params(broken)
    assert str(info.value).startswith(str(broken)) and "\n" not in str(info.value)


def test_yaml_tags_are_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = write(tmp_path, f"architecture: !!python/object/apply:os.mkdir ['{marker}']\n")
    with pytest.raises(FileFormatError, match="not valid YAML"):
        read_legacy_params(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Import guard (no pyannote needed: failures are simulated)

GUARDED = "devinet.integrations.pyannote"


class _FailingFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import pyannote`` fail the way a CUDA torchaudio fails beside a CPU-only torch."""

    def find_spec(self, name, path=None, target=None):
        if name == "pyannote" or name.startswith("pyannote."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("Could not load this library: /venv/site-packages/torchaudio/lib/_torchaudio.abi3.so\n"
                      "(more lines of the original error)")


@pytest.fixture()
def fresh_import(monkeypatch):
    """Import the guarded module anew with pyannote replaced as the test sets it up; restored afterwards."""
    for name in [n for n in sys.modules if n == "pyannote" or n.startswith("pyannote.")] + [GUARDED]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import devinet.integrations as package

    monkeypatch.delattr(package, "pyannote", raising=False)
    return lambda: importlib.import_module(GUARDED)


def _check_guard_error(error: BaseException) -> str:
    assert isinstance(error, MissingDependencyError) and isinstance(error, ImportError)
    message = str(error)
    assert "\n" not in message
    assert "from a devinet clone (devinet is not on PyPI): bash scripts/install_pyannote_cpu.sh" in message
    assert "pip install torch==2.13.0 -e '.[pyannote]'" in message
    assert "'devinet[pyannote]'" not in message
    assert "pyannote.audio>=4.0.4,<5" in message
    return message


def test_guard_when_pyannote_is_missing(fresh_import, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyannote", None)  # makes `import pyannote` raise ModuleNotFoundError
    with pytest.raises(ImportError) as info:
        fresh_import()
    message = _check_guard_error(info.value)
    assert "which is not installed (ModuleNotFoundError" in message


def test_guard_when_pyannote_fails_with_another_error(fresh_import, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_FailingFinder()] + sys.meta_path)
    with pytest.raises(ImportError) as info:
        fresh_import()
    message = _check_guard_error(info.value)
    assert "failed to import (OSError: Could not load this library: /venv/site-packages/torchaudio" in message
    assert "more lines" not in message
    assert "CPU-only" in message


def test_guard_when_pyannote_is_too_old(fresh_import, monkeypatch):
    package = types.ModuleType("pyannote")
    package.__path__ = []
    audio = types.ModuleType("pyannote.audio")
    audio.__version__ = "3.3.2"
    audio.Model = object
    package.audio = audio
    monkeypatch.setitem(sys.modules, "pyannote", package)
    monkeypatch.setitem(sys.modules, "pyannote.audio", audio)
    with pytest.raises(ImportError) as info:
        fresh_import()
    assert "found pyannote.audio 3.3.2" in _check_guard_error(info.value)


def test_integration_helpers_import_no_toolkit():
    code = ("import sys, devinet, devinet.integrations, devinet.integrations.geometry, "
            "devinet.integrations.legacy_config; "
            "bad = [m for m in ('pyannote', 'pyannote.audio', 'lightning', 'tensorflow', 'yaml') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# The install script (its full run is too long for a test: docs/pyannote.md gives the measured one)

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_pyannote_cpu.sh"


def test_install_script_usage_and_extra_pin():
    result = subprocess.run(["bash", str(INSTALL_SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("Install devinet with pyannote.audio 4")
    assert "bash scripts/install_pyannote_cpu.sh [VENV_DIR]" in result.stdout
    result = subprocess.run(["bash", str(INSTALL_SCRIPT), "one", "two"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "[VENV_DIR]" in result.stderr and not result.stdout
    # the decoder pin the script relies on (0.14 and later link CUDA libraries)
    extra = (REPO_ROOT / "setup.cfg").read_text().split("\npyannote =\n", 1)[1].split("\n# ", 1)[0]
    assert "torchcodec==0.13.0" in extra.split()


# ---------------------------------------------------------------------------------------------
# With pyannote.audio installed (opt-in)

OPT_IN = os.environ.get("DEVINET_TEST_PYANNOTE") == "1"
CHUNK = 2.0  # seconds per training chunk
FILE_SECONDS = 8.0


@pytest.fixture(scope="module")
def pa():
    """The integration module and the pyannote pieces the tests use, with telemetry off."""
    if not OPT_IN:
        pytest.skip("pyannote.audio tests are opt-in: set DEVINET_TEST_PYANNOTE=1 (setup: docs/pyannote.md)")
    with pytest.MonkeyPatch.context() as patch:
        # pyannote.audio 4 sends usage metrics unless this is false (read at each event).
        patch.setenv("PYANNOTE_METRICS_ENABLED", "false")
        try:
            module = importlib.import_module(GUARDED)
        except ImportError as exc:
            pytest.skip(f"DEVINET_TEST_PYANNOTE=1 but pyannote.audio is not usable: {exc}")
        from lightning import Trainer
        from pyannote.audio import Inference, Model
        from pyannote.audio.tasks import MultiLabelSegmentation, VoiceActivityDetection
        from pyannote.audio.telemetry.metrics import is_metrics_enabled

        assert not is_metrics_enabled()
        yield types.SimpleNamespace(module=module, Model=Model, Inference=Inference, Trainer=Trainer,
                                    VoiceActivityDetection=VoiceActivityDetection,
                                    MultiLabelSegmentation=MultiLabelSegmentation)


def _write_wav(path: Path, signal: np.ndarray) -> None:
    pcm = np.clip(signal * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(pcm.tobytes())


def _synthesize(rng: np.random.Generator, events: list[tuple[str, float, float]]) -> np.ndarray:
    """Background noise plus voiced 'speech' (150 Hz harmonics, 4 Hz syllables) and 'music' (a chord)."""
    n = int(FILE_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    signal = 0.01 * rng.standard_normal(n)
    for label, start, end in events:
        inside = (t >= start) & (t < end)
        if label == "speech":
            voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
            syllables = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
            signal[inside] += 0.2 * (voiced * syllables)[inside]
        else:
            chord = sum(np.sin(2 * np.pi * f * t) for f in (440.0, 554.4, 659.3))
            signal[inside] += 0.1 * chord[inside]
    return signal


@pytest.fixture(scope="module")
def protocol_files(tmp_path_factory):
    """A small protocol's files: (subset, uri, wav path, events)."""
    rng = np.random.default_rng(2017)
    folder = tmp_path_factory.mktemp("protocol")
    layouts = {
        ("train", "a"): [("speech", 0.5, 2.5), ("music", 3.0, 5.5), ("speech", 6.0, 7.5)],
        ("train", "b"): [("music", 0.0, 2.0), ("speech", 2.5, 4.0), ("speech", 5.0, 7.0), ("music", 5.5, 8.0)],
        ("train", "c"): [("speech", 1.0, 3.0), ("speech", 4.5, 6.5)],
        ("development", "d"): [("speech", 0.5, 2.0), ("music", 3.0, 6.0), ("speech", 6.5, 7.5)],
    }
    files = []
    for (subset, uri), events in layouts.items():
        path = folder / f"{uri}.wav"
        _write_wav(path, _synthesize(rng, events))
        files.append((subset, uri, path, events))
    return files


def _protocol(files, labels: tuple[str, ...]):
    """A pyannote.database SegmentationProtocol over ``files`` keeping the events labelled ``labels``."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.database.protocol import SegmentationProtocol

    def iterate(subset):
        # "global" scope: a label means the same class in every file (MultiLabelSegmentation needs it)
        for file_subset, uri, path, events in files:
            if file_subset != subset:
                continue
            annotation = Annotation(uri=uri)
            for i, (label, start, end) in enumerate(events):
                if label in labels:
                    annotation[Segment(start, end), i] = label
            yield {"uri": uri, "database": "DevinetSynthetic", "scope": "global", "audio": str(path),
                   "annotation": annotation, "annotated": Timeline([Segment(0, FILE_SECONDS)], uri=uri),
                   "classes": list(labels)}

    class InMemoryProtocol(SegmentationProtocol):
        name = "DevinetSynthetic.Segmentation.InMemory"  # what pyannote.database's registry would set

        def train_iter(self):
            return iterate("train")

        def development_iter(self):
            return iterate("development")

    return InMemoryProtocol()


def _small_model(pa, task, **keys):
    return pa.module.DeviNetSegmentation(conv_blocks=2, conv_channels=8, layers_pooling=[[2, 4], [1, 4]],
                                         final_pooling=4, recurrent=[16], linear_layers=[8], task=task, **keys)


def _train(pa, task, tmp_path: Path, steps: int = 4, **keys):
    torch.manual_seed(0)
    model = _small_model(pa, task, **keys)
    trainer = pa.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model)
    assert trainer.global_step == steps
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(before[k], v)]
    assert any(k.startswith("backbone.gcnn.0.") for k in changed), "training did not update the backbone"
    assert "standardize.running_mean" in changed, "input statistics were not estimated"
    assert not any(k.startswith("backbone.head.") for k in changed)
    return model, trainer


def _check_targets_align_with_frames(task, model, files, classes: list[str], start: float) -> None:
    """pyannote's frame targets for a chunk of the first training file are 1 exactly at the output
    frames whose centre (receptive_field_center) lies in an event: the geometry puts the labels where
    the model's frames are (frames within half a step of an event boundary may go either way)."""
    sample = task.prepare_chunk(0, start, CHUNK)
    y = np.asarray(sample["y"].data)
    assert y.shape == (model.num_frames(round(CHUNK * SAMPLE_RATE)), len(classes))
    centers = start + np.array([model.receptive_field_center(i) for i in range(y.shape[0])]) / SAMPLE_RATE
    half_step = model.geometry.step / SAMPLE_RATE / 2
    events = files[0][3]
    for k, label in enumerate(classes):
        spans = [(s, e) for name, s, e in events if name == label]
        inside = np.any([(centers > s + half_step) & (centers < e - half_step) for s, e in spans], axis=0)
        outside = np.all([(centers < s - half_step) | (centers > e + half_step) for s, e in spans], axis=0)
        assert inside.any() and outside.any()
        assert np.all(y[inside, k] == 1) and np.all(y[outside, k] == 0), (label, y[:, k])


def _check_saved_model_and_inference(pa, model, trainer, tmp_path: Path, classes: list[str], wav: Path):
    checkpoint = tmp_path / "devinet.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = pa.Model.from_pretrained(checkpoint)
    assert type(loaded).__module__ == GUARDED and type(loaded).__name__ == "DeviNetSegmentation"
    assert list(loaded.specifications.classes) == classes
    assert dict(loaded.hparams)["layers_pooling"] == [[2, 4], [1, 4]]
    assert loaded.devinet_config == model.devinet_config

    # Same weights and statistics: identical scores; output length is num_frames(samples).
    model.eval()
    loaded.eval()
    for seconds in (CHUNK, 1.3, 3.7):
        num_samples = int(seconds * SAMPLE_RATE)
        chunk = torch.randn(2, 1, num_samples, generator=torch.Generator().manual_seed(1)) * 0.1
        with torch.no_grad():
            expected, actual = model(chunk), loaded(chunk)
        assert actual.shape == (2, loaded.num_frames(num_samples), len(classes))
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        assert float(actual.min()) >= 0 and float(actual.max()) <= 1  # sigmoid outputs

    # Sliding-window inference over a whole file: one score per output frame, at DeviNet's resolution.
    step = 2 * HOP / SAMPLE_RATE  # time pooling 2 ([2, 4] then [1, 4])
    frames = loaded.receptive_field
    assert frames.step == pytest.approx(step)
    assert frames.start == pytest.approx(0.0)
    assert frames.duration == pytest.approx((N_FFT + HOP) / SAMPLE_RATE)
    scores = pa.Inference(loaded, duration=CHUNK, step=0.5, batch_size=4)(str(wav))
    assert scores.data.shape[1] == len(classes)
    assert scores.sliding_window.step == pytest.approx(step)
    expected_frames = frames.closest_frame(FILE_SECONDS - frames.duration / 2) + 1
    assert abs(scores.data.shape[0] - expected_frames) <= 1
    assert np.all(np.isfinite(scores.data))


@pytest.mark.pyannote
def test_voice_activity_detection_trains_saves_and_infers(pa, protocol_files, tmp_path):
    task = pa.VoiceActivityDetection(_protocol(protocol_files, ("speech",)), duration=CHUNK, batch_size=4,
                                     num_workers=0, cache=tmp_path / "vad.cache")
    model, trainer = _train(pa, task, tmp_path, bn_momentum=0.1)
    assert model.dimension == 1 and isinstance(model.activation, torch.nn.Sigmoid)
    assert {m.momentum for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    _check_targets_align_with_frames(task, model, protocol_files, ["speech"], start=0.0)
    _check_saved_model_and_inference(pa, model, trainer, tmp_path, ["speech"], protocol_files[-1][2])


@pytest.mark.pyannote
def test_multilabel_segmentation_trains_saves_and_infers(pa, protocol_files, tmp_path):
    task = pa.MultiLabelSegmentation(_protocol(protocol_files, ("speech", "music")), duration=CHUNK, batch_size=4,
                                     num_workers=0, cache=tmp_path / "multilabel.cache")
    model, trainer = _train(pa, task, tmp_path)
    assert model.dimension == 2
    _check_targets_align_with_frames(task, model, protocol_files, ["speech", "music"], start=1.5)
    _check_saved_model_and_inference(pa, model, trainer, tmp_path, ["speech", "music"], protocol_files[-1][2])


@pytest.mark.pyannote
def test_geometry_methods_and_legacy_constructor(pa, tmp_path):
    path = write(tmp_path, ARCHITECTURE_YML)
    model = pa.module.DeviNetSegmentation.from_legacy_config(path)
    assert model.devinet_config == read_legacy_config(path, num_classes=1)
    geo = geometry(model.devinet_config)
    for n in (geo.min_num_samples, 16000, 32000, 12345):
        assert model.num_frames(n) == geo.num_frames(n)
    assert model.receptive_field_size(3) == geo.receptive_field_size(3)
    assert model.receptive_field_center(4) == geo.receptive_field_center(4)
    with pytest.raises(ConfigError, match="16000 Hz"):
        pa.module.DeviNetSegmentation(sample_rate=8000)
    with pytest.raises(ConfigError, match="layers_pooling has 4 values"):
        pa.module.DeviNetSegmentation(conv_blocks=3)
    assert math.isclose(model.receptive_field_center(0) - (model.receptive_field_size(1) - 1) / 2, 0.0)
    # The defaults are the seed's configuration, resolved before they are saved: a checkpoint
    # does not depend on them.
    default = pa.module.DeviNetSegmentation()
    assert {key: default.hparams[key] for key in SEED_CONFIG} == SEED_CONFIG
    assert default.devinet_config == pyannote_devinet(**SEED_CONFIG)
    assert default.devinet_config.dropout == 0.3 and default.devinet_config.linear_layers == (32, 32)


@pytest.mark.pyannote
def test_seed_readme_config_builds_the_model_without_a_task(pa, tmp_path):
    """The old port's README block (under feature_extraction:, conv_blocks 4) builds the seed model;
    the README's verbatim sample (conv_blocks 3, four poolings) is refused with one line."""
    path = write(tmp_path, README_YML.replace("conv_blocks: 3", "conv_blocks: 4"))
    model = pa.module.DeviNetSegmentation.from_legacy_config(path)
    assert {key: model.hparams[key] for key in SEED_CONFIG} == SEED_CONFIG
    assert model.devinet_config == pa.module.DeviNetSegmentation().devinet_config
    assert len(model.backbone.gcnn) == 8 and model.backbone.embedding_size == 32
    verbatim = write(tmp_path, README_YML, name="readme_sample.yml")
    with pytest.raises(ConfigError) as info:
        pa.module.DeviNetSegmentation.from_legacy_config(verbatim)
    assert str(info.value).startswith(f"{verbatim}: conv_blocks=3 but layers_pooling has 4 values")
    assert "\n" not in str(info.value)


@pytest.mark.pyannote
def test_bn_momentum_defaults_to_keras_and_is_checked(pa):
    default = pa.module.DeviNetSegmentation()
    assert default.hparams["bn_momentum"] == default.devinet_config.bn_momentum == DeviNetConfig.bn_momentum == 0.01
    assert {m.momentum for m in default.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}
    for bad in (0, 1.5, True, "0.1"):
        with pytest.raises(ConfigError, match="bn_momentum must be a number in"):
            pa.module.DeviNetSegmentation(bn_momentum=bad)


@pytest.mark.pyannote
def test_resuming_with_ckpt_path_under_pyannote_safe_globals(pa, protocol_files, tmp_path):
    """docs/pyannote.md's workaround: Trainer.fit(ckpt_path=...) loads a DeviNet checkpoint with
    weights_only=True once pyannote's Specifications, Problem and Resolution are allowed."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from pyannote.audio.core.task import Problem, Resolution, Specifications

    def trainer(epochs: int, **kwargs):
        return pa.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs)

    def task():
        return pa.VoiceActivityDetection(_protocol(protocol_files, ("speech",)), duration=CHUNK, batch_size=4,
                                         num_workers=0, cache=tmp_path / "vad.cache")

    first = trainer(1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)])
    first.fit(_small_model(pa, task()))
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed = trainer(2, enable_checkpointing=False)
    with torch.serialization.safe_globals([Specifications, Problem, Resolution]):
        resumed.fit(_small_model(pa, task()), ckpt_path=last)  # weights_only=True (torch's default)
    assert resumed.current_epoch == 2 and resumed.global_step == 2 * first.global_step > 0

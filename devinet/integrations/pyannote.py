"""DeviNet as a pyannote.audio 4 segmentation model (speech and voice-type detection).

:class:`DeviNetSegmentation` is a ``pyannote.audio.Model``: it takes the 16-kHz waveform
chunks that pyannote's segmentation tasks (``VoiceActivityDetection``,
``MultiLabelSegmentation``, ...) feed it and returns frame-wise scores at DeviNet's own
resolution::

    waveforms (batch, 1, samples), 16 kHz
      -> LogMel (devinet.features)           (batch, frames, 64)   frames = 1 + (samples - 1024) // 664
      -> per-mel-bin standardisation          (batch, frames, 64)
      -> DeviNet backbone (forward_features)  (batch, T_out, D)     T_out = frames // time_stride
      -> classifier (built from the task)     (batch, T_out, classes)
      -> activation (sigmoid for detection)

The backbone is the corrected model of the older pyannote port, configured with that port's
keys; the defaults are its README's configuration
(:data:`devinet.integrations.legacy_config.SEED_CONFIG`), and
:meth:`DeviNetSegmentation.from_legacy_config` reads them from its config.yml. The checkpoint
records this module's path (``devinet.integrations.pyannote``) and class name: keep both stable.

Importing this module needs a working pyannote.audio (>=4.0.4,<5); without one it raises
:class:`PyannoteImportError` (an ``ImportError``) with the install hint and the cause. devinet
is not on PyPI: from a clone, ``bash scripts/install_pyannote_cpu.sh`` sets up a working
environment on a CPU-only machine (docs/pyannote.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InputError, MissingDependencyError, first_line

#: the pyannote.audio releases this module is written for (the ``pyannote`` extra pins the same range)
PYANNOTE_REQUIREMENT = ">=4.0.4,<5"
#: how to install it: devinet is installed from a clone (it is not on PyPI)
INSTALL_HINT = ("install it from a devinet clone (devinet is not on PyPI): bash scripts/install_pyannote_cpu.sh "
                "on a CPU-only machine, else pip install torch==2.13.0 -e '.[pyannote]'")
_MIN_VERSION = (4, 0, 4)
_MAX_MAJOR = 4


class PyannoteImportError(MissingDependencyError):
    """pyannote.audio is missing, of an unsupported version, or fails to import."""

    def __init__(self, problem: str, cpu_hint: bool = False):
        message = (
            f"devinet.integrations.pyannote needs pyannote.audio{PYANNOTE_REQUIREMENT}, {problem}; {INSTALL_HINT}"
        )
        if cpu_hint:
            message += (
                " (torchaudio and torchcodec from PyPI are CUDA builds that do not load beside a CPU-only "
                "torch; the script handles both: see docs/pyannote.md)"
            )
        # MissingDependencyError words its message for a missing package; this one says more,
        # so skip its __init__ and go on up the chain (to ImportError's).
        super(MissingDependencyError, self).__init__(message)


def _parse_version(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(g or 0) for g in match.groups()) if match else ()


def _import_pyannote_model() -> type:
    """``pyannote.audio.Model``, or :class:`PyannoteImportError` saying why it cannot be had."""
    try:
        import pyannote.audio as pyannote_audio
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "pyannote":
            raise PyannoteImportError(f"which is not installed ({first_line(exc, with_type=True)})") from None
        raise PyannoteImportError(f"which failed to import ({first_line(exc, with_type=True)})") from None
    except Exception as exc:  # noqa: BLE001 - a broken install fails with OSError, RuntimeError, ...
        text = str(exc)
        cpu_hint = any(word in text for word in ("torchaudio", "torchcodec", "cuda", "CUDA"))
        raise PyannoteImportError(f"which failed to import ({first_line(exc, with_type=True)})", cpu_hint) from None
    version = str(getattr(pyannote_audio, "__version__", "unknown"))
    parsed = _parse_version(version)
    if not parsed or parsed < _MIN_VERSION or parsed[0] > _MAX_MAJOR:
        raise PyannoteImportError(f"found pyannote.audio {version}")
    try:
        from pyannote.audio import Model as PyannoteModel
    except Exception as exc:  # noqa: BLE001
        raise PyannoteImportError(f"which failed to import ({first_line(exc, with_type=True)})") from None
    return PyannoteModel


Model = _import_pyannote_model()

import torch  # noqa: E402  (after the guard: its message must come first)
from torch import nn  # noqa: E402

from ..config import pyannote_devinet  # noqa: E402
from ..features import HOP, N_FFT, N_MELS, SAMPLE_RATE, LogMel  # noqa: E402
from ..model import DeviNet  # noqa: E402
from .geometry import WaveformGeometry  # noqa: E402
from .legacy_config import SEED_CONFIG, read_legacy_params  # noqa: E402

if TYPE_CHECKING:
    from pyannote.audio.core.task import Task


def _check_momentum(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"bn_momentum must be a number in (0, 1], got {value!r}")
    return float(value)


class DeviNetSegmentation(Model):
    """DeviNet on 16-kHz waveforms, with a head built from the task's specifications.

    Parameters are the older pyannote port's keys; left out (or None), each takes the value of
    the old port's README configuration (:data:`~devinet.integrations.legacy_config.SEED_CONFIG`:
    4 groups of 128 channels pooling mel by [2, 2, 2, 2] then 4, dropout 0.3, one gated BiGRU of
    128, dense layers [32, 32]):

    Args:
        conv_blocks: pooled groups of two gated conv blocks.
        conv_channels: channels after gating.
        layers_pooling: per group, a mel pooling (int) or a [time, mel] pair; time pooling
            coarsens the output (each output frame then spans several 41.5-ms log-mel frames).
        final_pooling: mel pooling (int) or [time, mel] pair after the final conv.
        dropout: dropout after each pooled group and before each dense layer.
        recurrent: hidden sizes of the stacked bidirectional GRUs.
        gated_rnn: CVSSP's gated BiGRU pair (linear x sigmoid), or one tanh BiGRU.
        linear_layers: sizes of tanh dense layers after the GRUs.
        bn_momentum: PyTorch momentum of the backbone's BatchNorm statistics (default: Keras's
            0.01, as in every devinet model). Inference and pyannote's validation use these
            running statistics; at 0.01 they take several hundred steps to forget their initial
            values, so pass 0.1 (PyTorch's default, the old port's) for short trainings.
        sample_rate: must be 16000 (the log-mel recipe's rate; pyannote resamples files to it).
        num_channels: must be 1 (pyannote downmixes to mono).
        task: the pyannote task.

    ``forward`` maps (batch, 1, samples) waveforms to (batch, num_frames(samples), classes)
    scores. Inputs are standardised per mel bin by a BatchNorm without affine parameters, the
    counterpart of the original's training-set scaler (its statistics are estimated on the
    training chunks and saved in the checkpoint).
    """

    def __init__(
        self,
        conv_blocks: int | None = None,
        conv_channels: int | None = None,
        layers_pooling: list | None = None,
        final_pooling: int | list | None = None,
        dropout: float | None = None,
        recurrent: list[int] | None = None,
        gated_rnn: bool | None = None,
        linear_layers: list[int] | None = None,
        bn_momentum: float | None = None,
        sample_rate: int = SAMPLE_RATE,
        num_channels: int = 1,
        task: "Task | None" = None,
    ):
        if sample_rate != SAMPLE_RATE:
            raise ConfigError(f"DeviNetSegmentation works on {SAMPLE_RATE} Hz waveforms (its log-mel recipe), "
                              f"got sample_rate={sample_rate}; pyannote resamples audio files to the model's rate")
        if num_channels != 1:
            raise ConfigError(f"DeviNetSegmentation takes mono waveforms, got num_channels={num_channels}")
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        given = dict(conv_blocks=conv_blocks, conv_channels=conv_channels, layers_pooling=layers_pooling,
                     final_pooling=final_pooling, dropout=dropout, recurrent=recurrent, gated_rnn=gated_rnn,
                     linear_layers=linear_layers)
        resolved = {key: SEED_CONFIG[key] if value is None else value for key, value in given.items()}
        config = pyannote_devinet(num_classes=1, n_mels=N_MELS, head="mean", **resolved)
        bn_momentum = config.bn_momentum if bn_momentum is None else _check_momentum(bn_momentum)
        self.devinet_config = dataclasses.replace(config, bn_momentum=bn_momentum)
        # Lightning saves the resolved values (read from this frame's locals) so that a
        # checkpoint rebuilds the same backbone even if the defaults change.
        (conv_blocks, conv_channels, layers_pooling, final_pooling, dropout, recurrent, gated_rnn,
         linear_layers) = resolved.values()
        self.save_hyperparameters("conv_blocks", "conv_channels", "layers_pooling", "final_pooling", "dropout",
                                  "recurrent", "gated_rnn", "linear_layers", "bn_momentum")
        self.geometry = WaveformGeometry(self.devinet_config, window=N_FFT, hop=HOP, sample_rate=SAMPLE_RATE)

        self.logmel = LogMel()
        c = self.devinet_config
        self.standardize = nn.BatchNorm1d(c.n_mels, eps=c.bn_eps, momentum=None, affine=False)
        self.backbone = DeviNet(c)
        # The backbone's own clip-level head is replaced by the task's classifier (build());
        # it stays in the module only because DeviNet checks input dtypes against it.
        self.backbone.head.requires_grad_(False)

    @classmethod
    def from_legacy_config(cls, path: str | os.PathLike, **kwargs: Any) -> "DeviNetSegmentation":
        """Build from the older port's config.yml; ``kwargs`` go to the constructor (e.g. ``task=...``;
        no task is needed to build the model).

        Reads the DeviNet block under ``architecture:`` or, as the old port's README placed it,
        under ``feature_extraction:`` (with a one-line notice); see
        :func:`devinet.integrations.legacy_config.read_legacy_params`.
        """
        return cls(**read_legacy_params(path), **kwargs)

    # ------------------------------------------------------------------ task-dependent head
    @property
    def dimension(self) -> int:
        """Outputs per frame: the task's classes (or powerset classes)."""
        specifications = self.specifications
        if isinstance(specifications, tuple):
            raise ConfigError("DeviNetSegmentation addresses one task at a time, got several specifications")
        if specifications.powerset:
            return specifications.num_powerset_classes
        return len(specifications.classes)

    def build(self) -> None:
        self.classifier = nn.Linear(self.backbone.embedding_size, self.dimension)
        self.activation = self.default_activation()

    # ------------------------------------------------------------------ geometry (in samples)
    def num_frames(self, num_samples: int) -> int:
        """Output frames for a chunk of ``num_samples`` samples."""
        return self.geometry.num_frames(num_samples)

    def receptive_field_size(self, num_frames: int = 1) -> int:
        """Samples spanned by ``num_frames`` consecutive output frames (pyannote's convention)."""
        return self.geometry.receptive_field_size(num_frames)

    def receptive_field_center(self, frame: int = 0) -> float:
        """Sample at the centre of output frame ``frame``."""
        return self.geometry.receptive_field_center(frame)

    # ------------------------------------------------------------------ forward
    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples) -> (batch, num_frames(samples), dimension) scores."""
        if waveforms.ndim != 3 or waveforms.shape[1] != 1:
            raise InputError(f"DeviNetSegmentation expects (batch, 1, samples) waveforms, got {tuple(waveforms.shape)}")
        if waveforms.shape[-1] < self.geometry.min_num_samples:
            raise InputError(
                f"DeviNetSegmentation needs at least {self.geometry.min_num_samples} samples "
                f"({self.geometry.min_num_samples / SAMPLE_RATE:.3f} s) per chunk, got {waveforms.shape[-1]}"
            )
        features = self.logmel(waveforms[:, 0])  # (batch, frames, n_mels)
        features = self.standardize(features.transpose(1, 2)).transpose(1, 2)
        embeddings = self.backbone.forward_features(features)  # (batch, T_out, D)
        return self.activation(self.classifier(embeddings))

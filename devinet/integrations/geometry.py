"""Sample-level geometry of DeviNet behind a log-mel front end (no pyannote needed).

A frame-based toolkit such as pyannote.audio asks a waveform model three questions: how
many output frames a chunk of ``n`` samples gives, how many samples ``k`` consecutive
output frames span, and where output frame ``f`` is centred. :class:`WaveformGeometry`
answers them for a :class:`~devinet.config.DeviNetConfig` fed by an unpadded STFT:

- log-mel frame ``m`` reads samples ``[m * hop, m * hop + window)``, so ``n`` samples give
  ``1 + (n - window) // hop`` frames (none when ``n < window``);
- DeviNet pools time by ``S = config.time_stride`` (floor, like Keras 'valid' pooling), so
  output frame ``f`` is made of log-mel frames ``[f * S, (f + 1) * S)``.

Sizes and centres follow the convention of ``pyannote.audio.utils.receptive_field``, where
a padded convolution's padding is subtracted from its kernel: DeviNet's 'same' convolutions
do not widen the span, and output frame ``f`` spans exactly the samples of its ``S`` log-mel
frames. pyannote relies on that: it places frame-level training targets and overlap-add
aggregation at ``i * step + duration / 2``, which is right only when frame 0's span starts at
sample 0. The wider support of the convolutions (``config.receptive_field()``) and the
bidirectional GRU, which sees the whole chunk, change what a frame depends on, not where it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DeviNetConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class WaveformGeometry:
    """Where DeviNet's output frames lie in the input waveform.

    Attributes:
        config: the DeviNet configuration (its time pooling sets the output step).
        window: STFT window length in samples (1024 in the CVSSP recipe).
        hop: STFT hop in samples (664: window 1024 with overlap 360).
        sample_rate: samples per second of the waveform.
    """

    config: DeviNetConfig
    window: int
    hop: int
    sample_rate: int

    def __post_init__(self) -> None:
        for key in ("window", "hop", "sample_rate"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")

    @property
    def step(self) -> int:
        """Samples between the starts of two consecutive output frames (hop * time stride)."""
        return self.hop * self.config.time_stride

    @property
    def min_num_samples(self) -> int:
        """Fewest samples that give one output frame."""
        return self.window + (self.config.min_input_frames - 1) * self.hop

    def num_mel_frames(self, num_samples: int) -> int:
        """Log-mel frames of an unpadded STFT over ``num_samples`` samples."""
        num_samples = int(num_samples)
        if num_samples < self.window:
            return 0
        return 1 + (num_samples - self.window) // self.hop

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a waveform of ``num_samples`` samples."""
        return self.config.num_frames(self.num_mel_frames(num_samples))

    def receptive_field_size(self, num_frames: int = 1) -> int:
        """Samples spanned by ``num_frames`` consecutive output frames."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        mel_frames = num_frames * self.config.time_stride
        return self.window + (mel_frames - 1) * self.hop

    def receptive_field_center(self, frame: int = 0) -> float:
        """Sample index (fractional for even spans) at the centre of output frame ``frame``."""
        mel_center = self.config.receptive_field_center(frame)  # in log-mel frames
        return mel_center * self.hop + (self.window - 1) / 2

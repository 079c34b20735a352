"""devinet: the CVSSP gated CRNN of DCASE 2017 Task 4 in PyTorch, numerically identical to the original.

Light on purpose: importing devinet needs torch and numpy only (never TensorFlow).
"""

__version__ = "0.1.0"

from .checkpoint import load, save  # noqa: E402
from .config import PRESETS, DeviNetConfig, preset_config  # noqa: E402
from .errors import ConfigError, DevinetError, FileFormatError, InputError  # noqa: E402
from .layers import GatedBiGRU, GatedConvBlock, Keras2GRU, keras2_hard_sigmoid  # noqa: E402
from .model import DeviNet  # noqa: E402

__all__ = [
    "DeviNet",
    "DeviNetConfig",
    "PRESETS",
    "preset_config",
    "load",
    "save",
    "Keras2GRU",
    "GatedBiGRU",
    "GatedConvBlock",
    "keras2_hard_sigmoid",
    "DevinetError",
    "ConfigError",
    "InputError",
    "FileFormatError",
]

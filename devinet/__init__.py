"""devinet: the CVSSP gated CRNN of DCASE 2017 Task 4 in PyTorch, numerically identical to the original.

Light on purpose: importing devinet needs torch and numpy only (never TensorFlow), and the
public names below load lazily, so ``devinet --help`` or ``devinet.errors`` do not even
import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DeviNet": "model",
    "DeviNetConfig": "config",
    "PRESETS": "config",
    "preset_config": "config",
    "load": "checkpoint",
    "save": "checkpoint",
    "Keras2GRU": "layers",
    "GatedBiGRU": "layers",
    "GatedConvBlock": "layers",
    "keras2_hard_sigmoid": "layers",
    "Keras2BatchNorm2d": "layers",
    "Keras2Adam": "optim",
    "keras2_binary_crossentropy": "losses",
    "DevinetError": "errors",
    "ConfigError": "errors",
    "InputError": "errors",
    "FileFormatError": "errors",
    "Preprocessing": "preprocessing",
    "Tagger": "tagging",
    "TagResult": "tagging",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'devinet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

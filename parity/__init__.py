"""Conversion between Keras files and devinet, and the layer-by-layer proof that they compute the same.

- :func:`keras_to_torch` / :func:`torch_to_keras`: legacy Keras 2 HDF5 (Theano or TensorFlow
  backend, full model or weights only), Keras 3 ``.keras`` and ``.weights.h5`` <-> DeviNet,
  through the one declarative table :data:`parity.mapping.TABLE` and a completeness check.
- :func:`parity_reports`: every layer of devinet against a Keras reference (a Keras 2.0.8
  recording or a running Keras 3 model), in float32 and float64.

The names below load lazily (importing ``parity`` imports nothing heavy); the modules need
numpy and torch, and import h5py and TensorFlow only when a file is read or a Keras model is run.
"""

import importlib

_EXPORTS = {
    "ParityReport": "compare", "Recording": "compare", "compare_with_keras": "compare",
    "compare_with_recording": "compare", "format_report": "compare", "parity_reports": "compare",
    "Conversion": "convert", "keras_format": "convert", "keras_to_torch": "convert",
    "read_keras_file": "convert", "torch_to_keras": "convert",
    "TABLE": "mapping", "ConversionError": "mapping", "detect": "mapping",
}


def __getattr__(name: str):
    """The public names load lazily: ``parity.commands`` (the CLI) must not import torch."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'parity' has no attribute {name!r}")


__all__ = [
    "TABLE",
    "Conversion",
    "ConversionError",
    "ParityReport",
    "Recording",
    "compare_with_keras",
    "compare_with_recording",
    "detect",
    "format_report",
    "keras_format",
    "keras_to_torch",
    "parity_reports",
    "read_keras_file",
    "torch_to_keras",
]

"""Conversion between Keras files and devinet, and the layer-by-layer proof that they compute the same.

- :func:`keras_to_torch` / :func:`torch_to_keras`: legacy Keras 2 HDF5 (Theano or TensorFlow
  backend, full model or weights only), Keras 3 ``.keras`` and ``.weights.h5`` <-> DeviNet,
  through the one declarative table :data:`parity.mapping.TABLE` and a completeness check.
- :func:`parity_reports`: every layer of devinet against a Keras reference (a Keras 2.0.8
  recording or a running Keras 3 model), in float32 and float64.

Importing parity needs numpy and torch only; h5py and TensorFlow are imported when a file is
read or a Keras model is run.
"""

from .compare import ParityReport, Recording, compare_with_keras, compare_with_recording, format_report, parity_reports
from .convert import Conversion, keras_format, keras_to_torch, read_keras_file, torch_to_keras
from .mapping import TABLE, ConversionError, detect

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

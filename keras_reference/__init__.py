"""The original CVSSP DCASE 2017 Task 4 models on TensorFlow 2 / Keras 3.

``build('cvssp_crnn_at')``, ``build('cvssp_crnn_sed')`` and ``build('cvssp_cnnrnn_at')``
rebuild main_crnn_at.py, main_crnn_sed.py and main_cnnrnn_at.py of
yongxuUSTC/dcase2017_task4_cvssp with Keras 2.0.8's semantics, without Lambda layers, so
the models save and load as ``.keras`` files in safe mode. :mod:`keras_reference.training`
holds the original training recipe, :mod:`keras_reference.keras2_training` Keras 2.0.8's Adam and
loss for training exactly like the original. Importing this package selects the TensorFlow backend
unless ``KERAS_BACKEND`` is already set.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from .keras2_training import Keras2Adam, keras2_binary_crossentropy, keras2_train_step  # noqa: E402
from .layers import (  # noqa: E402
    CUSTOM_OBJECTS,
    GLU,
    PACKAGE,
    AttentionPooling,
    Keras2BatchNormalization,
    TimeMean,
    keras2_hard_sigmoid,
)
from .models import PRESETS, Preset, build, build_intermediate_model, framewise_model  # noqa: E402
from .training import (  # noqa: E402
    ORIGINAL_FUSION_EPOCHS,
    Recipe,
    checkpoint_path,
    compile_original,
    fuse_predictions,
    fusion_checkpoints,
    list_checkpoints,
    load_checkpoint,
    train,
)
from .weight_files import weight_file_layout  # noqa: E402

__all__ = [
    "AttentionPooling",
    "CUSTOM_OBJECTS",
    "GLU",
    "Keras2Adam",
    "Keras2BatchNormalization",
    "ORIGINAL_FUSION_EPOCHS",
    "PACKAGE",
    "PRESETS",
    "Preset",
    "Recipe",
    "TimeMean",
    "build",
    "build_intermediate_model",
    "checkpoint_path",
    "compile_original",
    "framewise_model",
    "fuse_predictions",
    "fusion_checkpoints",
    "keras2_binary_crossentropy",
    "keras2_hard_sigmoid",
    "keras2_train_step",
    "list_checkpoints",
    "load_checkpoint",
    "train",
    "weight_file_layout",
]

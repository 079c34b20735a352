"""Registered Keras 3 pieces that replace the original's Lambda layers and Keras 2 defaults.

The original model (Keras 2.0.8) used Lambda layers for the channel split of each gated
block, the mean over time and the attention pooling; Keras 3 refuses Lambda layers when
loading in safe mode. Each is a small serializable layer here, computing exactly what the
original's Lambda/Activation/Multiply chain computed. All are registered under the package
name ``devinet``, so ``keras.models.load_model(path, safe_mode=True)`` finds them once
``keras_reference`` is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import ops  # noqa: E402

PACKAGE = "devinet"


@keras.saving.register_keras_serializable(package=PACKAGE, name="keras2_hard_sigmoid")
def keras2_hard_sigmoid(x):
    """Keras 2.x ``hard_sigmoid`` (the GRU's default recurrent activation): clip(0.2 x + 0.5, 0, 1).

    Keras 3's ``'hard_sigmoid'`` is relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1): a different
    function, so the original GRUs need this one.
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GLU(keras.layers.Layer):
    """Gated linear unit over the channel axis: ``x[..., :C/2] * sigmoid(x[..., C/2:])``.

    The SECOND half gates the first, as in the original block (Lambda slices 0:64 and
    64:128, linear and sigmoid activations, Multiply). (..., C) -> (..., C/2).
    """

    def build(self, input_shape) -> None:
        channels = input_shape[-1]
        if channels is None or channels % 2:
            raise ValueError(f"{self.name}: GLU needs a known, even channel count, got {channels}")
        self._half = channels // 2
        super().build(input_shape)

    def call(self, x):
        return x[..., : self._half] * ops.sigmoid(x[..., self._half:])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TimeMean(keras.layers.Layer):
    """Mean over time of frame-wise outputs (the crnn_at clip output). (N, T, C) -> (N, C)."""

    def call(self, x):
        return ops.mean(x, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[2:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling(keras.layers.Layer):
    """The crnn_sed clip output: ``sum_t(cla * att) / sum_t(clip(att, eps, 1))``.

    Called on ``[cla, att]``, both (N, T, C): frame-wise class probabilities and the
    attention weights (softmax over classes at each frame). Returns (N, C). ``eps`` is
    1e-7 in main_crnn_sed.py (one script variant used 1e-9).
    """

    def __init__(self, eps: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        self.eps = float(eps)

    def call(self, inputs):
        cla, att = inputs
        return ops.sum(cla * att, axis=1) / ops.sum(ops.clip(att, self.eps, 1.0), axis=1)

    def compute_output_shape(self, input_shape):
        cla_shape = input_shape[0]
        return (cla_shape[0], *cla_shape[2:])

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Keras2BatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training mode updates the moving statistics as Keras 2.0.8 on Theano did.

    Normalizing is Keras 3's (the biased batch variance plus ``epsilon``); only the moving
    variance differs. Keras 3 updates ``moving_variance = momentum * moving_variance +
    (1 - momentum) * batch_variance``; Keras 2.0.8 on Theano added the layer's epsilon to the
    batch variance there (its ``normalize_batch_in_training`` returned ``1 / stdinv^2 = var + eps``):
    ``momentum * moving_variance + (1 - momentum) * (batch_variance + epsilon)``. The moving mean
    is updated alike in both. Inference is unchanged. Used where the reference must train like
    the original (``keras_reference.build(..., keras2_batchnorm=True)``); masks and batch
    renormalization fall back to Keras 3's layer.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        axis = self.axis % len(inputs.shape)
        mean, variance = ops.moments(inputs, [i for i in range(len(inputs.shape)) if i != axis])
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + (variance + self.epsilon) * (1.0 - self.momentum))
        return ops.batch_normalization(inputs, mean, variance, axis=self.axis, offset=self.beta, scale=self.gamma,
                                       epsilon=self.epsilon)


#: every registered object of this package, for ``custom_objects=`` where registration is not enough
CUSTOM_OBJECTS = {
    "keras2_hard_sigmoid": keras2_hard_sigmoid,
    "GLU": GLU,
    "TimeMean": TimeMean,
    "AttentionPooling": AttentionPooling,
    "Keras2BatchNormalization": Keras2BatchNormalization,
}

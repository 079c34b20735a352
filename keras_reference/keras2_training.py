"""Keras 2.0.8's training semantics on Keras 3: its Adam update and its binary cross-entropy.

What Keras 3 changed (measured against Keras 2.0.8's source, keras/optimizers.py and
keras/backend/theano_backend.py at tag 2.0.8; see docs/training-parity.md):

- Adam: Keras 3 puts epsilon where Keras 2.0.8 did (on ``sqrt(v_t)``, bias correction folded
  into the step size) but defaults it to 1e-7 instead of 1e-8, writes the moment updates as
  ``m += (g - m) * (1 - beta_1)`` (the same value, another rounding) and has no ``decay``
  argument. :class:`Keras2Adam` is Keras 2.0.8's update verbatim, ``decay`` included.
- BatchNormalization: Keras 3 leaves epsilon out of the moving-variance update;
  :class:`keras_reference.layers.Keras2BatchNormalization` puts it back.
- binary cross-entropy: Keras 3 (TensorFlow) clips like Keras 2.0.8, but takes the logits
  instead when the model's output is directly a sigmoid op; :func:`keras2_binary_crossentropy`
  never does.

:func:`keras2_train_step` makes the original's training step with a model built with
``keras_reference.build(..., keras2_batchnorm=True)``.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from .layers import PACKAGE  # noqa: E402

#: Keras' ``epsilon()``, the clip of binary_crossentropy
KERAS_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package=PACKAGE)
class Keras2Adam(keras.optimizers.Optimizer):
    """Keras 2.0.8's Adam on Keras 3, with its argument names and defaults.

    ``iterations`` counts the updates made before this one::

        lr   = lr / (1 + decay * iterations)                # decay > 0 only
        t    = iterations + 1
        lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        m_t  = beta_1 * m + (1 - beta_1) * g
        v_t  = beta_2 * v + (1 - beta_2) * g^2
        p_t  = p - lr_t * m_t / (sqrt(v_t) + epsilon)

    Build it in the dtype of the model it trains (the learning rate is a variable of the
    current floatx).
    """

    def __init__(self, lr: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
                 decay: float = 0.0, name: str = "keras2_adam", **kwargs):
        super().__init__(learning_rate=float(lr), name=name, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.decay = float(decay)

    def build(self, var_list) -> None:
        if self.built:
            return
        super().build(var_list)
        self._m, self._v = self.add_optimizer_variables(var_list, ["m", "v"])

    def update_step(self, gradient, variable, learning_rate) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        iterations = ops.cast(self.iterations, dtype)
        if self.decay > 0:
            lr = lr * (1.0 / (1.0 + self.decay * iterations))
        t = iterations + 1.0
        # convert_to_tensor(..., dtype), not cast: casting a Python float goes through float32
        beta_1, beta_2 = (ops.convert_to_tensor(b, dtype=dtype) for b in (self.beta_1, self.beta_2))
        lr_t = lr * (ops.sqrt(1.0 - ops.power(beta_2, t)) / (1.0 - ops.power(beta_1, t)))
        g = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        m, v = self._m[index], self._v[index]
        m_t = self.beta_1 * m + (1.0 - self.beta_1) * g
        v_t = self.beta_2 * v + (1.0 - self.beta_2) * ops.square(g)
        self.assign(m, m_t)
        self.assign(v, v_t)
        self.assign(variable, variable - lr_t * m_t / (ops.sqrt(v_t) + self.epsilon))

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("learning_rate", None)
        return {**config, "lr": float(self.learning_rate), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "decay": self.decay}


@keras.saving.register_keras_serializable(package=PACKAGE, name="keras2_binary_crossentropy")
def keras2_binary_crossentropy(y_true, y_pred):
    """Keras 2.0.8's ``losses.binary_crossentropy``: per-sample mean over the classes. (N, C) -> (N,).

    ``clip(y_pred, 1e-7, 1 - 1e-7)`` (bounds in the tensor's dtype), then
    ``-(t log p + (1 - t) log(1 - p))``; ``compile`` takes the mean over the batch.
    """
    p = ops.clip(y_pred, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    t = ops.cast(y_true, p.dtype)
    return ops.mean(-(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p)), axis=-1)


def keras2_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer | None = None):
    """One training step of ``model`` as Keras 2.0.8's ``train_on_batch`` made it: ``step(x, y) -> loss``.

    The loss (``keras2_binary_crossentropy`` averaged over the batch) is computed in training
    mode before the update, then ``optimizer`` (default ``Keras2Adam()``; build it in the
    model's dtype) applies the gradients. Feed ``x`` and ``y`` as tensors of the model's dtype:
    nothing is cast. (Keras 3's compiled losses cast their inputs to the floatx current when
    they are built, and ``train_on_batch`` returns the loss through a float32 metric: a float64
    model trained that way is not trained in float64.) TensorFlow backend; traced once, no XLA
    (it may reorder floating-point operations).
    """
    import tensorflow as tf

    optimizer = optimizer or Keras2Adam()
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = ops.mean(keras2_binary_crossentropy(y, model(x, training=True)))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step

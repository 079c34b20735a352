"""The loss of the original CVSSP recipe: binary cross-entropy exactly as Keras 2.0.8 computed it."""

from __future__ import annotations

import torch

__all__ = ["KERAS_EPSILON", "keras2_binary_crossentropy"]

#: Keras' ``epsilon()`` (keras.json): binary_crossentropy clips probabilities to [EPS, 1 - EPS]
KERAS_EPSILON = 1e-7


def keras2_binary_crossentropy(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Keras 2.0.8's ``binary_crossentropy`` of probabilities, as ``compile(loss=...)`` reduced it. (..., C) -> ().

    Keras 2.0.8 on Theano: ``output = clip(output, 1e-7, 1 - 1e-7)`` (the bounds in the
    tensor's dtype: ``1 - 1e-7`` is 0.99999988 in float32), then
    ``-(t * log(output) + (1 - t) * log(1 - output))``, the mean over the classes (last axis),
    then the mean over the batch (all sample weights 1). The clip passes the gradient where the
    probability lies inside [lo, hi], bounds included, as Theano's clip and ``torch.clamp`` do;
    outside, the gradient is zero.

    Not ``torch.nn.functional.binary_cross_entropy``, which does not clip (it clamps the log at
    -100 instead). Targets are cast to ``probs``' dtype.
    """
    p = probs.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    t = targets.to(p.dtype)
    per_class = -(t * torch.log(p) + (1.0 - t) * torch.log(1.0 - p))
    return per_class.mean(dim=-1).mean()

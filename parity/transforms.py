"""One pure function and its inverse per kind of weight: Keras layout <-> PyTorch layout.

Every function takes and returns numpy arrays and never mutates its input (the result is a
fresh C-contiguous array). Directions are in the names: ``*_to_torch`` reads a Keras array,
``*_to_keras`` reads a devinet (PyTorch) array; ``TRANSFORMS[kind]`` pairs them for the
mapping table in :mod:`parity.mapping`.

Layouts:

- Conv2D kernel: Keras (kh, kw, in, out) <-> torch (out, in, kh, kw).
- Theano flip: Keras 2 on Theano *convolves*, so its kernels are the cross-correlation kernels
  of TensorFlow/PyTorch rotated by 180 degrees: ``k[::-1, ::-1]`` on the Keras layout. The flip
  is its own inverse.
- Dense kernel: Keras (in, out) <-> torch weight (out, in).
- GRU: Keras kernel (I, 3H), recurrent kernel (H, 3H), bias (3H,) with gates z, r, h along the
  last axis <-> torch ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias`` (3H,) with gates
  r, z, n along the first axis. A reset-after Keras bias (2, 3H) is two such biases (input,
  recurrent); :mod:`parity.mapping` addresses its rows separately.
- BatchNorm vectors and biases: identical in both frameworks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

Array = np.ndarray


def _fresh(a: Array) -> Array:
    return np.ascontiguousarray(np.array(a, copy=True))


def _require_ndim(a: Array, ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {tuple(a.shape)}")


# ----------------------------------------------------------------------------- identity
def identity(a: Array) -> Array:
    """Biases and vectors stored the same way in both frameworks."""
    return _fresh(a)


# ----------------------------------------------------------------------------- conv2d
def conv2d_to_torch(kernel: Array) -> Array:
    """Keras Conv2D kernel (kh, kw, in, out) -> torch Conv2d weight (out, in, kh, kw)."""
    _require_ndim(kernel, 4, "a Keras Conv2D kernel")
    return _fresh(np.transpose(kernel, (3, 2, 0, 1)))


def conv2d_to_keras(weight: Array) -> Array:
    """torch Conv2d weight (out, in, kh, kw) -> Keras Conv2D kernel (kh, kw, in, out)."""
    _require_ndim(weight, 4, "a torch Conv2d weight")
    return _fresh(np.transpose(weight, (2, 3, 1, 0)))


def theano_flip(kernel: Array) -> Array:
    """Rotate a Keras-layout kernel (kh, kw, ...) by 180 degrees: Theano convolution <-> cross-correlation.

    Its own inverse: applying it twice returns the input.
    """
    if kernel.ndim < 2:
        raise ValueError(f"a kernel to flip needs two spatial dimensions, got shape {tuple(kernel.shape)}")
    return _fresh(kernel[::-1, ::-1])


# ----------------------------------------------------------------------------- batchnorm
def batchnorm_to_torch(vector: Array) -> Array:
    """gamma/beta/moving_mean/moving_variance (C,) -> weight/bias/running_mean/running_var (C,)."""
    _require_ndim(vector, 1, "a BatchNormalization vector")
    return _fresh(vector)


def batchnorm_to_keras(vector: Array) -> Array:
    """weight/bias/running_mean/running_var (C,) -> gamma/beta/moving_mean/moving_variance (C,)."""
    _require_ndim(vector, 1, "a BatchNorm vector")
    return _fresh(vector)


# ----------------------------------------------------------------------------- dense
def dense_to_torch(kernel: Array) -> Array:
    """Keras Dense kernel (in, out) -> torch Linear weight (out, in)."""
    _require_ndim(kernel, 2, "a Keras Dense kernel")
    return _fresh(kernel.T)


def dense_to_keras(weight: Array) -> Array:
    """torch Linear weight (out, in) -> Keras Dense kernel (in, out)."""
    _require_ndim(weight, 2, "a torch Linear weight")
    return _fresh(weight.T)


# ----------------------------------------------------------------------------- GRU
def _swap_first_two_gates(a: Array, axis: int) -> Array:
    """(g0, g1, g2) -> (g1, g0, g2) along ``axis``: Keras (z, r, h) <-> torch (r, z, n)."""
    if a.shape[axis] % 3:
        raise ValueError(f"a GRU weight needs 3 gates along axis {axis}, got shape {tuple(a.shape)}")
    g0, g1, g2 = np.split(a, 3, axis=axis)
    return np.concatenate([g1, g0, g2], axis=axis)


def keras_gates_to_torch(a: Array, axis: int = -1) -> Array:
    """Reorder gate blocks from Keras (z, r, h) to PyTorch (r, z, n) along ``axis``."""
    return _fresh(_swap_first_two_gates(a, axis))


def torch_gates_to_keras(a: Array, axis: int = 0) -> Array:
    """Reorder gate blocks from PyTorch (r, z, n) to Keras (z, r, h) along ``axis``."""
    return _fresh(_swap_first_two_gates(a, axis))


def gru_kernel_to_torch(kernel: Array) -> Array:
    """Keras GRU kernel (I, 3H) or recurrent kernel (H, 3H), gates z,r,h -> torch (3H, I|H), gates r,z,n."""
    _require_ndim(kernel, 2, "a Keras GRU kernel")
    return keras_gates_to_torch(kernel, axis=1).T.copy()


def gru_kernel_to_keras(weight: Array) -> Array:
    """torch GRU ``weight_ih``/``weight_hh`` (3H, I|H), gates r,z,n -> Keras (I|H, 3H), gates z,r,h."""
    _require_ndim(weight, 2, "a torch GRU weight")
    return torch_gates_to_keras(weight, axis=0).T.copy()


def gru_bias_to_torch(bias: Array) -> Array:
    """One Keras GRU bias (3H,), gates z,r,h -> torch ``bias_ih``/``bias_hh`` (3H,), gates r,z,n."""
    _require_ndim(bias, 1, "a Keras GRU bias row")
    return keras_gates_to_torch(bias, axis=0)


def gru_bias_to_keras(bias: Array) -> Array:
    """torch GRU bias (3H,), gates r,z,n -> Keras GRU bias row (3H,), gates z,r,h."""
    _require_ndim(bias, 1, "a torch GRU bias")
    return torch_gates_to_keras(bias, axis=0)


# ----------------------------------------------------------------------------- registry
class Transform(NamedTuple):
    """A transform kind: Keras -> torch and its inverse."""

    to_torch: Callable[[Array], Array]
    to_keras: Callable[[Array], Array]


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(identity, identity),
    "conv2d": Transform(conv2d_to_torch, conv2d_to_keras),
    "batchnorm": Transform(batchnorm_to_torch, batchnorm_to_keras),
    "dense": Transform(dense_to_torch, dense_to_keras),
    "gru_kernel": Transform(gru_kernel_to_torch, gru_kernel_to_keras),
    "gru_bias": Transform(gru_bias_to_torch, gru_bias_to_keras),
}

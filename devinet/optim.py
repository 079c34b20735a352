"""Keras 2.0.8's Adam as a ``torch.optim.Optimizer``: the optimizer the original CVSSP recipe trained with.

Keras 2.0.8 (keras/optimizers.py, ``Adam.get_updates``), for every parameter ``p`` with
gradient ``g``, ``iterations`` counting the updates made before this one::

    lr      = lr * 1 / (1 + decay * iterations)           # only when decay > 0
    t       = iterations + 1
    lr_t    = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m_t     = beta_1 * m + (1 - beta_1) * g
    v_t     = beta_2 * v + (1 - beta_2) * g^2
    p_t     = p - lr_t * m_t / (sqrt(v_t) + epsilon)

Epsilon is added to ``sqrt(v_t)`` BEFORE the bias correction, which is folded into ``lr_t``.
``torch.optim.Adam`` adds it after (``p -= lr / (1 - beta_1^t) * m_t / (sqrt(v_t / (1 - beta_2^t)) + eps)``),
so with the same epsilon it is a different optimizer: Keras 2.0.8 equals torch's Adam with a
step-dependent ``eps / sqrt(1 - beta_2^t)``, about 32x torch's epsilon at step 1. Keras 2.0.8's
default epsilon is 1e-8 (Keras 3's is 1e-7). See docs/training-parity.md.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from .errors import ConfigError

__all__ = ["Keras2Adam"]


class Keras2Adam(torch.optim.Optimizer):
    """Adam exactly as Keras 2.0.8 computed it, with Keras' argument names and defaults.

    ``Keras2Adam(model.parameters())`` is the optimizer of the original scripts'
    ``model.compile(..., optimizer='adam')`` (lr 1e-3, beta_1 0.9, beta_2 0.999, epsilon 1e-8,
    no decay). The update is in the module docstring; the scalar factors (``lr_t``) are
    computed in Python floats (double), the tensor updates in the parameter's dtype.

    Per-parameter state: ``step`` (updates made to that parameter: Keras' ``iterations``,
    which every parameter shares because Keras updates all of them at every step), ``m`` and
    ``v``. A parameter without a gradient is skipped, as torch's optimizers do. The group
    key ``lr`` is the base learning rate, so torch's LR schedulers work on it.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (>= 0).
        beta_1, beta_2: decay rates of the moment estimates, in [0, 1).
        epsilon: added to ``sqrt(v_t)`` (>= 0).
        decay: Keras' time-based learning-rate decay, ``lr / (1 + decay * iterations)`` (>= 0).
    """

    def __init__(self, params: Iterable, lr: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, decay: float = 0.0):
        problems = []
        if not lr >= 0.0:
            problems.append(f"lr must be >= 0, got {lr!r}")
        for name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                problems.append(f"{name} must be in [0, 1), got {beta!r}")
        if not epsilon >= 0.0:
            problems.append(f"epsilon must be >= 0, got {epsilon!r}")
        if not decay >= 0.0:
            problems.append(f"decay must be >= 0, got {decay!r}")
        if problems:
            raise ConfigError("Keras2Adam: " + "; ".join(problems))
        defaults = dict(lr=float(lr), beta_1=float(beta_1), beta_2=float(beta_2), epsilon=float(epsilon),
                        decay=float(decay))
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by :meth:`state_dict` of a Keras2Adam; another optimizer's state is refused."""
        groups = state_dict.get("param_groups", [])
        states = state_dict.get("state", {}).values()
        wanted = set(self.defaults)
        if any(not wanted <= set(g) for g in groups) or any(set(s) != {"step", "m", "v"} for s in states):
            found = sorted({k for g in groups for k in g} | {k for s in states for k in s} - {"params"})
            raise ConfigError(f"not a Keras2Adam state (keys {', '.join(found)}): another optimizer's state "
                              "cannot be resumed as Keras 2.0.8's Adam")
        super().load_state_dict(state_dict)

    @staticmethod
    def step_size(group: dict, iterations: int) -> float:
        """``lr_t`` of the update made after ``iterations`` earlier ones (decay and bias correction included)."""
        lr = group["lr"]
        if group["decay"] > 0:
            lr = lr * (1.0 / (1.0 + group["decay"] * iterations))
        t = iterations + 1
        return lr * (math.sqrt(1.0 - group["beta_2"] ** t) / (1.0 - group["beta_1"] ** t))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta_1, beta_2, epsilon = group["beta_1"], group["beta_2"], group["epsilon"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ConfigError("Keras2Adam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                lr_t = self.step_size(group, state["step"])
                m, v = state["m"], state["v"]
                m.mul_(beta_1).add_(g, alpha=1.0 - beta_1)
                v.mul_(beta_2).addcmul_(g, g, value=1.0 - beta_2)
                p.addcdiv_(m, v.sqrt().add_(epsilon), value=-lr_t)
                state["step"] += 1
        return loss

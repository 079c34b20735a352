"""The Keras-2 GRU recurrence: all directions of one or more GRUs in one scan, with a hand-written backward.

:func:`keras2_gru_scan` advances every direction of one or more GRUs of one form together
(one batched matmul per step) and, when a gradient is wanted, records :class:`_Keras2GRUScan`,
whose backward runs the time loop in reverse on one step's tensors and forms the recurrent
weight gradients with one matmul over all steps. :class:`devinet.layers.Keras2GRU` and
:class:`devinet.layers.GatedBiGRU` prepare its inputs; the equations are in ``Keras2GRU``'s
docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .errors import ConfigError


def _activate(name: str, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = activation(a)`` (``out`` may be ``a``); returns ``out``.

    Same operations as :data:`devinet.layers.ACTIVATIONS`, so the same rounding. ``keras2_hard_sigmoid``
    also leaves ``0.2 a + 0.5`` in ``a``, which :func:`_slope` needs (so then ``out`` must not be ``a``).
    """
    if name == "keras2_hard_sigmoid":
        return torch.clamp(a.mul_(0.2).add_(0.5), 0.0, 1.0, out=out)
    if name == "linear":
        return out if out is a else out.copy_(a)
    if name == "relu":
        return torch.clamp_min(a, 0.0, out=out)
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[name](a, out=out)


def _slope(name: str, value: torch.Tensor, pre: torch.Tensor) -> torch.Tensor | None:
    """Derivative of activation ``name`` (None meaning 1) from what :func:`_activate` kept.

    It is the derivative autograd gives for :data:`devinet.layers.ACTIVATIONS`, kinks included: torch.clamp
    passes the gradient at its bounds, so ``keras2_hard_sigmoid`` has 0.2 wherever
    ``0 <= 0.2 a + 0.5 <= 1`` (that is, where clipping left it unchanged); relu has 0 at 0.
    """
    if name == "linear":
        return None
    if name == "sigmoid":
        return value * (1 - value)
    if name == "tanh":
        return 1 - value * value
    if name == "relu":
        return (value > 0).to(value.dtype)
    if name == "keras2_hard_sigmoid":
        return (pre == value).to(value.dtype).mul_(0.2)
    raise ConfigError(f"no derivative known for activation {name!r}")


@dataclass(frozen=True)
class ScanSpec:
    """What a :class:`_Keras2GRUScan` computes: ``G`` GRUs of identical form, ``D = G * (1 or 2)`` directions.

    Directions are ordered GRU by GRU, forward before backward within a bidirectional GRU
    (for two bidirectional GRUs: g0 forward, g0 backward, g1 forward, g1 backward).
    ``activations[g]`` is GRU g's candidate activation.
    """

    activations: tuple[str, ...]
    recurrent_activation: str
    reset_after: bool
    bidirectional: bool

    @property
    def forward_dirs(self) -> slice:
        return slice(0, None, 2 if self.bidirectional else 1)

    @property
    def backward_dirs(self) -> slice | None:
        return slice(1, None, 2) if self.bidirectional else None

    def activation_groups(self) -> list[tuple[str, slice]]:
        """(candidate activation, direction slice), neighbouring GRUs of one activation merged."""
        per_gru = 2 if self.bidirectional else 1
        groups: list[tuple[str, slice]] = []
        for g, name in enumerate(self.activations):
            start = groups.pop()[1].start if groups and groups[-1][0] == name else g * per_gru
            groups.append((name, slice(start, (g + 1) * per_gru)))
        return groups


def _add_step_input(dst: torch.Tensor, natural: torch.Tensor, s: int, cols: slice, spec: ScanSpec) -> None:
    """dst (D, N, C) += what scan step ``s`` reads of ``natural`` (N, T, D, C'): time s forward, T-1-s backward."""
    fw, bw = spec.forward_dirs, spec.backward_dirs
    dst[fw].add_(natural[:, s, fw, cols].transpose(0, 1))
    if bw is not None:
        dst[bw].add_(natural[:, natural.shape[1] - 1 - s, bw, cols].transpose(0, 1))


def _put_step(natural: torch.Tensor, step: torch.Tensor, s: int, spec: ScanSpec) -> None:
    """Write scan step ``s`` (D, N, C) into a natural-time tensor (N, T, D, C)."""
    fw, bw = spec.forward_dirs, spec.backward_dirs
    natural[:, s, fw].copy_(step[fw].transpose(0, 1))
    if bw is not None:
        natural[:, natural.shape[1] - 1 - s, bw].copy_(step[bw].transpose(0, 1))


def _scan_forward(xw: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor,
                  spec: ScanSpec, save: bool):
    """The recurrence; see :class:`_Keras2GRUScan` for the shapes.

    Returns the output (N, T, D, H) and what the backward needs, in scan order (step s of a
    backward direction is time T-1-s): the states ``hs`` (D, T+1, N, H), ``hs[:, 0] = h0``;
    the gates ``rz`` (D, T, N, 2H) and what their activation left in ``pre`` (same shape);
    the candidates ``n`` (D, T, N, H) and ``n_pre`` (what a hard-sigmoid candidate left, or
    None); reset-before: ``rh = r * h`` (D, T, N, H); reset-after: the recurrent projections
    ``hh`` (D, T, N, 3H). Without ``save`` they are one-step scratch buffers, reused at every step.
    """
    N, T, D, _ = xw.shape
    H = w_hh.shape[1]
    steps = T if save else 1
    new = xw.new_empty
    out = new(N, T, D, H)
    hs = new(D, T + 1 if save else 2, N, H)
    hs[:, 0] = h0
    pre, rz, n = new(D, steps, N, 2 * H), new(D, steps, N, 2 * H), new(D, steps, N, H)
    rh = None if spec.reset_after else new(D, steps, N, H)
    hh = new(D, steps, N, 3 * H) if spec.reset_after else None
    n_pre = new(D, steps, N, H) if "keras2_hard_sigmoid" in spec.activations else None
    w_rz, w_n = w_hh[..., : 2 * H].contiguous(), w_hh[..., 2 * H:].contiguous()
    rz_cols, n_cols = slice(0, 2 * H), slice(2 * H, 3 * H)
    for s in range(T):
        i = s if save else 0
        h, h_next = (hs[:, s], hs[:, s + 1]) if save else (hs[:, s % 2], hs[:, (s + 1) % 2])
        if spec.reset_after:
            # h~ = act(x W_n + b_in + r * (h U_n + b_hn)): one matmul for the three gates.
            torch.baddbmm(b_hh, h, w_hh, out=hh[:, i])
            a_rz = pre[:, i].copy_(hh[:, i, :, rz_cols])
        else:
            a_rz = torch.bmm(h, w_rz, out=pre[:, i])
        _add_step_input(a_rz, xw, s, rz_cols, spec)
        r, z = _activate(spec.recurrent_activation, a_rz, rz[:, i]).split(H, dim=-1)
        if spec.reset_after:
            a_n = torch.mul(r, hh[:, i, :, n_cols], out=n[:, i])
        else:
            # Keras 2.0.8: the reset gate scales h BEFORE the recurrent matmul of the candidate.
            a_n = torch.bmm(torch.mul(r, h, out=rh[:, i]), w_n, out=n[:, i])
        _add_step_input(a_n, xw, s, n_cols, spec)
        for name, dirs in spec.activation_groups():
            if name == "keras2_hard_sigmoid":  # keep its 0.2 a + 0.5 apart
                _activate(name, n_pre[dirs, i].copy_(a_n[dirs]), a_n[dirs])
            else:
                _activate(name, a_n[dirs], a_n[dirs])
        torch.addcmul(a_n, z, h - a_n, out=h_next)  # z h + (1 - z) h~
        _put_step(out, h_next, s, spec)
    return out, hs, pre, rz, n, n_pre, rh, hh


class _Keras2GRUScan(torch.autograd.Function):
    """The Keras-2 GRU recurrence over time for D directions at once, with a hand-written backward.

    Inputs: ``xw`` (N, T, D, 3H) input projections ``x W_ih^T + b_ih`` of every time step in
    natural time order (gates r, z, n); ``w_hh`` (D, H, 3H) recurrent kernels applied as
    ``h @ w_hh``; ``b_hh`` (D, 1, 3H) or None (reset_after only); ``h0`` (D, N, H); a
    :class:`ScanSpec`. Output (N, T, D, H) in natural time order (a backward direction's
    output t belongs to input frame t, as Keras' Bidirectional returns it).

    All directions advance together (one batched matmul per step). The backward runs the
    time loop in reverse on one step's small, cache-resident tensors, and forms the
    recurrent-weight gradients with one matmul over all steps afterwards, instead of the
    thousands of small autograd nodes a plain loop records.
    """

    @staticmethod
    def forward(ctx, xw, w_hh, b_hh, h0, spec):
        out, *saved = _scan_forward(xw, w_hh, b_hh, h0, spec, save=True)
        ctx.spec = spec
        ctx.has_b_hh = b_hh is not None
        ctx.save_for_backward(w_hh)
        ctx.intermediates = saved
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        spec: ScanSpec = ctx.spec
        (w_hh,) = ctx.saved_tensors
        hs, pre, rz, n, n_pre, rh, hh = ctx.intermediates
        D, T, N, H = n.shape
        grad_out = grad_out.contiguous()
        nonlinear = [(name, dirs) for name, dirs in spec.activation_groups() if name != "linear"]
        d_xw = grad_out.new_empty(N, T, D, 3 * H)
        # d(pre-activations) in scan order; reset-after also needs d(hh) = (d a_r, d a_z, r * d a_n).
        d_a = grad_out.new_empty(D, T, N, 3 * H)
        d_hh = grad_out.new_empty(D, T, N, 3 * H) if spec.reset_after else None
        w_t = w_hh.transpose(1, 2).contiguous()  # (D, 3H, H)
        w_rz_t, w_n_t = w_t[:, : 2 * H].contiguous(), w_t[:, 2 * H:].contiguous()
        carry = grad_out.new_zeros(D, N, H)  # dL/dh from the later steps
        for s in range(T - 1, -1, -1):
            dh = carry
            _add_step_input(dh, grad_out, s, slice(None), spec)
            r, z = rz[:, s].split(H, dim=-1)
            h, n_s, da = hs[:, s], n[:, s], d_a[:, s]
            # h' = z h + (1 - z) h~, h~ = act(a_n)
            da_n = torch.addcmul(dh, dh, z, value=-1, out=da[..., 2 * H:])
            for name, dirs in nonlinear:
                da_n[dirs].mul_(_slope(name, n_s[dirs], n_pre[dirs, s] if n_pre is not None else n_s[dirs]))
            torch.mul(dh, h - n_s, out=da[..., H: 2 * H])
            if spec.reset_after:
                torch.mul(da_n, hh[:, s, :, 2 * H:], out=da[..., :H])
            else:
                d_rh = torch.bmm(da_n, w_n_t)
                torch.mul(d_rh, h, out=da[..., :H])
            slope = _slope(spec.recurrent_activation, rz[:, s], pre[:, s])
            if slope is not None:
                da[..., : 2 * H].mul_(slope)
            if spec.reset_after:
                dg = d_hh[:, s]
                dg[..., : 2 * H].copy_(da[..., : 2 * H])
                torch.mul(da_n, r, out=dg[..., 2 * H:])
                carry = torch.baddbmm(dh * z, dg, w_t)
            else:
                carry = torch.addcmul(dh * z, d_rh, r).baddbmm_(da[..., : 2 * H], w_rz_t)
            _put_step(d_xw, da, s, spec)

        # Recurrent weights: one matmul over all (step, batch) rows per direction.
        def rows_t(t: torch.Tensor) -> torch.Tensor:  # (D, T, N, C) -> (D, C, T*N)
            return t.reshape(D, T * N, t.shape[-1]).transpose(1, 2)

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(D, T * N, t.shape[-1])

        if spec.reset_after:
            d_w_hh = torch.bmm(rows_t(hs[:, :-1]), rows(d_hh))
            d_b_hh = d_hh.sum(dim=(1, 2)).unsqueeze(1) if ctx.has_b_hh else None
        else:
            d_w_hh = torch.cat([torch.bmm(rows_t(hs[:, :-1]), rows(d_a[..., : 2 * H])),
                                torch.bmm(rows_t(rh), rows(d_a[..., 2 * H:]))], dim=-1)
            d_b_hh = None
        return d_xw, d_w_hh, d_b_hh, carry, None


def keras2_gru_scan(xw: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor,
                     spec: ScanSpec) -> torch.Tensor:
    """Run the scan, recording the hand-written backward only when a gradient is wanted."""
    tensors = (xw, w_hh, h0) + ((b_hh,) if b_hh is not None else ())
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _Keras2GRUScan.apply(xw, w_hh, b_hh, h0, spec)
    return _scan_forward(xw, w_hh, b_hh, h0, spec, save=False)[0]


__all__ = ["ScanSpec", "keras2_gru_scan"]

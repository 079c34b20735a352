"""The optimized Keras-2 GRU (fused multi-direction scan, hand-written backward) against the equations.

The reference below is a deliberately plain loop over time that applies Keras 2.0.8's GRU
equations to Keras-layout kernels (gate order z, r, h), one direction at a time, with
autograd doing the gradients. Every optimized path of ``Keras2GRU`` and ``GatedBiGRU`` must
give the same outputs AND the same gradients (inputs, every parameter, initial state), for
every candidate activation, both recurrent activations, both reset forms, one or two
directions, with and without an initial state. The hand-written backward is also checked
against finite differences with ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import functional_call

from devinet.layers import GatedBiGRU, Keras2GRU

CANDIDATE = ("linear", "sigmoid", "tanh")
RECURRENT = ("keras2_hard_sigmoid", "sigmoid")
COMBOS = list(itertools.product(CANDIDATE, RECURRENT, (False, True), (False, True)))
COMBO_IDS = [f"{a}-{r}-{'after' if ra else 'before'}-{'bi' if bi else 'uni'}" for a, r, ra, bi in COMBOS]

# ---------------------------------------------------------------------- reference (Keras 2.0.8 equations)

REFERENCE_ACTIVATIONS = {
    "linear": lambda v: v,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    # Keras 2.x hard_sigmoid; its autograd gives 0.2 inside [-2.5, 2.5] (clamp passes the bounds) and 0 outside.
    "keras2_hard_sigmoid": lambda v: torch.clamp(0.2 * v + 0.5, 0.0, 1.0),
}


def keras_layout(gru: Keras2GRU, suffix: str) -> dict[str, torch.Tensor]:
    """One direction's weights as Keras stores them: kernel (I, 3H), recurrent (H, 3H), gates z, r, h."""
    H = gru.hidden_size

    def zrh(w: torch.Tensor) -> torch.Tensor:  # PyTorch rows r, z, n -> Keras z, r, h
        return torch.cat([w[H:2 * H], w[:H], w[2 * H:]])

    out = {
        "kernel": zrh(getattr(gru, f"weight_ih_l0{suffix}")).t(),
        "recurrent_kernel": zrh(getattr(gru, f"weight_hh_l0{suffix}")).t(),
        "input_bias": zrh(getattr(gru, f"bias_ih_l0{suffix}")),
    }
    if gru.reset_after:
        out["recurrent_bias"] = zrh(getattr(gru, f"bias_hh_l0{suffix}"))
    return out


def reference_direction(x, h0, w, activation, recurrent_activation, reset_after, go_backwards):
    """Keras 2.0.8 ``GRU(return_sequences=True)`` of one direction, (N, T, I) -> (N, T, H).

    Keras' ``Bidirectional`` runs the backward layer on the reversed sequence and reverses its
    outputs again, so output t of either direction belongs to input frame t.
    """
    act, rec = REFERENCE_ACTIVATIONS[activation], REFERENCE_ACTIVATIONS[recurrent_activation]
    H = w["recurrent_kernel"].shape[0]
    k_z, k_r, k_h = w["kernel"].split(H, dim=1)
    u_z, u_r, u_h = w["recurrent_kernel"].split(H, dim=1)
    b_z, b_r, b_h = w["input_bias"].split(H)
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    h, outputs = h0, {}
    for t in steps:
        x_t = x[:, t]
        if not reset_after:
            z = rec(x_t @ k_z + b_z + h @ u_z)
            r = rec(x_t @ k_r + b_r + h @ u_r)
            hh = act(x_t @ k_h + b_h + (r * h) @ u_h)
        else:
            rb_z, rb_r, rb_h = w["recurrent_bias"].split(H)
            z = rec(x_t @ k_z + b_z + h @ u_z + rb_z)
            r = rec(x_t @ k_r + b_r + h @ u_r + rb_r)
            hh = act(x_t @ k_h + b_h + r * (h @ u_h + rb_h))
        h = z * h + (1 - z) * hh
        outputs[t] = h
    return torch.stack([outputs[t] for t in range(x.shape[1])], dim=1)


def reference_gru(gru: Keras2GRU, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """What Keras 2.0.8 computes for ``gru``'s weights: (N, T, I) -> (N, T, D*H)."""
    D, H = gru.num_directions, gru.hidden_size
    if h0 is None:
        h0 = x.new_zeros(D, x.shape[0], H)
    suffixes = ("", "_reverse") if gru.bidirectional else ("",)
    outs = [reference_direction(x, h0[d], keras_layout(gru, s), gru.activation, gru.recurrent_activation,
                                gru.reset_after, go_backwards=(s == "_reverse"))
            for d, s in enumerate(suffixes)]
    return torch.cat(outs, dim=-1)


# ---------------------------------------------------------------------- helpers


def randomize_(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.9) -> None:
    """Random weights AND biases, large enough that the hard sigmoid saturates on some steps."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def make_gru(activation, recurrent_activation, reset_after, bidirectional, seed=0, sizes=(5, 4)):
    gru = Keras2GRU(*sizes, activation=activation, recurrent_activation=recurrent_activation,
                    reset_after=reset_after, bidirectional=bidirectional).double()
    randomize_(gru, torch.Generator().manual_seed(seed))
    return gru


def grads(outputs: torch.Tensor, weight: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((outputs * weight).sum(), wrt))


def autograd_nodes(t: torch.Tensor) -> set[str]:
    """Class names of every autograd node that produced ``t`` (a custom Function ``F`` shows as ``FBackward``)."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def assert_close(actual, expected, tol=1e-11, what=""):
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------------- Keras2GRU


@pytest.mark.parametrize("activation, recurrent_activation, reset_after, bidirectional", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
def test_keras2gru_outputs_and_gradients_match_the_equations(activation, recurrent_activation, reset_after,
                                                            bidirectional, with_h0):
    gru = make_gru(activation, recurrent_activation, reset_after, bidirectional)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = (torch.randn(gru.num_directions, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
          if with_h0 else None)
    out = gru(x, h0)
    ref = reference_gru(gru, x, h0)
    assert out.shape == (3, 7, gru.num_directions * 4)
    assert_close(out, ref, what="output")

    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    wrt = [x, *gru.parameters()] + ([h0] if with_h0 else [])
    names = ["x", *(n for n, _ in gru.named_parameters())] + (["h0"] if with_h0 else [])
    for name, got, want in zip(names, grads(out, weight, wrt), grads(ref, weight, wrt)):
        assert_close(got, want, what=f"d/d{name}")


@pytest.mark.parametrize("activation", ["relu", "keras2_hard_sigmoid"])
@pytest.mark.parametrize("reset_after", [False, True], ids=["before", "after"])
def test_other_candidate_activations(activation, reset_after):
    """Any activation devinet knows may be the candidate's; the hard sigmoid keeps its own pre-activation."""
    gru = make_gru(activation, "keras2_hard_sigmoid", reset_after, True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out, ref = gru(x, h0), reference_gru(gru, x, h0)
    assert_close(out, ref, what="output")
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    wrt = [x, h0, *gru.parameters()]
    for got, want in zip(grads(out, weight, wrt), grads(ref, weight, wrt)):
        assert_close(got, want, what="gradient")
    small = make_gru(activation, "keras2_hard_sigmoid", reset_after, True, sizes=(3, 2), seed=6)
    names = [n for n, _ in small.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in small.parameters()]
    xs = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: functional_call(small, dict(zip(names, p)), (x,)),
                                    (xs, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_reference_covers_both_regions_of_the_hard_sigmoid():
    """The random weights above put gate pre-activations both inside and outside [-2.5, 2.5]."""
    gru = make_gru("linear", "keras2_hard_sigmoid", False, False)
    x = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = keras_layout(gru, "")
    pre = x @ w["kernel"][:, :8] + w["input_bias"][:8]  # z and r input parts alone
    inside = (pre.abs() < 2.5).double().mean().item()
    assert 0.2 < inside < 0.95, inside


@pytest.mark.parametrize("activation, recurrent_activation, reset_after, bidirectional", COMBOS, ids=COMBO_IDS)
def test_optimized_path_is_the_one_taken(activation, recurrent_activation, reset_after, bidirectional):
    gru = make_gru(activation, recurrent_activation, reset_after, bidirectional)
    out = gru(torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True))
    fused = reset_after and activation == "tanh" and recurrent_activation == "sigmoid"
    assert gru.uses_fused_kernel == fused
    if not fused:
        assert "_Keras2GRUScanBackward" in autograd_nodes(out)


@pytest.mark.parametrize("activation, recurrent_activation, reset_after, bidirectional",
                         [c for c in COMBOS if not (c[2] and c[0] == "tanh" and c[1] == "sigmoid")],
                         ids=[i for c, i in zip(COMBOS, COMBO_IDS) if not (c[2] and c[0] == "tanh" and c[1] == "sigmoid")])
def test_hand_written_backward_passes_gradcheck(activation, recurrent_activation, reset_after, bidirectional):
    gru = make_gru(activation, recurrent_activation, reset_after, bidirectional, sizes=(3, 2), seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(gru.num_directions, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in gru.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in gru.parameters()]

    def f(x, h0, *params):
        return functional_call(gru, dict(zip(names, params)), (x, h0))

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("reset_after", [False, True])
def test_hard_sigmoid_gradient_at_the_clip_boundary_follows_torch_clamp(reset_after):
    """z pre-activations of exactly +-2.5 (hard sigmoid exactly 1 or 0) still pass 0.2, as torch.clamp's autograd does.

    Only the update gate reads x and the candidate is 0, so h' = z * h0 and dh'/dx = 0.2 * h0 inside
    [-2.5, 2.5] (bounds included) and 0 beyond.
    """
    gru = Keras2GRU(1, 1, activation="linear", recurrent_activation="keras2_hard_sigmoid",
                    reset_after=reset_after).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.weight_ih_l0.copy_(torch.tensor([[0.0], [1.0], [0.0]]))  # rows r, z, n
    x = torch.tensor([[[2.5]], [[-2.5]], [[3.0]], [[1.0]]], dtype=torch.float64, requires_grad=True)
    h0 = torch.full((1, 4, 1), 0.5, dtype=torch.float64)
    out, ref = gru(x, h0), reference_gru(gru, x, h0)
    assert torch.equal(out, ref)
    ones = torch.ones_like(out)
    (dx,), (dx_ref,) = grads(out, ones, [x]), grads(ref, ones, [x])
    assert torch.equal(dx, dx_ref)
    assert dx.flatten().tolist() == pytest.approx([0.1, 0.1, 0.0, 0.1], abs=1e-15)


def test_sequences_of_one_step_and_batches_of_one():
    for N, T in ((1, 1), (1, 5), (4, 1)):
        gru = make_gru("sigmoid", "keras2_hard_sigmoid", False, True)
        x = torch.randn(N, T, 5, dtype=torch.float64, requires_grad=True)
        out, ref = gru(x), reference_gru(gru, x)
        assert_close(out, ref, what=f"N={N} T={T}")
        w = torch.randn(out.shape, dtype=torch.float64)
        assert_close(grads(out, w, [x])[0], grads(ref, w, [x])[0], what=f"dx N={N} T={T}")


def test_non_contiguous_inputs_and_output_gradients():
    gru = make_gru("linear", "keras2_hard_sigmoid", False, True)
    base = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    x = base.transpose(0, 1)  # (3, 7, 5), not contiguous
    out, ref = gru(x)[:, ::2], reference_gru(gru, x)[:, ::2]  # strided output gradient
    assert_close(out, ref)
    w = torch.randn(out.shape, dtype=torch.float64)
    assert_close(grads(out, w, [base])[0], grads(ref, w, [base])[0])


def test_no_grad_and_float32_agree_with_the_float64_equations():
    gru = make_gru("sigmoid", "keras2_hard_sigmoid", False, True, sizes=(6, 8))
    x = torch.randn(4, 9, 6, dtype=torch.float64)
    ref = reference_gru(gru, x)
    with torch.no_grad():
        assert_close(gru(x), ref)
        out32 = gru.float()(x.float())
    assert out32.dtype == torch.float32
    assert_close(out32.double(), ref, tol=1e-5, what="float32")


def test_input_and_state_shapes_are_checked():
    gru = make_gru("linear", "keras2_hard_sigmoid", False, True)
    with pytest.raises(ValueError, match="expects"):
        gru(torch.randn(3, 7, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="h0"):
        gru(torch.randn(3, 7, 5, dtype=torch.float64), torch.zeros(1, 3, 4, dtype=torch.float64))


# ---------------------------------------------------------------------- GatedBiGRU


@pytest.mark.parametrize("recurrent_activation", RECURRENT)
@pytest.mark.parametrize("reset_after", [False, True])
def test_gated_bigru_fused_scan_matches_two_reference_bigrus(recurrent_activation, reset_after):
    layer = GatedBiGRU(5, 4, recurrent_activation=recurrent_activation, reset_after=reset_after).double()
    randomize_(layer, torch.Generator().manual_seed(7))
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64, requires_grad=True)
    out = layer(x)
    ref = reference_gru(layer.linear, x) * reference_gru(layer.sigmoid, x)
    assert out.shape == (3, 6, 8)
    assert_close(out, ref, what="output")
    assert "_Keras2GRUScanBackward" in autograd_nodes(out)
    w = torch.randn(out.shape, dtype=torch.float64)
    wrt = [x, *layer.parameters()]
    names = ["x", *(n for n, _ in layer.named_parameters())]
    for name, got, want in zip(names, grads(out, w, wrt), grads(ref, w, wrt)):
        assert_close(got, want, what=f"d/d{name}")


def test_gated_bigru_parameter_names_are_unchanged():
    layer = GatedBiGRU(5, 4)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {f"{g}.{w}_l0{s}" for g in ("linear", "sigmoid")
                     for w in ("weight_ih", "weight_hh", "bias_ih") for s in ("", "_reverse")}


def test_non_gated_bigru_matches_the_reference():
    layer = GatedBiGRU(5, 4, gated=False, activation="tanh").double()
    randomize_(layer, torch.Generator().manual_seed(9))
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    assert_close(layer(x), reference_gru(layer.gru, x))

"""devinet's value of every canonical layer of the original Keras graph, for the parity comparison.

The devinet side is captured with forward hooks on the modules whose names are the canonical
layer names (``gcnn.3.bn`` for ``gcnn_3_bn``); image tensors are permuted from NCHW to Keras'
channels-last (N, T, F, C). A gated BiGRU runs its two GRUs fused, so their own outputs are
*re-run*: each GRU submodule is called on the input the gated module received. Layers of the
original Keras 2 graph with no devinet module are *derived* from captured tensors and marked
so: the Lambda slices of a gated block (``gcnn_{i}_split_a``/``_b``: the halves of the
BatchNorm output), its Activation layers (``act_a`` = first half, ``act_b`` = sigmoid of the
second half) and the attention head's Multiply (``head_weighted`` = frame output x attention).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from devinet.model import DeviNet

def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1) if t.dim() == 4 else t


def probe_points(model: DeviNet) -> dict[str, tuple[str, str]]:
    """Canonical layer -> (module name, 'output' | 'input' | 'clipwise') that holds its value."""
    c = model.config
    points: dict[str, tuple[str, str]] = {"to_image": ("gcnn.0", "input")}
    # A linear non-gated block (the original baseline) ends at its BatchNorm: no layer of its own.
    block_out = "glu" if c.gated_conv else (None if c.conv_activation == "linear" else c.conv_activation)
    for i in range(len(model.gcnn)):
        points[f"gcnn_{i}_conv"] = (f"gcnn.{i}.conv", "output")
        points[f"gcnn_{i}_bn"] = (f"gcnn.{i}.bn", "output")
        if block_out:
            points[f"gcnn_{i}_{block_out}"] = (f"gcnn.{i}", "output")
    for j in range(len(model.pool)):
        points[f"pool_{j}"] = (f"pool.{j}", "output")
    if model.final_conv is not None:
        points["final_conv"] = ("final_conv", "output")
    points["final_pool"] = ("final_pool", "output")
    # The reshaped sequence is what the first recurrent layer (or the head) reads.
    points["to_sequence"] = ("rnn.0", "input") if len(model.rnn) else ("head.frame", "input")
    kinds = ("linear", "sigmoid") if c.gated_rnn else ("gru",)
    for k in range(len(model.rnn)):
        for kind in kinds:
            points[f"rnn_{k}_{kind}"] = (f"rnn.{k}.{kind}", "output")
        if c.gated_rnn:
            points[f"rnn_{k}_gate"] = (f"rnn.{k}", "output")
    points["head_frame"] = ("head.frame", "output")
    if c.head == "attention":
        points["head_attention"] = ("head.attention", "output")
    points["head_pool"] = ("head", "clipwise")
    return points


@dataclass
class Capture:
    """devinet's value of every canonical layer (channels-last numpy), and the forward's error if any.

    ``how[role]`` is 'hook' (a module's own output or input), 'rerun' (a submodule called on
    its parent's captured input) or 'derived' (computed from other captured tensors).
    """

    values: dict[str, np.ndarray]
    how: dict[str, str]
    error: str | None = None


def capture(model: nn.Module, x: np.ndarray, dtype: torch.dtype = torch.float32) -> Capture:
    """Run a copy of ``model`` in ``dtype`` on ``x`` (N, T, F) and record every canonical layer.

    A forward that raises (a model broken on purpose, say) still returns what was captured
    before the failure, with the error message.
    """
    model = copy.deepcopy(model).to(dtype).eval()
    modules = dict(model.named_modules())
    points = probe_points(model)
    values: dict[str, torch.Tensor] = {}
    parent_inputs: dict[str, torch.Tensor] = {}
    handles = _register_hooks(modules, points, values, parent_inputs)
    error = None
    try:
        with torch.no_grad():
            model(torch.as_tensor(x).to(dtype))
    except Exception as exc:  # a broken model is what this tool reports on, not a crash
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        for handle in handles:
            handle.remove()
    how = {role: "hook" for role in values}
    for role, (name, _) in points.items():
        parent = name.rpartition(".")[0]
        if role in values or parent not in parent_inputs:
            continue
        try:
            with torch.no_grad():
                values[role] = modules[name](parent_inputs[parent]).detach()
            how[role] = "rerun"
        except Exception as exc:
            error = error or f"{type(exc).__name__} re-running {name}: {exc}".splitlines()[0]
    for role in _derive(values):
        how[role] = "derived"
    return Capture({k: _channels_last(v).cpu().numpy() for k, v in values.items()}, how, error)


def _register_hooks(modules: dict[str, nn.Module], points: dict[str, tuple[str, str]], values: dict[str, torch.Tensor],
                    parent_inputs: dict[str, torch.Tensor]) -> list:
    """Hooks that put each probe point's tensor in ``values[role]`` and the input of each recurrent
    layer's parent (the gated BiGRU) in ``parent_inputs[parent name]``; returns their handles."""

    def hook_for(role: str, where: str) -> Callable:
        def hook(module, inputs, output=None):
            if where == "input":
                values[role] = inputs[0].detach()
            elif where == "clipwise":
                values[role] = output["clipwise"].detach()
            else:
                values[role] = output.detach()
        return hook

    def keep_input(name: str) -> Callable:
        def hook(module, inputs):
            parent_inputs[name] = inputs[0].detach()
        return hook

    handles = []
    for role, (name, where) in points.items():
        if name not in modules:
            continue
        hook = hook_for(role, where)
        if where == "input":
            handles.append(modules[name].register_forward_pre_hook(hook))
        else:
            handles.append(modules[name].register_forward_hook(hook))
        parent = name.rpartition(".")[0]
        if role.startswith("rnn_") and parent in modules:
            handles.append(modules[parent].register_forward_pre_hook(keep_input(parent)))
    return handles


def _derive(values: dict[str, torch.Tensor]) -> list[str]:
    """Add tensors of the original graph with no devinet module, from captured ones (NCHW); returns their roles."""
    before = set(values)
    for role in [r for r in values if re.fullmatch(r"gcnn_\d+_bn", r)]:
        prefix = role[: -len("_bn")]
        if f"{prefix}_glu" not in values:  # only a gated block splits its BatchNorm output
            continue
        first, second = values[role].chunk(2, dim=1)
        values[f"{prefix}_split_a"], values[f"{prefix}_split_b"] = first, second
        values[f"{prefix}_act_a"], values[f"{prefix}_act_b"] = first, torch.sigmoid(second)
    if "head_frame" in values and "head_attention" in values:
        values["head_weighted"] = values["head_frame"] * values["head_attention"]
    return sorted(set(values) - before)


__all__ = ["Capture", "capture", "probe_points"]

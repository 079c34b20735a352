"""Against the original itself: devinet replays a genuine Keras 2.0.8 + Theano training recording.

The keras208 ``NAME_train.npz`` files (../shared/reference/keras208, README there) hold three
``train_on_batch`` steps of the original compile line (Adam, binary cross-entropy) from the
checkpoint ``NAME.h5``: the inputs and targets, the loss of each step and every weight after
steps 1 and 3, BatchNorm moving statistics included. :func:`replay_recording` converts the
checkpoint, trains devinet (training mode, :class:`devinet.optim.Keras2Adam` with the
recording's optimizer arguments) on the same batches and compares.

Definitions, for every weight ``W`` (devinet's ``num_batches_tracked`` counters left out:
Keras has none), ``W0`` its value in the checkpoint, ``K`` the value Keras recorded after the
step and ``D`` devinet's: the step's size is ``max|K - W0|``, the error ``max|D - K|``, and
``rel_step`` their ratio. The recording is float32 (Theano), so devinet in float64 sees its
rounding too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from devinet.errors import FileFormatError
from devinet.model import DeviNet
from devinet.optim import Keras2Adam

from .topology import KerasFile
from .training import OptimizerFactory, State, WeightError, devinet_weights, train_devinet, weight_errors

#: losses of steps 1 and 2 within this relative error of the recorded ones (the issue's bound)
LOSS_TOLERANCE = 2e-5
#: the median over tensors of ``rel_step`` after step 1 (the issue's bound)
STEP_TOLERANCE = 1e-3
#: the largest ``rel_step`` of the BatchNorm moving statistics after step 1. Measured, float32 and
#: float64: 8.0e-6 and 8.4e-6 (crnn_sed), 8.3e-6 and 7.7e-6 (crnn_at); torch's moving-variance
#: update shows 6.7e-4 (crnn_sed), which the median above does not see (7 of 53 tensors).
BN_STEP_TOLERANCE = 1e-4

_RECORDED_WEIGHT = re.compile(r"^w_k(\d+)_(\d{3})$")


@dataclass
class TrainRecording:
    """A genuine Keras 2.0.8 ``train_on_batch`` recording (keras208 ``NAME_train.npz`` + ``_meta.json``).

    Attributes:
        x, y: (K, N, T, F) inputs and (K, N, C) targets of the K steps, float32.
        loss: (K,) the loss each step returned (computed before its update).
        weights: step (1-based) -> Keras weight name (``conv2d_1/kernel``) -> value after that step.
        initial_sums: Keras weight name -> sum of its initial value (to confirm the checkpoint).
        optimizer_config: the compiled optimizer's arguments (lr, beta_1, beta_2, epsilon, decay),
            Keras' names: ``Keras2Adam(params, **optimizer_config)`` is that optimizer.
    """

    path: Path
    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    weights: dict[int, dict[str, np.ndarray]]
    initial_sums: dict[str, float]
    optimizer_config: dict[str, float]

    @classmethod
    def from_npz(cls, path: str | Path) -> "TrainRecording":
        path = Path(path)
        meta_path = path.with_name(path.name.removesuffix(".npz") + "_meta.json")
        for p in (path, meta_path):
            if not p.is_file():
                raise FileFormatError(p, "no such file")
        try:
            config = json.loads(meta_path.read_text())["optimizer_config"]
            optimizer_config = {k: float(config[k]) for k in ("lr", "beta_1", "beta_2", "epsilon", "decay")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FileFormatError(meta_path, f"not a keras208 training-recording meta file ({exc})") from None
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["weight_names"]]
                weights: dict[int, dict[str, np.ndarray]] = {}
                for key in z.files:
                    match = _RECORDED_WEIGHT.match(key)
                    if match:
                        weights.setdefault(int(match.group(1)) + 1, {})[names[int(match.group(2))]] = z[key]
                recording = cls(path, z["x"], z["y"], z["loss"], dict(sorted(weights.items())),
                                dict(zip(names, map(float, z["init_sum"]))), optimizer_config)
        except (KeyError, ValueError, IndexError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise FileFormatError(path, f"not a keras208 training recording ({exc})") from None
        if recording.x.ndim != 4 or recording.y.shape[:2] != recording.x.shape[:2] or len(recording.loss) != len(recording.x):
            raise FileFormatError(path, f"inconsistent shapes: x {recording.x.shape}, y {recording.y.shape}, "
                                        f"loss {recording.loss.shape}")
        return recording

    def batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(zip(self.x, self.y))

    def optimizer(self, params: Iterable[nn.Parameter]) -> Keras2Adam:
        """The recorded run's optimizer (its float32-rounded lr and betas included) on ``params``."""
        return Keras2Adam(params, **self.optimizer_config)

    def states(self, file: KerasFile, template: DeviNet, flip: bool) -> dict[int, State]:
        """The recorded weights after each recorded step as devinet state entries, converted like ``file``.

        ``file`` is the checkpoint the recording started from (its weights are the initial
        ones: checked against the recorded sums); every recorded weight must map to one of it.
        """
        from .convert import keras_weights_to_state

        where = {origin.split("/", 1)[1]: (layer.name, weight)
                 for layer in file.layers for weight, origin in layer.origins.items()}
        problems = sorted(set(self.initial_sums) ^ set(where))
        if problems:
            raise FileFormatError(self.path, f"does not record the weights of {file.path.name}: "
                                             f"{', '.join(problems[:5])}")
        for name, (layer, weight) in where.items():
            value = float(np.sum(file.layer(layer).weights[weight], dtype=np.float64))
            if not math.isclose(value, self.initial_sums[name], rel_tol=1e-6, abs_tol=1e-6):
                raise FileFormatError(self.path, f"did not start from {file.path.name}: {name} sums to "
                                                 f"{self.initial_sums[name]}, the file's to {value}")
        template = copy.deepcopy(template).double()
        states = {}
        for step, arrays in self.weights.items():
            layers = [dataclasses.replace(layer, weights={w: arrays[o.split("/", 1)[1]] for w, o in layer.origins.items()})
                      for layer in file.layers]
            state = keras_weights_to_state(dataclasses.replace(file, layers=layers), template, flip=flip)
            states[step] = {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
        return states


def train_recording_for(path: str | Path) -> Path | None:
    """The keras208 training recording beside a checkpoint: NAME.h5 and NAME_weights.h5 -> NAME_train.npz."""
    path = Path(path)
    candidate = path.with_name(f"{path.name.split('.')[0].removesuffix('_weights')}_train.npz")
    return candidate if candidate.is_file() else None


# ----------------------------------------------------------------------------- the replay
def _median(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.median(values)) if values else math.nan


@dataclass
class RecordingComparison:
    """devinet replaying a recording in one dtype.

    ``losses``: (recorded, devinet) per step; ``weights``: recorded step -> every weight's error
    against the recorded value (``rel_step`` as defined in the module docstring).
    """

    recording: str
    dtype: str
    losses: list[tuple[float, float]]
    weights: dict[int, list[WeightError]]

    def loss_errors(self) -> list[float]:
        return [abs(got - want) / abs(want) for want, got in self.losses]

    def median_rel_step(self, step: int) -> float:
        return _median(w.rel_step for w in self.weights[step])

    def max_rel_step(self, step: int, batchnorm_statistics: bool = False) -> float:
        return max((w.rel_step for w in self.weights[step]
                    if not batchnorm_statistics or w.name.endswith(("running_mean", "running_var"))), default=math.nan)

    @property
    def passed(self) -> bool:
        errors = self.loss_errors()[:2]
        return (all(e <= LOSS_TOLERANCE for e in errors) and self.median_rel_step(1) <= STEP_TOLERANCE
                and self.max_rel_step(1, batchnorm_statistics=True) <= BN_STEP_TOLERANCE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recording": self.recording, "dtype": self.dtype, "passed": self.passed,
            "tolerances": {"loss_steps_1_2": LOSS_TOLERANCE, "median_rel_step_1": STEP_TOLERANCE,
                           "batchnorm_max_rel_step_1": BN_STEP_TOLERANCE},
            "losses": [{"step": k + 1, "recorded": want, "devinet": got, "rel_error": e}
                       for k, ((want, got), e) in enumerate(zip(self.losses, self.loss_errors()))],
            "weights": {str(step): {"median_rel_step": self.median_rel_step(step),
                                    "max_rel_step": self.max_rel_step(step),
                                    "batchnorm_max_rel_step": self.max_rel_step(step, batchnorm_statistics=True),
                                    "tensors": {w.name: dataclasses.asdict(w) for w in errors}}
                        for step, errors in self.weights.items()},
        }


def replay_recording(file: KerasFile, model: DeviNet, recording: TrainRecording, dtype: torch.dtype, *,
                     flip: bool, optimizer: OptimizerFactory | None = None) -> RecordingComparison:
    """Train ``model`` (the checkpoint ``file`` converted; ``flip``: its kernels were flipped) on the
    recording's batches in ``dtype`` and compare with what Keras 2.0.8 recorded.

    ``optimizer`` defaults to the recording's own (:meth:`TrainRecording.optimizer`).
    """
    states = recording.states(file, model, flip)
    initial = devinet_weights(model)
    runs = train_devinet(model, recording.batches(), dtype, optimizer or recording.optimizer)
    weights = {step: weight_errors(runs[step - 1].weights, state, initial) for step, state in states.items()
               if step <= len(runs)}
    return RecordingComparison(recording.path.name, str(dtype).removeprefix("torch."),
                               [(float(want), run.loss) for want, run in zip(recording.loss, runs)], weights)


def format_recording(comparison: RecordingComparison) -> str:
    """Losses per step and the recorded steps' weight errors, on a few lines."""
    losses = ", ".join(f"step {k + 1} {e:.2e}" for k, e in enumerate(comparison.loss_errors()))
    lines = [f"[{comparison.dtype}] vs genuine Keras 2.0.8 ({comparison.recording}): loss rel error {losses}"]
    for step in comparison.weights:
        lines.append(f"  weights after step {step}: error / step size, median over tensors "
                     f"{comparison.median_rel_step(step):.2e}, largest {comparison.max_rel_step(step):.2e}, "
                     f"BatchNorm statistics largest {comparison.max_rel_step(step, batchnorm_statistics=True):.2e}")
    lines.append(f"  {'PASS' if comparison.passed else 'FAIL'} (losses of steps 1-2 <= {LOSS_TOLERANCE:.0e}, "
                 f"step-1 median <= {STEP_TOLERANCE:.0e}, BatchNorm <= {BN_STEP_TOLERANCE:.0e})")
    return "\n".join(lines)

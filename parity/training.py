"""Training parity: devinet and a Keras reference take the same training steps from the same weights.

Both sides start from one Keras file's weights (devinet: the file converted; Keras: the
:mod:`keras_reference` model holding the file's own weights, read without devinet), train in
training mode on the same seeded batches, and are compared after every step: the loss each
step returned (computed before its update) and every weight, BatchNorm moving statistics
included. Both train as Keras 2.0.8 did: Keras 2.0.8's Adam (:class:`devinet.optim.Keras2Adam`,
:class:`keras_reference.Keras2Adam`), its BatchNorm moving-variance update and its binary
cross-entropy (:func:`devinet.losses.keras2_binary_crossentropy`).

Errors, per step: a weight's is ``max|devinet - keras| / max|keras|`` (its ``rel``; ``rel_step``
divides by the step's size ``max|keras - initial|`` instead), the loss's
``|devinet - keras| / |keras|``. In float64 both must stay within :data:`TOLERANCE_FLOAT64`.
In float32, rounding noise is amplified by Adam's normalisation (a gradient element whose value
is below its rounding error gets a step of either sign), so float32 is judged against a noise
floor measured the same way: two runs whose inputs differ by one part in 10^7, of devinet and
of the Keras reference (whichever is larger: TensorFlow's float32 gradients of the first
convolutions are measurably noisier than torch's, see docs/training-parity.md).

Beside a keras208 checkpoint, its genuine Keras 2.0.8 + Theano ``train_on_batch`` recording
(``NAME_train.npz``) is replayed too: :mod:`parity.train_recording`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from devinet.errors import InputError
from devinet.losses import keras2_binary_crossentropy
from devinet.model import DeviNet
from devinet.optim import Keras2Adam

from .topology import KerasFile, KerasLayer

#: float64 on both sides: measured largest errors are given in docs/training-parity.md; the
#: issue's bound, far above float64 rounding and far below a torch-style Adam (~1e-5 after one step)
TOLERANCE_FLOAT64 = 1e-9
#: relative perturbation of the input of the second devinet run that measures the float32 noise floor
NOISE_PERTURBATION = 1e-7
#: float32 passes while every step's error is at most this many times the noise floor of that step
NOISE_MARGIN = 10.0
#: lower bounds of the float32 noise floor (a lucky noise run can agree better than float32 rounding)
NOISE_FLOOR_MIN = {"weight": 1e-6, "loss": 1e-6}

Batches = Sequence[tuple[np.ndarray, np.ndarray]]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
State = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- batches and runs
def training_batches(steps: int, batch: int, n_frames: int, n_mels: int, num_classes: int,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` seeded batches: standard-normal clips (batch, n_frames, n_mels) and multi-hot
    targets (batch, num_classes) with 1 to 3 classes each, float64."""
    if steps < 1 or batch < 1:
        raise InputError(f"training parity needs at least one step and one clip, got {steps} steps of {batch}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        x = rng.standard_normal((batch, n_frames, n_mels))
        y = np.zeros((batch, num_classes))
        for row in y:
            row[rng.choice(num_classes, size=rng.integers(1, 4), replace=False)] = 1.0
        out.append((x, y))
    return out


@dataclass
class TrainStep:
    """What one training step left: the loss it returned (before its update) and every weight after it."""

    loss: float
    weights: State


def devinet_weights(model: nn.Module) -> State:
    """Every state entry of ``model`` as float64 arrays (the ``num_batches_tracked`` counters left out:
    Keras has none)."""
    return {k: np.array(v.detach().cpu().double().numpy(), copy=True)  # a float64 tensor's numpy() is a view
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def train_devinet(model: DeviNet, batches: Batches, dtype: torch.dtype,
                  optimizer: OptimizerFactory = Keras2Adam) -> list[TrainStep]:
    """Train a copy of ``model`` in ``dtype`` one step per batch (training mode, Keras 2.0.8's loss)."""
    model = copy.deepcopy(model).to(dtype).train()
    opt = optimizer(model.parameters())
    steps = []
    for x, y in batches:
        loss = keras2_binary_crossentropy(model(torch.as_tensor(x, dtype=dtype))["clipwise"],
                                          torch.as_tensor(y, dtype=dtype))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps.append(TrainStep(loss.item(), devinet_weights(model)))
    return steps


def keras_state(keras_model, template: DeviNet) -> State:
    """A Keras 3 reference model's weights as devinet state entries, through the conversion table.

    ``template`` gives the architecture; the arrays are float64 holding Keras' values exactly.
    """
    from .convert import keras_weights_to_state
    from .keras3_files import keras_variables

    if next(template.parameters()).dtype != torch.float64:
        template = copy.deepcopy(template).double()
    layers: dict[str, KerasLayer] = {}
    for (layer, weight), variable in keras_variables(keras_model).items():
        entry = layers.setdefault(layer, KerasLayer(name=layer, class_name=None, role=layer))
        entry.weights[weight] = np.array(variable.numpy(), copy=True)  # numpy() may share the variable's buffer
    file = KerasFile(path=Path(keras_model.name), kind="keras3", layers=list(layers.values()))
    state = keras_weights_to_state(file, template, flip=False)
    return {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def train_keras(preset: str, template: DeviNet, weights: dict[str, dict[str, np.ndarray]], batches: Batches,
                dtype: str) -> list[TrainStep]:
    """Train the Keras 3 reference holding ``weights`` in ``dtype`` one step per batch, with Keras 2.0.8's
    Adam, BatchNorm update and loss (:func:`keras_reference.keras2_train_step`)."""
    import keras

    import keras_reference as kr

    from .keras3_files import assign_keras_weights, check_reference_buildable, floatx
    from .mapping import IMAGE_INPUT_PRESETS

    config = template.config
    check_reference_buildable(preset, config)
    with floatx(dtype):
        model = kr.build(preset, blocks=config.num_blocks, num_classes=config.num_classes, n_mels=config.n_mels,
                         attention_eps=config.attention_eps, n_frames=None, keras2_batchnorm=True)
        step = kr.keras2_train_step(model, kr.Keras2Adam())
    assign_keras_weights(model, weights)
    template = copy.deepcopy(template).double()
    steps = []
    for x, y in batches:
        feed = x[..., None] if preset in IMAGE_INPUT_PRESETS else x
        loss = step(keras.ops.convert_to_tensor(feed, dtype=dtype), keras.ops.convert_to_tensor(y, dtype=dtype))
        steps.append(TrainStep(float(loss), keras_state(model, template)))
    return steps


# ----------------------------------------------------------------------------- comparison
@dataclass
class WeightError:
    """One weight after one step: ``max_abs`` = max|got - ref|, ``rel`` = that / max|ref|,
    ``rel_step`` = that / max|ref - initial| (the step's size)."""

    name: str
    max_abs: float
    rel: float
    rel_step: float


@dataclass
class StepComparison:
    """One training step of two runs (``ref`` the reference, ``got`` the one checked)."""

    step: int
    loss_ref: float
    loss_got: float
    weights: list[WeightError]

    @property
    def rel_loss_error(self) -> float:
        return abs(self.loss_got - self.loss_ref) / abs(self.loss_ref)

    @property
    def max_rel_weight_error(self) -> float:
        return max((w.rel for w in self.weights), default=math.nan)

    @property
    def worst_weight(self) -> str:
        return max(self.weights, key=lambda w: w.rel).name if self.weights else "-"

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss_reference": self.loss_ref, "loss": self.loss_got,
                "rel_loss_error": self.rel_loss_error, "max_rel_weight_error": self.max_rel_weight_error,
                "worst_weight": self.worst_weight, "weights": {w.name: dataclasses.asdict(w) for w in self.weights}}


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def weight_errors(got: State, ref: State, initial: State) -> list[WeightError]:
    """Every weight of ``ref`` compared with ``got`` (missing or misshaped ones count as infinitely wrong)."""
    out = []
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            out.append(WeightError(name, math.inf, math.inf, math.inf))
            continue
        max_abs = float(np.abs(g - r).max(initial=0.0))
        step = float(np.abs(r - initial[name]).max(initial=0.0))
        out.append(WeightError(name, max_abs, _ratio(max_abs, float(np.abs(r).max(initial=0.0))),
                               _ratio(max_abs, step)))
    return out


def compare_runs(ref: Sequence[TrainStep], got: Sequence[TrainStep], initial: State) -> list[StepComparison]:
    """Step by step: the losses and every weight of ``got`` against ``ref``."""
    return [StepComparison(k + 1, r.loss, g.loss, weight_errors(g.weights, r.weights, initial))
            for k, (r, g) in enumerate(zip(ref, got))]


def _worst(steps: Sequence[StepComparison], what: str) -> float | None:
    if not steps:
        return None
    values = [s.max_rel_weight_error if what == "weight" else s.rel_loss_error for s in steps]
    return math.inf if any(math.isnan(v) for v in values) else max(values)


# ----------------------------------------------------------------------------- the report
@dataclass
class TrainParityReport:
    """K training steps of devinet against the Keras reference, float64 and float32.

    ``noise_devinet`` / ``noise_keras`` compare two float32 runs of devinet / of the Keras
    reference whose inputs differ by :data:`NOISE_PERTURBATION`: the floor that float32
    rounding alone reaches.
    """

    source: str
    preset: str
    steps: int
    batch: int
    seed: int
    float64: list[StepComparison] = field(default_factory=list)
    float32: list[StepComparison] = field(default_factory=list)
    noise_devinet: list[StepComparison] = field(default_factory=list)
    noise_keras: list[StepComparison] = field(default_factory=list)
    recording: list = field(default_factory=list)  # parity.train_recording.RecordingComparison per dtype
    notes: list[str] = field(default_factory=list)

    def noise_floor(self, step: int, what: str) -> float:
        """The float32 floor of ``what`` ('weight' or 'loss') up to ``step`` (1-based): the largest noise of
        either side in the steps so far, at least NOISE_FLOOR_MIN."""
        seen = self.noise_devinet[:step] + self.noise_keras[:step]
        return max([NOISE_FLOOR_MIN[what]] + [_worst([s], what) for s in seen])

    def float64_passed(self) -> bool | None:
        if not self.float64:
            return None
        return all(_worst(self.float64, what) <= TOLERANCE_FLOAT64 for what in ("weight", "loss"))

    def float32_passed(self) -> bool | None:
        if not self.float32:
            return None
        return all(_worst([s], what) <= NOISE_MARGIN * self.noise_floor(s.step, what)
                   for s in self.float32 for what in ("weight", "loss"))

    @property
    def passed(self) -> bool:
        return (all(v is not False for v in (self.float64_passed(), self.float32_passed()))
                and all(c.passed for c in self.recording))

    def to_dict(self) -> dict[str, Any]:
        float32 = None
        if self.float32:
            float32 = {
                "max_rel_weight_error": _worst(self.float32, "weight"),
                "max_rel_loss_error": _worst(self.float32, "loss"),
                "noise_floor": {
                    "perturbation": NOISE_PERTURBATION,
                    "max_rel_weight_error": self.noise_floor(self.steps, "weight"),
                    "max_rel_loss_error": self.noise_floor(self.steps, "loss"),
                    **{side: {"max_rel_weight_error": _worst(runs, "weight"),
                              "max_rel_loss_error": _worst(runs, "loss"), "steps": [s.to_dict() for s in runs]}
                       for side, runs in (("devinet", self.noise_devinet), ("keras", self.noise_keras))},
                },
                "margin": NOISE_MARGIN, "passed": self.float32_passed(),
                "steps": [s.to_dict() for s in self.float32],
            }
        train = {
            "steps": self.steps, "batch": self.batch, "seed": self.seed,
            "max_rel_weight_error": _worst(self.float64, "weight"),
            "max_rel_loss_error": _worst(self.float64, "loss"),
            "tolerance": TOLERANCE_FLOAT64, "passed": self.float64_passed(),
            "float64_steps": [s.to_dict() for s in self.float64],
            "float32": float32,
            "recording": [c.to_dict() for c in self.recording] or None,
        }
        return {"source": self.source, "preset": self.preset, "reference": "keras_reference (Keras 3) trained "
                "with Keras 2.0.8's Adam, BatchNorm update and loss", "passed": self.passed, "notes": self.notes,
                "train": train}


# ----------------------------------------------------------------------------- whole runs
def perturbed(batches: Batches, factor: float = NOISE_PERTURBATION) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same batches with every input scaled by ``1 + factor`` (targets unchanged)."""
    return [(x * (1.0 + factor), y) for x, y in batches]


def _training_runs(preset: str, model: DeviNet, weights, batches: Batches, dtypes: Sequence[torch.dtype],
                   optimizer: OptimizerFactory) -> list[tuple[str, Callable[[], list[TrainStep]]]]:
    """(label, run) of every training run a comparison in ``dtypes`` needs, the float32 noise runs included."""
    runs = []
    if torch.float64 in dtypes:
        runs += [("float64 keras", lambda: train_keras(preset, model, weights, batches, "float64")),
                 ("float64 devinet", lambda: train_devinet(model, batches, torch.float64, optimizer))]
    if torch.float32 in dtypes:
        runs += [("float32 keras", lambda: train_keras(preset, model, weights, batches, "float32")),
                 ("float32 devinet", lambda: train_devinet(model, batches, torch.float32, optimizer)),
                 ("float32 devinet noise", lambda: train_devinet(model, perturbed(batches), torch.float32, optimizer)),
                 ("float32 keras noise", lambda: train_keras(preset, model, weights, perturbed(batches), "float32"))]
    return runs


def train_parity(source: str | Path, steps: int, *, checkpoint: str | Path | None = None, preset: str | None = None,
                 theano_flip: str = "auto", seed: int = 0, batch: int = 2,
                 dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
                 optimizer: OptimizerFactory = Keras2Adam, replay_genuine: bool = True,
                 progress: Callable | None = None) -> TrainParityReport:
    """``steps`` training steps of devinet and of the Keras reference from ``source``'s weights, compared.

    The devinet side is ``source`` converted (or ``checkpoint``) trained with ``optimizer``
    (Keras 2.0.8's Adam unless a test plants another); the Keras side is ``keras_reference``
    holding the weights read straight from ``source``. Each batch has ``batch`` seeded random
    clips of 240 frames. Where ``source`` is a keras208 checkpoint with its genuine training
    recording beside it (``NAME_train.npz``), devinet also replays that (``report.recording``)
    unless ``replay_genuine`` is False.
    ``progress`` wraps the list of runs (e.g. ``tqdm``).
    """
    import devinet
    from devinet.config import CVSSP_NUM_FRAMES

    from .convert import keras_to_torch, keras_weights_of_file, read_keras_file, resolve_flip
    from .mapping import detect
    from .train_recording import TrainRecording, replay_recording, train_recording_for

    file = read_keras_file(source)
    if checkpoint is not None:
        model = devinet.load(checkpoint)
        detection = detect(file, preset or (model.config.name if model.config.name != "custom" else None))
        side = f"checkpoint {Path(checkpoint).name}"
    else:
        conversion = keras_to_torch(file, preset=preset, theano_flip=theano_flip)
        model, detection = conversion.model, conversion.detection
        side = f"{Path(source).name} converted as {detection.preset}"
    flip = resolve_flip(file, theano_flip)
    weights = keras_weights_of_file(file, flip)
    c = model.config
    batches = training_batches(steps, batch, CVSSP_NUM_FRAMES, c.n_mels, c.num_classes, seed)
    initial = devinet_weights(model)
    report = TrainParityReport(source=str(source), preset=detection.preset, steps=steps, batch=batch, seed=seed,
                               notes=[f"devinet side: {side}, optimizer {getattr(optimizer, '__name__', optimizer)}",
                                      *detection.notes])
    loop = progress or (lambda items, **_: items)
    runs = _training_runs(detection.preset, model, weights, batches, dtypes, optimizer)
    done = {label: run() for label, run in loop(runs, desc="training parity")}
    if "float64 keras" in done:
        report.float64 = compare_runs(done["float64 keras"], done["float64 devinet"], initial)
    if "float32 keras" in done:
        report.float32 = compare_runs(done["float32 keras"], done["float32 devinet"], initial)
        report.noise_devinet = compare_runs(done["float32 devinet"], done["float32 devinet noise"], initial)
        report.noise_keras = compare_runs(done["float32 keras"], done["float32 keras noise"], initial)
    recording = train_recording_for(source) if file.is_legacy and replay_genuine else None
    if recording is not None:
        genuine = TrainRecording.from_npz(recording)
        report.recording = [replay_recording(file, model, genuine, d, flip=flip, optimizer=optimizer)
                            for d in loop(sorted(dtypes, key=str, reverse=True), desc="genuine recording")]
    return report


# ----------------------------------------------------------------------------- formatting
def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def _row(label: str, values: Iterable[str], width: int) -> str:
    return f"{label:<{width}}" + "".join(f"{v:>11}" for v in values)


def _table(steps: Sequence[StepComparison], noise: Sequence[Sequence[StepComparison]] = ()) -> list[str]:
    names = [w.name for w in steps[0].weights] if steps else []
    width = max([len(n) for n in names] + [26])
    lines = [_row("", (f"step {s.step}" for s in steps), width),
             _row("loss (keras)", (f"{s.loss_ref:.6f}" for s in steps), width),
             _row("loss rel error", (_num(s.rel_loss_error) for s in steps), width)]
    for side, runs in zip(("devinet", "keras"), noise):
        lines.append(_row(f"  noise, loss ({side})", (_num(s.rel_loss_error) for s in runs), width))
    if noise:
        lines.append(_row("max rel weight error", (_num(s.max_rel_weight_error) for s in steps), width))
    for side, runs in zip(("devinet", "keras"), noise):
        lines.append(_row(f"  noise, weights ({side})", (_num(s.max_rel_weight_error) for s in runs), width))
    lines += [_row(name, (_num(s.weights[i].rel) for s in steps), width) for i, name in enumerate(names)]
    return lines


def format_train_report(report: TrainParityReport) -> str:
    """Per dtype: the losses, their relative errors and every weight's relative error after each step."""
    lines = [f"{Path(report.source).name} ({report.preset}): {report.steps} training steps of {report.batch} "
             f"random clips (seed {report.seed}), devinet vs keras_reference, both training as Keras 2.0.8; "
             "weight error max|devinet - keras| / max|keras|, loss error |devinet - keras| / keras"]
    if report.float64:
        verdict = "PASS" if report.float64_passed() else "FAIL"
        lines += ["", f"[float64] tolerance {TOLERANCE_FLOAT64:.0e}", *_table(report.float64),
                  f"{verdict}: largest weight error {_num(_worst(report.float64, 'weight'))}, "
                  f"loss error {_num(_worst(report.float64, 'loss'))}"]
    if report.float32:
        verdict = "PASS" if report.float32_passed() else "FAIL"
        floor_w, floor_l = report.noise_floor(report.steps, "weight"), report.noise_floor(report.steps, "loss")
        lines += ["", f"[float32] judged against {NOISE_MARGIN:g} x the noise floor: the larger error between two "
                      f"runs of one side whose inputs differ by {NOISE_PERTURBATION:.0e}, steps so far",
                  *_table(report.float32, (report.noise_devinet, report.noise_keras)),
                  f"{verdict}: largest weight error {_num(_worst(report.float32, 'weight'))} (noise floor "
                  f"{_num(floor_w)}), loss error {_num(_worst(report.float32, 'loss'))} (noise floor {_num(floor_l)})"]
    if report.recording:
        from .train_recording import format_recording

        lines += ["", *(format_recording(c) for c in report.recording)]
    lines += [f"note: {n}" for n in report.notes]
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def run_cli(args) -> int:
    """``devinet parity SRC --train-steps K``: the training parity, printed and optionally written (--report)."""
    import sys

    from tqdm.auto import tqdm

    from devinet._io import atomic_write_text, check_destination

    if args.train_steps < 1:
        raise InputError(f"--train-steps must be at least 1, got {args.train_steps}")
    if args.batch < 1:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    if args.reference:
        raise InputError("--reference (a recording of layer outputs) does not apply to --train-steps")
    dtypes = {"both": (torch.float64, torch.float32), "float32": (torch.float32,),
              "float64": (torch.float64,)}[args.dtype]
    if args.report:
        check_destination(args.report, force=args.force)
    report = train_parity(args.src, args.train_steps, checkpoint=args.checkpoint, preset=args.preset,
                          theano_flip=args.theano_flip, seed=args.seed, batch=args.batch, dtypes=dtypes,
                          progress=lambda items, **kw: tqdm(items, file=sys.stderr, leave=False, **kw))
    text = format_train_report(report)
    print(text)
    if args.report:
        payload = (json.dumps(report.to_dict(), indent=2, allow_nan=True) + "\n" if args.report.endswith(".json")
                   else text + "\n")
        atomic_write_text(args.report, payload)
    return 0 if report.passed else 1

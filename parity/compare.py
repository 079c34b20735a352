"""Layer-by-layer comparison of a devinet model with a Keras reference, in float32 and float64.

The devinet side is captured layer by layer by :func:`parity.capture.capture` (hooks, re-run
GRUs, derived layers: see there).

Two kinds of reference:

- :class:`Recording`: outputs recorded by real Keras 2.0.8 (the keras208 ``*_ref.npz``): per
  layer its statistics, 256 sampled values and, for later layers, the full output;
- a running Keras 3 model (:func:`keras_layer_outputs`): every layer's full output.

Errors are absolute, and relative to ``max(1, max|reference|)`` (``max_rel``); a layer passes
when ``max_rel <= tolerance``. Where only samples and statistics are stored, the error is the
largest over the sampled values and over the per-element statistics (mean, mean |x|, rms, min,
max), each of which differs by at most the true max error: a lower bound of it.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from devinet.errors import FileFormatError

from .capture import capture

#: float32 tolerance of the issue (relative to max(1, max|ref|))
TOLERANCE_FLOAT32 = 1e-5
#: float64 devinet against a float32 recording: what is left is the recording's own float32
#: rounding, with a margin, far below the smallest planted mistake (docs/benchmarks.md, "Code choices")
TOLERANCE_FLOAT64_VS_FLOAT32 = 2e-6
#: float64 on both sides (Keras 3 reference built in float64): room for other BLAS builds, far
#: below a mapping bug (docs/benchmarks.md, "Code choices")
TOLERANCE_FLOAT64 = 1e-12

#: statuses that do not fail a report
PASSING = ("ok", "skipped")


# ----------------------------------------------------------------------------- references
@dataclass
class LayerReference:
    """What a reference knows of one layer's output."""

    name: str
    kind: str
    shape: tuple[int, ...]
    full: np.ndarray | None = None
    stats: np.ndarray | None = None   # sum, abs_sum, sq_sum, min, max
    idx: np.ndarray | None = None     # flat C-order indices
    val: np.ndarray | None = None

    def scale(self) -> float:
        """max(1, max|reference|)."""
        if self.full is not None:
            return max(1.0, float(np.abs(self.full).max(initial=0.0)))
        return max(1.0, abs(float(self.stats[3])), abs(float(self.stats[4])))


@dataclass
class Recording:
    """Outputs recorded by real Keras 2.0.8 (a keras208 ``*_ref.npz``), read without pickle."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    layers: list[LayerReference]

    @classmethod
    def from_npz(cls, path: str | Path) -> "Recording":
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(path, "no such file")
        try:
            with np.load(path, allow_pickle=False) as z:
                names, kinds, stats = [str(n) for n in z["names"]], [str(k) for k in z["kinds"]], z["stats"]
                full_src = z["full_src"]
                layers = []
                for i, (name, kind) in enumerate(zip(names, kinds)):
                    shape = tuple(int(s) for s in z[f"shape_{i:03d}"])
                    src = int(full_src[i])
                    full = z[f"full_{src:03d}"].reshape(shape) if src >= 0 else None
                    layers.append(LayerReference(name, kind, shape, full, stats[i], z[f"idx_{i:03d}"],
                                                 z[f"val_{i:03d}"]))
                x, y = z["x"], z["y"]
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise FileFormatError(path, f"not a keras208 reference recording ({exc})") from None
        return cls(path, x, y, layers)


def recording_for(path: str | Path) -> Path | None:
    """The keras208 recording beside a checkpoint: NAME.h5 and NAME_weights.h5 -> NAME_ref.npz."""
    path = Path(path)
    stem = path.name.split(".")[0].removesuffix("_weights")
    candidate = path.with_name(f"{stem}_ref.npz")
    return candidate if candidate.is_file() else None


def keras_layer_outputs(keras_model, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every layer's output (name -> array, forward order) of a Keras 3 model on ``x`` (N, T, F), and its input."""
    import keras

    from keras_reference import build_intermediate_model

    names = [layer.name for layer in keras_model.layers if not isinstance(layer, keras.layers.InputLayer)]
    feed = x.astype(keras_model.inputs[0].dtype)
    if len(keras_model.inputs[0].shape) == 4:  # cnnrnn_at takes the image (N, T, F, 1)
        feed = feed[..., None]
    # A tensor, not an array: Keras would cast an array to floatx, rounding float64 input.
    tensor = keras.ops.convert_to_tensor(feed, dtype=feed.dtype)
    outputs = build_intermediate_model(keras_model, names)(tensor, training=False)
    return {name: np.asarray(outputs[name]) for name in names}, feed


def keras_references(outputs: Mapping[str, np.ndarray], kinds: Mapping[str, str] | None = None) -> list[LayerReference]:
    return [LayerReference(name, (kinds or {}).get(name, ""), tuple(a.shape), full=a) for name, a in outputs.items()]


# ----------------------------------------------------------------------------- comparison
@dataclass
class LayerRow:
    """One line of a parity report."""

    name: str
    role: str | None
    kind: str
    shape: tuple[int, ...]
    got_shape: tuple[int, ...] | None
    compared: str
    how: str
    max_abs: float | None
    max_rel: float | None
    status: str


def compare_layer(ref: LayerReference, role: str | None, got: np.ndarray | None, tolerance: float,
                  reached: bool, how: str = "hook") -> LayerRow:
    """Compare devinet's ``got`` (captured as ``how``: hook, rerun, derived) with one reference layer."""
    base = dict(name=ref.name, role=role, kind=ref.kind, shape=ref.shape, how=how if got is not None else "-")
    if role is None:
        return LayerRow(**base, got_shape=None, compared="-", max_abs=None, max_rel=None, status="skipped")
    if got is None:
        return LayerRow(**base, got_shape=None, compared="-", max_abs=None, max_rel=None,
                        status="missing" if reached else "not reached")
    if tuple(got.shape) != tuple(ref.shape):
        return LayerRow(**base, got_shape=tuple(got.shape), compared="-", max_abs=None, max_rel=None, status="shape")
    got = got.astype(np.float64)
    errors, compared = [], []
    if ref.full is not None:
        errors.append(float(np.abs(got - ref.full.astype(np.float64)).max(initial=0.0)))
        compared.append("full")
    else:
        if ref.idx is not None:
            errors.append(float(np.abs(got.reshape(-1)[ref.idx] - ref.val.astype(np.float64)).max(initial=0.0)))
            compared.append("samples")
        if ref.stats is not None:
            errors.append(float(np.abs(_per_element_stats(got) - _stats_per_element(ref.stats, got.size)).max()))
            compared.append("stats")
    max_abs = max(errors) if errors else math.nan
    max_rel = max_abs / ref.scale()
    ok = max_rel <= tolerance  # NaN fails
    return LayerRow(**base, got_shape=tuple(got.shape), compared="+".join(compared), max_abs=max_abs,
                    max_rel=max_rel, status="ok" if ok else "FAIL")


def _per_element_stats(a: np.ndarray) -> np.ndarray:
    return np.array([a.mean(), np.abs(a).mean(), math.sqrt(float(np.square(a).mean())), a.min(), a.max()])


def _stats_per_element(stats: np.ndarray, n: int) -> np.ndarray:
    s, abs_s, sq, lo, hi = (float(v) for v in stats)
    return np.array([s / n, abs_s / n, math.sqrt(max(sq, 0.0) / n), lo, hi])


@dataclass
class ParityReport:
    """Every layer of one comparison, in forward order."""

    title: str
    dtype: str
    reference: str
    tolerance: float
    rows: list[LayerRow]
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> int | None:
        return next((i for i, r in enumerate(self.rows) if r.status not in PASSING), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None and self.error is None

    def row(self, name: str) -> LayerRow:
        return next(r for r in self.rows if r.name == name)

    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows if r.max_rel is not None), default=math.nan)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"title": self.title, "dtype": self.dtype, "reference": self.reference,
                "tolerance": self.tolerance, "passed": self.passed, "error": self.error, "notes": self.notes,
                "first_divergence": self.rows[first].name if first is not None else None,
                "max_rel": self.max_rel(), "rows": [asdict(r) for r in self.rows]}


def compare(model: nn.Module, x: np.ndarray, references: Sequence[LayerReference], roles: Mapping[str, str | None],
            *, dtype: torch.dtype, tolerance: float, title: str, reference: str,
            final: tuple[str, np.ndarray] | None = None) -> ParityReport:
    """Compare ``model`` on ``x`` with every reference layer (``roles``: reference name -> canonical role).

    ``final`` optionally adds the reference model's output (name, array) as a last row
    against devinet's clip-wise output.
    """
    captured = capture(model, x, dtype)
    rows = []
    for ref in references:
        role = roles.get(ref.name)
        rows.append(compare_layer(ref, role, captured.values.get(role) if role else None, tolerance,
                                  reached=captured.error is None, how=captured.how.get(role, "-")))
    if final is not None:
        name, y = final
        ref = LayerReference(name, "model output", tuple(y.shape), full=y)
        rows.append(compare_layer(ref, "head_pool", captured.values.get("head_pool"), tolerance,
                                  reached=captured.error is None))
    return ParityReport(title=title, dtype=str(dtype).removeprefix("torch."), reference=reference,
                        tolerance=tolerance, rows=rows, error=captured.error)


def compare_with_recording(model: nn.Module, recording: Recording, roles: Mapping[str, str | None], *,
                           dtype: torch.dtype = torch.float32, tolerance: float | None = None,
                           title: str = "") -> ParityReport:
    """devinet against the Keras 2.0.8 recording, on the recording's own input."""
    if tolerance is None:
        tolerance = TOLERANCE_FLOAT32 if dtype == torch.float32 else TOLERANCE_FLOAT64_VS_FLOAT32
    return compare(model, recording.x, recording.layers, roles, dtype=dtype, tolerance=tolerance,
                   title=title or recording.path.name, reference=f"Keras 2.0.8 recording {recording.path.name}",
                   final=("model output (y)", recording.y))


def compare_with_keras(model: nn.Module, keras_model, x: np.ndarray, *, dtype: torch.dtype = torch.float32,
                       tolerance: float | None = None, title: str = "", reference: str = "") -> ParityReport:
    """devinet against a running Keras 3 model (its layer names are the canonical names)."""
    if tolerance is None:
        tolerance = TOLERANCE_FLOAT32 if dtype == torch.float32 else TOLERANCE_FLOAT64
    outputs, _ = keras_layer_outputs(keras_model, x)
    kinds = {layer.name: type(layer).__name__ for layer in keras_model.layers}
    references = keras_references(outputs, kinds)
    roles = {name: name for name in outputs}
    return compare(model, x, references, roles, dtype=dtype, tolerance=tolerance,
                   title=title or keras_model.name, reference=reference or f"Keras 3 model {keras_model.name}")


def parity_input(n_frames: int, n_mels: int, seed: int = 0, batch: int = 2) -> np.ndarray:
    """Seeded standard-normal clips plus one all-zero clip: (batch + 1, n_frames, n_mels) float64."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_normal((batch, n_frames, n_mels)), np.zeros((1, n_frames, n_mels))])


# ----------------------------------------------------------------------------- formatting
_MARKS = {"derived": " *", "rerun": " ~"}


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def format_report(report: ParityReport) -> str:
    """One line per layer in forward order (shape, max abs, max rel, status), first divergence marked."""
    first = report.first_divergence
    head = (f"{report.title} [{report.dtype}] vs {report.reference}; "
            f"tolerance {report.tolerance:.0e} relative to max(1, max|ref|)")
    width = max([len(r.name) for r in report.rows] + [5])
    rwidth = max([len(r.role or "-") + 2 for r in report.rows] + [7])
    lines = [head, f"{'layer':<{width}}  {'devinet':<{rwidth}}  {'shape':<18} {'checked':<13} "
                   f"{'max abs':>9} {'max rel':>9}  status"]
    for i, r in enumerate(report.rows):
        shape = "x".join(map(str, r.shape))
        if r.status == "shape":
            shape += f" (got {'x'.join(map(str, r.got_shape))})"
        role = (r.role or "-") + _MARKS.get(r.how, "")
        mark = "  <-- first divergence" if i == first else ""
        lines.append(f"{r.name:<{width}}  {role:<{rwidth}}  {shape:<18} {r.compared:<13} "
                     f"{_num(r.max_abs):>9} {_num(r.max_rel):>9}  {r.status}{mark}")
    if any(r.how == "derived" for r in report.rows):
        lines.append("* derived: no devinet module; computed from the captured BatchNorm / head outputs")
    if any(r.how == "rerun" for r in report.rows):
        lines.append("~ re-run: the GRU submodule called on the input of its (fused) gated BiGRU")
    if report.error:
        lines.append(f"forward stopped: {report.error}")
    for note in report.notes:
        lines.append(f"note: {note}")
    verdict = "PASS" if report.passed else f"FAIL (first divergence: {report.rows[first].name})" if first is not None \
        else "FAIL"
    lines.append(f"{verdict}; largest max rel {_num(report.max_rel())}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- whole runs
DTYPES = (torch.float32, torch.float64)


def parity_reports(source: str | Path, *, recording: str | Path | None = None, checkpoint: str | Path | None = None,
                   preset: str | None = None, theano_flip: str = "auto", seed: int = 0, batch: int = 2,
                   dtypes: Sequence[torch.dtype] = DTYPES, progress: Callable | None = None) -> list[ParityReport]:
    """Compare devinet with a Keras file layer by layer, once per dtype.

    The devinet side is ``source`` converted (or ``checkpoint``, a devinet checkpoint to check
    against ``source``). The reference side is, for a legacy file, its Keras 2.0.8 recording
    (``recording``, or ``NAME_ref.npz`` beside it) and otherwise the Keras 3 reference model
    holding the file's own weights (read straight from the file, not through devinet); for a
    Keras 3 file, the file loaded by Keras itself (float32) and rebuilt in float64.
    ``progress`` wraps the dtype loop (e.g. ``tqdm``).
    """
    import devinet

    from .convert import keras_to_torch, keras_weights_of_file, read_keras_file, resolve_flip
    from .keras3_files import build_keras_model, load_keras_model
    from .mapping import detect

    file = read_keras_file(source)
    notes = []
    if checkpoint is not None:
        model = devinet.load(checkpoint)
        detection = detect(file, preset or (model.config.name if model.config.name != "custom" else None))
        notes.append(f"devinet side: checkpoint {Path(checkpoint).name}")
    else:
        conversion = keras_to_torch(file, preset=preset, theano_flip=theano_flip)
        model, detection = conversion.model, conversion.detection
        notes.append(f"devinet side: {Path(source).name} converted as {detection.preset}"
                     f"{' (Theano kernels flipped)' if conversion.flipped else ''}")
    notes += [*file.notes, *detection.notes]
    loop = progress or (lambda items, **_: items)
    recording_path = recording or (recording_for(source) if file.is_legacy else None)
    if recording_path is not None:
        rec = Recording.from_npz(recording_path)
        roles = {layer.name: layer.role for layer in file.layers}
        unknown = [ref.name for ref in rec.layers if ref.name not in roles]
        if unknown:
            raise FileFormatError(rec.path, f"recording does not belong to {Path(source).name}: "
                                  f"no layer {', '.join(unknown[:5])}")
        reports = [compare_with_recording(model, rec, roles, dtype=d, title=Path(source).name)
                   for d in loop(dtypes, desc="parity")]
    else:
        flip = resolve_flip(file, theano_flip)
        weights = keras_weights_of_file(file, flip)
        x = parity_input(240, detection.config.n_mels, seed=seed, batch=batch)
        reports = []
        for d in loop(dtypes, desc="parity"):
            if d == torch.float32 and not file.is_legacy:
                keras_model = load_keras_model(source, detection.preset, detection.config)
                what = f"Keras 3 loading {Path(source).name}"
            else:
                keras_model = build_keras_model(detection.preset, detection.config, weights,
                                                dtype=str(d).removeprefix("torch."))
                what = f"keras_reference {detection.preset} holding the weights of {Path(source).name}"
            reports.append(compare_with_keras(model, keras_model, x, dtype=d, title=Path(source).name,
                                              reference=what))
    for report in reports:
        report.notes.extend(notes)
    return reports

"""The paper's systems, by name, and the experiment sizes they are trained at.

Systems (Xu, Kong, Wang, Plumbley, ICASSP 2018, weak-label experiments):

- ``crnn_baseline``: the non-gated CRNN of the paper (preset ``cvssp_crnn_baseline``, after the
  original ``main_cnnrnn_balbatch_norm_baseline_icassp2018.py``: conv-BN blocks without gating
  or nonlinearity, one ReLU BiGRU, mean pooling over 30 frames).
- ``crnn_ungated_matched``: an ablation of ours, not in the paper: ``gated_crnn_mean`` with
  each gated (GLU) block replaced by a plain conv-BatchNorm-ReLU block of the same parameter
  count (:func:`devinet.config.ungated_matched`: 85 channels instead of 64 gated ones at full
  width), everything else identical, so that "gating helps" is tested alone (the paper's
  baseline also differs in pooling, GRU type and GRU size).
- ``gated_crnn_mean``: the gated CRNN with mean pooling (preset ``cvssp_crnn_at``,
  ``main_crnn_at.py`` of the original).
- ``gated_crnn_attention``: the gated CRNN with attention pooling over 240 frames (preset
  ``cvssp_crnn_sed``, ``main_crnn_sed.py``); its SED output is the frame-wise output that the
  attention pools.
- ``fusion``: the average of the three systems' clip probabilities and of their frame
  probabilities (each system itself is already a fusion over its last checkpoints).

SED from a 30-frame system: ``crnn_baseline`` and ``gated_crnn_mean`` pool time by 8 before
their GRU, so each of their 30 frame outputs summarises 8 input frames (0.332 s). For event
detection, :func:`frames_at_input_rate` repeats each output frame over the 8 input frames
it pools (nearest-neighbour upsampling to 240 frames), and the same CVSSP post-processing
(threshold, smoothing at the 41.5-ms frame step) runs on every system.

Sizes (``experiments/configs/{tiny,quick,full}.yaml``) set the data size, the training
schedule and, for the small sizes, a width factor: ``width: 0.25`` builds every system with a
quarter of the channels and GRU units of its preset (the same architecture otherwise), which
is what makes the quick run fit on two CPU cores; ``full`` uses the paper's widths. The
ablation is matched to the gated model at the size's width (not scaled from the full-width
match). ``training: original`` (the full size) trains each system with the schedule of its
original script (:attr:`System.original_schedule`, :data:`experiments.train.ORIGINAL_SCHEDULES`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from devinet._io import read_yaml
from devinet.config import DeviNetConfig, preset_config, ungated_matched
from devinet.errors import ConfigError
from experiments.schedules import ORIGINAL_SCHEDULES, TrainSchedule


@dataclass(frozen=True)
class System:
    """One system of the paper's comparison.

    Attributes:
        name: the name used in results (``results.json`` keys).
        title: a short human description for tables and plots.
        preset: the devinet preset it trains, None for a fusion.
        members: the systems a fusion averages (empty for a trained system).
        sed_source: how its 240-frame SED output is obtained (documented in the results).
        original_schedule: the key of :data:`experiments.train.ORIGINAL_SCHEDULES` its original
            script used (``training: original`` in a size config); empty for a fusion.
        ablation: "ungated_matched" derives the model from the preset with
            :func:`devinet.config.ungated_matched`; empty for the preset itself.
    """

    name: str
    title: str
    preset: str | None
    members: tuple[str, ...] = ()
    sed_source: str = ""
    original_schedule: str = ""
    ablation: str = ""

    @property
    def trained(self) -> bool:
        return self.preset is not None


_REPEATED_30 = "30-frame output, each frame repeated over the 8 input frames it pools"
SYSTEMS: dict[str, System] = {
    "crnn_baseline": System(
        "crnn_baseline", "CRNN baseline (no gating), mean pooling", "cvssp_crnn_baseline",
        sed_source=_REPEATED_30, original_schedule="icassp2018_baseline"),
    "crnn_ungated_matched": System(
        "crnn_ungated_matched", "gated CRNN's twin without gating (ReLU blocks, same parameter count), mean pooling",
        "cvssp_crnn_at", sed_source=_REPEATED_30, original_schedule="main_crnn_at", ablation="ungated_matched"),
    "gated_crnn_mean": System(
        "gated_crnn_mean", "gated CRNN, mean pooling", "cvssp_crnn_at",
        sed_source=_REPEATED_30, original_schedule="main_crnn_at"),
    "gated_crnn_attention": System(
        "gated_crnn_attention", "gated CRNN, attention pooling", "cvssp_crnn_sed",
        sed_source="240-frame output of the frame-wise (localization) layer", original_schedule="main_crnn_at"),
    "fusion": System(
        "fusion", "fusion of the three systems", None,
        members=("crnn_baseline", "gated_crnn_mean", "gated_crnn_attention"),
        sed_source="mean of the members' 240-frame outputs"),
}
TRAINED_SYSTEMS: tuple[str, ...] = tuple(name for name, s in SYSTEMS.items() if s.trained)

#: DeviNetConfig fields scaled by a size's ``width`` factor.
_WIDTH_FIELDS = ("conv_channels", "final_conv_channels")
#: how an ablation derives its model from its preset's (see :attr:`System.ablation`)
ABLATIONS = {"ungated_matched": ungated_matched}


def get_system(name: str) -> System:
    try:
        return SYSTEMS[name]
    except KeyError:
        raise ConfigError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}") from None


def resolve_systems(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Systems to run, in the canonical order, with the members of a requested fusion added."""
    wanted = set(SYSTEMS) if not names else {get_system(n).name for n in names}
    for name in list(wanted):
        wanted.update(SYSTEMS[name].members)
    return tuple(name for name in SYSTEMS if name in wanted)


def model_config(system: str, width: float = 1.0, overrides: Mapping[str, Any] | None = None) -> DeviNetConfig:
    """The DeviNetConfig a trained system uses, with channels and GRU units scaled by ``width``.

    ``width`` 1 is the paper's model; a scaled size is rounded to the nearest integer (>= 1).
    ``overrides`` are further DeviNetConfig fields (a size's ``model_overrides``). An ablation
    is derived last, from the preset at this width with these overrides.
    """
    spec = get_system(system)
    if not spec.trained:
        raise ConfigError(f"system {system!r} is a fusion of {', '.join(spec.members)}; it has no model of its own")
    if isinstance(width, bool) or not (isinstance(width, (int, float)) and 0 < width <= 1):
        raise ConfigError(f"width must be in (0, 1], got {width!r}")
    base = preset_config(spec.preset)
    changes: dict[str, Any] = dict(overrides or {})
    if "name" in changes:
        raise ConfigError("model_overrides cannot rename the model")
    if width != 1:
        scale = lambda n: max(1, int(round(n * width)))  # noqa: E731
        changes |= {key: scale(getattr(base, key)) for key in _WIDTH_FIELDS if getattr(base, key)}
        changes["rnn_hidden"] = tuple(scale(h) for h in base.rnn_hidden)
    config = base
    if changes:
        tags = [f"width{width:g}"] if width != 1 else []
        tags += [f"{k}={v}" for k, v in sorted((overrides or {}).items())]
        config = base.replace(**changes, name=f"{spec.preset}@{','.join(tags)}")
    return ABLATIONS[spec.ablation](config) if spec.ablation else config


def frames_at_input_rate(frame_probs: np.ndarray, num_input_frames: int) -> np.ndarray:
    """Frame probabilities at the input frame rate: (N, T_out, C) -> (N, num_input_frames, C).

    Each output frame is repeated over the ``num_input_frames // T_out`` input frames its
    pooling covers (nearest-neighbour upsampling); frames left over by a pooling that floors
    take the last output frame. An output already at the input rate is returned as is.
    """
    frame_probs = np.asarray(frame_probs)
    if frame_probs.ndim != 3:
        raise ValueError(f"frame probabilities must be (N, T, C), got shape {frame_probs.shape}")
    t_out = frame_probs.shape[1]
    if t_out == num_input_frames:
        return frame_probs
    if t_out > num_input_frames or t_out == 0:
        raise ValueError(f"cannot bring {t_out} frames to {num_input_frames} input frames")
    stride = num_input_frames // t_out
    up = np.repeat(frame_probs, stride, axis=1)
    if up.shape[1] < num_input_frames:
        tail = np.repeat(up[:, -1:], num_input_frames - up.shape[1], axis=1)
        up = np.concatenate([up, tail], axis=1)
    return up


# ---------------------------------------------------------------------- experiment sizes
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SIZES = ("tiny", "quick", "full")
#: ``training: original`` in a size config: each system the schedule of its original script
ORIGINAL = "original"


@dataclass(frozen=True)
class SizeConfig:
    """One experiment size, read from ``experiments/configs/<name>.yaml``.

    Attributes:
        name: tiny, quick or full.
        description: what the size is for.
        data_size: size of the synthetic stand-in (``experiments.synth.SIZES``).
        width: channel and GRU-unit factor of every system (1 = the paper's models).
        training: one schedule for every system; or a name: "original" (each system the schedule
            of its original script, :attr:`System.original_schedule`) or a key of
            :data:`experiments.train.ORIGINAL_SCHEDULES` (that one for every system).
        model_overrides: DeviNetConfig fields changed in every system (empty for the paper's models).
        eval_batch_size: clips per forward pass when predicting.
        torch_threads: torch CPU threads for training and prediction; None leaves torch's default
            (one per core). Small models train faster on one thread: their many small operations
            gain little from a second thread and lose much when the cores are busy.
    """

    name: str
    description: str
    data_size: str
    width: float
    training: TrainSchedule | str
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 32
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.training, str) and self.training != ORIGINAL and self.training not in ORIGINAL_SCHEDULES:
            raise ConfigError(f"training must be a schedule (a mapping), {ORIGINAL!r} or one of "
                              f"{', '.join(ORIGINAL_SCHEDULES)}, got {self.training!r}")
        if self.data_size not in SIZES:
            raise ConfigError(f"data_size must be one of {', '.join(SIZES)}, got {self.data_size!r}")
        if not (isinstance(self.width, (int, float)) and not isinstance(self.width, bool) and 0 < self.width <= 1):
            raise ConfigError(f"width must be a number in (0, 1], got {self.width!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        threads = self.torch_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"torch_threads must be a positive integer or null, got {threads!r}")
        if not isinstance(self.model_overrides, Mapping):
            raise ConfigError(f"model_overrides must be a mapping, got {self.model_overrides!r}")
        for system in TRAINED_SYSTEMS:  # every key must be a DeviNetConfig field with a valid value
            model_config(system, self.width, self.model_overrides)

    def model(self, system: str) -> DeviNetConfig:
        """The model ``system`` trains at this size."""
        return model_config(system, self.width, self.model_overrides)

    def schedule_name(self, system: str) -> str:
        """Which schedule ``system`` trains with: a key of ORIGINAL_SCHEDULES, or "size <name>" for the size's own."""
        if self.training == ORIGINAL:
            return get_system(system).original_schedule
        return self.training if isinstance(self.training, str) else f"size {self.name}"

    def schedule(self, system: str) -> TrainSchedule:
        """The schedule ``system`` trains with at this size."""
        if isinstance(self.training, TrainSchedule):
            return self.training
        return ORIGINAL_SCHEDULES[self.schedule_name(system)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in data and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)  # type: ignore[misc]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")


def size_config_from_dict(data: Mapping[str, Any], where: str = "size config") -> SizeConfig:
    """Validate a size config's plain data (unknown or missing keys are errors)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    check_keys(data, SizeConfig, where)
    training = data["training"]
    if not isinstance(training, (Mapping, str)):
        raise ConfigError(f"{where}: training must be a mapping or a schedule's name")
    if isinstance(training, Mapping):
        check_keys(training, TrainSchedule, f"{where}: training")
    try:
        if isinstance(training, Mapping):
            training = TrainSchedule(**training)
        return SizeConfig(**{**data, "training": training})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_size_config(name_or_path: str | os.PathLike) -> SizeConfig:
    """A size by name (``tiny``, ``quick``, ``full``) or a YAML file of the same schema."""
    path = Path(name_or_path)
    if str(name_or_path) in SIZES:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    data = read_yaml(path, f"no such size config (sizes: {', '.join(SIZES)}, or a YAML file)")
    return size_config_from_dict(data, where=str(path))


__all__ = [
    "System", "SYSTEMS", "TRAINED_SYSTEMS", "get_system", "resolve_systems", "model_config", "frames_at_input_rate",
    "SIZES", "ORIGINAL", "ABLATIONS", "SizeConfig", "size_config_from_dict", "load_size_config",
]

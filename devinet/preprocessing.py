"""What a model needs around it to run on audio: class names, feature recipe, scaler, post-processing.

A self-describing checkpoint carries a :class:`Preprocessing` (``devinet.save(...,
preprocessing=...)``; ``devinet.load`` sets ``model.preprocessing``), so that a model can be
used on a recording without anything else: the log-mel recipe it was trained on, the per-bin
standardisation, the class names in output order and CVSSP's decision rule. It is stored as
plain data (lists, numbers, strings), like the rest of a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import recipe
from .errors import ConfigError, FileFormatError
from .scaler import Scaler


@dataclass(frozen=True)
class FeatureRecipe:
    """The log-mel recipe (defaults: the original's, :mod:`devinet.recipe`).

    ``frames`` is the clip length the model was trained on (240 frames, 10 s); inputs of
    other lengths are padded or windowed to it by the tagging path.
    """

    sample_rate: int = recipe.SAMPLE_RATE
    n_fft: int = recipe.N_FFT
    hop: int = recipe.HOP
    window: str = "hamming"
    n_mels: int = recipe.N_MELS
    fmin: float = recipe.FMIN
    fmax: float = recipe.FMAX
    log_offset: float = recipe.LOG_OFFSET
    frames: int = recipe.FRAMES
    resampler: str = "resampy02_kaiser_best"

    def __post_init__(self) -> None:
        for key in ("sample_rate", "n_fft", "hop", "n_mels", "frames"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"feature recipe: {key} must be a positive integer, got {value!r}")
        if not (0 <= self.fmin < self.fmax <= self.sample_rate / 2):
            raise ConfigError(f"feature recipe: need 0 <= fmin < fmax <= sample_rate / 2, got {self.fmin}, {self.fmax}")
        if not (math.isfinite(self.log_offset) and self.log_offset > 0):
            raise ConfigError(f"feature recipe: log_offset must be positive, got {self.log_offset!r}")

    @property
    def frame_step(self) -> float:
        """Seconds from one frame to the next."""
        return self.hop / self.sample_rate

    def is_original(self) -> bool:
        """Whether this is the original CVSSP recipe (the one :mod:`devinet.features` computes)."""
        return self == FeatureRecipe()


@dataclass(frozen=True)
class PostProcessing:
    """CVSSP's decisions: tags above ``threshold`` (else the arg-max label), events smoothed by
    ``n_smooth`` / ``n_salt`` (see :mod:`devinet.postprocessing`)."""

    threshold: float = recipe.DEFAULT_THRESHOLD
    n_smooth: int = recipe.DEFAULT_N_SMOOTH
    n_salt: int = recipe.DEFAULT_N_SALT
    at_fallback: str = "argmax"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"post-processing: threshold must lie in [0, 1], got {self.threshold!r}")
        for key in ("n_smooth", "n_salt"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"post-processing: {key} must be a non-negative integer, got {value!r}")
        if self.at_fallback not in ("argmax", "none"):
            raise ConfigError(f"post-processing: at_fallback must be 'argmax' or 'none', got {self.at_fallback!r}")


@dataclass(frozen=True)
class Preprocessing:
    """Everything besides the weights that turns audio into tags and events with a model.

    Attributes:
        classes: class names in the model's output order.
        scaler: per-mel-bin standardisation of the log-mel input; None when unknown (a Keras
            file converted without ``--scaler``): such a model cannot be run on audio.
        features: the log-mel recipe.
        postprocessing: the decision rule and smoothing defaults.
    """

    classes: tuple[str, ...] = recipe.DCASE2017_CLASSES
    scaler: Scaler | None = None
    features: FeatureRecipe = field(default_factory=FeatureRecipe)
    postprocessing: PostProcessing = field(default_factory=PostProcessing)

    def __post_init__(self) -> None:
        classes = self.classes
        if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes):
            raise ConfigError("classes must be a list of non-empty names")
        object.__setattr__(self, "classes", tuple(classes))
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError("classes must be unique")
        if self.scaler is not None and self.scaler.mean.shape != (self.features.n_mels,):
            raise ConfigError(f"the scaler has {self.scaler.mean.shape[0]} bins, the feature recipe "
                              f"{self.features.n_mels} mel bands")

    def check_model(self, num_classes: int, n_mels: int) -> None:
        """Refuse a description that does not fit a model with these outputs and inputs."""
        if len(self.classes) != num_classes:
            raise ConfigError(f"{len(self.classes)} class names for a model with {num_classes} outputs")
        if self.features.n_mels != n_mels:
            raise ConfigError(f"the feature recipe has {self.features.n_mels} mel bands, the model takes {n_mels}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (lists, numbers, strings)."""
        return {
            "classes": list(self.classes),
            "scaler": None if self.scaler is None else {"mean": self.scaler.mean.tolist(),
                                                        "std": self.scaler.std.tolist(),
                                                        "count": int(self.scaler.count)},
            "features": dataclasses.asdict(self.features),
            "postprocessing": dataclasses.asdict(self.postprocessing),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessing":
        """Read :meth:`to_dict`'s data back; unknown or malformed entries are a ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError("preprocessing must be a mapping")
        unknown = sorted(set(data) - {"classes", "scaler", "features", "postprocessing"})
        if unknown:
            raise ConfigError(f"unknown preprocessing keys: {', '.join(map(str, unknown))}")
        try:
            scaler = data.get("scaler")
            if scaler is not None:
                scaler = Scaler(np.asarray(scaler["mean"], dtype=np.float64), np.asarray(scaler["std"], dtype=np.float64),
                                int(scaler.get("count", 0)))
            return cls(classes=data.get("classes", recipe.DCASE2017_CLASSES), scaler=scaler,
                       features=FeatureRecipe(**data.get("features", {})),
                       postprocessing=PostProcessing(**data.get("postprocessing", {})))
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed preprocessing ({type(exc).__name__}: {exc})") from None


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a file, in output order: a JSON list of strings, or one name per line
    (surrounding spaces and blank lines ignored). Unique, non-empty names; else FileFormatError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileFormatError(path, "no such class-name file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, f"cannot be read as UTF-8 text ({getattr(exc, 'strerror', None) or exc})") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise FileFormatError(path, f"not a JSON list of names ({exc})") from None
        if not all(isinstance(name, str) for name in names):
            raise FileFormatError(path, "the JSON list must hold strings only")
        names = [name.strip() for name in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise FileFormatError(path, "no class names (one per line, or a JSON list)")
    if not all(names):
        raise FileFormatError(path, "an empty class name in the JSON list")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise FileFormatError(path, f"class name {repeated[0]!r} is listed more than once")
    return tuple(names)


def default_classes(num_classes: int) -> Sequence[str]:
    """The DCASE 2017 Task 4 labels for a 17-class model, else ``class_0`` ... ``class_{n-1}``."""
    if num_classes == len(recipe.DCASE2017_CLASSES):
        return recipe.DCASE2017_CLASSES
    return tuple(f"class_{k}" for k in range(num_classes))


__all__ = ["FeatureRecipe", "PostProcessing", "Preprocessing", "default_classes", "read_class_names"]

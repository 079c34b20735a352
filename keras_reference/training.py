"""The original CVSSP training recipe as reusable pieces: train, checkpoint, resume, fuse.

The original (main_crnn_at.py / main_crnn_sed.py) compiled with Adam (lr 1e-3) and binary
cross-entropy, fed ``fit_generator`` a class-ratio balanced generator of batch 44 with
``steps_per_epoch=100`` (100 iterations are called an "epoch"), saved the whole model
after every epoch, and predicted with the mean of the predictions of the checkpoints
numbered 20..29. Keras 2.0.8 numbered those files from 0, so they are the models after 21
to 30 epochs; here checkpoints are numbered by completed epochs, hence
:data:`ORIGINAL_FUSION_EPOCHS` = 21..30.

A run directory holds, per completed epoch e, ``epoch_{e:04d}.keras`` (model and optimizer
state, like the original's full-model files) and then ``epoch_{e:04d}.json`` (the batch
sampler's state, the recipe, the losses). Both are written atomically and the JSON last,
so an epoch counts only when both exist, and :func:`train` resumes from the last one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from devinet._io import atomic_path, atomic_write_json  # noqa: E402
from devinet.errors import ConfigError, FileFormatError, InputError  # noqa: E402

from .models import framewise_model  # noqa: E402

#: checkpoints averaged by the original's prediction (its files .20- to .29-, 0-based epochs)
ORIGINAL_FUSION_EPOCHS = tuple(range(21, 31))

class BatchSampler(Protocol):
    """Endless batches of row indices whose position can be saved and restored."""

    batch_size: int

    def __next__(self) -> np.ndarray: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


_CHECKPOINT = re.compile(r"^epoch_(\d{4,})\.keras$")


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of the original training.

    ``adam_epsilon`` is Keras 2.0.8's Adam default (1e-8); Keras 3's default is 1e-7.
    """

    learning_rate: float = 1e-3
    adam_epsilon: float = 1e-8
    iterations_per_epoch: int = 100

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.adam_epsilon <= 0:
            raise ConfigError("learning_rate and adam_epsilon must be positive")
        if self.iterations_per_epoch < 1:
            raise ConfigError("iterations_per_epoch must be >= 1")


def compile_original(model: keras.Model, recipe: Recipe = Recipe()) -> keras.Model:
    """Compile ``model`` as the original did: Adam and binary cross-entropy on the clip output."""
    optimizer = keras.optimizers.Adam(learning_rate=recipe.learning_rate, epsilon=recipe.adam_epsilon)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model


def checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """The model file written after ``epoch`` completed epochs (1-based)."""
    return Path(run_dir) / f"epoch_{epoch:04d}.keras"


def list_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """Completed epochs of a run directory -> model file (an epoch counts once its JSON exists)."""
    run_dir = Path(run_dir)
    found = {}
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match and path.with_suffix(".json").is_file():
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def load_checkpoint(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` checkpoint in safe mode (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "checkpoint not found")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=compile)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise FileFormatError(path, f"not a loadable Keras 3 model ({exc})") from None


def _check_data(x: np.ndarray, y: np.ndarray, model: keras.Model) -> None:
    if len(x) != len(y):
        raise InputError(f"x has {len(x)} clips but y has {len(y)}")
    expected = tuple(model.input_shape[1:])
    if any(e is not None and e != s for e, s in zip(expected, x.shape[1:])) or len(expected) != x.ndim - 1:
        raise InputError(f"model {model.name!r} expects inputs (N, {', '.join(map(str, expected))}), "
                         f"got {x.shape}")
    if y.ndim != 2 or y.shape[1] != model.output_shape[-1]:
        raise InputError(f"y must be (N, {model.output_shape[-1]}) multi-hot, got {y.shape}")


def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FileFormatError(path, f"unreadable training state ({exc})") from None


def _resume_or_compile(model: keras.Model, run_dir: Path, sampler: BatchSampler, recipe: Recipe,
                       resume: bool) -> tuple[keras.Model, int]:
    """(the model to train, the last complete epoch): the last checkpoint of ``run_dir`` with its
    sampler state restored, or ``model`` compiled with ``recipe`` when there is none."""
    done = list_checkpoints(run_dir)
    start = max(done, default=0)
    if done and not resume:
        raise FileFormatError(run_dir, f"already holds checkpoints up to epoch {start}; "
                                       "resume, or train into an empty folder")
    if not start:
        compile_original(model, recipe)
        return model, 0
    state_path = done[start].with_suffix(".json")
    state = _load_state(state_path)
    if state.get("recipe") != dataclasses.asdict(recipe):
        raise FileFormatError(state_path, f"was trained with recipe {state.get('recipe')}, "
                                          f"not {dataclasses.asdict(recipe)}")
    loaded = load_checkpoint(done[start])
    if [layer.name for layer in loaded.layers] != [layer.name for layer in model.layers]:
        raise FileFormatError(done[start], f"holds model {loaded.name!r}, not the {model.name!r} being trained")
    sampler.set_state(state["sampler"])
    return loaded, start


def train(model: keras.Model, x: np.ndarray, y: np.ndarray, run_dir: str | os.PathLike, *, epochs: int,
          sampler: BatchSampler, recipe: Recipe = Recipe(), resume: bool = True,
          validation: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
          run_eagerly: bool = False) -> keras.Model:
    """Train with the original recipe until ``epochs`` epochs are complete; checkpoint every epoch.

    Args:
        model: a model from :func:`keras_reference.build`; it is (re)compiled with ``recipe``.
        x: (N, T, F) (or (N, T, F, 1) for cnnrnn_at) standardized log-mel clips, in memory.
        y: (N, C) multi-hot clip labels.
        run_dir: folder of the checkpoints; created if missing.
        epochs: total epochs (of ``recipe.iterations_per_epoch`` iterations) to reach.
        sampler: the batches: an endless iterator of row indices into ``x`` whose state
            (``get_state``/``set_state``) is saved with every checkpoint, e.g. the original's
            class-balanced ``experiments.batching.BalancedBatchSampler(y, 44, seed)``.
        resume: continue from the last complete epoch found in ``run_dir`` (its model,
            optimizer state and batch sequence). With False, a ``run_dir`` that already holds
            checkpoints is refused rather than overwritten.
        validation: optional (x, y) whose loss is logged after each epoch, as the original
            logged its validation metrics.
        progress: show a progress bar per epoch.
        run_eagerly: run the training steps eagerly: no graph tracing, which is faster for
            tiny debugging runs and slower for real ones.

    Returns:
        The trained model: ``model`` itself, or the model loaded from the last checkpoint
        when resuming.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    x, y = np.asarray(x), np.asarray(y)
    _check_data(x, y, model)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    model, start = _resume_or_compile(model, run_dir, sampler, recipe, resume)
    model.run_eagerly = run_eagerly

    for epoch in range(start + 1, epochs + 1):
        losses = []
        steps = tqdm(range(recipe.iterations_per_epoch), desc=f"epoch {epoch}/{epochs}", disable=not progress,
                     leave=False)
        for _ in steps:
            index = next(sampler)
            losses.append(float(model.train_on_batch(x[index], y[index])))
            steps.set_postfix(loss=f"{losses[-1]:.4f}")
        record = {"epoch": epoch, "iterations": epoch * recipe.iterations_per_epoch,
                  "loss": float(np.mean(losses)), "losses": losses}
        if validation is not None:
            record["val_loss"] = float(model.evaluate(*validation, batch_size=sampler.batch_size, verbose=0))
        path = checkpoint_path(run_dir, epoch)
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
        atomic_write_json(path.with_suffix(".json"), {**record, "recipe": dataclasses.asdict(recipe),
                                                      "sampler": sampler.get_state()})
    return model


def fusion_checkpoints(run_dir: str | os.PathLike, epochs: Iterable[int] = ORIGINAL_FUSION_EPOCHS) -> list[Path]:
    """The checkpoints of ``epochs`` in ``run_dir``; all must exist."""
    done = list_checkpoints(run_dir)
    epochs = list(epochs)
    missing = [e for e in epochs if e not in done]
    if missing:
        raise FileFormatError(run_dir, f"has no complete checkpoint for epochs {missing} "
                                       f"(found {sorted(done) or 'none'})")
    return [done[e] for e in epochs]


def fuse_predictions(checkpoints: Sequence[str | os.PathLike], x: np.ndarray, *, framewise: bool = False,
                     batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Mean of the predictions of several checkpoints (the original's fusion over epochs).

    Returns the clip output (N, C), or with ``framewise`` the ``head_frame`` output (N, T', C).
    """
    if not checkpoints:
        raise InputError("fusion needs at least one checkpoint")
    total = None
    for path in tqdm(checkpoints, desc="fusion", disable=not progress, leave=False):
        model = load_checkpoint(path, compile=False)
        net = framewise_model(model) if framewise else model
        prediction = net.predict(x, batch_size=batch_size, verbose=0).astype(np.float64)
        total = prediction if total is None else total + prediction
    return (total / len(checkpoints)).astype(np.float32)

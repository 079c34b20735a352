"""Training schedules: how long to train and which checkpoints the predictions average, and the
original CVSSP scripts' two schedules (:data:`ORIGINAL_SCHEDULES`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from devinet.errors import ConfigError


@dataclass(frozen=True)
class TrainSchedule:
    """A training schedule: how long to train and which checkpoints the predictions average.

    The defaults are main_crnn_at.py's (:data:`ORIGINAL_SCHEDULES`): 30 epochs of 100
    iterations, batch 44, lr 1e-3, a checkpoint after every epoch, fusion of the last 10.

    Attributes:
        epochs: number of "epochs" of ``iterations_per_epoch`` balanced batches.
        iterations_per_epoch: batches per epoch.
        batch_size: slots per balanced batch.
        learning_rate: Adam's learning rate.
        fused_checkpoints: predictions average the last this many checkpoints.
        checkpoint_every: epochs between two of the checkpoints that fusion chooses from (Keras'
            ``ModelCheckpoint(period=...)`` of the original script). The fused epochs are the last
            ``fused_checkpoints`` multiples of it up to ``epochs``. (The training loop also keeps a
            checkpoint after every epoch to resume from; that changes nothing that is trained.)
    """

    epochs: int = 30
    iterations_per_epoch: int = 100
    batch_size: int = 44
    learning_rate: float = 1e-3
    fused_checkpoints: int = 10
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        for key in ("epochs", "iterations_per_epoch", "batch_size", "fused_checkpoints", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"training.{key} must be a positive integer, got {value!r}")
        if self.epochs % self.checkpoint_every:
            raise ConfigError(f"training.epochs ({self.epochs}) must be a multiple of training.checkpoint_every "
                              f"({self.checkpoint_every}): training ends on a checkpoint")
        if self.fused_checkpoints > self.epochs // self.checkpoint_every:
            raise ConfigError(f"training.fused_checkpoints ({self.fused_checkpoints}) exceeds the "
                              f"{self.epochs // self.checkpoint_every} checkpoints of {self.epochs} epochs "
                              f"taken every {self.checkpoint_every}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ConfigError(f"training.learning_rate must be a positive number, got {rate!r}")

    @property
    def fused_epochs(self) -> tuple[int, ...]:
        """Epochs (1-based: the weights after that many epochs) whose checkpoints are fused."""
        first = self.epochs - (self.fused_checkpoints - 1) * self.checkpoint_every
        return tuple(range(first, self.epochs + 1, self.checkpoint_every))

    @property
    def keras_checkpoint_numbers(self) -> tuple[int, ...]:
        """The fused checkpoints as the original's Keras 2 file names number them (0-based epochs)."""
        return tuple(epoch - 1 for epoch in self.fused_epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The original scripts' schedules (yongxuUSTC/dcase2017_task4_cvssp; Keras 2.0.8 numbers its
#: checkpoint files from 0, so file ``.NN-`` holds the weights after NN + 1 epochs). Both train
#: unbounded ("epochs=2000000010", stopped by hand) on 100 iterations of balanced batches of 44
#: per "epoch" with Adam's defaults; what differs is which checkpoints the predictions average:
ORIGINAL_SCHEDULES: dict[str, TrainSchedule] = {
    # main_crnn_at.py and main_crnn_sed.py (Kong, 2017-09-24): a checkpoint per epoch (period=1),
    # recognize() fuses files 20..29 = the weights after epochs 21..30.
    "main_crnn_at": TrainSchedule(epochs=30, fused_checkpoints=10, checkpoint_every=1),
    # main_cnnrnn_balbatch_norm_baseline_icassp2018.py and the challenge-era scripts (Xu,
    # 2017-09-20/21): period=10; predict_audio_tagging_icassp2018_cnnrnn_baseline.py, predict_crnn_at.py
    # and predict_crnn_sed.py fuse files range(19, 81, 10) = the weights after epochs 20, 30, ..., 80.
    "icassp2018_baseline": TrainSchedule(epochs=80, fused_checkpoints=7, checkpoint_every=10),
}


__all__ = ["TrainSchedule", "ORIGINAL_SCHEDULES"]

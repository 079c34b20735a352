"""The training schedules: the original scripts' two, named after them, and the validation of custom ones."""

from __future__ import annotations

import pytest

from devinet.errors import ConfigError
from experiments.schedules import ORIGINAL_SCHEDULES, TrainSchedule


def test_main_crnn_at_fuses_the_weights_after_epochs_21_to_30():
    """main_crnn_at.py / main_crnn_sed.py: period=1, recognize() loads files 20..29 (range(20, 30, 1))."""
    schedule = ORIGINAL_SCHEDULES["main_crnn_at"]
    assert schedule.fused_epochs == tuple(range(21, 31))
    assert schedule.keras_checkpoint_numbers == tuple(range(20, 30, 1))
    assert (schedule.epochs, schedule.iterations_per_epoch, schedule.batch_size, schedule.learning_rate,
            schedule.checkpoint_every) == (30, 100, 44, 0.001, 1)
    assert TrainSchedule() == schedule  # the defaults are this schedule


def test_icassp2018_baseline_fuses_keras_files_19_to_79_step_10():
    """The baseline script saves with period=10; its prediction scripts load range(19, 81, 10)."""
    schedule = ORIGINAL_SCHEDULES["icassp2018_baseline"]
    assert schedule.keras_checkpoint_numbers == tuple(range(19, 81, 10))
    assert schedule.fused_epochs == (20, 30, 40, 50, 60, 70, 80)
    assert (schedule.epochs, schedule.iterations_per_epoch, schedule.batch_size, schedule.checkpoint_every) == \
        (80, 100, 44, 10)
    assert [epoch * schedule.iterations_per_epoch for epoch in schedule.fused_epochs] == list(range(2000, 8001, 1000))


def test_custom_schedules_are_validated():
    assert TrainSchedule(epochs=5, fused_checkpoints=2).fused_epochs == (4, 5)
    assert TrainSchedule(epochs=12, fused_checkpoints=3, checkpoint_every=4).fused_epochs == (4, 8, 12)
    with pytest.raises(ConfigError, match="multiple of training.checkpoint_every"):
        TrainSchedule(epochs=25, checkpoint_every=10)
    with pytest.raises(ConfigError, match="exceeds the 8 checkpoints"):
        TrainSchedule(epochs=80, fused_checkpoints=9, checkpoint_every=10)
    with pytest.raises(ConfigError, match="checkpoint_every must be a positive integer"):
        TrainSchedule(checkpoint_every=0)

"""Self-describing checkpoints: the preprocessing description round-trips and is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import devinet
from devinet.errors import ConfigError, FileFormatError
from devinet.preprocessing import FeatureRecipe, PostProcessing, Preprocessing, default_classes
from devinet.recipe import DCASE2017_CLASSES
from devinet.scaler import Scaler


def small_model(num_classes: int = 17):
    return devinet.DeviNet.from_preset("cvssp_crnn_at", conv_channels=8, rnn_hidden=(4,),
                                       final_conv_channels=8, num_classes=num_classes)


def test_round_trip_through_a_checkpoint(tmp_path):
    scaler = Scaler(np.linspace(-3, 3, 64), np.linspace(1, 2, 64), count=10)
    described = Preprocessing(classes=tuple(f"c{k}" for k in range(5)), scaler=scaler,
                              postprocessing=PostProcessing(threshold=0.4, n_smooth=3, n_salt=2))
    devinet.save(small_model(5), tmp_path / "m.pt", preprocessing=described)
    loaded = devinet.load(tmp_path / "m.pt").preprocessing
    assert loaded.classes == described.classes and loaded.features == FeatureRecipe()
    assert loaded.postprocessing == described.postprocessing
    np.testing.assert_array_equal(loaded.scaler.mean, scaler.mean)
    np.testing.assert_array_equal(loaded.scaler.std, scaler.std)
    assert loaded.scaler.count == 10
    # saving the loaded model again keeps its description
    model = devinet.load(tmp_path / "m.pt")
    devinet.save(model, tmp_path / "again.pt")
    assert devinet.load(tmp_path / "again.pt").preprocessing == model.preprocessing


def test_checkpoints_without_a_description_load_with_none(tmp_path):
    devinet.save(small_model(), tmp_path / "m.pt")
    assert devinet.load(tmp_path / "m.pt").preprocessing is None


def test_a_description_that_does_not_fit_the_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="3 class names for a model with 17 outputs"):
        devinet.save(small_model(), tmp_path / "m.pt", preprocessing=Preprocessing(classes=("a", "b", "c")))
    assert not (tmp_path / "m.pt").exists()
    payload = devinet.checkpoint.checkpoint_payload(small_model())
    payload["preprocessing"] = {"classes": list(DCASE2017_CLASSES), "postprocessing": {"threshold": 7}}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(FileFormatError, match=r"bad.pt: bad preprocessing description: .*threshold"):
        devinet.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("data, message", [
    ({"classes": ["a", "a"]}, "unique"),
    ({"classes": "abc"}, "list of non-empty names"),
    ({"extra": 1}, "unknown preprocessing keys: extra"),
    ({"scaler": {"mean": [0.0] * 64}}, "malformed"),
    ({"scaler": {"mean": [0.0] * 3, "std": [1.0] * 3}}, "3 bins"),
    ({"features": {"sample_rate": 0}}, "sample_rate"),
    ({"features": {"fmax": 9000.0}}, "fmax"),
    ({"postprocessing": {"at_fallback": "first"}}, "at_fallback"),
])
def test_malformed_descriptions_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        Preprocessing.from_dict(data)


def test_default_classes():
    assert default_classes(17) == DCASE2017_CLASSES
    assert default_classes(2) == ("class_0", "class_1")
    assert FeatureRecipe().frame_step == pytest.approx(664 / 16000) and FeatureRecipe().is_original()

"""The capacity-matched ablation: the gated CRNN with ReLU blocks of the same parameter count."""

from __future__ import annotations

import functools

import pytest
import torch

from devinet.config import conv_front_end_parameters, preset_config, ungated_matched
from devinet.errors import ConfigError
from devinet.model import DeviNet as _DeviNet


@functools.lru_cache(maxsize=None)
def DeviNet(config) -> _DeviNet:  # noqa: N802
    """The model on the meta device: its parameters have shapes but no storage (counting only, fast)."""
    with torch.device("meta"):
        return _DeviNet(config)


def _trainable(config) -> int:
    return DeviNet(config).num_parameters(keras_style=False)


def test_full_width_match_is_85_relu_channels_for_64_gated_ones():
    gated = preset_config("cvssp_crnn_at")
    twin = ungated_matched(gated)
    assert (gated.conv_channels, twin.conv_channels) == (64, 85)
    # measured on the built models: 1,188,753 against 1,183,930 trainable parameters (-4,823, -0.41 %)
    assert (_trainable(gated), _trainable(twin)) == (1_188_753, 1_183_930)
    assert (DeviNet(gated).num_parameters(), DeviNet(twin).num_parameters()) == (1_190_545, 1_185_120)


@pytest.mark.parametrize("channels", [8, 16, 64])
def test_the_match_is_the_closest_integer_and_only_the_blocks_differ(channels):
    gated = preset_config("cvssp_crnn_at", conv_channels=channels)
    twin = ungated_matched(gated)
    gap = abs(_trainable(twin) - _trainable(gated))
    for other in (twin.conv_channels - 1, twin.conv_channels + 1):
        assert abs(_trainable(twin.replace(conv_channels=other)) - _trainable(gated)) > gap
    # the counting formula is the built model's: the rest of the model is the same size
    rest = _trainable(gated) - conv_front_end_parameters(gated)
    assert _trainable(twin) - conv_front_end_parameters(twin) == rest
    assert DeviNet(twin).num_parameters() - DeviNet(gated).num_parameters() == \
        conv_front_end_parameters(twin, keras_style=True) - conv_front_end_parameters(gated, keras_style=True)
    shapes = lambda config: {k: tuple(v.shape) for k, v in DeviNet(config).state_dict().items()  # noqa: E731
                             if not k.startswith("gcnn.") and not k.startswith("final_conv.")}
    assert shapes(twin) == shapes(gated)  # GRU, head: identical


def test_only_a_gated_model_with_a_final_conv_has_a_match():
    with pytest.raises(ConfigError, match="needs a gated model"):
        ungated_matched(preset_config("cvssp_crnn_baseline"))
    with pytest.raises(ConfigError, match="final conv"):
        ungated_matched(preset_config("cvssp_crnn_at", final_conv_channels=0))

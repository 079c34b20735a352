"""devinet checkpoints: round trip, eval mode, strictness; and the `devinet info` command."""

from __future__ import annotations

import pytest
import torch

import devinet
from devinet import DeviNet
from devinet.cli import main
from devinet.errors import FileFormatError


@pytest.mark.slow
def test_round_trip_restores_config_weights_and_eval_mode(tmp_path):
    torch.manual_seed(1)
    model = DeviNet.from_preset("cvssp_crnn_sed", blocks=8)
    path = devinet.save(model, tmp_path / "m.pt", metadata={"source": "test"})
    loaded = devinet.load(path)
    assert not loaded.training
    assert loaded.config == model.config and len(loaded.gcnn) == 8
    assert loaded.checkpoint_metadata == {"source": "test"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["clipwise"], model(x)["clipwise"], rtol=0, atol=0)


def test_existing_destination_needs_force(tmp_path):
    model = DeviNet.from_preset("cvssp_crnn_at")
    path = devinet.save(model, tmp_path / "m.pt")
    with pytest.raises(FileFormatError, match="destination exists"):
        devinet.save(model, path)
    devinet.save(model, path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_weights_that_do_not_fit_are_listed_in_one_error(tmp_path):
    model = DeviNet.from_preset("cvssp_crnn_at")
    path = devinet.save(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    del state["final_conv.bias"]
    state["head.frame.weight"] = torch.zeros(3, 3)
    state["gcnn.0.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(payload, path)
    with pytest.raises(FileFormatError) as err:
        devinet.load(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "missing final_conv.bias" in message
    assert "head.frame.weight has shape (3, 3), expected (17, 256)" in message
    assert "gcnn.0.conv.weight holds NaN" in message
    assert "\n" not in message


def test_nan_weights_load_only_when_allowed(tmp_path):
    model = DeviNet.from_preset("cvssp_crnn_at")
    with torch.no_grad():
        model.final_conv.bias[0] = float("inf")
    path = devinet.save(model, tmp_path / "m.pt")
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        devinet.load(path)
    assert torch.isinf(devinet.load(path, allow_nonfinite=True).final_conv.bias[0])


@pytest.mark.slow
def test_info_command_prints_every_preset(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cvssp_crnn_at" in out and "1,190,545" in out and "1,190,851" in out
    assert "pyannote_devinet" in out

"""Hostile and damaged devinet checkpoints: refused with one clear line, never executed, never half-written.

Every malformed file goes through ``devinet.load`` (a :class:`FileFormatError` naming the file,
on one line) and through the command line (``devinet convert BAD.pt out.h5``: exit 1, one
line on stderr naming the file, no traceback, no output file). Crafted pickles carry payloads
that would create a marker file; each payload is first shown to be live (an unsafe load runs
it), then devinet is shown not to run it.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

import devinet
from conftest import CodeRunningPickle, code_running_payloads, import_or_require
from devinet import DeviNet, DeviNetConfig
from devinet.cli import main
from devinet.errors import FileFormatError

REPO_ROOT = Path(__file__).resolve().parents[1]

#: a small DeviNet (every kind of layer, a few thousand weights): fast to build and save
SMALL = DeviNetConfig(conv_groups=(1, 1), conv_channels=4, pools=((2, 4), (2, 4)), final_conv_channels=8,
                      final_pool=(1, 4), rnn_hidden=(4,), head="attention", num_classes=3, name="small")


def cli(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    """Run ``devinet ARGV`` in process: (exit code, stdout, stderr lines)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def assert_one_line_refusal(code: int, err: list[str], names: str) -> None:
    assert code == 1, err
    assert len(err) == 1, err
    assert names in err[0] and "Traceback" not in err[0], err


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, dict]:
    """A valid small checkpoint and its payload (read back safely)."""
    torch.manual_seed(0)
    path = devinet.save(DeviNet(SMALL), tmp_path_factory.mktemp("good") / "good.pt", metadata={"note": "ok"})
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _payload(good) -> dict:
    """A deep copy of the good payload, to damage."""
    buffer = io.BytesIO()
    torch.save(good[1], buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------- malformed files
def _edit(change: Callable[[dict], None]):
    def make(path: Path, good) -> None:
        payload = _payload(good)
        change(payload)
        torch.save(payload, path)
    return make


def _raw(data: Callable[[bytes], bytes]):
    def make(path: Path, good) -> None:
        path.write_bytes(data(good[0].read_bytes()))
    return make


def _zip_without_torch(path: Path, good) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "a zip, not a checkpoint")


def _short_storage(path: Path, good) -> None:
    """A torch archive whose tensor records are cut short (a damaged copy)."""
    with zipfile.ZipFile(good[0]) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(info, data[:16] if "/data/" in info.filename and len(data) > 64 else data)


def _set(section: str, key, value):
    return _edit(lambda p: p[section].__setitem__(key, value))


def _del(section: str, key):
    return _edit(lambda p: p[section].pop(key))


def _scale(key: str, factor: float):
    return _edit(lambda p: p["state_dict"][key].mul_(factor))


BIAS = "final_conv.bias"  # (8,)

MALFORMED = {
    # name: (how to make it, what the one-line error says)
    "empty": (_raw(lambda b: b""), "empty file"),
    "truncated_10_bytes": (_raw(lambda b: b[:10]), "not a torch zip archive"),
    "truncated_half": (_raw(lambda b: b[: len(b) // 2]), "not a torch zip archive"),
    "truncated_last_byte": (_raw(lambda b: b[:-1]), "not a torch zip archive"),
    "random_bytes": (_raw(lambda b: os.urandom(4096)), "not a torch zip archive"),
    "text": (_raw(lambda b: b"epoch 3, loss 0.12\n"), "not a torch zip archive"),
    "zip_not_torch": (_zip_without_torch, "not a readable devinet checkpoint"),
    "short_tensor_records": (_short_storage, "not a readable devinet checkpoint"),
    "list_not_dict": (lambda p, g: torch.save([1, 2, 3], p), "missing format marker"),
    "bare_state_dict": (lambda p, g: torch.save(g[1]["state_dict"], p), "missing format marker"),
    "future_version": (_edit(lambda p: p.__setitem__("format_version", 99)), "unsupported checkpoint format version 99"),
    "config_not_dict": (_edit(lambda p: p.__setitem__("config", [64])), "'config' is missing or not a dict"),
    "metadata_not_dict": (_edit(lambda p: p.__setitem__("metadata", "x")), "'metadata' is missing or not a dict"),
    "config_unknown_key": (_set("config", "colour", "red"), "unknown DeviNet configuration keys: colour"),
    "config_wrong_type": (_set("config", "conv_channels", "4"), "conv_channels must be a positive integer"),
    "config_none": (_set("config", "dropout", None), "bad model config"),
    "config_huge_model": (_set("config", "rnn_hidden", [10 ** 7]), "expected (30000000,)"),
    "config_million_blocks": (_set("config", "conv_groups", [10 ** 6, 1]), "describes 1000002 layers"),
    "missing_weight": (_del("state_dict", BIAS), f"missing {BIAS} (8,)"),
    "extra_weight": (_set("state_dict", "gcnn.9.conv.weight", torch.zeros(1)), "unexpected gcnn.9.conv.weight"),
    "wrong_shape": (_set("state_dict", BIAS, torch.zeros(9)), f"{BIAS} has shape (9,), expected (8,)"),
    "integer_weight": (_set("state_dict", BIAS, torch.zeros(8, dtype=torch.int32)), "dtype torch.int32"),
    "bool_weight": (_set("state_dict", BIAS, torch.zeros(8, dtype=torch.bool)), "dtype torch.bool"),
    "complex_weight": (_set("state_dict", BIAS, torch.zeros(8, dtype=torch.complex64)), "dtype torch.complex64"),
    "sparse_weight": (_set("state_dict", BIAS, torch.zeros(8).to_sparse()), "not a dense tensor"),
    "meta_weight": (_set("state_dict", BIAS, torch.zeros(8, device="meta")), "not a dense tensor"),
    "weight_not_tensor": (_set("state_dict", BIAS, [0.0] * 8), f"{BIAS} is not a tensor"),
    "nan_weight": (_scale(BIAS, float("nan")), f"{BIAS} holds NaN or infinite values"),
    "inf_weight": (_scale("head.attention.weight", float("inf")), "head.attention.weight holds NaN or infinite"),
    "non_string_key": (_set("state_dict", 7, torch.zeros(1)), "unexpected 7"),
    "key_with_line_break": (_set("state_dict", "evil\nkey", torch.zeros(1)), "unexpected 'evil\\nkey'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_checkpoint_is_refused_by_load_and_cli(case, good, tmp_path, capsys):
    make, problem = MALFORMED[case]
    path = tmp_path / f"{case}.pt"
    make(path, good)
    with pytest.raises(FileFormatError) as info:
        devinet.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message, message
    code, _, err = cli(["convert", path, tmp_path / "out.h5"], capsys)
    assert_one_line_refusal(code, err, str(path))
    assert problem.splitlines()[0] in err[0]
    assert leftovers(tmp_path, {path.name}) == []


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_missing_path_and_directory(where, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if where == "directory":
        path.mkdir()
    with pytest.raises(FileFormatError, match="no such file" if where == "missing" else "is a directory"):
        devinet.load(path)
    code, _, err = cli(["convert", path, tmp_path / "out.h5"], capsys)
    assert_one_line_refusal(code, err, str(path))
    assert not (tmp_path / "out.h5").exists()


def test_nonfinite_weights_load_when_explicitly_allowed(good, tmp_path):
    path = tmp_path / "nan.pt"
    MALFORMED["nan_weight"][0](path, good)
    model = devinet.load(path, allow_nonfinite=True)
    assert torch.isnan(model.final_conv.bias).all()


def test_float64_weights_are_accepted_and_cast(good, tmp_path):
    """Any float precision fits a float weight (a model saved after ``.double()``); it loads as float32."""
    path = tmp_path / "double.pt"
    _edit(lambda p: p.__setitem__("state_dict", {k: v.double() if v.is_floating_point() else v
                                                 for k, v in p["state_dict"].items()}))(path, good)
    model = devinet.load(path)
    assert model.final_conv.bias.dtype == torch.float32
    torch.testing.assert_close(model.final_conv.bias, good[1]["state_dict"][BIAS], rtol=0, atol=0)


def test_the_good_checkpoint_loads(good):
    """The control: the file every malformed case starts from is fine."""
    model = devinet.load(good[0])
    assert model.config == SMALL and model.checkpoint_metadata == {"note": "ok"}


# ---------------------------------------------------------------------- crafted pickles
def _torch_file(path: Path, payload: CodeRunningPickle, good, where: str) -> None:
    """A torch zip archive shaped like a devinet checkpoint with ``payload`` inside (data.pkl)."""
    content = _payload(good)
    if where == "top":
        content["extra"] = payload
    elif where == "metadata":
        content["metadata"]["note"] = payload
    else:
        content["state_dict"][BIAS] = payload
    torch.save(content, path)


@pytest.mark.parametrize("kind", ["os.system", "exec", "open"])
@pytest.mark.parametrize("where", ["top", "metadata", "state_dict"])
def test_crafted_torch_pickle_is_refused_without_running_it(kind, where, good, tmp_path, capsys):
    # The control: an unsafe load of the same kind of file runs the payload.
    control_marker = tmp_path / "control_marker"
    _torch_file(tmp_path / "control.pt", code_running_payloads(control_marker)[kind], good, where)
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control_marker.exists(), "the payload is not live: this test would prove nothing"
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    _torch_file(path, code_running_payloads(marker)[kind], good, where)
    with pytest.raises(FileFormatError, match=r"refused to load: it holds more than plain data \(.*GLOBAL") as info:
        devinet.load(path)
    assert "weights_only" not in str(info.value)  # no advice to load it unsafely
    code, _, err = cli(["convert", path, tmp_path / "out.h5"], capsys)
    assert_one_line_refusal(code, err, str(path))
    assert not marker.exists()
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_legacy_pickle_file_is_never_unpickled(protocol, tmp_path, capsys):
    """A plain pickle (torch's pre-1.6 format) with a payload: refused before unpickling."""
    marker = tmp_path / "marker"
    payload = code_running_payloads(marker)["os.system"]
    data = pickle.dumps({"format": "devinet-checkpoint", "x": payload}, protocol=protocol)
    pickle.loads(data)
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    path = tmp_path / "evil.pt"
    path.write_bytes(data)
    with pytest.raises(FileFormatError, match="not a torch zip archive"):
        devinet.load(path)
    code, _, err = cli(["convert", path, tmp_path / "out.h5"], capsys)
    assert_one_line_refusal(code, err, str(path))
    assert not marker.exists()


def test_checkpoints_hold_plain_data_only(good):
    """What devinet.save writes loads under the weights-only unpickler, and holds no object of a class."""
    allowed = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)

    def walk(value) -> None:
        assert isinstance(value, allowed), type(value)
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str)
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(torch.load(good[0], weights_only=True))


# ---------------------------------------------------------------------- writing
def test_save_refuses_bad_destinations(good, tmp_path):
    model = devinet.load(good[0])
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = {
        tmp_path / "folder.pt": "destination is a directory",
        tmp_path / "absent" / "m.pt": "does not exist",
        tmp_path / "a_file" / "m.pt": "does not exist",
    }
    for destination, problem in cases.items():
        with pytest.raises(FileFormatError, match=problem) as info:
            devinet.save(model, destination)
        assert str(info.value).startswith(str(destination))
    assert leftovers(tmp_path, {"folder.pt", "a_file"}) == []


def test_save_refuses_an_unwritable_folder(good, read_only_folder):
    with pytest.raises(FileFormatError, match="is not writable"):
        devinet.save(devinet.load(good[0]), read_only_folder / "m.pt")
    assert list(read_only_folder.iterdir()) == []


class _Interrupted(BaseException):
    pass


def test_failed_overwrite_keeps_the_old_checkpoint(good, tmp_path, monkeypatch):
    """A save cut short (here: an exception half-way through writing) leaves the old file whole, no temporary."""
    path = tmp_path / "m.pt"
    path.write_bytes(good[0].read_bytes())
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(os.path.getsize(f) // 2)
        raise _Interrupted()

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(_Interrupted):
        devinet.save(devinet.load(good[0]), path, force=True)
    assert path.read_bytes() == before
    assert leftovers(tmp_path, {"m.pt"}) == []


@pytest.mark.slow
def test_sigkill_during_save_leaves_no_checkpoint(tmp_path):
    """SIGKILL in the middle of writing: the destination never exists half-written."""
    destination = tmp_path / "m.pt"
    script = f"""
import os, signal, torch, devinet
from devinet import DeviNet, DeviNetConfig
SMALL = DeviNetConfig.from_dict({SMALL.to_dict()!r})
real_save = torch.save
def half_then_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    with open(f, "r+b") as handle:
        handle.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half_then_die
devinet.save(DeviNet(SMALL), {str(destination)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not destination.exists()
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".m.pt."), stale  # the half-written temporary, never renamed
    devinet.save(DeviNet(SMALL), destination)  # the next save is not disturbed by it
    assert devinet.load(destination).config == SMALL


# ---------------------------------------------------------------------- scalers and configs: plain data
def test_scaler_file_with_a_pickled_payload_is_refused_without_running_it(tmp_path):
    import numpy as np

    from devinet.features import Scaler

    marker = tmp_path / "marker"
    payload = np.array([code_running_payloads(marker)["os.system"]], dtype=object)
    np.savez(tmp_path / "control.npz", mean=payload, std=np.ones(1))
    with np.load(tmp_path / "control.npz", allow_pickle=True) as unsafe:
        unsafe["mean"]
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    np.savez(tmp_path / "scaler.npz", mean=payload, std=np.ones(1))
    with pytest.raises(FileFormatError, match=r"scaler.npz: not a scaler file \(Object arrays cannot be loaded"):
        Scaler.load(tmp_path / "scaler.npz")
    assert not marker.exists()


def _python_tag_yaml(marker: Path) -> str:
    return f'!!python/object/apply:os.system ["touch {marker}"]\n'


def test_yaml_configs_are_read_as_plain_data(tmp_path, capsys):
    """A size config or a pyannote config.yml with a python tag is refused, and the tag never runs."""
    yaml = import_or_require("yaml", "experiments")
    from devinet.integrations.legacy_config import read_legacy_config
    from experiments.systems import load_size_config

    marker = tmp_path / "marker"
    yaml.unsafe_load(_python_tag_yaml(marker))
    assert marker.exists(), "the payload is not live"
    marker.unlink()
    path = tmp_path / "size.yaml"
    path.write_text(_python_tag_yaml(marker))
    with pytest.raises(FileFormatError, match=r"size.yaml: not valid YAML \(could not determine a constructor"):
        load_size_config(path)
    config = tmp_path / "config.yml"
    config.write_text("architecture:\n  name: pyannote.models.DeviNet\n  params: " + _python_tag_yaml(marker))
    with pytest.raises(FileFormatError, match="config.yml: not valid YAML"):
        read_legacy_config(config)
    code, _, err = cli(["reproduce", "--config", path, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert_one_line_refusal(code, err, str(path))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_binary_yaml_config_is_a_clear_error(tmp_path, capsys):
    """Random bytes where a size config is expected: one line, no traceback (a UnicodeDecodeError escaped)."""
    path = tmp_path / "size.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x9c" * 20)
    code, _, err = cli(["reproduce", "--config", path, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert_one_line_refusal(code, err, str(path))


@pytest.fixture()
def immutable_file(tmp_path):
    """An existing file that cannot be replaced although its folder is writable (chattr +i; root only)."""
    path = tmp_path / "locked.pt"
    path.write_bytes(b"precious")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_destination_that_cannot_be_replaced_is_named_in_the_error(good, immutable_file):
    """The rename at the end of an atomic write fails: the error names the destination, the old file stays
    and the temporary file is gone."""
    with pytest.raises(FileFormatError, match=r"locked.pt: cannot be written \(Operation not permitted\)") as info:
        devinet.save(devinet.load(good[0]), immutable_file, force=True)
    assert str(info.value).startswith(str(immutable_file))
    assert immutable_file.read_bytes() == b"precious"
    assert leftovers(immutable_file.parent, {"locked.pt"}) == []

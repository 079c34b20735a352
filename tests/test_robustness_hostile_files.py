"""Hostile model files and destinations (issue 22): the one-line promise where an attacker pushes.

Each case builds its own input, at test time, from the genuine Keras 2.0.8 files in
../shared/reference/keras208, and runs the command line: exit status 1, exactly one stderr
line naming the file and the problem, no traceback, nothing left at the destination. Case ids
start with the issue's class (``c1`` unbounded reads, ``c2`` unusual numeric types, ``c3``
damaged archives, ``c4`` a config contradicting the weights, ``c5`` Keras' own refusals,
``c6`` a full disk, ``c7`` a dangling symlink, ``c10`` amplification), so that
``pytest --collect-only -q`` counts them by class (README, "What is guaranteed"). Inputs that
would make a reader allocate gigabytes run in a child process under an address-space limit:
the refusal must come, in one line, well inside it.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

import devinet
from devinet import limits
from devinet.cli import main
from parity.convert import keras_to_torch, torch_to_keras

AT_MODEL = "k208_theano_crnn_at.h5"  # model.save: model_config + weights
AT_WEIGHTS = "k208_theano_crnn_at_weights.h5"  # save_weights
GiB = 1 << 30
#: address space of the children that read amplifying inputs: `devinet convert` of a genuine
#: file peaks at about 0.85 GB of address space, each hostile input asks for several GB
MEMORY_LIMIT = 2 * GiB


@pytest.fixture(scope="module")
def k208(reference_dir) -> Path:
    return reference_dir / "keras208"


def cli(argv: list, capsys) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def assert_refused(code: int, err: list[str], name: Path | str, problem: str, command: str = "convert") -> None:
    """Exit 1 and one stderr line, ``devinet COMMAND: error: NAME: ...PROBLEM...``, without a traceback."""
    assert code == 1, err
    assert len(err) == 1, err
    assert err[0].startswith(f"devinet {command}: error: {name}"), err
    assert problem in err[0] and "Traceback" not in err[0], err


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------- building hostile legacy files
def _edited(name: str, edit: Callable[[h5py.File, h5py.Group], None], large_attributes: bool = False):
    """A copy of the genuine file ``name`` changed by ``edit(file, weights_group)``.

    ``large_attributes``: the copy is rewritten in HDF5's newest format, whose objects can hold
    attributes beyond 64 kB (the genuine file's older object headers cannot).
    """
    def make(k208: Path, path: Path) -> None:
        if large_attributes:
            with h5py.File(k208 / name, "r") as source, h5py.File(path, "w", libver="latest") as target:
                for key in source:
                    source.copy(source[key], target, name=key)
                for key, value in source.attrs.items():
                    target.attrs[key] = value
        else:
            shutil.copyfile(k208 / name, path)
            path.chmod(0o644)
        with h5py.File(path, "r+") as handle:
            edit(handle, handle["model_weights"] if "model_weights" in handle else handle)
    return make


def _declared_only(layer: str, weight: str, shape: tuple[int, ...]):
    """Replace a weight by a chunked dataset of ``shape`` whose chunks are never written: the file
    stays small, reading it would allocate the whole shape."""
    def edit(handle, group):
        full = f"{layer}/{weight}"
        del group[layer][full]
        group[layer].create_dataset(full, shape=shape, dtype="float32", chunks=(1,) * (len(shape) - 1) + (1024,))
    return edit


def _extra_weights(count: int, elements: int):
    """``count`` more weights of ``elements`` elements each on the final conv (declared, never written)."""
    def edit(handle, group):
        names = list(group["conv2d_9"].attrs["weight_names"])
        for i in range(count):
            name = f"conv2d_9/extra_{i}"
            group["conv2d_9"].create_dataset(name, shape=(elements,), dtype="float32", chunks=(1024,))
            names.append(name.encode())
        group["conv2d_9"].attrs["weight_names"] = np.array(names)
    return edit


def _repeat_layer(name: bytes, times: int):
    def edit(handle, group):
        group.attrs["layer_names"] = np.array(list(group.attrs["layer_names"]) + [name] * times)
    return edit


def _retyped(dtype: str):
    """Every weight stored as ``dtype`` (its values unchanged where the type holds them)."""
    def edit(handle, group):
        datasets = []
        group.visititems(lambda n, obj: datasets.append(n) if isinstance(obj, h5py.Dataset) else None)
        for name in datasets:
            values = group[name][()]
            del group[name]
            group.create_dataset(name, data=values.astype(dtype))
    return edit


def _model_config(edit: Callable[[dict], None]):
    """The genuine model.save file with its model_config JSON changed by ``edit(config)``."""
    def change(handle, group):
        config = json.loads(handle.attrs["model_config"])
        edit(config)
        handle.attrs["model_config"] = np.bytes_(json.dumps(config).encode())
    return _edited(AT_MODEL, change)


def _set_in_layer(layer: str, *path_and_value):
    """Set ``config[path...] = value`` in the layer named ``layer`` of a model_config."""
    *path, value = path_and_value

    def edit(config: dict) -> None:
        entry = next(e for e in config["config"]["layers"] if e["config"]["name"] == layer)
        target = entry["config"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------------- building hostile .keras archives
def _archive(members: list[tuple[str, bytes]]):
    """A .keras archive of stored (uncompressed) members."""
    def make(k208: Path, path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return make


def _genuine_members(k208: Path) -> list[tuple[str, bytes]]:
    """config.json naming no layer, metadata.json, and an HDF5 weights member built from genuine bytes."""
    return [("config.json", json.dumps({"class_name": "Functional", "config": {"layers": []}}).encode()),
            ("metadata.json", b'{"keras_version": "3.10.0"}'),
            ("model.weights.h5", (k208 / AT_WEIGHTS).read_bytes())]


def _patched(member: str, patch: Callable[[bytearray, zipfile.ZipInfo, int], None]):
    """A genuine-bytes archive whose ``member`` is damaged by ``patch(data, info, central_offset)``."""
    def make(k208: Path, path: Path) -> None:
        _archive(_genuine_members(k208))(k208, path)
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
        central = data.index(b"PK\x01\x02")
        while data[central + 46: central + 46 + len(member)] != member.encode():
            central = data.index(b"PK\x01\x02", central + 4)
        patch(data, info, central)
        path.write_bytes(bytes(data))
    return make


def _flip_a_data_byte(data: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.file_size // 2] ^= 0xFF  # the stored CRC no longer matches


def _compression_method(method: int):
    def patch(data: bytearray, info: zipfile.ZipInfo, central: int) -> None:
        struct.pack_into("<H", data, info.header_offset + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    return patch


def _encrypted(data: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    for offset in (info.header_offset + 6, central + 8):
        flags = struct.unpack_from("<H", data, offset)[0]
        struct.pack_into("<H", data, offset, flags | 0x1)


def _deflated_zeros(total: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``total`` zero bytes built from one 1-MiB block repeated (each ends
    with a full flush, so the copies chain), and the CRC-32 of those zeros: a zip bomb in a few MB."""
    block = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = 0
    zeros = bytes(block)
    for _ in range(total // block):
        crc = zlib.crc32(zeros, crc)
    return piece * (total // block) + final, crc


def _zip_bomb(member: str, total: int):
    """A .keras archive (genuine-bytes members) whose ``member`` inflates to ``total`` zero bytes."""
    def make(k208: Path, path: Path) -> None:
        members = [(n, d) for n, d in _genuine_members(k208) if n != member]
        stream, crc = _deflated_zeros(total)
        out, central = bytearray(), bytearray()
        entries = [(n, d, 0, zlib.crc32(d), len(d)) for n, d in members] + [(member, stream, 8, crc, total)]
        for name, data, method, crc32, size in entries:
            offset = len(out)
            encoded = name.encode()
            out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc32, len(data), size,
                               len(encoded), 0) + encoded + data
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc32, len(data),
                                   size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
        out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                                     len(out), 0)
        path.write_bytes(bytes(out))
    return make


# ---------------------------------------------------------------------- the cases
W, M = AT_WEIGHTS, AT_MODEL
BIG = 1 << 40  # 2**40 float32: 4 TiB declared by a file of a few MB

#: case id -> (source file name, how to make it, what the one-line error says)
REFUSED = {
    # c1: unbounded reads (those that would take gigabytes are in AMPLIFYING, run under a memory limit)
    "c1-weights_declaring_80_million_elements": (
        "model.h5", _edited(W, _extra_weights(20, limits.MAX_WEIGHT_ELEMENTS)), "elements in all"),
    "c1-layer_listed_twice": ("model.h5", _edited(W, _repeat_layer(b"conv2d_9", 1)),
                              "layer 'conv2d_9' is listed twice in layer_names"),
    "c1-model_config_layer_twice": ("model.h5", _model_config(
        lambda c: c["config"]["layers"].append(c["config"]["layers"][-1])), "model_config describes layer"),
    "c1-keras3_config_layer_twice": ("model.keras", _archive([
        ("config.json", json.dumps({"config": {"layers": [{"class_name": "Dense", "config": {"name": "a"}}] * 2}}
                                   ).encode()), ("model.weights.h5", b"")]), "config.json describes layer 'a' twice"),
    # c2: unusual numeric types that cannot hold a weight
    "c2-opaque_weights": ("model.h5", _edited(W, _retyped("V4")), "has dtype |V4; Keras weights are floating point"),
    # c3: damaged archives and descriptions
    "c3-bad_crc_of_the_weights": ("model.keras", _patched("model.weights.h5", _flip_a_data_byte),
                                  "model.weights.h5 is damaged (BadZipFile: Bad CRC-32"),
    "c3-unsupported_compression": ("model.keras", _patched("model.weights.h5", _compression_method(99)),
                                   "model.weights.h5 cannot be read (That compression method is not supported)"),
    "c3-encrypted_member": ("model.keras", _patched("model.weights.h5", _encrypted),
                            "is encrypted, password required"),
    "c3-config_nested_100000_deep": ("model.keras", _archive([("config.json", _deep_json(100_000).encode())]),
                                     "unreadable config.json (nested too deeply"),
    "c3-metadata_nested_100000_deep": ("model.keras", _archive([
        ("config.json", b'{"config": {"layers": []}}'), ("metadata.json", _deep_json(100_000).encode()),
        ("model.weights.h5", b"")]), "unreadable metadata.json (nested too deeply"),
    "c3-legacy_model_config_nested_100000_deep": ("model.h5", _edited(
        M, lambda h, g: h.attrs.__setitem__("model_config", np.bytes_(_deep_json(100_000).encode())), True),
        "unreadable model_config (nested too deeply"),
    # c4: a config that contradicts the weights
    "c4-conv_strides": ("model.h5", _model_config(_set_in_layer("conv2d_3", "strides", [2, 2])),
                        "layer 'conv2d_3' (gcnn_2_conv): the config says strides [2, 2], devinet builds [1, 1]"),
    "c4-conv_dilation": ("model.h5", _model_config(_set_in_layer("conv2d_2", "dilation_rate", [2, 2])),
                         "layer 'conv2d_2' (gcnn_1_conv): the config says dilation_rate [2, 2]"),
    "c4-conv_filters": ("model.h5", _model_config(_set_in_layer("conv2d_1", "filters", 64)),
                        "the config says filters 64, devinet builds 128"),
    "c4-conv_padding": ("model.h5", _model_config(_set_in_layer("conv2d_9", "padding", "valid")),
                        "layer 'conv2d_9' (final_conv): the config says padding 'valid', devinet builds 'same'"),
    "c4-batchnorm_epsilon": ("model.h5", _model_config(_set_in_layer("batch_normalization_4", "epsilon", 0.1)),
                             "(gcnn_3_bn): the config says epsilon 0.1, devinet builds 0.001"),
    "c4-gru_units": ("model.h5", _model_config(_set_in_layer("bidirectional_1", "layer", "config", "units", 64)),
                     "(rnn_0_linear): the config says layer units 64, devinet builds 128"),
    "c4-gru_go_backwards": ("model.h5", _model_config(
        _set_in_layer("bidirectional_2", "layer", "config", "go_backwards", True)),
        "(rnn_0_sigmoid): the config says layer go_backwards True, devinet builds False"),
    "c4-bidirectional_merge_mode": ("model.h5", _model_config(_set_in_layer("bidirectional_1", "merge_mode", "sum")),
                                    "the config says merge_mode 'sum', devinet builds 'concat'"),
    "c4-pool_strides": ("model.h5", _model_config(_set_in_layer("max_pooling2d_2", "strides", [1, 1])),
                        "(pool_1): the config says strides [1, 1], devinet builds [2, 2]"),
    "c4-head_activation": ("model.h5", _model_config(
        _set_in_layer("localization_layer", "layer", "config", "activation", "softmax")),
        "(head_frame): the config says activation 'softmax', devinet builds 'sigmoid'"),
    "c4-gate_activation": ("model.h5", _model_config(_set_in_layer("activation_2", "activation", "tanh")),
                           "(gcnn_0_act_b): the config says activation 'tanh', devinet builds 'sigmoid'"),
    "c4-sequence_width": ("model.h5", _model_config(_set_in_layer("reshape_2", "target_shape", [30, 128])),
                          "(to_sequence): the config says target_shape (features) [30, 128], devinet builds 256"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_model_file_is_refused_in_one_line(case, k208, tmp_path, capsys):
    name, make, problem = REFUSED[case]
    src = tmp_path / name
    make(k208, src)
    out = tmp_path / "out" / "model.pt"
    out.parent.mkdir()
    code, stdout, err = cli(["convert", src, out], capsys)
    assert_refused(code, err, src, problem)
    assert stdout == "" and leftovers(out.parent, set()) == []


def test_the_guarantees_quote_every_limit():
    """docs/guarantees.md states each limit of devinet/limits.py, by name and value."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "guarantees.md").read_text()
    for name, value in vars(limits).items():
        if name.startswith(("MAX_", "MIN_")):
            assert f"`{name}`" in text and f"{int(value):,}" in text, name


def test_the_untouched_bases_convert(k208, tmp_path, capsys):
    """The controls: the genuine files the c1-c4 cases damage convert, so each refusal is the damage's."""
    for name in (AT_MODEL, AT_WEIGHTS):
        assert cli(["convert", k208 / name, tmp_path / f"{name}.pt"], capsys)[0] == 0
    # the c4 edit helper itself changes nothing when it writes the same value back
    src = tmp_path / "same.h5"
    _model_config(_set_in_layer("conv2d_3", "strides", [1, 1]))(k208, src)
    assert cli(["convert", src, tmp_path / "same.pt"], capsys)[0] == 0


# ---------------------------------------------------------------------- c2: floating types accepted
@pytest.mark.parametrize("dtype, note", [(">f4", "big-endian (>f4)"), (">f8", "big-endian (>f8)"),
                                         ("longdouble", "(long double) were rounded to float64")],
                         ids=["c2-big_endian_float32", "c2-big_endian_float64", "c2-long_double"])
def test_other_floating_types_convert_with_a_note(dtype, note, k208, tmp_path, capsys):
    """Weights of any floating type numpy reads convert to the same model, and the report says how."""
    if dtype == "longdouble" and np.finfo(np.longdouble).bits <= 64:
        pytest.skip("long double is float64 on this machine")
    src = tmp_path / "model.h5"
    _edited(W, _retyped(dtype))(k208, src)
    code, out, err = cli(["convert", src, tmp_path / "model.pt"], capsys)
    assert code == 0 and err == [], err
    assert any(line.startswith("note: ") and note in line for line in out.splitlines()), out
    assert note in " ".join(devinet.load(tmp_path / "model.pt").checkpoint_metadata["notes"])
    genuine = keras_to_torch(k208 / W).model.state_dict()
    for key, value in devinet.load(tmp_path / "model.pt").state_dict().items():
        assert torch.equal(value, genuine[key]), key


@pytest.mark.parametrize("values, outcome", [("finite", 0), ("nan", 1)],
                         ids=["c2-float8_checkpoint", "c2-float8_checkpoint_with_nan"])
def test_float8_checkpoint_weights_are_checked_not_crashed_on(values, outcome, k208, tmp_path, capsys):
    """torch has no isfinite for float8: a checkpoint holding float8 weights loads (they are float32
    values exactly) or, holding NaN, is refused in one line."""
    model = keras_to_torch(k208 / W).model
    payload = torch.load(devinet.save(model, tmp_path / "good.pt"), weights_only=True)
    bias = payload["state_dict"]["final_conv.bias"].to(torch.float8_e4m3fn)
    if values == "nan":
        bias[0] = float("nan")
    payload["state_dict"]["final_conv.bias"] = bias
    src = tmp_path / "float8.pt"
    torch.save(payload, src)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli(["convert", src, out / "model.h5"], capsys)
    if outcome:
        assert_refused(code, err, src, "final_conv.bias holds NaN or infinite values")
        assert leftovers(out, set()) == []
    else:
        assert code == 0 and err == [], err
        assert torch.equal(devinet.load(src).final_conv.bias, bias.float())


# ---------------------------------------------------------------------- c7: dangling symlink
@pytest.mark.parametrize("case", ["c7-dangling_symlink_destination"])  # the id counts the case in its class
def test_dangling_symlink_destination_is_refused_unless_forced(case, k208, tmp_path, capsys):
    link = tmp_path / "model.pt"
    link.symlink_to(tmp_path / "elsewhere" / "target.pt")
    code, _, err = cli(["convert", k208 / W, link], capsys)
    assert_refused(code, err, link, "destination is a symbolic link to a missing file (use --force")
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
    assert cli(["convert", k208 / W, link, "--force"], capsys)[0] == 0
    assert not link.is_symlink() and devinet.load(link).config.name == "cvssp_crnn_at"  # the link itself replaced
    assert not (tmp_path / "elsewhere").exists()


# ---------------------------------------------------------------------- c6: full disk
@pytest.mark.slow
@pytest.mark.parametrize("direction", ["c6-checkpoint_torch_save", "c6-legacy_h5_h5py"])
def test_write_past_the_file_size_limit_is_one_line_naming_the_destination(direction, k208, tmp_path,
                                                                         limited_devinet):
    """RLIMIT_FSIZE makes every write beyond 1 MB fail as on a full disk (the files here are 4.8 MB)."""
    src = k208 / W
    if direction == "c6-legacy_h5_h5py":
        src = devinet.save(keras_to_torch(src).model, tmp_path / "model.pt")
    out = tmp_path / "out"
    out.mkdir()
    dst = out / ("model.pt" if direction == "c6-checkpoint_torch_save" else "model.h5")
    code, _, err, _ = limited_devinet("file_size", 1 << 20, ["convert", src, dst])
    assert_refused(code, err, dst, "cannot be written (File too large)")
    assert leftovers(out, set()) == []


# ---------------------------------------------------------------------- c10 (and c1): amplification
#: case id -> (source name, how to make it, what the one-line error says)
AMPLIFYING = {
    "c10-keras_weights_zip_bomb_1.5_GiB": ("model.keras", _zip_bomb("model.weights.h5", 3 * GiB // 2),
                                          "model.weights.h5 declares 1,610,612,736 bytes uncompressed"),
    "c10-keras_metadata_zip_bomb_1.5_GiB": ("model.keras", _zip_bomb("metadata.json", 3 * GiB // 2),
                                           "metadata.json declares 1,610,612,736 bytes uncompressed"),
    "c1-dataset_declaring_4_TiB": ("model.h5", _edited(W, _declared_only("conv2d_9", "bias", (BIG,))),
                                   "declares shape (1099511627776,)"),
    "c1-layer_names_repeated_100000_times": ("model.h5", _edited(W, _repeat_layer(b"conv2d_9", 100_000), True),
                                             "attribute layer_names lists 100,063 names"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(AMPLIFYING))
def test_amplifying_model_file_is_refused_within_a_memory_limit(case, k208, tmp_path, limited_devinet):
    """Under a 2 GiB address-space limit (a genuine conversion needs about 0.85 GB), each input,
    which would make the reader allocate from 1.5 GB to terabytes, is refused in one line and the
    process's peak resident memory stays under 1 GiB."""
    name, make, problem = AMPLIFYING[case]
    src = tmp_path / name
    make(k208, src)
    assert src.stat().st_size < 8 << 20  # a few MB on disk
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err, peak = limited_devinet("memory", MEMORY_LIMIT, ["convert", src, out / "model.pt"])
    assert_refused(code, err, src, problem)
    assert peak is not None and peak < GiB, peak
    assert leftovers(out, set()) == []


def test_the_zip_bomb_really_inflates(k208, tmp_path):
    """The control: the bomb is a valid archive whose member inflates, CRC and all, to what it declares."""
    src = tmp_path / "bomb.keras"
    _zip_bomb("metadata.json", 64 << 20)(k208, src)
    with zipfile.ZipFile(src) as archive:
        assert archive.getinfo("metadata.json").file_size == 64 << 20
        assert archive.read("metadata.json") == bytes(64 << 20)
        assert archive.read("model.weights.h5") == (k208 / W).read_bytes()


# ---------------------------------------------------------------------- c4, c5, c6 with Keras 3 files
@pytest.fixture(scope="module")
def keras_file(keras, k208, tmp_path_factory) -> Path:
    """A .keras archive written by devinet from the genuine crnn_at weights."""
    return torch_to_keras(keras_to_torch(k208 / W).model, tmp_path_factory.mktemp("keras") / "model.keras")


def _keras_config_edit(edit: Callable[[dict], None]):
    def make(base: Path, path: Path) -> None:
        with zipfile.ZipFile(base) as source, zipfile.ZipFile(path, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == "config.json":
                    config = json.loads(data)
                    edit(config)
                    data = json.dumps(config).encode()
                target.writestr(info, data)
    return make


def _keras_layer(name: str, *path_and_value):
    *path, value = path_and_value

    def edit(config: dict) -> None:
        entry = next(e for e in config["config"]["layers"] if e["config"]["name"] == name)
        target = entry
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _lambda_instead_of(name: str, marker: Path):
    """Replace a weightless layer by a Lambda whose function would create ``marker`` (Keras 3's format)."""
    import base64
    import marshal

    namespace: dict = {}
    exec(f"def crafted(x):\n    open({str(marker)!r}, 'w').close()\n    return x\n", namespace)
    code = base64.b64encode(marshal.dumps(namespace["crafted"].__code__)).decode()

    def edit(config: dict) -> None:
        entry = next(e for e in config["config"]["layers"] if e["config"]["name"] == name)
        entry.update({"module": "keras.layers", "class_name": "Lambda", "registered_name": None})
        entry["config"] = {"name": name, "trainable": True, "arguments": {},
                           "function": {"class_name": "__lambda__", "config": {"code": code, "defaults": None,
                                                                                 "closure": None}}}
    return edit


def _unknown_class(name: str):
    def edit(config: dict) -> None:
        entry = next(e for e in config["config"]["layers"] if e["config"]["name"] == name)
        entry.update({"class_name": "NoSuchLayer", "registered_name": "NoSuchLayer", "module": None})
    return edit


KERAS3 = {
    "c4-keras3_conv_strides": ("convert", _keras_layer("gcnn_2_conv", "config", "strides", [2, 2]),
                               "layer 'gcnn_2_conv' (gcnn_2_conv): the config says strides [2, 2]"),
    "c4-keras3_backward_gru_forward": ("convert", _keras_layer("rnn_0_linear", "config", "backward_layer", "config",
                                                               "go_backwards", False),
                                       "the config says backward_layer go_backwards False, devinet builds True"),
    "c4-keras3_batchnorm_epsilon": ("convert", _keras_layer("gcnn_3_bn", "config", "epsilon", 0.01),
                                    "(gcnn_3_bn): the config says epsilon 0.01, devinet builds 0.001"),
    "c5-keras3_unknown_class": ("parity", _unknown_class("gcnn_0_glu"),
                                "Keras refuses to load it (TypeError: Could not locate class 'NoSuchLayer'"),
}


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.parametrize("case", sorted(KERAS3))
def test_hostile_keras3_archive_is_refused_in_one_line(case, keras_file, tmp_path, capsys):
    command, edit, problem = KERAS3[case]
    src = tmp_path / "model.keras"
    _keras_config_edit(edit)(keras_file, src)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["convert", src, out / "model.pt"] if command == "convert" else ["parity", src, "--dtype", "float32"]
    code, _, err = cli(argv, capsys)
    assert_refused(code, err, src, problem, command)
    assert leftovers(out, set()) == []


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.parametrize("case", ["c5-keras3_lambda_layer"])
def test_lambda_in_a_keras3_archive_is_refused_in_one_line_and_never_run(case, keras_file, tmp_path, capsys):
    marker = tmp_path / "marker"
    src = tmp_path / "model.keras"
    _keras_config_edit(_lambda_instead_of("gcnn_0_glu", marker))(keras_file, src)
    code, _, err = cli(["parity", src, "--dtype", "float32"], capsys)
    assert_refused(code, err, src, "Keras refuses to load it (ValueError: Requested the deserialization of a "
                                   "`Lambda` layer", "parity")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.parametrize("case", ["c6-keras3_archive_keras_save"])
def test_keras3_write_past_the_file_size_limit_is_one_line(case, keras, k208, tmp_path, limited_devinet):
    src = devinet.save(keras_to_torch(k208 / W).model, tmp_path / "model.pt")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err, _ = limited_devinet("file_size", 1 << 20, ["convert", src, out / "model.keras"])
    assert_refused(code, err, out / "model.keras", "cannot be written (File too large)")
    assert leftovers(out, set()) == []

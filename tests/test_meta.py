"""Readers of the official DCASE 2017 Task 4 metadata (experiments.meta)."""

from __future__ import annotations

import numpy as np
import pytest

from devinet.errors import DevinetError, FileFormatError, InputError
from experiments import meta as M


@pytest.fixture(scope="module")
def meta_dir(reference_dir):
    return reference_dir / "dcase2017_task4" / "meta"


def test_classes_in_official_order():
    assert len(M.CLASSES) == 17 == len(set(M.CLASSES))
    assert M.CLASSES[:2] == ("Train horn", "Air horn, truck horn")
    assert M.CLASSES[7] == "Fire engine, fire truck (siren)"
    assert M.CLASSES[-3:] == ("Truck", "Motorcycle", "Train")


@pytest.mark.parametrize(
    "name, key",
    [
        ("Y-5QrBL6MzLg_60.000_70.000.wav", "-5QrBL6MzLg_60.000_70.000"),
        ("-5QrBL6MzLg_60.000_70.000.wav", "-5QrBL6MzLg_60.000_70.000"),
        ("-5QrBL6MzLg_60.000_70.000", "-5QrBL6MzLg_60.000_70.000"),
        ("Y-5QrBL6MzLg_60.000_70.000", "-5QrBL6MzLg_60.000_70.000"),
        ("/data/wav/Y-5QrBL6MzLg_60.000_70.000.WAV", "-5QrBL6MzLg_60.000_70.000"),
        # ids may contain '_' and may start with 'Y' themselves
        ("Y_HDolAn2_us_60.000_70.000.wav", "_HDolAn2_us_60.000_70.000"),
        ("_HDolAn2_us_60.000_70.000.wav", "_HDolAn2_us_60.000_70.000"),
        ("YYq3nFbsQxb4_30.000_40.000.wav", "Yq3nFbsQxb4_30.000_40.000"),
        ("Yq3nFbsQxb4_30.000_40.000.wav", "Yq3nFbsQxb4_30.000_40.000"),
        ("Y0a8RB5eOGJ4_30_40", "0a8RB5eOGJ4_30_40"),
    ],
)
def test_clip_key(name, key):
    assert M.clip_key(name) == key
    assert M.clip_key(M.wav_name(key)) == key


@pytest.mark.parametrize("name", ["", "foo.wav", "abc_30.000.wav", "abc_x_40.000", "_30.000_40.000"])
def test_clip_key_rejects_names_that_do_not_parse(name):
    with pytest.raises(DevinetError, match="clip name"):
        M.clip_key(name)
    with pytest.raises(ValueError):  # also a ValueError, for callers that expect one
        M.clip_key(name)


def test_real_clip_lists(meta_dir):
    testing = M.read_clip_list(meta_dir / "testing_set.csv")
    training = M.read_clip_list(meta_dir / "training_set.csv")
    assert (len(training), len(testing)) == (51172, 488)
    first = testing[0]
    assert first == M.ClipEntry("-5QrBL6MzLg_60.000_70.000", "-5QrBL6MzLg", 60.0, 70.0, ("Train horn", "Train"))
    # labels that contain ", " are not split: 3 labels, 3 label ids
    gbo = next(e for e in testing if e.youtube_id == "-Gbohom8C4Q")
    assert gbo.labels == ("Train horn", "Air horn, truck horn", "Train")
    assert all(label in M.CLASSES for e in training + testing for label in e.labels)
    assert all(len(e.youtube_id) == 11 for e in training)
    assert sum(e.youtube_id.startswith("Y") for e in training) == 669
    fractional = next(e for e in training if e.start % 1)  # keys keep the times as written
    assert fractional.key.endswith(f"_{fractional.start:.3f}_{fractional.end:.3f}")
    assert len({e.key for e in training}) == 51172


def test_testing_list_agrees_with_weak_ground_truth(meta_dir):
    """Two official files written independently: the parsers must read the same labels."""
    testing = M.read_clip_list(meta_dir / "testing_set.csv")
    weak = M.read_weak_labels(meta_dir / "groundtruth_weak_label_testing_set.csv")
    assert set(weak) == {e.key for e in testing}
    assert all(weak[e.key] == frozenset(e.labels) for e in testing)


@pytest.mark.parametrize("split, clips, pairs, events", [("testing", 488, 606, 688), ("evaluation", 1103, 1350, 1706)])
def test_real_ground_truth(meta_dir, split, clips, pairs, events):
    weak = M.read_weak_labels(meta_dir / f"groundtruth_weak_label_{split}_set.csv")
    strong = M.read_strong_labels(meta_dir / f"groundtruth_strong_label_{split}_set.csv")
    assert len(weak) == clips and sum(map(len, weak.values())) == pairs
    assert len(strong) == events
    assert {e.key for e in strong} == set(weak)
    assert {e.label for e in strong} == set(M.CLASSES)
    assert all(0 <= e.onset <= e.offset <= 10.0 + 1e-9 for e in strong)
    assert any(e.onset == e.offset == 0 for e in strong)  # "tagged but not heard" rows are kept
    assert all(e.label in weak[e.key] for e in strong)


def test_line_ends_and_bom_do_not_matter(tmp_path):
    rows = ['abcdefghijk,30.000,40.000,"Car,Air horn, truck horn","/m/0k4j,/m/05x_td"',
            "bcdefghijkl,0.000,10.000,Train,/m/07jdr"]
    lf, crlf = tmp_path / "lf.csv", tmp_path / "crlf.csv"
    lf.write_bytes(("\n".join(rows) + "\n").encode())
    crlf.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    assert M.read_clip_list(lf) == M.read_clip_list(crlf)
    assert M.read_clip_list(lf)[0].labels == ("Car", "Air horn, truck horn")
    weak = "abcdefghijk_30.000_40.000.wav\t30.000\t40.000\tCar\n\nabcdefghijk_30.000_40.000.wav\t30.000\t40.000\tBus\n"
    (tmp_path / "w1.csv").write_text(weak)
    (tmp_path / "w2.csv").write_bytes(weak.replace("\n", "\r\n").encode())
    assert M.read_weak_labels(tmp_path / "w1.csv") == M.read_weak_labels(tmp_path / "w2.csv") == {
        "abcdefghijk_30.000_40.000": frozenset({"Car", "Bus"})}


@pytest.mark.parametrize(
    "reader, text, problem",
    [
        (M.read_clip_list, 'a1234567890,0,10,Car,/m/0k4j\nb1234567890,0,10,"Car,Bus",/m/0k4j\n', "line 2: 2 labels"),
        (M.read_clip_list, "a1234567890,0,10,Car,/m/0k4j\na1234567890,0,10,Car,/m/0k4j\n", "line 2: clip .* already listed on line 1"),
        (M.read_clip_list, "a1234567890,0,10,Car\n", "line 1: expected 5"),
        (M.read_clip_list, "a1234567890,zero,10,Car,/m/0k4j\n", "line 1: bad youtube_id"),
        (M.read_weak_labels, "x_0.000_10.000.wav\t0\t10\tCar\nnot a clip\t0\t10\tCar\n", "line 2: clip name"),
        (M.read_weak_labels, "x_0.000_10.000.wav\t0\t10\n", "line 1: expected name"),
        (M.read_weak_labels, "x_0.000_10.000.wav\t0\t10\t \n", "line 1: empty label"),
        (M.read_strong_labels, "x_0.000_10.000.wav\t1.5\tsoon\tCar\n", "line 1: onset/offset"),
        (M.read_strong_labels, "x_0.000_10.000.wav\t0\t1\tCar\nx_0.000_10.000.wav\t5\t2\tCar\n", "line 2: onset 5.0 and offset 2.0"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, reader, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(FileFormatError, match=problem) as info:
        reader(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_or_binary_file(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        M.read_clip_list(tmp_path / "absent.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(FileFormatError, match="not a UTF-8 text file"):
        M.read_weak_labels(tmp_path / "bin.csv")


def test_submission_style_files(tmp_path):
    """A header line and clips listed without any label/event are accepted."""
    at = tmp_path / "at.txt"
    at.write_text("filename\tstart\tend\tlabel\nA_0.000_10.000.wav\t0\t10\tCar\nB_0.000_10.000.wav\n")
    assert M.read_weak_labels(at) == {"A_0.000_10.000": frozenset({"Car"}), "B_0.000_10.000": frozenset()}
    sed = tmp_path / "sed.txt"
    sed.write_text("A_0.000_10.000.wav\t0.5\t1.25\tCar\nB_0.000_10.000.wav\n")
    assert M.read_strong_labels(sed) == [M.Event("A_0.000_10.000", 0.5, 1.25, "Car")]


def test_read_clip_labels_recognises_both_formats(meta_dir):
    from_list = M.read_clip_labels(meta_dir / "testing_set.csv")
    from_weak = M.read_clip_labels(meta_dir / "groundtruth_weak_label_testing_set.csv")
    assert list(from_list)[:3] == [e.key for e in M.read_clip_list(meta_dir / "testing_set.csv")[:3]]
    assert {k: frozenset(v) for k, v in from_list.items()} == {k: frozenset(v) for k, v in from_weak.items()}
    order = {label: i for i, label in enumerate(M.CLASSES)}
    assert all(list(v) == sorted(v, key=order.get) for v in from_weak.values())


def test_labels_to_multihot():
    target = M.labels_to_multihot(["Train", "Air horn, truck horn"])
    assert target.dtype == np.float32 and target.shape == (17,)
    assert np.flatnonzero(target).tolist() == [1, 16]
    assert M.labels_to_multihot([]).sum() == 0
    with pytest.raises(InputError, match="unknown label 'Horse'"):
        M.labels_to_multihot(["Car", "Horse"])
    assert M.labels_to_multihot(["b"], classes=("a", "b")).tolist() == [0.0, 1.0]

"""Official DCASE 2017 Task 4 metrics, CVSSP post-processing and prediction files (experiments.evaluation).

Three kinds of check:
- hand-made cases whose expected values are worked out by hand in the comments (every rule:
  arg-max fallback, duplicates, empty predictions, events across segment boundaries, reference
  rows with onset = offset = 0, missing clips, wrong class counts);
- the smoothing rule against an independent frame-by-frame transcription of the original
  ``vad.activity_detection`` (hypothesis);
- the real CVSSP predictions on the 488 testing clips against the official ground truth, with
  expected values computed here from the raw files by separate code (csv/gzip parsing, set
  arithmetic over (clip, label) pairs, a numpy segment grid), never through the library.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devinet.cli import main
from devinet.errors import FileFormatError, InputError
from experiments import evaluation
from experiments.evaluation import (
    activity_runs,
    at_decisions,
    count_tag_pairs,
    detect_prediction_format,
    equal_error_rate,
    evaluate_at,
    evaluate_at_file,
    evaluate_at_tags,
    evaluate_sed,
    evaluate_sed_file,
    frames_to_events,
    read_at_probabilities,
    read_at_submission,
    read_sed_probabilities,
    read_sed_submission,
    score_tags,
    tune_thresholds,
    write_at_probabilities,
    write_at_submission,
    write_sed_probabilities,
    write_sed_submission,
)
from experiments.meta import CLASSES, Event

REPO_ROOT = Path(__file__).resolve().parents[1]
K = len(CLASSES)
STEP = 664 / 16000
# Made-up clip keys in the official form (11-character YouTube ids).
A, B, C = "AAAAAAAAAAA_0.000_10.000", "BBBBBBBBBBB_30.000_40.000", "Y0123456789_5.000_15.000"


def probs_row(**on: float) -> np.ndarray:
    """One clip's 17 probabilities: 0.05 everywhere except the named classes (by index name c<k>)."""
    row = np.full(K, 0.05)
    for name, value in on.items():
        row[int(name[1:])] = value
    return row


def strict_json(path: Path) -> dict:
    """JSON that refuses NaN/Infinity (not JSON): undefined values must be null."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------------------------
# Audio tagging: decision rule and counting
# --------------------------------------------------------------------------------------------

def test_at_decisions_threshold_then_argmax_fallback():
    probs = np.array([
        probs_row(c1=0.5, c4=0.31),      # two labels above 0.3
        probs_row(c2=0.25, c7=0.29),     # none above: arg-max (class 7) alone
        probs_row(c3=0.3),               # exactly 0.3 is not above: arg-max fallback picks class 3
        np.zeros(K),                     # an empty prediction: arg-max ties go to the first class
    ])
    on = at_decisions(probs, 0.3)
    assert [np.flatnonzero(row).tolist() for row in on] == [[1, 4], [7], [3], [0]]
    # Per-class thresholds: class 4 needs more than 0.4 now, class 1 still passes.
    per_class = np.full(K, 0.3)
    per_class[4] = 0.4
    assert np.flatnonzero(at_decisions(probs[:1], per_class)[0]).tolist() == [1]
    with pytest.raises(InputError, match="threshold"):
        at_decisions(probs, [0.3, 0.3])


def test_duplicate_pair_counts_once_as_tp_and_again_as_fp():
    truth = {A: frozenset({"Car", "Bus"})}
    counts = count_tag_pairs({A: ["Car", "Car", "Train"]}, truth)
    # Car: TP once, then its copy is an FP; Train: FP; Bus never predicted: FN.
    car, train, bus = CLASSES.index("Car"), CLASSES.index("Train"), CLASSES.index("Bus")
    assert (counts["tp"][car], counts["fp"][car], counts["fp"][train], counts["fn"][bus]) == (1, 1, 1, 1)
    result = score_tags({A: ["Car", "Car", "Train"]}, truth)
    # micro: TP 1, FP 2, FN 1 -> P 1/3, R 1/2, F1 2PR/(P+R) = 0.4
    assert (result["tp"], result["fp"], result["fn"]) == (1, 2, 1)
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(0.4)
    assert result["class_wise"]["Car"]["precision"] == pytest.approx(0.5)


def test_empty_predictions_score_zero():
    truth = {A: frozenset({"Car"}), B: frozenset({"Bus", "Truck"})}
    result = evaluate_at_tags({A: [], B: []}, truth)
    assert (result["tp"], result["fp"], result["fn"]) == (0, 0, 3)
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)
    assert result["class_wise"]["Car"]["precision"] is None   # never predicted: undefined
    assert result["class_wise"]["Car"]["recall"] == 0.0
    assert result["class_wise"]["Train"]["f1"] is None        # neither predicted nor present


def test_evaluate_at_matches_names_in_every_form_and_refuses_bad_clip_sets():
    truth = {A: frozenset({"Car"}), B: frozenset({"Bus"})}
    probs = np.array([probs_row(c11=0.9), probs_row(c13=0.8)])  # Car, Bus
    result = evaluate_at(probs, ["Y" + A + ".wav", B], truth)
    assert result["f1"] == 1.0
    with pytest.raises(InputError, match="miss 1 of the 2 clips"):
        evaluate_at(probs[:1], [A], truth)
    with pytest.raises(InputError, match="not in the ground truth"):
        evaluate_at(np.vstack([probs, probs[:1]]), [A, B, C], truth)
    with pytest.raises(InputError, match="more than once"):
        evaluate_at(probs, [A, A], truth)
    with pytest.raises(InputError, match=r"shape \(n, 17\)"):
        evaluate_at(probs[:, :10], [A, B], truth)
    # A submission must list every clip, as the official scorer requires (a bare name will do).
    with pytest.raises(InputError, match="miss 1"):
        evaluate_at_tags({A: ["Car"]}, truth)


def test_equal_error_rate_and_auc_by_hand():
    targets = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    # ROC points (FPR, TPR): (0,0) (0,.5) (.5,.5) (.5,1) (1,1); FNR = 1-TPR meets FPR at 0.5.
    assert equal_error_rate(scores, targets) == pytest.approx(0.5)
    assert equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), targets) == 0.0
    assert equal_error_rate(np.array([0.9, 0.8, 0.2, 0.1]), targets) == pytest.approx(1.0)
    assert equal_error_rate(scores, np.ones(4)) is None
    # AUC: of the 4 (positive, negative) pairs, 3 are ordered right.
    truth = {A: frozenset({"Car"}), B: frozenset(), C: frozenset({"Car"})}
    keys = [A, B, C]
    probs = np.array([probs_row(c11=0.4), probs_row(c11=0.6), probs_row(c11=0.9)])
    row = evaluate_at(probs, keys, truth)["class_wise"]["Car"]
    # Car: (pos 0.4, neg 0.6) wrong, (pos 0.9, neg 0.6) right -> AUC 1/2.
    assert row["auc"] == pytest.approx(0.5)
    assert evaluate_at(probs, keys, truth)["class_wise"]["Bus"]["auc"] is None  # no positive clip


def test_oracle_threshold_search_is_reported_apart():
    probs = np.array([[0.2], [0.5], [0.7]]).repeat(K, axis=1)
    targets = np.array([[0], [1], [1]]).repeat(K, axis=1)
    # p > t takes the two positives alone (F1 1) for 0.20 <= t <= 0.49; ties go to the highest, 0.49.
    assert tune_thresholds(probs, targets)[0] == pytest.approx(0.49)
    # A class with no positive: F1 is 0 at every threshold, and the tie goes to 1.0 (never on).
    assert tune_thresholds(probs, np.zeros_like(targets))[0] == 1.0
    truth = {A: frozenset(), B: frozenset({"Car"}), C: frozenset({"Car"})}
    probs = np.array([probs_row(c11=0.2), probs_row(c11=0.5), probs_row(c11=0.7)])
    result = evaluate_at(probs, [A, B, C], truth, threshold=0.1, tune=True)
    assert result["threshold"] == 0.1
    assert result["f1"] < 1.0                   # the fixed-threshold system is what is reported
    oracle = result["oracle_thresholds"]
    assert "oracle" in oracle["note"] and "scored set" in oracle["note"]
    assert oracle["thresholds"]["Car"] == pytest.approx(0.49)
    assert oracle["thresholds"]["Bus"] == 1.0
    # Clip A has no label above its thresholds and falls back to its arg-max, Car: one FP remains.
    assert (oracle["tp"], oracle["fp"], oracle["fn"]) == (2, 1, 0)


# --------------------------------------------------------------------------------------------
# Sound event detection: CVSSP smoothing
# --------------------------------------------------------------------------------------------

def frames(T: int, *spans: tuple[int, int]) -> np.ndarray:
    active = np.zeros(T, dtype=bool)
    for first, last in spans:
        active[first:last + 1] = True
    return active


def test_smoothing_bridges_gaps_up_to_n_smooth():
    # Runs 0-11 and 22-33: indices 11 and 22 differ by 11 > 10, kept apart.
    assert activity_runs(frames(40, (0, 11), (22, 33)), 10, 10) == [(0, 11), (22, 33)]
    # 11 and 21 differ by 10 <= 10: the 9 inactive frames between are bridged.
    assert activity_runs(frames(40, (0, 11), (21, 33)), 10, 10) == [(0, 33)]


def test_salt_drops_runs_of_n_salt_frames_or_fewer_after_bridging():
    assert activity_runs(frames(40, (5, 14)), 10, 10) == []            # 10 frames: dropped
    assert activity_runs(frames(40, (5, 15)), 10, 10) == [(5, 15)]     # 11 frames: kept
    # Two 6-frame runs 4 frames apart: each alone is salt, bridged first they make 16 frames.
    assert activity_runs(frames(40, (0, 5), (10, 15)), 10, 10) == [(0, 15)]
    assert activity_runs(frames(40, (0, 5), (10, 15)), 0, 10) == []


def test_smoothing_edge_cases():
    assert activity_runs(np.zeros(240, dtype=bool)) == []
    assert activity_runs(np.ones(240, dtype=bool)) == [(0, 239)]
    assert activity_runs(frames(240, (225, 239))) == [(225, 239)]      # a run to the clip's end
    # n_salt 0 keeps single frames (the original also output a sentinel at frame -10: not here).
    assert activity_runs(frames(10, (3, 3)), 1, 0) == [(3, 3)]
    with pytest.raises(InputError):
        activity_runs(np.ones(5, dtype=bool), -1, 10)


def reference_runs(active: np.ndarray, n_smooth: int, n_salt: int) -> list[tuple[int, int]]:
    """The CVSSP rule restated frame by frame (independent of the library): fill, then drop salt."""
    idx = [t for t, a in enumerate(active) if a]
    filled = set(idx)
    for a, b in zip(idx, idx[1:]):
        if b - a <= n_smooth:
            filled.update(range(a, b))
    runs, start = [], None
    for t in range(len(active) + 1):
        if t < len(active) and t in filled:
            start = t if start is None else start
        elif start is not None:
            if t - start > n_salt:
                runs.append((start, t - 1))
            start = None
    return runs


@settings(max_examples=300, deadline=None)
@given(active=st.lists(st.booleans(), min_size=1, max_size=80),
       n_smooth=st.integers(0, 15), n_salt=st.integers(0, 15))
def test_smoothing_matches_frame_by_frame_restatement(active, n_smooth, n_salt):
    active = np.array(active)
    assert activity_runs(active, n_smooth, n_salt) == reference_runs(active, n_smooth, n_salt)


def test_frames_to_events_times_threshold_and_gating():
    probs = np.zeros((240, K))
    probs[12:43, CLASSES.index("Car")] = 0.9           # frames 12..42
    probs[200:, CLASSES.index("Bus")] = 0.31           # to the clip's end
    probs[100:150, CLASSES.index("Train")] = 0.3       # not above 0.3: nothing
    events = frames_to_events(probs, "Y" + A + ".wav")
    assert [(e.key, e.label) for e in events] == [(A, "Car"), (A, "Bus")]
    assert events[0].onset == pytest.approx(12 * STEP) and events[0].offset == pytest.approx(42 * STEP)
    # CVSSP's offset is the last frame's start: 239 * 0.0415 = 9.9185 s, not 10 s.
    assert events[1].offset == pytest.approx(9.9185)
    gated = frames_to_events(probs, A, labels=frozenset({"Bus"}))
    assert [e.label for e in gated] == ["Bus"]
    with pytest.raises(InputError, match="shape"):
        frames_to_events(probs[:, :5], A)


# --------------------------------------------------------------------------------------------
# Sound event detection: segment-based scoring (sed_eval)
# --------------------------------------------------------------------------------------------

def test_event_crossing_segment_boundaries():
    reference = [Event(A, 0.5, 2.2, "Car")]              # segments 0, 1, 2
    estimated = [Event(A, 1.5, 3.2, "Car")]              # segments 1, 2, 3
    result = evaluate_sed(estimated, reference)
    # 4 segments: 0 deletion, 1-2 correct, 3 insertion. ER = (0+1+1)/3, P = R = F = 2/3.
    assert (result["S"], result["D"], result["I"]) == (0, 1, 1)
    assert (result["n_ref"], result["n_sys"], result["n_tp"]) == (3, 3, 2)
    assert result["error_rate"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["evaluated_seconds"] == pytest.approx(3.2)


def test_substitution_and_files_without_predictions():
    reference = [Event(A, 0.0, 1.0, "Car"), Event(B, 0.0, 3.0, "Bus")]
    estimated = [Event(A, 0.0, 1.0, "Bus")]
    result = evaluate_sed(estimated, reference)
    # A, segment 0: Car missed and Bus inserted -> 1 substitution. B has no prediction: 3 deletions.
    assert (result["S"], result["D"], result["I"]) == (1, 3, 0)
    assert result["error_rate"] == pytest.approx(4 / 4)
    assert result["n_files"] == 2
    assert result["class_wise"]["Bus"]["insertion_rate"] == pytest.approx(1 / 3)
    assert result["class_wise"]["Car"]["deletion_rate"] == 1.0


def test_reference_row_with_zero_onset_and_offset():
    # "Tagged but not heard": the clip and its label are evaluated, no segment is active.
    reference = [Event(A, 0.0, 2.0, "Car"), Event(B, 0.0, 0.0, "Screaming")]
    nothing = evaluate_sed([Event(A, 0.0, 2.0, "Car")], reference)
    assert (nothing["n_ref"], nothing["S"], nothing["D"], nothing["I"]) == (2, 0, 0, 0)
    assert nothing["error_rate"] == 0.0
    assert "Screaming" in nothing["labels"]
    # A Screaming event predicted in B is scored (its label is in the reference's list): 2 insertions.
    inserted = evaluate_sed([Event(A, 0.0, 2.0, "Car"), Event(B, 0.2, 1.5, "Screaming")], reference)
    assert (inserted["I"], inserted["n_events_outside_reference_labels"]) == (2, 0)
    assert inserted["error_rate"] == pytest.approx(2 / 2)
    assert inserted["class_wise"]["Screaming"]["error_rate"] is None   # no reference segment


def test_empty_predictions_are_all_deletions_and_foreign_clips_are_refused():
    reference = [Event(A, 0.0, 2.5, "Car"), Event(B, 1.0, 2.0, "Bus")]
    result = evaluate_sed([], reference)
    assert (result["D"], result["n_ref"], result["error_rate"], result["f1"]) == (4, 4, 1.0, 0.0)
    assert result["precision"] is None
    with pytest.raises(InputError, match="not in the ground truth"):
        evaluate_sed([Event(C, 0.0, 1.0, "Car")], reference)
    outside = evaluate_sed([Event(A, 0.0, 1.0, "Train")], reference)
    assert outside["n_events_outside_reference_labels"] == 1


# --------------------------------------------------------------------------------------------
# Files: formats, detection, errors
# --------------------------------------------------------------------------------------------

def test_probability_files_round_trip_plain_and_gzip(tmp_path, rng):
    keys = [A, B]
    probs = rng.random((2, K))
    frame_probs = [rng.random((240, K)), rng.random((7, K))]
    write_at_probabilities(tmp_path / "at.csv.gz", keys, probs)
    write_sed_probabilities(tmp_path / "sed.csv", keys, frame_probs)
    assert (tmp_path / "at.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    read_keys, read_probs = read_at_probabilities(tmp_path / "at.csv.gz")
    assert read_keys == keys and np.allclose(read_probs, probs, atol=5e-7)
    sed_keys, blocks = read_sed_probabilities(tmp_path / "sed.csv")
    assert sed_keys == keys and [b.shape for b in blocks] == [(240, K), (7, K)]
    assert np.allclose(blocks[1], frame_probs[1], atol=5e-7)
    assert detect_prediction_format(tmp_path / "at.csv.gz") == evaluation.AT_PROBABILITIES
    assert detect_prediction_format(tmp_path / "sed.csv") == evaluation.SED_PROBABILITIES


def test_submissions_round_trip(tmp_path):
    write_at_submission(tmp_path / "at.csv", {A: ["Car", "Bus"], "Y" + B + ".wav": []})
    lines = (tmp_path / "at.csv").read_text().splitlines()
    assert lines == [f"{A}.wav\t0.000\t10.000\tCar", f"{A}.wav\t0.000\t10.000\tBus", f"{B}.wav"]
    assert read_at_submission(tmp_path / "at.csv") == {A: ["Car", "Bus"], B: []}
    events = [Event(A, 12 * STEP, 239 * STEP, "Car")]
    write_sed_submission(tmp_path / "sed.csv", events, keys=[A, B])
    assert (tmp_path / "sed.csv").read_text().splitlines() == [f"{A}.wav\t0.498\t9.9185\tCar", f"{B}.wav"]
    back = read_sed_submission(tmp_path / "sed.csv")
    assert [(e.key, e.label) for e in back] == [(A, "Car")]
    assert back[0].offset == pytest.approx(events[0].offset)
    (tmp_path / "empty.csv").write_text("")
    assert detect_prediction_format(tmp_path / "empty.csv") == evaluation.SUBMISSION


@pytest.mark.parametrize("content, message", [
    (f"{A}\t" + "\t".join(["0.1"] * 10) + "\n", r"line 1: expected a name and 17 probabilities .* got 10"),
    (f"{A}\t" + "\t".join(["0.1"] * 16 + ["x"]) + "\n", "not a prediction file"),
    (f"{A}\t" + "\t".join(["0.1"] * 17) + f"\n{B}\t" + "\t".join(["0.1"] * 16 + ["x"]) + "\n",
     "line 2: 'x' is not a number"),
    (f"{A}\t" + "\t".join(["0.1"] * 17) + f"\n{B}\t" + "\t".join(["0.1"] * 18) + "\n",
     "line 2: expected a name and 17 probabilities"),
    (f"{A}\t" + "\t".join(["0.1"] * 17) + f"\n{A}\t" + "\t".join(["0.1"] * 17) + f"\n{B}\t"
     + "\t".join(["0.1"] * 17) + "\n", "line 2: clip .* already listed on line 1"),
    (f"{A}\t" + "\t".join(["0.1"] * 16 + ["1.5"]) + "\n", "outside \\[0, 1\\]"),
    (f"{A}\tCar\n", "not a prediction file"),
    ("not-a-clip\t" + "\t".join(["0.1"] * 17) + "\n", "line 1: clip name"),
])
def test_bad_probability_files_are_refused_with_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "pred.csv"
    path.write_text(content)
    with pytest.raises(FileFormatError, match=message) as info:
        detect_prediction_format(path)
        read_at_probabilities(path)
    assert str(info.value).startswith(str(path))


def test_sed_probability_blocks_must_be_consecutive(tmp_path):
    row = "\t".join(["0.1"] * K)
    (tmp_path / "sed.csv").write_text(f"{A}\t{row}\n{A}\t{row}\n{B}\t{row}\n{A}\t{row}\n")
    with pytest.raises(FileFormatError, match="line 4: frames of clip .* resume"):
        read_sed_probabilities(tmp_path / "sed.csv")


def test_file_level_errors_name_the_prediction_file(tmp_path):
    truth = tmp_path / "weak.csv"
    truth.write_text(f"{A}.wav\t0.000\t10.000\tCar\r\n{B}.wav\t30.000\t40.000\tBus\r\n")
    pred = tmp_path / "at_prob_mat.csv"
    write_at_probabilities(pred, [A], probs_row(c11=0.9)[None])
    with pytest.raises(FileFormatError, match=f"^{pred}: predictions miss 1 of the 2 clips"):
        evaluate_at_file(pred, truth)
    strong = tmp_path / "strong.csv"
    strong.write_text(f"{A}.wav\t30.000\t40.000\tCar\n")   # a weak-label row given as strong labels
    with pytest.raises(FileFormatError, match="after the clip's 10 s"):
        evaluate_sed_file(pred, strong)
    # AT probabilities are not SED predictions, and the other way round.
    strong.write_text(f"{A}.wav\t1.0\t4.0\tCar\n{B}.wav\t0\t0\tBus\n")
    with pytest.raises(FileFormatError, match="clip-level probabilities"):
        evaluate_sed_file(pred, strong)


# --------------------------------------------------------------------------------------------
# Real CVSSP predictions against the official ground truth
# --------------------------------------------------------------------------------------------

# The challenge's own AT scorer (ankitshah009/Task-4-...: evaluation/Models.py,
# FileFormat.computeMetricsString, micro "used for system evaluation"), run on the AT submission
# that these probabilities give at threshold 0.3, printed P 46.8333, R 46.3696, F1 46.6003 (%).
OFFICIAL_SCORER_AT = {"precision": 0.46833333333333336, "recall": 0.4636963696369637, "f1": 0.4660033167495854}


@pytest.fixture(scope="module")
def real(reference_dir):
    paths = {
        "at_pred": reference_dir / "cvssp_predictions" / "at_prob_mat.csv.gz",
        "sed_pred": reference_dir / "cvssp_predictions" / "sed_prob_mat_list.csv.gz",
        "weak": reference_dir / "dcase2017_task4" / "meta" / "groundtruth_weak_label_testing_set.csv",
        "strong": reference_dir / "dcase2017_task4" / "meta" / "groundtruth_strong_label_testing_set.csv",
    }
    for path in paths.values():
        if not path.is_file():
            pytest.fail(f"reference file missing: {path}")
    return paths


def raw_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        return [[field.strip() for field in row] for row in csv.reader(handle, delimiter="\t") if row]


def test_real_at_against_set_arithmetic(real):
    # Expected values: raw csv parsing, CVSSP's rule in plain Python, (clip, label) pair sets.
    truth_pairs = {(row[0], row[3]) for row in raw_rows(real["weak"])}
    predicted_pairs = set()
    for row in raw_rows(real["at_pred"]):
        scores = [float(value) for value in row[1:]]
        on = [k for k, p in enumerate(scores) if p > 0.3] or [scores.index(max(scores))]
        predicted_pairs |= {(row[0], CLASSES[k]) for k in on}
    tp = len(predicted_pairs & truth_pairs)
    precision, recall = tp / len(predicted_pairs), tp / len(truth_pairs)
    result = evaluate_at_file(real["at_pred"], real["weak"], threshold=0.3)
    assert result["n_clips"] == 488 and result["tp"] + result["fn"] == len(truth_pairs) == 606
    assert (result["tp"], result["tp"] + result["fp"]) == (tp, len(predicted_pairs))
    assert result["precision"] == pytest.approx(precision, abs=1e-12)
    assert result["recall"] == pytest.approx(recall, abs=1e-12)
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-12)
    for name, value in OFFICIAL_SCORER_AT.items():
        assert result[name] == pytest.approx(value, abs=1e-12)

    # Per-class AUC against the Mann-Whitney statistic (rank sums, scipy), not scikit-learn.
    from scipy.stats import rankdata

    scores = {row[0]: np.array([float(v) for v in row[1:]]) for row in raw_rows(real["at_pred"])}
    names = sorted(scores)
    for k, label in enumerate(CLASSES):
        positive = np.array([(name, label) in truth_pairs for name in names])
        ranks = rankdata([scores[name][k] for name in names])
        n_pos, n_neg = positive.sum(), (~positive).sum()
        auc = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        assert result["class_wise"][label]["auc"] == pytest.approx(auc, abs=1e-12), label
        assert 0.0 <= result["class_wise"][label]["eer"] <= 1.0


def segment_grid_metrics(reference: list[tuple], estimated: list[tuple]) -> dict:
    """Segment-based counts from (file, onset, offset, label) tuples with a numpy grid of 1-s cells.

    The official protocol restated: every reference file, its length the largest offset of its
    reference and estimated events, a segment active from floor(onset) to ceil(offset).
    """
    labels = sorted({label for *_, label in reference})
    totals = dict(S=0, D=0, I=0, Nref=0, Nsys=0, Ntp=0)
    for name in sorted({file for file, *_ in reference}):
        ref = [e for e in reference if e[0] == name]
        est = [e for e in estimated if e[0] == name]
        length = math.ceil(max(e[2] for e in ref + est))
        grids = []
        for events in (ref, est):
            grid = np.zeros((length, len(labels)), dtype=int)
            for _, onset, offset, label in events:
                grid[math.floor(onset):math.ceil(offset), labels.index(label)] = 1
            grids.append(grid)
        ref_grid, est_grid = grids
        n_ref, n_sys = ref_grid.sum(axis=1), est_grid.sum(axis=1)
        tp = (ref_grid & est_grid).sum(axis=1)
        totals["S"] += int((np.minimum(n_ref, n_sys) - tp).sum())
        totals["D"] += int(np.maximum(0, n_ref - n_sys).sum())
        totals["I"] += int(np.maximum(0, n_sys - n_ref).sum())
        totals["Nref"] += int(n_ref.sum())
        totals["Nsys"] += int(n_sys.sum())
        totals["Ntp"] += int(tp.sum())
    totals["ER"] = (totals["S"] + totals["D"] + totals["I"]) / totals["Nref"]
    totals["F1"] = 2 * totals["Ntp"] / (totals["Nref"] + totals["Nsys"])
    return totals


@pytest.fixture(scope="module")
def real_sed_cli(real, tmp_path_factory):
    """One CLI run on the real frame probabilities, with its JSON and written submission."""
    out = tmp_path_factory.mktemp("sed")
    rc = main(["evaluate", "sed", "--pred", str(real["sed_pred"]), "--truth", str(real["strong"]),
               "--json", str(out / "sed.json"), "--write-submission", str(out / "sed_submission.csv")])
    assert rc == 0
    return strict_json(out / "sed.json"), out / "sed_submission.csv"


@pytest.mark.slow
def test_real_sed_against_numpy_segment_grid(real, real_sed_cli):
    result, _ = real_sed_cli
    # Expected values: raw parsing, the frame-by-frame smoothing restatement, the numpy grid.
    reference = [(row[0], float(row[1]), float(row[2]), row[3]) for row in raw_rows(real["strong"])]
    frames_by_clip: dict[str, list[list[float]]] = {}
    for row in raw_rows(real["sed_pred"]):
        frames_by_clip.setdefault(row[0], []).append([float(v) for v in row[1:]])
    estimated = []
    for name, rows in frames_by_clip.items():
        probs = np.array(rows)
        for k, label in enumerate(CLASSES):
            for first, last in reference_runs(probs[:, k] > 0.3, 10, 10):
                estimated.append((name, first * STEP, last * STEP, label))
    expected = segment_grid_metrics(reference, estimated)
    assert len(frames_by_clip) == result["n_files"] == 488
    assert result["n_events"] == len(estimated)
    assert {name: result[name] for name in ("S", "D", "I", "n_ref", "n_sys", "n_tp")} == {
        "S": expected["S"], "D": expected["D"], "I": expected["I"],
        "n_ref": expected["Nref"], "n_sys": expected["Nsys"], "n_tp": expected["Ntp"]}
    assert result["error_rate"] == pytest.approx(expected["ER"], abs=1e-12)
    assert result["f1"] == pytest.approx(expected["F1"], abs=1e-12)
    assert (result["threshold"], result["n_smooth"], result["n_salt"]) == (0.3, 10, 10)


def test_real_sed_submission_scores_the_same(real, real_sed_cli):
    result, submission = real_sed_cli
    again = evaluate_sed_file(submission, real["strong"])
    assert again["prediction_format"] == "submission"
    for name in ("error_rate", "f1", "S", "D", "I", "n_sys"):
        assert again[name] == pytest.approx(result[name], abs=1e-12), name


def test_real_at_cli_json_and_submission(real, tmp_path, capsys):
    rc = main(["evaluate", "at", "--pred", str(real["at_pred"]), "--truth", str(real["weak"]),
               "--json", str(tmp_path / "at.json"), "--write-submission", str(tmp_path / "at_sub.csv"),
               "--oracle-thresholds"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.err == ""
    assert "micro (official)" in captured.out and "ORACLE" in captured.out
    result = strict_json(tmp_path / "at.json")
    assert result["f1"] == pytest.approx(OFFICIAL_SCORER_AT["f1"], abs=1e-12)
    assert result["oracle_thresholds"]["f1"] >= result["f1"]
    from_submission = evaluate_at_file(tmp_path / "at_sub.csv", real["weak"])
    for name in ("precision", "recall", "f1"):
        assert from_submission[name] == pytest.approx(result[name], abs=1e-12)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def small_sed_case(tmp_path: Path) -> tuple[Path, Path]:
    truth = tmp_path / "strong.csv"
    truth.write_text(f"{A}.wav\t0.5\t2.2\tCar\r\n{B}.wav\t0\t0\tBus\r\n")
    pred = tmp_path / "sed_submission.csv"
    pred.write_text(f"Y{A}.wav\t1.5\t3.2\tCar\n{B}\n")
    return pred, truth


def test_cli_sed_json_and_refusals(tmp_path, capsys):
    pred, truth = small_sed_case(tmp_path)
    out = tmp_path / "result.json"
    assert main(["evaluate", "sed", "--pred", str(pred), "--truth", str(truth), "--json", str(out)]) == 0
    result = strict_json(out)
    assert result["error_rate"] == pytest.approx(2 / 3) and result["f1"] == pytest.approx(2 / 3)
    assert result["class_wise"]["Bus"]["error_rate"] is None     # Bus: only an onset = offset = 0 row
    captured = capsys.readouterr()
    assert captured.err == "" and "error rate 0.6667" in captured.out
    # An existing destination is kept unless --force; bad values and bad files are one-line errors.
    before = out.read_bytes()
    assert main(["evaluate", "sed", "--pred", str(pred), "--truth", str(truth), "--json", str(out)]) == 1
    assert "destination exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["evaluate", "sed", "--pred", str(pred), "--truth", str(truth), "--salt", "-1"]) == 1
    assert "--salt" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("just\tthree\tfields\n")
    fresh = tmp_path / "fresh.json"
    assert main(["evaluate", "sed", "--pred", str(tmp_path / "bad.csv"), "--truth", str(truth),
                 "--json", str(fresh)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("devinet evaluate: error: ") and err.count("\n") == 1 and "bad.csv" in err
    assert not fresh.exists()


@pytest.mark.slow
def test_cli_subprocess_at(tmp_path):
    truth = tmp_path / "weak.csv"
    truth.write_text(f"{A}.wav\t0.000\t10.000\tCar\r\n{B}.wav\t30.000\t40.000\tBus\r\n"
                     f"{B}.wav\t30.000\t40.000\tTruck\r\n")
    pred = tmp_path / "at_prob_mat.csv"
    write_at_probabilities(pred, [A, B], np.array([probs_row(c11=0.9), probs_row(c13=0.1, c14=0.2)]))
    out = tmp_path / "at.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "devinet.cli", "evaluate", "at", "--pred", str(pred),
                           "--truth", str(truth), "--threshold", "0.3", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = strict_json(out)
    # A: Car right. B: nothing above 0.3, arg-max Truck (0.2) right, Bus missed: TP 2, FP 0, FN 1.
    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 1)
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(0.8)

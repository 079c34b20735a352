"""Metrics beyond the paper's: AT mAP and AUC, SED event-based ER/F1 with DCASE's collars, and PSDS.

Expected values come from scikit-learn called directly, from hand counts, or (PSDS) from a
case whose PSD-ROC can be drawn by hand; the real CVSSP predictions are scored against the
official ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from devinet.cli import main
from devinet.postprocessing import activity_runs
from experiments import evaluation as E
from experiments.evaluation.psds import kept_frames, postprocessed_scores, psds_reference
from experiments.meta import CLASSES, Event

CAR = CLASSES.index("Car")


# ---------------------------------------------------------------------- audio tagging: mAP and AUC
def test_map_and_auc_are_scikit_learns_macro_means(rng):
    from sklearn.metrics import average_precision_score, roc_auc_score

    n = 60
    probs = rng.random((n, len(CLASSES)))
    targets = rng.random((n, len(CLASSES))) < 0.2
    targets[:, 3] = False            # no positive clip: AP and AUC undefined
    targets[:, 5] = True             # every clip positive: AP 1, AUC undefined
    targets[np.arange(n), rng.integers(0, len(CLASSES), n)] |= True  # every clip has a label
    targets[:, 3] = False
    keys = [f"clip{n:07d}xx_0.000_10.000" for n in range(n)]
    truth = {key: frozenset(CLASSES[k] for k in np.flatnonzero(row)) for key, row in zip(keys, targets)}
    result = E.evaluate_at(probs, keys, truth)

    with_positives = [k for k in range(len(CLASSES)) if targets[:, k].any()]
    assert result["macro"]["ap"] == pytest.approx(
        average_precision_score(targets[:, with_positives], probs[:, with_positives], average="macro"), abs=1e-12)
    both = [k for k in with_positives if not targets[:, k].all()]
    assert result["macro"]["auc"] == pytest.approx(
        roc_auc_score(targets[:, both], probs[:, both], average="macro"), abs=1e-12)
    assert result["class_wise"][CLASSES[3]]["ap"] is None and result["class_wise"][CLASSES[3]]["auc"] is None
    assert result["class_wise"][CLASSES[5]]["ap"] == 1.0 and result["class_wise"][CLASSES[5]]["auc"] is None


def test_average_precision_by_hand():
    # Ranked scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2.
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    assert E.ranking_metrics(scores, targets, ["x"])["x"]["ap"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)


# ---------------------------------------------------------------------- SED: event-based
A, B = "Car", "Bus"


def test_event_based_counts_by_hand():
    """Collars: onset within 0.2 s, offset within max(0.2 s, 20 % of the reference length)."""
    k1, k2 = "clipA000001_0.000_10.000", "clipB000002_0.000_10.000"
    truth = [Event(k1, 1.0, 5.0, A),      # 4 s long: offset collar 0.8 s
             Event(k1, 6.0, 6.5, A),      # 0.5 s long: offset collar 0.2 s
             Event(k1, 2.0, 8.0, B),
             Event(k2, 0.0, 0.0, B),      # tagged but not heard: not an event
             Event(k2, 3.0, 4.0, B)]
    events = [Event(k1, 1.15, 5.7, A),    # onset 0.15 <= 0.2, offset 0.7 <= 0.8: correct
              Event(k1, 6.1, 6.9, A),     # offset 0.4 > 0.2: wrong
              Event(k1, 2.1, 7.9, A),     # times of the Bus event, wrong label: a substitution
              Event(k2, 5.0, 6.0, B)]     # nothing there: an insertion
    result = E.evaluate_sed_events(events, truth)
    # reference 4 events (the 0-length row is left out), system 4, correct 1; the Bus event of k1 and
    # the A event at 2.1 pair as a substitution; left: reference 6.0-6.5 A (deletion) and k2 3-4 B
    # (deletion); system 6.1-6.9 A and k2 5-6 B (insertions).
    assert (result["n_ref"], result["n_sys"], result["n_tp"]) == (4, 4, 1)
    assert (result["S"], result["D"], result["I"]) == (1, 2, 2)
    assert result["error_rate"] == pytest.approx((1 + 2 + 2) / 4)
    assert result["f1"] == pytest.approx(2 * 1 / (4 + 4))
    assert result["n_reference_rows_without_extent"] == 1
    assert result["class_wise"][A]["n_tp"] == 1 and result["class_wise"][B]["n_tp"] == 0
    assert result["labels"] == sorted({A, B})


def test_event_based_without_output_scores_zero():
    truth = [Event("clipA000001_0.000_10.000", 1.0, 2.0, A)]
    result = E.evaluate_sed_events([], truth)
    assert result["f1"] == 0.0 and result["precision"] is None
    assert result["error_rate"] == pytest.approx(1.0, abs=1e-12) and (result["D"], result["I"]) == (1, 0)


# ---------------------------------------------------------------------- PSDS: the scores
@pytest.mark.parametrize("n_smooth,n_salt", [(0, 0), (1, 1), (3, 2), (10, 10)])
def test_kept_frames_are_cvssps_runs(rng, n_smooth, n_salt):
    for _ in range(40):
        length = int(rng.integers(1, 80))
        active = rng.random((6, length)) < rng.random()
        kept = kept_frames(active, n_smooth, n_salt)
        for row, mask in zip(active, kept):
            expected = np.zeros(length, dtype=bool)
            for first, last in activity_runs(row, n_smooth, n_salt):
                expected[first:last + 1] = True
            np.testing.assert_array_equal(mask, expected)


def test_postprocessed_scores_threshold_to_cvssps_events(rng):
    """At every threshold t, frames with score > t are exactly the frames of CVSSP's events at t."""
    probs = np.round(rng.random((240, len(CLASSES))) ** 3, 2)  # many ties, as real outputs have
    probs[100:130, CAR] = 0.95
    scores = postprocessed_scores(probs)
    for threshold in np.unique(np.r_[probs.ravel(), 0.0, 0.3, 0.555]):
        for event_class in range(len(CLASSES)):
            expected = np.zeros(240, dtype=bool)
            for first, last in activity_runs(probs[:, event_class] > threshold):
                expected[first:last + 1] = True
            np.testing.assert_array_equal(scores[:, event_class] > threshold, expected)


def test_psds_reference_merges_overlaps_and_drops_rows_without_extent():
    key = "clipA000001_0.000_10.000"
    truth = [Event(key, 2.705, 8.895, A), Event(key, 4.0, 9.0, A), Event(key, 9.0, 9.5, A),
             Event(key, 1.0, 2.0, B), Event("clipB000002_0.000_10.000", 0.0, 0.0, B)]
    assert psds_reference(truth) == {key: [(1.0, 2.0, B), (2.705, 9.5, A)], "clipB000002_0.000_10.000": []}


# ---------------------------------------------------------------------- PSDS: a curve drawn by hand
def test_psds_of_a_case_drawn_by_hand():
    """100 clips of 10 s (1000 s), one class. A correct event scored 0.5 and a false alarm scored 0.9:
    TPR 0 up to eFPR 1/1000 s = 3.6 per hour, then 1 up to 100 per hour, so PSDS = (100 - 3.6) / 100."""
    step, frames = 0.5, 20
    keys = [f"clip{n:07d}xx_0.000_10.000" for n in range(100)]
    probs = [np.zeros((frames, len(CLASSES))) for _ in keys]
    probs[0][4:12, CAR] = 0.5            # 2.0 to 6.0 s, as the reference event
    probs[1][0:4, CAR] = 0.9             # 0.0 to 2.0 s, no event there
    truth = [Event(keys[0], 2.0, 6.0, "Car")] + [Event(key, 0.0, 0.0, "Car") for key in keys[1:]]
    result = E.evaluate_psds(keys, probs, truth, n_smooth=0, n_salt=0, frame_step=step)
    assert result["labels"] == ["Car"]
    for name in ("scenario1", "scenario2"):
        assert result[name]["psds"] == pytest.approx((100 - 3.6) / 100, abs=1e-9), name
        assert result[name]["class_wise"]["Car"] == pytest.approx((100 - 3.6) / 100, abs=1e-9)
    assert "no cross-trigger" in result["scenario2"]["note"] and "note" not in result["scenario1"]
    # the false alarm scored below the correct event: the curve is 1 from eFPR 0
    probs[1][0:4, CAR] = 0.4
    assert E.evaluate_psds(keys, probs, truth, n_smooth=0, n_salt=0, frame_step=step)["scenario1"]["psds"] == \
        pytest.approx(1.0, abs=1e-9)


def test_psds_refuses_other_clip_sets():
    from devinet.errors import InputError

    truth = [Event("clipA000001_0.000_10.000", 1.0, 2.0, "Car")]
    with pytest.raises(InputError, match="not in the ground truth"):
        E.evaluate_psds(["clipB000002_0.000_10.000"], [np.zeros((240, len(CLASSES)))], truth)


# ---------------------------------------------------------------------- the real CVSSP predictions
@pytest.fixture(scope="module")
def real(reference_dir):
    meta = reference_dir / "dcase2017_task4" / "meta"
    return {"at_pred": reference_dir / "cvssp_predictions" / "at_prob_mat.csv.gz",
            "sed_pred": reference_dir / "cvssp_predictions" / "sed_prob_mat_list.csv.gz",
            "weak": meta / "groundtruth_weak_label_testing_set.csv",
            "strong": meta / "groundtruth_strong_label_testing_set.csv"}


def test_real_map_and_auc(real):
    from sklearn.metrics import average_precision_score, roc_auc_score

    keys, probs = E.read_at_probabilities(real["at_pred"])
    truth = E.read_at_truth(real["weak"])
    targets = np.array([[label in truth[key] for label in CLASSES] for key in keys])
    result = E.evaluate_at_file(real["at_pred"], real["weak"])
    assert targets.any(axis=0).all() and not targets.all(axis=0).any()  # every class defined
    assert result["macro"]["ap"] == pytest.approx(average_precision_score(targets, probs, average="macro"), abs=1e-12)
    assert result["macro"]["auc"] == pytest.approx(roc_auc_score(targets, probs, average="macro"), abs=1e-12)
    # the figures stated in docs/metrics.md
    assert (round(result["macro"]["ap"], 4), round(result["macro"]["auc"], 4)) == (0.4903, 0.8840)


@pytest.mark.slow
def test_real_event_based_and_psds(real, tmp_path, capsys):
    out = tmp_path / "sed.json"
    assert main(["evaluate", "sed", "--pred", str(real["sed_pred"]), "--truth", str(real["strong"]), "--psds",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("(official)") < printed.index("beyond the official metric") < printed.index("PSDS 1")
    import json

    result = json.loads(out.read_text())
    events = result["event_based"]
    # 688 reference rows, 36 of them without extent; 1962 events of CVSSP's post-processing
    assert (events["n_ref"], events["n_sys"], events["n_reference_rows_without_extent"]) == (652, 1962, 36)
    assert (events["n_tp"], events["S"], events["D"], events["I"]) == (39, 34, 579, 1889)
    assert events["error_rate"] == pytest.approx((34 + 579 + 1889) / 652, abs=1e-12)
    assert events["f1"] == pytest.approx(2 * 39 / (652 + 1962), abs=1e-12)
    psds = result["psds"]
    assert psds["n_reference_events"] == 651 and len(psds["labels"]) == 17  # one overlapping pair merged
    assert psds["scenario1"]["psds"] == pytest.approx(0.022483, abs=1e-6)
    assert psds["scenario2"]["psds"] == pytest.approx(0.181567, abs=1e-6)
    assert psds["scenario2"]["cttc_threshold"] == 0.3 and psds["scenario1"]["cttc_threshold"] is None


def test_cli_refuses_psds_without_scores(real, tmp_path, capsys):
    submission = tmp_path / "sub.csv"
    submission.write_text("clipA000001_0.000_10.000\t1.0\t2.0\tCar\n")
    assert main(["evaluate", "sed", "--pred", str(real["sed_pred"]), "--truth", str(real["strong"]), "--psds",
                 "--gate-with", str(real["at_pred"])]) == 1
    assert "--psds" in capsys.readouterr().err
    truth = tmp_path / "truth.csv"
    truth.write_text("clipA000001_0.000_10.000\t1.0\t2.0\tCar\n")
    assert main(["evaluate", "sed", "--pred", str(submission), "--truth", str(truth), "--psds"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PSDS needs a frame-probability file" in err

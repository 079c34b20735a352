"""Claims over seeds (experiments.claims): verdicts, paired differences, mean and standard deviation."""

from __future__ import annotations

import math

import pytest

from experiments.claims import ORDERINGS, Ordering, aggregate, check_claim, check_claims, holds, mean_std, verdict


def test_verdict_holds_only_when_every_seed_holds():
    assert verdict([True, True, True]) == "holds"
    assert verdict([True]) == "holds"
    assert verdict([True, True, False]) == "mixed"
    assert verdict([False, True]) == "mixed"
    assert verdict([False, False, False]) == "does not hold"
    assert verdict([True, None, True]) == "mixed"  # a seed that cannot compare is not a seed that holds
    assert verdict([None, False]) == "does not hold"
    assert verdict([None, None]) == "undefined" and verdict([]) == "undefined"


def test_holds_is_strict_and_follows_the_direction():
    assert holds(0.6, 0.5, "higher") and not holds(0.5, 0.6, "higher")
    assert holds(0.7, 0.8, "lower") and not holds(0.8, 0.7, "lower")
    assert holds(0.5, 0.5, "higher") is False and holds(0.5, 0.5, "lower") is False  # a tie does not hold
    assert holds(None, 0.5, "higher") is None


def test_mean_and_sample_standard_deviation():
    mean, std = mean_std([0.80, 0.82, 0.87])
    assert mean == pytest.approx(0.83) and std == pytest.approx(math.sqrt(((0.03) ** 2 + 0.01 ** 2 + 0.04 ** 2) / 2))
    assert mean_std([0.5]) == (0.5, None)
    assert mean_std([0.5, None]) == (None, None)


def test_aggregate_keeps_the_shape_of_nested_scores():
    runs = [{"at": {"f1": 0.5, "class_wise_f1": {"Car": 0.2, "Bus": None}}},
            {"at": {"f1": 0.7, "class_wise_f1": {"Car": 0.4, "Bus": 0.1}}}]
    mean, std = aggregate(runs)
    assert mean["at"]["f1"] == pytest.approx(0.6) and std["at"]["f1"] == pytest.approx(math.sqrt(0.02))
    assert mean["at"]["class_wise_f1"] == {"Car": pytest.approx(0.3), "Bus": None}
    assert std["at"]["class_wise_f1"]["Bus"] is None


def _scores(at_f1: float, er: float) -> dict:
    return {"at": {"f1": at_f1}, "sed": {"error_rate": er, "f1": 0.0}}


def test_check_claim_pairs_the_seeds():
    ordering = Ordering("gating helps", "at.f1", "higher", "gated", "plain")
    runs = {1: {"gated": _scores(0.60, 0.8), "plain": _scores(0.50, 0.9)},
            2: {"gated": _scores(0.55, 0.8), "plain": _scores(0.58, 0.9)},
            3: {"gated": _scores(0.70, 0.8), "plain": _scores(0.65, 0.9)}}
    claim = check_claim(ordering, runs)
    assert [row["seed"] for row in claim["per_seed"]] == [1, 2, 3]
    assert [row["difference"] for row in claim["per_seed"]] == pytest.approx([0.10, -0.03, 0.05])
    assert [row["holds"] for row in claim["per_seed"]] == [True, False, True]
    assert (claim["holds_in"], claim["seeds"], claim["verdict"]) == (2, 3, "mixed")
    assert claim["mean_difference"] == pytest.approx(0.04)
    lower = check_claim(Ordering("attention helps", "sed.error_rate", "lower", "plain", "gated"), runs)
    assert lower["verdict"] == "does not hold" and lower["per_seed"][0]["difference"] == pytest.approx(0.1)
    flipped = check_claim(Ordering("x", "sed.error_rate", "lower", "gated", "plain"), runs)
    assert flipped["verdict"] == "holds" and flipped["holds_in"] == 3


def test_check_claims_skips_orderings_whose_systems_did_not_run():
    runs = {7: {"gated_crnn_mean": _scores(0.6, 0.8), "crnn_baseline": _scores(0.5, 0.9)}}
    claims = check_claims(runs)
    assert [(c["system"], c["against"]) for c in claims] == [("gated_crnn_mean", "crnn_baseline")]
    assert claims[0]["std_difference"] is None and claims[0]["verdict"] == "holds"
    assert check_claims({}) == []


def test_the_orderings_include_the_capacity_matched_test():
    pairs = {(o.system, o.against, o.metric) for o in ORDERINGS}
    assert ("gated_crnn_mean", "crnn_ungated_matched", "at.f1") in pairs
    assert ("gated_crnn_mean", "crnn_baseline", "at.f1") in pairs
    assert {o.better for o in ORDERINGS} == {"higher", "lower"}

"""The paper's orderings, checked seed by seed, and the statistics over seeds of every metric.

A claim such as "gating helps tagging" names two systems, a metric and which direction is
better. Each training seed gives one paired difference (``system - against``, both trained
with that seed on the same data and scored on the same clips); the claim holds in a seed
when the difference points the claimed way (strictly). Its verdict over the seeds is
"holds" only when it holds in every seed, "does not hold" when it holds in none, "mixed"
otherwise, and "undefined" when no seed could compare (a metric that is not defined).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

VERDICTS = ("holds", "mixed", "does not hold", "undefined")

METRIC_NAMES = {"at.f1": "AT micro F1", "at.precision": "AT micro precision", "at.recall": "AT micro recall",
                "sed.error_rate": "SED segment ER (1 s)", "sed.f1": "SED segment F1 (1 s)"}


@dataclass(frozen=True)
class Ordering:
    """One ordering to check: ``system`` is better than ``against`` on ``metric``.

    Attributes:
        claim: the finding in words.
        metric: a key of :data:`METRIC_NAMES` ("at.f1": results' ``at.f1``).
        better: "higher" or "lower".
        system, against: the two systems compared.
        origin: "paper" (a finding of Xu et al.) or "ablation" (our test of one).
    """

    claim: str
    metric: str
    better: str
    system: str
    against: str
    origin: str = "paper"


#: The orderings checked on our results.
ORDERINGS: tuple[Ordering, ...] = (
    Ordering("gating helps tagging (gated over non-gated CRNN, both mean pooling; the two also differ in "
             "pooling, GRU type and GRU size)", "at.f1", "higher", "gated_crnn_mean", "crnn_baseline"),
    Ordering("gating alone helps tagging (gated CRNN over its ReLU twin of the same parameter count, "
             "everything else identical)", "at.f1", "higher", "gated_crnn_mean", "crnn_ungated_matched",
             origin="ablation"),
    Ordering("gating helps tagging (gated CRNN with attention over the non-gated CRNN)", "at.f1", "higher",
             "gated_crnn_attention", "crnn_baseline"),
    Ordering("attention helps event detection (attention over mean pooling, gated CRNN)", "sed.error_rate",
             "lower", "gated_crnn_attention", "gated_crnn_mean"),
    Ordering("attention helps event detection (attention over mean pooling, gated CRNN)", "sed.f1", "higher",
             "gated_crnn_attention", "gated_crnn_mean"),
)


def metric_value(scores: Mapping[str, Any], metric: str) -> float | None:
    """``scores[task][name]`` for ``metric`` "task.name" (a run's or a mean's ``at``/``sed`` entries)."""
    task, name = metric.split(".")
    return scores[task][name]


def holds(ours: float | None, theirs: float | None, better: str) -> bool | None:
    """Whether ``ours`` is strictly better than ``theirs`` (None when either is undefined)."""
    if ours is None or theirs is None:
        return None
    return ours > theirs if better == "higher" else ours < theirs


def verdict(per_seed: Sequence[bool | None]) -> str:
    """The verdict over seeds: "holds" only when the claim holds in every seed (see the module doc)."""
    if not per_seed or all(h is None for h in per_seed):
        return "undefined"
    if all(h is True for h in per_seed):
        return "holds"
    return "mixed" if any(h is True for h in per_seed) else "does not hold"


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of ``values``; None where undefined (a None
    value, or fewer than two values for the deviation)."""
    if not values or any(v is None for v in values):
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def check_claim(ordering: Ordering, runs: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One ordering over the seeds. ``runs``: seed -> system -> scores (``at``, ``sed``)."""
    per_seed = []
    for seed, systems in runs.items():
        ours = metric_value(systems[ordering.system], ordering.metric)
        theirs = metric_value(systems[ordering.against], ordering.metric)
        per_seed.append({"seed": seed, "system": ours, "against": theirs,
                         "difference": None if ours is None or theirs is None else ours - theirs,
                         "holds": holds(ours, theirs, ordering.better)})
    mean, std = mean_std([row["difference"] for row in per_seed])
    flags = [row["holds"] for row in per_seed]
    return {"claim": ordering.claim, "origin": ordering.origin, "metric": METRIC_NAMES[ordering.metric],
            "metric_key": ordering.metric, "better": ordering.better, "system": ordering.system,
            "against": ordering.against, "difference": "system - against", "per_seed": per_seed,
            "mean_difference": mean, "std_difference": std, "holds_in": sum(h is True for h in flags),
            "seeds": len(flags), "verdict": verdict(flags)}


def check_claims(runs: Mapping[int, Mapping[str, Mapping[str, Any]]],
                 orderings: Sequence[Ordering] = ORDERINGS) -> list[dict[str, Any]]:
    """Every ordering whose two systems ran in every seed, in the order of ``orderings``."""
    return [check_claim(o, runs) for o in orderings
            if runs and all(o.system in systems and o.against in systems for systems in runs.values())]


def aggregate(per_seed: Sequence[Any]) -> tuple[Any, Any]:
    """Mean and sample standard deviation over seeds of every number in nested dicts of one shape.

    ``per_seed`` holds one value per seed: a number (or None), or a dict of such values. Returns
    ``(mean, std)`` of the same shape; a leaf is None where any seed's value is None, and its
    standard deviation is None with one seed.
    """
    first = per_seed[0]
    if isinstance(first, Mapping):
        pairs = {key: aggregate([run[key] for run in per_seed]) for key in first}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
    return mean_std(list(per_seed))


__all__ = ["VERDICTS", "METRIC_NAMES", "Ordering", "ORDERINGS", "metric_value", "holds", "verdict", "mean_std",
           "check_claim", "check_claims", "aggregate"]

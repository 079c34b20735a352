"""The results table of ``devinet reproduce``: ours beside the paper's reported figures, one metric per column.

Metrics are named explicitly everywhere: "AT micro F1" (audio tagging, micro-averaged over
(clip, label) pairs, CVSSP's 0.3 / arg-max rule) and "SED segment ER / F1 (1 s)" (sound
event detection, sed_eval segment-based overall values on 1-s segments). A reported figure
goes only in the column of the metric it is; CVSSP's frame-level "error rate" is never shown.
"""

from __future__ import annotations

from typing import Any, Mapping

#: What each reported number is (written to results.json beside the numbers).
METRIC_DEFINITIONS: dict[str, str] = {
    "at.f1": "AT micro F1: audio tagging, F1 micro-averaged over (clip, label) pairs against the weak labels "
             "(the official subtask A metric); a label is on when its probability > 0.3, or the arg-max "
             "label when none is (CVSSP's rule)",
    "at.precision": "AT micro precision, same pairs and rule",
    "at.recall": "AT micro recall, same pairs and rule",
    "sed.error_rate": "SED segment ER (1 s): sound event detection, segment-based error rate on 1-s segments, "
                      "overall (sed_eval SegmentBasedMetrics, the official subtask B metric); events from the "
                      "240-frame probabilities with threshold 0.3, gaps of < 10 frames bridged and runs of <= 10 "
                      "frames dropped (CVSSP's post-processing)",
    "sed.f1": "SED segment F1 (1 s): segment-based F1 on 1-s segments, overall, same events",
}

_TECH_REPORT = ("Xu, Kong, Wang, Plumbley: DCASE 2017 Task 4 technical report DCASE2017_Xu_146 "
                "(arXiv:1709.00551)")
_CHALLENGE = ("DCASE 2017 Task 4 challenge results, CVSSP entry (Xu, Kong, Wang, Plumbley, ICASSP 2018, "
              "arXiv:1710.00343)")

#: Figures reported on the real DCASE 2017 Task 4 data, with their sources (None: not reported).
PAPER_FIGURES: list[dict[str, Any]] = [
    {"source": _TECH_REPORT, "data": "DCASE 2017 Task 4 development (testing) set, 488 real clips",
     "system": "CVSSP system (gated CRNN)", "at_f1": 0.61, "sed_error_rate": 0.73, "sed_f1": None},
    {"source": _TECH_REPORT, "data": "DCASE 2017 Task 4 development (testing) set, 488 real clips",
     "system": "official DCASE 2017 Task 4 baseline (as reported there)", "at_f1": 0.131, "sed_error_rate": 1.02,
     "sed_f1": None},
    {"source": _CHALLENGE, "data": "DCASE 2017 Task 4 evaluation set, real clips",
     "system": "CVSSP (1st in audio tagging, 2nd team in SED)", "at_f1": 0.556, "sed_error_rate": 0.73,
     "sed_f1": None},
]

#: The paper's orderings checked on our results: (claim, metric key, better, system, against).
ORDERINGS: list[tuple[str, str, str, str, str]] = [
    ("gating helps tagging (gated over non-gated CRNN, both mean pooling)", "at.f1", "higher",
     "gated_crnn_mean", "crnn_baseline"),
    ("gating helps tagging (gated CRNN with attention over the non-gated CRNN)", "at.f1", "higher",
     "gated_crnn_attention", "crnn_baseline"),
    ("attention helps event detection (attention over mean pooling, gated CRNN)", "sed.error_rate", "lower",
     "gated_crnn_attention", "gated_crnn_mean"),
    ("attention helps event detection (attention over mean pooling, gated CRNN)", "sed.f1", "higher",
     "gated_crnn_attention", "gated_crnn_mean"),
]
METRIC_NAMES = {"at.f1": "AT micro F1", "at.precision": "AT micro precision", "at.recall": "AT micro recall",
                "sed.error_rate": "SED segment ER (1 s)", "sed.f1": "SED segment F1 (1 s)"}


def _value(system: Mapping[str, Any], metric: str) -> float | None:
    task, name = metric.split(".")
    return system[task][name]


def ordering_checks(systems: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Whether each of the paper's orderings holds among ``systems`` (those whose two systems ran)."""
    checks = []
    for claim, metric, better, system, against in ORDERINGS:
        if system not in systems or against not in systems:
            continue
        ours, theirs = _value(systems[system], metric), _value(systems[against], metric)
        holds = None if ours is None or theirs is None else (ours > theirs if better == "higher" else ours < theirs)
        checks.append({"claim": claim, "metric": METRIC_NAMES[metric], "better": better, "system": system,
                       "against": against, "values": [ours, theirs], "holds": holds})
    return checks


def per_class_reference() -> dict[str, tuple[float, str]]:
    """Reference lines for the per-class figure: the paper reports no per-class F1 on the development
    set, so the AT panel shows its overall micro F1 as context, labelled as such; SED gets none."""
    figure = PAPER_FIGURES[0]
    return {"at": (figure["at_f1"], "CVSSP, real development set: overall micro F1 (tech report)")}


# ---------------------------------------------------------------------- markdown
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _versions_line(versions: Mapping[str, Any]) -> str:
    keys = ("devinet", "python", "torch", "numpy", "librosa", "sed_eval", "git")
    return ", ".join(f"{k} {versions.get(k)}" for k in keys if versions.get(k))


def _dataset_line(dataset: Mapping[str, Any]) -> str:
    if dataset["kind"] == "synthetic":
        return (f"the built-in synthetic stand-in for DCASE 2017 Task 4 (generator version "
                f"{dataset['generator_version']}, size {dataset['size']}, seed {dataset['seed']}): "
                f"{dataset['train_clips_used']} training clips, {dataset['test_clips_scored']} testing clips "
                f"scored. These are synthesized sounds, not real recordings: our numbers are not comparable "
                f"with the paper's, only the ordering of the systems carries over.")
    missing = {split: sum(dataset[f"{split}_clips_without_audio"].values()) for split in ("train", "test")}
    left_out = " and ".join(f"{count} {name} clips" for name, count in
                            (("training", missing["train"]), ("testing", missing["test"])) if count)
    return (f"real DCASE 2017 Task 4 audio from {dataset['root']}: {dataset['train_clips_used']} training clips, "
            f"{dataset['test_clips_scored']} testing clips scored with the official ground truth"
            + (f" ({left_out} without usable audio are left out)" if left_out else "") + ".")


def results_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: our table, the ordering checks, the paper's figures (sources named), the figures."""
    size, systems = results["size"], results["systems"]
    training = size["training"]
    lines = [
        "# Weak-label experiments of Xu et al. (ICASSP 2018), reproduced with devinet",
        "",
        f"Produced by `{results['command']}` on {results['created']} "
        f"({_versions_line(results['versions'])}).",
        "",
        f"Data: {_dataset_line(results['dataset'])}",
        "",
        f"Size `{size['name']}`: {size['description']}. Training: Adam (learning rate "
        f"{training['learning_rate']:g}), balanced batches of {training['batch_size']}, {training['epochs']} "
        f"epochs of {training['iterations_per_epoch']} iterations, predictions fused over the last "
        f"{training['fused_checkpoints']} epochs' checkpoints; models at width {size['width']:g} of the paper's "
        f"(1 = the paper's models)" + "".join(f", {key} {value}" for key, value in size["model_overrides"].items())
        + f"; seed {results['seed']}.",
        "",
        "## Our results (testing split)",
        "",
        _row(["System", "AT micro F1 (%)", "AT micro P (%)", "AT micro R (%)", "SED segment ER (1 s)",
              "SED segment F1 (1 s, %)"]),
        _row(["---", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for name, entry in systems.items():
        at, sed = entry["at"], entry["sed"]
        lines.append(_row([f"`{name}`: {entry['title']}", _pct(at["f1"]), _pct(at["precision"]),
                           _pct(at["recall"]), _num(sed["error_rate"]), _pct(sed["f1"])]))
    lines += ["", "SED of the mean-pooling systems: " + next(
        (e["sed_source"] for e in systems.values() if e["preset"] in ("cvssp_crnn_at", "cvssp_crnn_baseline")),
        "n/a") + "."]
    checks = results.get("ordering", [])
    if checks:
        lines += ["", "## Does the paper's ordering hold here?", "",
                  _row(["Paper's finding", "Metric", "Ours", "Holds here"]), _row(["---", "---", "---", "---"])]
        for check in checks:
            fmt = _num if "ER" in check["metric"] else _pct
            ours = (f"`{check['system']}` {fmt(check['values'][0])} vs `{check['against']}` "
                    f"{fmt(check['values'][1])} ({check['better']} is better)")
            verdict = {True: "yes", False: "**no**", None: "undefined"}[check["holds"]]
            lines.append(_row([check["claim"], check["metric"], ours, verdict]))
        lines += ["", f"One training run per system (seed {results['seed']}): no seed-to-seed variation is "
                      "measured, so a difference of a point or so may not survive another seed."]
    lines += ["", "## Figures reported on the real data (for reference; other data than ours)", "",
              _row(["Source", "Data", "System", "AT micro F1 (%)", "SED segment ER (1 s)", "SED segment F1 (1 s, %)"]),
              _row(["---", "---", "---", "---:", "---:", "---:"])]
    for figure in results["paper"]:
        lines.append(_row([figure["source"], figure["data"], figure["system"], _pct(figure["at_f1"]),
                           _num(figure["sed_error_rate"]), _pct(figure["sed_f1"])]))
    lines += ["", "– : not reported. CVSSP's frame-level \"error rate\" (in its own statistics files) is a "
              "different metric and is not shown.", "", "## Metrics", ""]
    lines += [f"- {definition}" for definition in results["metrics"].values()]
    figures = results.get("figures", {})
    if figures:
        lines += ["", "## Figures", ""]
        captions = {"training_curves": "Training loss and testing AT micro F1 per epoch (monitoring only: "
                                       "no choice is made from it)",
                    "per_class_f1": "Per-class AT F1 and SED segment F1 (1 s)",
                    "clip_example": "A testing clip: log-mel, frame-wise probabilities and the strong labels"}
        for name, path in figures.items():
            lines += [f"![{captions.get(name, name)}]({path})", "", f"*{captions.get(name, name)}.*", ""]
    timing = results.get("timing_seconds", {})
    if timing:
        lines += ["## Time", "", ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timing.items())
                  + " (this invocation; stages resumed from an earlier one take less).", ""]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["METRIC_DEFINITIONS", "PAPER_FIGURES", "ORDERINGS", "METRIC_NAMES", "ordering_checks",
           "per_class_reference", "results_markdown"]

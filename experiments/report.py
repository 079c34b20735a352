"""The results table of ``devinet reproduce``: ours beside the paper's reported figures, one metric per column.

Metrics are named explicitly everywhere: "AT micro F1" (audio tagging, micro-averaged over
(clip, label) pairs, CVSSP's 0.3 / arg-max rule) and "SED segment ER / F1 (1 s)" (sound
event detection, sed_eval segment-based overall values on 1-s segments). A reported figure
goes only in the column of the metric it is; CVSSP's frame-level "error rate" is never shown.
The metrics beyond the paper's (AT mAP and macro AUC, SED event-based ER/F1, PSDS) have a table
of their own, after the official ones; no reported figure exists for them.
"""

from __future__ import annotations

from typing import Any, Mapping

from experiments.evaluation.detection import EVENT_PERCENTAGE_OF_LENGTH, EVENT_T_COLLAR
from experiments.evaluation.psds import PSDS_SCENARIOS, PSDSScenario


def _scenario_text(scenario: PSDSScenario) -> str:
    cross = ("cross-triggers not counted" if scenario.cttc_threshold is None else
             f"CTTC {scenario.cttc_threshold:g}, alpha_CT {scenario.alpha_ct:g}")
    return (f"DTC {scenario.dtc_threshold:g}, GTC {scenario.gtc_threshold:g}, {cross}, alpha_ST "
            f"{scenario.alpha_st:g}, eFPR up to {scenario.max_efpr:g} per hour")


_PSDS_TEXT = ("sed_scores_eval, exact over all thresholds, of per-frame scores that reproduce CVSSP's "
              "post-processing at every threshold; reference rows without extent left out, overlapping "
              "reference events of a class merged")

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
    "at.map": "AT mAP (beyond the paper's metrics): mean over the classes of the average precision of the clip "
              "probabilities (scikit-learn average_precision_score; threshold-free)",
    "at.macro_auc": "AT macro AUC (beyond the paper's metrics): mean over the classes of the ROC AUC of the clip "
                    "probabilities (scikit-learn roc_auc_score)",
    "sed_event.error_rate": f"SED event ER (beyond the paper's metrics): event-based error rate, overall (sed_eval "
                            f"EventBasedMetrics), onset collar {1000 * EVENT_T_COLLAR:g} ms, offset collar "
                            f"max({1000 * EVENT_T_COLLAR:g} ms, {100 * EVENT_PERCENTAGE_OF_LENGTH:g} % of the "
                            "reference length) (DCASE 2018 Task 4's collars: DCASE 2017 Task 4 defined no "
                            "event-based metric); same events as the segment metric; reference rows without "
                            "extent left out",
    "sed_event.f1": "SED event F1 (beyond the paper's metrics): event-based F1, overall, same collars and events",
    "psds.scenario1": f"PSDS 1 (beyond the paper's metrics): DCASE 2021 Task 4 scenario 1 "
                      f"({_scenario_text(PSDS_SCENARIOS['scenario1'])}); {_PSDS_TEXT}",
    "psds.scenario2": f"PSDS 2 (beyond the paper's metrics): DCASE 2021 Task 4 scenario 2 "
                      f"({_scenario_text(PSDS_SCENARIOS['scenario2'])}); same scores",
}

_RESULTS_PAGE = ("DCASE 2017 Task 4 challenge results page, subtask A table "
                 "(http://dcase.community/challenge2017/task-large-scale-sound-event-detection-results)")
_ICASSP = ("Xu, Kong, Wang, Plumbley, \"Large-scale weakly supervised audio classification using gated "
           "convolutional neural network\", ICASSP 2018 (arXiv:1710.00343), abstract")
_TECH_REPORT = ("Xu, Kong, Wang, Plumbley, \"Surrey-CVSSP system for DCASE2017 challenge task4\", technical report "
                "DCASE2017_Xu_146, as quoted by the project's shared docs/evaluation.md")
_DEV = "DCASE 2017 Task 4 development set: its testing split, 488 real clips"
_EVAL = "DCASE 2017 Task 4 evaluation set, real clips"

#: Figures reported on the real DCASE 2017 Task 4 data, each with its source. A metric is None when
#: the source does not report it, and listed in ``not_read`` when the source (or the challenge's
#: results page) reports it but it could not be read where this table was checked. ``checked``:
#: whether the figure was read in the cited source itself. How each was checked: experiments/README.md.
PAPER_FIGURES: list[dict[str, Any]] = [
    {"split": "development", "data": _DEV, "system": "official DCASE 2017 Task 4 baseline (Badlani2017)",
     "submission": "DCASE2017 baseline", "at_f1": 0.109, "at_precision": 0.078, "at_recall": 0.175,
     "sed_error_rate": None, "sed_f1": None, "not_read": ["sed_error_rate", "sed_f1"], "source": _RESULTS_PAGE,
     "checked": True, "note": "row \"DCASE2017 baseline\"; its SED figures are in the subtask B table, not read here"},
    {"split": "evaluation", "data": _EVAL, "system": "official DCASE 2017 Task 4 baseline (Badlani2017)",
     "submission": "DCASE2017 baseline", "at_f1": 0.182, "at_precision": 0.150, "at_recall": 0.231,
     "sed_error_rate": None, "sed_f1": None, "not_read": ["sed_error_rate", "sed_f1"], "source": _RESULTS_PAGE,
     "checked": True, "note": "same row"},
    {"split": "evaluation", "data": _EVAL, "system": "CVSSP, the team's best submission in each subtask (1st in "
     "audio tagging, 2nd team in SED)", "submission": None, "at_f1": 0.556, "at_precision": None,
     "at_recall": None, "sed_error_rate": 0.73, "sed_f1": None,
     "not_read": ["submission", "at_precision", "at_recall", "sed_f1"], "source": _ICASSP, "checked": True,
     "note": "\"F value 55.6% and Equal error 0.73\": the abstract's \"Equal error\" is the challenge's SED "
             "segment ER; the submission codes (Xu_CVSSP_task4_1..4) and the other figures of these rows are "
             "on the results page, not read here"},
    {"split": "development", "data": _DEV, "system": "CVSSP's system in its technical report: a fusion, not one "
     "gated CRNN (issue 19's reading, not checked)", "submission": None, "at_f1": 0.61, "at_precision": None,
     "at_recall": None, "sed_error_rate": 0.73, "sed_f1": None, "not_read": ["submission"],
     "source": _TECH_REPORT, "checked": False,
     "note": "the technical report could not be reached to check these figures, the system they describe or "
             "its arXiv number"},
]

#: What the reference table says about figures it does not carry.
PAPER_FIGURE_NOTES = (
    "13.1 %, given earlier in this project as the baseline's development AT F1 (quoted from the CVSSP technical "
    "report), is not used: the results page gives 10.9 %. It may be the baseline's development SED F1; that, and "
    "the baseline's development SED ER of 1.02 quoted from the same report, could not be checked.",
    "`fusion` in our results is this project's own construction (the mean of our three systems' outputs); it is "
    "not CVSSP's fusion.",
)


def per_class_reference(dataset_kind: str) -> dict[str, tuple[float, str]]:
    """Reference lines for the per-class figure: none on synthetic data (figures reported on the real data
    do not apply to it); on the real data, the checked development-set AT micro F1 figures, labelled as
    overall (not per-class) values."""
    if dataset_kind == "synthetic":
        return {}
    checked = [f for f in PAPER_FIGURES if f["checked"] and f["split"] == "development" and f["at_f1"] is not None]
    return {"at": (checked[0]["at_f1"], f"{checked[0]['system']}, real development set: overall AT micro F1 "
                                        "(results page)")} if checked else {}


# ---------------------------------------------------------------------- markdown
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _num3(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _cell(mean: float | None, std: float | None, fmt) -> str:
    """``mean ± std`` in the metric's format (a percentage's std in points); the mean alone with one seed."""
    if std is None:
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def _signed(difference: float | None, metric_key: str) -> str:
    if difference is None:
        return "–"
    return f"{difference:+.2f}" if metric_key == "sed.error_rate" else f"{100 * difference:+.1f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


_SCORE_COLUMNS = (("at", "f1", _pct), ("at", "precision", _pct), ("at", "recall", _pct),
                  ("sed", "error_rate", _num), ("sed", "f1", _pct))
_SCORE_HEADER = ["AT micro F1 (%)", "AT micro P (%)", "AT micro R (%)", "SED segment ER (1 s)",
                 "SED segment F1 (1 s, %)"]


_BEYOND_COLUMNS = (("at", "map", _pct), ("at", "macro_auc", _num3), ("sed_event", "error_rate", _num),
                   ("sed_event", "f1", _pct), ("psds", "scenario1", _num3), ("psds", "scenario2", _num3))
_BEYOND_HEADER = ["AT mAP (%)", "AT macro AUC", "SED event ER", "SED event F1 (%)", "PSDS 1", "PSDS 2"]


def _system_table(systems: Mapping[str, Any], columns: tuple, header: list[str]) -> list[str]:
    """One row per system: each column's mean ± std over the seeds."""
    lines = [_row(["System", *header]), _row(["---"] + ["---:"] * len(header))]
    for name, e in systems.items():
        cells = [_cell(e["mean"][task][key], e["std"][task][key], fmt) for task, key, fmt in columns]
        lines.append(_row([f"`{name}`: {e['title']}", *cells]))
    return lines


def _beyond_lines(systems: Mapping[str, Any], split: str) -> list[str]:
    return (["", f"### Beyond the paper's metrics ({split})", ""]
            + _system_table(systems, _BEYOND_COLUMNS, _BEYOND_HEADER)
            + ["", "Not the challenge's metrics, and no reported figure to compare with: threshold-free AT ranking "
                   "(mAP, AUC), event-based SED with DCASE 2018's collars, PSDS of DCASE 2021's two scenarios "
                   "(definitions below, and docs/metrics.md)."])


def _evaluation_lines(entry: Mapping[str, Any] | None) -> list[str]:
    """The evaluation split's scores beside the challenge's evaluation-set figures (real data only)."""
    if entry is None:
        return []
    missing = sum(entry["clips_without_audio"].values())
    lines = ["", "## Our results (evaluation split: the challenge's evaluation set)", "",
             f"{entry['clips_scored']} clips of the challenge's evaluation set scored with its official ground "
             "truth" + (f" ({missing} without audio left out)" if missing else "")
             + "; the claims above are checked on the testing split only.", ""]
    lines += _system_table(entry["systems"], _SCORE_COLUMNS, _SCORE_HEADER)
    lines += ["", "The challenge's evaluation-set figures (same metrics, the full evaluation set):", ""]
    lines += _figure_table(entry["challenge"])
    return lines + _beyond_lines(entry["systems"], "evaluation split")


def _versions_line(versions: Mapping[str, Any]) -> str:
    keys = ("devinet", "python", "torch", "numpy", "librosa", "sed_eval", "git")
    return ", ".join(f"{k} {versions.get(k)}" for k in keys if versions.get(k))


def _dataset_line(dataset: Mapping[str, Any]) -> str:
    if dataset["kind"] == "synthetic":
        return (f"the built-in **synthetic** stand-in for DCASE 2017 Task 4 (generator version "
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


def _setup_lines(results: Mapping[str, Any]) -> list[str]:
    size, seeds = results["size"], results["seeds"]
    return [
        "# Weak-label experiments of Xu et al. (ICASSP 2018), reproduced with devinet", "",
        f"Produced by `{results['command']}` on {results['created']} ({_versions_line(results['versions'])}).", "",
        f"Data: {_dataset_line(results['dataset'])}", "",
        f"Size `{size['name']}`: {size['description']}; models at width {size['width']:g} of the paper's "
        f"(1 = the paper's models)" + "".join(f", {k} {v}" for k, v in size["model_overrides"].items()) + ".", "",
        f"Seeds: {', '.join(map(str, seeds))} ({len(seeds)} training run{'s' if len(seeds) > 1 else ''} per "
        f"system): {results['seed_rule']}. Scores are the mean ± sample standard deviation over the seeds.",
    ]


def _models_lines(systems: Mapping[str, Any]) -> list[str]:
    trained = {name: e for name, e in systems.items() if "model" in e}
    if not trained:
        return []
    lines = ["", "## Systems, models and schedules", "",
             _row(["System", "Model", "Conv block outputs", "Parameters", "Keras count", "Schedule",
                   "Epochs × iterations", "Fused epochs (Keras files)"]),
             _row(["---", "---", "---", "---:", "---:", "---", "---", "---"])]
    for name, e in trained.items():
        m, s = e["model"], e["schedule"]
        blocks = f"{m['conv_channels']}, {m['conv_block']}"
        fused = f"{_span(s['fused_epochs'])} ({_span(s['keras_checkpoint_numbers'])})"
        lines.append(_row([f"`{name}`: {e['title']}", f"`{m['name']}`", blocks, f"{m['parameters']:,}",
                           f"{m['parameters_keras_count']:,}", f"`{s['name']}`",
                           f"{s['epochs']} × {s['iterations_per_epoch']}, batch {s['batch_size']}, "
                           f"lr {s['learning_rate']:g}", fused]))
    lines += ["", "Parameters: trainable; Keras count adds BatchNorm's moving statistics."]
    if "crnn_ungated_matched" in trained and "gated_crnn_mean" in trained:
        ours, twin = trained["gated_crnn_mean"]["model"], trained["crnn_ungated_matched"]["model"]
        gap = twin["parameters"] - ours["parameters"]
        lines += ["", f"Capacity-matched ablation: `crnn_ungated_matched` replaces each gated block of "
                      f"`gated_crnn_mean` ({ours['conv_channels']} outputs from a convolution to "
                      f"{2 * ours['conv_channels']} maps) by a ReLU block of {twin['conv_channels']} channels, the "
                      f"integer closest in parameter count: {twin['parameters']:,} against {ours['parameters']:,} "
                      f"trainable parameters ({gap:+,}, {100 * gap / ours['parameters']:+.2f} %); pooling, final "
                      "conv, GRU and head are identical."]
    lines += ["", "Schedules: `main_crnn_at` is main_crnn_at.py's and main_crnn_sed.py's (a checkpoint per 100 "
                  "iterations, fusion of the weights after epochs 21..30); `icassp2018_baseline` is that of the "
                  "ICASSP 2018 baseline and the challenge-era prediction scripts (a checkpoint every 10 epochs, "
                  "fusion after epochs 20..80 step 10: Keras files 19..79); a `size` schedule is this size's own. "
                  "CVSSP chose their fusion ranges on the development (testing) split, the split scored here "
                  "(experiments/README.md); here the fused epochs are fixed before training."]
    return lines


def _span(values: list[int]) -> str:
    if len(values) > 2 and len({b - a for a, b in zip(values, values[1:])}) == 1:
        step = values[1] - values[0]
        return f"{values[0]}..{values[-1]}" + (f" step {step}" if step != 1 else "")
    return ", ".join(map(str, values))


def _scores_lines(systems: Mapping[str, Any], several: bool) -> list[str]:
    lines = ["", "## Our results (testing split)", ""] + _system_table(systems, _SCORE_COLUMNS, _SCORE_HEADER)
    lines += ["", "SED of the mean-pooling systems: " + next(
        (e["sed_source"] for e in systems.values() if e["preset"] in ("cvssp_crnn_at", "cvssp_crnn_baseline")),
        "n/a") + "."]
    if several:
        lines += ["", "### Each seed", "", _row(["System", "Seed", *_SCORE_HEADER]),
                  _row(["---", "---:"] + ["---:"] * len(_SCORE_HEADER))]
        for name, e in systems.items():
            for run in e["runs"]:
                cells = [fmt(run[task][key]) for task, key, fmt in _SCORE_COLUMNS]
                lines.append(_row([f"`{name}`", str(run["seed"]), *cells]))
    return lines


def _claims_lines(claims: list[Mapping[str, Any]], seeds: list[int]) -> list[str]:
    if not claims:
        return []
    lines = ["", "## Do the paper's orderings hold here?", "",
             _row(["Finding", "Metric", "Compared", "Difference per seed", "Holds in", "Mean difference",
                   "Verdict"]), _row(["---", "---", "---", "---", "---:", "---:", "---"])]
    for c in claims:
        key = c["metric_key"]
        per_seed = "; ".join(f"{r['seed']}: {_signed(r['difference'], key)} "
                             f"{'✓' if r['holds'] else '✗'}" for r in c["per_seed"])
        mean = _signed(c["mean_difference"], key) + (
            "" if c["std_difference"] is None else f" ± {_signed(c['std_difference'], key).lstrip('+')}")
        verdict = c["verdict"] if c["verdict"] == "holds" else f"**{c['verdict']}**"
        origin = "" if c["origin"] == "paper" else " (our ablation)"
        lines.append(_row([c["claim"] + origin, c["metric"], f"`{c['system']}` − `{c['against']}` "
                           f"({c['better']} is better)", per_seed, f"{c['holds_in']}/{c['seeds']}", mean, verdict]))
    lines += ["", "Differences are paired (both systems trained with the same seed, on the same data, scored on "
                  "the same clips), in points for F1 and in ER units for the error rate. A finding \"holds\" only "
                  "when it holds in every seed; \"mixed\" when in some; \"does not hold\" when in none."]
    if len(seeds) == 1:
        lines += ["", f"One training run per system (seed {seeds[0]}): no seed-to-seed variation is measured, so "
                      "a difference of a point or so may not survive another seed (`--seeds N`)."]
    return lines


def _reference_lines(figures: list[Mapping[str, Any]]) -> list[str]:
    lines = ["", "## Figures reported on the real data (for reference; other data than ours)", ""]
    lines += _figure_table(figures)
    lines += ["", "– : not reported by the source. ? : reported by the source or the challenge's results page, "
                  "but not readable where this table was checked. CVSSP's frame-level \"error rate\" (in its own "
                  "statistics files) is a different metric and is not shown.", ""]
    lines += [f"- {note}" for note in PAPER_FIGURE_NOTES]
    return lines


def _figure_table(figures: list[Mapping[str, Any]]) -> list[str]:
    """The reported figures, one per row, with their sources."""
    lines = [_row(["Split", "System", "Submission", *_SCORE_HEADER, "Source", "Checked here"]),
             _row(["---", "---", "---"] + ["---:"] * len(_SCORE_HEADER) + ["---", "---"])]
    for f in figures:
        cells = ["?" if f"{task}_{key}" in f["not_read"] else fmt(f[f"{task}_{key}"])
                 for task, key, fmt in _SCORE_COLUMNS]
        submission = "?" if "submission" in f["not_read"] else (f["submission"] or "–")
        checked = "yes" if f["checked"] else "**no: unverifiable here**"
        lines.append(_row([f["split"], f["system"], submission, *cells, f"{f['source']}; {f['note']}", checked]))
    return lines


def _closing_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Metrics", ""] + [f"- {definition}" for definition in results["metrics"].values()]
    figures = results.get("figures", {})
    if figures:
        lines += ["", "## Figures", ""]
        captions = {"training_curves": "Training loss and testing AT micro F1 per epoch, every seed (monitoring "
                                       "only: no choice is made from it)",
                    "per_class_f1": "Per-class AT F1 and SED segment F1 (1 s), mean over seeds (bars: ± one "
                                    "standard deviation)",
                    "clip_example": "A testing clip: log-mel, frame-wise probabilities (first seed) and the "
                                    "strong labels"}
        for name, path in figures.items():
            lines += [f"![{captions.get(name, name)}]({path})", "", f"*{captions.get(name, name)}.*", ""]
    timing = results.get("timing_seconds", {})
    if timing:
        lines += ["## Time", "", ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timing.items())
                  + " (this invocation, all seeds; stages resumed from an earlier one take less).", ""]
    return lines


def results_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: setup, our scores over seeds, the orderings seed by seed, the reported figures, figures."""
    lines = _setup_lines(results) + _models_lines(results["systems"])
    lines += _scores_lines(results["systems"], len(results["seeds"]) > 1)
    lines += _beyond_lines(results["systems"], "testing split")
    lines += _claims_lines(results.get("claims", []), results["seeds"])
    lines += _evaluation_lines(results.get("evaluation"))
    lines += _reference_lines(results["paper"]) + _closing_lines(results)
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["METRIC_DEFINITIONS", "PAPER_FIGURES", "PAPER_FIGURE_NOTES", "per_class_reference", "results_markdown"]

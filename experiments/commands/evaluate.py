"""Score predictions with the official DCASE 2017 Task 4 metrics (audio tagging and sound event detection).

    devinet evaluate at  --pred FILE --truth WEAK_LABELS  [--threshold 0.3] [--json OUT]
    devinet evaluate sed --pred FILE --truth STRONG_LABELS [--threshold 0.3] [--smooth 10] [--salt 10] [--json OUT]

``--pred`` is recognised by content: for ``at`` a CVSSP ``at_prob_mat.csv(.gz)`` file (tags by
CVSSP's rule: probability > threshold, else the arg-max label) or an AT submission; for ``sed``
a ``sed_prob_mat_list.csv(.gz)`` file (events by CVSSP's smoothing) or an SED submission.
AT is scored with the official micro P/R/F1 over (clip, label) pairs; SED with sed_eval's
segment-based error rate and F1 on 1-s segments. Beyond the official metrics (never the
headline): AT mAP and macro ROC AUC (probability files), SED event-based ER and F1 with
DCASE's collars, and with ``--psds`` the PSDS of DCASE 2021's scenarios 1 and 2 (probability
files; docs/metrics.md). The summary goes to stdout, the full results to ``--json`` (written
atomically).
"""

from __future__ import annotations

import argparse

from devinet.recipe import DEFAULT_N_SALT, DEFAULT_N_SMOOTH, DEFAULT_THRESHOLD, FRAME_STEP_SEC

HELP = "score predictions with the official DCASE 2017 Task 4 metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    at = tasks.add_parser("at", help="audio tagging: micro P/R/F1 against weak labels",
                          description="Score audio-tagging predictions against a weak-label file "
                                      "(groundtruth_weak_label_*.csv) with the official micro P/R/F1.")
    _add_common(at, truth_help="weak-label ground truth (groundtruth_weak_label_*.csv)",
                pred_help="at_prob_mat.csv(.gz) probabilities or an AT submission (name, start, end, label)")
    at.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help=f"tagging threshold for every class; the arg-max label is on when none passes "
                         f"(default {DEFAULT_THRESHOLD})")
    at.add_argument("--oracle-thresholds", action="store_true",
                    help="also report per-class thresholds tuned on the scored set itself (an oracle, "
                         "reported separately; needs a probability file)")

    sed = tasks.add_parser("sed", help="sound event detection: segment-based ER and F1 (sed_eval)",
                           description="Score sound event detection against a strong-label file "
                                       "(groundtruth_strong_label_*.csv): segment-based error rate and F1 "
                                       "on 1-s segments, computed with sed_eval.")
    _add_common(sed, truth_help="strong-label ground truth (groundtruth_strong_label_*.csv)",
                pred_help="sed_prob_mat_list.csv(.gz) frame probabilities or an SED submission "
                          "(name, onset, offset, label)")
    sed.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                     help=f"frame threshold for every class (default {DEFAULT_THRESHOLD})")
    sed.add_argument("--smooth", type=int, default=DEFAULT_N_SMOOTH, metavar="N",
                     help=f"bridge gaps between active frames whose indices differ by at most N "
                          f"(default {DEFAULT_N_SMOOTH})")
    sed.add_argument("--salt", type=int, default=DEFAULT_N_SALT, metavar="N",
                     help=f"drop runs of N frames or fewer (default {DEFAULT_N_SALT})")
    sed.add_argument("--frame-step", type=float, default=FRAME_STEP_SEC, metavar="SECONDS",
                     help=f"seconds per frame of the probability file (default 664/16000 = {FRAME_STEP_SEC:g})")
    sed.add_argument("--gate-with", metavar="AT_PRED", default=None,
                     help="keep only events of the classes tagged by these AT predictions (probabilities "
                          "or submission); a different system from CVSSP's, reported as gated")
    sed.add_argument("--gate-threshold", type=float, default=DEFAULT_THRESHOLD,
                     help=f"tagging threshold of --gate-with probabilities (default {DEFAULT_THRESHOLD})")
    sed.add_argument("--psds", action="store_true",
                     help="also compute the PSDS (DCASE 2021 scenarios 1 and 2, sed_scores_eval) of the frame "
                          "probabilities with CVSSP's post-processing, over all thresholds (a probability file; "
                          "about 20 s for the 488 testing clips)")


def _add_common(parser: argparse.ArgumentParser, truth_help: str, pred_help: str) -> None:
    parser.add_argument("--pred", required=True, metavar="FILE", help=pred_help)
    parser.add_argument("--truth", required=True, metavar="FILE", help=truth_help)
    parser.add_argument("--json", metavar="OUT", default=None, help="write the full results as JSON (atomically)")
    parser.add_argument("--write-submission", metavar="OUT", default=None,
                        help="also write the decided predictions in the challenge's submission format")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def run(args: argparse.Namespace) -> int:
    from devinet._io import atomic_write_json, check_destination
    from devinet.errors import ConfigError

    from experiments import evaluation

    outputs = [path for path in (args.json, args.write_submission) if path is not None]
    if len(set(outputs)) != len(outputs):
        raise ConfigError("--json and --write-submission must name different files")
    for path in outputs:
        check_destination(path, force=args.force)
    _check_range("--threshold", args.threshold)

    if args.task == "at":
        result = evaluation.evaluate_at_file(args.pred, args.truth, threshold=args.threshold,
                                             tune=args.oracle_thresholds, submission_out=args.write_submission)
        print(format_at_summary(result))
    else:
        _check_range("--gate-threshold", args.gate_threshold)
        if args.smooth < 0 or args.salt < 0:
            raise ConfigError(f"--smooth and --salt must be >= 0, got {args.smooth} and {args.salt}")
        if not args.frame_step > 0:
            raise ConfigError(f"--frame-step must be > 0, got {args.frame_step}")
        if args.psds and args.gate_with is not None:
            raise ConfigError("--psds scores CVSSP's system over all its thresholds: it cannot be combined with "
                              "--gate-with")
        result = evaluation.evaluate_sed_file(
            args.pred, args.truth, threshold=args.threshold, n_smooth=args.smooth, n_salt=args.salt,
            frame_step=args.frame_step, gate_path=args.gate_with, gate_threshold=args.gate_threshold,
            submission_out=args.write_submission, psds=args.psds)
        print(format_sed_summary(result))
    if args.json is not None:
        atomic_write_json(args.json, result)
    return 0


def _check_range(flag: str, value: float) -> None:
    from devinet.errors import ConfigError

    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{flag} must lie in [0, 1], got {value}")


def _cell(value, width: int = 7, digits: int = 3) -> str:
    """A right-aligned number, or '-' for an undefined value (None)."""
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


def format_at_summary(result: dict) -> str:
    """Readable table of an audio-tagging result (micro values first, then per class and macro means)."""
    threshold = result["threshold"]
    rule = ("tags read from a submission" if threshold is None else
            f"tags: probability > {threshold:g}, else the arg-max label" if isinstance(threshold, float)
            else "tags: per-class thresholds, else the arg-max label")
    lines = [
        f"Audio tagging: {result['pred']} ({result['prediction_format']}) vs {result['truth']}",
        f"{result['n_clips']} clips; {rule}",
        f"micro (official): precision {result['precision']:.4f}  recall {result['recall']:.4f}  "
        f"F1 {result['f1']:.4f}   (TP {result['tp']}, FP {result['fp']}, FN {result['fn']})",
        "",
        f"{'class':<33}{'P':>7}{'R':>7}{'F1':>7}{'AUC':>7}{'EER':>7}{'AP':>7}{'n_ref':>7}",
    ]
    for label, row in result["class_wise"].items():
        lines.append(f"{label:<33}{_cell(row['precision'])}{_cell(row['recall'])}{_cell(row['f1'])}"
                     f"{_cell(row.get('auc'))}{_cell(row.get('eer'))}{_cell(row.get('ap'))}{row['n_ref']:>7}")
    macro = result["macro"]
    lines.append(f"{'macro mean':<33}{_cell(macro['precision'])}{_cell(macro['recall'])}{_cell(macro['f1'])}"
                 f"{_cell(macro.get('auc'))}{_cell(macro.get('eer'))}{_cell(macro.get('ap'))}")
    if "ap" in macro:
        lines += ["", f"beyond the official metric (threshold-free): mAP {_cell(macro['ap'], 0, 4)}  "
                      f"macro ROC AUC {_cell(macro['auc'], 0, 4)}"]
    oracle = result.get("oracle_thresholds")
    if oracle:
        lines += ["", f"ORACLE ({oracle['note']}):",
                  f"  precision {oracle['precision']:.4f}  recall {oracle['recall']:.4f}  F1 {oracle['f1']:.4f}"]
    return "\n".join(lines)


def format_sed_summary(result: dict) -> str:
    """Readable table of a sound-event-detection result (overall values first, then per class)."""
    if result["prediction_format"] == "submission":
        source = "events read from a submission"
    else:
        source = (f"events: threshold {result['threshold']}, smooth {result['n_smooth']}, salt "
                  f"{result['n_salt']}, frame step {result['frame_step']:g} s")
    lines = [
        f"Sound event detection: {result['pred']} ({result['prediction_format']}) vs {result['truth']}",
        f"{result['n_files']} files, {result['n_events']} events; {source}",
    ]
    if result.get("gated_by_at"):
        lines.append(f"GATED by the AT decisions of {result['gated_by_at']}: not CVSSP's system")
    if result["n_events_outside_reference_labels"]:
        lines.append(f"{result['n_events_outside_reference_labels']} events of labels absent from the "
                     f"reference were not scored")
    lines += [
        f"{result['metric']}, overall (official):",
        f"  error rate {_cell(result['error_rate'], 0, 4)} (S {_cell(result['substitution_rate'], 0, 4)}, "
        f"D {_cell(result['deletion_rate'], 0, 4)}, I {_cell(result['insertion_rate'], 0, 4)})   "
        f"F1 {_cell(result['f1'], 0, 4)}  precision {_cell(result['precision'], 0, 4)}  "
        f"recall {_cell(result['recall'], 0, 4)}",
        f"  segments: reference {result['n_ref']}, system {result['n_sys']}, correct {result['n_tp']}; "
        f"S {result['S']}, D {result['D']}, I {result['I']}",
        "",
        f"{'class':<33}{'ER':>7}{'D':>7}{'I':>7}{'F1':>7}{'P':>7}{'R':>7}{'n_ref':>7}",
    ]
    for label, row in result["class_wise"].items():
        lines.append(f"{label:<33}{_cell(row['error_rate'])}{_cell(row['deletion_rate'])}"
                     f"{_cell(row['insertion_rate'])}{_cell(row['f1'])}{_cell(row['precision'])}"
                     f"{_cell(row['recall'])}{row['n_ref']:>7}")
    mean = result["class_wise_average"]
    lines.append(f"{'class-wise mean':<33}{_cell(mean['error_rate'])}{_cell(mean['deletion_rate'])}"
                 f"{_cell(mean['insertion_rate'])}{_cell(mean['f1'])}{_cell(mean['precision'])}"
                 f"{_cell(mean['recall'])}")
    return "\n".join(lines + _beyond_sed_lines(result))


def _beyond_sed_lines(result: dict) -> list[str]:
    """The SED metrics beyond the official one, after it: event-based values and PSDS."""
    events = result["event_based"]
    lines = ["", "beyond the official metric:",
             f"  {events['metric']}: error rate {_cell(events['error_rate'], 0, 4)}  F1 {_cell(events['f1'], 0, 4)}  "
             f"(events: reference {events['n_ref']}, system {events['n_sys']}, correct {events['n_tp']})"]
    psds = result.get("psds")
    if psds:
        values = "   ".join(f"PSDS {name[-1]} {psds[name]['psds']:.4f}" for name in ("scenario1", "scenario2"))
        lines.append(f"  {values}  ({psds['metric']}; DCASE 2021 scenarios)")
    return lines

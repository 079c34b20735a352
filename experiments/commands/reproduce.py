"""Reproduce the paper's weak-label experiments end to end: data, features, training, evaluation, report.

``devinet reproduce --quick --out DIR`` generates the built-in synthetic stand-in for DCASE
2017 Task 4, packs its log-mel features, trains the paper's systems (CRNN baseline, gated
CRNN with mean pooling, gated CRNN with attention) and a capacity-matched ablation (the gated
CRNN without gating) with the original recipe, fuses the paper's three, scores them with the
official metrics (and, beyond them, AT mAP/AUC, SED event-based ER/F1 and PSDS) on the testing
split and writes ``results.json``, ``results.md`` (ours beside the paper's reported figures)
and figures under ``DIR``. ``--seeds N`` trains each system N times and checks the paper's
orderings seed by seed. ``--data-root`` runs the same experiment on the real DCASE 2017 Task 4
audio, and scores the evaluation split too when its audio is there.

Every stage resumes: run the same command again after an interruption and it continues
where it stopped (data and features are checked and reused, training continues after its
last checkpoint). Bulky intermediate files (audio, features, checkpoints, probabilities)
live in the work folder (``--work-dir``, default ``DIR/work``).
"""

from __future__ import annotations

import argparse
import os

HELP = "run the paper's weak-label experiments end to end"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="the quick size (same as --size quick): about 30 minutes per seed on 2 CPU cores")
    parser.add_argument("--size", choices=("tiny", "quick", "full"), default=None,
                        help="experiment size (default: full, the original recipe); sizes are "
                             "experiments/configs/<size>.yaml")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="a size config file of your own instead of --size (same schema)")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="the real DCASE 2017 Task 4 data: a folder with the training and testing wav "
                             "clips (audio/train and audio/test, or training/testing) and meta/ "
                             "(default: generate the synthetic stand-in)")
    parser.add_argument("--meta-dir", metavar="DIR", default=None,
                        help="folder of the official metadata (training_set.csv, testing_set.csv, "
                             "groundtruth_{weak,strong}_label_testing_set.csv, and with evaluation audio "
                             "groundtruth_{weak,strong}_label_evaluation_set.csv); default DATA_ROOT/meta")
    parser.add_argument("--train-audio", metavar="DIR", default=None,
                        help="folder of the training wavs (with --data-root; default: found under it)")
    parser.add_argument("--test-audio", metavar="DIR", default=None,
                        help="folder of the testing wavs (with --data-root; default: found under it)")
    parser.add_argument("--eval-audio", metavar="DIR", default=None,
                        help="folder of the evaluation-set wavs (with --data-root; default: found under it as "
                             "audio/evaluation, evaluation or evaluation_set_formatted_audio_segments; without "
                             "one, only the testing split is scored)")
    allocator = parser.add_mutually_exclusive_group()
    allocator.add_argument("--huge-pages", dest="huge_pages", action="store_true", default=None,
                           help="require glibc's malloc with transparent huge pages (GLIBC_TUNABLES="
                                "glibc.malloc.hugetlb=1: fewer page faults, same results); the default where available")
    allocator.add_argument("--no-huge-pages", dest="huge_pages", action="store_false", default=None,
                           help="glibc's default allocator (slower CPU training: page faults of freed activations)")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="results folder (results.json, results.md, figures/)")
    parser.add_argument("--work-dir", metavar="DIR", default=None,
                        help="folder for audio, features, checkpoints and probabilities (default OUT/work)")
    parser.add_argument("--systems", nargs="+", metavar="NAME", default=None,
                        help="systems to run (crnn_baseline, crnn_ungated_matched, gated_crnn_mean, "
                             "gated_crnn_attention, fusion; default all; a fusion brings its members)")
    parser.add_argument("--seed", type=int, default=2017,
                        help="seed of the synthetic data and first training seed (default 2017)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train every system N times, with the training seeds SEED, SEED+1, ..., SEED+N-1, on "
                             "the same data; results give mean and standard deviation over the seeds and each "
                             "ordering's verdict seed by seed (default 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes for data generation and features (default: all cores)")
    parser.add_argument("--device", default="cpu", help="torch device for training and prediction (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "fp64"), default="fp32",
                        help="training precision: fp32 (default, the reference), autocast bf16 / fp16, or fp64 "
                             "(slow: for parity checks); other than fp32 in its own folder, <size>-seed<seed>-<precision>")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel training processes (torch's elastic launcher; gloo on CPU, NCCL on "
                             "GPU): the same results as one process up to float32 rounding (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training and prediction (default: the size's torch_threads, "
                             "1 for tiny and quick; else torch's choice, one per core)")
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                        help="allow non-deterministic torch algorithms (faster on some GPUs)")
    parser.add_argument("--force", action="store_true",
                        help="discard earlier training runs and results in the work folder and train again "
                             "(generated data and packed features are deterministic and kept); without it a "
                             "run resumes")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from devinet.cli import command_line
    from experiments.pipeline import Options, reproduce
    from experiments.runtime import huge_pages_by_default

    options = Options.from_args(args, command=command_line(args))
    if (code := huge_pages_by_default(args.argv, args.huge_pages)) is not None:
        return code
    results = reproduce(options)
    seeds = results["seeds"]
    print(f"results: {os.path.join(options.out, 'results.md')} (seeds {', '.join(map(str, seeds))}"
          f"{'; mean over seeds' if len(seeds) > 1 else ''})")
    for name, system in results["systems"].items():
        at, sed = system["mean"]["at"], system["mean"]["sed"]
        print(f"  {name:<22} AT micro F1 {at['f1']:.3f}   SED segment ER {sed['error_rate']:.3f}  F1 {sed['f1']:.3f}")
    if results["evaluation"] is not None:
        print(f"  evaluation split ({results['evaluation']['clips_scored']} clips):")
        for name, system in results["evaluation"]["systems"].items():
            at, sed = system["mean"]["at"], system["mean"]["sed"]
            print(f"  {name:<22} AT micro F1 {at['f1']:.3f}   SED segment ER {sed['error_rate']:.3f}  "
                  f"F1 {sed['f1']:.3f}")
    for claim in results["claims"]:
        print(f"  {claim['verdict']:<14} ({claim['holds_in']}/{claim['seeds']} seeds) {claim['system']} vs "
              f"{claim['against']}, {claim['metric']}")
    return 0

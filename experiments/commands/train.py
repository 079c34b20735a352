"""Train a DeviNet on packed log-mel features and weak labels (the original recipe by default).

Examples:
  devinet train --train train.h5 --labels training_set.csv --preset cvssp_crnn_sed --out runs/sed
  devinet train --train train.h5 --labels weak.tsv --classes classes.txt --valid valid.h5 \\
      --valid-labels valid.tsv --config my.yaml --out runs/mine --nproc 4
  torchrun --nnodes 2 --nproc-per-node 8 ... -m devinet train --device cuda ... --out /shared/run

The packed files come from `devinet features`; --labels (a clip list or a weak-label file) is
mapped onto their clips by clip name, multi-hot over --classes (one name per line; default the
17 DCASE 2017 classes). A config file (--config, YAML) holds the model (a preset and changed
fields) and every training knob; experiments/trainjob.py documents its keys. The run folder
holds one self-describing checkpoint per epoch (devinet.load and the tagging path read them).
Run the same command again after an interruption and training resumes after the last checkpoint.
"""

from __future__ import annotations

import argparse

HELP = "train a DeviNet on packed features and weak labels (one or many processes, CPU or GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("--train", required=True, metavar="FEATURES.h5", help="packed training features")
    parser.add_argument("--labels", required=True, metavar="CSV",
                        help="weak labels of the training clips: a clip list (training_set.csv) or a weak-label "
                             "file (name<TAB>start<TAB>end<TAB>label); packed clips it does not list are left out")
    parser.add_argument("--classes", metavar="FILE", default=None,
                        help="class names in output order, one per line (default: the 17 DCASE 2017 classes)")
    parser.add_argument("--valid", metavar="FEATURES.h5", default=None,
                        help="packed validation features: AT micro F1 after every epoch and of the fused checkpoints")
    parser.add_argument("--valid-labels", metavar="CSV", default=None, help="weak labels of the validation clips")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", metavar="NAME", default=None,
                       help="a devinet preset (cvssp_crnn_sed, cvssp_crnn_at, ...) with the original recipe")
    model.add_argument("--config", metavar="CFG.yaml", default=None,
                       help="a train config: the model (preset and changes) and every training knob")
    parser.add_argument("--out", required=True, metavar="DIR", help="the run folder (created, or resumed)")
    parser.add_argument("--scaler", metavar="FILE", default=None,
                        help="a scaler (.npz/.json, e.g. from devinet features --scaler-out) instead of fitting one "
                             "on the training clips")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel training processes on this machine (torch's elastic launcher; "
                             "gloo on CPU, NCCL on GPU); default 1. On several machines use torchrun instead")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "fp64"), default=None,
                        help="fp32 (the config's default), autocast bf16 / fp16 (with a gradient scaler), or fp64 (slow: "
                             "for parity checks)")
    parser.add_argument("--per-process-batchnorm", action="store_true",
                        help="data-parallel: BatchNorm statistics of each process's slice instead of the global batch")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes reading batches (default: 0 on CPU, 4 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: the usable cores divided by the processes)")
    allocator = parser.add_mutually_exclusive_group()
    allocator.add_argument("--huge-pages", dest="huge_pages", action="store_true", default=None,
                           help="require glibc's malloc with transparent huge pages (the default where available)")
    allocator.add_argument("--no-huge-pages", dest="huge_pages", action="store_false", default=None,
                           help="glibc's default allocator (slower CPU training: page faults of freed activations)")
    parser.add_argument("--force", action="store_true", help="discard an earlier run in --out and start over")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from devinet.cli import command_line
    from experiments import distributed, trainjob
    from experiments.runtime import huge_pages_by_default

    job = trainjob.TrainJob.from_args(args, command=command_line(args))
    if (code := huge_pages_by_default(args.argv, args.huge_pages)) is not None:
        return code
    summary = trainjob.run(job)
    if not distributed.processes().is_main:  # under torchrun every process gets here: rank 0 reports
        return 0
    resumed = f", resumed after epoch {summary['resumed_from']}" if summary["resumed_from"] else ""
    line = (f"run folder: {summary['run_dir']} ({summary['epochs_done']} epochs{resumed}, "
            f"{summary['world_size']} process(es), final loss {summary['final_loss']:.4f})")
    if "valid_fused_at_f1" in summary:
        line += f"; validation AT micro F1 of the fused checkpoints {summary['valid_fused_at_f1']:.3f}"
    print(line)
    return 0

"""Compare devinet with a Keras file layer by layer, in float32 and float64.

For a legacy Keras 2 file the reference is its Keras 2.0.8 recording (``--reference``, or
``NAME_ref.npz`` beside ``NAME.h5``/``NAME_weights.h5``); without one, and for Keras 3 files,
it is the Keras 3 reference model running the file's weights. Prints one line per layer
(shape, max abs error, max relative error, status) with the first divergence marked; exits 1
when a layer diverges.
"""

from __future__ import annotations

import argparse

from parity.commands.convert import PRESET_CHOICES

HELP = "compare a Keras file with devinet layer by layer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="Keras file (.h5, .hdf5, .keras, .weights.h5)")
    parser.add_argument("--report", metavar="FILE",
                        help="also write the report: JSON when FILE ends in .json, else the printed tables")
    parser.add_argument("--reference", metavar="NPZ", help="Keras 2.0.8 recording of SRC's layer outputs")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="check this devinet checkpoint against SRC instead of converting SRC afresh")
    parser.add_argument("--preset", choices=PRESET_CHOICES, help="devinet preset (default: detected)")
    parser.add_argument("--theano-flip", choices=("auto", "yes", "no"), default="auto",
                        help="flip conv kernels for Theano's convolution (default: auto, from the file)")
    parser.add_argument("--dtype", choices=("both", "float32", "float64"), default="both",
                        help="precision of the comparison runs (default: both)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input clips (default 0)")
    parser.add_argument("--batch", type=int, default=2,
                        help="random clips in the input, plus one all-zero clip (default 2)")
    parser.add_argument("--force", action="store_true", help="overwrite the --report file")
    parser.add_argument("--train-steps", type=int, metavar="K",
                        help="instead, train K steps of devinet and of the Keras reference (both as Keras 2.0.8) "
                             "from SRC's weights on seeded batches of --batch clips, and compare the losses and "
                             "every weight after each step (see parity.training)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm

    from devinet._io import atomic_write_text, check_destination
    from devinet.errors import InputError

    from parity.compare import format_report, parity_reports

    if args.train_steps is not None:
        from parity.training import run_cli  # absolute: this module may live in parity.commands

        return run_cli(args)
    dtypes = {"both": (torch.float32, torch.float64), "float32": (torch.float32,),
              "float64": (torch.float64,)}[args.dtype]
    if args.batch < 1:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    if args.report:
        check_destination(args.report, force=args.force)
    reports = parity_reports(Path(args.src), recording=args.reference, checkpoint=args.checkpoint,
                             preset=args.preset, theano_flip=args.theano_flip, seed=args.seed, batch=args.batch,
                             dtypes=dtypes,
                             progress=lambda items, **kw: tqdm(items, file=sys.stderr, leave=False, disable=None,
                                                               **kw))
    text = "\n\n".join(format_report(report) for report in reports)
    print(text)
    if args.report:
        if args.report.endswith(".json"):
            payload = json.dumps([report.to_dict() for report in reports], indent=2, allow_nan=True) + "\n"
        else:
            payload = text + "\n"
        atomic_write_text(args.report, payload)
    return 0 if all(report.passed for report in reports) else 1

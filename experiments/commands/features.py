"""Pack a folder of wav clips into one HDF5 file of log-mel features (the original CVSSP recipe).

Examples:
  devinet features --wav-dir audio/train --meta meta/training_set.csv --out train.h5 --scaler-out scaler.npz
  devinet features --wav-dir audio/test --meta meta/testing_set.csv --out test.h5
  devinet features --wav-dir my_clips --out unlabelled.h5        # every wav, no labels

Clips listed in the metadata but absent, empty or unreadable are skipped and listed (in the
output's ``skipped`` group and on the console), never fatal. An interrupted run resumes when
the same command is run again.
"""

from __future__ import annotations

import argparse
import sys

HELP = "pack a folder of wav clips into an HDF5 log-mel file"

_SHOWN_SKIPPED = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("--wav-dir", required=True, metavar="DIR", help="folder of wav clips Y<id>_<start>_<end>.wav")
    parser.add_argument("--meta", metavar="CSV",
                        help="training_set.csv / testing_set.csv or a weak-label file; without it, every "
                             "wav of the folder is packed without labels")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="HDF5 file to write")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="worker processes (default: all usable cores; 1: no worker processes)")
    parser.add_argument("--chunk-size", type=int, default=32, metavar="N",
                        help="clips per task and per resumable unit of work (default: 32)")
    parser.add_argument("--backend", choices=("reference", "torch"), default="reference",
                        help="reference: numpy/scipy/librosa in the workers (default); torch: workers decode, "
                             "the batched torch extractor runs on --device")
    parser.add_argument("--device", default="cpu", help="torch device of the torch backend (default: cpu)")
    parser.add_argument("--resampler", choices=("resampy02_kaiser_best", "original", "soxr_hq"),
                        default="resampy02_kaiser_best",
                        help="resampy02_kaiser_best (or its old name 'original'): an exact emulation of the "
                             "original features' resampler, resampy 0.2 kaiser_best (default); soxr_hq: librosa's today")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="storage type of the features: float32 (default) or float16 (half the disk space and "
                             "reading time; log-mel rounded to 11 significant bits, read back as float32)")
    parser.add_argument("--scaler-out", metavar="FILE",
                        help="also fit the per-mel-bin scaler on this split (the training split) and save "
                             "it (.npz or .json)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing outputs and discard an unfinished run of another job")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_dependencies(args: argparse.Namespace) -> None:
    import importlib.util

    from devinet.errors import MissingDependencyError

    needed = ["h5py", "soundfile", "tqdm"]
    if args.backend == "reference":
        needed += ["scipy", "librosa"]  # scipy's spectrogram and librosa's mel filterbank, as the original
    if args.resampler == "soxr_hq":
        needed.append("soxr")
    for module in needed:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, "features")


def run(args: argparse.Namespace) -> int:
    _check_dependencies(args)
    from pathlib import Path

    from devinet._io import check_destination

    from experiments.packing import SKIP_KINDS, fit_scaler, pack_split

    check_destination(args.out, args.force)
    if args.scaler_out:  # refuse a bad scaler destination before hours of extraction
        check_destination(args.scaler_out, args.force)
        if Path(args.scaler_out).suffix.lower() not in (".npz", ".json"):
            from devinet.errors import InputError

            raise InputError(f"{args.scaler_out}: the scaler is saved as .npz or .json")
    result = pack_split(
        args.wav_dir, args.out, args.meta, jobs=args.jobs, chunk_size=args.chunk_size, backend=args.backend,
        resampler=args.resampler, device=args.device, force=args.force, progress=not args.no_progress,
        dtype=args.dtype,
    )
    counts = result.skipped_by_kind()
    summary = ", ".join(f"{counts[kind]} {kind}" for kind in SKIP_KINDS)
    print(f"packed {result.packed} clips into {result.path}; skipped {len(result.skipped)} ({summary})")
    if result.reused_chunks:
        print(f"resumed: {result.reused_chunks} chunks from an earlier run were kept")
    for item in result.skipped[:_SHOWN_SKIPPED]:
        print(f"  skipped {item.key}: {item.kind}: {item.detail}", file=sys.stderr)
    if len(result.skipped) > _SHOWN_SKIPPED:
        print(f"  ... and {len(result.skipped) - _SHOWN_SKIPPED} more, all listed in {result.path}:/skipped",
              file=sys.stderr)
    if args.scaler_out:
        scaler = fit_scaler(result.path)
        scaler.save(args.scaler_out)
        print(f"scaler fitted on {scaler.count} frames -> {args.scaler_out}")
    return 0

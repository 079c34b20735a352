"""Benchmark devinet against the Keras reference, side by side in one process run (experiments.bench)."""

from __future__ import annotations

import argparse

HELP = "benchmark devinet against the Keras reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, metavar="OUT", help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and two repeats: checks that everything runs (figures not meaningful)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where devinet (and Keras, if TensorFlow sees a GPU) runs (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both frameworks (default: every core this process may use)")
    parser.add_argument("--retain-freed-memory", action="store_true",
                        help="keep freed C-heap memory mapped for reuse, for the whole run "
                             "(experiments.runtime.retain_freed_memory: faster CPU training steps, more resident memory)")
    allocator = parser.add_mutually_exclusive_group()
    allocator.add_argument("--huge-pages", dest="huge_pages", action="store_true", default=None,
                           help="require glibc's malloc asking for transparent huge pages (GLIBC_TUNABLES="
                                "glibc.malloc.hugetlb=1, for both frameworks): far fewer page faults, no memory "
                                "cost; the default where available")
    allocator.add_argument("--no-huge-pages", dest="huge_pages", action="store_false", default=None,
                           help="glibc's default allocator (what the figures were before huge pages became the default)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    import os

    from devinet._io import check_destination
    from devinet.errors import ConfigError, DevinetError, MissingDependencyError
    from experiments.runtime import huge_pages_by_default
    from experiments.workers import usable_cores

    destination = check_destination(args.json, args.force)
    threads = args.threads if args.threads is not None else usable_cores()
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise DevinetError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False; "
                           f"torch {torch.__version__} built with CUDA {torch.version.cuda}); use --device cpu")
    if (code := huge_pages_by_default(args.argv, args.huge_pages)) is not None:  # after the argument checks
        return code
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError("TensorFlow (for the Keras reference)", "keras") from None
    from devinet.cli import command_line
    from experiments.bench import BenchOptions, run_bench
    from experiments.bench.environment import allocator_record

    notes, with_keras = [], True
    if args.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        with_keras = False
        notes.append("TensorFlow sees no GPU: Keras figures omitted (a GPU-vs-CPU ratio would mislead)")
    run_bench(BenchOptions(destination, args.device, threads, args.quick, allocator_record(args.retain_freed_memory),
                           command_line(args) + ("" if args.threads is not None else f" --threads {threads}"),
                           with_keras, tuple(notes)))
    return 0

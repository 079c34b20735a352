"""Generate the built-in synthetic DCASE 2017 Task 4 stand-in (offline, deterministic, resumable).

Writes audio/{train,test}/*.wav (16 kHz mono) and meta/*.csv in the official formats, then
dataset.json. Re-running on the same folder skips the clips already written.
"""

from __future__ import annotations

import argparse

HELP = "generate the built-in synthetic DCASE 2017 Task 4 stand-in"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write the dataset into (new, empty, or a partial run to resume)")
    parser.add_argument("--size", choices=("tiny", "quick", "full"), default="quick",
                        help="tiny: 144+34 clips (tests); quick: 1920+306 (default); full: 16800+1020")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default 2017)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    from devinet.errors import ConfigError

    from experiments.synth import DEFAULT_SEED, generate_dataset

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    seed = DEFAULT_SEED if args.seed is None else args.seed
    started = time.perf_counter()
    info = generate_dataset(args.out_dir, size=args.size, seed=seed, jobs=args.jobs, progress=not args.no_progress)
    splits = ", ".join(f"{split} {data['clips']} clips / {data['events']} events"
                       for split, data in info["splits"].items())
    print(f"synthetic dataset '{info['size']}' (seed {info['seed']}) in {args.out_dir}: {splits} "
          f"[{time.perf_counter() - started:.1f} s]")
    return 0

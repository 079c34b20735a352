"""The ``devinet`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Those modules import only the standard library at import time, so
``devinet --help`` is fast and never imports TensorFlow; heavy dependencies are imported
inside ``run`` and missing ones are reported with one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import DevinetError

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "info": ("devinet.info", "show presets, parameter counts and frame geometry"),
    "convert": ("parity.cli_convert", "convert a checkpoint between Keras files and devinet"),
    "parity": ("parity.cli_parity", "compare a Keras file with devinet layer by layer"),
    "features": ("experiments.features_cli", "pack a folder of wav clips into an HDF5 log-mel file"),
    "synth": ("experiments.synth_cli", "generate the built-in synthetic DCASE 2017 Task 4 stand-in"),
    "evaluate": ("experiments.evaluate_cli", "score predictions with the official DCASE 2017 Task 4 metrics"),
    "reproduce": ("experiments.reproduce", "run the paper's weak-label experiments end to end"),
    "bench": ("experiments.bench", "benchmark devinet against the Keras reference"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devinet",
        description="The CVSSP gated CRNN (DCASE 2017 Task 4) in PyTorch: conversion, parity, experiments.",
    )
    parser.add_argument("--version", action="version", version=f"devinet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "huge_pages", False):
            from .runtime import huge_pages_requested, run_devinet_with_huge_pages

            if not huge_pages_requested():  # glibc reads it at start-up: run again with it
                return run_devinet_with_huge_pages(sys.argv[1:] if argv is None else list(argv))
        return int(args._run(args) or 0)
    except DevinetError as exc:
        print(f"devinet {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"devinet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # File-system problems (permissions, disk full, ...) are the user's to fix: one line.
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"devinet {args.command}: error: {_one_line(where + str(exc.strerror or exc))}", file=sys.stderr)
        return 1


def _one_line(message: str) -> str:
    """A message on one line: names taken from a file (layer names, keys) may hold line breaks."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

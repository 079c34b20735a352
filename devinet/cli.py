"""The ``devinet`` command: one entry point whose subcommands each package registers itself.

A subcommand is a module named in the ``devinet.commands`` entry-point group (setup.cfg),
so this dispatcher never names the packages above it (``parity``, ``experiments``). Such a
module holds ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and
imports only the standard library at import time: ``devinet --help`` imports neither torch
nor TensorFlow. Heavy dependencies are imported inside ``run``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from importlib.metadata import entry_points

from . import __version__
from .errors import DevinetError, one_line

#: entry-point group in which packages register their subcommands
ENTRY_POINT_GROUP = "devinet.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devinet",
        description="The CVSSP gated CRNN (DCASE 2017 Task 4) in PyTorch: conversion, parity, tagging, experiments.",
    )
    parser.add_argument("--version", action="version", version=f"devinet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        module = entry.load()
        doc = (module.__doc__ or module.HELP).strip().splitlines()[0]
        command = sub.add_parser(entry.name, help=module.HELP, description=doc)
        module.add_arguments(command)
        command.set_defaults(_run=module.run, _parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    args.argv = argv
    try:
        return int(args._run(args) or 0)
    except DevinetError as exc:
        print(f"devinet {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"devinet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # File-system problems (permissions, disk full, ...) are the user's to fix: one line.
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"devinet {args.command}: error: {one_line(where + str(exc.strerror or exc))}", file=sys.stderr)
        return 1


def command_line(args: argparse.Namespace) -> str:
    """The command that produced ``args`` in canonical form: positionals, then every option whose
    value differs from its default (for the records written beside results)."""
    parser: argparse.ArgumentParser = args._parser
    parts = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not action.option_strings:
            parts += [str(v) for v in values if v is not None]
        elif action.nargs == 0:  # a flag; two flags may share one destination (--x / --no-x)
            if value != action.default and value == action.const:
                parts.append(max(action.option_strings, key=len))
        elif value != action.default:
            parts += [max(action.option_strings, key=len), *(str(v) for v in values)]
    return " ".join([parser.prog, *(shlex.quote(part) for part in parts)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

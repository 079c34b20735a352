"""The `devinet` dispatcher: subcommands registered by their packages, a light help, one canonical command line."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

from devinet.cli import ENTRY_POINT_GROUP, build_parser, command_line


def test_help_imports_neither_torch_nor_tensorflow():
    """Building the whole parser (every subcommand's options) in a fresh interpreter imports no heavy package."""
    code = ("import json, sys; from devinet.cli import build_parser; build_parser(); "
            "print(json.dumps({m: m in sys.modules for m in ('torch', 'tensorflow', 'keras', 'numpy')}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch": False, "tensorflow": False,
                                                                 "keras": False, "numpy": False}


def test_every_registered_command_is_a_subcommand_with_help():
    registered = {entry.name: entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"info", "convert", "parity", "features", "synth", "evaluate", "reproduce", "bench"} <= set(registered)
    # the model package never names the packages above it: they register themselves
    assert not any(value.startswith(("parity.", "experiments.")) for value in registered.values()
                   if value.startswith("devinet."))
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(registered)
    for name, sub in commands.items():
        assert sub.prog == f"devinet {name}" and sub.description


def test_command_line_lists_positionals_and_changed_options_only():
    args = build_parser().parse_args(["synth", "out dir", "--size", "tiny", "--jobs", "2", "--no-progress"])
    assert command_line(args) == "devinet synth 'out dir' --size tiny --jobs 2 --no-progress"
    args = build_parser().parse_args(["reproduce", "--quick", "--out", "r", "--systems", "crnn_baseline", "fusion"])
    assert command_line(args) == "devinet reproduce --quick --out r --systems crnn_baseline fusion"

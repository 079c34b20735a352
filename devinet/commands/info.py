"""Show presets, parameter counts and frame geometry (a quick check that devinet works here)."""

from __future__ import annotations

import argparse

HELP = "show presets, parameter counts and frame geometry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", action="append", help="preset to show (repeatable; default: all)")
    parser.add_argument("--frames", type=int, default=240, help="input frames for the geometry (default 240)")
    parser.add_argument("--blocks", type=int, choices=(7, 8), default=None,
                        help="CVSSP presets: 7 live gated blocks (original) or the intended 8")
    parser.add_argument("--forward", action="store_true", help="also run one forward pass on random input")


def run(args: argparse.Namespace) -> int:
    import torch

    from devinet.config import PRESETS
    from devinet.model import DeviNet

    names = args.preset or list(PRESETS)
    print(f"{'preset':<22} {'params (Keras count)':>20} {'torch params':>13} {'out frames':>10} "
          f"{'receptive field':>16} {'step':>5}")
    for name in names:
        overrides = {"blocks": args.blocks} if args.blocks and name.startswith("cvssp_") else {}
        model = DeviNet.from_preset(name, **overrides).eval()
        size, step = model.receptive_field()
        print(f"{name:<22} {model.num_parameters():>20,} {model.num_parameters(keras_style=False):>13,} "
              f"{model.num_frames(args.frames):>10} {size:>16} {step:>5}")
        if args.forward:
            with torch.no_grad():
                out = model(torch.randn(2, args.frames, model.config.n_mels))
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items())
            print(f"{'':<22} forward: {shapes}")
    return 0

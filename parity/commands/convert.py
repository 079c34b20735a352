"""Convert a checkpoint between Keras files and devinet (direction from the file types).

SRC or DST is a Keras file, recognised by its name: ``.h5``/``.hdf5`` (legacy Keras 2
``model.save`` or ``save_weights``; written in the original's ``save_weights`` layout),
``.keras`` or ``.weights.h5`` (Keras 3). The other is a devinet checkpoint (any other name),
read and written with ``devinet.load`` / ``devinet.save``. Two Keras files convert through
devinet in memory.
"""

from __future__ import annotations

import argparse

HELP = "convert a checkpoint between Keras files and devinet"

PRESET_CHOICES = ("cvssp_crnn_at", "cvssp_crnn_sed", "cvssp_cnnrnn_at", "cvssp_crnn_baseline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="Keras file or devinet checkpoint to convert")
    parser.add_argument("dst", metavar="DST", help="file to write (its type sets the direction)")
    parser.add_argument("--preset", choices=PRESET_CHOICES,
                        help="devinet preset of the model (default: detected from the Keras file's topology "
                             "and shapes, or the checkpoint's own)")
    parser.add_argument("--theano-flip", choices=("auto", "yes", "no"), default="auto",
                        help="flip conv kernels for Theano's convolution: reading, 'auto' follows the file's "
                             "backend attribute; writing a legacy .h5, 'yes' writes a Theano-backend file "
                             "(default: auto)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="accept NaN or infinite weights instead of refusing them")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import devinet
    from devinet._io import check_destination
    from devinet.errors import FileFormatError

    from parity.convert import keras_format, keras_to_torch, torch_to_keras

    src, dst = Path(args.src), Path(args.dst)
    src_fmt, dst_fmt = keras_format(src), keras_format(dst)
    if src_fmt is None and dst_fmt is None:
        raise FileFormatError(dst, "neither SRC nor DST is a Keras file (.h5, .hdf5, .keras, .weights.h5)")
    if not src.is_file():
        raise FileFormatError(src, "no such file")
    check_destination(dst, force=args.force)  # fail before any slow work
    if src_fmt is None:
        model = devinet.load(src, allow_nonfinite=args.allow_nonfinite)
        torch_to_keras(model, dst, preset=args.preset, theano_flip=args.theano_flip, force=args.force,
                       allow_nonfinite=args.allow_nonfinite)
        print(f"{src} (devinet {model.config.name}) -> {dst} ({dst_fmt}): "
              f"{model.num_parameters():,} parameters")
        return 0
    conversion = keras_to_torch(src, preset=args.preset, theano_flip=args.theano_flip,
                                allow_nonfinite=args.allow_nonfinite)
    file, model = conversion.file, conversion.model
    origin = f"{file.kind}{', backend ' + file.backend if file.backend else ''}"
    if dst_fmt is None:
        devinet.save(model, dst, metadata=conversion.metadata, force=args.force)
    else:
        torch_to_keras(model, dst, preset=conversion.detection.preset, force=args.force,
                       allow_nonfinite=args.allow_nonfinite)
    print(f"{src} ({origin}) -> {dst} ({dst_fmt or 'devinet checkpoint'}): {conversion.detection.preset}, "
          f"{model.num_parameters():,} parameters{', Theano kernels flipped' if conversion.flipped else ''}")
    for note in conversion.metadata["notes"]:
        print(f"note: {note}")
    return 0

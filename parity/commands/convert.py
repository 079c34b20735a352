"""Convert a checkpoint between Keras files and devinet (direction from the file types).

SRC or DST is a Keras file, recognised by its name: ``.h5``/``.hdf5`` (legacy Keras 2
``model.save`` or ``save_weights``; written in the original's ``save_weights`` layout),
``.keras`` or ``.weights.h5`` (Keras 3). The other is a devinet checkpoint (any other name),
read and written with ``devinet.load`` / ``devinet.save``. Two Keras files convert through
devinet in memory.

A devinet checkpoint written from a Keras file describes itself (``devinet.preprocessing``):
the class names (``--classes``, default the 17 DCASE 2017 Task 4 labels), the original
feature recipe and post-processing, and the scaler of the training features (``--scaler``:
``.npz``, JSON, or the original training's pickled scikit-learn ``StandardScaler``, read
without running code). Without a scaler the checkpoint cannot tag audio.
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
    parser.add_argument("--scaler", metavar="FILE",
                        help="the per-mel-bin scaler of the model's training features, stored in the devinet "
                             "checkpoint: .npz (arrays mean, std), JSON {\"mean\": [...], \"std\": [...]}, or the "
                             "original training's pickled scikit-learn StandardScaler (read without running code)")
    parser.add_argument("--classes", metavar="FILE",
                        help="class names in output order, one per line or a JSON list (default: the 17 DCASE 2017 "
                             "Task 4 labels for a 17-class model)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="accept NaN or infinite weights instead of refusing them")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import devinet
    from devinet._io import check_destination
    from devinet.errors import ConfigError, FileFormatError
    from devinet.preprocessing import read_class_names
    from devinet.scaler import Scaler

    from parity.convert import keras_format, keras_to_torch, torch_to_keras

    src, dst = Path(args.src), Path(args.dst)
    src_fmt, dst_fmt = keras_format(src), keras_format(dst)
    if src_fmt is None and dst_fmt is None:
        raise FileFormatError(dst, "neither SRC nor DST is a Keras file (.h5, .hdf5, .keras, .weights.h5)")
    if not src.is_file():
        raise FileFormatError(src, "no such file")
    check_destination(dst, force=args.force)  # fail before any slow work
    if dst_fmt is not None and (args.scaler or args.classes):
        raise ConfigError("--scaler and --classes describe a devinet checkpoint; here DST is a Keras file")
    scaler = Scaler.read(args.scaler) if args.scaler else None
    classes = read_class_names(args.classes) if args.classes else None
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
        described = _preprocessing(model, scaler, classes, args)
        devinet.save(model, dst, metadata=conversion.metadata, force=args.force, preprocessing=described)
    else:
        torch_to_keras(model, dst, preset=conversion.detection.preset, force=args.force,
                       allow_nonfinite=args.allow_nonfinite)
    print(f"{src} ({origin}) -> {dst} ({dst_fmt or 'devinet checkpoint'}): {conversion.detection.preset}, "
          f"{model.num_parameters():,} parameters{', Theano kernels flipped' if conversion.flipped else ''}")
    for note in conversion.metadata["notes"]:
        print(f"note: {note}")
    if dst_fmt is None:
        print(f"preprocessing: {len(described.classes)} class names"
              + (f" from {args.classes}" if args.classes else "") + ", "
              + (f"scaler from {args.scaler}" if scaler is not None
                 else "no scaler (give --scaler FILE to tag audio with this model)"))
    return 0


def _preprocessing(model, scaler, classes, args: argparse.Namespace):
    """The description stored with a converted model; names the file that does not fit it."""
    from devinet.errors import FileFormatError
    from devinet.preprocessing import Preprocessing, default_classes

    config = model.config
    if classes is not None and len(classes) != config.num_classes:
        raise FileFormatError(args.classes, f"{len(classes)} class names for a model with {config.num_classes} outputs")
    if scaler is not None and scaler.mean.shape[0] != config.n_mels:
        raise FileFormatError(args.scaler, f"a scaler of {scaler.mean.shape[0]} bins for a model of "
                                           f"{config.n_mels} mel bands")
    return Preprocessing(classes=classes or default_classes(config.num_classes), scaler=scaler)

"""Where Keras 3 stores each variable of a model in its weight files.

Keras 3 does not key weight files by layer name. Both a ``.weights.h5`` file and the
``model.weights.h5`` member of a ``.keras`` zip name each layer after its CLASS, snake-cased
and numbered in ``model.layers`` order (``layers/conv2d``, ``layers/conv2d_1``, ...,
``layers/bidirectional_1``), and store a layer's variables as ``vars/0``, ``vars/1``, ...
Wrapped layers sit below their wrapper: ``layers/bidirectional/forward_layer/cell/vars/0``,
``layers/time_distributed/layer/vars/0``. Each ``vars`` group carries an attribute ``name``
with the layer's own name (``gcnn_0_conv``, ``forward_rnn_0_linear_gru``, ``gru_cell``).

:func:`weight_file_layout` asks Keras itself where each variable goes, so converters can map
names without re-implementing that scheme.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402


def weight_file_layout(model: keras.Model) -> dict[str, str]:
    """Variable path (``model.weights[i].path``) -> dataset path in a Keras 3 weights file.

    E.g. ``'gcnn_0_bn/moving_mean' -> 'layers/batch_normalization/vars/2'`` and
    ``'rnn_0_linear/backward_rnn_0_linear_gru/gru_cell/bias' ->
    'layers/bidirectional/backward_layer/cell/vars/2'``. Valid for ``model.save_weights``
    files and for ``model.weights.h5`` inside ``model.save`` archives.

    It works by saving the model with every variable set to its own index, then reading
    which index each dataset holds; the model's weights are restored afterwards.
    """
    variables = list(model.weights)
    if len(variables) >= 2 ** 24:  # indices must be exact in float32
        raise ValueError(f"{model.name}: too many variables ({len(variables)}) to tag")
    saved = [v.numpy() for v in variables]
    layout: dict[str, str] = {}
    try:
        for index, variable in enumerate(variables):
            variable.assign(np.full(variable.shape, index, dtype=variable.dtype))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "layout.weights.h5")
            model.save_weights(path)
            with h5py.File(path, "r") as handle:
                def visit(name: str, item) -> None:
                    if isinstance(item, h5py.Dataset) and item.size:
                        layout[variables[int(item[()].flat[0])].path] = name
                handle.visititems(visit)
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
    if len(layout) != len(variables):
        missing = sorted({v.path for v in variables} - set(layout))
        raise ValueError(f"{model.name}: weights file lacks variables {missing}")
    return layout

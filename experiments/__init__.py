"""Experiments of the paper: data preparation, training, evaluation, result tables and plots.

Everything here may use the optional dependencies of the ``features`` and ``experiments``
extras (librosa, soundfile, h5py, sed_eval, ...); the ``devinet`` package itself never does.
"""

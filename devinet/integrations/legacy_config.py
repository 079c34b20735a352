"""Read the model block of a config.yml written for the older pyannote DeviNet port.

The older port (pyannote-devinet-model) was configured through the ``config.yml`` of a
pyannote.audio 1.x experiment. Its README placed the model block under
``feature_extraction:``::

    feature_extraction:
      name: pyannote.models.DeviNet
      params:
        conv_blocks: 4
        conv_channels: 128
        layers_pooling: [2, 2, 2, 2]
        final_pooling: 4
        dropout: 0.3
        recurrent: [128]
        gated_rnn: true
        linear_layers: [32, 32]

and pyannote.audio 1.x built models from ``architecture:``. Both placements are read: a
block under ``feature_extraction:`` is taken with a one-line notice (logged as a warning)
saying where it was found. The README's sample listed four poolings for three block groups
(``conv_blocks: 3``), which crashed the old port: such a file is refused with a one-line
reason (:func:`devinet.config.pyannote_devinet` checks it).

Only the DeviNet block is read. The other sections of a pyannote.audio 1.x experiment
(task, scheduler, a feature extractor such as RawAudio, ...) configured the old trainer and
do not apply to today's :class:`~devinet.integrations.pyannote.DeviNetSegmentation`, which
computes its own log-mel features from the waveform.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..config import PYANNOTE_KEYS, DeviNetConfig, pyannote_devinet
from ..errors import ConfigError, FileFormatError, MissingDependencyError

#: the configuration in the old port's README (with conv_blocks 4, one group per pooling):
#: the defaults of DeviNetSegmentation and of the keys a config.yml leaves out
SEED_CONFIG = {
    "conv_blocks": 4,
    "conv_channels": 128,
    "layers_pooling": [2, 2, 2, 2],
    "final_pooling": 4,
    "dropout": 0.3,
    "recurrent": [128],
    "gated_rnn": True,
    "linear_layers": [32, 32],
}
#: top-level sections of a pyannote.audio 1.x experiment config.yml
LEGACY_SECTIONS = (
    "task", "feature_extraction", "architecture", "scheduler", "preprocessors", "data_augmentation", "callbacks",
)
#: last component of a block's ``name:`` that designates DeviNet
DEVINET_NAMES = ("DeviNet", "DeviNetSegmentation")
#: keys of the old port that are accepted but carry no parameter today, with their only valid value
FIXED_KEYS = {"activation_type": "tanh"}
#: keys of earlier versions of the old port, and what replaced them
RENAMED_KEYS = {
    "gru_cells": "recurrent (a list of hidden sizes, e.g. recurrent: [128])",
    "n_classes": "nothing: the task's classes set the number of outputs",
}

_LOG = logging.getLogger(__name__)


def read_legacy_params(path: str | os.PathLike) -> dict[str, Any]:
    """The DeviNet parameters of an old config.yml, validated.

    The block is read from ``architecture:`` or, as the old port's README placed it, from
    ``feature_extraction:`` (with a one-line notice logged as a warning). Returns a dict
    with every key of :data:`SEED_CONFIG` (left-out keys take its values), ready for
    ``DeviNetSegmentation(**params)`` or ``pyannote_devinet(**params)``. Raises
    :class:`FileFormatError` for a missing or non-YAML file and :class:`ConfigError`
    (message starting with the path) for a file without one DeviNet block, an unknown key
    or a bad value (e.g. three ``conv_blocks`` with four poolings).
    """
    path = Path(path)
    document = _load_yaml(path)
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (architecture: ...), got {type(document).__name__}")
    unknown = sorted(str(k) for k in document if k not in LEGACY_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level sections {', '.join(unknown)} (known: {', '.join(LEGACY_SECTIONS)})"
        )
    section = _devinet_section(path, document)
    given = _section_params(path, section, document[section])
    params = {**SEED_CONFIG, **{k: v for k, v in given.items() if v is not None}}
    try:
        pyannote_devinet(**params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if section == "feature_extraction":
        _LOG.warning("%s: DeviNet's parameters read from 'feature_extraction:', where the old port's README "
                     "placed them (pyannote.audio 1.x built models from 'architecture:')", path)
    return params


def read_legacy_config(path: str | os.PathLike, *, num_classes: int = 1, head: str = "mean") -> DeviNetConfig:
    """A ``pyannote_devinet`` :class:`DeviNetConfig` from an old config.yml (see :func:`read_legacy_params`).

    ``num_classes`` and ``head`` complete what the old file did not say: there the task set
    the outputs, and the model only emitted frame-wise scores.
    """
    params = read_legacy_params(path)
    try:
        return pyannote_devinet(num_classes=num_classes, head=head, **params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError("PyYAML (to read config.yml files)", "pyannote") from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, f"cannot be read ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise FileFormatError(path, f"not valid YAML: {problem}") from None


def _names_devinet(name: Any) -> bool:
    return isinstance(name, str) and name.rsplit(".", 1)[-1] in DEVINET_NAMES


def _devinet_section(path: Path, document: dict) -> str:
    """The section that holds DeviNet's block: 'feature_extraction' when it names DeviNet, else 'architecture'."""
    if not _names_devinet(_section_name(document.get("feature_extraction"))):
        if "architecture" not in document:
            raise ConfigError(f"{path}: no 'architecture:' section; DeviNet's block goes there "
                              "(name: pyannote.models.DeviNet, params: ...)")
        return "architecture"
    if "architecture" in document:
        raise ConfigError(
            f"{path}: 'feature_extraction:' names DeviNet and 'architecture:' names "
            f"{_section_name(document['architecture'])!r}: keep one model block (under architecture:)"
        )
    return "feature_extraction"


def _section_name(section: Any) -> Any:
    return section.get("name") if isinstance(section, dict) else None


def _section_params(path: Path, where: str, section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{where}:' must be a mapping with 'name' and 'params', got {section!r}")
    extra = sorted(str(k) for k in section if k not in ("name", "params"))
    if extra:
        raise ConfigError(f"{path}: unknown keys in '{where}:': {', '.join(extra)} (expected name and params)")
    name = section.get("name")
    if not _names_devinet(name):
        raise ConfigError(
            f"{path}: {where} name {name!r} is not DeviNet (expected a name ending in "
            f"{' or '.join(DEVINET_NAMES)}, e.g. pyannote.models.DeviNet)"
        )
    params = section.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: '{where}: params:' must be a mapping, got {params!r}")
    params = dict(params)
    for key, only_value in FIXED_KEYS.items():
        if key in params and params.pop(key) != only_value:
            raise ConfigError(f"{path}: {key} must be {only_value!r} (the only one DeviNet implements)")
    renamed = sorted(set(params) & set(RENAMED_KEYS))
    if renamed:
        hints = "; ".join(f"{k} is replaced by {RENAMED_KEYS[k]}" for k in renamed)
        raise ConfigError(f"{path}: parameters of an earlier version of the old port: {hints}")
    unknown = sorted(str(k) for k in params if k not in PYANNOTE_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown DeviNet parameters {', '.join(unknown)} (known: {', '.join(PYANNOTE_KEYS)})"
        )
    return params

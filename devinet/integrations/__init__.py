"""Bridges between DeviNet and other toolkits.

Each submodule needs its toolkit and says so with one clear ImportError when it is missing:

- :mod:`devinet.integrations.pyannote`: :class:`DeviNetSegmentation`, a pyannote.audio 4
  model (from a clone: ``bash scripts/install_pyannote_cpu.sh``, see docs/pyannote.md).

Toolkit-free helpers live beside them: :mod:`devinet.integrations.geometry` (where output
frames lie in a waveform) and :mod:`devinet.integrations.legacy_config` (the older pyannote
port's config.yml). Importing this package imports no toolkit.
"""
